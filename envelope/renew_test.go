package envelope

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpcrypt/kpcrypt/kms"
)

// gatedKEK blocks its gate-th Wrap until release is closed or the call's
// context ends; entered is closed when that call begins.
type gatedKEK struct {
	kms.KEK
	gate             int64
	wraps            atomic.Int64
	entered, release chan struct{}
}

func (k *gatedKEK) Wrap(ctx context.Context, dek, aad []byte) (kms.WrappedKey, error) {
	if k.wraps.Add(1) == k.gate {
		close(k.entered)
		select {
		case <-k.release:
		case <-ctx.Done():
			return kms.WrappedKey{}, ctx.Err()
		}
	}
	return k.KEK.Wrap(ctx, dek, aad)
}

func newGatedKEK(t *testing.T, gate int64) *gatedKEK {
	return &gatedKEK{KEK: newLocalKEK(t, "kek"), gate: gate, entered: make(chan struct{}), release: make(chan struct{})}
}

// TestDataKeyReuseWaitHonoursContext: while the first shared DEK is being
// wrapped, a writer with a cancelled context returns ctx.Err() at once,
// without a KMS call, and a live one waits and gets the DEK.
func TestDataKeyReuseWaitHonoursContext(t *testing.T) {
	ctx := context.Background()
	k := newGatedKEK(t, 1)
	e := &Encrypter{KEKs: []kms.KEK{k}, Reuse: &DataKeyReuse{MaxStreams: 4, MaxAge: time.Hour, Ahead: 1}}
	var files [2][]byte
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Go(func() {
		var err error
		files[0], err = e.Seal(ctx, []byte("first"))
		errs <- err
	})
	<-k.entered
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := e.Seal(cancelled, []byte("cancelled")); !errors.Is(err, context.Canceled) {
		t.Fatalf("a writer with a cancelled context waiting for a renewal: %v", err)
	}
	if got := k.wraps.Load(); got != 1 {
		t.Fatalf("%d wraps while the first is in flight, want 1", got)
	}
	wg.Go(func() {
		var err error
		files[1], err = e.Seal(ctx, []byte("second"))
		errs <- err
	})
	close(k.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i, f := range files {
		if _, err := Open(ctx, f, KEKs{k}); err != nil {
			t.Fatalf("file %d: %v", i, err)
		}
	}
	// Both files share the first DEK; the second stream (half of 4)
	// wrapped the next one ahead.
	if got := k.wraps.Load(); got != 2 {
		t.Fatalf("%d wraps, want 2", got)
	}
}

// TestDataKeyReuseRenewsAhead: the next DEK is wrapped once the current one
// is half spent, on the goroutine of the writer that found it so, with no
// lock held: other writers go on with the current DEK meanwhile. Once it is
// spent they wait, honouring their contexts.
func TestDataKeyReuseRenewsAhead(t *testing.T) {
	ctx := context.Background()
	k := newGatedKEK(t, 2)
	e := &Encrypter{KEKs: []kms.KEK{k}, Reuse: &DataKeyReuse{MaxStreams: 4, MaxAge: time.Hour, Ahead: 1}}
	var files [][]byte
	seal := func(ctx context.Context, i int) ([]byte, error) {
		return e.Seal(ctx, fmt.Appendf(nil, "object %d", i))
	}
	f, err := seal(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, f)
	// The second stream finds the DEK half spent and wraps the next one.
	renewer := make(chan error, 1)
	var renewed []byte
	go func() {
		var err error
		renewed, err = seal(ctx, 1)
		renewer <- err
	}()
	<-k.entered
	// The renewal is in flight: the current DEK still serves.
	for i := 2; i < 4; i++ {
		f, err := seal(ctx, i)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	// It is spent: a cancelled writer returns at once.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := seal(cancelled, 4); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled writer waiting for the renewal: %v", err)
	}
	close(k.release)
	if err := <-renewer; err != nil {
		t.Fatal(err)
	}
	files = append(files, renewed)
	// The DEK wrapped ahead serves the next streams.
	for i := 4; i < 6; i++ {
		f, err := seal(ctx, i)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	// The sixth stream is the second of the new DEK: half of 4, so it
	// wrapped another ahead.
	if got := k.wraps.Load(); got != 3 {
		t.Fatalf("%d wraps for 6 streams, want 3", got)
	}
	for i, f := range files {
		if _, err := Open(ctx, f, KEKs{k}); err != nil {
			t.Fatalf("file %d: %v", i, err)
		}
	}
	// ClearDataKey drops the DEK wrapped ahead too.
	e.ClearDataKey()
	if _, err := seal(ctx, 6); err != nil {
		t.Fatal(err)
	}
	if got := k.wraps.Load(); got != 4 {
		t.Fatalf("%d wraps after ClearDataKey, want 4", got)
	}
}

// BenchmarkDataKeyReuseRenewal seals 4 KiB objects on 64 goroutines with
// DataKeyReuse (100 streams per DEK) through a Key Protect with 20 ms of
// latency, and reports the rate as a ratio to MaxStreams ÷ latency
// (x-ceiling), the ceiling of a renewal that stops the writers. The run
// without latency shows what the machine allows.
func BenchmarkDataKeyReuseRenewal(b *testing.B) {
	for _, latency := range []time.Duration{20 * time.Millisecond, 0} {
		for _, ahead := range []int{1, 0} {
			b.Run(fmt.Sprintf("latency=%v/ahead=%d", latency, ahead), func(b *testing.B) { benchRenewal(b, latency, ahead) })
		}
	}
}

func benchRenewal(b *testing.B, latency time.Duration, ahead int) {
	const goroutines, maxStreams = 64, 100
	srv, kek, _ := slowKP(b, latency)
	e := &Encrypter{KEKs: []kms.KEK{kek}, Reuse: &DataKeyReuse{MaxStreams: maxStreams, MaxAge: time.Hour, Ahead: ahead}}
	ctx := context.Background()
	pt := bytes.Repeat([]byte("x"), 4096)
	// Warm up: the first DEK and the connections.
	if _, err := e.Seal(ctx, pt); err != nil {
		b.Fatal(err)
	}
	wraps := srv.Stats().Wrap
	var next atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if _, err := e.Seal(ctx, pt); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	rate := float64(b.N) / elapsed.Seconds()
	b.ReportMetric(rate, "objects/s")
	if latency > 0 {
		b.ReportMetric(rate/(maxStreams/latency.Seconds()), "x-ceiling")
	}
	b.ReportMetric(float64(srv.Stats().Wrap-wraps), "wraps")
}
