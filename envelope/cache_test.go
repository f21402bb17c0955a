package envelope

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/kpcrypt/kpcrypt/envelope/internal/format"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/keyprotect"
	"github.com/kpcrypt/kpcrypt/kplocal"
)

func slowKP(t testing.TB, latency time.Duration) (*kplocal.Running, kms.KEK, Keyring) {
	t.Helper()
	srv, err := kplocal.Start(kplocal.Config{InstanceID: "c0ffee00-1111-4222-8333-444455556666", APIKey: "cache-test", Latency: latency})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	id, _ := srv.CreateKey("cache-test-key", true)
	opener := &keyprotect.Opener{Config: keyprotect.Config{BaseURL: srv.BaseURL(), IAMURL: srv.BaseURL(), APIKey: "cache-test"}}
	kek, err := opener.Open(context.Background(), srv.KeyCRN(id))
	if err != nil {
		t.Fatal(err)
	}
	return srv, kek, KEKs{kek}
}

// TestDataKeyReuseCutsKMSCalls encrypts 10,000 small objects through a Key
// Protect with 20 ms of latency: with reuse of N streams per DEK, the
// server sees at most 10,000/N wraps; the decrypt side's cache saves the
// unwraps likewise.
func TestDataKeyReuseCutsKMSCalls(t *testing.T) {
	ctx := context.Background()
	srv, kek, keyring := slowKP(t, 20*time.Millisecond)
	const objects, perDEK, workers = 10_000, 500, 8
	e := &Encrypter{KEKs: []kms.KEK{kek}, ChunkSize: 4096, Context: map[string]string{"tenant": "a"},
		Reuse: &DataKeyReuse{MaxStreams: perDEK, MaxAge: time.Hour}}
	blobs := make([][]byte, objects)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < objects; i += workers {
				b, err := e.Seal(ctx, []byte(fmt.Sprintf("record %d of the pipeline", i)))
				if err != nil {
					errs <- err
					return
				}
				blobs[i] = b
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// DEKs wrapped ahead (at most DataKeyReuse.Ahead, 8 by default) may be
	// left unused.
	if got := srv.Stats().Wrap; got > objects/perDEK+8 {
		t.Fatalf("%d wrap calls for %d objects, want at most %d", got, objects, objects/perDEK+8)
	}
	// Every object has its own salt (its own keys) although DEKs are shared.
	salts := map[[32]byte]bool{}
	for _, b := range blobs {
		h, err := format.ReadHeader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		if h.Table().Slots[0].AADRecipe != format.AADRecipeShared {
			t.Fatal("a reused DEK's slot is not of the shared recipe")
		}
		salts[h.Core.Stream.Salt] = true
	}
	if len(salts) != objects {
		t.Fatalf("%d distinct salts for %d objects", len(salts), objects)
	}

	d := &Decrypter{Keyring: keyring, Cache: NewDataKeyCache(100, time.Hour), Context: map[string]string{"tenant": "a"}}
	before := srv.Stats().Unwrap
	var wg2 sync.WaitGroup
	errs = make(chan error, workers)
	for w := range workers {
		wg2.Go(func() {
			for i := w; i < objects; i += workers {
				pt, err := d.Open(ctx, blobs[i])
				if err == nil && string(pt) != fmt.Sprintf("record %d of the pipeline", i) {
					err = errors.New("wrong plaintext")
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg2.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// One unwrap per shared DEK: concurrent misses wait for the first.
	if got := srv.Stats().Unwrap - before; got != objects/perDEK {
		t.Fatalf("%d unwrap calls with a cache, want %d", got, objects/perDEK)
	}
	// A decrypter that requires another tenant refuses, before any KMS call.
	other := &Decrypter{Keyring: keyring, Context: map[string]string{"tenant": "b"}}
	before = srv.Stats().Unwrap
	if _, err := other.Open(ctx, blobs[0]); !errors.Is(err, ErrContextMismatch) || srv.Stats().Unwrap != before {
		t.Fatalf("tenant b opened tenant a's object: %v", err)
	}
}

func TestDataKeyReuseLimits(t *testing.T) {
	ctx := context.Background()
	k := newLocalKEK(t, "kek")
	counting := &countingKEK{KEK: k}
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const ahead = 1
	e := &Encrypter{KEKs: []kms.KEK{counting}, Reuse: &DataKeyReuse{MaxStreams: 4, MaxAge: time.Minute, MaxBytes: 3000, Ahead: ahead},
		now: func() time.Time { return clock }}
	// The DEKs the files use, in order, and the wraps made: the DEKs plus
	// at most Ahead wrapped ahead.
	var used []string
	seal := func(n int) {
		t.Helper()
		b, err := e.Seal(ctx, make([]byte, n))
		if err != nil {
			t.Fatal(err)
		}
		h, err := format.ReadHeader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		if w := string(h.Table().Slots[0].Wrapped); len(used) == 0 || used[len(used)-1] != w {
			used = append(used, w)
		}
	}
	check := func(what string, deks int) {
		t.Helper()
		if len(used) != deks {
			t.Fatalf("%s: %d DEKs, want %d", what, len(used), deks)
		}
		if got := counting.wraps.Load(); got < int64(deks) || got > int64(deks+ahead) {
			t.Fatalf("%s: %d wraps for %d DEKs, want at most %d more", what, got, deks, ahead)
		}
	}
	reset := func() {
		e.ClearDataKey()
		counting.wraps.Store(0)
		used = nil
	}
	// Streams: 4 per DEK.
	for range 8 {
		seal(10)
	}
	check("8 streams at 4 per DEK", 2)
	// Age: a minute after its first stream a DEK is retired.
	reset()
	seal(10)
	clock = clock.Add(time.Minute)
	seal(10)
	check("after the age limit", 2)
	// Bytes: three streams of 1000 fill the 3000 of a DEK; the fourth gets
	// a new one.
	reset()
	for range 4 {
		seal(1000)
	}
	check("4 × 1000 bytes at 3000 bytes per DEK", 2)
	// A stream of unknown size counts when it closes.
	reset()
	var buf bytes.Buffer
	w, _ := e.NewWriter(ctx, &buf, UnknownSize)
	w.Write(make([]byte, 5000))
	w.Close()
	used = append(used, "the stream of unknown size")
	seal(10)
	check("after a 5000-byte stream of unknown size (the bytes limit was passed)", 2)
	// MaxStreams 1 turns reuse off: every stream has its own DEK and slots
	// bound to its file.
	off := &Encrypter{KEKs: []kms.KEK{counting}, Reuse: &DataKeyReuse{MaxStreams: 1}}
	counting.wraps.Store(0)
	for range 3 {
		b, _ := off.Seal(ctx, []byte("x"))
		h, _ := format.ReadHeader(bytes.NewReader(b))
		if h.Table().Slots[0].AADRecipe != format.AADRecipeV1 {
			t.Fatal("MaxStreams 1 still shares DEKs")
		}
	}
	if got := counting.wraps.Load(); got != 3 {
		t.Fatalf("MaxStreams 1: %d wraps for 3 streams", got)
	}
}

func TestSharedSlotsStayBound(t *testing.T) {
	ctx := context.Background()
	k := newLocalKEK(t, "kek")
	e1 := &Encrypter{KEKs: []kms.KEK{k}, Reuse: &DataKeyReuse{}}
	e2 := &Encrypter{KEKs: []kms.KEK{k}, Reuse: &DataKeyReuse{}}
	a, _ := e1.Seal(ctx, []byte("file a"))
	b, _ := e2.Seal(ctx, []byte("file b"))
	// Put b's slot table (another DEK) into a: the KEK unwraps b's DEK, and
	// a's header MAC refuses it.
	pa, pb := split(t, a), split(t, b)
	pa.tables = pb.tables
	if _, err := Open(ctx, pa.join(), KEKs{k}); !errors.Is(err, ErrHeaderAuthentication) {
		t.Fatalf("a shared slot moved to a file of another DEK: %v", err)
	}
	// A shared slot is bound to the context: a file made with another
	// context does not accept it.
	e3 := &Encrypter{KEKs: []kms.KEK{k}, Reuse: &DataKeyReuse{}, Context: map[string]string{"tenant": "x"}}
	c, _ := e3.Seal(ctx, []byte("file c"))
	pc := split(t, c)
	pc.tables = split(t, a).tables
	if _, err := Open(ctx, pc.join(), KEKs{k}); !errors.Is(err, ErrNoKEK) || !errors.Is(err, kms.ErrWrongKey) {
		t.Fatalf("a shared slot moved to a file of another context: %v", err)
	}
	// Rewrap keeps a shared slot's recipe and its binding.
	if got, err := Open(ctx, a, KEKs{k}); err != nil || string(got) != "file a" {
		t.Fatalf("open: %v", err)
	}
}

func TestDataKeyCache(t *testing.T) {
	c := NewDataKeyCache(2, time.Minute)
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c.now = func() time.Time { return clock }
	dek := func(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }
	c.put("u", []byte("w1"), []byte("aad"), dek(1), "v1")
	c.put("u", []byte("w2"), []byte("aad"), dek(2), "v1")
	if got, v, ok := c.get("u", []byte("w1"), []byte("aad")); !ok || !bytes.Equal(got, dek(1)) || v != "v1" {
		t.Fatal("cached DEK not found")
	}
	if _, _, ok := c.get("u", []byte("w1"), []byte("other aad")); ok {
		t.Fatal("a DEK was found under other associated data")
	}
	// w2 is now the least recently used: adding a third evicts and zeroes it.
	el := c.entries[cacheKey("u", []byte("w2"), []byte("aad"))]
	evicted := el.Value.(*cacheEntry).dek
	c.put("u", []byte("w3"), []byte("aad"), dek(3), "v1")
	if _, _, ok := c.get("u", []byte("w2"), []byte("aad")); ok || c.Len() != 2 {
		t.Fatal("the least recently used DEK was not evicted")
	}
	if !bytes.Equal(evicted, make([]byte, 32)) {
		t.Fatal("an evicted DEK was not zeroed")
	}
	// Entries expire.
	clock = clock.Add(time.Minute)
	if _, _, ok := c.get("u", []byte("w1"), []byte("aad")); ok {
		t.Fatal("an expired DEK was served")
	}
	c.Purge()
	if c.Len() != 0 {
		t.Fatal("Purge left entries")
	}
	// The cache hands out copies: clearing one does not clear the cache.
	c.put("u", []byte("w"), nil, dek(9), "")
	got, _, _ := c.get("u", []byte("w"), nil)
	clear(got)
	if again, _, _ := c.get("u", []byte("w"), nil); !bytes.Equal(again, dek(9)) {
		t.Fatal("the cache returned its own buffer")
	}
}

func TestDataKeyCacheSingleFlight(t *testing.T) {
	c := NewDataKeyCache(10, time.Minute)
	ctx := context.Background()
	dek, _, release, err := c.acquire(ctx, "u", []byte("w"), nil)
	if dek != nil || release == nil || err != nil {
		t.Fatalf("first miss: %v %v", dek, err)
	}
	// While the first caller fetches, another waits: here until its
	// context ends.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, rel, err := c.acquire(cancelled, "u", []byte("w"), nil); !errors.Is(err, context.Canceled) || rel != nil {
		t.Fatalf("second caller during the fetch: %v", err)
	}
	got := make(chan []byte)
	go func() {
		d, _, _, _ := c.acquire(ctx, "u", []byte("w"), nil)
		got <- d
	}()
	c.put("u", []byte("w"), nil, bytes.Repeat([]byte{5}, 32), "v")
	release()
	if d := <-got; !bytes.Equal(d, bytes.Repeat([]byte{5}, 32)) {
		t.Fatal("the waiting caller did not get the fetched DEK")
	}
	// A failed fetch lets the next caller try.
	_, _, release, _ = c.acquire(ctx, "u", []byte("other"), nil)
	release()
	if _, _, rel, err := c.acquire(ctx, "u", []byte("other"), nil); rel == nil || err != nil {
		t.Fatal("after a failed fetch the next caller is not the fetcher")
	}
}
