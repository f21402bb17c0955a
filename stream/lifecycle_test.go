package stream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// streamGoroutines counts the goroutines of this package's pipelines that
// are running now: workers and producers. It does not wait for them, so a
// count above zero right after Close or Abort is a goroutine that outlives
// the call.
func streamGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "kpcrypt/stream.startWorkers") {
			count++
		}
	}
	return count
}

// noStreamGoroutines fails the test if any pipeline goroutine is running.
// Tests that call it are not parallel.
func noStreamGoroutines(t *testing.T, desc string) {
	t.Helper()
	if n := streamGoroutines(); n != 0 {
		t.Errorf("%s: %d stream goroutines still running", desc, n)
	}
}

// mustNotDecrypt checks that stream (header and body) does not decrypt,
// neither completely nor to a prefix ending in io.EOF, with the in-order
// readers (one and several workers) and the ReaderAt.
func mustNotDecrypt(t *testing.T, desc string, dek, stream []byte) {
	t.Helper()
	for _, workers := range []int{1, 3} {
		r, err := NewDecryptReader(bytes.NewReader(stream), dek, &Options{Workers: workers})
		if err != nil {
			continue
		}
		n, err := io.Copy(io.Discard, r)
		if err == nil || errors.Is(err, io.EOF) {
			t.Errorf("%s: a stream of %d bytes decrypts to %d bytes with %d workers (%v)", desc, len(stream), n, workers, err)
		}
		r.Close()
	}
	if ra, err := NewDecryptReaderAt(bytes.NewReader(stream), int64(len(stream)), dek); err == nil {
		t.Errorf("%s: the ReaderAt opens a stream of %d bytes (%d of plaintext)", desc, len(stream), ra.Size())
	}
}

// failAfterReader delivers the first n bytes of data, in reads of at most
// step bytes, and then fails with err.
type failAfterReader struct {
	data []byte
	n    int
	step int
	err  error
}

func (r *failAfterReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, r.err
	}
	k := min(len(p), r.n, r.step)
	copy(p, r.data[:k])
	r.data, r.n = r.data[k:], r.n-k
	return k, nil
}

