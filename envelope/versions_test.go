package envelope

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/local"
)

// versionCountingKEK counts the version listings of a local KEK.
type versionCountingKEK struct {
	*local.KEK
	lists atomic.Int64
}

func (k *versionCountingKEK) Versions(ctx context.Context) ([]string, error) {
	k.lists.Add(1)
	return k.KEK.Versions(ctx)
}

// TestMinKeyVersionsCachesVersions opens 10,000 files through a DEK cache
// with MinKeyVersions set: the KEK lists its versions once per TTL, not
// once per open; a rotation is noticed at once, and the TTL is honoured.
func TestMinKeyVersionsCachesVersions(t *testing.T) {
	ctx := context.Background()
	k := &versionCountingKEK{KEK: newLocalKEK(t, "kek")}
	v1, _ := k.CurrentVersion(ctx)
	e := &Encrypter{KEKs: []kms.KEK{k}, Reuse: &DataKeyReuse{MaxStreams: 1000, MaxAge: time.Hour}}
	ct, err := e.Seal(ctx, []byte("pipeline record"))
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Unix(1_000_000, 0)
	var clockMu sync.Mutex
	now := func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return clock }
	d := &Decrypter{Keyring: KEKs{k}, MinKeyVersions: map[string]string{k.URI(): v1}, Cache: NewDataKeyCache(0, time.Hour), now: now}

	const opens, workers = 10_000, 8
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < opens; i += workers {
				if got, err := d.Open(ctx, ct); err != nil || !bytes.Equal(got, []byte("pipeline record")) {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := k.lists.Load(); got != 1 {
		t.Fatalf("%d version listings for %d opens, want 1", got, opens)
	}

	// A file under a version newer than the kept list fetches it again.
	v2, err := k.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e.ClearDataKey()
	ct2, err := e.Seal(ctx, []byte("after rotation"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Open(ctx, ct2); err != nil {
		t.Fatalf("a file under the rotated version %s: %v", v2, err)
	}
	if got := k.lists.Load(); got != 2 {
		t.Fatalf("%d version listings after a rotation, want 2", got)
	}
	for range 100 {
		if _, err := d.Open(ctx, ct2); err != nil {
			t.Fatal(err)
		}
	}
	if got := k.lists.Load(); got != 2 {
		t.Fatalf("%d version listings, want still 2", got)
	}
	// Past the TTL the list is fetched again, once.
	clockMu.Lock()
	clock = clock.Add(DefaultVersionsTTL)
	clockMu.Unlock()
	for range 100 {
		if _, err := d.Open(ctx, ct); err != nil {
			t.Fatal(err)
		}
	}
	if got := k.lists.Load(); got != 3 {
		t.Fatalf("%d version listings after the TTL, want 3", got)
	}

	// The retirement still applies to cached opens.
	strict := &Decrypter{Keyring: KEKs{k}, MinKeyVersions: map[string]string{k.URI(): v2}, Cache: d.Cache}
	for range 3 {
		if _, err := strict.Open(ctx, ct); !errors.Is(err, ErrKeyVersionRetired) {
			t.Fatalf("a slot under retired version %s opened: %v", v1, err)
		}
	}
	// A negative TTL lists the versions at every open.
	every := &Decrypter{Keyring: KEKs{k}, MinKeyVersions: map[string]string{k.URI(): v1}, VersionsTTL: -1}
	before := k.lists.Load()
	for range 3 {
		if _, err := every.Open(ctx, ct); err != nil {
			t.Fatal(err)
		}
	}
	if got := k.lists.Load() - before; got != 3 {
		t.Fatalf("%d version listings for 3 opens without a cache, want 3", got)
	}
}

// TestMinKeyVersionsWaitHonoursContext: a caller waiting for another's
// version listing returns when its context ends.
func TestMinKeyVersionsWaitHonoursContext(t *testing.T) {
	ctx := context.Background()
	k := &blockingVersionsKEK{KEK: newLocalKEK(t, "kek"), entered: make(chan struct{}), release: make(chan struct{})}
	v1, _ := k.CurrentVersion(ctx)
	ct, err := Seal(ctx, []byte("x"), k)
	if err != nil {
		t.Fatal(err)
	}
	d := &Decrypter{Keyring: KEKs{k}, MinKeyVersions: map[string]string{k.URI(): v1}}
	first := make(chan error, 1)
	go func() { _, err := d.Open(ctx, ct); first <- err }()
	<-k.entered
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := d.Open(cctx, ct); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled open waiting for the version list: %v", err)
	}
	close(k.release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
}

type blockingVersionsKEK struct {
	*local.KEK
	entered, release chan struct{}
	once             sync.Once
}

func (k *blockingVersionsKEK) Versions(ctx context.Context) ([]string, error) {
	k.once.Do(func() { close(k.entered) })
	<-k.release
	return k.KEK.Versions(ctx)
}
