//go:build linux

package main

import (
	"bytes"
	"context"
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

// Binary plaintext is not printed on a terminal, as age refuses it; text
// is, and "-o -" prints anything.
func TestBinaryPlaintextNotToTerminal(t *testing.T) {
	dir, pt := setup(t, 5000) // random bytes
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "-o", "bin.kpc", "plain.bin").expect(t, 0)
	os.WriteFile(filepath.Join(dir, "hello"), []byte("hello, kpcrypt\n"), 0o600)
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "-o", "text.kpc", "hello").expect(t, 0)

	code, screen, stderr := runWithTTY(t, dir, true, "decrypt", "--kek", "local:kek.json", "bin.kpc")
	if code != 1 || !strings.Contains(string(stderr), "refusing to print binary plaintext to a terminal") || len(screen) != 0 {
		t.Fatalf("binary to a terminal: exit %d, %d bytes shown, stderr %q", code, len(screen), stderr)
	}
	code, screen, _ = runWithTTY(t, dir, true, "decrypt", "--kek", "local:kek.json", "text.kpc")
	if code != 0 || !strings.Contains(screen, "hello, kpcrypt") {
		t.Fatalf("text to a terminal: exit %d, screen %q", code, screen)
	}
	code, screen, _ = runWithTTY(t, dir, true, "decrypt", "--kek", "local:kek.json", "-o", "-", "bin.kpc")
	if code != 0 || len(screen) < len(pt) {
		t.Fatalf("-o - to a terminal: exit %d, %d bytes shown", code, len(screen))
	}
}

// Ctrl-C during a command that waits on its input exits 130, on a line of
// its own, even while a read blocks (a terminal or a silent pipe).
func TestInterruptExits130(t *testing.T) {
	dir, _ := setup(t, 10)
	master, slave := openPTY(t)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(kpcryptBin, "encrypt", "--kek", "local:kek.json", "-o", "out.kpc")
	cmd.Dir, cmd.Stdin, cmd.Stderr = dir, pr, slave
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pr.Close()
	slave.Close()
	var screen bytes.Buffer
	copied := make(chan struct{})
	go func() { io.Copy(&screen, master); close(copied) }()
	// Once more than a pipe's buffer has been written, the command is
	// reading: its signal handler is in place. Then the pipe stays silent
	// (open, no data), and the read blocks when the signal comes.
	chunk := make([]byte, 64<<10)
	for range 3 {
		if _, err := pw.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	cmd.Process.Signal(os.Interrupt)
	err = cmd.Wait()
	pw.Close()
	<-copied
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Fatalf("exit %v, want 130; terminal showed %q", err, screen.String())
	}
	if !strings.HasPrefix(screen.String(), "\rkpcrypt: interrupted") || strings.Contains(screen.String(), "context canceled") {
		t.Fatalf("terminal showed %q", screen.String())
	}
	mustNotExist(t, filepath.Join(dir, "out.kpc"))
}

// An interrupted decrypt leaves nothing at OUT: no plaintext prefix.
func TestDecryptInterruptedLeavesNothing(t *testing.T) {
	dir, _ := setup(t, 2<<20)
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "-o", "f.kpc", "plain.bin").expect(t, 0)
	ct := readFile(t, filepath.Join(dir, "f.kpc"))
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(kpcryptBin, "decrypt", "--kek", "local:kek.json", "-o", "out")
	cmd.Dir, cmd.Stdin = dir, pr
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pr.Close()
	// Past a pipe's buffer, the command is decrypting: then interrupt it,
	// with half the file sent and the pipe left open.
	if _, err := pw.Write(ct[:len(ct)/2]); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(os.Interrupt)
	err = cmd.Wait()
	pw.Close()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Fatalf("exit %v, want 130; stderr %s", err, stderr.Bytes())
	}
	mustNotExist(t, filepath.Join(dir, "out"))
}

// cancelReader cancels its context once n bytes were read, and goes on
// giving data: the next read sees the interrupt.
type cancelReader struct {
	r      io.Reader
	n      int
	cancel context.CancelFunc
}

func (c *cancelReader) Read(p []byte) (int, error) {
	if c.n <= 0 {
		c.cancel()
	}
	k, err := c.r.Read(p[:min(len(p), max(c.n, 1))])
	c.n -= k
	return k, err
}

// An interrupt noticed between two reads of the input (not by the grace
// period's exit) is still an interrupt: exit 130, and nothing at OUT.
func TestDecryptInterruptBetweenReads(t *testing.T) {
	dir, _ := setup(t, 2<<20)
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "-o", "f.kpc", "plain.bin").expect(t, 0)
	ct := readFile(t, filepath.Join(dir, "f.kpc"))
	t.Chdir(dir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"decrypt", "--kek", "local:kek.json", "-o", "out"}, &cancelReader{r: bytes.NewReader(ct), n: len(ct) / 2, cancel: cancel}, &stdout, &stderr)
	if code != 130 {
		t.Fatalf("exit %d, want 130; stderr %s", code, stderr.Bytes())
	}
	mustNotExist(t, filepath.Join(dir, "out"))
}