// TestAbortedStreamNeverDecrypts fails the source, the destination or the
// context at every chunk boundary and inside chunks, with every way of
// feeding a Writer, and checks that the Writer reports the error from Close,
// writes no final chunk, leaves no goroutine behind, and that what it wrote
// never decrypts.
func TestAbortedStreamNeverDecrypts(t *testing.T) {
	const cs = MinChunkSize
	dek := testKey("aborted")
	c := testCipher(t, dek, cs, "aborted")
	pt := testPlaintext(6*cs+123, 21)
	hdr := marshalHeader(t, c.header)
	errSrc := errors.New("source failed")
	var cuts []int
	for i := 0; i <= 6; i++ {
		for _, cut := range []int{i * cs, i*cs + 1, i*cs + cs/2} {
			if cut < len(pt) {
				cuts = append(cuts, cut)
			}
		}
	}
	cuts = append(cuts, len(pt)-1, len(pt))
	full := cs + TagSize
	var dstCuts []int
	body := len(pt) + 7*TagSize
	for i := 0; i <= 6; i++ {
		for _, cut := range []int{i * full, i*full + 1, i*full + full/2} {
			if cut < body {
				dstCuts = append(dstCuts, cut)
			}
		}
	}
	dstCuts = append(dstCuts, body-1)

	feeds := map[string]func(w *Writer, src io.Reader) error{
		"readfrom": func(w *Writer, src io.Reader) error {
			_, err := io.Copy(w, onlyReader{src})
			return err
		},
		"write-1000": func(w *Writer, src io.Reader) error {
			_, err := io.CopyBuffer(onlyWriter{w}, onlyReader{src}, make([]byte, 1000))
			return err
		},
		"write-3chunks": func(w *Writer, src io.Reader) error {
			_, err := io.CopyBuffer(onlyWriter{w}, onlyReader{src}, make([]byte, 3*cs+5))
			return err
		},
	}
	for _, workers := range []int{1, 2, 4} {
		for name, feed := range feeds {
			// A failing source, whatever the caller does next: Close or
			// Abort.
			for _, cut := range cuts {
				if cut == len(pt) {
					continue
				}
				ends := []string{"abort"}
				if name == "readfrom" {
					// The Writer saw the error: Close abandons too. With
					// Write, only the caller saw it, and must Abort.
					ends = append(ends, "close")
				}
				for _, end := range ends {
					desc := fmt.Sprintf("workers=%d %s source fails after %d, %s", workers, name, cut, end)
					var out bytes.Buffer
					out.Write(hdr)
					w := c.NewWriter(&out, &Options{Workers: workers})
					err := feed(w, &failAfterReader{data: pt, n: cut, step: 777, err: errSrc})
					if !errors.Is(err, errSrc) {
						t.Fatalf("%s: copy = %v, want the source's error", desc, err)
					}
					var cerr error
					if end == "close" {
						cerr = w.Close()
					} else {
						w.Abort(err)
						cerr = w.Close()
						if !errors.Is(cerr, ErrAborted) && !errors.Is(cerr, errSrc) {
							t.Errorf("%s: Close after Abort = %v", desc, cerr)
						}
					}
					if !errors.Is(cerr, errSrc) {
						t.Errorf("%s: Close = %v, want the source's error", desc, cerr)
					}
					noStreamGoroutines(t, desc)
					mustNotDecrypt(t, desc, dek, out.Bytes())
				}
			}
			// A failing destination.
			for _, cut := range dstCuts {
				desc := fmt.Sprintf("workers=%d %s dst fails after %d", workers, name, cut)
				dst := &failingWriter{limit: cut}
				w := c.NewWriter(dst, &Options{Workers: workers})
				err := feed(w, bytes.NewReader(pt))
				cerr := w.Close()
				if err != nil && !errors.Is(err, errBoom) || !errors.Is(cerr, errBoom) {
					t.Errorf("%s: copy %v, Close %v; want errBoom", desc, err, cerr)
				}
				noStreamGoroutines(t, desc)
				mustNotDecrypt(t, desc, dek, append(bytes.Clone(hdr), dst.buf.Bytes()...))
				if dst.callsAfter > 0 {
					t.Errorf("%s: %d writes after dst failed", desc, dst.callsAfter)
				}
			}
			// A context cancelled while the plaintext comes in.
			for _, cut := range cuts {
				desc := fmt.Sprintf("workers=%d %s context cancelled after %d", workers, name, cut)
				ctx, cancel := context.WithCancel(context.Background())
				var out bytes.Buffer
				out.Write(hdr)
				w := c.NewWriter(&out, &Options{Workers: workers, Context: ctx})
				src := io.MultiReader(&failAfterReader{data: pt, n: cut, step: 777, err: io.EOF}, cancelReader{cancel}, bytes.NewReader(pt[cut:]))
				err := feed(w, src)
				cerr := w.Close()
				if err != nil && !errors.Is(err, context.Canceled) || !errors.Is(cerr, context.Canceled) {
					t.Errorf("%s: copy %v, Close %v; want context.Canceled", desc, err, cerr)
				}
				noStreamGoroutines(t, desc)
				mustNotDecrypt(t, desc, dek, out.Bytes())
			}
			// Abort after all the plaintext went in.
			desc := fmt.Sprintf("workers=%d %s aborted at the end", workers, name)
			var out bytes.Buffer
			out.Write(hdr)
			w := c.NewWriter(&out, &Options{Workers: workers})
			if err := feed(w, bytes.NewReader(pt)); err != nil {
				t.Fatal(err)
			}
			w.Abort(nil)
			if err := w.Close(); !errors.Is(err, ErrAborted) {
				t.Errorf("%s: Close = %v, want ErrAborted", desc, err)
			}
			if n, err := w.Write([]byte("x")); n != 0 || !errors.Is(err, ErrClosed) {
				t.Errorf("%s: Write after Abort = %d, %v", desc, n, err)
			}
			noStreamGoroutines(t, desc)
			mustNotDecrypt(t, desc, dek, out.Bytes())
		}
	}
}

// cancelReader cancels a context when it is read, and reports io.EOF.
type cancelReader struct{ cancel context.CancelFunc }

func (r cancelReader) Read([]byte) (int, error) {
	r.cancel()
	return 0, io.EOF
}

// TestAbortAfterClose checks that Abort after a successful Close changes
// nothing.
func TestAbortAfterClose(t *testing.T) {
	dek := testKey("abort after close")
	pt := testPlaintext(3*MinChunkSize+5, 22)
	for _, workers := range []int{1, 4} {
		var out bytes.Buffer
		w, err := NewEncryptWriter(&out, dek, &Options{ChunkSize: MinChunkSize, Workers: workers})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(pt); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		w.Abort(errors.New("too late"))
		if err := w.Close(); err != nil {
			t.Errorf("workers=%d: Close after Close and Abort = %v", workers, err)
		}
		r, err := NewDecryptReader(bytes.NewReader(out.Bytes()), dek, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, pt) {
			t.Errorf("workers=%d: %v", workers, err)
		}
	}
}

