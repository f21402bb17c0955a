package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestCommitAndAbort(t *testing.T) {
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
}

func TestCommitRefusesFileCreatedMeanwhile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out")
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
}
