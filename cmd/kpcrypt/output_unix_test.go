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
		kp(t, dir, nil, "decrypt", "--kek", "local:kek.json", "-o", "null", "f.kpc").expect(t, 1, "file exists")
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

// A named pipe someone else made where the output goes (in /tmp, say) must
// not receive plaintext or a key without --force: a reader on the other end
// would get it.
func TestOutputPlantedFIFO(t *testing.T) {
	dir, _ := setup(t, 10_000)
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "-o", "f.kpc", "plain.bin").expect(t, 0)
	for _, name := range []string{"plain.txt", "kek2.json"} {
		fifo := filepath.Join(dir, name)
		if err := syscall.Mkfifo(fifo, 0o666); err != nil {
			t.Fatal(err)
		}
		// Held open for reading and writing, so that a writer would not
		// block: whatever it wrote would wait here.
		f, err := os.OpenFile(fifo, os.O_RDWR|syscall.O_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
	}
	kp(t, dir, nil, "decrypt", "--kek", "local:kek.json", "-o", "plain.txt", "f.kpc").expect(t, 1, "file exists")
	kp(t, dir, nil, "keygen", "-o", "kek2.json").expect(t, 1)
	os.Symlink("plain.txt", filepath.Join(dir, "link.txt"))
	kp(t, dir, nil, "decrypt", "--kek", "local:kek.json", "-o", "link.txt", "f.kpc").expect(t, 1, "file exists")
	for _, name := range []string{"plain.txt", "kek2.json"} {
		// A raw non-blocking read: EAGAIN when nothing was written.
		fd, err := syscall.Open(filepath.Join(dir, name), syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1)
		n, _ := syscall.Read(fd, buf)
		syscall.Close(fd)
		if n > 0 {
			t.Fatalf("%s received data", name)
		}
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
