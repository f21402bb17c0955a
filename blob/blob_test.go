package blob

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"
	"gocloud.dev/blob/memblob"
	"gocloud.dev/blob/s3blob"
	"gocloud.dev/gcerrors"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/local"
	"github.com/kpcrypt/kpcrypt/stream"
)

// counts are the requests an s3blob bucket made of the in-process server.
type counts struct {
	gets, lists, puts, other atomic.Int64
	bytes                    atomic.Int64 // response bodies of object GETs

	partOnce sync.Once
	part     chan struct{} // closed once a part of a multipart upload is stored
}

func (c *counts) reset() {
	c.gets.Store(0)
	c.lists.Store(0)
	c.puts.Store(0)
	c.other.Store(0)
	c.bytes.Store(0)
}

type countingTransport struct {
	c    *counts
	next http.RoundTripper
}

func (t countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(r)
	switch {
	case r.Method == http.MethodGet && r.URL.Query().Has("list-type"):
		t.c.lists.Add(1)
	case r.Method == http.MethodGet:
		t.c.gets.Add(1)
		if err == nil && resp.ContentLength > 0 {
			t.c.bytes.Add(resp.ContentLength)
		}
	case r.Method == http.MethodPut || r.Method == http.MethodPost:
		t.c.puts.Add(1)
		if err == nil && resp.StatusCode == http.StatusOK && r.URL.Query().Has("partNumber") {
			t.c.partOnce.Do(func() { close(t.c.part) })
		}
	default:
		t.c.other.Add(1)
	}
	return resp, err
}

// s3Bucket serves an in-memory S3 server on loopback and opens it through
// s3blob, with a static path-style endpoint; the returned counts count its
// requests.
func s3Bucket(t testing.TB) (*blob.Bucket, *counts) {
	t.Helper()
	backend := s3mem.New()
	ts := httptest.NewServer(gofakes3.New(backend).Server())
	t.Cleanup(ts.Close)
	if err := backend.CreateBucket("kpcrypt"); err != nil {
		t.Fatal(err)
	}
	c := &counts{part: make(chan struct{})}
	cfg := aws.Config{
		Region:       "us-east-1",
		Credentials:  credentials.NewStaticCredentialsProvider("test", "test", ""),
		HTTPClient:   &http.Client{Transport: countingTransport{c, http.DefaultTransport}},
		BaseEndpoint: aws.String(ts.URL),
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true })
	b, err := s3blob.OpenBucket(context.Background(), client, "kpcrypt", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, c
}

// buckets returns one bucket of each kind to test on.
func buckets(t *testing.T) map[string]*blob.Bucket {
	t.Helper()
	mem := memblob.OpenBucket(nil)
	t.Cleanup(func() { mem.Close() })
	file, err := fileblob.OpenBucket(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { file.Close() })
	s3b, _ := s3Bucket(t)
	return map[string]*blob.Bucket{"memblob": mem, "fileblob": file, "s3blob": s3b}
}

