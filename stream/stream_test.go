package stream

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"testing"
	"testing/cryptotest"
	"testing/iotest"
)

// ---------------------------------------------------------------------------
// Helpers shared by the tests of this package (stream_test.go, attack_test.go,
// fuzz_test.go, bench_test.go).

// testKey returns a deterministic data key for label.
func testKey(label string) []byte {
	s := sha256.Sum256([]byte("kpcrypt stream test data key " + label))
	return s[:]
}

// testPlaintext returns n deterministic pseudo-random bytes for seed.
func testPlaintext(n int, seed uint64) []byte {
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	b := make([]byte, n)
	rand.NewChaCha8(s).Read(b)
	return b
}

// testHeader returns a header under dek with chunk size cs and a salt derived
// from label, so that the stream is reproducible.
func testHeader(tb testing.TB, dek []byte, cs int, label string) Header {
	tb.Helper()
	h := Header{ChunkSize: cs, Salt: sha256.Sum256([]byte("kpcrypt stream test salt " + label))}
	ks, err := deriveKeys(dek, &h)
	if err != nil {
		tb.Fatal(err)
	}
	h.Commitment = ks.commitment
	return h
}

// testCipher returns the cipher of testHeader(dek, cs, label).
func testCipher(tb testing.TB, dek []byte, cs int, label string) *Cipher {
	tb.Helper()
	c, err := NewCipher(dek, testHeader(tb, dek, cs, label))
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func marshalHeader(tb testing.TB, h Header) []byte {
	tb.Helper()
	b, err := h.MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// referenceChunks seals pt chunk by chunk with c.seal, following the format's
// chunk rule directly rather than through a Writer: every chunk but the last
// is full, the last is shorter (empty when len(pt) is a multiple of the chunk
// size) and carries the final flag.
func referenceChunks(c *Cipher, pt []byte) [][]byte {
	cs := c.header.ChunkSize
	var chunks [][]byte
	for i := 0; ; i++ {
		end := min((i+1)*cs, len(pt))
		final := end-i*cs < cs
		chunks = append(chunks, c.seal(nil, pt[i*cs:end], uint64(i), final))
		if final {
			return chunks
		}
	}
}

// referenceStream returns header ‖ referenceChunks(c, pt).
func referenceStream(tb testing.TB, c *Cipher, pt []byte) []byte {
	return slices.Concat(append([][]byte{marshalHeader(tb, c.header)}, referenceChunks(c, pt)...)...)
}

// writeInPieces writes p to w in calls of size bytes (size 0: one call).
func writeInPieces(w io.Writer, p []byte, size int) error {
	if size <= 0 {
		size = max(len(p), 1)
	}
	for len(p) > 0 {
		k := min(size, len(p))
		n, err := w.Write(p[:k])
		if err != nil {
			return err
		}
		if n != k {
			return fmt.Errorf("Write(%d bytes) = %d, nil", k, n)
		}
		p = p[k:]
	}
	return nil
}

// readInPieces reads r to its end with calls of size bytes (size 0: a buffer
// as large as want, plus one byte) and returns what it read and the error that
// ended the reading, io.EOF included. It checks the io.Reader contract on the
// way.
func readInPieces(r io.Reader, size, want int) ([]byte, error) {
	if size <= 0 {
		size = want + 1
	}
	var out []byte
	buf := make([]byte, size)
	for zero := 0; ; {
		n, err := r.Read(buf)
		if n < 0 || n > len(buf) {
			return out, fmt.Errorf("Read returned %d for a %d-byte buffer", n, len(buf))
		}
		out = append(out, buf[:n]...)
		if err != nil {
			return out, err
		}
		if n == 0 {
			if zero++; zero > 100 {
				return out, errors.New("Read keeps returning 0, nil")
			}
		}
	}
}

// encryptWith encrypts pt into header ‖ body with c and opts, writing in
// pieces of writeSize bytes.
func encryptWith(tb testing.TB, c *Cipher, pt []byte, writeSize int, opts *Options) []byte {
	tb.Helper()
	var buf bytes.Buffer
	buf.Write(marshalHeader(tb, c.header))
	w := c.NewWriter(&buf, opts)
	if err := writeInPieces(w, pt, writeSize); err != nil {
		tb.Fatalf("Write: %v", err)
	}
	if err := w.Close(); err != nil {
		tb.Fatalf("Close: %v", err)
	}
	return buf.Bytes()
}

// encryptNew encrypts pt with NewEncryptWriter (random salt).
func encryptNew(tb testing.TB, dek, pt []byte, opts *Options) []byte {
	tb.Helper()
	var buf bytes.Buffer
	w, err := NewEncryptWriter(&buf, dek, opts)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := w.Write(pt); err != nil {
		tb.Fatalf("Write: %v", err)
	}
	if err := w.Close(); err != nil {
		tb.Fatalf("Close: %v", err)
	}
	return buf.Bytes()
}

// onlyReader hides every method of an io.Reader but Read (WriterTo in
// particular, so that io.Copy takes the destination's ReaderFrom).
type onlyReader struct{ io.Reader }

// onlyWriter hides every method of an io.Writer but Write (ReaderFrom in
// particular).
type onlyWriter struct{ io.Writer }

// recordingReader records the largest buffer it was asked to fill.
type recordingReader struct {
	r      io.Reader
	maxBuf int
}

func (r *recordingReader) Read(p []byte) (int, error) {
	r.maxBuf = max(r.maxBuf, len(p))
	return r.r.Read(p)
}

// recordingWriter records the largest Write.
type recordingWriter struct {
	bytes.Buffer
	maxWrite int
}

func (w *recordingWriter) Write(p []byte) (int, error) {
	w.maxWrite = max(w.maxWrite, len(p))
	return w.Buffer.Write(p)
}

// patternReader generates n bytes of a deterministic pattern (a pseudo-random
// block of prime length, repeated) without holding them in memory.
type patternReader struct {
	n, off int64
}

const patternPeriod = 65521

var patternBlock = sync.OnceValue(func() []byte { return testPlaintext(patternPeriod, 0xba5e) })

func (r *patternReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.n-r.off)]
	block := patternBlock()
	for k := 0; k < len(p); {
		k += copy(p[k:], block[(r.off+int64(k))%patternPeriod:])
	}
	r.off += int64(len(p))
	return len(p), nil
}

// ---------------------------------------------------------------------------
// Round trips.

// callSizes returns the write and read call sizes of the matrix; 0 means a
// single call with the whole input.
func callSizes(cs int) []int { return []int{1, 512, cs - 1, cs, cs + 1, 0} }

func matrixLengths(cs int, short bool) []int {
	ls := []int{0, 1, cs - 1, cs, cs + 1, 2 * cs, 3*cs + 5, 17*cs + 999}
	if !short {
		ls = append(ls, 64*cs+3)
	}
	return ls
}

var matrixWorkers = []int{1, 2, 4}

