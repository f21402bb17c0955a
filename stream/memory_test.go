package stream

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"testing"
)

// sequentialOpen decrypts body with a one-worker Reader, the reference
// the in-memory and the file paths must agree with.
func sequentialOpen(c *Cipher, body []byte) ([]byte, error) {
	r := c.NewReader(bytes.NewReader(body), &Options{Workers: 1})
	defer r.Close()
	return io.ReadAll(r)
}

// sameFailure reports whether two errors are the same failure: both nil,
// or the same class and, for a chunk error, the same chunk.
func sameFailure(a, b error) bool {
	if (a == nil) != (b == nil) {
		return false
	}
	if a == nil {
		return true
	}
	for _, class := range []error{ErrAuthentication, ErrTruncated, ErrTooLong, ErrInvalidHeader, context.Canceled} {
		if errors.Is(a, class) != errors.Is(b, class) {
			return false
		}
	}
	var ca, cb *ChunkError
	if errors.As(a, &ca) != errors.As(b, &cb) {
		return false
	}
	return ca == nil || ca.Index == cb.Index
}

// mutations returns the defective bodies the hostile tests try, built from
// a valid body of chunk size cs.
func mutations(body []byte, cs int) map[string][]byte {
	full := cs + TagSize
	m := map[string][]byte{"valid": body}
	cut := func(n int) {
		if n >= 0 && n <= len(body) {
			m[fmt.Sprintf("cut at %d", n)] = bytes.Clone(body[:n])
		}
	}
	for k := 0; k*full <= len(body); k++ {
		for _, d := range []int{-17, -16, -15, -1, 0, 1, 15, 16, 17} {
			cut(k*full + d)
		}
	}
	for i := 0; i < len(body); i += max(1, len(body)/23) {
		b := bytes.Clone(body)
		b[i] ^= 0x40
		m[fmt.Sprintf("flip at %d", i)] = b
	}
	n := (len(body) + full - 1) / full
	for k := range n {
		// Drop chunk k, duplicate it, swap it with the next.
		if (k+1)*full <= len(body) {
			m[fmt.Sprintf("drop %d", k)] = append(bytes.Clone(body[:k*full]), body[(k+1)*full:]...)
			m[fmt.Sprintf("dup %d", k)] = append(bytes.Clone(body[:(k+1)*full]), body[k*full:]...)
		}
		if (k+2)*full <= len(body) {
			b := bytes.Clone(body)
			copy(b[k*full:], body[(k+1)*full:(k+2)*full])
			copy(b[(k+1)*full:], body[k*full:(k+1)*full])
			m[fmt.Sprintf("swap %d", k)] = b
		}
	}
	for _, t := range []int{1, 15, 16, full - 1, full, full + 1} {
		m[fmt.Sprintf("trailing %d", t)] = append(bytes.Clone(body), make([]byte, t)...)
	}
	// Two defects: a flip in chunk 0 and the final chunk dropped.
	if n > 1 {
		b := bytes.Clone(body[:(n-1)*full])
		b[3] ^= 1
		m["flip 0 and drop final"] = b
		b = bytes.Clone(body)
		b[len(b)-1] ^= 1
		b[full+2] ^= 1
		m["flip 1 and final"] = b
	}
	m["empty"] = nil
	return m
}

