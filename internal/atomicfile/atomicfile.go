// Package atomicfile writes files so that a failure at any point leaves
// nothing half-written at the target, and a killed writer leaves nothing
// readable behind for long.
//
// The data goes to a temporary file in the target's directory, which is
// synced and then put in place (linked, or renamed over the target).
//
//   - On Linux, where the filesystem supports O_TMPFILE, the temporary file
//     has no name until Commit links it in place: a writer killed at any
//     point (even by SIGKILL) leaves nothing in the directory.
//   - Elsewhere (other systems, filesystems without O_TMPFILE), the
//     temporary file is named ".NAME.kpcrypt-tmp-RANDOM" (see [IsTemp]) and,
//     on Unix systems with flock(2), its writer holds an exclusive flock on it
//     while it exists. A writer killed before Commit or Abort leaves it
//     behind; the next [Create] in that directory removes such leftovers,
//     but only those owned by the same user whose lock it can take (so that
//     their writer is dead): a live writer's file is never removed.
//   - On Windows (and Unix systems without flock) there is no lock: the
//     temporary file has the same recognisable name, but leftovers are not
//     removed automatically, since a live writer's file cannot be told from a
//     dead one's. Remove them by hand.
//
// The permissions given to Create are those of open(2): the process's umask
// (or a directory's default ACL) applies to them, as for [os.OpenFile].
package atomicfile

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"unicode/utf8"
)

// ErrExists is returned when the target exists and overwriting was not
// allowed.
var ErrExists = errors.New("file exists")

// ErrNotDurable is returned by Commit when the file is in place but the
// directory could not be synced, so a crash may still lose the new name.
// The caller should warn rather than report a failure: the file is there.
var ErrNotDurable = errors.New("the file is in place, but its directory could not be synced")

// File is a file being written atomically. Write to it, then Commit to put it
// in place, or Abort to remove it. Abort after Commit does nothing, so
// `defer f.Abort()` is the idiom. Its Name is not the target's.
type File struct {
	*os.File
	target    string
	dir       string // the target's directory
	tmp       string // the temporary file's path; "" for an unnamed (O_TMPFILE) one
	overwrite bool
	done      bool
	// through is set when the target is a device or a named pipe: it is
	// written in place, never replaced.
	through bool
}

// forceNamed makes Create use a named temporary file even where O_TMPFILE
// works; tests set it.
var forceNamed bool

// tmpInfix and tmpRandLen make the recognisable temporary names:
// "." + NAME + tmpInfix + tmpRandLen lowercase hex digits.
const (
	tmpInfix   = ".kpcrypt-tmp-"
	tmpRandLen = 16
	// maxTmpBase bounds the NAME part, so that temporary names of long
	// targets stay within the usual 255-byte limit on a name.
	maxTmpBase = 200
)

// IsTemp reports whether the last element of name has the form of this
// package's temporary files, ".NAME.kpcrypt-tmp-RANDOM". Directory walks
// should skip such files: they are another writer's work in progress, or a
// dead writer's leftover.
func IsTemp(name string) bool {
	base := filepath.Base(name)
	i := strings.LastIndex(base, tmpInfix)
	if i < 1 || base[0] != '.' {
		return false
	}
	suffix := base[i+len(tmpInfix):]
	if len(suffix) != tmpRandLen {
		return false
	}
	for _, c := range []byte(suffix) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// TempName returns a new random name for a temporary file beside a target
// named base, of the form [IsTemp] recognises, for callers that create it
// themselves (within an *os.Root, say).
func TempName(base string) string {
	if len(base) > maxTmpBase {
		base = base[:maxTmpBase]
		// Drop a character cut in two.
		for len(base) > 0 {
			if r, size := utf8.DecodeLastRuneInString(base); r != utf8.RuneError || size != 1 {
				break
			}
			base = base[:len(base)-1]
		}
	}
	var r [tmpRandLen / 2]byte
	rand.Read(r[:])
	return "." + base + tmpInfix + hex.EncodeToString(r[:])
}

// existsError is the error of a target that exists where none may.
func existsError(path string) error {
	return fmt.Errorf("%s: %w (use --force to overwrite)", path, ErrExists)
}

// Create starts writing path atomically. The file is created with the
// permissions perm, to which the umask applies (as for [os.OpenFile]).
// Unless overwrite is set, it fails with [ErrExists] if anything exists at
// path (a file, a link, a named pipe, a device), and Commit fails the same
// way if path appears in the meantime.
//
// With overwrite, an existing path that is a symbolic link stands for the
// file it resolves to, which is replaced atomically (the link stays a
// link), except for a link that another user planted in a sticky directory
// that others may write to (/tmp), which is refused, as the kernel's
// protected_symlinks would; a dangling link is refused. An existing device
// or named pipe is written through, never replaced: Commit and Abort only
// close it, and what was written before an Abort stays written. A
// directory is refused.
//
// Create first removes the stale temporary files of dead writers from the
// directory, where it can tell them (see the package documentation).
func Create(path string, perm fs.FileMode, overwrite bool) (*File, error) {
	return create(path, perm, overwrite, overwrite)
}

// create is Create; through allows writing through a device or a named
// pipe (never for key material: see WriteFile).
func create(path string, perm fs.FileMode, overwrite, through bool) (*File, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.IsDir() {
			return nil, fmt.Errorf("%s is a directory: name a file in it", path)
		}
		if !overwrite {
			return nil, existsError(path)
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			if err := checkPlantedLink(path, fi); err != nil {
				return nil, err
			}
			resolved, err := filepath.EvalSymlinks(path)
			if err != nil {
				return nil, fmt.Errorf("%s is a symbolic link that leads nowhere (%v)", path, errors.Unwrap(err))
			}
			path = resolved
			if fi, err = os.Lstat(path); err != nil {
				return nil, err
			}
		}
		switch {
		case fi.IsDir():
			return nil, fmt.Errorf("%s is a directory: name a file in it", path)
		case fi.Mode()&(fs.ModeDevice|fs.ModeCharDevice|fs.ModeNamedPipe) != 0:
			if !through {
				return nil, fmt.Errorf("%s is not a regular file: refusing to write it", path)
			}
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				return nil, err
			}
			return &File{File: f, target: path, through: true}, nil
		case !fi.Mode().IsRegular():
			return nil, fmt.Errorf("%s is not a regular file: refusing to replace it", path)
		}
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	if base == "" {
		return nil, &fs.PathError{Op: "create", Path: path, Err: errors.New("not a file name")}
	}
	removeStale(dir)
	if !forceNamed {
		if f, err := openUnnamed(dir, path, perm); err == nil {
			return &File{File: f, target: path, dir: dir, overwrite: overwrite}, nil
		}
		// No O_TMPFILE here: use a named file.
	}
	f, tmp, err := createNamed(dir, base, perm)
	if err != nil {
		return nil, err
	}
	return &File{File: f, target: path, dir: dir, tmp: tmp, overwrite: overwrite}, nil
}

