package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kpcrypt/kpcrypt/internal/securefile"
	"github.com/kpcrypt/kpcrypt/internal/termsafe"
	"github.com/kpcrypt/kpcrypt/kms/keyprotect"
)

// keyUsage is the help of "kpcrypt key".
const keyUsage = `Usage: kpcrypt key COMMAND [flags] ...

Manage Key Protect and HPCS keys. An INSTANCE is the instance's CRN
(crn:v1:bluemix:public:kms:REGION:a/ACCOUNT:GUID::, or any key CRN of it);
a KEY is a key CRN. Credentials and endpoints come from the environment and
the trust configuration, as for encrypt and decrypt.

Commands:
  create   --instance INSTANCE --name NAME [--alias A]... [--standard] [--description D]
  import   --instance INSTANCE --name NAME (--material FILE | --generate --escrow FILE) [--alias A]...
  list     --instance INSTANCE [--state active,suspended,deactivated,destroyed] [--count]
  show     KEY [--show-payload]
  versions KEY
  rotate   KEY [--material FILE]
  enable   KEY
  disable  KEY
  delete   KEY --yes [--force-registered]
  restore  KEY
  policy   KEY [--rotation-months N | --no-rotation] [--dual-auth-delete on|off]

Every command takes --json for machine-readable output, and --kms-timeout.
A standard key's payload is printed only with show --show-payload.
Imported key material is sent encrypted under the instance's import token
(RSA-OAEP, AES-GCM nonce), never in the clear; --generate writes the new
material to the --escrow file (mode 0600, created exclusively, synced)
before the import request is sent.
`

func cmdKey(ctx context.Context, u *ui, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		if len(args) == 0 {
			fmt.Fprint(u.stderr, keyUsage)
			return usagef("key: give a command")
		}
		fmt.Fprint(u.stdout, keyUsage)
		return errHelp
	}
	sub, rest := args[0], args[1:]
	fs := flag.NewFlagSet("key "+sub, flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON")
	kmsTimeout := kmsTimeoutFlag(fs)
	k := &keyCmd{u: u, sub: sub, json: asJSON}
	var run func(ctx context.Context, operands []string) error
	switch sub {
	case "create":
		run = k.create(fs)
	case "import":
		run = k.importKey(fs)
	case "list":
		run = k.list(fs)
	case "show":
		run = k.show(fs)
	case "versions":
		run = k.versions(fs)
	case "rotate":
		run = k.rotate(fs)
	case "enable", "disable", "restore":
		run = k.simple(fs)
	case "delete":
		run = k.delete(fs)
	case "policy":
		run = k.policy(fs)
	default:
		return usagef("key: unknown command %q (see kpcrypt key -h)", sub)
	}
	operands, err := parseFlags(fs, rest)
	if errors.Is(err, errHelp) {
		fmt.Fprint(u.stdout, keyUsage)
		return errHelp
	}
	if err != nil {
		return err
	}
	if err := checkTimeout("key "+sub, *kmsTimeout); err != nil {
		return err
	}
	kctx, cancel := context.WithTimeout(ctx, *kmsTimeout)
	defer cancel()
	return run(kctx, operands)
}

// keyCmd is one "kpcrypt key" command.
type keyCmd struct {
	u    *ui
	sub  string
	json *bool
}

// client returns the client of the instance or key named by s.
func (k *keyCmd) client(ctx context.Context, s string, instance bool) (*keyprotect.Client, keyprotect.CRN, error) {
	var crn keyprotect.CRN
	var err error
	if instance {
		crn, err = keyprotect.ParseInstanceCRN(s)
	} else {
		crn, err = keyprotect.ParseCRN(s)
	}
	if err != nil {
		return nil, crn, usagef("key %s: %v", k.sub, err)
	}
	c, err := k.u.kp.Client(ctx, crn)
	return c, crn, err
}

// keyCRN takes the one KEY operand.
func (k *keyCmd) keyCRN(ctx context.Context, operands []string) (*keyprotect.Client, keyprotect.CRN, error) {
	if len(operands) != 1 {
		return nil, keyprotect.CRN{}, usagef("key %s: give one KEY (a key CRN), got %d", k.sub, len(operands))
	}
	return k.client(ctx, operands[0], false)
}