func newKEK(t testing.TB, name string) *local.KEK {
	t.Helper()
	k, err := local.Generate(filepath.Join(t.TempDir(), name))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func plaintext(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

func put(t testing.TB, ctx context.Context, b *blob.Bucket, key string, e *envelope.Encrypter, p []byte, detached bool) {
	t.Helper()
	w, err := NewWriter(ctx, b, key, e, int64(len(p)), &WriterOptions{Detached: detached})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(p); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

func get(ctx context.Context, b *blob.Bucket, key string, keks ...kms.KEK) ([]byte, error) {
	r, err := NewReader(ctx, b, key, &envelope.Decrypter{Keyring: envelope.KEKs(keks)})
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	kek := newKEK(t, "a.json")
	e := &envelope.Encrypter{KEKs: []kms.KEK{kek}, ChunkSize: 4096}
	d := &envelope.Decrypter{Keyring: envelope.KEKs{kek}}
	for name, b := range buckets(t) {
		for _, detached := range []bool{false, true} {
			for _, n := range []int{0, 1, 4096, 50_000} {
				t.Run(fmt.Sprintf("%s/detached=%v/%d", name, detached, n), func(t *testing.T) {
					key := fmt.Sprintf("dir/obj-%v-%d", detached, n)
					p := plaintext(n, uint64(n))
					put(t, ctx, b, key, e, p, detached)
					got, err := get(ctx, b, key, kek)
					if err != nil || !bytes.Equal(got, p) {
						t.Fatalf("NewReader: %v, equal %v", err, bytes.Equal(got, p))
					}
					ra, err := NewReaderAt(ctx, b, key, d, &ReaderAtOptions{CacheChunks: 2})
					if err != nil {
						t.Fatal(err)
					}
					if ra.Size() != int64(n) {
						t.Fatalf("Size %d, want %d", ra.Size(), n)
					}
					r := rand.New(rand.NewPCG(2, 3))
					for range 30 {
						if n == 0 {
							break
						}
						off := r.IntN(n)
						buf := make([]byte, r.IntN(3*4096))
						m, err := ra.ReadAt(buf, int64(off))
						if m != min(len(buf), n-off) || (err != nil && err != io.EOF) || !bytes.Equal(buf[:m], p[off:off+m]) {
							t.Fatalf("ReadAt(%d, %d) = %d, %v", len(buf), off, m, err)
						}
					}
					// A detached body alone is no envelope file.
					if detached {
						raw, err := b.ReadAll(ctx, key)
						if err != nil {
							t.Fatal(err)
						}
						if _, err := envelope.Inspect(bytes.NewReader(raw)); !errors.Is(err, envelope.ErrInvalidHeader) {
							t.Fatalf("Inspect of a detached body: %v", err)
						}
					}
				})
			}
		}
	}
}

// A Writer that aborts, or whose context ends, leaves no object, and a
// previous object of the key as it was.
func TestAbortLeavesNoObject(t *testing.T) {
	ctx := context.Background()
	kek := newKEK(t, "a.json")
	e := &envelope.Encrypter{KEKs: []kms.KEK{kek}, ChunkSize: 4096}
	p := plaintext(100_000, 1)
	for name, b := range buckets(t) {
		for _, detached := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/detached=%v", name, detached), func(t *testing.T) {
				opts := &WriterOptions{Detached: detached}
				// Abort.
				w, err := NewWriter(ctx, b, "aborted", e, envelope.UnknownSize, opts)
				if err != nil {
					t.Fatal(err)
				}
				w.Write(p)
				w.Abort(errors.New("source failed"))
				if err := w.Close(); !errors.Is(err, stream.ErrAborted) {
					t.Fatalf("Close after Abort: %v", err)
				}
				assertNoObject(t, ctx, b, "aborted")

				// A context cancelled mid-upload.
				cctx, cancel := context.WithCancel(ctx)
				w, err = NewWriter(cctx, b, "cancelled", e, envelope.UnknownSize, opts)
				if err != nil {
					t.Fatal(err)
				}
				w.Write(p)
				cancel()
				w.Write(p)
				if err := w.Close(); err == nil {
					t.Fatal("Close after cancel succeeded")
				}
				assertNoObject(t, ctx, b, "cancelled")

				// A size not met, over an existing object: the old one stays.
				put(t, ctx, b, "kept", e, p[:10], detached)
				w, err = NewWriter(ctx, b, "kept", e, int64(len(p)), opts)
				if err != nil {
					t.Fatal(err)
				}
				w.Write(p[:500])
				if err := w.Close(); !errors.Is(err, envelope.ErrSizeMismatch) {
					t.Fatalf("Close with a short plaintext: %v", err)
				}
				if got, err := get(ctx, b, "kept", kek); err != nil || !bytes.Equal(got, p[:10]) {
					t.Fatalf("old object: %v", err)
				}
			})
		}
	}
}

func assertNoObject(t *testing.T, ctx context.Context, b *blob.Bucket, key string) {
	t.Helper()
	it := b.List(&blob.ListOptions{Prefix: key})
	if o, err := it.Next(ctx); err != io.EOF {
		t.Fatalf("object left behind: %v, %v", o, err)
	}
}

