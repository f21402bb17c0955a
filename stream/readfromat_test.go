package stream

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// TestReaderFromAtMatchesReader: a Reader whose workers read the body with
// ReadAt fails on every defect as the sequential Reader does, and serves
// the same plaintext.
func TestReaderFromAtMatchesReader(t *testing.T) {
	dek := testKey("fromat")
	const cs = MinChunkSize
	c := testCipher(t, dek, cs, "fromat")
	for _, size := range []int{0, cs - 1, cs, 4*cs + 3, 9 * cs} {
		pt := testPlaintext(size, uint64(size)+7)
		body, err := c.SealBody(nil, pt, nil)
		if err != nil {
			t.Fatal(err)
		}
		for name, b := range mutations(body, cs) {
			want, wantErr := sequentialOpen(c, b)
			for _, workers := range []int{1, 2, 4} {
				r := c.NewReaderFromAt(bytes.NewReader(b), int64(len(b)), &Options{Workers: workers})
				var out bytes.Buffer
				_, err := io.Copy(&out, r)
				r.Close()
				if !sameFailure(err, wantErr) {
					t.Fatalf("size %d, %s, %d workers: %v; the Reader: %v", size, name, workers, err, wantErr)
				}
				if err == nil && !bytes.Equal(out.Bytes(), want) {
					t.Fatalf("size %d, %s, %d workers: wrong plaintext", size, name, workers)
				}
				if err != nil && out.Len() > len(want) {
					t.Fatalf("size %d, %s: more plaintext than authenticated", size, name)
				}
			}
		}
	}
}

// shortAt is an io.ReaderAt whose bytes from cut on are gone.
type shortAt struct {
	b   []byte
	cut int64
	err error
	pan bool
}

func (s *shortAt) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > s.cut {
		if s.pan {
			panic("shortAt")
		}
		if s.err != nil {
			return 0, s.err
		}
	}
	if off >= s.cut {
		return 0, io.EOF
	}
	n := copy(p, s.b[off:min(s.cut, int64(len(s.b)))])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// TestWriterReadFromAt: ReadFromAt writes the stream Write would, from any
// offset and any state of the Writer; a source that ends early or fails
// fails the Writer, which then writes no final chunk; a panic in the source
// reaches the caller.
func TestWriterReadFromAt(t *testing.T) {
	dek := testKey("readfromat")
	const cs = MinChunkSize
	c := testCipher(t, dek, cs, "readfromat")
	src := testPlaintext(20*cs+77, 8)
	for _, workers := range []int{1, 2, 4} {
		for _, lead := range []int{0, 1, cs - 1, cs} {
			for _, n := range []int{0, 1, cs, 3*cs + 5, 17 * cs} {
				const off = 33
				pt := append(bytes.Clone(src[:lead]), src[off:off+n]...)
				want := sealSequential(t, c, pt)
				var buf bytes.Buffer
				w := c.NewWriter(&buf, &Options{Workers: workers})
				if _, err := w.Write(src[:lead]); err != nil {
					t.Fatal(err)
				}
				got, err := w.ReadFromAt(bytes.NewReader(src), off, int64(n))
				if err != nil || got != int64(n) {
					t.Fatalf("ReadFromAt: %d, %v", got, err)
				}
				if err := w.Close(); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(buf.Bytes(), want) {
					t.Fatalf("%d workers, lead %d, n %d: another stream", workers, lead, n)
				}
			}
		}
		for _, cut := range []int64{0, 5, cs, 7*cs + 3} {
			for _, failure := range []string{"short", "error", "panic"} {
				s := &shortAt{b: src, cut: cut}
				switch failure {
				case "error":
					s.err = errors.New("disk on fire")
				case "panic":
					s.pan = true
				}
				var buf bytes.Buffer
				w := c.NewWriter(&buf, &Options{Workers: workers})
				var err error
				func() {
					defer func() {
						if v := recover(); v != nil {
							err = errPanicked
						}
					}()
					_, err = w.ReadFromAt(s, 0, 12*cs)
				}()
				switch {
				case failure == "short" && !errors.Is(err, ErrTruncated),
					failure == "error" && !errors.Is(err, s.err),
					failure == "panic" && err != errPanicked:
					t.Fatalf("%d workers, cut %d, %s: %v", workers, cut, failure, err)
				}
				if cerr := w.Close(); cerr == nil {
					t.Fatalf("%d workers, cut %d, %s: Close succeeded", workers, cut, failure)
				}
				if _, err := sequentialOpen(c, buf.Bytes()); !errors.Is(err, ErrTruncated) {
					t.Fatalf("%d workers, cut %d, %s: what was written decrypts with %v, want truncated", workers, cut, failure, err)
				}
			}
		}
	}
}