func (k *keyCmd) printJSON(v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = k.u.stdout.Write(append(termsafe.JSON(b), '\n'))
	return err
}

// keyView is a key as the commands print it.
type keyView struct {
	ID             string     `json:"id"`
	CRN            string     `json:"crn,omitempty"`
	Name           string     `json:"name"`
	Description    string     `json:"description,omitempty"`
	Type           string     `json:"type"`
	State          string     `json:"state"`
	Aliases        []string   `json:"aliases,omitempty"`
	KeyRing        string     `json:"key_ring,omitempty"`
	Imported       bool       `json:"imported,omitempty"`
	KeyVersion     string     `json:"key_version,omitempty"`
	Created        *time.Time `json:"created,omitempty"`
	LastRotated    *time.Time `json:"last_rotated,omitempty"`
	Payload        string     `json:"payload,omitempty"`
	PayloadPresent bool       `json:"payload_withheld,omitempty"`
}

func viewOf(key *keyprotect.Key, showPayload bool) keyView {
	v := keyView{ID: key.ID, CRN: key.CRN, Name: key.Name, Description: key.Description, Type: "root", State: stateName(key.State),
		Aliases: key.Aliases, KeyRing: key.KeyRingID, Imported: key.Imported, Created: key.CreationDate, LastRotated: key.LastRotateDate}
	if key.Extractable {
		v.Type = "standard"
	}
	if key.KeyVersion != nil {
		v.KeyVersion = key.KeyVersion.ID
	}
	switch {
	case key.Payload != "" && showPayload:
		v.Payload = key.Payload
	case key.Extractable && !showPayload:
		v.PayloadPresent = true // a standard key has one; it is not shown
	}
	return v
}

// stateName names a key state in words.
func stateName(s int) string {
	switch s {
	case keyprotect.StatePreActivation:
		return "pre-active"
	case keyprotect.StateActive:
		return "active"
	case keyprotect.StateSuspended:
		return "suspended (disabled)"
	case keyprotect.StateDeactivated:
		return "deactivated"
	case keyprotect.StateDestroyed:
		return "destroyed (deleted)"
	}
	return "state " + strconv.Itoa(s)
}

// parseStates reads --state: names or numbers.
func parseStates(s string) ([]int, error) {
	if s == "" {
		return nil, nil
	}
	names := map[string]int{"pre-active": 0, "preactive": 0, "active": 1, "suspended": 2, "disabled": 2, "deactivated": 3, "destroyed": 5, "deleted": 5}
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if n, ok := names[f]; ok {
			out = append(out, n)
		} else if n, err := strconv.Atoi(f); err == nil && n >= 0 && n <= 5 {
			out = append(out, n)
		} else {
			return nil, fmt.Errorf("--state: %q is not a key state (active, suspended, deactivated, destroyed, pre-active)", f)
		}
	}
	return out, nil
}

func (k *keyCmd) printKey(key *keyprotect.Key, showPayload bool) error {
	v := viewOf(key, showPayload)
	if *k.json {
		return k.printJSON(v)
	}
	tw := tabwriter.NewWriter(k.u.stdout, 0, 0, 2, ' ', 0)
	row := func(name, value string) {
		if value != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", name, termsafe.Escape(value))
		}
	}
	row("id", v.ID)
	row("crn", v.CRN)
	row("name", v.Name)
	row("description", v.Description)
	row("type", v.Type)
	row("state", v.State)
	row("aliases", strings.Join(v.Aliases, ", "))
	row("key ring", v.KeyRing)
	if v.Imported {
		row("imported", "yes")
	}
	row("key version", v.KeyVersion)
	if v.Created != nil {
		row("created", v.Created.Format(time.RFC3339))
	}
	if v.LastRotated != nil {
		row("last rotated", v.LastRotated.Format(time.RFC3339))
	}
	row("payload", v.Payload)
	if v.PayloadPresent {
		row("payload", "withheld (show --show-payload prints it)")
	}
	return tw.Flush()
}

