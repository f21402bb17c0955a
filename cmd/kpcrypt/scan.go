package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/internal/filelock"
	"github.com/kpcrypt/kpcrypt/internal/termsafe"
	"github.com/kpcrypt/kpcrypt/kms"
)

func cmdScan(ctx context.Context, u *ui, args []string) error {
	fs := flag.NewFlagSet("scan", flag.ContinueOnError)
	var keks listFlag
	below := fs.String("below-version", "", "list the slots of the --kek KEK under a key `VERSION` older than this one (in the KEK's order of versions)")
	outdated := fs.Bool("outdated", false, "list slots not under their KEK's current version")
	fs.Var(&keks, "kek", "`URI` of a KEK to ask (repeatable; exactly one with --below-version); without it, the slots' own URIs that the trust configuration allows are opened")
	kmsTimeout := kmsTimeoutFlag(fs)
	paths, err := parseFlags(fs, args)
	if errors.Is(err, errHelp) {
		helpFor(fs, u.stdout, "kpcrypt scan (--outdated [--kek URI]... | --below-version VERSION --kek URI) PATH...\n\n"+scanExitCodes)
		return errHelp
	}
	if err != nil {
		return err
	}
	if err := refusePINValue(keks...); err != nil {
		return err
	}
	if err := u.checkKEKFlags("scan", keks...); err != nil {
		return err
	}
	if (*below == "") == !*outdated {
		return usagef("scan: give one of --below-version VERSION or --outdated")
	}
	if len(paths) == 0 {
		return usagef("scan: give at least one file or directory")
	}
	if err := checkTimeout("scan", *kmsTimeout); err != nil {
		return err
	}
	if *below != "" && len(keks) != 1 {
		return usagef("scan: --below-version applies to the slots of one KEK: give it with --kek URI")
	}
	keyring, err := u.slotKeyring(ctx, keks)
	if err != nil {
		return err
	}
	var belowKEK string
	if *below != "" {
		kctx, cancel := context.WithTimeout(ctx, *kmsTimeout)
		belowKEK, err = checkBelowVersion(kctx, keyring.(envelope.KEKs)[0], *below)
		cancel()
		if err != nil {
			return err
		}
	}
	walk, sum, err := walkFiles(paths)
	if err != nil {
		u.errorf("%v", err)
		return exitStatus(3) // nothing could be checked
	}
	defer walk.Close()
	files := walk.paths
	v := &versionCache{ctx: ctx, keyring: keyring, versions: map[string][]string{}, current: map[string]string{}}
	found, failed := 0, len(sum.unreadable)
	for _, msg := range sum.unreadable {
		u.errorf("%s (not checked)", msg)
	}
	for i, path := range files {
		kctx, cancel := context.WithTimeout(ctx, *kmsTimeout)
		f, err := walk.open(i, os.O_RDONLY)
		if err != nil {
			u.errorf("%s: %v", path, err)
			failed++
			cancel()
			continue
		}
		// A shared lock, within the file's time: a concurrent rewrap never
		// shows a torn table, and a lock held for ever stalls one file.
		if err := filelock.Lock(kctx, f, false); err != nil && !errors.Is(err, filelock.ErrUnsupported) {
			f.Close()
			u.errorf("%s: waiting for the file's lock: %v", path, err)
			failed++
			cancel()
			continue
		}
		h, err := envelope.Inspect(f)
		f.Close()
		if err != nil {
			u.errorf("%s: %v", path, err)
			failed++
			cancel()
			continue
		}
		hit := false
		v.ctx = kctx
		for i, s := range h.Slots {
			var old bool
			var err error
			if *outdated {
				old, err = v.outdated(s)
			} else if s.KEK != belowKEK {
				continue // another KEK's slot: not in question
			} else {
				old, err = v.below(s, *below)
			}
			if err != nil {
				u.errorf("%s: slot %d not checked: %v", path, i, err)
				failed++
				continue
			}
			if old {
				hit = true
				fmt.Fprintf(u.stdout, "%s\tslot %d\t%s\tkey version %s\n", termsafe.Escape(path), i, termsafe.Escape(s.KEK), termsafe.Escape(orDash(s.KeyVersion)))
			}
		}
		cancel()
		if hit {
			found++
		}
	}
	what := "not under their KEK's current version"
	if !*outdated {
		what = fmt.Sprintf("under a key version older than %s", *below)
	}
	passed := ""
	if sum.temporary > 0 {
		passed = fmt.Sprintf(" (%d temporary files passed over)", sum.temporary)
	}
	u.infof("%d of %d files have slots %s%s", found, len(files), what, passed)
	switch {
	case failed > 0:
		if found > 0 {
			u.infof("%d slots or files could not be checked: the list is incomplete", failed)
		} else {
			u.infof("%d slots or files could not be checked", failed)
		}
		return exitStatus(3)
	case found > 0:
		return exitStatus(1)
	}
	return nil
}

