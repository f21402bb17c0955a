//go:build unix

package local

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kpcrypt/kpcrypt/internal/securefile"
	"github.com/kpcrypt/kpcrypt/kms"
)

// otherUID owns the files of "another user" in these tests (nobody).
const otherUID = 65534

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("giving a file to another user needs root")
	}
}

func TestOpenFIFODoesNotBlock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kek.json")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := OpenFile(path)
		done <- err
	}()
	// A hang guard, not a timing assertion: an Open that blocks on the FIFO
	// never returns.
	select {
	case err := <-done:
		if !errors.Is(err, securefile.ErrNotRegular) {
			t.Fatalf("FIFO as key file: %v", err)
		}
	case <-time.After(10 * time.Second):
		// Release the blocked open by opening the other end.
		if fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			syscall.Close(fd)
		}
		t.Fatal("OpenFile blocked on a FIFO")
	}
}

func TestOpenRefusesOtherOwner(t *testing.T) {
	requireRoot(t)
	path := filepath.Join(t.TempDir(), "kek.json")
	if _, err := Generate(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, otherUID, otherUID); err != nil {
		t.Fatal(err)
	}
	_, err := OpenFile(path)
	if !errors.Is(err, securefile.ErrOwner) || !strings.Contains(err.Error(), "65534") {
		t.Fatalf("key file of another user: %v", err)
	}
}

func TestOpenChecks(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.json")
	k, err := Generate(good)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("group-readable", func(t *testing.T) {
		path := filepath.Join(dir, "group.json")
		copyFile(t, good, path, 0o640)
		_, err := OpenFile(path)
		if !errors.Is(err, ErrInsecureFile) || !errors.Is(err, securefile.ErrInsecureMode) ||
			!strings.Contains(err.Error(), "chmod 600 "+path) || !strings.Contains(err.Error(), "0640") {
			t.Fatalf("group-readable key file: %v", err)
		}
	})
	t.Run("symlink", func(t *testing.T) {
		// Secret mounts (Kubernetes, Docker) are links to links.
		link := filepath.Join(dir, "link.json")
		if err := os.Symlink("good.json", link); err != nil {
			t.Fatal(err)
		}
		k2, err := OpenFile(link)
		if err != nil {
			t.Fatal(err)
		}
		if k2.URI() != "local:"+link {
			t.Fatalf("URI %q, want the path as given", k2.URI())
		}
		v1, _ := k.CurrentVersion(t.Context())
		if v2, _ := k2.CurrentVersion(t.Context()); v2 != v1 {
			t.Fatalf("link opened version %s, want %s", v2, v1)
		}
	})
	t.Run("directory", func(t *testing.T) {
		sub := filepath.Join(dir, "sub")
		if err := os.Mkdir(sub, 0o700); err != nil {
			t.Fatal(err)
		}
		if _, err := OpenFile(sub); !errors.Is(err, securefile.ErrNotRegular) {
			t.Fatalf("directory as key file: %v", err)
		}
	})
	t.Run("oversized", func(t *testing.T) {
		path := filepath.Join(dir, "big.json")
		if err := os.WriteFile(path, bytes.Repeat([]byte(" "), maxFileSize+1), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := OpenFile(path); !errors.Is(err, securefile.ErrTooLarge) {
			t.Fatalf("oversized key file: %v", err)
		}
	})
	t.Run("missing", func(t *testing.T) {
		_, err := OpenFile(filepath.Join(dir, "missing.json"))
		if !errors.Is(err, kms.ErrNotFound) {
			t.Fatalf("missing key file: %v", err)
		}
		dangling := filepath.Join(dir, "dangling.json")
		os.Symlink("missing.json", dangling)
		if _, err := OpenFile(dangling); !errors.Is(err, kms.ErrNotFound) {
			t.Fatalf("dangling link: %v", err)
		}
	})
}

// copyFile copies a key file to dst with mode perm.
func copyFile(t *testing.T, src, dst string, perm os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dst, perm); err != nil { // past the umask
		t.Fatal(err)
	}
}