// TestReaderContext checks that a Reader stops at the next chunk with the
// context's error, whether the context was done before the first read or
// ends while the ciphertext comes in.
func TestReaderContext(t *testing.T) {
	const cs = MinChunkSize
	dek := testKey("reader ctx")
	c := testCipher(t, dek, cs, "reader ctx")
	pt := testPlaintext(40*cs+3, 23)
	ct := referenceStream(t, c, pt)
	for _, workers := range []int{1, 4} {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		r, err := NewDecryptReader(bytes.NewReader(ct), dek, &Options{Workers: workers, Context: ctx})
		if err != nil {
			t.Fatal(err)
		}
		if n, err := io.Copy(io.Discard, r); n != 0 || !errors.Is(err, context.Canceled) {
			t.Errorf("workers=%d: cancelled before: %d bytes, %v", workers, n, err)
		}
		r.Close()
		noStreamGoroutines(t, "cancelled before")

		ctx, cancel = context.WithCancel(context.Background())
		src := io.MultiReader(bytes.NewReader(ct[:HeaderSize+5*(cs+TagSize)+100]), cancelReader{cancel}, bytes.NewReader(ct[HeaderSize+5*(cs+TagSize)+100:]))
		r, err = NewDecryptReader(src, dek, &Options{Workers: workers, Context: ctx})
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, r)
		if !errors.Is(err, context.Canceled) || n >= int64(len(pt)) {
			t.Errorf("workers=%d: cancelled while reading: %d bytes, %v", workers, n, err)
		}
		r.Close()
		noStreamGoroutines(t, "cancelled while reading")
	}
}

// panicWriter panics on its first write after limit bytes.
type panicWriter struct {
	limit int
	n     int
}

func (w *panicWriter) Write(p []byte) (int, error) {
	if w.n+len(p) > w.limit {
		panic("dst panicked")
	}
	w.n += len(p)
	return len(p), nil
}

type panicReader struct {
	r     io.Reader
	limit int
	n     int
}

func (r *panicReader) Read(p []byte) (int, error) {
	if r.n >= r.limit {
		panic("src panicked")
	}
	k, err := r.r.Read(p[:min(len(p), r.limit-r.n)])
	r.n += k
	return k, err
}

// catch runs f and returns what it panicked with.
func catch(f func()) (v any) {
	defer func() { v = recover() }()
	f()
	return nil
}

// TestPanicsReachTheCaller checks that a panic in the caller's reader or
// writer reaches the caller's goroutine, and that the stream then stops its
// goroutines and fails.
func TestPanicsReachTheCaller(t *testing.T) {
	const cs = MinChunkSize
	dek := testKey("panics")
	c := testCipher(t, dek, cs, "panics")
	pt := testPlaintext(20*cs+3, 24)
	ct := referenceStream(t, c, pt)
	for _, workers := range []int{1, 4} {
		for _, limit := range []int{0, cs + 5, 7 * (cs + TagSize)} {
			desc := fmt.Sprintf("workers=%d limit=%d", workers, limit)
			w := c.NewWriter(&panicWriter{limit: limit}, &Options{Workers: workers})
			v := catch(func() {
				if err := writeInPieces(w, pt, 3*cs); err == nil {
					w.Close()
				}
			})
			if v != "dst panicked" {
				t.Errorf("%s: Writer: recovered %v", desc, v)
			}
			if err := w.Close(); !errors.Is(err, errPanicked) {
				t.Errorf("%s: Close after a panic = %v", desc, err)
			}
			noStreamGoroutines(t, desc+" writer")

			w = c.NewWriter(io.Discard, &Options{Workers: workers})
			v = catch(func() { w.ReadFrom(&panicReader{r: bytes.NewReader(pt), limit: limit}) })
			if v != "src panicked" {
				t.Errorf("%s: ReadFrom: recovered %v", desc, v)
			}
			noStreamGoroutines(t, desc+" ReadFrom")

			r := c.NewReader(&panicReader{r: bytes.NewReader(ct[HeaderSize:]), limit: limit}, &Options{Workers: workers})
			v = catch(func() { io.Copy(io.Discard, r) })
			if v != "src panicked" {
				t.Errorf("%s: Reader: recovered %v", desc, v)
			}
			if _, err := r.Read(make([]byte, 10)); err == nil {
				t.Errorf("%s: Read after a panic succeeds", desc)
			}
			noStreamGoroutines(t, desc+" reader")

			r = c.NewReader(bytes.NewReader(ct[HeaderSize:]), &Options{Workers: workers})
			v = catch(func() { r.WriteTo(&panicWriter{limit: limit}) })
			if v != "dst panicked" {
				t.Errorf("%s: WriteTo: recovered %v", desc, v)
			}
			noStreamGoroutines(t, desc+" WriteTo")
		}
	}
}

