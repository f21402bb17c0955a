package filelock

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

func TestLockConflicts(t *testing.T) {
	if runtime.GOOS != "linux" && runtime.GOOS != "darwin" && runtime.GOOS != "windows" {
		t.Skip("no file locks here")
	}
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	open := func() *os.File {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	a, b := open(), open()
	if err := Lock(t.Context(), a, true); err != nil {
		t.Fatal(err)
	}
	for _, exclusive := range []bool{true, false} {
		if ok, err := TryLock(b, exclusive); ok || err != nil {
			t.Fatalf("TryLock(exclusive=%v) under an exclusive lock = %v, %v", exclusive, ok, err)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := Lock(ctx, b, false); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock with a cancelled context = %v", err)
	}
	if err := Unlock(a); err != nil {
		t.Fatal(err)
	}
	// Shared locks coexist, and keep out an exclusive one.
	if err := Lock(t.Context(), a, false); err != nil {
		t.Fatal(err)
	}
	if ok, err := TryLock(b, false); !ok || err != nil {
		t.Fatalf("a second shared lock = %v, %v", ok, err)
	}
	c := open()
	if ok, _ := TryLock(c, true); ok {
		t.Fatal("an exclusive lock was granted beside shared ones")
	}
}

func TestSidecar(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.json.lock")
	release, err := Sidecar(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := Sidecar(ctx, path); !errors.Is(err, context.Canceled) {
		t.Fatalf("a second holder got the sidecar lock: %v", err)
	}
	release()
	release2, err := Sidecar(t.Context(), path)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	release2()
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("sidecar: %v %v", fi.Mode(), err)
	}
}