func (k *keyCmd) create(fs *flag.FlagSet) func(context.Context, []string) error {
	instance := fs.String("instance", "", "the `INSTANCE` CRN")
	name := fs.String("name", "", "the key's `NAME`")
	desc := fs.String("description", "", "a `DESCRIPTION`")
	standard := fs.Bool("standard", false, "a standard key (extractable) instead of a root key")
	var aliases listFlag
	fs.Var(&aliases, "alias", "an `ALIAS` (repeatable); with one, a lost answer is reconciled instead of failing")
	return func(ctx context.Context, operands []string) error {
		if len(operands) > 0 || *instance == "" || *name == "" {
			return usagef("key create: give --instance INSTANCE and --name NAME, and no operand")
		}
		c, _, err := k.client(ctx, *instance, true)
		if err != nil {
			return err
		}
		key, err := c.CreateKey(ctx, keyprotect.CreateKeyRequest{Name: *name, Description: *desc, Root: !*standard, Aliases: aliases})
		if err != nil {
			return err
		}
		return k.printKey(key, false)
	}
}

func (k *keyCmd) importKey(fs *flag.FlagSet) func(context.Context, []string) error {
	instance := fs.String("instance", "", "the `INSTANCE` CRN")
	name := fs.String("name", "", "the key's `NAME`")
	desc := fs.String("description", "", "a `DESCRIPTION`")
	materialFile := fs.String("material", "", "read the 32-byte key material from `FILE` (raw bytes, mode 0600)")
	generate := fs.Bool("generate", false, "generate 32 bytes of key material (needs --escrow)")
	escrow := fs.String("escrow", "", "with --generate, write the material to `FILE` first (created exclusively, mode 0600)")
	var aliases listFlag
	fs.Var(&aliases, "alias", "an `ALIAS` (repeatable)")
	return func(ctx context.Context, operands []string) error {
		if len(operands) > 0 || *instance == "" || *name == "" {
			return usagef("key import: give --instance INSTANCE and --name NAME, and no operand")
		}
		if (*materialFile == "") == !*generate {
			return usagef("key import: give one of --material FILE or --generate --escrow FILE")
		}
		if *generate && *escrow == "" {
			return usagef("key import: --generate needs --escrow FILE, to keep a copy of the material you import")
		}
		material, err := k.material(*materialFile, *generate, *escrow)
		if err != nil {
			return err
		}
		defer clear(material)
		c, _, err := k.client(ctx, *instance, true)
		if err != nil {
			return err
		}
		if _, err := c.CreateImportToken(ctx, 10*time.Minute, 1); err != nil {
			return fmt.Errorf("creating an import token: %w", err)
		}
		key, err := c.ImportRootKey(ctx, keyprotect.CreateKeyRequest{Name: *name, Description: *desc, Aliases: aliases}, material)
		if err != nil {
			return err
		}
		return k.printKey(key, false)
	}
}

// material reads key material from a file, or generates it and escrows it
// first: written, synced and closed before anything is sent.
func (k *keyCmd) material(path string, generate bool, escrow string) ([]byte, error) {
	if !generate {
		data, _, err := securefile.ReadPrivate(path, 64)
		if err != nil {
			return nil, fmt.Errorf("--material: %w", err)
		}
		if len(data) != 32 {
			clear(data)
			return nil, fmt.Errorf("--material %s: %d bytes; want 32 raw bytes of AES-256 key material", path, len(data))
		}
		return data, nil
	}
	material := make([]byte, 32)
	rand.Read(material)
	f, err := os.OpenFile(escrow, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		clear(material)
		return nil, fmt.Errorf("--escrow: %w (it is never overwritten)", err)
	}
	_, err = f.Write(material)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(escrow)
		clear(material)
		return nil, fmt.Errorf("--escrow %s: %w", escrow, err)
	}
	return material, nil
}