// TestOpenSymlinkSwap swaps the link the user names between the user's key
// file and an attacker's, which the checks refuse, while opening it: no open
// may ever use the attacker's key.
func TestOpenSymlinkSwap(t *testing.T) {
	t.Run("other-owner", func(t *testing.T) {
		requireRoot(t)
		testSymlinkSwap(t, func(path string) error { return os.Chown(path, otherUID, otherUID) })
	})
	t.Run("world-readable", func(t *testing.T) {
		testSymlinkSwap(t, func(path string) error { return os.Chmod(path, 0o644) })
	})
}

// testSymlinkSwap runs the swap with an attacker's key file that spoil makes
// unacceptable.
func testSymlinkSwap(t *testing.T, spoil func(path string) error) {
	ctx := context.Background()
	dir := t.TempDir()
	good, evil := filepath.Join(dir, "good.json"), filepath.Join(dir, "evil.json")
	gk, err := Generate(good)
	if err != nil {
		t.Fatal(err)
	}
	ek, err := Generate(evil)
	if err != nil {
		t.Fatal(err)
	}
	if err := spoil(evil); err != nil {
		t.Fatal(err)
	}
	dek := bytes.Repeat([]byte{9}, 32)
	evilWrapped, err := ek.Wrap(ctx, dek, nil)
	if err != nil {
		t.Fatal(err)
	}
	goodWrapped, err := gk.Wrap(ctx, dek, nil)
	if err != nil {
		t.Fatal(err)
	}

	link := filepath.Join(dir, "k.json")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tmp := filepath.Join(dir, "k.json.tmp")
		for i := 0; !stop.Load(); i++ {
			target := good
			if i%2 == 0 {
				target = evil
			}
			os.Remove(tmp)
			if err := os.Symlink(target, tmp); err != nil {
				t.Error(err)
				return
			}
			if err := os.Rename(tmp, link); err != nil {
				t.Error(err)
				return
			}
		}
	}()

	var goodOpens, evilUnwraps int
	for range 200 {
		k, err := OpenFile(link)
		if err != nil {
			continue
		}
		if _, err := k.Unwrap(ctx, evilWrapped.Ciphertext, nil); err == nil {
			evilUnwraps++
		}
		if _, err := k.Unwrap(ctx, goodWrapped.Ciphertext, nil); err == nil {
			goodOpens++
		}
	}
	stop.Store(true)
	wg.Wait()
	if evilUnwraps != 0 {
		t.Errorf("%d of 200 opens used the attacker's key", evilUnwraps)
	}
	if goodOpens == 0 {
		t.Errorf("no open of 200 used the good key")
	}
	t.Logf("%d of 200 opens used the good key", goodOpens)
}

// TestRotateThroughSymlink rotates a key file opened through a link: the
// file the link points to gets the new version, and the link stays a link.
func TestRotateThroughSymlink(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "keys", "real.json")
	if _, err := Generate(target); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "kek.json")
	if err := os.Symlink(filepath.Join("keys", "real.json"), link); err != nil {
		t.Fatal(err)
	}
	k, err := OpenFile(link)
	if err != nil {
		t.Fatal(err)
	}
	v2, err := k.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if k.URI() != "local:"+link {
		t.Fatalf("URI after rotation %q, want the path as given", k.URI())
	}
	fi, err := os.Lstat(link)
	if err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("after rotation the link is %v (%v), want a symbolic link", fi.Mode(), err)
	}
	if dest, _ := os.Readlink(link); dest != filepath.Join("keys", "real.json") {
		t.Fatalf("link points to %q after rotation", dest)
	}
	if fi, _ := os.Stat(target); fi.Mode().Perm() != 0o600 {
		t.Fatalf("target mode %04o after rotation", fi.Mode().Perm())
	}
	rk, err := OpenFile(target)
	if err != nil {
		t.Fatal(err)
	}
	vs, _ := rk.Versions(ctx)
	if len(vs) != 2 || vs[1] != v2 {
		t.Fatalf("target versions after rotation %v, want 2 ending with %s", vs, v2)
	}
}