// A truncated object is refused when it is opened, at any length.
func TestTruncatedRefusedAtOpen(t *testing.T) {
	ctx := context.Background()
	kek := newKEK(t, "a.json")
	d := &envelope.Decrypter{Keyring: envelope.KEKs{kek}}
	e := &envelope.Encrypter{KEKs: []kms.KEK{kek}, ChunkSize: 4096}
	b := memblob.OpenBucket(nil)
	defer b.Close()
	for _, detached := range []bool{false, true} {
		put(t, ctx, b, "whole", e, plaintext(3*4096, 1), detached)
		raw, err := b.ReadAll(ctx, "whole")
		if err != nil {
			t.Fatal(err)
		}
		hsize := len(raw) - 3*(4096+16) - 16
		for _, cut := range []int{1, 16, 17, 4096 + 16, 4096 + 32, 3*(4096+16) + 16} {
			if err := b.WriteAll(ctx, "whole", raw[:len(raw)-cut], nil); err != nil {
				t.Fatal(err)
			}
			_, err := NewReaderAt(ctx, b, "whole", d, nil)
			if !errors.Is(err, stream.ErrTruncated) && !errors.Is(err, stream.ErrAuthentication) && !errors.Is(err, envelope.ErrSizeMismatch) {
				t.Errorf("detached=%v, cut %d (header %d): %v", detached, cut, hsize, err)
			}
		}
	}
}

// Rewrap adds and removes KEKs of a detached object by header objects alone.
func TestRewrap(t *testing.T) {
	ctx := context.Background()
	a, bk := newKEK(t, "a.json"), newKEK(t, "b.json")
	// Full slot tables: the rewraps add KEKs, which the tables of a small
	// object, sized to its slots (envelope.SmallFileSize), have no room for.
	e := &envelope.Encrypter{KEKs: []kms.KEK{a}, ChunkSize: 4096, SlotTableSize: envelope.DefaultSlotTableSize}
	p := plaintext(20_000, 7)
	for name, b := range buckets(t) {
		t.Run(name, func(t *testing.T) {
			put(t, ctx, b, "obj", e, p, true)
			body, err := b.ReadAll(ctx, "obj")
			if err != nil {
				t.Fatal(err)
			}
			res, err := Rewrap(ctx, b, "obj", &envelope.RewrapOptions{Keyring: envelope.KEKs{a}, Add: []kms.KEK{bk}})
			if err != nil || !res.Changed {
				t.Fatalf("Rewrap add: %+v, %v", res, err)
			}
			res, err = Rewrap(ctx, b, "obj", &envelope.RewrapOptions{Keyring: envelope.KEKs{a, bk}, Remove: []string{a.URI()}})
			if err != nil || !res.Changed {
				t.Fatalf("Rewrap remove: %+v, %v", res, err)
			}
			if got, err := get(ctx, b, "obj", bk); err != nil || !bytes.Equal(got, p) {
				t.Fatalf("open with the added KEK: %v", err)
			}
			if _, err := get(ctx, b, "obj", a); !errors.Is(err, envelope.ErrNoKEK) {
				t.Fatalf("open with the removed KEK: %v", err)
			}
			after, err := b.ReadAll(ctx, "obj")
			if err != nil || !bytes.Equal(after, body) {
				t.Fatalf("the body changed: %v", err)
			}
			seqs, err := listHeaders(ctx, b, "obj")
			if err != nil || len(seqs) != 1 || seqs[0] != 3 {
				t.Fatalf("header objects %v, %v; want [3]", seqs, err)
			}
			// Nothing to change: nothing written.
			res, err = Rewrap(ctx, b, "obj", &envelope.RewrapOptions{Keyring: envelope.KEKs{bk}, Add: []kms.KEK{bk}})
			if err != nil || res.Changed {
				t.Fatalf("Rewrap no-op: %+v, %v", res, err)
			}
			if seqs, _ := listHeaders(ctx, b, "obj"); len(seqs) != 1 || seqs[0] != 3 {
				t.Fatalf("no-op rewrap wrote: %v", seqs)
			}
			// An attached object cannot be rewrapped here.
			put(t, ctx, b, "attached", e, p, false)
			if _, err := Rewrap(ctx, b, "attached", &envelope.RewrapOptions{Keyring: envelope.KEKs{a}, Add: []kms.KEK{bk}}); !errors.Is(err, ErrNotDetached) {
				t.Fatalf("Rewrap of an attached object: %v", err)
			}
		})
	}
}