// TestRoundTripMatrix checks, at the minimum chunk size, that every
// combination of plaintext length, write call size, read call size and
// number of workers round-trips, and that the Writer produces exactly the
// reference ciphertext of the format's chunk rule whatever the write pattern.
func TestRoundTripMatrix(t *testing.T) {
	t.Parallel()
	const cs = MinChunkSize
	dek := testKey("matrix")
	for _, n := range matrixLengths(cs, testing.Short()) {
		t.Run(fmt.Sprintf("len=%d", n), func(t *testing.T) {
			t.Parallel()
			c := testCipher(t, dek, cs, fmt.Sprint("matrix", n))
			pt := testPlaintext(n, uint64(n))
			ref := referenceStream(t, c, pt)
			if want := HeaderSize + mustBodySize(t, c.header, n); int64(len(ref)) != want {
				t.Fatalf("reference stream is %d bytes, BodySize says %d", len(ref), want)
			}
			checkEncryptMatrix(t, c, pt, ref)
			checkDecryptMatrix(t, c, dek, pt, ref)
			if n <= 3*cs+5 && !testing.Short() || n == cs+1 {
				checkFullProduct(t, c, pt)
			}
		})
	}
}

func mustBodySize(tb testing.TB, h Header, n int) int64 {
	tb.Helper()
	s, err := h.BodySize(int64(n))
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// checkEncryptMatrix encrypts pt with every write call size and number of
// workers, through Write and through io.Copy (ReadFrom), and requires the
// reference ciphertext each time.
func checkEncryptMatrix(t *testing.T, c *Cipher, pt, ref []byte) {
	t.Helper()
	cs := c.header.ChunkSize
	for _, workers := range matrixWorkers {
		opts := &Options{Workers: workers}
		for _, ws := range callSizes(cs) {
			if ws == 1 && len(pt) > 20*cs && testing.Short() {
				continue
			}
			if got := encryptWith(t, c, pt, ws, opts); !bytes.Equal(got, ref) {
				t.Errorf("workers=%d write=%d: ciphertext differs from the reference", workers, ws)
			}
		}
		// io.Copy into the Writer takes its ReadFrom, which reads straight
		// into chunk buffers: no read asks for more than a chunk.
		sources := map[string]func(io.Reader) io.Reader{
			"plain":     func(r io.Reader) io.Reader { return r },
			"onebyte":   iotest.OneByteReader,
			"half":      iotest.HalfReader,
			"dataerr":   iotest.DataErrReader,
			"smallbyte": func(r io.Reader) io.Reader { return iotest.HalfReader(iotest.DataErrReader(r)) },
		}
		for name, wrap := range sources {
			if name == "onebyte" && len(pt) > 20*cs && testing.Short() {
				continue
			}
			var buf bytes.Buffer
			buf.Write(ref[:HeaderSize])
			w := c.NewWriter(&buf, opts)
			src := &recordingReader{r: wrap(bytes.NewReader(pt))}
			n, err := io.Copy(w, onlyReader{src})
			if err != nil || n != int64(len(pt)) {
				t.Errorf("workers=%d ReadFrom(%s) = %d, %v; want %d, nil", workers, name, n, err, len(pt))
			}
			if err := w.Close(); err != nil {
				t.Errorf("workers=%d ReadFrom(%s): Close: %v", workers, name, err)
			}
			if !bytes.Equal(buf.Bytes(), ref) {
				t.Errorf("workers=%d ReadFrom(%s): ciphertext differs from the reference", workers, name)
			}
			if src.maxBuf > cs {
				t.Errorf("workers=%d ReadFrom(%s): source asked to fill %d bytes, more than a chunk: io.Copy did not use ReadFrom", workers, name, src.maxBuf)
			}
		}
	}
}

// checkDecryptMatrix decrypts ref with every read call size and number of
// workers, from sources that return short reads, through Read, WriteTo and
// iotest.TestReader, and through the ReaderAt.
func checkDecryptMatrix(t *testing.T, c *Cipher, dek, pt, ref []byte) {
	t.Helper()
	cs := c.header.ChunkSize
	sources := []struct {
		name string
		wrap func(io.Reader) io.Reader
	}{
		{"plain", func(r io.Reader) io.Reader { return r }},
		{"half", iotest.HalfReader},
		{"onebyte", iotest.OneByteReader},
	}
	for _, workers := range matrixWorkers {
		opts := &Options{Workers: workers}
		for i, rs := range callSizes(cs) {
			if rs == 1 && len(pt) > 20*cs && testing.Short() {
				continue
			}
			// Rotate the source wrappers over the read sizes so that each
			// meets every worker count without a full product.
			src := sources[(i+workers)%len(sources)]
			r, err := NewDecryptReader(src.wrap(bytes.NewReader(ref)), dek, opts)
			if err != nil {
				t.Fatal(err)
			}
			got, err := readInPieces(r, rs, len(pt))
			if err != io.EOF || !bytes.Equal(got, pt) {
				t.Errorf("workers=%d read=%d src=%s: got %d bytes (equal %v), %v; want the plaintext and io.EOF",
					workers, rs, src.name, len(got), bytes.Equal(got, pt), err)
			}
			// Once at EOF, it stays there.
			if n, err := r.Read(make([]byte, 10)); n != 0 || err != io.EOF {
				t.Errorf("workers=%d: Read after EOF = %d, %v", workers, n, err)
			}
			r.Close()
		}

		// io.Copy out of the Reader takes its WriteTo, which writes at most a
		// chunk at a time (a plain copy would write 32 KiB buffers).
		r, err := NewDecryptReader(bytes.NewReader(ref), dek, opts)
		if err != nil {
			t.Fatal(err)
		}
		var dst recordingWriter
		if n, err := io.Copy(&dst, r); err != nil || n != int64(len(pt)) || !bytes.Equal(dst.Bytes(), pt) {
			t.Errorf("workers=%d WriteTo = %d, %v; want %d, nil and the plaintext", workers, n, err, len(pt))
		}
		if dst.maxWrite > cs {
			t.Errorf("workers=%d: a write of %d bytes, more than a chunk: io.Copy did not use WriteTo", workers, dst.maxWrite)
		}

		if len(pt) <= 20*cs || !testing.Short() {
			r, err = NewDecryptReader(bytes.NewReader(ref), dek, opts)
			if err != nil {
				t.Fatal(err)
			}
			if err := iotest.TestReader(r, pt); err != nil {
				t.Errorf("workers=%d: iotest.TestReader(Reader): %v", workers, err)
			}
		}
	}

	ra, err := NewDecryptReaderAt(bytes.NewReader(ref), int64(len(ref)), dek)
	if err != nil {
		t.Fatal(err)
	}
	if ra.Size() != int64(len(pt)) {
		t.Errorf("ReaderAt.Size() = %d, want %d", ra.Size(), len(pt))
	}
	if len(pt) <= 20*cs || !testing.Short() {
		// As an io.ReaderAt, through a SectionReader for Read and Seek.
		if err := iotest.TestReader(io.NewSectionReader(ra, 0, ra.Size()), pt); err != nil {
			t.Errorf("iotest.TestReader(ReaderAt): %v", err)
		}
	}
}

// checkFullProduct runs every write size × read size × workers combination
// through a pipe, the Writer and the Reader running concurrently.
func checkFullProduct(t *testing.T, c *Cipher, pt []byte) {
	t.Helper()
	cs := c.header.ChunkSize
	for _, workers := range matrixWorkers {
		for _, ws := range callSizes(cs) {
			for _, rs := range callSizes(cs) {
				got, err := pipeRoundTrip(c, pt, ws, rs, workers)
				if err != io.EOF || !bytes.Equal(got, pt) {
					t.Errorf("pipe workers=%d write=%d read=%d: %d bytes (equal %v), %v", workers, ws, rs, len(got), bytes.Equal(got, pt), err)
				}
			}
		}
	}
}

// pipeRoundTrip encrypts pt into a pipe while it decrypts the other end.
func pipeRoundTrip(c *Cipher, pt []byte, ws, rs, workers int) ([]byte, error) {
	pr, pw := io.Pipe()
	go func() {
		w := c.NewWriter(pw, &Options{Workers: workers})
		err := writeInPieces(w, pt, ws)
		if cerr := w.Close(); err == nil {
			err = cerr
		}
		pw.CloseWithError(err)
	}()
	r := c.NewReader(pr, &Options{Workers: workers})
	got, err := readInPieces(r, rs, len(pt))
	r.Close()
	pr.Close()
	return got, err
}

// TestRoundTripDefaultChunkSize makes one pass at the default 64 KiB chunk,
// through NewEncryptWriter and the default options.
func TestRoundTripDefaultChunkSize(t *testing.T) {
	t.Parallel()
	const cs = DefaultChunkSize
	dek := testKey("default")
	lengths := []int{0, 1, cs - 1, cs, cs + 1, 2 * cs, 3*cs + 5}
	if !testing.Short() {
		lengths = append(lengths, 16*cs+7)
	}
	for _, n := range lengths {
		pt := testPlaintext(n, 7)
		for _, opts := range []*Options{nil, {Workers: 1}, {Workers: 4}} {
			name := fmt.Sprintf("len=%d workers=%d", n, opts.workers())
			ct := encryptNew(t, dek, pt, opts)
			h, err := ReadHeader(bytes.NewReader(ct))
			if err != nil || h.ChunkSize != DefaultChunkSize {
				t.Fatalf("%s: header %+v, %v; want chunk size %d", name, h, err, DefaultChunkSize)
			}
			if want := HeaderSize + mustBodySize(t, h, n); int64(len(ct)) != want {
				t.Errorf("%s: stream is %d bytes, want %d", name, len(ct), want)
			}
			c, err := NewCipher(dek, h)
			if err != nil {
				t.Fatal(err)
			}
			if ref := referenceStream(t, c, pt); !bytes.Equal(ct, ref) {
				t.Errorf("%s: ciphertext differs from the reference", name)
			}
			for _, ws := range callSizes(cs) {
				if ws == 1 && n > 2*cs {
					continue
				}
				if got := encryptWith(t, c, pt, ws, opts); !bytes.Equal(got, ct) {
					t.Errorf("%s write=%d: ciphertext differs", name, ws)
				}
			}
			for _, rs := range callSizes(cs) {
				if rs == 1 && n > 2*cs {
					continue
				}
				r, err := NewDecryptReader(iotest.HalfReader(bytes.NewReader(ct)), dek, opts)
				if err != nil {
					t.Fatal(err)
				}
				got, err := readInPieces(r, rs, n)
				if err != io.EOF || !bytes.Equal(got, pt) {
					t.Errorf("%s read=%d: %d bytes (equal %v), %v", name, rs, len(got), bytes.Equal(got, pt), err)
				}
			}
			ra, err := NewDecryptReaderAt(bytes.NewReader(ct), int64(len(ct)), dek)
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, n+1)
			if k, err := ra.ReadAt(got, 0); k != n || err != io.EOF || !bytes.Equal(got[:k], pt) {
				t.Errorf("%s: ReadAt = %d, %v", name, k, err)
			}
		}
	}
}

