//go:build !unix

package securefile

import (
	"io/fs"
	"os"
)

// open opens resolved for reading. There is no O_NOFOLLOW here; the
// regular-file check on the open handle follows.
func open(resolved, name string) (*os.File, error) {
	return os.OpenFile(resolved, os.O_RDONLY, 0)
}

// checkAccess does nothing: access is governed by ACLs, not checked here.
func checkAccess(fi fs.FileInfo, path, name string) error { return nil }
