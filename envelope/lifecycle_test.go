package envelope

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/klauspost/compress/zstd"
	"go.uber.org/goleak"

	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/stream"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// failAfter delivers the first n bytes of data, in reads of at most 1000
// bytes, and then fails with err.
type failAfter struct {
	data []byte
	n    int
	err  error
}

func (r *failAfter) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, r.err
	}
	k := min(len(p), r.n, 1000)
	copy(p, r.data[:k])
	r.data, r.n = r.data[k:], r.n-k
	return k, nil
}

// failingDst accepts limit bytes, then fails every write.
type failingDst struct {
	buf   bytes.Buffer
	limit int
}

var errDst = errors.New("destination failed")

func (w *failingDst) Write(p []byte) (int, error) {
	room := w.limit - w.buf.Len()
	if room <= 0 {
		return 0, errDst
	}
	if len(p) > room {
		w.buf.Write(p[:room])
		return room, errDst
	}
	return w.buf.Write(p)
}

// mustNotOpen checks that file does not decrypt, neither whole nor to a
// prefix: Open, Decrypt through a Reader and NewReaderAt all fail.
func mustNotOpen(t *testing.T, desc string, k kms.KEK, file []byte) {
	t.Helper()
	ctx := t.Context()
	if pt, err := Open(ctx, file, KEKs{k}); err == nil {
		t.Errorf("%s: a file of %d bytes opens to %d bytes", desc, len(file), len(pt))
	}
	var out bytes.Buffer
	if err := Decrypt(ctx, &out, bytes.NewReader(file), KEKs{k}); err == nil {
		t.Errorf("%s: a file of %d bytes decrypts to %d bytes", desc, len(file), out.Len())
	}
	if ra, err := NewReaderAt(ctx, bytes.NewReader(file), int64(len(file)), KEKs{k}); err == nil {
		t.Errorf("%s: NewReaderAt opens a file of %d bytes (%d of plaintext)", desc, len(file), ra.Size())
	}
}

// TestEncryptNeverFinalisesAfterAnError fails the source or the destination
// of Encrypt at every chunk boundary and inside chunks, with and without
// compression, and checks that the output never decrypts.
func TestEncryptNeverFinalisesAfterAnError(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx := t.Context()
	k := newLocalKEK(t, "kek")
	pt := testPlaintext(5*testChunkSize + 77)
	errSrc := errors.New("source failed")
	var cuts []int
	for i := 0; i <= 5; i++ {
		for _, c := range []int{i * testChunkSize, i*testChunkSize + 1, i*testChunkSize + testChunkSize/2} {
			if c < len(pt) {
				cuts = append(cuts, c)
			}
		}
	}
	for _, compression := range []Compression{CompressionNone, CompressionZstd} {
		for _, workers := range []int{1, 3} {
			enc := &Encrypter{KEKs: []kms.KEK{k}, ChunkSize: testChunkSize, Workers: workers, Compression: compression}
			for _, cut := range cuts {
				desc := fmt.Sprintf("compression=%q workers=%d source fails after %d", compression, workers, cut)
				var out bytes.Buffer
				err := enc.Encrypt(ctx, &out, &failAfter{data: pt, n: cut, err: errSrc})
				if !errors.Is(err, errSrc) {
					t.Errorf("%s: Encrypt = %v", desc, err)
				}
				mustNotOpen(t, desc, k, out.Bytes())
			}
			// The destination fails after the header and inside the body.
			var whole bytes.Buffer
			if err := enc.Encrypt(ctx, &whole, bytes.NewReader(pt)); err != nil {
				t.Fatal(err)
			}
			hsize := whole.Len() - (len(pt) + 6*stream.TagSize)
			if compression != CompressionNone {
				hsize = 0 // unknown: cut anywhere
			}
			for _, cut := range []int{hsize, hsize + 1, hsize + testChunkSize + stream.TagSize, whole.Len() - 1} {
				desc := fmt.Sprintf("compression=%q workers=%d dst fails after %d", compression, workers, cut)
				dst := &failingDst{limit: cut}
				err := enc.Encrypt(ctx, dst, bytes.NewReader(pt))
				if !errors.Is(err, errDst) && !errors.Is(err, io.ErrShortWrite) {
					t.Errorf("%s: Encrypt = %v", desc, err)
				}
				mustNotOpen(t, desc, k, dst.buf.Bytes())
			}
		}
	}
}

