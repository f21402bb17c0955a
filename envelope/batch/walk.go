// Package batch runs envelope operations over many files: it walks trees
// for kpcrypt files, rewraps them with bounded concurrency and shared KMS
// calls, scans them for outdated key slots, and writes files atomically.
// It is what the kpcrypt command's rewrap and scan are made of.
//
// The walk keeps the rules the command keeps: a directory is walked inside
// an [os.Root], never through a symbolic link, a file found is later opened
// only if it is still the file the walk found, and the temporary files of
// atomic writers ([IsTemp]) are passed over. Every file gets a result that
// says what happened to it: nothing is left out, and a file that could not
// be checked is never reported as current.
package batch

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// ErrChangedDuringWalk is why a file found by [Walk] is not opened: what is
// now at its path is not the file the walk found.
var ErrChangedDuringWalk = errors.New("changed during the walk; left untouched")

// oNonblock opens a file the walk found: should a FIFO have been swapped
// in, the open must not wait for a writer.
const oNonblock = syscall.O_NONBLOCK

// Files is what [Walk] found: the files, in order, and how to open each one
// as it was found. Close it when done.
type Files struct {
	entries []entry
	roots   []*os.Root

	// NotKpcrypt counts the files found in directories that are not
	// kpcrypt files (they do not start with its magic).
	NotKpcrypt int
	// Temporary counts the temporary files of atomic writers passed over.
	Temporary int
	// Unreadable lists, as [*WalkError]s, the files and directories found
	// in a walk that could not be read: they are neither in the list nor
	// counted as not kpcrypt files, since nobody knows what they hold.
	Unreadable []error
}

// entry is one file found. A file named by the caller has no root: it is
// opened as named.
type entry struct {
	path string
	root *os.Root    // the directory walked, for a file found in it
	rel  string      // its path within root
	info fs.FileInfo // the file as the walk saw it
}

// WalkError is a file or directory found in a walk that could not be read.
type WalkError struct {
	Path string
	Err  error
}

func (e *WalkError) Error() string { return fmt.Sprintf("%s: %v", e.Path, e.Err) }
func (e *WalkError) Unwrap() error { return e.Err }

// Walk expands directories, recursively, into the kpcrypt files they hold.
// Files named in paths are kept whatever they hold; files found in
// directories are kept only if they are regular files that start with
// kpcrypt's magic. Temporary files of atomic writers ([IsTemp]) are passed
// over and counted.
//
// A directory is walked within an [os.Root], never through a symbolic link:
// the walk and every later [Files.Open] of a file it found stay inside the
// directory, even if a directory in it is swapped for a symbolic link
// meanwhile. A path in paths that does not exist, or a directory that
// cannot be opened, is an error, and nothing is returned; a file or
// directory found inside a walk that cannot be read goes into
// [Files.Unreadable] and the walk goes on.
func Walk(paths []string) (_ *Files, err error) {
	w := &Files{}
	defer func() {
		if err != nil {
			w.Close()
		}
	}()
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			w.entries = append(w.entries, entry{path: p})
			continue
		}
		root, err := os.OpenRoot(p)
		if err != nil {
			return nil, err
		}
		w.roots = append(w.roots, root)
		err = fs.WalkDir(root.FS(), ".", func(rel string, d fs.DirEntry, err error) error {
			path := filepath.Join(p, filepath.FromSlash(rel))
			if err != nil {
				if rel == "." {
					return err
				}
				w.Unreadable = append(w.Unreadable, &WalkError{path, errors.Unwrap(err)})
				return nil // skip it, go on
			}
			if !d.Type().IsRegular() {
				return nil
			}
			if IsTemp(d.Name()) {
				w.Temporary++
				return nil
			}
			info, err := isKpcryptFile(root, filepath.FromSlash(rel))
			switch {
			case err != nil:
				w.Unreadable = append(w.Unreadable, &WalkError{path, err})
			case info != nil:
				w.entries = append(w.entries, entry{path: path, root: root, rel: filepath.FromSlash(rel), info: info})
			default:
				w.NotKpcrypt++
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return w, nil
}

// Len returns the number of files.
func (w *Files) Len() int { return len(w.entries) }

// Path returns the path of the i-th file: as given, or the directory given
// joined with the file's path in it.
func (w *Files) Path(i int) string { return w.entries[i].path }

// Named reports whether the i-th file was named in Walk's paths rather
// than found in a directory.
func (w *Files) Named(i int) bool { return w.entries[i].root == nil }

// Close closes the directories walked. Files already opened stay open.
func (w *Files) Close() {
	for _, r := range w.roots {
		r.Close()
	}
	w.roots = nil
}

// Open opens the i-th file with flag (os.O_RDONLY or os.O_RDWR). A file
// named in Walk's paths is opened as named. A file found in a directory is
// opened within that directory, without blocking should it now be a FIFO,
// and only if it is the file the walk found (the same device and inode);
// otherwise Open fails with [ErrChangedDuringWalk].
func (w *Files) Open(i, flag int) (*os.File, error) {
	e := w.entries[i]
	if e.root == nil {
		return os.OpenFile(e.path, flag, 0)
	}
	f, err := e.root.OpenFile(e.rel, flag|oNonblock, 0)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || !os.SameFile(fi, e.info) {
		f.Close()
		return nil, ErrChangedDuringWalk
	}
	return f, nil
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
