//go:build unix

package trust

import (
	"fmt"
	"os"
	"syscall"
)

// checkDir refuses a directory where others could replace the trust file:
// one that group or others may write, unless it is sticky (as /tmp is, where
// only a file's owner may rename or remove it), or one owned by another
// user than the caller and root.
func checkDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&os.ModeSticky == 0 {
		return fmt.Errorf("its directory %s may be written by group or others (mode %04o), who could replace it: run chmod go-w %s", dir, fi.Mode().Perm(), dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && st.Uid != uint32(os.Geteuid()) {
		return fmt.Errorf("its directory %s belongs to another user, who could replace it", dir)
	}
	return nil
}
