package blob

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/blob/memblob"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/envelope/batch"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/keyprotect"
	"github.com/kpcrypt/kpcrypt/kplocal"
)

// kp is a kplocal server and a KEK opener for it.
type kp struct {
	srv    *kplocal.Running
	opener *keyprotect.Opener
}

func startKP(t *testing.T) *kp {
	t.Helper()
	srv, err := kplocal.Start(kplocal.Config{InstanceID: "5e1f6a7b-2c3d-4e5f-8a9b-0c1d2e3f4a5b", APIKey: "blob-test-key"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return &kp{srv: srv, opener: &keyprotect.Opener{Config: keyprotect.Config{
		BaseURL: srv.BaseURL(), IAMURL: srv.BaseURL(), APIKey: "blob-test-key"}}}
}

func (k *kp) kek(t *testing.T, name string) *keyprotect.KEK {
	t.Helper()
	id, err := k.srv.CreateKey(name, true)
	if err != nil {
		t.Fatal(err)
	}
	kek, err := k.opener.Open(context.Background(), k.srv.KeyCRN(id))
	if err != nil {
		t.Fatal(err)
	}
	return kek.(*keyprotect.KEK)
}

// objectHeader returns the header of the object at key.
func objectHeader(t *testing.T, ctx context.Context, b *blob.Bucket, key string) *envelope.Header {
	t.Helper()
	h, err := inspect(ctx, b, key)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// wrappedDEKs returns the distinct (KEK, version, wrapped DEK) of the
// objects' slots.
func wrappedDEKs(t *testing.T, ctx context.Context, b *blob.Bucket, keys []string) map[string]bool {
	t.Helper()
	seen := map[string]bool{}
	for _, key := range keys {
		for _, s := range objectHeader(t, ctx, b, key).Slots {
			seen[s.KEK+" "+s.KeyVersion+" "+s.Fingerprint] = true
		}
	}
	return seen
}

// TestRewrapAllSharedDEKs writes 50 detached objects with data-key reuse
// under two KEKs, an attached object, a file that is not kpcrypt's and an
// object outside the prefix, rotates both KEKs, and rewraps the prefix:
// each distinct wrapped DEK costs one KMS rewrap and each KEK one version
// question, every detached object is rewrapped and opens, and the others
// under the prefix are reported failed, not skipped. ScanAll finds the
// objects outdated before and current after, for a version question per KEK.
func TestRewrapAllSharedDEKs(t *testing.T) {
	ctx := context.Background()
	s3b, _ := s3Bucket(t)
	mem := memblob.OpenBucket(nil)
	t.Cleanup(func() { mem.Close() })
	for name, b := range map[string]*blob.Bucket{"memblob": mem, "s3blob": s3b} {
		t.Run(name, func(t *testing.T) {
			env := startKP(t)
			k1, k2 := env.kek(t, "bucket-a"), env.kek(t, "bucket-b")
			const perKEK, perDEK = 25, 5
			want := map[string][]byte{}
			var keys []string
			for j, k := range []*keyprotect.KEK{k1, k2} {
				e := &envelope.Encrypter{KEKs: []kms.KEK{k}, ChunkSize: 4096, Context: map[string]string{"tenant": "t"},
					Reuse: &envelope.DataKeyReuse{MaxStreams: perDEK, MaxAge: time.Hour}}
				for i := range perKEK {
					key := fmt.Sprintf("day/%d/part-%03d", j, i)
					p := plaintext(5000+i, uint64(100*j+i))
					put(t, ctx, b, key, e, p, true)
					want[key] = p
					keys = append(keys, key)
				}
			}
			attached := &envelope.Encrypter{KEKs: []kms.KEK{k1}, ChunkSize: 4096}
			put(t, ctx, b, "day/attached", attached, []byte("attached"), false)
			if err := b.WriteAll(ctx, "day/notes.txt", []byte("not a kpcrypt file"), nil); err != nil {
				t.Fatal(err)
			}
			put(t, ctx, b, "other/part", attached, []byte("outside the prefix"), true)

			before := wrappedDEKs(t, ctx, b, keys)
			deks := len(before)
			if deks != 2*perKEK/perDEK {
				t.Fatalf("%d distinct wrapped DEKs, want %d", deks, 2*perKEK/perDEK)
			}
			for _, k := range []*keyprotect.KEK{k1, k2} {
				if _, err := k.Rotate(ctx); err != nil {
					t.Fatal(err)
				}
			}

			// The scan finds every object under the prefix outdated, for
			// one version question per KEK, and the other file unreadable.
			env.srv.ResetStats()
			scan := func() map[string]batch.ScanResult {
				t.Helper()
				res, err := ScanAll(ctx, b, "day/", &batch.ScanOptions{Versions: batch.NewVersions(envelope.KEKs{k1, k2}), Jobs: 4})
				if err != nil || len(res) != len(keys)+2 {
					t.Fatalf("ScanAll: %d results, %v", len(res), err)
				}
				m := map[string]batch.ScanResult{}
				for _, r := range res {
					m[r.Path] = r
				}
				if r := m["day/notes.txt"]; !errors.Is(r.Err, envelope.ErrInvalidHeader) {
					t.Fatalf("scan of day/notes.txt: %v", r.Err)
				}
				if r := m["day/attached"]; !r.Complete() || !r.Outdated() {
					t.Fatalf("scan of day/attached: complete %v, outdated %v, %v", r.Complete(), r.Outdated(), r.Err)
				}
				return m
			}
			scanned := scan()
			for _, key := range keys {
				if r := scanned[key]; !r.Complete() || !r.Outdated() {
					t.Fatalf("scan of %s before the rewrap: complete %v, outdated %v, %v", key, r.Complete(), r.Outdated(), r.Err)
				}
			}
			if st := env.srv.Stats(); st.Requests != 2 {
				t.Fatalf("%d KMS calls for a scan, want 2", st.Requests)
			}

			env.srv.ResetStats()
			var done int
			results, err := RewrapAll(ctx, b, "day/", &RewrapAllOptions{
				Options: envelope.RewrapOptions{Keyring: envelope.KEKs{k1, k2}}, Jobs: 4,
				Done: func(batch.Result) { done++ }})
			if err != nil {
				t.Fatal(err)
			}
			st := env.srv.Stats()
			t.Logf("%s: rewrap of %d objects sharing %d wrapped DEKs under 2 KEKs: %d KMS calls (%d get key, %d rewrap, %d unwrap, %d wrap)",
				name, len(keys), deks, st.Requests, st.Get, st.Rewrap, st.Unwrap, st.Wrap)
			if st.Requests > int64(deks+2) || st.Rewrap != int64(deks) {
				t.Fatalf("%d KMS calls (%d rewraps), want at most %d", st.Requests, st.Rewrap, deks+2)
			}
			if len(results) != len(keys)+2 || done != len(results) {
				t.Fatalf("%d results, Done called %d times; want %d", len(results), done, len(keys)+2)
			}
			for _, r := range results {
				switch r.Path {
				case "day/attached":
					if r.Status != batch.Failed || !errors.Is(r.Err, ErrNotDetached) || r.Rewrap != nil {
						t.Fatalf("%s: %v %v", r.Path, r.Status, r.Err)
					}
				case "day/notes.txt":
					if r.Status != batch.Failed || !errors.Is(r.Err, envelope.ErrInvalidHeader) {
						t.Fatalf("%s: %v %v", r.Path, r.Status, r.Err)
					}
				default:
					if _, ok := want[r.Path]; !ok {
						t.Fatalf("unexpected result for %q", r.Path)
					}
					if r.Status != batch.Rewrapped || r.Err != nil || !r.Rewrap.Changed {
						t.Fatalf("%s: %v %v", r.Path, r.Status, r.Err)
					}
				}
			}
			after := wrappedDEKs(t, ctx, b, keys)
			if len(after) != deks {
				t.Fatalf("%d distinct wrapped DEKs after the rewrap, want %d", len(after), deks)
			}
			for k := range after {
				if before[k] {
					t.Fatalf("slot %s was not rewrapped", k)
				}
			}
			for key, p := range want {
				if got, err := get(ctx, b, key, k1, k2); err != nil || !bytes.Equal(got, p) {
					t.Fatalf("%s after the rewrap: %v", key, err)
				}
				if seqs, err := listHeaders(ctx, b, key); err != nil || len(seqs) != 1 || seqs[0] != 2 {
					t.Fatalf("%s: header objects %v, %v; want [2]", key, seqs, err)
				}
			}
			if seqs, err := listHeaders(ctx, b, "other/part"); err != nil || len(seqs) != 1 || seqs[0] != 1 {
				t.Fatalf("the object outside the prefix was touched: %v, %v", seqs, err)
			}

			scanned = scan()
			for _, key := range keys {
				if r := scanned[key]; !r.Complete() || r.Outdated() {
					t.Fatalf("scan of %s after the rewrap: complete %v, outdated %v, %v", key, r.Complete(), r.Outdated(), r.Err)
				}
			}

			// Again: every detached object is current, for a version
			// question per KEK, and nothing is written.
			env.srv.ResetStats()
			results, err = RewrapAll(ctx, b, "day/", &RewrapAllOptions{
				Options: envelope.RewrapOptions{Keyring: envelope.KEKs{k1, k2}}, Jobs: 4})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range results {
				if _, ok := want[r.Path]; ok && r.Status != batch.Current {
					t.Fatalf("%s: %v %v", r.Path, r.Status, r.Err)
				}
			}
			if st := env.srv.Stats(); st.Requests != 2 {
				t.Fatalf("%d KMS calls to find %d objects current, want 2", st.Requests, len(keys))
			}
			t.Logf("%s: second pass, all current: %d KMS calls", name, env.srv.Stats().Requests)
		})
	}
}

// gate is a KEK whose Rewrap calls are counted in flight: the first n wait
// until n are in flight together, so that a bound of n is reached for sure
// (and one above n would show), then all go through.
type gate struct {
	*keyprotect.KEK
	n        int
	mu       sync.Mutex
	inFlight int
	peak     int
	full     chan struct{}
}

func (g *gate) Rewrap(ctx context.Context, wrapped, aad []byte) (kms.WrappedKey, error) {
	g.mu.Lock()
	g.inFlight++
	g.peak = max(g.peak, g.inFlight)
	if g.inFlight == g.n {
		select {
		case <-g.full:
		default:
			close(g.full)
		}
	}
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.inFlight--
		g.mu.Unlock()
	}()
	select {
	case <-g.full:
	case <-ctx.Done():
		return kms.WrappedKey{}, ctx.Err()
	}
	return g.KEK.Rewrap(ctx, wrapped, aad)
}

// TestRewrapAllJobsBound: with Jobs n, n objects are rewrapped at once and
// never more.
func TestRewrapAllJobsBound(t *testing.T) {
	ctx := context.Background()
	env := startKP(t)
	k := env.kek(t, "jobs")
	b := memblob.OpenBucket(nil)
	t.Cleanup(func() { b.Close() })
	// Per-object DEKs: each object needs a rewrap call of its own.
	e := &envelope.Encrypter{KEKs: []kms.KEK{k}, ChunkSize: 4096}
	const objects, jobs = 16, 3
	for i := range objects {
		put(t, ctx, b, fmt.Sprintf("o/%02d", i), e, plaintext(100, uint64(i)), true)
	}
	if _, err := k.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	g := &gate{KEK: k, n: jobs, full: make(chan struct{})}
	results, err := RewrapAll(ctx, b, "o/", &RewrapAllOptions{Options: envelope.RewrapOptions{Keyring: envelope.KEKs{g}}, Jobs: jobs})
	if err != nil {
		t.Fatal(err)
	}
	if g.peak != jobs {
		t.Fatalf("%d rewraps in flight at most, want %d", g.peak, jobs)
	}
	if len(results) != objects {
		t.Fatalf("%d results for %d objects", len(results), objects)
	}
	for _, r := range results {
		if r.Status != batch.Rewrapped {
			t.Fatalf("%s: %v %v", r.Path, r.Status, r.Err)
		}
	}
	if st := env.srv.Stats(); st.PeakInFlight > jobs {
		t.Fatalf("the KMS saw %d requests in flight, want at most %d", st.PeakInFlight, jobs)
	}
}

// TestRewrapAllCancelled: once ctx is cancelled, the objects not yet done
// fail with its error and are not written to; with nil options (no keyring)
// nothing can be checked, and every object says so.
func TestRewrapAllCancelled(t *testing.T) {
	b := memblob.OpenBucket(nil)
	t.Cleanup(func() { b.Close() })
	a := newKEK(t, "a.json")
	ctx := context.Background()
	e := &envelope.Encrypter{KEKs: []kms.KEK{a}, ChunkSize: 4096}
	for _, key := range []string{"x/0", "x/1", "x/2"} {
		put(t, ctx, b, key, e, []byte(key), true)
	}
	bk := newKEK(t, "b.json")
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// One job: the first object is done, and Done called, before the
	// second starts.
	results, err := RewrapAll(cctx, b, "x/", &RewrapAllOptions{
		Options: envelope.RewrapOptions{Keyring: envelope.KEKs{a}, To: []kms.KEK{bk}}, Jobs: 1,
		Done: func(batch.Result) { cancel() }})
	if err != nil || len(results) != 3 {
		t.Fatalf("RewrapAll: %d results, %v", len(results), err)
	}
	if r := results[0]; r.Path != "x/0" || r.Status != batch.Rewrapped {
		t.Fatalf("%s: %v %v", r.Path, r.Status, r.Err)
	}
	for _, r := range results[1:] {
		if r.Status != batch.Failed || !errors.Is(r.Err, context.Canceled) || r.Rewrap != nil {
			t.Fatalf("%s: %v %v", r.Path, r.Status, r.Err)
		}
		if seqs, err := listHeaders(ctx, b, r.Path); err != nil || len(seqs) != 1 || seqs[0] != 1 {
			t.Fatalf("%s: header objects %v, %v; want [1]", r.Path, seqs, err)
		}
	}

	results, err = RewrapAll(ctx, b, "", nil)
	if err != nil || len(results) != 3 {
		t.Fatalf("RewrapAll: %d results, %v", len(results), err)
	}
	for _, r := range results {
		if r.Status != batch.NotChecked || r.Err != nil {
			t.Fatalf("%s with no keyring: %v %v", r.Path, r.Status, r.Err)
		}
	}
}
