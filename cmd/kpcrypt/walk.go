package main

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"syscall"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/internal/atomicfile"
)

// The directory walk of rewrap and scan: collectFiles and isKpcryptFile, in
// rewrap.go, and what they return.

// testHookAfterWalk, when set, runs between the walk and the rewraps.
var testHookAfterWalk func()

// oNonblock opens a file the walk found: should a FIFO have been swapped
// in, the open must not wait for a writer.
const oNonblock = syscall.O_NONBLOCK

// skipInWalk reports whether the walk passes over a file of this name: the
// temporary files of atomic writers, in progress or left by a killed one.
func skipInWalk(name string) bool { return atomicfile.IsTemp(name) }

// walked is what collectFiles found: the files, in order, and how to open
// each one as it was found.
type walked struct {
	// paths are the files' paths, for messages.
	paths   []string
	entries []walkEntry
	roots   []*os.Root
}

// walkEntry is one file found. A file named on the command line has no
// root: it is opened as named.
type walkEntry struct {
	path string
	root *os.Root    // the directory walked, for a file found in it
	rel  string      // its path within root
	info fs.FileInfo // the file as the walk saw it
}

// errChangedDuringWalk is why a file found by the walk is not opened: what
// is now at its path is not the file the walk found.
var errChangedDuringWalk = errors.New("changed during the walk; left untouched")

func (w *walked) add(e walkEntry) {
	w.paths = append(w.paths, e.path)
	w.entries = append(w.entries, e)
}

// Close closes the directories walked.
func (w *walked) Close() {
	for _, r := range w.roots {
		r.Close()
	}
}

// open opens the i-th file with flag (os.O_RDONLY or os.O_RDWR). A file
// found in a directory is opened within that directory and only if it is
// the file the walk found (same device and inode); otherwise open fails
// with errChangedDuringWalk.
func (w *walked) open(i, flag int) (*os.File, error) {
	e := w.entries[i]
	if e.root == nil {
		return os.OpenFile(e.path, flag, 0)
	}
	// O_NONBLOCK: a FIFO swapped in must not block the open.
	f, err := e.root.OpenFile(e.rel, flag|oNonblock, 0)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || !os.SameFile(fi, e.info) {
		f.Close()
		return nil, errChangedDuringWalk
	}
	return f, nil
}

// rewrap rewraps the i-th file, which it opens as open does.
func (w *walked) rewrap(ctx context.Context, i int, opts *envelope.RewrapOptions) (*envelope.RewrapResult, error) {
	f, err := w.open(i, os.O_RDWR)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return envelope.RewrapFile(ctx, f, opts)
}