// TestCloseStopsGoroutines checks that Close returns only once the
// goroutines have stopped, at any point of a stream, and that a Reader
// closed early reads nothing more from its source.
func TestCloseStopsGoroutines(t *testing.T) {
	const cs = MinChunkSize
	dek := testKey("close stops")
	c := testCipher(t, dek, cs, "close stops")
	pt := testPlaintext(30*cs+3, 25)
	ct := referenceStream(t, c, pt)
	for _, workers := range []int{2, 4} {
		for _, n := range []int{0, 1, cs, 5*cs + 3, len(pt)} {
			desc := fmt.Sprintf("workers=%d after %d bytes", workers, n)
			w := c.NewWriter(io.Discard, &Options{Workers: workers})
			if _, err := w.Write(pt[:n]); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			noStreamGoroutines(t, desc+" Writer.Close")

			src := &countingReader{r: bytes.NewReader(ct[HeaderSize:])}
			r := c.NewReader(src, &Options{Workers: workers})
			if _, err := io.ReadFull(r, make([]byte, n)); err != nil {
				t.Fatal(err)
			}
			r.Close()
			noStreamGoroutines(t, desc+" Reader.Close")
			reads := src.reads
			r.Read(make([]byte, 10))
			if src.reads != reads {
				t.Errorf("%s: the Reader read its source after Close", desc)
			}
		}
	}
}

type countingReader struct {
	r     io.Reader
	reads int
}

func (c *countingReader) Read(p []byte) (int, error) {
	c.reads++
	return c.r.Read(p)
}

// TestDroppedStreamsLetGoroutinesGo drops a Writer and a Reader in the
// middle of their streams, without Close, and checks that their goroutines
// exit once they are collected.
func TestDroppedStreamsLetGoroutinesGo(t *testing.T) {
	const cs = MinChunkSize
	dek := testKey("dropped")
	c := testCipher(t, dek, cs, "dropped")
	pt := testPlaintext(30*cs+3, 26)
	ct := referenceStream(t, c, pt)
	func() {
		w := c.NewWriter(io.Discard, &Options{Workers: 4})
		if _, err := w.Write(pt[:10*cs+1]); err != nil {
			t.Fatal(err)
		}
		r := c.NewReader(bytes.NewReader(ct[HeaderSize:]), &Options{Workers: 4})
		if _, err := io.ReadFull(r, make([]byte, 3*cs)); err != nil {
			t.Fatal(err)
		}
		if n := streamGoroutines(); n == 0 {
			t.Fatal("no pipeline goroutines while streaming")
		}
		// Until here w and r are in use: a collection before the count
		// would stop their goroutines, as it should, and leave none to see.
		runtime.KeepAlive(w)
		runtime.KeepAlive(r)
	}()
	for range 100 {
		runtime.GC()
		runtime.Gosched()
		if streamGoroutines() == 0 {
			return
		}
	}
	t.Errorf("%d goroutines of dropped streams still run after 100 collections", streamGoroutines())
}

// TestBufferAccounting checks the number of chunk buffers a stream
// allocates against the memory budget, for small and large chunks and many
// workers.
func TestBufferAccounting(t *testing.T) {
	for _, tc := range []struct {
		workers, cs, want int
	}{
		{1, DefaultChunkSize, 1},
		{2, DefaultChunkSize, 5},
		{32, DefaultChunkSize, 65},
		{1000, DefaultChunkSize, MemoryBudget / (DefaultChunkSize + TagSize)},
		{32, 1 << 20, 31},
		{32, 8 << 20, 3},
		{32, MaxChunkSize, 2},
		{1, MaxChunkSize, 1},
		{2, MaxChunkSize, 2},
	} {
		if got := maxBuffers(tc.workers, tc.cs); got != tc.want {
			t.Errorf("maxBuffers(%d, %d) = %d, want %d", tc.workers, tc.cs, got, tc.want)
		}
		if n := maxBuffers(tc.workers, tc.cs); tc.cs == DefaultChunkSize && n*(tc.cs+TagSize) > 32<<20 ||
			n*(tc.cs+TagSize) > 64<<20 {
			t.Errorf("workers=%d chunk=%d: %d buffers hold %d bytes", tc.workers, tc.cs, n, n*(tc.cs+TagSize))
		}
	}

	// Streams allocate no more than their share, whatever the workers.
	for _, cs := range []int{MinChunkSize, 1 << 20, 8 << 20} {
		dek := testKey("accounting")
		c := testCipher(t, dek, cs, "accounting")
		pt := testPlaintext(12*cs+5, 27)
		for _, workers := range []int{1, 2, 8, 32} {
			want := maxBuffers(workers, cs)
			before := buffersAllocated.Load()
			var out bytes.Buffer
			out.Write(marshalHeader(t, c.header))
			w := c.NewWriter(&out, &Options{Workers: workers})
			if err := writeInPieces(w, pt, 1<<20); err != nil {
				t.Fatal(err)
			}
			if w.bufs > want {
				t.Errorf("chunk=%d workers=%d: the Writer allocated %d buffers, over %d", cs, workers, w.bufs, want)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if got := buffersAllocated.Load() - before; got > int64(want) {
				t.Errorf("chunk=%d workers=%d: the Writer allocated %d buffers, over %d", cs, workers, got, want)
			}
			before = buffersAllocated.Load()
			r, err := NewDecryptReader(bytes.NewReader(out.Bytes()), dek, &Options{Workers: workers})
			if err != nil {
				t.Fatal(err)
			}
			if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("chunk=%d workers=%d: %v", cs, workers, err)
			}
			if got := buffersAllocated.Load() - before; got > int64(want) {
				t.Errorf("chunk=%d workers=%d: the Reader allocated %d buffers, over %d", cs, workers, got, want)
			}
		}
	}
}

