package envelope

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"

	"github.com/kpcrypt/kpcrypt/envelope/internal/format"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/local"
	"github.com/kpcrypt/kpcrypt/stream"
)

// Sizes around the chunk boundaries of testChunkSize.
var testSizes = []int{0, 1, testChunkSize - 1, testChunkSize, testChunkSize + 1, 3*testChunkSize + 5}

// bodySize is the body size FORMAT.md §1.3 gives a plaintext of n bytes.
func bodySize(n, cs int) int { return n + stream.TagSize*(n/cs+1) }

func mustSeal(t testing.TB, e *Encrypter, pt []byte) []byte {
	t.Helper()
	ct, err := e.Seal(context.Background(), pt)
	if err != nil {
		t.Fatal(err)
	}
	return ct
}

func mustInspect(t testing.TB, file []byte) *Header {
	t.Helper()
	h, err := Inspect(bytes.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// readAllPlain reads r through Read alone, hiding any WriterTo.
func readAllPlain(r io.Reader) ([]byte, error) {
	return io.ReadAll(struct{ io.Reader }{r})
}

func TestEncryptDecryptRoundTrip(t *testing.T) {
	ctx := t.Context()
	k := newLocalKEK(t, "kek")
	for _, workers := range []int{1, 4} {
		for _, n := range testSizes {
			t.Run(fmt.Sprintf("workers=%d/size=%d", workers, n), func(t *testing.T) {
				pt := testPlaintext(n)
				enc := &Encrypter{KEKs: []kms.KEK{k}, ChunkSize: testChunkSize, Workers: workers}
				var ct bytes.Buffer
				if err := enc.Encrypt(ctx, &ct, bytes.NewReader(pt)); err != nil {
					t.Fatal(err)
				}
				h := mustInspect(t, ct.Bytes())
				// A bytes.Reader is not a file: its size is not recorded.
				if h.PlaintextSize != -1 || h.ChunkSize != testChunkSize || h.SlotTableSize != DefaultSlotTableSize {
					t.Errorf("header %+v", h)
				}
				if got, want := int64(ct.Len()), h.HeaderSize+int64(bodySize(n, testChunkSize)); got != want {
					t.Errorf("file of %d bytes, want header + body = %d", got, want)
				}

				dec := &Decrypter{Keyring: KEKs{k}, Workers: workers}
				var out bytes.Buffer
				if err := dec.Decrypt(ctx, &out, bytes.NewReader(ct.Bytes())); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(out.Bytes(), pt) {
					t.Fatal("Decrypt did not give back the plaintext")
				}
				out.Reset()
				if err := Decrypt(ctx, &out, bytes.NewReader(ct.Bytes()), KEKs{k}); err != nil || !bytes.Equal(out.Bytes(), pt) {
					t.Fatalf("package Decrypt: %v", err)
				}
			})
		}
	}
}

func TestEncryptPackageFunction(t *testing.T) {
	ctx := t.Context()
	k1, k2 := newLocalKEK(t, "a"), newLocalKEK(t, "b")
	pt := testPlaintext(100_000)
	var ct bytes.Buffer
	if err := Encrypt(ctx, &ct, bytes.NewReader(pt), k1, k2); err != nil {
		t.Fatal(err)
	}
	h := mustInspect(t, ct.Bytes())
	if len(h.Slots) != 2 || h.Slots[0].KEK != k1.URI() || h.Slots[1].KEK != k2.URI() {
		t.Fatalf("slots %+v", h.Slots)
	}
	if h.ChunkSize != stream.DefaultChunkSize {
		t.Errorf("chunk size %d, want the default %d", h.ChunkSize, stream.DefaultChunkSize)
	}
	got, err := Open(ctx, ct.Bytes(), KEKs{k2})
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Open: %v", err)
	}
}

// Encrypting a regular file records its size, from the current offset.
func TestEncryptFileRecordsSize(t *testing.T) {
	ctx := t.Context()
	k := newLocalKEK(t, "kek")
	pt := testPlaintext(2*testChunkSize + 17)
	path := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(path, pt, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, skip := range []int64{0, 10} {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Seek(skip, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		var ct bytes.Buffer
		err = (&Encrypter{KEKs: []kms.KEK{k}, ChunkSize: testChunkSize}).Encrypt(ctx, &ct, f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if h := mustInspect(t, ct.Bytes()); h.PlaintextSize != int64(len(pt))-skip {
			t.Errorf("skip %d: recorded size %d, want %d", skip, h.PlaintextSize, int64(len(pt))-skip)
		}
		got, err := Open(ctx, ct.Bytes(), KEKs{k})
		if err != nil || !bytes.Equal(got, pt[skip:]) {
			t.Fatalf("skip %d: %v", skip, err)
		}
	}
}

func TestNewWriterKnownAndUnknownSize(t *testing.T) {
	ctx := t.Context()
	k := newLocalKEK(t, "kek")
	enc := &Encrypter{KEKs: []kms.KEK{k}, ChunkSize: testChunkSize, Workers: 3}
	for _, n := range testSizes {
		pt := testPlaintext(n)
		for _, known := range []bool{true, false} {
			for _, how := range []string{"one write", "small writes", "ReadFrom"} {
				t.Run(fmt.Sprintf("size=%d/known=%v/%s", n, known, how), func(t *testing.T) {
					size := int64(UnknownSize)
					if known {
						size = int64(n)
					}
					var ct bytes.Buffer
					w, err := enc.NewWriter(ctx, &ct, size)
					if err != nil {
						t.Fatal(err)
					}
					switch how {
					case "one write":
						_, err = w.Write(pt)
					case "small writes":
						for p := pt; len(p) > 0 && err == nil; {
							k := min(len(p), 777)
							_, err = w.Write(p[:k])
							p = p[k:]
						}
					case "ReadFrom":
						var m int64
						m, err = w.ReadFrom(iotest.HalfReader(bytes.NewReader(pt)))
						if err == nil && m != int64(n) {
							t.Errorf("ReadFrom read %d bytes, want %d", m, n)
						}
					}
					if err != nil {
						t.Fatal(err)
					}
					if err := w.Close(); err != nil {
						t.Fatal(err)
					}
					if h := mustInspect(t, ct.Bytes()); h.PlaintextSize != size {
						t.Errorf("recorded size %d, want %d", h.PlaintextSize, size)
					}
					got, err := Open(ctx, ct.Bytes(), KEKs{k})
					if err != nil || !bytes.Equal(got, pt) {
						t.Fatalf("Open: %v", err)
					}
				})
			}
		}
	}
}

func TestSealOpen(t *testing.T) {
	ctx := t.Context()
	k := newLocalKEK(t, "kek")
	for _, n := range []int{0, 1, 300_000} {
		pt := testPlaintext(n)
		ct, err := Seal(ctx, pt, k)
		if err != nil {
			t.Fatal(err)
		}
		if h := mustInspect(t, ct); h.PlaintextSize != int64(n) {
			t.Errorf("Seal recorded size %d, want %d", h.PlaintextSize, n)
		}
		got, err := Open(ctx, ct, KEKs{k})
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("size %d: %v", n, err)
		}
		// Open releases nothing from a file that fails to authenticate.
		bad := bytes.Clone(ct)
		bad[len(bad)-1] ^= 1
		got, err = Open(ctx, bad, KEKs{k})
		checkClass(t, "tampered tag", err, stream.ErrAuthentication)
		if got != nil {
			t.Errorf("Open returned %d bytes with an error", len(got))
		}
	}
	// Two seals of one plaintext share no salt and no wrapped key: a fresh
	// DEK and salt every time.
	pt := testPlaintext(10)
	a, b := split(t, mustSeal(t, &Encrypter{KEKs: []kms.KEK{k}}, pt)), split(t, mustSeal(t, &Encrypter{KEKs: []kms.KEK{k}}, pt))
	if bytes.Equal(a.core[offSalt:offSalt+32], b.core[offSalt:offSalt+32]) {
		t.Error("two files share a salt")
	}
	if bytes.Equal(a.table(t, 0).Slots[0].Wrapped, b.table(t, 0).Slots[0].Wrapped) {
		t.Error("two files share a wrapped DEK")
	}
	if bytes.Equal(unwrapDEK(t, a, 0, 0, k), unwrapDEK(t, b, 0, 0, k)) {
		t.Error("two files share a DEK")
	}
}

func TestNewReader(t *testing.T) {
	ctx := t.Context()
	k := newLocalKEK(t, "kek")
	pt := testPlaintext(5*testChunkSize + 3)
	ct := mustSeal(t, &Encrypter{KEKs: []kms.KEK{k}, ChunkSize: testChunkSize}, pt)
	version, _ := k.CurrentVersion(ctx)
	for _, workers := range []int{1, 3} {
		dec := &Decrypter{Keyring: KEKs{k}, Workers: workers}
		// Through Read, byte by byte and then in larger reads.
		r, err := dec.NewReader(ctx, bytes.NewReader(ct))
		if err != nil {
			t.Fatal(err)
		}
		if s := r.Slot(); s.Index != 0 || s.URI != k.URI() || s.KeyVersion != version || s.Rewrapped != nil {
			t.Errorf("Slot() = %+v", s)
		}
		if err := iotest.TestReader(r, pt); err != nil {
			t.Errorf("workers=%d: %v", workers, err)
		}
		r.Close()
		// Through WriteTo.
		r, err = NewReader(ctx, bytes.NewReader(ct), KEKs{k})
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if n, err := r.WriteTo(&out); err != nil || n != int64(len(pt)) || !bytes.Equal(out.Bytes(), pt) {
			t.Fatalf("WriteTo: %d bytes, %v", n, err)
		}
		// A Reader closed early stops, and reads after Close fail.
		r, err = dec.NewReader(ctx, bytes.NewReader(ct))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(r, make([]byte, 10)); err != nil {
			t.Fatal(err)
		}
		r.Close()
		if _, err := r.Read(make([]byte, 10)); err == nil {
			t.Error("Read after Close succeeded")
		}
	}
}

func TestNewReaderAt(t *testing.T) {
	ctx := t.Context()
	k := newLocalKEK(t, "kek")
	pt := testPlaintext(5*testChunkSize + 123)
	sized := mustSeal(t, &Encrypter{KEKs: []kms.KEK{k}, ChunkSize: testChunkSize}, pt)
	var unsized bytes.Buffer
	if err := (&Encrypter{KEKs: []kms.KEK{k}, ChunkSize: testChunkSize}).Encrypt(ctx, &unsized, bytes.NewReader(pt)); err != nil {
		t.Fatal(err)
	}
	for name, ct := range map[string][]byte{"sized": sized, "unsized": unsized.Bytes()} {
		t.Run(name, func(t *testing.T) {
			ra, err := NewReaderAt(ctx, bytes.NewReader(ct), int64(len(ct)), KEKs{k})
			if err != nil {
				t.Fatal(err)
			}
			if ra.Size() != int64(len(pt)) {
				t.Fatalf("Size() = %d, want %d", ra.Size(), len(pt))
			}
			if s := ra.Slot(); s.Index != 0 || s.URI != k.URI() {
				t.Errorf("Slot() = %+v", s)
			}
			rng := rand.New(rand.NewPCG(1, 2))
			for range 300 {
				off := rng.IntN(len(pt) + 1)
				buf := make([]byte, rng.IntN(2*testChunkSize+1))
				n, err := ra.ReadAt(buf, int64(off))
				want := pt[off:min(off+len(buf), len(pt))]
				if n != len(want) || !bytes.Equal(buf[:n], want) {
					t.Fatalf("ReadAt(%d bytes, %d) = %d bytes, wrong content", len(buf), off, n)
				}
				if len(want) < len(buf) && err != io.EOF || len(want) == len(buf) && err != nil {
					t.Fatalf("ReadAt(%d bytes, %d): %v", len(buf), off, err)
				}
			}

			// No shared offset: Read and Seek come from a SectionReader
			// of the caller's own.
			if _, ok := any(ra).(io.Seeker); ok {
				t.Error("ReaderAt has a Seek method")
			}
			if _, ok := any(ra).(io.Reader); ok {
				t.Error("ReaderAt has a Read method")
			}
			sr := io.NewSectionReader(ra, 0, ra.Size())
			seek := func(off int64, whence int, want int64) {
				t.Helper()
				if got, err := sr.Seek(off, whence); err != nil || got != want {
					t.Fatalf("Seek(%d, %d) = %d, %v; want %d", off, whence, got, err, want)
				}
			}
			read := func(n, at int) {
				t.Helper()
				buf := make([]byte, n)
				if _, err := io.ReadFull(sr, buf); err != nil || !bytes.Equal(buf, pt[at:at+n]) {
					t.Fatalf("Read %d bytes at %d: %v", n, at, err)
				}
			}
			seek(100, io.SeekStart, 100)
			read(50, 100)
			seek(-10, io.SeekCurrent, 140)
			read(testChunkSize, 140)
			seek(-5, io.SeekEnd, int64(len(pt)-5))
			if rest, err := io.ReadAll(sr); err != nil || !bytes.Equal(rest, pt[len(pt)-5:]) {
				t.Fatalf("read to the end: %q, %v", rest, err)
			}
			seek(10, io.SeekEnd, int64(len(pt)+10))
			if n, err := sr.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("Read past the end: %d, %v", n, err)
			}
			if _, err := sr.Seek(-1, io.SeekStart); err == nil {
				t.Error("Seek to a negative offset succeeded")
			}
			seek(0, io.SeekStart, 0)
			if err := iotest.TestReader(io.NewSectionReader(ra, 0, ra.Size()), pt); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestMultipleSlots(t *testing.T) {
	ctx := t.Context()
	keks := []*local.KEK{newLocalKEK(t, "a"), newLocalKEK(t, "b"), newLocalKEK(t, "c")}
	pt := testPlaintext(2*testChunkSize + 1)
	ct := mustSeal(t, &Encrypter{KEKs: []kms.KEK{keks[0], keks[1], keks[2]}, ChunkSize: testChunkSize}, pt)

	h := mustInspect(t, ct)
	if len(h.Slots) != 3 {
		t.Fatalf("%d slots, want 3", len(h.Slots))
	}
	for i, k := range keks {
		v, _ := k.CurrentVersion(ctx)
		if h.Slots[i].KEK != k.URI() || h.Slots[i].KeyVersion != v || h.Slots[i].WrappedSize == 0 {
			t.Errorf("slot %d: %+v", i, h.Slots[i])
		}
		// Each KEK alone opens the file, through its own slot.
		r, err := NewReader(ctx, bytes.NewReader(ct), KEKs{k})
		if err != nil {
			t.Fatalf("KEK %d: %v", i, err)
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("KEK %d: %v", i, err)
		}
		if r.Slot().Index != i || r.Slot().URI != k.URI() {
			t.Errorf("KEK %d opened slot %+v", i, r.Slot())
		}
		ra, err := NewReaderAt(ctx, bytes.NewReader(ct), int64(len(ct)), KEKs{k})
		if err != nil || ra.Slot().Index != i {
			t.Fatalf("ReaderAt with KEK %d: %v", i, err)
		}
	}

	// A KEK the file does not name is tried on every slot (same scheme) and
	// fails on each.
	outsider := newLocalKEK(t, "outsider")
	_, err := Open(ctx, ct, KEKs{outsider})
	checkClass(t, "outsider", err, ErrNoKEK)
	if !errors.Is(err, kms.ErrWrongKey) {
		t.Errorf("outsider: %v does not wrap kms.ErrWrongKey", err)
	}
	var nk *NoKEKError
	if !errors.As(err, &nk) {
		t.Fatalf("%T is not a *NoKEKError", err)
	}
	if nk.Slots != 3 || len(nk.URIs) != 3 || len(nk.Errors) != 3 {
		t.Errorf("NoKEKError %+v", nk)
	}
	for i, k := range keks {
		if nk.URIs[i] != k.URI() {
			t.Errorf("NoKEKError.URIs[%d] = %q, want %q", i, nk.URIs[i], k.URI())
		}
	}
	if msg := err.Error(); !strings.Contains(msg, "3 key slots") || !strings.Contains(msg, "(and 2 more)") {
		t.Errorf("message %q", msg)
	}
	// With the outsider first, the keyring still finds the right one.
	r, err := NewReader(ctx, bytes.NewReader(ct), KEKs{outsider, keks[2]})
	if err != nil {
		t.Fatal(err)
	}
	if r.Slot().Index != 2 {
		t.Errorf("opened slot %d, want 2", r.Slot().Index)
	}
}

func TestNoKEKErrorMessage(t *testing.T) {
	e := &NoKEKError{Slots: 1, URIs: []string{"local:x"}}
	if got := e.Error(); got != "no KEK can open any of this file's 1 key slot (local:x)" {
		t.Errorf("%q", got)
	}
	e.Errors = []error{kms.ErrWrongKey}
	if got := e.Error(); !strings.HasSuffix(got, ": "+kms.ErrWrongKey.Error()) {
		t.Errorf("%q", got)
	}
	if !errors.Is(e, ErrNoKEK) || !errors.Is(e, kms.ErrWrongKey) || errors.Is(e, kms.ErrUnavailable) {
		t.Error("NoKEKError matches the wrong classes")
	}
}

// KEKs offers the exact URI first, then others of the same scheme, never
// another scheme.
func TestKEKsKeyringOrder(t *testing.T) {
	base := newLocalKEK(t, "k")
	same := &countingKEK{KEK: base, uri: "local:/other/path.json"}
	exact := &countingKEK{KEK: base, uri: "local:/slot/path.json"}
	foreign := &countingKEK{KEK: base, uri: "crn:v1:some:key"}
	got, err := KEKs{same, foreign, exact}.KEKsFor(t.Context(), "local:/slot/path.json")
	if err != nil || len(got) != 2 || got[0] != exact || got[1] != same {
		t.Fatalf("KEKsFor = %v, %v; want [exact same]", got, err)
	}
	if got, _ := (KEKs{same}).KEKsFor(t.Context(), "pkcs11:token"); len(got) != 0 {
		t.Errorf("offered %d KEKs for another scheme", len(got))
	}
}

// A local key file opened by another path (a copy, a symlink) still opens
// a file whose slot names the original path: the keyring tries KEKs of the
// same scheme.
func TestLocalKEKByAnotherPath(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	path := filepath.Join(dir, "kek.json")
	k, err := local.Generate(path)
	if err != nil {
		t.Fatal(err)
	}
	pt := testPlaintext(1000)
	ct := mustSeal(t, &Encrypter{KEKs: []kms.KEK{k}}, pt)

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(t.TempDir(), "copy.json")
	if err := os.WriteFile(copyPath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	linkPath := filepath.Join(t.TempDir(), "link.json")
	if err := os.Symlink(path, linkPath); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{copyPath, linkPath} {
		other, err := local.OpenFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if other.URI() == k.URI() {
			t.Fatalf("%s has the URI of the original", p)
		}
		r, err := NewReader(ctx, bytes.NewReader(ct), KEKs{other})
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("%s: %v", p, err)
		}
		if r.Slot().URI != k.URI() {
			t.Errorf("opened slot %q, want the recorded %q", r.Slot().URI, k.URI())
		}
	}
}

func TestResolvingKeyring(t *testing.T) {
	ctx := t.Context()
	k1, k2 := newLocalKEK(t, "a"), newLocalKEK(t, "b")
	var opens atomic.Int64
	resolver := kms.Resolver{"local": func(ctx context.Context, uri string) (kms.KEK, error) {
		opens.Add(1)
		return local.Open(ctx, uri)
	}}
	pt := testPlaintext(3000)
	ct1 := mustSeal(t, &Encrypter{KEKs: []kms.KEK{k1}}, pt)
	ct2 := mustSeal(t, &Encrypter{KEKs: []kms.KEK{k1}}, pt[:10])
	ct12 := mustSeal(t, &Encrypter{KEKs: []kms.KEK{k2, k1}}, pt)

	// No KEK given: the slot's URI is opened through the resolver, once.
	rk := &ResolvingKeyring{Filter: trustAll, Resolver: resolver}
	for _, c := range []struct {
		ct   []byte
		want []byte
	}{{ct1, pt}, {ct2, pt[:10]}} {
		got, err := Open(ctx, c.ct, rk)
		if err != nil || !bytes.Equal(got, c.want) {
			t.Fatalf("ResolvingKeyring: %v", err)
		}
	}
	if n := opens.Load(); n != 1 {
		t.Errorf("the resolver opened %d KEKs for one URI, want 1 (cached)", n)
	}
	r, err := NewReader(ctx, bytes.NewReader(ct12), rk)
	if err != nil {
		t.Fatal(err)
	}
	if r.Slot().Index != 0 || r.Slot().URI != k2.URI() {
		t.Errorf("opened slot %+v, want slot 0 through the resolver", r.Slot())
	}
	if n := opens.Load(); n != 2 {
		t.Errorf("resolver opened %d KEKs, want 2", n)
	}

	// A KEK given with the slot's exact URI is used without the resolver.
	opens.Store(0)
	rk = &ResolvingKeyring{Filter: trustAll, KEKs: KEKs{k1}, Resolver: resolver}
	if _, err := Open(ctx, ct1, rk); err != nil {
		t.Fatal(err)
	}
	if n := opens.Load(); n != 0 {
		t.Errorf("resolver called %d times though the KEK was given", n)
	}

	// No backend for the scheme: no KEK at all.
	_, err = Open(ctx, ct1, &ResolvingKeyring{Filter: trustAll, Resolver: kms.Resolver{"crn": resolver["local"]}})
	checkClass(t, "no backend", err, ErrNoKEK)

	// The key file is gone: the resolver's error is reported.
	dir := t.TempDir()
	gone, err := local.Generate(filepath.Join(dir, "gone.json"))
	if err != nil {
		t.Fatal(err)
	}
	ctGone := mustSeal(t, &Encrypter{KEKs: []kms.KEK{gone}}, pt)
	if err := os.Remove(filepath.Join(dir, "gone.json")); err != nil {
		t.Fatal(err)
	}
	_, err = Open(ctx, ctGone, &ResolvingKeyring{Filter: trustAll, Resolver: kms.Resolver{"local": local.Open}})
	checkClass(t, "missing key file", err, ErrNoKEK)
	if !errors.Is(err, kms.ErrNotFound) {
		t.Errorf("missing key file: %v does not wrap kms.ErrNotFound", err)
	}
}

// After a rotation the old file still opens, through the old version, and
// new files use the new one.
func TestRotation(t *testing.T) {
	ctx := t.Context()
	k := newLocalKEK(t, "kek")
	v1, err := k.CurrentVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pt := testPlaintext(testChunkSize + 9)
	old := mustSeal(t, &Encrypter{KEKs: []kms.KEK{k}, ChunkSize: testChunkSize}, pt)
	v2, err := k.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v2 == v1 {
		t.Fatal("rotation kept the version")
	}
	reopened, err := local.OpenFile(strings.TrimPrefix(k.URI(), "local:"))
	if err != nil {
		t.Fatal(err)
	}
	for name, kek := range map[string]kms.KEK{"same handle": k, "reopened": reopened} {
		r, err := NewReader(ctx, bytes.NewReader(old), KEKs{kek})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("%s: %v", name, err)
		}
		if s := r.Slot(); s.KeyVersion != v1 || s.Rewrapped != nil {
			t.Errorf("%s: slot %+v, want version %s", name, s, v1)
		}
	}
	if h := mustInspect(t, old); h.Slots[0].KeyVersion != v1 {
		t.Errorf("old file records version %q, want %q", h.Slots[0].KeyVersion, v1)
	}
	fresh := mustSeal(t, &Encrypter{KEKs: []kms.KEK{k}}, pt)
	if h := mustInspect(t, fresh); h.Slots[0].KeyVersion != v2 {
		t.Errorf("new file records version %q, want %q", h.Slots[0].KeyVersion, v2)
	}
	r, err := NewReader(ctx, bytes.NewReader(fresh), KEKs{reopened})
	if err != nil || r.Slot().KeyVersion != v2 {
		t.Fatalf("new file: %v", err)
	}
}

func TestWriterSizeMismatch(t *testing.T) {
	ctx := t.Context()
	k := newLocalKEK(t, "kek")
	const n = testChunkSize + 10
	pt := testPlaintext(n + 1)
	enc := &Encrypter{KEKs: []kms.KEK{k}, ChunkSize: testChunkSize, Workers: 2}
	cases := []struct {
		name  string
		write func(w *Writer) error
		// complete was whether the output, Close's error ignored, still
		// decrypts; now no case does: after an error Close abandons the
		// file, even when the extra byte was refused and never written.
		complete bool
	}{
		{"N+1 in one Write", func(w *Writer) error { _, err := w.Write(pt); return err }, false},
		{"N then 1", func(w *Writer) error {
			if _, err := w.Write(pt[:n]); err != nil {
				t.Fatal(err)
			}
			_, err := w.Write(pt[n:])
			return err
		}, false},
		{"N+1 by ReadFrom", func(w *Writer) error { _, err := w.ReadFrom(bytes.NewReader(pt)); return err }, false},
		{"N-1 by Write", func(w *Writer) error { _, err := w.Write(pt[:n-1]); return err }, false},
		{"N-1 by ReadFrom", func(w *Writer) error { _, err := w.ReadFrom(bytes.NewReader(pt[:n-1])); return err }, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var ct bytes.Buffer
			w, err := enc.NewWriter(ctx, &ct, n)
			if err != nil {
				t.Fatal(err)
			}
			werr := c.write(w)
			cerr := w.Close()
			if !errors.Is(werr, ErrSizeMismatch) && !errors.Is(cerr, ErrSizeMismatch) {
				t.Fatalf("write: %v, close: %v; want ErrSizeMismatch", werr, cerr)
			}
			// Close reports the mismatch whatever the write said, so that a
			// caller checking only Close learns of it.
			checkClass(t, "Close", cerr, ErrSizeMismatch)
			// What was written never passes for a complete file of n bytes.
			got, err := Open(ctx, ct.Bytes(), KEKs{k})
			if c.complete {
				if err != nil || !bytes.Equal(got, pt[:n]) {
					t.Errorf("output: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("output decrypts to %d bytes, though %d were announced", len(got), n)
			}
			ra, raErr := NewReaderAt(ctx, bytes.NewReader(ct.Bytes()), int64(ct.Len()), KEKs{k})
			if raErr == nil {
				t.Fatalf("ReaderAt accepted the output, size %d", ra.Size())
			}
		})
	}
}

// A file whose body holds another size than its header says decrypts with
// ErrSizeMismatch. The Writer never makes one (Close abandons the file), so
// the test writes the body with the stream engine.
func TestDecryptSizeMismatch(t *testing.T) {
	ctx := t.Context()
	k := newLocalKEK(t, "kek")
	const n = 2*testChunkSize + 10
	var ct bytes.Buffer
	enc := &Encrypter{KEKs: []kms.KEK{k}, ChunkSize: testChunkSize}
	w, err := enc.NewWriter(ctx, &ct, n)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(testPlaintext(n - 1))
	if err := w.Close(); !errors.Is(err, ErrSizeMismatch) {
		t.Fatalf("Close: %v", err)
	}
	if _, err := Open(ctx, ct.Bytes(), KEKs{k}); !errors.Is(err, stream.ErrTruncated) {
		t.Errorf("the abandoned file: %v, want stream.ErrTruncated", err)
	}
	header, c, _, err := enc.newHeader(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	ct.Reset()
	ct.Write(header)
	sw := c.NewWriter(&ct, nil)
	sw.Write(testPlaintext(n - 1))
	if err := sw.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = Open(ctx, ct.Bytes(), KEKs{k})
	checkClass(t, "Open", err, ErrSizeMismatch)
	_, err = NewReaderAt(ctx, bytes.NewReader(ct.Bytes()), int64(ct.Len()), KEKs{k})
	checkClass(t, "NewReaderAt", err, ErrSizeMismatch)
}

func TestTrailingData(t *testing.T) {
	ctx := t.Context()
	k := newLocalKEK(t, "kek")
	pt := testPlaintext(2*testChunkSize + 7)
	ct := mustSeal(t, &Encrypter{KEKs: []kms.KEK{k}, ChunkSize: testChunkSize}, pt)
	for _, extra := range []string{"x", strings.Repeat("y", testChunkSize+100)} {
		bad := append(bytes.Clone(ct), extra...)
		_, err := Open(ctx, bad, KEKs{k})
		checkClass(t, "Open", err, ErrTrailingData)

		for _, workers := range []int{1, 3} {
			dec := &Decrypter{Keyring: KEKs{k}, Workers: workers}
			r, err := dec.NewReader(ctx, bytes.NewReader(bad))
			if err != nil {
				t.Fatal(err)
			}
			got, err := readAllPlain(r)
			checkClass(t, "Read", err, ErrTrailingData)
			// The plaintext itself authenticated; only the end is refused,
			// and it stays refused.
			if !bytes.Equal(got, pt) {
				t.Errorf("Read released %d bytes, want the %d authenticated", len(got), len(pt))
			}
			if _, err := r.Read(make([]byte, 1)); !errors.Is(err, ErrTrailingData) {
				t.Errorf("second Read at the end: %v", err)
			}
			r.Close()

			r, err = dec.NewReader(ctx, bytes.NewReader(bad))
			if err != nil {
				t.Fatal(err)
			}
			_, err = r.WriteTo(io.Discard)
			checkClass(t, "WriteTo", err, ErrTrailingData)
			r.Close()
		}
		_, err = NewReaderAt(ctx, bytes.NewReader(bad), int64(len(bad)), KEKs{k})
		checkClass(t, "NewReaderAt", err, ErrTrailingData)
	}

	// Without a recorded size, trailing bytes are read as part of the final
	// chunk, which then fails to authenticate (FORMAT.md §1.4).
	var unsized bytes.Buffer
	if err := (&Encrypter{KEKs: []kms.KEK{k}, ChunkSize: testChunkSize}).Encrypt(ctx, &unsized, bytes.NewReader(pt)); err != nil {
		t.Fatal(err)
	}
	bad := append(unsized.Bytes(), 'x')
	_, err := Open(ctx, bad, KEKs{k})
	checkClass(t, "unsized Open", err, stream.ErrAuthentication)

	// A truncated sized file is truncated, not trailing.
	_, err = Open(ctx, ct[:len(ct)-(len(pt)%testChunkSize+stream.TagSize)], KEKs{k})
	checkClass(t, "truncated at a chunk boundary", err, stream.ErrTruncated)
	_, err = NewReaderAt(ctx, bytes.NewReader(ct[:len(ct)-1]), int64(len(ct)-1), KEKs{k})
	checkClass(t, "truncated in the final chunk", err, stream.ErrAuthentication)
}

func TestEncryptionContext(t *testing.T) {
	ctx := t.Context()
	ck := &countingKEK{KEK: newLocalKEK(t, "kek")}
	want := map[string]string{"tenant": "acme", "purpose": "backup", "ü": "ß"}
	pt := testPlaintext(500)
	ct := mustSeal(t, &Encrypter{KEKs: []kms.KEK{ck}, Context: want}, pt)

	// Stored sorted by key, as FORMAT.md §2.1 encodes pairs.
	p := split(t, ct)
	if got := p.core[offCtx:p.macOffset()]; !bytes.Equal(got, specContext("purpose", "backup", "tenant", "acme", "ü", "ß")) {
		t.Errorf("context encoded as %x", got)
	}
	h := mustInspect(t, ct)
	if len(h.Context) != len(want) {
		t.Errorf("Inspect context %v, want %v", h.Context, want)
	}
	for k, v := range want {
		if h.Context[k] != v {
			t.Errorf("Inspect context %v, want %v", h.Context, want)
		}
	}
	if h := mustInspect(t, mustSeal(t, &Encrypter{KEKs: []kms.KEK{ck}}, pt)); h.Context != nil {
		t.Errorf("a file without context shows %v", h.Context)
	}

	for _, required := range []map[string]string{nil, {"tenant": "acme"}, want} {
		got, err := (&Decrypter{Keyring: KEKs{ck}, Context: required}).Open(ctx, ct)
		if err != nil || !bytes.Equal(got, pt) {
			t.Errorf("required %v: %v", required, err)
		}
	}
	plain := mustSeal(t, &Encrypter{KEKs: []kms.KEK{ck}}, pt)
	for _, c := range []struct {
		file     []byte
		required map[string]string
	}{
		{ct, map[string]string{"tenant": "other"}},
		{ct, map[string]string{"tenant": "acme", "region": "eu"}},
		{ct, map[string]string{"Tenant": "acme"}},
		{plain, map[string]string{"tenant": "acme"}},
	} {
		before := ck.calls()
		_, err := (&Decrypter{Keyring: KEKs{ck}, Context: c.required}).Open(ctx, c.file)
		checkClass(t, fmt.Sprintf("required %v", c.required), err, ErrContextMismatch)
		if ck.calls() != before {
			t.Errorf("required %v: the KEK was called before the context was checked", c.required)
		}
		_, err = (&Decrypter{Keyring: KEKs{ck}, Context: c.required}).NewReaderAt(ctx, bytes.NewReader(c.file), int64(len(c.file)))
		checkClass(t, "NewReaderAt", err, ErrContextMismatch)
	}

	// A context byte changed in the file: the slot's AAD binds the core, so
	// the unwrap fails.
	bad := split(t, ct)
	bad.core[offCtx+1] ^= 0x01 // "purpose" -> "qurpose"
	if h, err := Inspect(bytes.NewReader(bad.join())); err != nil || h.Context["qurpose"] != "backup" {
		t.Fatalf("the modified file should parse: %v", err)
	}
	_, err := Open(ctx, bad.join(), KEKs{ck})
	checkClass(t, "modified context", err, ErrNoKEK)
	if !errors.Is(err, kms.ErrWrongKey) {
		t.Errorf("modified context: %v", err)
	}
}

func TestInvalidContextRefusedOnEncryption(t *testing.T) {
	ck := &countingKEK{KEK: newLocalKEK(t, "kek")}
	many := map[string]string{}
	for i := range format.MaxContextPair + 1 {
		many[fmt.Sprintf("k%02d", i)] = ""
	}
	for name, c := range map[string]map[string]string{
		"empty key":       {"": "v"},
		"long key":        {strings.Repeat("k", 256): "v"},
		"bad UTF-8":       {"k": "\xff"},
		"too many pairs":  many,
		"too large":       {"a": strings.Repeat("v", 10000), "b": strings.Repeat("v", 10000)},
		"value over 64 K": {"a": strings.Repeat("v", 70000)},
	} {
		var out bytes.Buffer
		_, err := (&Encrypter{KEKs: []kms.KEK{ck}, Context: c}).NewWriter(t.Context(), &out, 0)
		if !errors.Is(err, ErrInvalidHeader) {
			t.Errorf("%s: %v, want ErrInvalidHeader", name, err)
		}
		if out.Len() != 0 {
			t.Errorf("%s: %d bytes written", name, out.Len())
		}
	}
	if ck.calls() != 0 {
		t.Errorf("the KEK was called %d times for invalid contexts", ck.calls())
	}
}

func TestEncrypterErrors(t *testing.T) {
	ctx := t.Context()
	k := newLocalKEK(t, "kek")
	ck := &countingKEK{KEK: k}
	var many []kms.KEK
	for i := range MaxSlots + 1 {
		many = append(many, &countingKEK{KEK: k, uri: fmt.Sprintf("local:/k%d.json", i)})
	}
	cases := map[string]*Encrypter{
		"no KEK":               {},
		"33 KEKs":              {KEKs: many},
		"KEK twice":            {KEKs: []kms.KEK{ck, k}},
		"table too small":      {KEKs: []kms.KEK{ck}, SlotTableSize: MinSlotTableSize - 1},
		"table too large":      {KEKs: []kms.KEK{ck}, SlotTableSize: MaxSlotTableSize + 1},
		"chunk size too small": {KEKs: []kms.KEK{ck}, ChunkSize: stream.MinChunkSize - 1},
		"chunk size too large": {KEKs: []kms.KEK{ck}, ChunkSize: stream.MaxChunkSize + 1},
	}
	for name, e := range cases {
		var out bytes.Buffer
		if _, err := e.NewWriter(ctx, &out, 10); err == nil {
			t.Errorf("%s: no error", name)
		}
		if out.Len() != 0 {
			t.Errorf("%s: wrote %d bytes", name, out.Len())
		}
	}
	for _, c := range many {
		if c.(*countingKEK).calls() != 0 {
			t.Error("a KEK was called by an Encrypter with too many KEKs")
		}
	}
	// Too long for the chunk counter: refused before anything is written.
	var out bytes.Buffer
	if _, err := (&Encrypter{KEKs: []kms.KEK{ck}, ChunkSize: stream.MinChunkSize}).NewWriter(ctx, &out, int64(stream.MinChunkSize)<<32); !errors.Is(err, stream.ErrTooLong) || out.Len() != 0 {
		t.Errorf("oversized plaintext: %v, %d bytes written", err, out.Len())
	}
	if ck.calls() != 0 {
		t.Errorf("the KEK was called %d times by refused Encrypters", ck.calls())
	}
	// Slots that do not fit the table.
	three := []kms.KEK{newLocalKEK(t, "a"), newLocalKEK(t, "b"), newLocalKEK(t, "c")}
	if _, err := (&Encrypter{KEKs: three, SlotTableSize: MinSlotTableSize}).Seal(ctx, nil); !errors.Is(err, ErrSlotTableFull) {
		t.Errorf("three slots in %d bytes: %v, want ErrSlotTableFull", MinSlotTableSize, err)
	}
	// A larger table holds them.
	ct, err := (&Encrypter{KEKs: three, SlotTableSize: 4 * MinSlotTableSize}).Seal(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if h := mustInspect(t, ct); h.SlotTableSize != 4*MinSlotTableSize || len(h.Slots) != 3 {
		t.Errorf("header %+v", h)
	}
	// A Decrypter without a keyring fails cleanly.
	if _, err := (&Decrypter{}).Open(ctx, ct); err == nil {
		t.Error("Decrypter without a keyring opened a file")
	}
}

// One Encrypter and one keyring serve many goroutines (run with -race).
func TestConcurrentUse(t *testing.T) {
	ctx := t.Context()
	k1, k2 := newLocalKEK(t, "a"), newLocalKEK(t, "b")
	enc := &Encrypter{KEKs: []kms.KEK{k1, k2}, ChunkSize: testChunkSize, Workers: 2, Context: map[string]string{"app": "test"}}
	keyring := KEKs{k2}
	resolving := &ResolvingKeyring{Filter: trustAll, Resolver: kms.Resolver{"local": local.Open}}
	dec := &Decrypter{Keyring: keyring, Workers: 2, Context: map[string]string{"app": "test"}}
	shared := mustSeal(t, enc, testPlaintext(6*testChunkSize))
	sharedPT := testPlaintext(6 * testChunkSize)
	ra, err := dec.NewReaderAt(ctx, bytes.NewReader(shared), int64(len(shared)))
	if err != nil {
		t.Fatal(err)
	}

	const goroutines = 12
	errs := make(chan error, goroutines)
	var wg sync.WaitGroup
	for i := range goroutines {
		wg.Go(func() {
			errs <- func() error {
				pt := testPlaintext(i*1000 + 7)
				ct, err := enc.Seal(ctx, pt)
				if err != nil {
					return err
				}
				for _, d := range []*Decrypter{dec, {Keyring: resolving}} {
					got, err := d.Open(ctx, ct)
					if err != nil {
						return err
					}
					if !bytes.Equal(got, pt) {
						return fmt.Errorf("goroutine %d: wrong plaintext", i)
					}
				}
				buf := make([]byte, 1000)
				off := int64(i * 2000)
				if _, err := ra.ReadAt(buf, off); err != nil {
					return err
				}
				if !bytes.Equal(buf, sharedPT[off:off+1000]) {
					return fmt.Errorf("goroutine %d: wrong ReadAt", i)
				}
				return nil
			}()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }

// I/O errors on either side pass through, wrapped.
func TestIOErrors(t *testing.T) {
	ctx := t.Context()
	k := newLocalKEK(t, "kek")
	ioErr := errors.New("disk on fire")
	pt := testPlaintext(3 * testChunkSize)
	enc := &Encrypter{KEKs: []kms.KEK{k}, ChunkSize: testChunkSize}

	var out bytes.Buffer
	if err := enc.Encrypt(ctx, &out, io.MultiReader(bytes.NewReader(pt), iotest.ErrReader(ioErr))); !errors.Is(err, ioErr) {
		t.Errorf("Encrypt from a failing source: %v", err)
	}
	if err := enc.Encrypt(ctx, failingWriter{ioErr}, bytes.NewReader(pt)); !errors.Is(err, ioErr) {
		t.Errorf("Encrypt to a failing destination: %v", err)
	}
	if _, err := enc.NewWriter(ctx, failingWriter{ioErr}, 10); !errors.Is(err, ioErr) {
		t.Errorf("NewWriter on a failing destination: %v", err)
	}
	if _, err := (&Encrypter{}).Seal(ctx, pt); err == nil {
		t.Error("Seal without a KEK succeeded")
	}

	ct := mustSeal(t, enc, pt)
	if err := Decrypt(ctx, failingWriter{ioErr}, bytes.NewReader(ct), KEKs{k}); !errors.Is(err, ioErr) {
		t.Errorf("Decrypt to a failing destination: %v", err)
	}
	half := io.MultiReader(bytes.NewReader(ct[:len(ct)/2]), iotest.ErrReader(ioErr))
	if err := Decrypt(ctx, io.Discard, half, KEKs{k}); !errors.Is(err, ioErr) {
		t.Errorf("Decrypt from a failing source: %v", err)
	}
	if _, err := NewReader(ctx, iotest.ErrReader(ioErr), KEKs{k}); !errors.Is(err, ioErr) {
		t.Errorf("NewReader on a failing source: %v", err)
	}
}