// scanExitCodes documents scan's exit status, for its help.
const scanExitCodes = `Exit status:
  0  every slot was checked, and none is outdated
  1  at least one slot is outdated, and every slot was checked
  2  usage error
  3  something could not be checked (an error, or a slot of a KEK that
     --kek does not give and the trust configuration does not allow): the
     answer is incomplete, whatever else was found`

// checkBelowVersion makes sure that version is one of kek's versions, and
// returns the KEK's URI.
func checkBelowVersion(ctx context.Context, kek kms.KEK, version string) (string, error) {
	vl, ok := kek.(kms.VersionLister)
	if !ok {
		return "", usagef("scan: --below-version: KEK %s cannot list its versions", kek.URI())
	}
	vs, err := vl.Versions(ctx)
	if err != nil {
		return "", err
	}
	if !slices.Contains(vs, version) {
		shown := vs
		if len(shown) > 5 {
			shown = shown[len(shown)-5:]
		}
		return "", usagef("scan: --below-version: %q is not a key version of %s (its newest versions, oldest first: %s)",
			version, kek.URI(), strings.Join(shown, ", "))
	}
	return kek.URI(), nil
}

// versionCache asks each KEK once for its versions.
type versionCache struct {
	ctx      context.Context
	keyring  envelope.Keyring
	mu       sync.Mutex
	versions map[string][]string
	current  map[string]string
}

func (v *versionCache) kek(uri string) (kms.KEK, error) {
	keks, err := v.keyring.KEKsFor(v.ctx, uri)
	if err != nil {
		return nil, err
	}
	for _, k := range keks {
		if k.URI() == uri {
			return k, nil
		}
	}
	return nil, fmt.Errorf("cannot open KEK %s (give it with --kek)", uri)
}

func (v *versionCache) below(s envelope.SlotInfo, min string) (bool, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	vs, ok := v.versions[s.KEK]
	if !ok {
		k, err := v.kek(s.KEK)
		if err != nil {
			return false, err
		}
		vl, ok := k.(kms.VersionLister)
		if !ok {
			return false, fmt.Errorf("KEK %s cannot list its versions", s.KEK)
		}
		if vs, err = vl.Versions(v.ctx); err != nil {
			return false, err
		}
		v.versions[s.KEK] = vs
	}
	minAt := slices.Index(vs, min)
	if minAt < 0 {
		return false, nil // another KEK's version
	}
	at := slices.Index(vs, s.KeyVersion)
	if at < 0 {
		return false, fmt.Errorf("the slot's key version %s is not one of KEK %s's versions", s.KeyVersion, s.KEK)
	}
	return at < minAt, nil
}

func (v *versionCache) outdated(s envelope.SlotInfo) (bool, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	cur, ok := v.current[s.KEK]
	if !ok {
		k, err := v.kek(s.KEK)
		if err != nil {
			return false, err
		}
		vr, ok := k.(kms.VersionReporter)
		if !ok {
			return false, fmt.Errorf("KEK %s cannot tell its current version", s.KEK)
		}
		if cur, err = vr.CurrentVersion(v.ctx); err != nil {
			return false, err
		}
		v.current[s.KEK] = cur
	}
	return s.KeyVersion != cur, nil
}
