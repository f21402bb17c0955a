//go:build darwin || dragonfly || freebsd || linux || netbsd || openbsd

package atomicfile

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"syscall"

	"github.com/kpcrypt/kpcrypt/internal/filelock"
)

// holdOpen: a temporary file stays open, and so locked, as long as its
// name exists.
const holdOpen = true

// lockNew locks exclusively the temporary file f just created at path, for
// as long as f is open, and reports whether path still names it: a
// concurrent removeStale may have taken the lock and removed the file
// between its creation and this lock.
func lockNew(f *os.File, path string) (bool, error) {
	// Only a concurrent removeStale, holding the lock for an instant,
	// can make this wait.
	if err := filelock.Lock(context.Background(), f, true); err != nil {
		return false, err
	}
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	pi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return os.SameFile(fi, pi), nil
}

// removeIfStale removes the temporary file at path if it is a regular file
// owned by the effective user whose writer is dead: its exclusive lock can
// be taken without waiting. A live writer holds the lock, so its file is
// left alone. Errors are ignored.
func removeIfStale(path string) {
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != os.Geteuid() {
		return
	}
	// O_NONBLOCK: should the name become a FIFO meanwhile, do not wait.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return
	}
	defer f.Close()
	if ofi, err := f.Stat(); err != nil || !os.SameFile(fi, ofi) {
		return
	}
	if ok, err := filelock.TryLock(f, true); !ok || err != nil {
		return // a live writer's, or no lock to be had
	}
	// Still the file locked: remove it while holding the lock.
	if now, err := os.Lstat(path); err == nil && os.SameFile(now, fi) {
		os.Remove(path)
	}
}
