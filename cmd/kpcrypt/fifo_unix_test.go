//go:build unix

package main

import (
	"syscall"
	"testing"
)

// mkfifo makes a named pipe, and reports that it could.
func mkfifo(t *testing.T, path string) bool {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	return true
}
