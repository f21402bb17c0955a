package batch

import (
	"io/fs"

	"github.com/kpcrypt/kpcrypt/internal/atomicfile"
)

// ErrExists is returned by [CreateAtomic] and [AtomicFile.Commit] when the
// target exists and overwriting was not allowed.
var ErrExists = atomicfile.ErrExists

// ErrNotDurable is returned by [AtomicFile.Commit] when the file is in place
// but its directory could not be synced, so that a crash may still lose the
// new name. Warn rather than report a failure: the file is there.
var ErrNotDurable = atomicfile.ErrNotDurable

// AtomicFile is a file being written atomically: a failure at any point
// leaves nothing half-written at the target. The data goes to a temporary
// file in the target's directory (unnamed where Linux's O_TMPFILE allows,
// else named as [IsTemp] recognises), which Commit syncs and puts in place.
// Write to it, then Commit, or Abort; Abort after Commit does nothing, so
// `defer f.Abort()` is the idiom. It is not safe for concurrent use.
type AtomicFile struct {
	f *atomicfile.File
}

// CreateAtomic starts writing path atomically, with the permissions perm to
// which the umask applies (as for [os.OpenFile]). Unless overwrite is set
// it fails with [ErrExists] if anything exists at path, and Commit fails
// the same way if something appears there meanwhile. With overwrite, a
// symbolic link at path stands for the file it resolves to (except one
// another user planted in a sticky directory, or a dangling one, which are
// refused), and a device or named pipe is written through, never replaced.
// A directory is refused.
//
// It first removes, where it can tell them, the temporary files that dead
// writers left in the directory: a live writer's are never removed.
func CreateAtomic(path string, perm fs.FileMode, overwrite bool) (*AtomicFile, error) {
	f, err := atomicfile.Create(path, perm, overwrite)
	if err != nil {
		return nil, err
	}
	return &AtomicFile{f}, nil
}

// Write writes to the temporary file.
func (a *AtomicFile) Write(p []byte) (int, error) { return a.f.Write(p) }

// Commit syncs the file, puts it at its target path and syncs the
// directory. An error but [ErrNotDurable] means the target is as it was.
func (a *AtomicFile) Commit() error { return a.f.Commit() }

// Abort removes the temporary file, unless the file was committed.
func (a *AtomicFile) Abort() { a.f.Abort() }

// WriteFile writes data to path atomically, as [CreateAtomic] and
// [AtomicFile.Commit] do, except that it never writes through a device or
// a named pipe: the data lands in a file of mode perm or nowhere.
func WriteFile(path string, data []byte, perm fs.FileMode, overwrite bool) error {
	return atomicfile.WriteFile(path, data, perm, overwrite)
}

// IsTemp reports whether the last element of name has the form of the
// temporary files of atomic writers, ".NAME.kpcrypt-tmp-RANDOM": another
// writer's work in progress, or a dead writer's leftover. [Walk] passes
// over them, and so should other walks.
func IsTemp(name string) bool { return atomicfile.IsTemp(name) }
