package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// kpUmask runs kpcrypt in dir under the umask mask, through sh.
func kpUmask(t *testing.T, dir, mask string, args ...string) {
	t.Helper()
	cmd := exec.Command("sh", append([]string{"-c", `umask ` + mask + ` && exec "$0" "$@"`, kpcryptBin}, args...)...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kpcrypt %v under umask %s: %v\n%s", args, mask, err, out)
	}
}

// TestOutputModes: ciphertext output gets 0666 less the umask; plaintext
// output gets 0600 (less the umask), with and without --force.
func TestOutputModes(t *testing.T) {
	dir, _ := setup(t, 1000)
	for _, c := range []struct {
		mask      string
		ct, plain os.FileMode
	}{
		{"027", 0o640, 0o600},
		{"022", 0o644, 0o600},
		{"077", 0o600, 0o600},
		{"000", 0o666, 0o600},
	} {
		for _, force := range []bool{false, true} {
			var extra []string
			if force {
				extra = []string{"--force"}
			} else {
				os.Remove(filepath.Join(dir, "f.kpc"))
				os.Remove(filepath.Join(dir, "out"))
			}
			kpUmask(t, dir, c.mask, append([]string{"encrypt", "--kek", "local:kek.json", "-o", "f.kpc", "plain.bin"}, extra...)...)
			kpUmask(t, dir, c.mask, append([]string{"decrypt", "--kek", "local:kek.json", "-o", "out", "f.kpc"}, extra...)...)
			for name, want := range map[string]os.FileMode{"f.kpc": c.ct, "out": c.plain} {
				fi, err := os.Stat(filepath.Join(dir, name))
				if err != nil {
					t.Fatal(err)
				}
				if got := fi.Mode().Perm(); got != want {
					t.Errorf("umask %s, force %v: %s has mode %04o, want %04o", c.mask, force, name, got, want)
				}
			}
		}
	}
}