// TestCiphertextIndependentOfWorkers checks that, under the same salt, the
// ciphertext depends neither on the number of workers nor on how the
// plaintext is handed to the Writer.
func TestCiphertextIndependentOfWorkers(t *testing.T) {
	dek := testKey("workers")
	for _, n := range []int{0, 5, MinChunkSize, 10*MinChunkSize + 3, 3*DefaultChunkSize + 11} {
		pt := testPlaintext(n, 3)
		var first []byte
		for _, cs := range []int{MinChunkSize, 0} {
			first = nil
			for _, workers := range []int{1, 4, 2, 0} {
				for _, ws := range []int{0, 1000} {
					cryptotest.SetGlobalRandom(t, 42)
					var buf bytes.Buffer
					w, err := NewEncryptWriter(&buf, dek, &Options{ChunkSize: cs, Workers: workers})
					if err != nil {
						t.Fatal(err)
					}
					if err := writeInPieces(w, pt, ws); err != nil {
						t.Fatal(err)
					}
					if err := w.Close(); err != nil {
						t.Fatal(err)
					}
					if first == nil {
						first = buf.Bytes()
						continue
					}
					if !bytes.Equal(buf.Bytes(), first) {
						t.Errorf("len=%d cs=%d: workers=%d write=%d gives other ciphertext than workers=1", n, cs, workers, ws)
					}
				}
			}
		}
		// The salt does come from crypto/rand: another seed, another stream.
		cryptotest.SetGlobalRandom(t, 43)
		if other := encryptNew(t, dek, pt, nil); bytes.Equal(other[:HeaderSize], first[:HeaderSize]) {
			t.Errorf("len=%d: same header under another random seed", n)
		}
	}
}

// ---------------------------------------------------------------------------
// Random access.

func TestReaderAtRandomAccess(t *testing.T) {
	t.Parallel()
	const cs = MinChunkSize
	dek := testKey("readerat")
	for _, n := range []int{0, 1, cs, 3 * cs, 10*cs + 123} {
		c := testCipher(t, dek, cs, "readerat")
		pt := testPlaintext(n, 11)
		ct := referenceStream(t, c, pt)
		for _, how := range []string{"NewDecryptReaderAt", "Cipher.NewReaderAt"} {
			var ra *ReaderAt
			var err error
			if how == "NewDecryptReaderAt" {
				ra, err = NewDecryptReaderAt(bytes.NewReader(ct), int64(len(ct)), dek)
			} else {
				body := ct[HeaderSize:]
				ra, err = c.NewReaderAt(bytes.NewReader(body), int64(len(body)))
			}
			if err != nil {
				t.Fatalf("%s: %v", how, err)
			}
			if ra.Size() != int64(n) {
				t.Fatalf("%s: Size() = %d, want %d", how, ra.Size(), n)
			}
			type read struct{ off, len int }
			reads := []read{
				{0, 0}, {0, 1}, {0, n}, {0, n + 1}, {n, 0}, {n, 1}, {n + 5, 3}, {n + cs, cs},
				{max(n-1, 0), 1}, {max(n-1, 0), 2}, {cs - 1, 2}, {cs - 3, 2*cs + 6}, {cs, cs}, {2 * cs, cs + 1},
				{max(n-cs-1, 0), cs + 1}, {max(n-cs-1, 0), cs + 2},
			}
			rng := rand.New(rand.NewPCG(uint64(n), 1))
			for range 1500 {
				reads = append(reads, read{rng.IntN(n + 2*cs), rng.IntN(3 * cs)})
			}
			for _, rd := range reads {
				buf := make([]byte, rd.len)
				k, err := ra.ReadAt(buf, int64(rd.off))
				want := pt[min(rd.off, n):min(rd.off+rd.len, n)]
				if k != len(want) || !bytes.Equal(buf[:k], want) {
					t.Errorf("%s len=%d: ReadAt(%d bytes, %d) = %d bytes (equal %v), want %d", how, n, rd.len, rd.off, k, bytes.Equal(buf[:k], want), len(want))
				}
				switch {
				case k < rd.len && err != io.EOF:
					t.Errorf("%s len=%d: short ReadAt(%d, %d) = %d, %v; want io.EOF", how, n, rd.len, rd.off, k, err)
				case k == rd.len && err != nil && err != io.EOF:
					t.Errorf("%s len=%d: ReadAt(%d, %d): %v", how, n, rd.len, rd.off, err)
				}
			}
			if k, err := ra.ReadAt(make([]byte, 1), -1); k != 0 || err == nil {
				t.Errorf("%s: ReadAt at -1 = %d, %v; want an error", how, k, err)
			}
		}
	}
}

