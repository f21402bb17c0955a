package envelope

import (
	"bytes"
	"context"
	"crypto/rand"
	"path/filepath"
	"testing"

	"github.com/kpcrypt/kpcrypt/kms/local"
)

func TestSmoke(t *testing.T) {
	ctx := context.Background()
	k1, _ := local.Generate(filepath.Join(t.TempDir(), "a.json"))
	k2, _ := local.Generate(filepath.Join(t.TempDir(), "b.json"))
	pt := make([]byte, 300000)
	rand.Read(pt)
	ct, err := Seal(ctx, pt, k1, k2)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []KEKs{{k1}, {k2}} {
		got, err := Open(ctx, ct, k)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("open: %v", err)
		}
	}
	h, err := Inspect(bytes.NewReader(ct))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", h)
	ra, err := NewReaderAt(ctx, bytes.NewReader(ct), int64(len(ct)), KEKs{k2})
	if err != nil || ra.Size() != int64(len(pt)) {
		t.Fatal(err)
	}
}