// TestHeaderBodySizeZero checks that the zero Header's BodySize fails
// instead of dividing by zero.
func TestHeaderBodySizeZero(t *testing.T) {
	if _, err := (Header{}).BodySize(100); !errors.Is(err, ErrInvalidHeader) {
		t.Errorf("Header{}.BodySize = %v, want ErrInvalidHeader", err)
	}
	if _, err := (Header{ChunkSize: MaxChunkSize + 1}).BodySize(0); !errors.Is(err, ErrInvalidHeader) {
		t.Errorf("BodySize with an oversized chunk = %v, want ErrInvalidHeader", err)
	}
}

// TestPeakRSS encrypts and then decrypts a file of 320 MiB in 16 MiB chunks
// with GOMAXPROCS=32, each in a child process built without the race
// detector, and checks that each child's peak RSS stays under 64 MiB.
func TestPeakRSS(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc/self/status")
	}
	if testing.Short() {
		t.Skip("writes a file of 320 MiB")
	}
	bin := os.Args[0]
	if raceEnabled {
		bin = filepath.Join(t.TempDir(), "stream.test")
		cmd := exec.Command("go", "test", "-c", "-o", bin, ".")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("building the test binary without -race: %v\n%s", err, out)
		}
	}
	file := filepath.Join(t.TempDir(), "big.kpcs")
	for _, op := range []string{"encrypt", "decrypt"} {
		cmd := exec.Command(bin, "-test.run=^TestPeakRSSChild$", "-test.v")
		cmd.Env = append(os.Environ(), "GOMAXPROCS=32", "KPCRYPT_RSS_CHILD="+op, "KPCRYPT_RSS_FILE="+file)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s child: %v\n%s", op, err, out)
		}
		_, after, ok := strings.Cut(string(out), "VmHWM=")
		if !ok {
			t.Fatalf("%s child printed no VmHWM:\n%s", op, out)
		}
		kib, err := strconv.Atoi(strings.Fields(after)[0])
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: peak RSS %.1f MiB", op, float64(kib)/1024)
		if kib >= 64<<10 {
			t.Errorf("%s of 320 MiB in 16 MiB chunks at GOMAXPROCS=32: peak RSS %.1f MiB, over 64 MiB", op, float64(kib)/1024)
		}
	}
}

func TestPeakRSSChild(t *testing.T) {
	op := os.Getenv("KPCRYPT_RSS_CHILD")
	if op == "" {
		t.Skip("run by TestPeakRSS")
	}
	const size = 320 << 20
	dek := testKey("rss")
	file := os.Getenv("KPCRYPT_RSS_FILE")
	switch op {
	case "encrypt":
		f, err := os.Create(file)
		if err != nil {
			t.Fatal(err)
		}
		w, err := NewEncryptWriter(f, dek, &Options{ChunkSize: MaxChunkSize})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(w, &patternReader{n: size}); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	case "decrypt":
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		r, err := NewDecryptReader(f, dek, nil)
		if err != nil {
			t.Fatal(err)
		}
		if n, err := io.Copy(io.Discard, r); err != nil || n != size {
			t.Fatalf("decrypted %d bytes, %v", n, err)
		}
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			fmt.Printf("VmHWM=%s\n", strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
}
