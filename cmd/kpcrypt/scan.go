package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/envelope/batch"
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
	walk, err := batch.Walk(paths)
	if err != nil {
		u.errorf("%v", err)
		return exitStatus(3) // nothing could be checked
	}
	defer walk.Close()
	found, failed := 0, len(walk.Unreadable)
	for _, err := range walk.Unreadable {
		u.errorf("%v (not checked)", err)
	}
	results := batch.Scan(ctx, walk, &batch.ScanOptions{Versions: batch.NewVersions(keyring),
		BelowVersion: *below, BelowKEK: belowKEK, Jobs: 1, FileTimeout: *kmsTimeout})
	for _, r := range results {
		if r.Err != nil {
			u.errorf("%s: %v", r.Path, r.Err)
			failed++
			continue
		}
		for _, c := range r.Slots {
			if c.Err != nil {
				u.errorf("%s: slot %d not checked: %v", r.Path, c.Index, slotError(r.Header.Slots[c.Index], c.Err))
				failed++
				continue
			}
			if c.Outdated {
				s := r.Header.Slots[c.Index]
				fmt.Fprintf(u.stdout, "%s\tslot %d\t%s\tkey version %s\n", termsafe.Escape(r.Path), c.Index, termsafe.Escape(s.KEK), termsafe.Escape(orDash(s.KeyVersion)))
			}
		}
		if r.Outdated() {
			found++
		}
	}
	what := "not under their KEK's current version"
	if !*outdated {
		what = fmt.Sprintf("under a key version older than %s", *below)
	}
	passed := ""
	if walk.Temporary > 0 {
		passed = fmt.Sprintf(" (%d temporary files passed over)", walk.Temporary)
	}
	u.infof("%d of %d files have slots %s%s", found, walk.Len(), what, passed)
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

// slotError says why a slot could not be checked, in the command's terms.
func slotError(s envelope.SlotInfo, err error) error {
	if errors.Is(err, batch.ErrNoKEK) {
		return fmt.Errorf("cannot open KEK %s (give it with --kek)", s.KEK)
	}
	return err
}
