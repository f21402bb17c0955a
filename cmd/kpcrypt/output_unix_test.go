//go:build unix

package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

// --force onto a device or a named pipe writes through it, as age does: the
// node is never replaced by a regular file (as root, decrypt --force -o
// /dev/null once replaced /dev/null itself).
func TestOutputDeviceAndFIFO(t *testing.T) {
	dir, pt := setup(t, 100_000)
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "-o", "f.kpc", "plain.bin").expect(t, 0)

	if os.Geteuid() == 0 {
		null := filepath.Join(dir, "null")
		if err := syscall.Mknod(null, syscall.S_IFCHR|0o666, int(1<<8|3)); err != nil { // 1,3: /dev/null
			t.Fatal(err)
		}
		kp(t, dir, nil, "decrypt", "--kek", "local:kek.json", "--force", "-o", "null", "f.kpc").expect(t, 0)
		kp(t, dir, nil, "decrypt", "--kek", "local:kek.json", "-o", "null", "f.kpc").expect(t, 0)
		if fi, err := os.Lstat(null); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
			t.Fatalf("the device node was replaced: %v %v", fi.Mode(), err)
		}
	}

	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	var got []byte
	var wg sync.WaitGroup
	wg.Go(func() {
		f, err := os.Open(fifo)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		got, _ = io.ReadAll(f)
	})
	kp(t, dir, nil, "decrypt", "--kek", "local:kek.json", "--force", "-o", "fifo", "f.kpc").expect(t, 0)
	wg.Wait()
	if !bytes.Equal(got, pt) {
		t.Fatalf("read %d bytes through the FIFO, want the %d-byte plaintext", len(got), len(pt))
	}
	if fi, err := os.Lstat(fifo); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Fatalf("the FIFO was replaced: %v %v", fi.Mode(), err)
	}
}

// A symbolic link OUT: its target is replaced atomically and the link kept.
func TestOutputSymlink(t *testing.T) {
	dir, pt := setup(t, 10_000)
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "-o", "f.kpc", "plain.bin").expect(t, 0)
	os.WriteFile(filepath.Join(dir, "real.out"), []byte("old"), 0o600)
	os.Symlink("real.out", filepath.Join(dir, "link.out"))
	kp(t, dir, nil, "decrypt", "--kek", "local:kek.json", "-o", "link.out", "f.kpc").expect(t, 1, "file exists")
	kp(t, dir, nil, "decrypt", "--kek", "local:kek.json", "--force", "-o", "link.out", "f.kpc").expect(t, 0)
	if fi, err := os.Lstat(filepath.Join(dir, "link.out")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the link was replaced: %v", err)
	}
	if !bytes.Equal(readFile(t, filepath.Join(dir, "real.out")), pt) {
		t.Fatal("the link's target does not hold the plaintext")
	}
	os.Symlink("nowhere/x", filepath.Join(dir, "dangling"))
	kp(t, dir, nil, "decrypt", "--kek", "local:kek.json", "--force", "-o", "dangling", "f.kpc").expect(t, 1, "leads nowhere")
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	kp(t, dir, nil, "decrypt", "--kek", "local:kek.json", "--force", "-o", "sub", "f.kpc").expect(t, 1, "is a directory")
}
