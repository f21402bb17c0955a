//go:build unix

package securefile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// open opens resolved for reading without following a final symbolic link
// and without blocking on a named pipe or device.
func open(resolved, name string) (*os.File, error) {
	f, err := os.OpenFile(resolved, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ELOOP) {
		// The link was resolved: something replaced the file since.
		return nil, fmt.Errorf("%w: %s became a symbolic link while being opened; try again, and check who can write to its directory", ErrNotRegular, name)
	}
	return f, err
}

// checkAccess checks the owner and the permission bits of fi.
func checkAccess(fi fs.FileInfo, path, name string) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no owner in the file information", name)
	}
	if uid, euid := int(st.Uid), os.Geteuid(); uid != euid && uid != 0 {
		return fmt.Errorf("%w: %s belongs to uid %d, and only files of uid %d or root are trusted; chown it or use a copy of your own",
			ErrOwner, name, uid, euid)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %04o; run chmod 600 %s", ErrInsecureMode, name, perm, path)
	}
	return nil
}
