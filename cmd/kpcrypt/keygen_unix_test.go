//go:build unix

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kpcrypt/kpcrypt/kms/local"
)

// TestKeygenRotateSymlink rotates a key file named through a symbolic link:
// the file the link points to gets the new version, and the link stays.
func TestKeygenRotateSymlink(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	kp(t, dir, nil, "keygen", "-o", filepath.Join("keys", "real.json")).expect(t, 0)
	if err := os.Symlink(filepath.Join("keys", "real.json"), filepath.Join(dir, "kek.json")); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "plain"), []byte("before rotation"), 0o600)
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "-o", "f.kpc", "plain").expect(t, 0)

	r := kp(t, dir, nil, "keygen", "--rotate", "kek.json")
	r.expect(t, 0, "rotated local:kek.json", "(2 versions)")
	v2 := strings.TrimSpace(string(r.stdout))

	fi, err := os.Lstat(filepath.Join(dir, "kek.json"))
	if err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("kek.json after rotation: %v, %v; want a symbolic link", fi.Mode(), err)
	}
	if dest, _ := os.Readlink(filepath.Join(dir, "kek.json")); dest != filepath.Join("keys", "real.json") {
		t.Fatalf("kek.json points to %q after rotation", dest)
	}
	k, err := local.OpenFile(filepath.Join(dir, "keys", "real.json"))
	if err != nil {
		t.Fatal(err)
	}
	if vs, _ := k.Versions(t.Context()); len(vs) != 2 || vs[1] != v2 {
		t.Fatalf("target versions %v, want 2 ending with %s", vs, v2)
	}
	// The file wrapped before the rotation still opens through the link.
	kp(t, dir, nil, "decrypt", "--kek", "local:kek.json", "-o", "out", "f.kpc").expect(t, 0)
	if got := string(readFile(t, filepath.Join(dir, "out"))); got != "before rotation" {
		t.Fatalf("decrypted %q", got)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 5 {
		t.Fatalf("rotation left %d entries in the directory, want 5", len(entries))
	}
}

// TestKeygenRotateRefuses refuses key files others could have swapped.
func TestKeygenRotateRefuses(t *testing.T) {
	dir := t.TempDir()
	kp(t, dir, nil, "keygen", "-o", "kek.json").expect(t, 0)
	os.Mkdir(filepath.Join(dir, "sub"), 0o700)
	kp(t, dir, nil, "keygen", "--rotate", "sub").expect(t, 1, "sub is a directory")
	if os.Geteuid() == 0 {
		os.Chown(filepath.Join(dir, "kek.json"), 65534, 65534)
		kp(t, dir, nil, "keygen", "--rotate", "kek.json").expect(t, 1, "belongs to uid 65534")
	}
}