// rangeReaderAt records which byte ranges of src are read.
type rangeReaderAt struct {
	src    io.ReaderAt
	mu     sync.Mutex
	ranges [][2]int64
}

func (r *rangeReaderAt) ReadAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	r.ranges = append(r.ranges, [2]int64{off, off + int64(len(p))})
	r.mu.Unlock()
	return r.src.ReadAt(p, off)
}

func (r *rangeReaderAt) take() [][2]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	rs := r.ranges
	r.ranges = nil
	return rs
}

// TestReaderAtTouchesOnlyNeededChunks checks that the ReaderAt reads exactly
// the chunks a read needs (the final one once, when it is created).
func TestReaderAtTouchesOnlyNeededChunks(t *testing.T) {
	t.Parallel()
	const cs = MinChunkSize
	const full = cs + TagSize
	dek := testKey("touch")
	c := testCipher(t, dek, cs, "touch")
	pt := testPlaintext(10*cs+7, 1)
	body := referenceStream(t, c, pt)[HeaderSize:]
	src := &rangeReaderAt{src: bytes.NewReader(body)}
	ra, err := c.NewReaderAt(src, int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	chunkRange := func(i int64) [2]int64 { return [2]int64{i * full, min((i+1)*full, int64(len(body)))} }
	if got := src.take(); !slices.Equal(got, [][2]int64{chunkRange(10)}) {
		t.Errorf("creating the ReaderAt read %v, want only the final chunk %v", got, chunkRange(10))
	}
	for _, tc := range []struct {
		off, n int64
		chunks []int64
	}{
		{5*cs + 10, 10, []int64{5}},
		{2*cs - 1, 2, []int64{1, 2}},
		{3 * cs, cs, []int64{3}},
		{7*cs - 1, cs + 2, []int64{6, 7, 8}},
	} {
		buf := make([]byte, tc.n)
		if _, err := ra.ReadAt(buf, tc.off); err != nil || !bytes.Equal(buf, pt[tc.off:tc.off+tc.n]) {
			t.Fatalf("ReadAt(%d, %d): %v", tc.n, tc.off, err)
		}
		var want [][2]int64
		for _, i := range tc.chunks {
			want = append(want, chunkRange(i))
		}
		if got := src.take(); !slices.Equal(got, want) {
			t.Errorf("ReadAt(%d, %d) read %v, want %v", tc.n, tc.off, got, want)
		}
	}
}

func TestReaderAtSeek(t *testing.T) {
	t.Parallel()
	const cs = MinChunkSize
	dek := testKey("seek")
	c := testCipher(t, dek, cs, "seek")
	pt := testPlaintext(4*cs+100, 2)
	ct := referenceStream(t, c, pt)
	ra, err := NewDecryptReaderAt(bytes.NewReader(ct), int64(len(ct)), dek)
	if err != nil {
		t.Fatal(err)
	}
	size := int64(len(pt))
	if ra.Size() != size {
		t.Fatalf("Size() = %d, want %d", ra.Size(), size)
	}
	// ReaderAt shares no offset: each caller takes a SectionReader.
	if _, ok := any(ra).(io.Seeker); ok {
		t.Fatal("ReaderAt has a Seek method: its offset would be shared")
	}
	if _, ok := any(ra).(io.Reader); ok {
		t.Fatal("ReaderAt has a Read method: its offset would be shared")
	}
	sr := io.NewSectionReader(ra, 0, size)
	pos := int64(0)
	seek := func(off int64, whence int, want int64) {
		t.Helper()
		got, err := sr.Seek(off, whence)
		if err != nil || got != want {
			t.Fatalf("Seek(%d, %d) = %d, %v; want %d, nil", off, whence, got, err, want)
		}
		pos = want
	}
	readAndCheck := func(n int) {
		t.Helper()
		buf := make([]byte, n)
		k, err := sr.Read(buf)
		want := pt[min(pos, size):min(pos+int64(n), size)]
		if k != len(want) || !bytes.Equal(buf[:k], want) {
			t.Fatalf("Read(%d) at %d = %d bytes (equal %v), want %d", n, pos, k, bytes.Equal(buf[:k], want), len(want))
		}
		if len(want) == 0 && n > 0 && err != io.EOF || len(want) > 0 && err != nil {
			t.Fatalf("Read(%d) at %d: error %v", n, pos, err)
		}
		pos += int64(k)
		if cur, err := sr.Seek(0, io.SeekCurrent); cur != pos || err != nil {
			t.Fatalf("after Read, Seek(0, SeekCurrent) = %d, %v; want %d", cur, err, pos)
		}
	}
	readAndCheck(10)
	seek(cs-5, io.SeekStart, cs-5)
	readAndCheck(10) // spans chunks 0 and 1
	seek(100, io.SeekCurrent, cs+105)
	readAndCheck(2 * cs)
	seek(-3*cs, io.SeekCurrent, 3*cs+105-3*cs)
	readAndCheck(1)
	seek(-1, io.SeekEnd, size-1)
	readAndCheck(5)
	seek(0, io.SeekEnd, size)
	readAndCheck(5)
	seek(cs, io.SeekEnd, size+cs) // past the end is allowed, reads there give io.EOF
	readAndCheck(5)
	seek(-size, io.SeekEnd, 0)
	readAndCheck(int(size) + 1)
	seek(2*cs, io.SeekStart, 2*cs)
	for _, bad := range []struct {
		off    int64
		whence int
	}{{-1, io.SeekStart}, {-2*cs - 1, io.SeekCurrent}, {-size - 1, io.SeekEnd}, {0, 3}, {0, -1}} {
		if got, err := sr.Seek(bad.off, bad.whence); err == nil {
			t.Errorf("Seek(%d, %d) = %d, nil; want an error", bad.off, bad.whence, got)
		}
		if cur, _ := sr.Seek(0, io.SeekCurrent); cur != 2*cs {
			t.Errorf("failed Seek(%d, %d) moved the offset to %d", bad.off, bad.whence, cur)
		}
	}
	readAndCheck(cs)
}

// ---------------------------------------------------------------------------
// Concurrency (run with -race).

func TestConcurrentReadAt(t *testing.T) {
	t.Parallel()
	const cs = MinChunkSize
	dek := testKey("concurrent")
	c := testCipher(t, dek, cs, "concurrent")
	pt := testPlaintext(20*cs+17, 4)
	ct := referenceStream(t, c, pt)
	ra, err := NewDecryptReaderAt(bytes.NewReader(ct), int64(len(ct)), dek)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 2))
			buf := make([]byte, 3*cs)
			for range 300 {
				off, n := rng.IntN(len(pt)), rng.IntN(3*cs)
				k, err := ra.ReadAt(buf[:n], int64(off))
				want := pt[off:min(off+n, len(pt))]
				if k != len(want) || !bytes.Equal(buf[:k], want) || k < n && err != io.EOF {
					t.Errorf("goroutine %d: ReadAt(%d, %d) = %d, %v", g, n, off, k, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestConcurrentStreams runs many independent streams at once, and many
// Readers sharing one Cipher.
func TestConcurrentStreams(t *testing.T) {
	t.Parallel()
	const cs = MinChunkSize
	var wg sync.WaitGroup
	for g := range 12 {
		wg.Go(func() {
			dek := testKey(fmt.Sprint("stream", g))
			c := testCipher(t, dek, cs, fmt.Sprint("stream", g))
			pt := testPlaintext(g*cs+g*37, uint64(g))
			got, err := pipeRoundTrip(c, pt, 1000+g, 777+g, 1+g%4)
			if err != io.EOF || !bytes.Equal(got, pt) {
				t.Errorf("stream %d: %d bytes (equal %v), %v", g, len(got), bytes.Equal(got, pt), err)
			}
			ct := encryptNew(t, dek, pt, &Options{ChunkSize: cs, Workers: 1 + g%3})
			r, err := NewDecryptReader(bytes.NewReader(ct), dek, &Options{Workers: 1 + g%4})
			if err != nil {
				t.Error(err)
				return
			}
			if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, pt) {
				t.Errorf("stream %d: ReadAll: %v", g, err)
			}
		})
	}
	dek := testKey("shared")
	c := testCipher(t, dek, cs, "shared")
	pt := testPlaintext(9*cs+1, 5)
	body := referenceStream(t, c, pt)[HeaderSize:]
	for g := range 8 {
		wg.Go(func() {
			r := c.NewReader(bytes.NewReader(body), &Options{Workers: 1 + g%3})
			if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, pt) {
				t.Errorf("shared cipher, reader %d: %v", g, err)
			}
		})
	}
	wg.Wait()
}

// ---------------------------------------------------------------------------
// Writer errors.

var errBoom = errors.New("boom")

// failingWriter accepts limit bytes, then fails: the Write that crosses the
// limit writes what fits and returns errBoom, and so does every later call.
type failingWriter struct {
	mu         sync.Mutex
	buf        bytes.Buffer
	limit      int
	failed     bool
	callsAfter int // Write calls after the first failure
}

func (w *failingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failed {
		w.callsAfter++
		return 0, errBoom
	}
	if room := w.limit - w.buf.Len(); len(p) > room {
		w.buf.Write(p[:room])
		w.failed = true
		return room, errBoom
	}
	return w.buf.Write(p)
}

// shortWriter accepts limit bytes, then reports short writes without error.
type shortWriter struct {
	buf   bytes.Buffer
	limit int
}

func (w *shortWriter) Write(p []byte) (int, error) {
	if room := w.limit - w.buf.Len(); len(p) > room {
		w.buf.Write(p[:max(room, 0)])
		return max(room, 0), nil
	}
	return w.buf.Write(p)
}

func TestWriterDstError(t *testing.T) {
	t.Parallel()
	const cs = MinChunkSize
	const full = cs + TagSize
	dek := testKey("dst error")
	pt := testPlaintext(5*cs+7, 6)
	c := testCipher(t, dek, cs, "dst error")
	ref := referenceStream(t, c, pt)
	limits := []int{0, 10, HeaderSize - 1, HeaderSize, HeaderSize + 1, HeaderSize + full, HeaderSize + 2*full + 7,
		HeaderSize + 5*full, len(ref) - 1, len(ref)}
	writes := map[string]func(w *Writer) error{
		"write-whole": func(w *Writer) error { return writeInPieces(w, pt, 0) },
		"write-1000":  func(w *Writer) error { return writeInPieces(w, pt, 1000) },
		"readfrom": func(w *Writer) error {
			_, err := io.Copy(w, onlyReader{bytes.NewReader(pt)})
			return err
		},
	}
	for _, workers := range []int{1, 4} {
		for _, limit := range limits {
			for name, write := range writes {
				desc := fmt.Sprintf("workers=%d limit=%d %s", workers, limit, name)
				dst := &failingWriter{limit: limit}
				// The header goes through the same failing writer.
				hdr := marshalHeader(t, c.header)
				if _, err := dst.Write(hdr); err != nil {
					if limit >= HeaderSize {
						t.Fatalf("%s: header: %v", desc, err)
					}
					continue // NewEncryptWriter's header failure is tested below
				}
				w := c.NewWriter(dst, &Options{Workers: workers})
				werr := write(w)
				cerr := w.Close()
				if limit >= len(ref) {
					if werr != nil || cerr != nil {
						t.Errorf("%s: Write %v, Close %v; want success", desc, werr, cerr)
					}
				} else {
					if werr != nil && !errors.Is(werr, errBoom) {
						t.Errorf("%s: Write: %v, want errBoom or nil", desc, werr)
					}
					if !errors.Is(cerr, errBoom) {
						t.Errorf("%s: Close = %v, want errBoom", desc, cerr)
					}
				}
				if again := w.Close(); again != cerr {
					t.Errorf("%s: second Close = %v, first %v", desc, again, cerr)
				}
				if n, err := w.Write([]byte("x")); n != 0 || !errors.Is(err, ErrClosed) {
					t.Errorf("%s: Write after Close = %d, %v; want ErrClosed", desc, n, err)
				}
				if !bytes.Equal(dst.buf.Bytes(), ref[:min(limit, len(ref))]) {
					t.Errorf("%s: dst holds %d bytes that are not a prefix of the stream", desc, dst.buf.Len())
				}
				if dst.callsAfter > 0 {
					t.Errorf("%s: %d writes to dst after it failed", desc, dst.callsAfter)
				}
			}
		}
	}

	// NewEncryptWriter reports a failure to write the header.
	for _, limit := range []int{0, HeaderSize - 1} {
		if _, err := NewEncryptWriter(&failingWriter{limit: limit}, dek, nil); !errors.Is(err, errBoom) {
			t.Errorf("NewEncryptWriter with a dst failing after %d bytes: %v, want errBoom", limit, err)
		}
		if _, err := NewEncryptWriter(&shortWriter{limit: limit}, dek, nil); !errors.Is(err, io.ErrShortWrite) {
			t.Errorf("NewEncryptWriter with a dst short after %d bytes: %v, want io.ErrShortWrite", limit, err)
		}
	}

	// A dst that writes short without an error gives io.ErrShortWrite.
	for _, workers := range []int{1, 4} {
		for _, limit := range []int{0, full - 1, 2*full + 3, len(ref) - HeaderSize - 1} {
			dst := &shortWriter{limit: limit}
			w := c.NewWriter(dst, &Options{Workers: workers})
			werr := writeInPieces(w, pt, 3000)
			cerr := w.Close()
			if werr != nil && !errors.Is(werr, io.ErrShortWrite) || !errors.Is(cerr, io.ErrShortWrite) {
				t.Errorf("workers=%d short after %d: Write %v, Close %v; want io.ErrShortWrite", workers, limit, werr, cerr)
			}
		}
	}
}

func TestWriterClose(t *testing.T) {
	t.Parallel()
	dek := testKey("close")
	for _, workers := range []int{1, 4} {
		var buf bytes.Buffer
		w, err := NewEncryptWriter(&buf, dek, &Options{ChunkSize: MinChunkSize, Workers: workers})
		if err != nil {
			t.Fatal(err)
		}
		pt := testPlaintext(3*MinChunkSize+1, 8)
		if _, err := w.Write(pt); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		n := buf.Len()
		if err := w.Close(); err != nil {
			t.Errorf("workers=%d: second Close = %v, want nil", workers, err)
		}
		if k, err := w.Write([]byte("more")); k != 0 || !errors.Is(err, ErrClosed) {
			t.Errorf("workers=%d: Write after Close = %d, %v; want 0, ErrClosed", workers, k, err)
		}
		if k, err := w.ReadFrom(bytes.NewReader([]byte("more"))); k != 0 || !errors.Is(err, ErrClosed) {
			t.Errorf("workers=%d: ReadFrom after Close = %d, %v; want 0, ErrClosed", workers, k, err)
		}
		if buf.Len() != n {
			t.Errorf("workers=%d: the Writer wrote after Close", workers)
		}
		r, err := NewDecryptReader(bytes.NewReader(buf.Bytes()), dek, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, pt) {
			t.Errorf("workers=%d: stream does not decrypt after a second Close: %v", workers, err)
		}
	}
}

// TestWriterBufferReuse checks that Write returns only once p is no longer
// needed: the caller overwrites its buffer right after each Write, and the
// ciphertext must not change. Whole chunks are sealed straight from p by the
// workers, so this fails (and races) if Write returns before they are done.
func TestWriterBufferReuse(t *testing.T) {
	t.Parallel()
	const cs = MinChunkSize
	dek := testKey("reuse")
	c := testCipher(t, dek, cs, "reuse")
	pt := testPlaintext(40*cs+11, 17)
	ref := referenceStream(t, c, pt)
	for _, workers := range []int{1, 2, 4} {
		for _, piece := range []int{cs, 3*cs + 7, 16 * cs} {
			var out bytes.Buffer
			out.Write(ref[:HeaderSize])
			w := c.NewWriter(&out, &Options{Workers: workers})
			buf := make([]byte, piece)
			for rest := pt; len(rest) > 0; {
				k := copy(buf, rest)
				if _, err := w.Write(buf[:k]); err != nil {
					t.Fatal(err)
				}
				for i := range buf {
					buf[i] = 0xaa
				}
				rest = rest[k:]
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), ref) {
				t.Errorf("workers=%d pieces of %d: ciphertext changed when the caller reused its buffer", workers, piece)
			}
		}
	}
}