// A header object whose core is not the body's is never used, and an object
// without a matching header is refused.
func TestHeaderMustMatchBody(t *testing.T) {
	ctx := context.Background()
	kek := newKEK(t, "a.json")
	e := &envelope.Encrypter{KEKs: []kms.KEK{kek}, ChunkSize: 4096}
	b := memblob.OpenBucket(nil)
	defer b.Close()
	pa, pb := plaintext(9000, 1), plaintext(9000, 2)
	put(t, ctx, b, "a", e, pa, true)
	put(t, ctx, b, "b", e, pb, true)
	hb, err := b.ReadAll(ctx, headerKey("b", 1))
	if err != nil {
		t.Fatal(err)
	}
	// b's header, newer, beside a's body, and a torn header object newer
	// still: both are passed over.
	if err := b.WriteAll(ctx, headerKey("a", 7), hb, nil); err != nil {
		t.Fatal(err)
	}
	ha, _ := b.ReadAll(ctx, headerKey("a", 1))
	if err := b.WriteAll(ctx, headerKey("a", 8), ha[:len(ha)-1], nil); err != nil {
		t.Fatal(err)
	}
	if got, err := get(ctx, b, "a", kek); err != nil || !bytes.Equal(got, pa) {
		t.Fatalf("open: %v", err)
	}
	if err := b.Delete(ctx, headerKey("a", 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := get(ctx, b, "a", kek); !errors.Is(err, ErrNoHeader) {
		t.Fatalf("open with no matching header: %v", err)
	}
	if _, err := NewReaderAt(ctx, b, "a", &envelope.Decrypter{Keyring: envelope.KEKs{kek}}, nil); !errors.Is(err, ErrNoHeader) {
		t.Fatalf("NewReaderAt with no matching header: %v", err)
	}
}

// An object store rewrap interrupted at each step leaves an object that
// opens with its old slots or its new ones; a second rewrap finishes it.
func TestRewrapCrash(t *testing.T) {
	ctx := context.Background()
	a, bk := newKEK(t, "a.json"), newKEK(t, "b.json")
	// Full slot tables: the rewraps add KEKs, which the tables of a small
	// object, sized to its slots (envelope.SmallFileSize), have no room for.
	e := &envelope.Encrypter{KEKs: []kms.KEK{a}, ChunkSize: 4096, SlotTableSize: envelope.DefaultSlotTableSize}
	p := plaintext(10_000, 3)
	crash := errors.New("crash")
	for name, b := range buckets(t) {
		for _, step := range []string{"write", "close", "written", "delete"} {
			t.Run(name+"/"+step, func(t *testing.T) {
				key := "crash-" + step
				put(t, ctx, b, key, e, p, true)
				// A first rewrap so that there is an older header to delete.
				if _, err := Rewrap(ctx, b, key, &envelope.RewrapOptions{Keyring: envelope.KEKs{a}, Add: []kms.KEK{bk}}); err != nil {
					t.Fatal(err)
				}
				opts := &envelope.RewrapOptions{Keyring: envelope.KEKs{a, bk}, Remove: []string{bk.URI()}}
				_, err := rewrap(ctx, b, key, opts, func(s string) error {
					if s == step {
						return crash
					}
					return nil
				})
				if !errors.Is(err, crash) {
					t.Fatalf("rewrap: %v", err)
				}
				if got, err := get(ctx, b, key, a); err != nil || !bytes.Equal(got, p) {
					t.Fatalf("open after the crash: %v", err)
				}
				_, errB := get(ctx, b, key, bk)
				removed := errors.Is(errB, envelope.ErrNoKEK)
				if !removed && errB != nil {
					t.Fatalf("open with b: %v", errB)
				}
				if want := step == "written" || step == "delete"; removed != want {
					t.Fatalf("after a crash at %s: new header in use %v", step, removed)
				}
				// Run again: done, one header object.
				if _, err := Rewrap(ctx, b, key, opts); err != nil {
					t.Fatal(err)
				}
				if _, err := get(ctx, b, key, bk); !errors.Is(err, envelope.ErrNoKEK) {
					t.Fatalf("b still opens: %v", err)
				}
				if seqs, err := listHeaders(ctx, b, key); err != nil || len(seqs) != 1 {
					t.Fatalf("header objects %v, %v", seqs, err)
				}
			})
		}
	}
}

// Concurrent rewraps of one object each take effect: none overwrites
// another's header object.
func TestConcurrentRewraps(t *testing.T) {
	ctx := context.Background()
	a := newKEK(t, "a.json")
	var added []*local.KEK
	for i := range 4 {
		added = append(added, newKEK(t, fmt.Sprintf("k%d.json", i)))
	}
	// Full slot tables: the rewraps add KEKs, which the tables of a small
	// object, sized to its slots (envelope.SmallFileSize), have no room for.
	e := &envelope.Encrypter{KEKs: []kms.KEK{a}, ChunkSize: 4096, SlotTableSize: envelope.DefaultSlotTableSize}
	p := plaintext(5000, 4)
	for name, b := range buckets(t) {
		t.Run(name, func(t *testing.T) {
			put(t, ctx, b, "obj", e, p, true)
			var wg sync.WaitGroup
			errs := make([]error, len(added))
			for i, k := range added {
				wg.Go(func() {
					_, errs[i] = Rewrap(ctx, b, "obj", &envelope.RewrapOptions{Keyring: envelope.KEKs{a}, Add: []kms.KEK{k}})
				})
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Fatalf("rewrap %d: %v", i, err)
				}
			}
			for i, k := range added {
				if got, err := get(ctx, b, "obj", k); err != nil || !bytes.Equal(got, p) {
					t.Fatalf("KEK %d added concurrently does not open: %v", i, err)
				}
			}
		})
	}
}

// IfNotExist is what makes concurrent rewraps safe: check that each bucket
// honours it.
func TestIfNotExist(t *testing.T) {
	ctx := context.Background()
	for name, b := range buckets(t) {
		if err := writeHeaderObject(ctx, b, "x", 1, []byte("one"), nil); err != nil {
			t.Fatal(name, err)
		}
		err := writeHeaderObject(ctx, b, "x", 1, []byte("two"), nil)
		if gcerrors.Code(err) != gcerrors.FailedPrecondition {
			t.Fatalf("%s: second write: %v", name, err)
		}
		if got, _ := b.ReadAll(ctx, headerKey("x", 1)); string(got) != "one" {
			t.Fatalf("%s: overwritten: %q", name, got)
		}
	}
}

// The requests a ReaderAt makes on S3, counted at the HTTP transport.
func TestRangedReadRequests(t *testing.T) {
	ctx := context.Background()
	kek := newKEK(t, "a.json")
	d := &envelope.Decrypter{Keyring: envelope.KEKs{kek}}
	b, c := s3Bucket(t)
	const size = 4 << 20 // 64 chunks of 64 KiB
	p := plaintext(size, 5)
	e := &envelope.Encrypter{KEKs: []kms.KEK{kek}}
	put(t, ctx, b, "attached", e, p, false)
	put(t, ctx, b, "detached", e, p, true)
	small := plaintext(1000, 6)
	put(t, ctx, b, "small", e, small, false)
	h, err := readHead(ctx, b, "small", DefaultHeaderReadSize)
	if err != nil {
		t.Fatal(err)
	}
	smallHeader := h.l.headerSize
	if smallHeader >= 4222 {
		t.Fatalf("a small object's header is %d bytes, want its small slot tables", smallHeader)
	}

	for _, tc := range []struct {
		key                string
		gets, lists, bytes int64
	}{
		// The first 16 KiB, then the final chunk (16 bytes of tag here,
		// as the plaintext is a whole number of chunks).
		{"attached", 2, 0, DefaultHeaderReadSize + 16},
		// And the header object (4,222 bytes).
		{"detached", 3, 1, DefaultHeaderReadSize + 16 + 4222},
		// A small object is read whole by the first read; its slot tables
		// are sized to its slot (envelope.SmallFileSize), whose size
		// varies with the local KEK's path.
		{"small", 1, 0, smallHeader + 1000 + 16},
	} {
		c.reset()
		if _, err := NewReaderAt(ctx, b, tc.key, d, nil); err != nil {
			t.Fatal(err)
		}
		if c.gets.Load() != tc.gets || c.lists.Load() != tc.lists || c.bytes.Load() != tc.bytes {
			t.Errorf("open %s: %d GETs, %d LISTs, %d bytes; want %d, %d, %d", tc.key, c.gets.Load(), c.lists.Load(), c.bytes.Load(), tc.gets, tc.lists, tc.bytes)
		}
		t.Logf("open %s: %d GETs, %d LISTs, %d bytes", tc.key, c.gets.Load(), c.lists.Load(), c.bytes.Load())
	}

	// A first read shorter than the header: a second for the rest.
	c.reset()
	if _, err := NewReaderAt(ctx, b, "attached", d, &ReaderAtOptions{HeaderReadSize: 100}); err != nil {
		t.Fatal(err)
	}
	if c.gets.Load() != 3 {
		t.Errorf("open with a 100-byte first read: %d GETs, want 3", c.gets.Load())
	}

	ra, err := NewReaderAt(ctx, b, "attached", d, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Reading in order, 4 KiB at a time: one GET per chunk.
	c.reset()
	buf := make([]byte, 4096)
	for off := int64(0); off < size; off += 4096 {
		if _, err := ra.ReadAt(buf, off); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, p[off:off+4096]) {
			t.Fatalf("ReadAt(%d) wrong", off)
		}
	}
	if c.gets.Load() != 64 {
		t.Errorf("sequential 4 KiB reads: %d GETs, want 64 (one per chunk)", c.gets.Load())
	}
	t.Logf("1024 sequential 4 KiB reads: %d GETs, %d bytes", c.gets.Load(), c.bytes.Load())

	// 1,000 random 4 KiB reads: at most one GET per chunk a read misses.
	ra, err = NewReaderAt(ctx, b, "attached", d, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.reset()
	r := rand.New(rand.NewPCG(9, 9))
	var maxGets int64
	for range 1000 {
		off := r.Int64N(size - 4096)
		if _, err := ra.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
		if off/65536 != (off+4095)/65536 {
			maxGets += 2
		} else {
			maxGets++
		}
	}
	if c.gets.Load() > maxGets || c.gets.Load() < 500 {
		t.Errorf("random reads: %d GETs, at most %d", c.gets.Load(), maxGets)
	}
	t.Logf("1000 random 4 KiB reads of a 4 MiB object: %d GETs, %d bytes (%.1f KiB per read)", c.gets.Load(), c.bytes.Load(), float64(c.bytes.Load())/1000/1024)

	// The cache holds DefaultCacheChunks chunks, least recently used out.
	ra, err = NewReaderAt(ctx, b, "attached", d, nil)
	if err != nil {
		t.Fatal(err)
	}
	readChunk := func(i int64) int64 {
		c.reset()
		if _, err := ra.ReadAt(buf, i*65536); err != nil {
			t.Fatal(err)
		}
		return c.gets.Load()
	}
	for i := range int64(DefaultCacheChunks + 1) {
		if n := readChunk(i); n != 1 {
			t.Fatalf("chunk %d, first read: %d GETs", i, n)
		}
	}
	if n := readChunk(DefaultCacheChunks); n != 0 {
		t.Errorf("a cached chunk: %d GETs", n)
	}
	if n := readChunk(0); n != 1 {
		t.Errorf("an evicted chunk: %d GETs", n)
	}
	// No cache: every read of another chunk than the last one read (which
	// envelope.ReaderAt keeps) is a GET.
	ra, err = NewReaderAt(ctx, b, "attached", d, &ReaderAtOptions{CacheChunks: -1})
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int64{3, 4, 3} {
		if n := readChunk(i); n != 1 {
			t.Errorf("no cache, chunk %d: %d GETs", i, n)
		}
	}
}

// On S3 an object larger than a part goes up as a multipart upload; one
// aborted after a part was stored leaves no object.
func TestAbortMultipartS3(t *testing.T) {
	ctx := context.Background()
	kek := newKEK(t, "a.json")
	e := &envelope.Encrypter{KEKs: []kms.KEK{kek}}
	b, c := s3Bucket(t)
	w, err := NewWriter(ctx, b, "big", e, envelope.UnknownSize, nil)
	if err != nil {
		t.Fatal(err)
	}
	mib := plaintext(1<<20, 8)
	stored := false
	for i := 0; i < 256 && !stored; i++ {
		if _, err := w.Write(mib); err != nil {
			t.Fatal(err)
		}
		select {
		case <-c.part:
			stored = true
		default:
		}
	}
	if !stored {
		t.Fatal("no part stored after 256 MiB")
	}
	w.Abort(errors.New("source failed"))
	if err := w.Close(); !errors.Is(err, stream.ErrAborted) {
		t.Fatalf("Close: %v", err)
	}
	assertNoObject(t, ctx, b, "big")
}

func TestIsHeaderKey(t *testing.T) {
	for name, want := range map[string]string{
		"a/b.kpch.00000000000000000001":      "a/b",
		"a.kpch.x.kpch.00000000000000000012": "a.kpch.x",
		"a.kpch.0000000000000000001":         "",
		"a.kpch.00000000000000000000":        "",
		"a.kpch.0000000000000000000a":        "",
		"a.kpch.00000000000000000001.bak":    "",
		"a":                                  "",
		".kpch.00000000000000000003":         "",
	} {
		got, ok := IsHeaderKey(name)
		if got != want || ok != (want != "") {
			t.Errorf("IsHeaderKey(%q) = %q, %v", name, got, ok)
		}
	}
}
