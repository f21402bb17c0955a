//go:build unix

package atomicfile

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// checkPlantedLink refuses a symbolic link at path that another user owns
// in a sticky directory that group or others may write: in /tmp, such a
// link is how another user points a victim's output at a file of their
// choosing (the kernel's protected_symlinks rule, applied to a link this
// package would otherwise resolve itself).
func checkPlantedLink(path string, link fs.FileInfo) error {
	dir, err := os.Stat(filepath.Dir(path))
	if err != nil {
		return err
	}
	if dir.Mode()&os.ModeSticky == 0 || dir.Mode().Perm()&0o022 == 0 {
		return nil
	}
	st, ok := link.Sys().(*syscall.Stat_t)
	dst, dok := dir.Sys().(*syscall.Stat_t)
	if !ok || !dok {
		return nil
	}
	if st.Uid != uint32(os.Geteuid()) && st.Uid != dst.Uid {
		return fmt.Errorf("%s is a symbolic link another user owns in a shared sticky directory: refusing to follow it", path)
	}
	return nil
}