// eofReaderAt returns io.EOF with every read that reaches the end of its
// data, full or not, as io.ReaderAt allows.
type eofReaderAt []byte

func (b eofReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if off+int64(n) == int64(len(b)) {
		return n, io.EOF
	}
	return n, nil
}

// TestReaderAtSourceEOF checks the ReaderAt against a source that returns
// io.EOF with full reads at its end, and against a size larger than the
// source: the errors are the package's, never a bare EOF.
func TestReaderAtSourceEOF(t *testing.T) {
	t.Parallel()
	const cs = MinChunkSize
	dek := testKey("eof")
	c := testCipher(t, dek, cs, "eof")
	for _, n := range []int{0, 5, cs, 2*cs + 1} {
		pt := testPlaintext(n, 18)
		ct := referenceStream(t, c, pt)
		ra, err := NewDecryptReaderAt(eofReaderAt(ct), int64(len(ct)), dek)
		if err != nil {
			t.Fatalf("len=%d: %v", n, err)
		}
		got := make([]byte, n)
		if k, err := ra.ReadAt(got, 0); k != n || err != nil && err != io.EOF || !bytes.Equal(got, pt) {
			t.Errorf("len=%d: ReadAt = %d, %v", n, k, err)
		}
	}
	ct := referenceStream(t, c, testPlaintext(2*cs+1, 18))
	for _, tc := range []struct {
		name  string
		data  []byte
		size  int64
		class error
	}{
		{"header only", ct[:HeaderSize], HeaderSize, ErrTruncated},
		{"size beyond the header's end", ct[:HeaderSize-1], HeaderSize + 100, ErrInvalidHeader},
		{"size beyond the data", ct, int64(len(ct)) + cs + TagSize, ErrTruncated},
		{"size 1 byte into a chunk", ct[:HeaderSize+2*(cs+TagSize)+1], HeaderSize + 2*(cs+TagSize) + 1, ErrAuthentication},
		{"size of full chunks only", ct[:HeaderSize+2*(cs+TagSize)], HeaderSize + 2*(cs+TagSize), ErrTruncated},
		{"size beyond a chunk", ct[:HeaderSize+cs+TagSize], int64(len(ct)), ErrTruncated},
	} {
		_, err := NewDecryptReaderAt(eofReaderAt(tc.data), tc.size, dek)
		if !errors.Is(err, tc.class) || errors.Is(err, io.EOF) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.class)
		}
	}
}

