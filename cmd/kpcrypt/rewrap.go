package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"

	"github.com/schollz/progressbar/v3"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/envelope/batch"
	"github.com/kpcrypt/kpcrypt/internal/termsafe"
)

// testHookAfterWalk, when set, runs between the walk and the rewraps.
var testHookAfterWalk func()

func cmdRewrap(ctx context.Context, u *ui, args []string) error {
	fs := flag.NewFlagSet("rewrap", flag.ContinueOnError)
	var keks, to, add, remove listFlag
	fs.Var(&keks, "kek", "`URI` of a KEK of the files' slots (repeatable); without it, the slots' own URIs are opened")
	fs.Var(&to, "to-kek", "migrate: leave the files with one slot per `URI` given, and no other (repeatable)")
	fs.Var(&add, "add-kek", "add a slot for the KEK at `URI` (repeatable)")
	fs.Var(&remove, "remove-kek", "remove the slot of the KEK at `URI` (repeatable); never the last slot")
	dryRun := fs.Bool("dry-run", false, "say what would change; call no KMS write operation, write nothing")
	jobs := fs.Int("jobs", 4, "files rewrapped at once: a bound on the KMS calls in flight")
	quiet := fs.Bool("quiet", false, "print only failures and the summary; no progress bar")
	kmsTimeout := kmsTimeoutFlag(fs)
	paths, err := parseFlags(fs, args)
	if errors.Is(err, errHelp) {
		helpFor(fs, u.stdout, "kpcrypt rewrap [--kek URI]... [--to-kek URI] [--add-kek URI] [--remove-kek URI] [--dry-run] PATH...")
		return errHelp
	}
	if err != nil {
		return err
	}
	if err := refusePINValue(slices.Concat(keks, to, add, remove)...); err != nil {
		return err
	}
	if err := u.checkKEKFlags("rewrap", slices.Concat(keks, to, add)...); err != nil {
		return err
	}
	if len(paths) == 0 {
		return usagef("rewrap: give at least one file or directory")
	}
	if len(to) > 0 && (len(add) > 0 || len(remove) > 0) {
		return usagef("rewrap: --to-kek replaces every slot; it does not go with --add-kek or --remove-kek")
	}
	if *jobs < 1 {
		return usagef("rewrap: --jobs must be at least 1")
	}
	if err := checkTimeout("rewrap", *kmsTimeout); err != nil {
		return err
	}
	keyring, err := u.slotKeyring(ctx, keks)
	if err != nil {
		return err
	}
	opts := &envelope.RewrapOptions{Keyring: keyring, Remove: remove, DryRun: *dryRun}
	if opts.To, err = u.openKEKs(ctx, to); err != nil {
		return err
	}
	if opts.Add, err = u.openKEKs(ctx, add); err != nil {
		return err
	}
	walk, err := batch.Walk(paths)
	if err != nil {
		return err
	}
	skipped := walk.NotKpcrypt
	for _, err := range walk.Unreadable {
		u.errorf("%v (not checked)", err)
	}
	defer walk.Close()
	if testHookAfterWalk != nil {
		testHookAfterWalk()
	}
	files := make([]string, walk.Len())
	for i := range files {
		files[i] = walk.Path(i)
	}

	var bar *progressbar.ProgressBar
	if !*quiet && isTerminal(u.stderr) && len(files) > 1 {
		bar = progressbar.NewOptions(len(files), progressbar.OptionSetWriter(u.stderr),
			progressbar.OptionSetDescription("rewrapping"), progressbar.OptionShowCount(), progressbar.OptionClearOnFinish())
	}
	bopts := &batch.RewrapOptions{Options: *opts, Jobs: *jobs, FileTimeout: *kmsTimeout}
	if bar != nil {
		bopts.Done = func(batch.Result) { bar.Add(1) }
	}
	results := batch.Rewrap(ctx, walk, bopts)
	if bar != nil {
		bar.Finish()
	}

	// A --remove-kek that removes nothing is a mistake (a typo, another
	// spelling of the URI): say so rather than report files as current.
	var unused []string
	for _, uri := range remove {
		removed := false
		for i, o := range results {
			if o.Err != nil {
				continue
			}
			if slices.ContainsFunc(o.Rewrap.Slots, func(c envelope.SlotChange) bool { return c.Action == "removed" && c.URI == uri }) {
				removed = true
			} else if walk.Named(i) {
				results[i].Status = batch.Failed
				results[i].Err = fmt.Errorf("the file holds no slot of %s: nothing to remove (see kpcrypt inspect)", uri)
			}
		}
		found := false
		for i := range walk.Len() {
			found = found || !walk.Named(i)
		}
		if !removed && found {
			unused = append(unused, uri)
		}
	}

	var nChanged, nCurrent, nUnchanged, nFailed, nUnchecked int
	verb := "rewrapped"
	if *dryRun {
		verb = "would rewrap"
	}
	for i, o := range results {
		if o.Status == batch.Failed {
			nFailed++
			u.errorf("%s: %v", files[i], o.Err)
			continue
		}
		if uncheckedSlots(u, files[i], o.Rewrap) > 0 {
			nUnchecked++
		}
		var line string
		switch o.Status {
		case batch.Rewrapped:
			nChanged++
			line = fmt.Sprintf("%s %s: %s", verb, termsafe.Escape(files[i]), termsafe.Escape(describeChanges(o.Rewrap)))
		case batch.NotChecked:
			line = "not checked " + termsafe.Escape(files[i])
		case batch.Current:
			nCurrent++
			line = "current " + termsafe.Escape(files[i])
		default:
			// Slots only kept (added or removed elsewhere, or a KEK that
			// cannot tell its version): unchanged, not "current".
			nUnchanged++
			line = "unchanged " + termsafe.Escape(files[i])
		}
		if !*quiet {
			fmt.Fprintln(u.stdout, line)
		}
	}
	summary := fmt.Sprintf("%d %s, %d already current, %d failed", nChanged, verb, nCurrent, nFailed)
	if nUnchanged > 0 {
		summary += fmt.Sprintf(", %d unchanged", nUnchanged)
	}
	if nUnchecked > 0 {
		summary += fmt.Sprintf(", %d with slots not checked", nUnchecked)
	}
	if skipped > 0 {
		summary += fmt.Sprintf(", %d skipped (not kpcrypt files)", skipped)
	}
	if walk.Temporary > 0 {
		summary += fmt.Sprintf(", %d temporary files passed over", walk.Temporary)
	}
	if len(walk.Unreadable) > 0 {
		summary += fmt.Sprintf(", %d unreadable", len(walk.Unreadable))
	}
	u.infof("%s", summary)
	for _, uri := range unused {
		u.errorf("--remove-kek %s: no file holds a slot of this KEK; nothing was removed", uri)
	}
	if nFailed > 0 || nUnchecked > 0 || len(unused) > 0 || len(walk.Unreadable) > 0 {
		return errQuiet
	}
	return nil
}

