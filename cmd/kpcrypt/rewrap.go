package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/schollz/progressbar/v3"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/internal/termsafe"
)

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
	walk, sum, err := walkFiles(paths)
	if err != nil {
		return err
	}
	skipped := sum.notKpcrypt
	for _, msg := range sum.unreadable {
		u.errorf("%s (not checked)", msg)
	}
	defer walk.Close()
	if testHookAfterWalk != nil {
		testHookAfterWalk()
	}
	files := walk.paths

	var bar *progressbar.ProgressBar
	if !*quiet && isTerminal(u.stderr) && len(files) > 1 {
		bar = progressbar.NewOptions(len(files), progressbar.OptionSetWriter(u.stderr),
			progressbar.OptionSetDescription("rewrapping"), progressbar.OptionShowCount(), progressbar.OptionClearOnFinish())
	}
	type outcome struct {
		res *envelope.RewrapResult
		err error
	}
	results := make([]outcome, len(files))
	var wg sync.WaitGroup
	sem := make(chan struct{}, *jobs)
	var mu sync.Mutex
	for i := range files {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			kctx, cancel := context.WithTimeout(ctx, *kmsTimeout)
			res, err := walk.rewrap(kctx, i, opts)
			cancel()
			results[i] = outcome{res, err}
			if bar != nil {
				mu.Lock()
				bar.Add(1)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if bar != nil {
		bar.Finish()
	}

	// A --remove-kek that removes nothing is a mistake (a typo, another
	// spelling of the URI): say so rather than report files as current.
	var unused []string
	for _, uri := range remove {
		removed := false
		for i, o := range results {
			if o.err != nil {
				continue
			}
			if slices.ContainsFunc(o.res.Slots, func(c envelope.SlotChange) bool { return c.Action == "removed" && c.URI == uri }) {
				removed = true
			} else if walk.entries[i].root == nil {
				results[i].err = fmt.Errorf("the file holds no slot of %s: nothing to remove (see kpcrypt inspect)", uri)
			}
		}
		if !removed && slices.ContainsFunc(walk.entries, func(e walkEntry) bool { return e.root != nil }) {
			unused = append(unused, uri)
		}
	}

	var nChanged, nCurrent, nUnchanged, nFailed, nUnchecked int
	verb := "rewrapped"
	if *dryRun {
		verb = "would rewrap"
	}
	for i, o := range results {
		if o.err != nil {
			nFailed++
			u.errorf("%s: %v", files[i], o.err)
			continue
		}
		unchecked := uncheckedSlots(u, files[i], o.res)
		if unchecked > 0 {
			nUnchecked++
		}
		switch {
		case o.res.Changed:
			nChanged++
			if !*quiet {
				fmt.Fprintf(u.stdout, "%s %s: %s\n", verb, termsafe.Escape(files[i]), termsafe.Escape(describeChanges(o.res)))
			}
		case unchecked > 0:
			if !*quiet {
				fmt.Fprintf(u.stdout, "not checked %s\n", termsafe.Escape(files[i]))
			}
		case allCurrent(o.res):
			nCurrent++
			if !*quiet {
				fmt.Fprintf(u.stdout, "current %s\n", termsafe.Escape(files[i]))
			}
		default:
			// Slots only kept (added or removed elsewhere, or a KEK that
			// cannot tell its version): unchanged, not "current".
			nUnchanged++
			if !*quiet {
				fmt.Fprintf(u.stdout, "unchanged %s\n", termsafe.Escape(files[i]))
			}
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
	if sum.temporary > 0 {
		summary += fmt.Sprintf(", %d temporary files passed over", sum.temporary)
	}
	if len(sum.unreadable) > 0 {
		summary += fmt.Sprintf(", %d unreadable", len(sum.unreadable))
	}
	u.infof("%s", summary)
	for _, uri := range unused {
		u.errorf("--remove-kek %s: no file holds a slot of this KEK; nothing was removed", uri)
	}
	if nFailed > 0 || nUnchecked > 0 || len(unused) > 0 || len(sum.unreadable) > 0 {
		return errQuiet
	}
	return nil
}

// allCurrent reports whether every slot of a file was found at its KEK's
// current version.
func allCurrent(res *envelope.RewrapResult) bool {
	for _, c := range res.Slots {
		if c.Action != "current" {
			return false
		}
	}
	return len(res.Slots) > 0
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

// collectFiles expands directories, recursively, into the kpcrypt files they
// hold. Files named on the command line are kept whatever they hold; files
// found in directories are kept only if they start with kpcrypt's magic.
// Temporary files of writers in progress (atomicfile.IsTemp) are passed over.
//
// A directory is walked within an os.Root, never through a symlink: the
// walk and every later open of a file it found stay inside the directory,
// even if a directory in it is swapped for a symlink meanwhile, and
// [walked.open] opens only the very file the walk found. Close the result.
func collectFiles(paths []string) (_ *walked, skipped int, err error) {
	w, sum, err := walkFiles(paths)
	if err != nil {
		return nil, 0, err
	}
	return w, sum.notKpcrypt, nil
}

// walkSummary is what a walk passed over: files that are not kpcrypt files,
// temporary files of atomic writers, and files and directories it could not
// read (never silently taken for "not a kpcrypt file").
type walkSummary struct {
	notKpcrypt, temporary int
	unreadable            []string // one message each
}

// walkFiles expands directories, recursively, into the kpcrypt files they
// hold, as collectFiles does, and says what it passed over. A path named on
// the command line that does not exist is an error; a file or directory
// found in a walk that cannot be read is reported in the summary and the
// walk goes on.
func walkFiles(paths []string) (_ *walked, sum walkSummary, err error) {
	w := &walked{}
	defer func() {
		if err != nil {
			w.Close()
		}
	}()
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, sum, err
		}
		if !fi.IsDir() {
			w.add(walkEntry{path: p})
			continue
		}
		root, err := os.OpenRoot(p)
		if err != nil {
			return nil, sum, err
		}
		w.roots = append(w.roots, root)
		err = fs.WalkDir(root.FS(), ".", func(rel string, d fs.DirEntry, err error) error {
			path := filepath.Join(p, filepath.FromSlash(rel))
			if err != nil {
				if rel == "." {
					return err
				}
				sum.unreadable = append(sum.unreadable, fmt.Sprintf("%s: %v", path, errors.Unwrap(err)))
				return nil // skip it, go on
			}
			if !d.Type().IsRegular() {
				return nil
			}
			if skipInWalk(d.Name()) {
				sum.temporary++
				return nil
			}
			info, err := isKpcryptFile(root, filepath.FromSlash(rel))
			switch {
			case err != nil:
				sum.unreadable = append(sum.unreadable, fmt.Sprintf("%s: %v", path, err))
			case info != nil:
				w.add(walkEntry{path: path, root: root, rel: filepath.FromSlash(rel), info: info})
			default:
				sum.notKpcrypt++
			}
			return nil
		})
		if err != nil {
			return nil, sum, err
		}
	}
	return w, sum, nil
}

// isKpcryptFile reports, by the file it opened, whether the file at rel in
// root is a regular file starting with kpcrypt's magic: its FileInfo if so,
// else nil. A file it cannot open or read is an error, not "no".
func isKpcryptFile(root *os.Root, rel string) (fs.FileInfo, error) {
	f, err := root.OpenFile(rel, os.O_RDONLY|oNonblock, 0)
	if err != nil {
		return nil, errors.Unwrap(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, nil
	}
	var magic [4]byte
	if _, err = io.ReadFull(f, magic[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, nil // too short to be one
		}
		return nil, err
	}
	if string(magic[:]) != "KPCF" {
		return nil, nil
	}
	return fi, nil
}
