//go:build unix

package envelope

import (
	"fmt"
	"os"
	"syscall"
)

func fileOwner(fi os.FileInfo) string {
	st := fi.Sys().(*syscall.Stat_t)
	return fmt.Sprintf("%d:%d", st.Uid, st.Gid)
}