// TestWriterAbort checks envelope.Writer's Abort: no final chunk, Close
// reports stream.ErrAborted, and writes fail afterwards.
func TestWriterAbort(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx := t.Context()
	k := newLocalKEK(t, "kek")
	pt := testPlaintext(3*testChunkSize + 5)
	for _, compression := range []Compression{CompressionNone, CompressionZstd} {
		for _, size := range []int64{UnknownSize, int64(len(pt))} {
			desc := fmt.Sprintf("compression=%q size=%d", compression, size)
			var out bytes.Buffer
			w, err := (&Encrypter{KEKs: []kms.KEK{k}, ChunkSize: testChunkSize, Compression: compression}).NewWriter(ctx, &out, size)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(pt); err != nil {
				t.Fatal(err)
			}
			cause := errors.New("the caller gave up")
			w.Abort(cause)
			if err := w.Close(); !errors.Is(err, stream.ErrAborted) || !errors.Is(err, cause) {
				t.Errorf("%s: Close after Abort = %v", desc, err)
			}
			if _, err := w.Write([]byte("x")); err == nil {
				t.Errorf("%s: Write after Abort succeeds", desc)
			}
			mustNotOpen(t, desc, k, out.Bytes())
		}
	}
}

// cancelAt cancels a context after n bytes were read through it.
type cancelAt struct {
	r      io.Reader
	n      int
	cancel context.CancelFunc
}

func (c *cancelAt) Read(p []byte) (int, error) {
	if c.n <= 0 {
		c.cancel()
	}
	k, err := c.r.Read(p[:min(len(p), max(c.n, 1))])
	c.n -= k
	return k, err
}

// TestContextStopsStreams cancels the context of every streaming call,
// before it starts and from within its reader, and checks that the call
// returns context.Canceled and, for encryption, abandons the file.
func TestContextStopsStreams(t *testing.T) {
	defer goleak.VerifyNone(t)
	k := newLocalKEK(t, "kek")
	pt := testPlaintext(4 << 20)
	enc := &Encrypter{KEKs: []kms.KEK{k}}
	file := mustSeal(t, enc, pt)
	for _, workers := range []int{1, 4} {
		dec := &Decrypter{Keyring: KEKs{k}, Workers: workers}
		enc := &Encrypter{KEKs: []kms.KEK{k}, Workers: workers}

		// Cancelled before the call: the KMS call or the first chunk stops.
		cancelled, cancel := context.WithCancel(context.Background())
		cancel()
		if err := dec.Decrypt(cancelled, io.Discard, bytes.NewReader(file)); !errors.Is(err, context.Canceled) {
			t.Errorf("workers=%d: Decrypt with a cancelled context = %v", workers, err)
		}
		if _, err := dec.Open(cancelled, file); !errors.Is(err, context.Canceled) {
			t.Errorf("workers=%d: Open with a cancelled context = %v", workers, err)
		}

		// Cancelled by the source while the ciphertext comes in.
		ctx, cancel := context.WithCancel(context.Background())
		var out bytes.Buffer
		err := dec.Decrypt(ctx, &out, &cancelAt{r: bytes.NewReader(file), n: len(file) / 3, cancel: cancel})
		if !errors.Is(err, context.Canceled) || out.Len() >= len(pt) {
			t.Errorf("workers=%d: Decrypt cancelled while reading = %v after %d bytes", workers, err, out.Len())
		}

		// A Reader with its context bound, cancelled from the caller's
		// reads.
		ctx, cancel = context.WithCancel(context.Background())
		r, err := dec.NewReader(context.Background(), bytes.NewReader(file))
		if err != nil {
			t.Fatal(err)
		}
		r.SetContext(ctx)
		if _, err := io.CopyN(io.Discard, r, 1<<20); err != nil {
			t.Fatal(err)
		}
		cancel()
		if _, err := io.Copy(io.Discard, r); !errors.Is(err, context.Canceled) {
			t.Errorf("workers=%d: Reader cancelled midway = %v", workers, err)
		}
		r.Close()

		// Encryption, cancelled by its source: the file is abandoned.
		ctx, cancel = context.WithCancel(context.Background())
		out.Reset()
		err = enc.Encrypt(ctx, &out, &cancelAt{r: bytes.NewReader(pt), n: len(pt) / 3, cancel: cancel})
		if !errors.Is(err, context.Canceled) {
			t.Errorf("workers=%d: Encrypt cancelled while reading = %v", workers, err)
		}
		mustNotOpen(t, "cancelled Encrypt", k, out.Bytes())

		// Cancelled before Seal.
		if _, err := enc.Seal(cancelled, pt); !errors.Is(err, context.Canceled) {
			t.Errorf("workers=%d: Seal with a cancelled context = %v", workers, err)
		}
	}
}

