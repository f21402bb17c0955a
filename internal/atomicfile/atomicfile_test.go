package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// modes runs test once with each kind of temporary file this system has:
// unnamed (O_TMPFILE) where it works, and named.
func modes(t *testing.T, test func(t *testing.T)) {
	t.Run("named", func(t *testing.T) {
		forceNamed = true
		defer func() { forceNamed = false }()
		test(t)
	})
	t.Run("default", test)
}

func TestCommitAndAbort(t *testing.T) {
	modes(t, func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "out")

		f, err := Create(path, 0o600, false)
		if err != nil {
			t.Fatal(err)
		}
		f.Write([]byte("half"))
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("target exists before Commit: %v", err)
		}
		f.Abort()
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Fatalf("Abort left %d files", len(entries))
		}

		if err := WriteFile(path, []byte("one"), 0o600, false); err != nil {
			t.Fatal(err)
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
			t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
		}
		if err := WriteFile(path, []byte("two"), 0o600, false); !errors.Is(err, ErrExists) {
			t.Fatalf("overwrite without permission: %v", err)
		}
		if b, _ := os.ReadFile(path); string(b) != "one" {
			t.Fatalf("existing file changed to %q", b)
		}
		if err := WriteFile(path, []byte("two"), 0o600, true); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(path); string(b) != "two" {
			t.Fatalf("got %q after overwrite", b)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 1 {
			t.Fatalf("temporary files left: %d entries", len(entries))
		}
	})
}

// TestOverwriteKeepsOldUntilCommit: with overwrite, the old file stays whole
// until Commit replaces it in one step.
func TestOverwriteKeepsOldUntilCommit(t *testing.T) {
	modes(t, func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "out")
		os.WriteFile(path, []byte("old"), 0o600)
		old, _ := os.Stat(path)
		f, err := Create(path, 0o600, true)
		if err != nil {
			t.Fatal(err)
		}
		f.Write([]byte("new"))
		if b, _ := os.ReadFile(path); string(b) != "old" {
			t.Fatalf("before Commit the target holds %q", b)
		}
		if err := f.Commit(); err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(path)
		if b, _ := os.ReadFile(path); string(b) != "new" || os.SameFile(old, fi) {
			t.Fatalf("after Commit the target holds %q (same inode: %v)", b, os.SameFile(old, fi))
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 1 {
			t.Fatalf("temporary files left: %d entries", len(entries))
		}
		f.Abort() // does nothing after Commit
		if b, _ := os.ReadFile(path); string(b) != "new" {
			t.Fatalf("Abort after Commit changed the target to %q", b)
		}
	})
}

func TestCommitRefusesFileCreatedMeanwhile(t *testing.T) {
	modes(t, func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "out")
		f, err := Create(path, 0o600, false)
		if err != nil {
			t.Fatal(err)
		}
		f.Write([]byte("new"))
		os.WriteFile(path, []byte("other"), 0o600)
		if err := f.Commit(); !errors.Is(err, ErrExists) {
			t.Fatalf("Commit over a new file: %v", err)
		}
		if b, _ := os.ReadFile(path); string(b) != "other" {
			t.Fatalf("file replaced: %q", b)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 1 {
			t.Fatalf("temporary files left: %d entries", len(entries))
		}
	})
}

func TestIsTemp(t *testing.T) {
	for name, want := range map[string]bool{
		".out.kpcrypt-tmp-0123456789abcdef":           true,
		"dir/.f.kpc.kpcrypt-tmp-fedcba9876543210":     true,
		"..kpcrypt-tmp-0123456789abcdef":              true,
		TempName("report.pdf"):                        true,
		"out.kpcrypt-tmp-0123456789abcdef":            false, // no leading dot
		".out.kpcrypt-tmp-0123456789abcde":            false, // too short
		".out.kpcrypt-tmp-0123456789abcdef0":          false, // too long
		".out.kpcrypt-tmp-0123456789ABCDEF":           false,
		".out.tmp-123456":                             false,
		".kpcrypt-tmp-0123456789abcdef":               false, // no NAME part
		".out.kpcrypt-tmp-0123456789abcdef/child.kpc": false,
	} {
		if got := IsTemp(name); got != want {
			t.Errorf("IsTemp(%q) = %v, want %v", name, got, want)
		}
	}
	long := string(make([]byte, 300))
	if n := len(TempName(long)); n > 255 {
		t.Errorf("temporary name of a 300-byte name has %d bytes", n)
	}
}
