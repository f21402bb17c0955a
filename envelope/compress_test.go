package envelope

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/stream"
)

func TestZstdCompression(t *testing.T) {
	ctx := context.Background()
	k := newLocalKEK(t, "kek")
	pt := bytes.Repeat([]byte("a highly compressible log line, again and again\n"), 50_000)
	e := &Encrypter{KEKs: []kms.KEK{k}, Compression: CompressionZstd}
	var buf bytes.Buffer
	if err := e.Encrypt(ctx, &buf, bytes.NewReader(pt)); err != nil {
		t.Fatal(err)
	}
	ct := buf.Bytes()
	if len(ct) > len(pt)/10 {
		t.Fatalf("compressed file is %d bytes for %d of plaintext", len(ct), len(pt))
	}
	h, err := Inspect(bytes.NewReader(ct))
	if err != nil || h.Compression != "zstd" || h.PlaintextSize != UnknownSize {
		t.Fatalf("inspect: %v %+v", err, h)
	}
	for _, how := range []string{"WriteTo", "Read"} {
		r, err := NewReader(ctx, bytes.NewReader(ct), KEKs{k})
		if err != nil {
			t.Fatal(err)
		}
		var got []byte
		if how == "WriteTo" {
			var out bytes.Buffer
			_, err = io.Copy(&out, r)
			got = out.Bytes()
		} else {
			got, err = io.ReadAll(struct{ io.Reader }{r})
		}
		r.Close()
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("%s: %v, %d bytes", how, err, len(got))
		}
	}
	if _, err := NewReaderAt(ctx, bytes.NewReader(ct), int64(len(ct)), KEKs{k}); !errors.Is(err, ErrCompressed) {
		t.Fatalf("random access to a compressed file: %v", err)
	}
	// A tampered chunk is an authentication failure, not a zstd error.
	bad := bytes.Clone(ct)
	bad[h.HeaderSize+10] ^= 1
	if _, err := Open(ctx, bad, KEKs{k}); !errors.Is(err, stream.ErrAuthentication) {
		t.Fatalf("tampered compressed file: %v", err)
	}
	if _, err := Open(ctx, ct[:len(ct)-20], KEKs{k}); err == nil {
		t.Fatal("truncated compressed file opened")
	}
	// Seal with a size: the size is enforced, not recorded.
	small, err := e.Seal(ctx, []byte("tiny"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Open(ctx, small, KEKs{k}); err != nil || string(got) != "tiny" {
		t.Fatalf("small compressed object: %v", err)
	}
	if _, err := (&Encrypter{KEKs: []kms.KEK{k}, Compression: "lz4"}).Seal(ctx, pt); err == nil {
		t.Fatal("unknown compression accepted")
	}
}
