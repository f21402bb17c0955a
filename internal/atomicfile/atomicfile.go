// Package atomicfile writes files so that a failure at any point leaves
// nothing half-written: the data goes to a temporary file beside the target,
// which is synced and then renamed over it.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// ErrExists is returned when the target exists and overwriting was not
// allowed.
var ErrExists = errors.New("file exists")

// File is a file being written atomically. Write to it, then Commit to put it
// in place, or Abort to remove it. Abort after Commit does nothing, so
// `defer f.Abort()` is the idiom.
type File struct {
	*os.File
	target    string
	overwrite bool
	done      bool
}

// Create starts writing path atomically with permissions perm. Unless
// overwrite is set, it fails with [ErrExists] if path exists, and Commit
// fails the same way if path appears in the meantime.
func Create(path string, perm fs.FileMode, overwrite bool) (*File, error) {
	if !overwrite {
		if _, err := os.Lstat(path); err == nil {
			return nil, fmt.Errorf("%s: %w (use --force to overwrite)", path, ErrExists)
		}
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return nil, err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	return &File{File: f, target: path, overwrite: overwrite}, nil
}

// Commit syncs the file to disk and moves it to its target path.
func (f *File) Commit() error {
	if f.done {
		return errors.New("atomicfile: already committed or aborted")
	}
	f.done = true
	tmp := f.Name()
	err := f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		if f.overwrite {
			err = os.Rename(tmp, f.target)
		} else {
			// A hard link fails if the target exists, so a file that
			// appeared since Create is never replaced.
			if err = os.Link(tmp, f.target); err == nil {
				os.Remove(tmp)
			} else if errors.Is(err, fs.ErrExist) {
				err = fmt.Errorf("%s: %w (use --force to overwrite)", f.target, ErrExists)
			}
		}
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(f.target))
}

// Abort removes the temporary file, unless the file was committed.
func (f *File) Abort() {
	if f.done {
		return
	}
	f.done = true
	f.Close()
	os.Remove(f.Name())
}

// WriteFile writes data to path atomically.
func WriteFile(path string, data []byte, perm fs.FileMode, overwrite bool) error {
	f, err := Create(path, perm, overwrite)
	if err != nil {
		return err
	}
	defer f.Abort()
	if _, err := f.Write(data); err != nil {
		return err
	}
	return f.Commit()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, errors.ErrUnsupported) {
		return err
	}
	return nil
}