// uncheckedSlots reports the slots of a file whose KEK could not be
// opened, and returns how many there are. Such a slot is never called
// current: nobody could ask its KEK.
func uncheckedSlots(u *ui, file string, res *envelope.RewrapResult) int {
	n := 0
	for i, c := range res.Slots {
		if c.Action != "unchecked" {
			continue
		}
		n++
		why := "no --kek opens it"
		if c.Err != nil {
			why = c.Err.Error()
		}
		u.errorf("%s: slot %d (%s) not checked: %s", file, i, c.URI, why)
	}
	return n
}

// errQuiet fails the command without another message.
var errQuiet = errors.New("")

func describeChanges(res *envelope.RewrapResult) string {
	var parts []string
	for _, c := range res.Slots {
		switch c.Action {
		case "rewrapped":
			how := "client-side"
			if c.ServerSide {
				how = "server-side"
			}
			parts = append(parts, fmt.Sprintf("%s %s → %s (%s)", c.URI, orDash(c.OldVersion), orDash(c.NewVersion), how))
		case "added":
			parts = append(parts, fmt.Sprintf("added %s", c.URI))
		case "removed":
			parts = append(parts, fmt.Sprintf("removed %s", c.URI))
		}
	}
	if res.Rewritten {
		parts = append(parts, "rewritten whole with a larger slot table")
	}
	return strings.Join(parts, "; ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (u *ui) openKEKs(ctx context.Context, uris []string) (envelope.KEKs, error) {
	var keks envelope.KEKs
	r := u.resolver
	for _, uri := range uris {
		k, err := r.Open(ctx, uri)
		if err != nil {
			return nil, err
		}
		keks = append(keks, k)
	}
	return keks, nil
}
