//go:build unix

package securefile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestReadPrivateMode(t *testing.T) {
	dir := t.TempDir()
	for _, perm := range []os.FileMode{0o640, 0o604, 0o620, 0o602, 0o610, 0o644} {
		path := filepath.Join(dir, "secret")
		write(t, path, []byte("s3cret"), perm)
		_, _, err := ReadPrivate(path, 100)
		if !errors.Is(err, ErrInsecureMode) || !strings.Contains(err.Error(), "chmod 600 "+path) ||
			strings.Contains(err.Error(), "s3cr") {
			t.Fatalf("mode %04o: %v", perm, err)
		}
	}
	for _, perm := range []os.FileMode{0o600, 0o400, 0o700} {
		path := filepath.Join(dir, "secret")
		write(t, path, []byte("s3cret"), perm)
		if _, _, err := ReadPrivate(path, 100); err != nil {
			t.Fatalf("mode %04o: %v", perm, err)
		}
	}
}

func TestReadPrivateOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("giving a file to another user needs root")
	}
	path := filepath.Join(t.TempDir(), "secret")
	write(t, path, []byte("s3cret"), 0o600)
	if err := os.Chown(path, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	_, _, err := ReadPrivate(path, 100)
	if !errors.Is(err, ErrOwner) || !strings.Contains(err.Error(), "uid 65534") {
		t.Fatalf("file of another user: %v", err)
	}
}

// TestReadPrivateSymlink follows links the way a Kubernetes secret mount
// makes them (a link to a link to a directory), and reports the target.
func TestReadPrivateSymlink(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "..2026_11_30")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(data, "key"), []byte("s3cret"), 0o400)
	if err := os.Symlink("..2026_11_30", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "key")
	if err := os.Symlink(filepath.Join("..data", "key"), link); err != nil {
		t.Fatal(err)
	}
	got, resolved, err := ReadPrivate(link, 100)
	if err != nil || string(got) != "s3cret" {
		t.Fatalf("through links: %q, %v", got, err)
	}
	want, _ := filepath.EvalSymlinks(filepath.Join(data, "key"))
	if resolved != want {
		t.Fatalf("resolved %q, want %q", resolved, want)
	}

	// The checks apply to the target, and the message names both.
	os.Chmod(filepath.Join(data, "key"), 0o644)
	_, _, err = ReadPrivate(link, 100)
	if !errors.Is(err, ErrInsecureMode) || !strings.Contains(err.Error(), link) || !strings.Contains(err.Error(), resolved) {
		t.Fatalf("link to a readable file: %v", err)
	}
}

func TestReadPrivateSpecial(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := ReadPrivate(fifo, 100)
		done <- err
	}()
	select { // a hang guard
	case err := <-done:
		if !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), "named pipe") {
			t.Fatalf("FIFO: %v", err)
		}
	case <-time.After(10 * time.Second):
		if fd, err := syscall.Open(fifo, syscall.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			syscall.Close(fd)
		}
		t.Fatal("ReadPrivate blocked on a FIFO")
	}

	if _, _, err := ReadPrivate("/dev/null", 100); !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), "device") {
		t.Fatalf("/dev/null: %v", err)
	}
}

// TestOpenNoFollow opens a path that became a link after it was resolved.
func TestOpenNoFollow(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "target"), []byte("s3cret"), 0o600)
	link := filepath.Join(dir, "link")
	if err := os.Symlink("target", link); err != nil {
		t.Fatal(err)
	}
	f, err := open(link, link)
	if err == nil {
		f.Close()
	}
	if !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), "became a symbolic link") {
		t.Fatalf("open of a link: %v", err)
	}
}

func TestReadPrivateNamesLinksOnly(t *testing.T) {
	t.Chdir(t.TempDir())
	write(t, "secret", []byte("s3cret"), 0o644)
	_, _, err := ReadPrivate("./secret", 100)
	if !errors.Is(err, ErrInsecureMode) || strings.Contains(err.Error(), "link") {
		t.Fatalf("./secret: %v", err)
	}
}