// createNamed creates a new temporary file in dir, named for base, locked
// where locks exist.
func createNamed(dir, base string, perm fs.FileMode) (*os.File, string, error) {
	for range 100 {
		tmp := filepath.Join(dir, TempName(base))
		f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, perm)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, "", err
		}
		ok, err := lockNew(f, tmp)
		if err != nil {
			f.Close()
			os.Remove(tmp)
			return nil, "", err
		}
		if !ok {
			// Another Create removed it as stale before we locked it:
			// take another name.
			f.Close()
			continue
		}
		return f, tmp, nil
	}
	return nil, "", &fs.PathError{Op: "createtemp", Path: filepath.Join(dir, "."+base+tmpInfix+"*"), Err: fs.ErrExist}
}

// Commit syncs the file to disk, puts it at its target path, and syncs the
// directory.
func (f *File) Commit() error {
	if f.done {
		return errors.New("atomicfile: already committed or aborted")
	}
	f.done = true
	if f.through {
		return f.File.Close()
	}
	err := f.Sync()
	if err == nil {
		if f.tmp == "" {
			err = f.commitUnnamed()
		} else {
			err = f.commitNamed()
		}
	}
	if f.tmp != "" && (err != nil || !f.overwrite) {
		// After a failure, or after a link, the temporary name goes.
		// While it exists the file stays open (and so locked).
		if !holdOpen {
			f.File.Close()
		}
		os.Remove(f.tmp)
	}
	if cerr := f.File.Close(); err == nil && cerr != nil && !errors.Is(cerr, fs.ErrClosed) {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := syncDir(f.dir); err != nil {
		return fmt.Errorf("%s: %w: %v", f.target, ErrNotDurable, err)
	}
	return nil
}

// commitNamed puts a named temporary file in place.
func (f *File) commitNamed() error {
	if !holdOpen {
		if err := f.File.Close(); err != nil {
			return err
		}
	}
	if f.overwrite {
		return os.Rename(f.tmp, f.target)
	}
	// A hard link fails if the target exists, so a file that appeared
	// since Create is never replaced.
	err := os.Link(f.tmp, f.target)
	if errors.Is(err, fs.ErrExist) {
		err = existsError(f.target)
	}
	return err
}

// commitUnnamed links an unnamed temporary file in place: straight at the
// target (which fails if the target exists), or, to replace the target, at a
// temporary name renamed over it.
func (f *File) commitUnnamed() error {
	if !f.overwrite {
		err := linkUnnamed(f.File, f.target)
		if errors.Is(err, fs.ErrExist) {
			err = existsError(f.target)
		}
		return err
	}
	for range 100 {
		tmp := filepath.Join(f.dir, TempName(filepath.Base(f.target)))
		err := linkUnnamed(f.File, tmp)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return err
		}
		if err := os.Rename(tmp, f.target); err != nil {
			os.Remove(tmp)
			return err
		}
		return nil
	}
	return &fs.PathError{Op: "link", Path: f.target, Err: fs.ErrExist}
}

// Abort removes the temporary file, unless the file was committed.
func (f *File) Abort() {
	if f.done {
		return
	}
	f.done = true
	if f.tmp != "" && !f.through {
		if !holdOpen {
			f.File.Close()
		}
		os.Remove(f.tmp)
	}
	f.File.Close()
}

// WriteFile writes data to path atomically, as [Create] and
// [File.Commit] do, except that it never writes through a device or a
// named pipe: it is for files whose content must land in a file of mode
// perm (key files), never in a reader's hands.
func WriteFile(path string, data []byte, perm fs.FileMode, overwrite bool) error {
	f, err := create(path, perm, overwrite, false)
	if err != nil {
		return err
	}
	defer f.Abort()
	if _, err := f.Write(data); err != nil {
		return err
	}
	return f.Commit()
}

// removeStale removes from dir the temporary files that removeIfStale finds
// stale. It is best effort: errors are ignored.
func removeStale(dir string) {
	d, err := os.Open(dir)
	if err != nil {
		return
	}
	defer d.Close()
	for {
		entries, err := d.ReadDir(256)
		for _, e := range entries {
			if IsTemp(e.Name()) && e.Type().IsRegular() {
				removeIfStale(filepath.Join(dir, e.Name()))
			}
		}
		if err != nil {
			return
		}
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, errors.ErrUnsupported) && !errors.Is(err, syscall.EINVAL) {
		return err // EINVAL: this filesystem does not sync directories
	}
	return nil
}