// TestWriterSourceErrors checks that an error from ReadFrom's source is
// sticky: ReadFrom and Close return it, and no final chunk is written. It
// also checks that a dst silently dropping bytes (iotest.TruncateWriter)
// yields a stream the readers refuse.
func TestWriterSourceErrors(t *testing.T) {
	t.Parallel()
	const cs = MinChunkSize
	dek := testKey("source")
	c := testCipher(t, dek, cs, "source")
	pt := testPlaintext(4*cs+9, 9)
	ref := referenceStream(t, c, pt)
	for _, workers := range []int{1, 4} {
		var buf bytes.Buffer
		buf.Write(ref[:HeaderSize])
		w := c.NewWriter(&buf, &Options{Workers: workers})
		errSrc := errors.New("source failed")
		if n, err := w.ReadFrom(iotest.ErrReader(errSrc)); n != 0 || err != errSrc {
			t.Errorf("workers=%d: ReadFrom(ErrReader) = %d, %v", workers, n, err)
		}
		if err := writeInPieces(w, pt, 999); err != errSrc {
			t.Errorf("workers=%d: Write after a source error: %v, want the source's error", workers, err)
		}
		if err := w.Close(); err != errSrc {
			t.Errorf("workers=%d: Close after a source error: %v, want the source's error", workers, err)
		}
		if buf.Len() != HeaderSize {
			t.Errorf("workers=%d: %d bytes written after a source error", workers, buf.Len()-HeaderSize)
		}

		// TimeoutReader succeeds once, then fails with ErrTimeout.
		buf.Reset()
		buf.Write(ref[:HeaderSize])
		w = c.NewWriter(&buf, &Options{Workers: workers})
		n, err := io.Copy(w, iotest.TimeoutReader(bytes.NewReader(pt[:2*cs+3])))
		if err != iotest.ErrTimeout {
			t.Errorf("workers=%d: io.Copy(TimeoutReader) = %d, %v; want ErrTimeout", workers, n, err)
		}
		if err := w.Close(); err != iotest.ErrTimeout {
			t.Errorf("workers=%d: Close = %v, want ErrTimeout", workers, err)
		}
		mustNotDecrypt(t, fmt.Sprintf("workers=%d after ErrTimeout", workers), dek, buf.Bytes())

		for _, keep := range []int{HeaderSize, HeaderSize + cs + TagSize, len(ref) - 1} {
			var dst bytes.Buffer
			w, err := NewEncryptWriter(iotest.TruncateWriter(&dst, int64(keep)), dek, &Options{ChunkSize: cs, Workers: workers})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(pt); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			r, err := NewDecryptReader(bytes.NewReader(dst.Bytes()), dek, &Options{Workers: workers})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, r); err == nil || errors.Is(err, io.EOF) {
				t.Errorf("workers=%d: stream cut at %d decrypts with %v", workers, keep, err)
			}
			if _, err := NewDecryptReaderAt(bytes.NewReader(dst.Bytes()), int64(dst.Len()), dek); err == nil {
				t.Errorf("workers=%d: ReaderAt accepts a stream cut at %d", workers, keep)
			}
		}
	}
}