// TestOpenBodyMatchesReader is the hostile test of the in-memory path: for
// every defect, OpenBody fails with the error a sequential Reader reports
// (class and chunk), returns no plaintext, and never writes to the body.
func TestOpenBodyMatchesReader(t *testing.T) {
	dek := testKey("openbody")
	const cs = MinChunkSize
	c := testCipher(t, dek, cs, "openbody")
	for _, size := range []int{0, 1, cs - 1, cs, cs + 1, 3 * cs, 5*cs + 7, 8 * cs} {
		pt := testPlaintext(size, uint64(size))
		body, err := c.SealBody(nil, pt, nil)
		if err != nil {
			t.Fatal(err)
		}
		if seq := sealSequential(t, c, pt); !bytes.Equal(seq, body) {
			t.Fatalf("size %d: SealBody differs from a Writer's body", size)
		}
		for name, b := range mutations(body, cs) {
			want, wantErr := sequentialOpen(c, b)
			for _, workers := range []int{1, 2, 3, 8} {
				sum := sha256.Sum256(b)
				got, err := c.OpenBody(nil, b, &Options{Workers: workers})
				if sha256.Sum256(b) != sum {
					t.Fatalf("size %d, %s, %d workers: OpenBody wrote to the ciphertext", size, name, workers)
				}
				if !sameFailure(err, wantErr) {
					t.Fatalf("size %d, %s, %d workers: OpenBody: %v, the Reader: %v", size, name, workers, err, wantErr)
				}
				if err != nil && got != nil {
					t.Fatalf("size %d, %s, %d workers: %d bytes of plaintext with the error %v", size, name, workers, len(got), err)
				}
				if err == nil && !bytes.Equal(got, want) {
					t.Fatalf("size %d, %s, %d workers: wrong plaintext", size, name, workers)
				}
			}
		}
	}
}

