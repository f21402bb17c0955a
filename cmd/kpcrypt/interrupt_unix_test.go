//go:build unix

package main

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestEncryptInterruptedMidPipe runs "kpcrypt encrypt" on a pipe, sends it
// SIGINT once it has consumed the first MiB, and checks that what it wrote
// to standard output (a file) does not decrypt: it lacks its final chunk,
// and decrypt reports the truncation.
func TestEncryptInterruptedMidPipe(t *testing.T) {
	dir, _ := setup(t, 0)
	outPath := filepath.Join(dir, "out.kpc")
	out, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(kpcryptBin, "encrypt", "--kek", "local:kek.json", "--quiet", "--chunk-size", "4KiB")
	cmd.Dir, cmd.Env = dir, append(os.Environ(), "LC_ALL=C")
	var stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = pr, out, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pr.Close()

	// The pipe holds far less than a MiB, so once this write returns the
	// command has read most of it.
	first := make([]byte, 1<<20)
	rand.Read(first)
	if _, err := pw.Write(first); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	// Keep the data coming, as a producer still running would, until the
	// command exits and the pipe breaks.
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		more := make([]byte, 64<<10)
		for {
			if _, err := pw.Write(more); err != nil {
				return
			}
		}
	}()
	err = cmd.Wait()
	pw.Close()
	<-fed
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Fatalf("interrupted encrypt: %v, want exit status 130; stderr: %s", err, stderr.Bytes())
	}

	written := readFile(t, outPath)
	if len(written) <= 64<<10 {
		t.Fatalf("the command wrote %d bytes before the interrupt; the test wants more", len(written))
	}
	r := kp(t, dir, written, "decrypt", "--kek", "local:kek.json")
	r.expect(t, 1, "truncated")
}