// ---------------------------------------------------------------------------
// Reader behaviour.

// TestReaderReturnsAvailablePlaintext checks that Read returns the plaintext
// of a chunk as soon as it has authenticated instead of waiting for the next
// chunk: the peer below only sends its second chunk after the reader got the
// first. Before the fix the Reader blocked here forever.
func TestReaderReturnsAvailablePlaintext(t *testing.T) {
	t.Parallel()
	const cs = MinChunkSize
	dek := testKey("available")
	c := testCipher(t, dek, cs, "available")
	pt := testPlaintext(2*cs+1, 10)
	for _, workers := range []int{1, 2} {
		pr, pw := io.Pipe()
		gotFirst := make(chan struct{})
		go func() {
			w := c.NewWriter(pw, &Options{Workers: 1})
			w.Write(pt[:cs+1]) // writes chunk 0 to the pipe
			<-gotFirst
			w.Write(pt[cs+1:])
			pw.CloseWithError(w.Close())
		}()
		r := c.NewReader(pr, &Options{Workers: workers})
		buf := make([]byte, 3*cs)
		n, err := r.Read(buf)
		if n != cs || err != nil || !bytes.Equal(buf[:n], pt[:cs]) {
			t.Fatalf("workers=%d: first Read = %d, %v; want the %d bytes of chunk 0", workers, n, err, cs)
		}
		close(gotFirst)
		rest, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(rest, pt[cs:]) {
			t.Errorf("workers=%d: rest: %d bytes, %v", workers, len(rest), err)
		}
	}
}

func TestReaderClose(t *testing.T) {
	t.Parallel()
	const cs = MinChunkSize
	dek := testKey("reader close")
	c := testCipher(t, dek, cs, "reader close")
	pt := testPlaintext(40*cs, 12)
	ct := referenceStream(t, c, pt)
	for _, workers := range []int{1, 3} {
		for _, stopAt := range []int{0, 10, cs, 5*cs + 1, len(pt)} {
			r, err := NewDecryptReader(bytes.NewReader(ct), dek, &Options{Workers: workers})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(r, make([]byte, stopAt)); err != nil {
				t.Fatal(err)
			}
			if err := r.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			if n, err := r.Read(make([]byte, 100)); n != 0 || err == nil || err == io.EOF {
				t.Errorf("workers=%d stop=%d: Read after Close = %d, %v; want 0 and an error", workers, stopAt, n, err)
			}
			if n, err := r.WriteTo(io.Discard); n != 0 || err == nil {
				t.Errorf("workers=%d stop=%d: WriteTo after Close = %d, %v; want 0 and an error", workers, stopAt, n, err)
			}
			r.Close() // idempotent
		}
	}
}

// TestReaderWriteToErrors checks WriteTo's handling of a failing or short
// destination: it reports the error and the bytes written.
func TestReaderWriteToErrors(t *testing.T) {
	t.Parallel()
	const cs = MinChunkSize
	dek := testKey("writeto")
	c := testCipher(t, dek, cs, "writeto")
	pt := testPlaintext(3*cs+5, 13)
	ct := referenceStream(t, c, pt)
	for _, workers := range []int{1, 2} {
		for _, limit := range []int{0, cs - 1, 2*cs + 1} {
			r, _ := NewDecryptReader(bytes.NewReader(ct), dek, &Options{Workers: workers})
			dst := &failingWriter{limit: limit}
			if n, err := r.WriteTo(onlyWriter{dst}); n != int64(limit) || err != errBoom {
				t.Errorf("workers=%d: WriteTo(failing after %d) = %d, %v", workers, limit, n, err)
			}
			r.Close()
			r, _ = NewDecryptReader(bytes.NewReader(ct), dek, &Options{Workers: workers})
			sdst := &shortWriter{limit: limit}
			if n, err := r.WriteTo(sdst); n != int64(limit) || err != io.ErrShortWrite || !bytes.Equal(sdst.buf.Bytes(), pt[:limit]) {
				t.Errorf("workers=%d: WriteTo(short after %d) = %d, %v", workers, limit, n, err)
			}
			r.Close()
		}
	}
}

// ---------------------------------------------------------------------------
// The chunk counter limit.

