//go:build !unix && !windows

package filelock

import "os"

func tryLock(*os.File, bool) (bool, error) { return false, ErrUnsupported }

func unlock(*os.File) error { return ErrUnsupported }

func openSidecar(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
}

func links(*os.File) (uint64, error) { return 1, nil }
