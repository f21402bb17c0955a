//go:build linux

package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// openPTY returns the two ends of a new pseudo-terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal here: %v", err)
	}
	fd := int(m.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// runWithTTY runs kpcrypt with stdout or stderr on a terminal and returns
// what the terminal showed.
func runWithTTY(t *testing.T, dir string, ttyStdout bool, args ...string) (int, string, []byte) {
	t.Helper()
	master, slave := openPTY(t)
	cmd := exec.Command(kpcryptBin, args...)
	cmd.Dir = dir
	var other bytes.Buffer
	if ttyStdout {
		cmd.Stdout, cmd.Stderr = slave, &other
	} else {
		cmd.Stdout, cmd.Stderr = &other, slave
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	var screen bytes.Buffer
	copied := make(chan struct{})
	go func() { io.Copy(&screen, master); close(copied) }()
	err := cmd.Wait()
	<-copied // the master reads EIO once the child has exited and closed the slave
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	}
	return code, screen.String(), other.Bytes()
}

func TestCiphertextNeverToTerminal(t *testing.T) {
	dir, _ := setup(t, 1000)
	code, screen, stderr := runWithTTY(t, dir, true, "encrypt", "--kek", "local:kek.json", "plain.bin")
	if code != 1 || !strings.Contains(string(stderr), "refusing to write ciphertext to a terminal") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	if len(screen) != 0 {
		t.Fatalf("%d bytes reached the terminal", len(screen))
	}
}

func TestProgressBar(t *testing.T) {
	dir, _ := setup(t, progressThreshold+1)
	code, screen, _ := runWithTTY(t, dir, false, "encrypt", "--kek", "local:kek.json", "-o", "f.kpc", "plain.bin")
	if code != 0 || !strings.Contains(screen, "encrypting") || !strings.Contains(screen, "%") {
		t.Fatalf("exit %d, terminal showed %q", code, screen)
	}
	code, screen, _ = runWithTTY(t, dir, false, "decrypt", "--kek", "local:kek.json", "--quiet", "-o", "out", "f.kpc")
	if code != 0 || screen != "" {
		t.Fatalf("--quiet: exit %d, terminal showed %q", code, screen)
	}
	if fi, err := os.Stat(filepath.Join(dir, "out")); err != nil || fi.Size() != progressThreshold+1 {
		t.Fatalf("decrypted output: %v", err)
	}
	// Small inputs get no bar.
	os.WriteFile(filepath.Join(dir, "small"), []byte("x"), 0o600)
	code, screen, _ = runWithTTY(t, dir, false, "encrypt", "--kek", "local:kek.json", "-o", "small.kpc", "small")
	if code != 0 || screen != "" {
		t.Fatalf("small input: exit %d, terminal showed %q", code, screen)
	}
}