// TestChunkLimit lowers the chunk counter limit of a Cipher and checks that
// the Writer refuses the chunk that would leave no index for the final one,
// never reusing an index, and that the readers refuse longer streams.
func TestChunkLimit(t *testing.T) {
	t.Parallel()
	const cs = MinChunkSize
	dek := testKey("limit")
	for _, limit := range []uint64{1, 2, 3} {
		c := testCipher(t, dek, cs, "limit")
		c.maxChunks = limit
		maxPlaintext := int(limit)*cs - 1 // limit-1 full chunks and a final one
		for _, workers := range []int{1, 4} {
			desc := fmt.Sprintf("limit=%d workers=%d", limit, workers)
			opts := &Options{Workers: workers}

			// The longest plaintext the limit allows encrypts and decrypts.
			for _, n := range []int{maxPlaintext - cs + 1, maxPlaintext} {
				pt := testPlaintext(n, 14)
				ct := encryptWith(t, c, pt, 0, opts)
				checkChunkIndexes(t, desc, c, ct[HeaderSize:], true)
				r := c.NewReader(bytes.NewReader(ct[HeaderSize:]), opts)
				if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, pt) {
					t.Errorf("%s len=%d: Reader: %v", desc, n, err)
				}
				if _, err := c.NewReaderAt(bytes.NewReader(ct[HeaderSize:]), int64(len(ct)-HeaderSize)); err != nil {
					t.Errorf("%s len=%d: ReaderAt: %v", desc, n, err)
				}
			}

			// One more byte needs one more chunk: Write fails on the byte
			// that fills chunk limit-1, whether written byte by byte, in one
			// call, or read by ReadFrom.
			pt := testPlaintext(maxPlaintext+1+100, 15)
			for _, mode := range []string{"bytewise", "whole", "readfrom"} {
				var body bytes.Buffer
				w := c.NewWriter(&body, opts)
				var err error
				switch mode {
				case "bytewise":
					for i := range pt {
						if _, err = w.Write(pt[i : i+1]); err != nil {
							if i != maxPlaintext {
								t.Errorf("%s: byte %d failed, want byte %d to: %v", desc, i, maxPlaintext, err)
							}
							break
						}
					}
				case "whole":
					_, err = w.Write(pt)
				case "readfrom":
					_, err = w.ReadFrom(bytes.NewReader(pt))
				}
				if !errors.Is(err, ErrTooLong) {
					t.Errorf("%s %s: Write = %v, want ErrTooLong", desc, mode, err)
				}
				if _, err := w.Write([]byte("x")); !errors.Is(err, ErrTooLong) {
					t.Errorf("%s %s: Write after ErrTooLong = %v, want ErrTooLong", desc, mode, err)
				}
				if err := w.Close(); !errors.Is(err, ErrTooLong) {
					t.Errorf("%s %s: Close = %v, want ErrTooLong", desc, mode, err)
				}
				// Only the limit-1 full chunks were written, with distinct
				// indexes, and no final chunk.
				if want := int(limit-1) * (cs + TagSize); body.Len() != want {
					t.Errorf("%s %s: wrote %d bytes, want %d (%d full chunks)", desc, mode, body.Len(), want, limit-1)
				}
				checkChunkIndexes(t, desc+" "+mode, c, body.Bytes(), false)
			}

			// Exactly limit full chunks plus a final one, sealed by hand:
			// both readers refuse it, the Reader after releasing the chunks
			// below the limit.
			long := testPlaintext(int(limit)*cs+3, 16)
			ct := referenceStream(t, c, long)
			r := c.NewReader(bytes.NewReader(ct[HeaderSize:]), opts)
			got, err := io.ReadAll(r)
			if !errors.Is(err, ErrTooLong) {
				t.Errorf("%s: Reader of %d chunks: %v, want ErrTooLong", desc, limit+1, err)
			}
			if !bytes.Equal(got, long[:int(limit-1)*cs]) {
				t.Errorf("%s: Reader released %d bytes before ErrTooLong, want %d", desc, len(got), int(limit-1)*cs)
			}
			if _, err := c.NewReaderAt(bytes.NewReader(ct[HeaderSize:]), int64(len(ct)-HeaderSize)); !errors.Is(err, ErrTooLong) {
				t.Errorf("%s: ReaderAt of %d chunks: %v, want ErrTooLong", desc, limit+1, err)
			}
		}
	}
}

// checkChunkIndexes opens every chunk of body as chunk i in order, requiring
// it to authenticate under its position's index (so no index is reused).
func checkChunkIndexes(t *testing.T, desc string, c *Cipher, body []byte, wantFinal bool) {
	t.Helper()
	full := c.header.ChunkSize + TagSize
	i := uint64(0)
	for ; len(body) >= full; i++ {
		if _, err := c.open(nil, body[:full], i, false); err != nil {
			t.Errorf("%s: chunk %d does not open as chunk %d: %v", desc, i, i, err)
		}
		body = body[full:]
	}
	if i > c.maxChunks || i == c.maxChunks && wantFinal {
		t.Errorf("%s: %d full chunks, over the limit of %d", desc, i, c.maxChunks)
	}
	if !wantFinal {
		if len(body) != 0 {
			t.Errorf("%s: %d bytes after the full chunks", desc, len(body))
		}
		return
	}
	if _, err := c.open(nil, body, i, true); err != nil {
		t.Errorf("%s: final chunk %d: %v", desc, i, err)
	}
	if i >= c.maxChunks {
		t.Errorf("%s: final chunk index %d over the limit %d", desc, i, c.maxChunks)
	}
}

// ---------------------------------------------------------------------------
// Memory.

// TestMemoryPerStream streams 16 and 64 MiB (4 and 16 MiB with -short)
// through Writer → pipe → Reader with two workers at the default chunk size
// and checks that the allocations do not grow with the length: a bounded
// number of bytes, and no allocation per chunk.
func TestMemoryPerStream(t *testing.T) {
	// Not parallel: MemStats counts the whole process.
	dek := testKey("memory")
	measure := func(n int64) (allocBytes, mallocs uint64) {
		want := sha256.New()
		io.Copy(want, &patternReader{n: n})
		got := sha256.New()

		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() {
			w, err := NewEncryptWriter(pw, dek, &Options{Workers: 2})
			if err == nil {
				_, err = io.Copy(w, &patternReader{n: n})
				if cerr := w.Close(); err == nil {
					err = cerr
				}
			}
			pw.CloseWithError(err)
			done <- err
		}()
		r, err := NewDecryptReader(pr, dek, &Options{Workers: 2})
		if err != nil {
			t.Fatal(err)
		}
		k, err := io.Copy(got, r)
		if werr := <-done; werr != nil || err != nil || k != n {
			t.Fatalf("%d bytes: copied %d, %v; writer %v", n, k, err, werr)
		}
		runtime.ReadMemStats(&after)
		if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
			t.Fatalf("%d bytes: plaintext differs", n)
		}
		return after.TotalAlloc - before.TotalAlloc, after.Mallocs - before.Mallocs
	}
	small, large := int64(16<<20), int64(64<<20)
	if testing.Short() {
		small, large = 4<<20, 16<<20
	}
	smallBytes, smallMallocs := measure(small)
	largeBytes, largeMallocs := measure(large)
	t.Logf("%d MiB: %d bytes in %d allocations; %d MiB: %d bytes in %d allocations",
		small>>20, smallBytes, smallMallocs, large>>20, largeBytes, largeMallocs)
	// A Writer and a Reader with two workers each own 2×2+1 chunk buffers of
	// 64 KiB + 16: about 650 KiB together.
	const bound = 2 << 20
	if largeBytes > bound || smallBytes > bound {
		t.Errorf("streams allocated %d and %d bytes, more than %d", smallBytes, largeBytes, bound)
	}
	// The larger stream has at least 192 more chunks: an allocation per
	// chunk would show.
	if largeMallocs > smallMallocs+100 {
		t.Errorf("%d MiB stream made %d allocations, %d MiB %d: allocations grow with the length",
			large>>20, largeMallocs, small>>20, smallMallocs)
	}
}
