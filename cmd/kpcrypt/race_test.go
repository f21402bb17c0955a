package main

import (
	"bytes"
	"context"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/local"
)

// A decrypt that races a tight rewrap loop never fails: it reads the slot
// tables under a shared lock, so it never sees both copies torn (5 of
// about 130,000 decrypts once failed with "both copies are invalid").
func TestDecryptDuringRewraps(t *testing.T) {
	dir, pt := setup(t, 2000)
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "-o", "f.kpc", "plain.bin").expect(t, 0)
	kek, err := local.OpenFile(filepath.Join(dir, "kek.json"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := local.Generate(filepath.Join(dir, "other.json"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "f.kpc")
	ctx, stop := context.WithCancel(context.Background())
	var rewraps atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		opts := []*envelope.RewrapOptions{
			{Keyring: envelope.KEKs{kek}, Add: []kms.KEK{other}},
			{Keyring: envelope.KEKs{kek}, Remove: []string{other.URI()}},
		}
		for i := 0; ctx.Err() == nil; i++ {
			if _, err := envelope.RewrapPath(ctx, path, opts[i%2]); err != nil && ctx.Err() == nil {
				t.Errorf("rewrap: %v", err)
				return
			}
			rewraps.Add(1)
		}
	})
	const decrypts = 200
	for i := range decrypts {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), []string{"decrypt", "--kek", "local:" + filepath.Join(dir, "kek.json"), path}, nil, &stdout, &stderr)
		if code != 0 || !bytes.Equal(stdout.Bytes(), pt) {
			stop()
			wg.Wait()
			t.Fatalf("decrypt %d during rewraps: exit %d: %s", i, code, stderr.String())
		}
	}
	stop()
	wg.Wait()
	if rewraps.Load() == 0 {
		t.Fatal("no rewrap ran: the test proves nothing")
	}
}