func sealSequential(t *testing.T, c *Cipher, pt []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := c.NewWriter(&buf, &Options{Workers: 1})
	if _, err := w.Write(pt); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestOpenBodyChunkLimit checks ErrTooLong and truncation at the chunk
// limit against the sequential Reader.
func TestOpenBodyChunkLimit(t *testing.T) {
	dek := testKey("limit")
	const cs = MinChunkSize
	c := testCipher(t, dek, cs, "limit")
	pt := testPlaintext(6*cs+5, 1)
	body, err := c.SealBody(nil, pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	for limit := uint64(1); limit <= 9; limit++ {
		c.maxChunks = limit
		_, wantErr := sequentialOpen(c, body)
		for name, b := range map[string][]byte{"whole": body, "no final": body[:6*(cs+TagSize)], "flip 0": flipped(body, 0)} {
			_, wantErr = sequentialOpen(c, b)
			for _, workers := range []int{1, 4} {
				_, err := c.OpenBody(nil, b, &Options{Workers: workers})
				if !sameFailure(err, wantErr) {
					t.Errorf("limit %d, %s, %d workers: OpenBody: %v, the Reader: %v", limit, name, workers, err, wantErr)
				}
			}
		}
		_, err := c.SealBody(nil, pt, nil)
		if limit < 7 && !errors.Is(err, ErrTooLong) || limit >= 7 && err != nil {
			t.Errorf("limit %d: SealBody: %v", limit, err)
		}
	}
}

func flipped(b []byte, i int) []byte {
	b = bytes.Clone(b)
	b[i] ^= 1
	return b
}

// TestOpenBodyFailureReleasesNothing: a failure in chunk k while the other
// workers open the chunks after it returns no plaintext, and the spare
// capacity of dst holds none either.
func TestOpenBodyFailureReleasesNothing(t *testing.T) {
	dek := testKey("release")
	const cs = MinChunkSize
	c := testCipher(t, dek, cs, "release")
	pt := testPlaintext(64*cs+100, 2)
	body, err := c.SealBody(nil, pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []int{0, 1, 31, 63, 64} {
		b := flipped(body, k*(cs+TagSize)+7)
		dst := make([]byte, 3, 3+len(pt))
		got, err := c.OpenBody(dst, b, &Options{Workers: 4})
		var ce *ChunkError
		if got != nil || !errors.As(err, &ce) || ce.Index != uint64(k) || !errors.Is(err, ErrAuthentication) {
			t.Fatalf("flip in chunk %d: %d bytes, %v", k, len(got), err)
		}
		if !bytes.Equal(dst[:cap(dst)][3:], make([]byte, len(pt))) {
			t.Fatalf("flip in chunk %d: plaintext left in dst's capacity", k)
		}
	}
}

// TestSealOpenBodyContext: a done context stops both, with its error and
// no output.
func TestSealOpenBodyContext(t *testing.T) {
	dek := testKey("ctx")
	c := testCipher(t, dek, MinChunkSize, "ctx")
	pt := testPlaintext(10*MinChunkSize, 3)
	body, err := c.SealBody(nil, pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, workers := range []int{1, 3} {
		if b, err := c.SealBody(nil, pt, &Options{Workers: workers, Context: ctx}); b != nil || !errors.Is(err, context.Canceled) {
			t.Errorf("SealBody, %d workers: %d bytes, %v", workers, len(b), err)
		}
		if p, err := c.OpenBody(nil, body, &Options{Workers: workers, Context: ctx}); p != nil || !errors.Is(err, context.Canceled) {
			t.Errorf("OpenBody, %d workers: %d bytes, %v", workers, len(p), err)
		}
	}
}

// TestWriterSizeHint: a Writer given a size hint writes the same stream
// whatever it is then given, by Write or ReadFrom, more or less than the
// hint.
func TestWriterSizeHint(t *testing.T) {
	dek := testKey("hint")
	const cs = MinChunkSize
	c := testCipher(t, dek, cs, "hint")
	for _, size := range []int{0, 1, 100, cs - 1, cs, cs + 1, 3*cs + 2} {
		pt := testPlaintext(size, 9)
		want := sealSequential(t, c, pt)
		for _, hint := range []int64{1, 50, 100, cs - 1, cs, 10 * cs} {
			for _, workers := range []int{1, 3} {
				for _, how := range []string{"write", "readfrom", "small writes"} {
					var buf bytes.Buffer
					w := c.NewWriter(&buf, &Options{Workers: workers, SizeHint: hint})
					var err error
					switch how {
					case "write":
						_, err = w.Write(pt)
					case "readfrom":
						_, err = w.ReadFrom(io.LimitReader(bytes.NewReader(pt), int64(size)))
					default:
						for i := 0; i < len(pt) && err == nil; i += 37 {
							_, err = w.Write(pt[i:min(i+37, len(pt))])
						}
					}
					if err == nil {
						err = w.Close()
					}
					if err != nil || !bytes.Equal(buf.Bytes(), want) {
						t.Fatalf("size %d, hint %d, %d workers, %s: %v, or another stream", size, hint, workers, how, err)
					}
				}
			}
		}
	}
}

// FuzzOpenBody: on any body, OpenBody and the Reader whose workers read
// with ReadAt fail or succeed as the sequential Reader does, and OpenBody
// never writes to the body.
func FuzzOpenBody(f *testing.F) {
	const cs = MinChunkSize
	c := testCipher(f, testKey("fuzz-openbody"), cs, "fuzz-openbody")
	for _, n := range []int{0, 10, cs, 2*cs + 3} {
		body, _ := c.SealBody(nil, testPlaintext(n, 1), nil)
		f.Add(body, uint16(0), byte(0))
		f.Add(body, uint16(n/2), byte(1))
	}
	f.Fuzz(func(t *testing.T, body []byte, at uint16, x byte) {
		if len(body) > 0 {
			body[int(at)%len(body)] ^= x
		}
		want, wantErr := sequentialOpen(c, body)
		sum := sha256.Sum256(body)
		got, err := c.OpenBody(nil, body, &Options{Workers: 3})
		if sha256.Sum256(body) != sum {
			t.Fatal("OpenBody wrote to the body")
		}
		if !sameFailure(err, wantErr) || err == nil && !bytes.Equal(got, want) || err != nil && got != nil {
			t.Fatalf("OpenBody: %v; the Reader: %v", err, wantErr)
		}
		r := c.NewReaderFromAt(bytes.NewReader(body), int64(len(body)), &Options{Workers: 2})
		defer r.Close()
		got, err = io.ReadAll(r)
		if !sameFailure(err, wantErr) || err == nil && !bytes.Equal(got, want) {
			t.Fatalf("NewReaderFromAt: %v; the Reader: %v", err, wantErr)
		}
	})
}
