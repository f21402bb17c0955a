//go:build !linux

package atomicfile

import (
	"errors"
	"io/fs"
	"os"
)

// openUnnamed fails: only Linux has O_TMPFILE. Create uses a named
// temporary file instead.
func openUnnamed(dir, name string, perm fs.FileMode) (*os.File, error) {
	return nil, errors.ErrUnsupported
}

// linkUnnamed is never called: openUnnamed never succeeds.
func linkUnnamed(f *os.File, path string) error { return errors.ErrUnsupported }
