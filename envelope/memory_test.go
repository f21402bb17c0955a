package envelope

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/kpcrypt/kpcrypt/envelope/internal/format"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/stream"
)

// sameClass reports whether a and b are both nil or match the same error
// classes, and the same chunk for a chunk error.
func sameClass(a, b error) bool {
	if (a == nil) != (b == nil) {
		return false
	}
	for _, c := range append(errorClasses, stream.ErrAuthentication, stream.ErrTruncated, stream.ErrTooLong) {
		if errors.Is(a, c) != errors.Is(b, c) {
			return false
		}
	}
	var ca, cb *stream.ChunkError
	if errors.As(a, &ca) != errors.As(b, &cb) {
		return false
	}
	return ca == nil || ca.Index == cb.Index
}

// TestOpenHostile: Open, which opens the chunks in parallel straight from
// the ciphertext, fails on every defect of the body with the error class
// the sequential decryptor (Decrypt with one worker) reports, returns no
// plaintext then, and never writes to the ciphertext, on success or
// failure.
func TestOpenHostile(t *testing.T) {
	ctx := context.Background()
	kek := newLocalKEK(t, "hostile")
	keyring := KEKs{kek}
	const cs = stream.MinChunkSize
	full := cs + stream.TagSize
	for _, recorded := range []bool{true, false} {
		for _, size := range []int{0, 100, cs, 3*cs + 5, 9 * cs} {
			pt := testPlaintext(size)
			e := &Encrypter{KEKs: []kms.KEK{kek}, ChunkSize: cs}
			var file []byte
			if recorded {
				var err error
				if file, err = e.Seal(ctx, pt); err != nil {
					t.Fatal(err)
				}
			} else {
				var buf bytes.Buffer
				w, err := e.NewWriter(ctx, &buf, UnknownSize)
				if err != nil {
					t.Fatal(err)
				}
				w.Write(pt)
				if err := w.Close(); err != nil {
					t.Fatal(err)
				}
				file = buf.Bytes()
			}
			h, err := format.ReadHeader(bytes.NewReader(file))
			if err != nil {
				t.Fatal(err)
			}
			hs := int(h.Size())
			body := file[hs:]
			muts := map[string][]byte{"valid": file}
			for k := 0; k*full <= len(body)+full; k++ {
				for _, d := range []int{-17, -16, -1, 0, 1, 16, 17} {
					if n := k*full + d; n >= 0 && n <= len(body) {
						muts[fmt.Sprintf("cut body at %d", n)] = bytes.Clone(file[:hs+n])
					}
				}
			}
			for i := 0; i < len(body); i += max(1, len(body)/17) {
				b := bytes.Clone(file)
				b[hs+i] ^= 2
				muts[fmt.Sprintf("flip body at %d", i)] = b
			}
			for _, n := range []int{1, 16, full} {
				muts[fmt.Sprintf("%d bytes trailing", n)] = append(bytes.Clone(file), make([]byte, n)...)
			}
			for name, f := range muts {
				seqPT := new(bytes.Buffer)
				seqErr := (&Decrypter{Keyring: keyring, Workers: 1}).Decrypt(ctx, seqPT, bytes.NewReader(f))
				for _, workers := range []int{0, 1, 3} {
					sum := sha256.Sum256(f)
					got, err := (&Decrypter{Keyring: keyring, Workers: workers}).Open(ctx, f)
					if sha256.Sum256(f) != sum {
						t.Fatalf("recorded %v, size %d, %s: Open wrote to the ciphertext", recorded, size, name)
					}
					if !sameClass(err, seqErr) {
						t.Fatalf("recorded %v, size %d, %s, %d workers: Open: %v; Decrypt: %v", recorded, size, name, workers, err, seqErr)
					}
					if err != nil && got != nil {
						t.Fatalf("recorded %v, size %d, %s: plaintext with the error %v", recorded, size, name, err)
					}
					if err == nil && !bytes.Equal(got, seqPT.Bytes()) {
						t.Fatalf("recorded %v, size %d, %s: wrong plaintext", recorded, size, name)
					}
				}
			}
		}
	}
}

// TestSmallSealOpenAllocations: sealing or opening a 4 KiB object
// allocates about the output and a constant, not a 64 KiB chunk buffer.
func TestSmallSealOpenAllocations(t *testing.T) {
	ctx := context.Background()
	kek := newLocalKEK(t, "allocs")
	e := &Encrypter{KEKs: []kms.KEK{kek}}
	d := &Decrypter{Keyring: KEKs{kek}}
	pt := testPlaintext(4096)
	ct, err := e.Seal(ctx, pt)
	if err != nil {
		t.Fatal(err)
	}
	seal := testing.Benchmark(func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := e.Seal(ctx, pt); err != nil {
				b.Fatal(err)
			}
		}
	})
	open := testing.Benchmark(func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := d.Open(ctx, ct); err != nil {
				b.Fatal(err)
			}
		}
	})
	t.Logf("4 KiB Seal: %d B/op, %d allocs/op; Open: %d B/op, %d allocs/op",
		seal.AllocedBytesPerOp(), seal.AllocsPerOp(), open.AllocedBytesPerOp(), open.AllocsPerOp())
	const limit = 32 << 10
	if n := seal.AllocedBytesPerOp(); n >= limit {
		t.Errorf("a 4 KiB Seal allocates %d bytes, want < %d", n, limit)
	}
	if n := open.AllocedBytesPerOp(); n >= limit {
		t.Errorf("a 4 KiB Open allocates %d bytes, want < %d", n, limit)
	}
}

// TestSmallWriterBuffer: a Writer for a plaintext of known size under a
// chunk allocates no chunk-sized buffer, and one told too small a size
// still fails as before (size mismatch), and one of unknown size works.
func TestSmallWriterAllocations(t *testing.T) {
	ctx := context.Background()
	kek := newLocalKEK(t, "writer")
	e := &Encrypter{KEKs: []kms.KEK{kek}}
	pt := testPlaintext(4096)
	res := testing.Benchmark(func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			w, err := e.NewWriter(ctx, io.Discard, int64(len(pt)))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := w.Write(pt); err != nil {
				b.Fatal(err)
			}
			if err := w.Close(); err != nil {
				b.Fatal(err)
			}
		}
	})
	t.Logf("4 KiB through NewWriter: %d B/op, %d allocs/op", res.AllocedBytesPerOp(), res.AllocsPerOp())
	if n := res.AllocedBytesPerOp(); n >= 32<<10 {
		t.Errorf("a 4 KiB Writer allocates %d bytes, want < %d", n, 32<<10)
	}
}