func (k *keyCmd) list(fs *flag.FlagSet) func(context.Context, []string) error {
	instance := fs.String("instance", "", "the `INSTANCE` CRN")
	states := fs.String("state", "", "list keys in these `STATES` (comma-separated: active, suspended, deactivated, destroyed, pre-active)")
	count := fs.Bool("count", false, "print only the number of keys")
	return func(ctx context.Context, operands []string) error {
		if len(operands) > 0 || *instance == "" {
			return usagef("key list: give --instance INSTANCE, and no operand")
		}
		st, err := parseStates(*states)
		if err != nil {
			return usagef("key list: %v", err)
		}
		c, _, err := k.client(ctx, *instance, true)
		if err != nil {
			return err
		}
		opts := keyprotect.ListOptions{States: st}
		if *count {
			n, err := c.CountKeys(ctx, &opts)
			if err != nil {
				return err
			}
			if *k.json {
				return k.printJSON(map[string]int{"count": n})
			}
			fmt.Fprintln(k.u.stdout, n)
			return nil
		}
		var views []keyView
		for key, err := range c.AllKeys(ctx, opts, 200) {
			if err != nil {
				return err
			}
			views = append(views, viewOf(&key, false))
		}
		if *k.json {
			if views == nil {
				views = []keyView{}
			}
			return k.printJSON(views)
		}
		tw := tabwriter.NewWriter(k.u.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tTYPE\tSTATE\tVERSION")
		for _, v := range views {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", termsafe.Escape(v.ID), termsafe.Escape(v.Name), v.Type, v.State, termsafe.Escape(orDash(v.KeyVersion)))
		}
		return tw.Flush()
	}
}

func (k *keyCmd) show(fs *flag.FlagSet) func(context.Context, []string) error {
	showPayload := fs.Bool("show-payload", false, "print a standard key's payload (its secret material)")
	return func(ctx context.Context, operands []string) error {
		c, crn, err := k.keyCRN(ctx, operands)
		if err != nil {
			return err
		}
		var key *keyprotect.Key
		if *showPayload {
			key, err = c.GetKey(ctx, crn.KeyID)
		} else {
			key, err = c.GetKeyMetadata(ctx, crn.KeyID)
		}
		if err != nil {
			return err
		}
		return k.printKey(key, *showPayload)
	}
}

func (k *keyCmd) versions(fs *flag.FlagSet) func(context.Context, []string) error {
	return func(ctx context.Context, operands []string) error {
		c, crn, err := k.keyCRN(ctx, operands)
		if err != nil {
			return err
		}
		vs, err := c.KeyVersions(ctx, crn.KeyID)
		if err != nil {
			return err
		}
		if *k.json {
			if vs == nil {
				vs = []keyprotect.KeyVersion{}
			}
			return k.printJSON(vs)
		}
		for _, v := range vs {
			created := ""
			if v.CreationDate != nil {
				created = "\t" + v.CreationDate.Format(time.RFC3339)
			}
			fmt.Fprintf(k.u.stdout, "%s%s\n", termsafe.Escape(v.ID), created)
		}
		return nil
	}
}

func (k *keyCmd) rotate(fs *flag.FlagSet) func(context.Context, []string) error {
	materialFile := fs.String("material", "", "rotate an imported key to the 32-byte material in `FILE` (sent under an import token)")
	return func(ctx context.Context, operands []string) error {
		c, crn, err := k.keyCRN(ctx, operands)
		if err != nil {
			return err
		}
		if *materialFile != "" {
			material, err := k.material(*materialFile, false, "")
			if err != nil {
				return err
			}
			defer clear(material)
			if _, err := c.CreateImportToken(ctx, 10*time.Minute, 1); err != nil {
				return fmt.Errorf("creating an import token: %w", err)
			}
			err = c.RotateImported(ctx, crn.KeyID, material)
		} else {
			err = c.Rotate(ctx, crn.KeyID)
		}
		if err != nil {
			return err
		}
		key, err := c.GetKeyMetadata(ctx, crn.KeyID)
		if err != nil {
			return err
		}
		if *k.json {
			return k.printJSON(viewOf(key, false))
		}
		v := viewOf(key, false)
		k.u.infof("rotated %s: key version %s is now current", crn, orDash(v.KeyVersion))
		fmt.Fprintln(k.u.stdout, termsafe.Escape(v.KeyVersion))
		return nil
	}
}

// simple runs enable, disable and restore.
func (k *keyCmd) simple(fs *flag.FlagSet) func(context.Context, []string) error {
	return func(ctx context.Context, operands []string) error {
		c, crn, err := k.keyCRN(ctx, operands)
		if err != nil {
			return err
		}
		switch k.sub {
		case "enable":
			err = c.Enable(ctx, crn.KeyID)
		case "disable":
			err = c.Disable(ctx, crn.KeyID)
		case "restore":
			_, err = c.RestoreKey(ctx, crn.KeyID)
		}
		if err != nil {
			return err
		}
		return k.done(ctx, c, crn)
	}
}

// done prints a key's state after a change.
func (k *keyCmd) done(ctx context.Context, c *keyprotect.Client, crn keyprotect.CRN) error {
	key, err := c.GetKeyMetadata(ctx, crn.KeyID)
	if err != nil {
		return err
	}
	if *k.json {
		return k.printJSON(viewOf(key, false))
	}
	k.u.infof("%s %s: the key is %s", pastTense(k.sub), crn, stateName(key.State))
	return nil
}

func pastTense(verb string) string {
	switch verb {
	case "enable", "disable":
		return verb + "d"
	case "delete":
		return "deleted"
	}
	return verb + "d"
}

func (k *keyCmd) delete(fs *flag.FlagSet) func(context.Context, []string) error {
	yes := fs.Bool("yes", false, "confirm the deletion: what the key wraps can no longer be unwrapped (restorable for 30 days)")
	forceRegistered := fs.Bool("force-registered", false, "delete even when the key protects registered cloud resources (Key Protect's force delete)")
	return func(ctx context.Context, operands []string) error {
		if !*yes {
			return usagef("key delete: deleting a key makes everything it wrapped unreadable until it is restored; confirm with --yes")
		}
		c, crn, err := k.keyCRN(ctx, operands)
		if err != nil {
			return err
		}
		if err := c.DeleteKey(ctx, crn.KeyID, *forceRegistered); err != nil {
			return err
		}
		if *k.json {
			return k.printJSON(map[string]string{"deleted": crn.String()})
		}
		k.u.infof("deleted %s (restorable for 30 days with kpcrypt key restore)", crn)
		return nil
	}
}

func (k *keyCmd) policy(fs *flag.FlagSet) func(context.Context, []string) error {
	months := fs.Int("rotation-months", 0, "rotate the key automatically every `N` months (1 to 12)")
	noRotation := fs.Bool("no-rotation", false, "disable automatic rotation")
	dual := fs.String("dual-auth-delete", "", "`on` or off: require a second user's authorisation to delete")
	return func(ctx context.Context, operands []string) error {
		if *months != 0 && (*months < 1 || *months > 12) {
			return usagef("key policy: --rotation-months must be 1 to 12")
		}
		if *months != 0 && *noRotation {
			return usagef("key policy: --rotation-months and --no-rotation contradict each other")
		}
		if *dual != "" && *dual != "on" && *dual != "off" {
			return usagef("key policy: --dual-auth-delete takes on or off")
		}
		c, crn, err := k.keyCRN(ctx, operands)
		if err != nil {
			return err
		}
		if *months != 0 || *noRotation {
			rp := keyprotect.RotationPolicy{Enabled: !*noRotation, IntervalMonths: *months}
			if *noRotation {
				// The service wants an interval even to pause rotation:
				// keep the one set, if any.
				rp.IntervalMonths = 1
				if cur, err := c.GetPolicies(ctx, crn.KeyID); err == nil && cur.Rotation != nil && cur.Rotation.IntervalMonths > 0 {
					rp.IntervalMonths = cur.Rotation.IntervalMonths
				}
			}
			if err := c.SetRotationPolicy(ctx, crn.KeyID, rp); err != nil {
				return err
			}
		}
		if *dual != "" {
			if err := c.SetDualAuthDeletePolicy(ctx, crn.KeyID, keyprotect.DualAuthDeletePolicy{Enabled: *dual == "on"}); err != nil {
				return err
			}
		}
		p, err := c.GetPolicies(ctx, crn.KeyID)
		if err != nil {
			return err
		}
		if *k.json {
			return k.printJSON(p)
		}
		return printPolicies(k.u.stdout, p)
	}
}

func printPolicies(w io.Writer, p *keyprotect.Policies) error {
	rot, dual := "off", "off"
	if p.Rotation != nil && p.Rotation.Enabled {
		rot = fmt.Sprintf("every %d months", p.Rotation.IntervalMonths)
	}
	if p.DualAuthDelete != nil && p.DualAuthDelete.Enabled {
		dual = "on"
	}
	_, err := fmt.Fprintf(w, "rotation:          %s\ndual-auth delete:  %s\n", rot, dual)
	return err
}
