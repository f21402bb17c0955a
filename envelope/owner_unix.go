//go:build unix

package envelope

import (
	"fmt"
	"os"
	"syscall"
)

// keepOwner gives the new file nf the owner and group of the file fi
// describes, which a rewrite whole replaces; it fails, so that the rewrite
// is not made, if it cannot (a user other than root rewrapping another's
// file, or a group it is not in).
func keepOwner(nf *os.File, fi os.FileInfo) error {
	want, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	nfi, err := nf.Stat()
	if err != nil {
		return err
	}
	if got, ok := nfi.Sys().(*syscall.Stat_t); ok && got.Uid == want.Uid && got.Gid == want.Gid {
		return nil
	}
	if err := nf.Chown(int(want.Uid), int(want.Gid)); err != nil {
		return fmt.Errorf("rewriting the file whole with a larger slot table would change its owner or group (%d:%d), and they cannot be kept (%v): rewrap it as its owner", want.Uid, want.Gid, err)
	}
	return nil
}
