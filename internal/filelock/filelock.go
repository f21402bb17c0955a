// Package filelock takes advisory locks on open files, shared or
// exclusive, waiting no longer than a context allows.
//
// On Unix the lock is flock(2); on Windows it is LockFileEx over the whole
// file. Elsewhere Lock fails with [ErrUnsupported]. The locks are advisory
// on Unix: they order kpcrypt's own processes (rewraps, rotations, readers
// of a slot table), not arbitrary writers.
package filelock

import (
	"context"
	"errors"
	"os"
	"time"
)

// ErrUnsupported means this platform has no file locks that kpcrypt uses.
var ErrUnsupported = errors.New("file locking is not supported on this platform")

// Lock locks f, exclusively or shared, waiting while another holder has a
// conflicting lock, until ctx is done. It returns ctx's error then. The lock
// is released by [Unlock] or when f is closed.
func Lock(ctx context.Context, f *os.File, exclusive bool) error {
	wait := time.Millisecond
	for {
		ok, err := tryLock(f, exclusive)
		if err != nil || ok {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, 10*time.Millisecond)
	}
}

// TryLock locks f if no other holder has a conflicting lock, and reports
// whether it did.
func TryLock(f *os.File, exclusive bool) (bool, error) { return tryLock(f, exclusive) }

// Unlock releases a lock taken on f.
func Unlock(f *os.File) error { return unlock(f) }

// Sidecar opens (creating it with mode 0600 if needed) the lock file path,
// which is never replaced, locks it exclusively as [Lock] does, and returns
// a function that unlocks and closes it. It serialises read-modify-write of
// a file that is itself replaced by rename (a key file, say), whose own
// descriptor cannot carry a lock across the rename.
func Sidecar(ctx context.Context, path string) (release func(), err error) {
	f, err := openSidecar(path)
	if err != nil {
		return nil, err
	}
	if err := Lock(ctx, f, true); err != nil {
		f.Close()
		return nil, err
	}
	return func() { unlock(f); f.Close() }, nil
}

// Links returns how many directory entries name the open file f: 0 once it
// was removed or renamed over, which a lock holder checks after its wait,
// since a writer that replaces a file by rename leaves the waiters locked
// on the old one. On platforms that do not tell, it returns 1.
func Links(f *os.File) (uint64, error) { return links(f) }
