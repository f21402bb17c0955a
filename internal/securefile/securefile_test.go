package securefile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func write(t *testing.T, path string, data []byte, perm os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, perm); err != nil { // past the umask
		t.Fatal(err)
	}
}

func TestReadPrivate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "secret")
	write(t, path, []byte("s3cret"), 0o600)

	data, resolved, err := ReadPrivate(path, 6)
	if err != nil || string(data) != "s3cret" || resolved != path {
		t.Fatalf("ReadPrivate = %q, %q, %v", data, resolved, err)
	}

	// Exactly at the limit is fine; one byte over is not, and the error
	// holds no content.
	_, _, err = ReadPrivate(path, 5)
	if !errors.Is(err, ErrTooLarge) || strings.Contains(err.Error(), "s3cr") {
		t.Fatalf("over the limit: %v", err)
	}

	_, _, err = ReadPrivate(filepath.Join(dir, "missing"), 10)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing: %v", err)
	}

	_, _, err = ReadPrivate(dir, 10)
	if !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), "directory") {
		t.Fatalf("directory: %v", err)
	}
}

func TestReadPrivateEmpty(t *testing.T) {
	path := filepath.Join(t.TempDir(), "empty")
	write(t, path, nil, 0o600)
	data, _, err := ReadPrivate(path, 10)
	if err != nil || len(data) != 0 {
		t.Fatalf("empty file: %q, %v", data, err)
	}
}
