package atomicfile

import (
	"context"
	"io/fs"
	"os"
	"strconv"

	"github.com/kpcrypt/kpcrypt/internal/filelock"
	"golang.org/x/sys/unix"
)

// openUnnamed opens an unnamed file in dir (O_TMPFILE), with permissions
// perm less the umask, locked exclusively, named name for messages. It fails
// where the kernel or the filesystem has no O_TMPFILE, and where /proc is
// missing (the link at Commit goes through /proc/self/fd).
func openUnnamed(dir, name string, perm fs.FileMode) (*os.File, error) {
	var fd int
	var err error
	for {
		fd, err = unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, uint32(perm.Perm()))
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: dir, Err: err}
	}
	f := os.NewFile(uintptr(fd), name)
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if pi, err := os.Stat(procPath(fd)); err != nil || !os.SameFile(fi, pi) {
		f.Close()
		return nil, &fs.PathError{Op: "stat", Path: procPath(fd), Err: fs.ErrNotExist}
	}
	if err := filelock.Lock(context.Background(), f, true); err != nil { // a new, unnamed file: no one else holds it
		f.Close()
		return nil, err
	}
	return f, nil
}

func procPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// linkUnnamed gives the unnamed file f the name path. Like link(2), it fails
// if path exists. Linking through /proc/self/fd with AT_SYMLINK_FOLLOW needs
// no privilege, unlike AT_EMPTY_PATH.
func linkUnnamed(f *os.File, path string) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) {
		for {
			lerr = unix.Linkat(unix.AT_FDCWD, procPath(int(fd)), unix.AT_FDCWD, path, unix.AT_SYMLINK_FOLLOW)
			if lerr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	if lerr != nil {
		return &os.LinkError{Op: "link", Old: f.Name(), New: path, Err: lerr}
	}
	return nil
}