// TestSealCancelledAfterTheKMS cancels Seal's context once the KEK has
// wrapped the DEK: the stream stops and nothing is returned.
func TestSealCancelledAfterTheKMS(t *testing.T) {
	k := newLocalKEK(t, "kek")
	ctx, cancel := context.WithCancel(context.Background())
	kek := &cancelAfterWrap{KEK: k, cancel: cancel}
	file, err := (&Encrypter{KEKs: []kms.KEK{kek}}).Seal(ctx, testPlaintext(1<<20))
	if !errors.Is(err, context.Canceled) || file != nil {
		t.Errorf("Seal = %d bytes, %v; want context.Canceled", len(file), err)
	}
}

type cancelAfterWrap struct {
	kms.KEK
	cancel context.CancelFunc
}

func (k *cancelAfterWrap) Wrap(ctx context.Context, dek, aad []byte) (kms.WrappedKey, error) {
	w, err := k.KEK.Wrap(ctx, dek, aad)
	k.cancel()
	return w, err
}

// TestServeContentConcurrently serves one ReaderAt to many concurrent range
// requests, each through its own SectionReader, and checks every byte.
func TestServeContentConcurrently(t *testing.T) {
	ctx := t.Context()
	k := newLocalKEK(t, "kek")
	pt := testPlaintext(40*testChunkSize + 1234)
	file := mustSeal(t, &Encrypter{KEKs: []kms.KEK{k}, ChunkSize: testChunkSize}, pt)
	ra, err := NewReaderAt(ctx, bytes.NewReader(file), int64(len(file)), KEKs{k})
	if err != nil {
		t.Fatal(err)
	}
	modtime := time.Unix(1e9, 0)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		http.ServeContent(w, req, "plain.bin", modtime, io.NewSectionReader(ra, 0, ra.Size()))
	}))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = l
	srv.Start()
	defer srv.Close()
	client := srv.Client()
	defer client.CloseIdleConnections()

	var wg sync.WaitGroup
	for g := range 50 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for range 40 {
				from := rng.IntN(len(pt))
				to := min(from+rng.IntN(3*testChunkSize), len(pt)-1)
				req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL, nil)
				req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", from, to))
				resp, err := client.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, pt[from:to+1]) {
					t.Errorf("range %d-%d: status %d, %d bytes (right: %v), %v",
						from, to, resp.StatusCode, len(body), bytes.Equal(body, pt[from:to+1]), err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// shortDst writes at most limit bytes in all, and then short, without an
// error.
type shortDst struct {
	n, limit int
}

func (w *shortDst) Write(p []byte) (int, error) {
	k := min(len(p), max(w.limit-w.n, 0))
	w.n += k
	return k, nil
}

// TestHeaderShortWrite checks that a short write of the header without an
// error is reported as io.ErrShortWrite.
func TestHeaderShortWrite(t *testing.T) {
	ctx := t.Context()
	k := newLocalKEK(t, "kek")
	for _, limit := range []int{0, 10, 100} {
		_, err := (&Encrypter{KEKs: []kms.KEK{k}}).NewWriter(ctx, &shortDst{limit: limit}, UnknownSize)
		if !errors.Is(err, io.ErrShortWrite) {
			t.Errorf("header short after %d bytes: %v, want io.ErrShortWrite", limit, err)
		}
	}
}

// TestTrailingProbeError checks that an error while looking for data after
// the body is reported, not taken for the end of the file.
func TestTrailingProbeError(t *testing.T) {
	ctx := t.Context()
	k := newLocalKEK(t, "kek")
	pt := testPlaintext(2*testChunkSize + 3)
	file := mustSeal(t, &Encrypter{KEKs: []kms.KEK{k}, ChunkSize: testChunkSize}, pt)
	errProbe := errors.New("disk on fire")
	src := io.MultiReader(bytes.NewReader(file), iotest.ErrReader(errProbe))
	for _, use := range []string{"Read", "WriteTo"} {
		src := io.MultiReader(bytes.NewReader(file), iotest.ErrReader(errProbe))
		r, err := NewReader(ctx, src, KEKs{k})
		if err != nil {
			t.Fatal(err)
		}
		var got []byte
		if use == "Read" {
			got, err = io.ReadAll(iotest.OneByteReader(r))
		} else {
			var out bytes.Buffer
			_, err = r.WriteTo(&out)
			got = out.Bytes()
		}
		if !errors.Is(err, errProbe) {
			t.Errorf("%s: %v, want the probe's error", use, err)
		}
		if !bytes.Equal(got, pt) {
			t.Errorf("%s: %d bytes of plaintext", use, len(got))
		}
		r.Close()
	}
	if err := Decrypt(ctx, io.Discard, src, KEKs{k}); !errors.Is(err, errProbe) {
		t.Errorf("Decrypt: %v, want the probe's error", err)
	}
}

// TestNilKEK checks that a nil KEK is an error, not a panic.
func TestNilKEK(t *testing.T) {
	k := newLocalKEK(t, "kek")
	for _, keks := range [][]kms.KEK{{nil}, {k, nil}} {
		_, err := (&Encrypter{KEKs: keks}).Seal(t.Context(), []byte("x"))
		if err == nil || !strings.Contains(err.Error(), "nil") {
			t.Errorf("Seal with a nil KEK: %v", err)
		}
	}
}

// panicKEK panics when it wraps or unwraps.
type panicKEK struct{ kms.KEK }

func (panicKEK) Wrap(context.Context, []byte, []byte) (kms.WrappedKey, error) {
	panic("KEK panicked")
}

func (panicKEK) Unwrap(context.Context, []byte, []byte) (kms.UnwrapResult, error) {
	panic("KEK panicked")
}

func catchPanic(f func()) (v any) {
	defer func() { v = recover() }()
	f()
	return nil
}

// TestPanickingKEK checks that a KEK's panic while wrapping reaches the
// caller's goroutine, and that one while unwrapping with a DataKeyCache
// leaves the slot free for the next caller.
func TestPanickingKEK(t *testing.T) {
	k := newLocalKEK(t, "kek")
	v := catchPanic(func() {
		(&Encrypter{KEKs: []kms.KEK{k, panicKEK{newLocalKEK(t, "other")}}}).Seal(t.Context(), []byte("x"))
	})
	if v != "KEK panicked" {
		t.Errorf("Seal with a panicking KEK: recovered %v", v)
	}

	file := mustSeal(t, &Encrypter{KEKs: []kms.KEK{k}}, []byte("cached"))
	cache := NewDataKeyCache(10, time.Hour)
	v = catchPanic(func() {
		(&Decrypter{Keyring: KEKs{panicKEK{k}}, Cache: cache}).Open(t.Context(), file)
	})
	if v != "KEK panicked" {
		t.Errorf("Open with a panicking KEK: recovered %v", v)
	}
	// Had the panic kept the slot, this would wait for ever.
	pt, err := (&Decrypter{Keyring: KEKs{k}, Cache: cache}).Open(t.Context(), file)
	if err != nil || string(pt) != "cached" {
		t.Errorf("Open after a panicking KEK: %q, %v", pt, err)
	}
}

// pipelineGoroutines counts the running goroutines of the stream package's
// pipelines.
func pipelineGoroutines() int {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "kpcrypt/stream.startWorkers")
}

// TestDroppedReaderAndWriter drops an envelope Reader and Writer midway,
// without Close, and checks that their goroutines exit once they are
// collected: nothing the goroutines hold refers back to them.
func TestDroppedReaderAndWriter(t *testing.T) {
	ctx := t.Context()
	k := newLocalKEK(t, "kek")
	pt := testPlaintext(40 * testChunkSize)
	file := mustSeal(t, &Encrypter{KEKs: []kms.KEK{k}, ChunkSize: testChunkSize}, pt)
	func() {
		r, err := (&Decrypter{Keyring: KEKs{k}, Workers: 4}).NewReader(ctx, bytes.NewReader(file))
		if err != nil {
			t.Fatal(err)
		}
		r.SetContext(ctx)
		if _, err := io.ReadFull(r, make([]byte, 3*testChunkSize)); err != nil {
			t.Fatal(err)
		}
		w, err := (&Encrypter{KEKs: []kms.KEK{k}, ChunkSize: testChunkSize, Workers: 4}).NewWriter(ctx, io.Discard, UnknownSize)
		if err != nil {
			t.Fatal(err)
		}
		w.SetContext(ctx)
		if _, err := w.Write(pt[:10*testChunkSize]); err != nil {
			t.Fatal(err)
		}
		if pipelineGoroutines() == 0 {
			t.Fatal("no pipeline goroutines while streaming")
		}
		// Until here r and w are in use: a collection before the count
		// would stop their goroutines, as it should, and leave none to see.
		runtime.KeepAlive(r)
		runtime.KeepAlive(w)
	}()
	for range 100 {
		runtime.GC()
		runtime.Gosched()
		if pipelineGoroutines() == 0 {
			return
		}
	}
	t.Errorf("%d goroutines of dropped streams still run after 100 collections", pipelineGoroutines())
}

// TestZstdWindowBudget checks the zstd bounds: a large compressed file made
// by the Encrypter (8 MiB window) decrypts, and a frame asking for a
// larger window than maxZstdWindow is refused.
func TestZstdWindowBudget(t *testing.T) {
	ctx := t.Context()
	k := newLocalKEK(t, "kek")
	// 24 MiB that compress, with repeats farther apart than a small window.
	block := testPlaintext(3 << 20)
	pt := bytes.Repeat(block, 8)
	enc := &Encrypter{KEKs: []kms.KEK{k}, Compression: CompressionZstd}
	var file bytes.Buffer
	if err := enc.Encrypt(ctx, &file, bytes.NewReader(pt)); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := Decrypt(ctx, &out, bytes.NewReader(file.Bytes()), KEKs{k}); err != nil || !bytes.Equal(out.Bytes(), pt) {
		t.Fatalf("24 MiB compressed: %d bytes, %v", out.Len(), err)
	}

	// The same plaintext compressed with a 32 MiB window, in a file the
	// test builds itself.
	header, c, _, err := enc.newHeader(ctx, UnknownSize)
	if err != nil {
		t.Fatal(err)
	}
	file.Reset()
	file.Write(header)
	sw := c.NewWriter(&file, nil)
	zw, err := zstd.NewWriter(sw, zstd.WithWindowSize(32<<20), zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(pt); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sw.Close(); err != nil {
		t.Fatal(err)
	}
	err = Decrypt(ctx, io.Discard, bytes.NewReader(file.Bytes()), KEKs{k})
	if err == nil || !strings.Contains(err.Error(), "window") {
		t.Errorf("a frame with a 32 MiB window: %v, want it refused", err)
	}
}
