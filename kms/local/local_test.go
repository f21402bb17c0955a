package local

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kpcrypt/kpcrypt/kms"
)

func TestWrapUnwrapRotate(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "kek.json")
	k, err := Generate(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %04o, want 0600", fi.Mode().Perm())
	}
	if k.URI() != "local:"+path {
		t.Fatalf("URI %q", k.URI())
	}
	dek := bytes.Repeat([]byte{7}, 32)
	w1, err := k.Wrap(ctx, dek, []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(w1.Ciphertext, dek) {
		t.Fatal("wrapped key contains the DEK")
	}
	v1, _ := k.CurrentVersion(ctx)
	if w1.KeyVersion != v1 || v1 == "" {
		t.Fatalf("wrap version %q, current %q", w1.KeyVersion, v1)
	}

	res, err := k.Unwrap(ctx, w1.Ciphertext, []byte("aad"))
	if err != nil || !bytes.Equal(res.DEK, dek) || res.KeyVersion != v1 {
		t.Fatalf("unwrap: %v, version %q", err, res.KeyVersion)
	}
	if _, err := k.Unwrap(ctx, w1.Ciphertext, []byte("other aad")); !errors.Is(err, kms.ErrWrongKey) {
		t.Fatalf("unwrap with other aad: %v", err)
	}

	v2, err := k.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v2 == v1 {
		t.Fatal("rotation kept the version")
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode after rotation %04o", fi.Mode().Perm())
	}
	w2, _ := k.Wrap(ctx, dek, nil)
	if w2.KeyVersion != v2 {
		t.Fatalf("wrap after rotation used version %q, want %q", w2.KeyVersion, v2)
	}

	// A fresh Open sees both versions: old wraps still unwrap.
	k2, err := Open(ctx, "local:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := k2.(*KEK).Versions(ctx); len(got) != 2 || got[0] != v1 || got[1] != v2 {
		t.Fatalf("versions after rotation: %v", got)
	}
	res, err = k2.Unwrap(ctx, w1.Ciphertext, []byte("aad"))
	if err != nil || !bytes.Equal(res.DEK, dek) || res.KeyVersion != v1 {
		t.Fatalf("old wrap after rotation: %v, version %q", err, res.KeyVersion)
	}

	// Another key refuses it.
	other, _ := Generate(filepath.Join(t.TempDir(), "other.json"))
	if _, err := other.Unwrap(ctx, w1.Ciphertext, []byte("aad")); !errors.Is(err, kms.ErrWrongKey) {
		t.Fatalf("unwrap with another KEK: %v", err)
	}
}

func TestOpenRefusesBadFiles(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "kek.json")
	if _, err := Generate(path); err != nil {
		t.Fatal(err)
	}
	if _, err := Generate(path); err == nil {
		t.Fatal("Generate overwrote an existing key file")
	}
	os.Chmod(path, 0o640)
	_, err := Open(ctx, "local:"+path)
	if !errors.Is(err, ErrInsecureFile) || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("group-readable key file: %v", err)
	}
	if _, err := Open(ctx, "local:"+filepath.Join(dir, "missing")); !errors.Is(err, kms.ErrNotFound) {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := Open(ctx, "local:"); !errors.Is(err, kms.ErrInvalidURI) {
		t.Fatalf("empty path: %v", err)
	}
	garbage := filepath.Join(dir, "garbage")
	os.WriteFile(garbage, []byte("secret-looking-bytes"), 0o600)
	_, err = Open(ctx, "local:"+garbage)
	if err == nil || strings.Contains(err.Error(), "secret-looking-bytes") {
		t.Fatalf("garbage file: %v", err)
	}
}

func TestConcurrentUse(t *testing.T) {
	ctx := context.Background()
	k, err := Generate(filepath.Join(t.TempDir(), "kek.json"))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dek := bytes.Repeat([]byte{byte(i)}, 32)
			for range 20 {
				w, err := k.Wrap(ctx, dek, []byte{byte(i)})
				if err != nil {
					errs <- err
					return
				}
				res, err := k.Unwrap(ctx, w.Ciphertext, []byte{byte(i)})
				if err != nil || !bytes.Equal(res.DEK, dek) {
					errs <- errors.New("round trip failed")
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() { defer wg.Done(); k.Rotate(ctx) }()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestResolver(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "kek.json")
	Generate(path)
	r := kms.Resolver{Scheme: Open}
	k, err := r.Open(ctx, "local:"+path)
	if err != nil || k.URI() != "local:"+path {
		t.Fatalf("resolver: %v", err)
	}
	if _, err := r.Open(ctx, "crn:v1:x"); !errors.Is(err, kms.ErrInvalidURI) {
		t.Fatalf("unknown scheme: %v", err)
	}
}
