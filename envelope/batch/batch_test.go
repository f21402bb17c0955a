package batch_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

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
	srv, err := kplocal.Start(kplocal.Config{InstanceID: "5e1f6a7b-2c3d-4e5f-8a9b-0c1d2e3f4a5b", APIKey: "batch-test-key"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return &kp{srv: srv, opener: &keyprotect.Opener{Config: keyprotect.Config{
		BaseURL: srv.BaseURL(), IAMURL: srv.BaseURL(), APIKey: "batch-test-key"}}}
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

// kmsCalls counts the KMS API requests (tokens aside).
func (k *kp) kmsCalls() int64 { return k.srv.Stats().Requests }

// writeFiles seals n small files into dir/sub<i%7>/name-<i> with e.
func writeFiles(t *testing.T, e *envelope.Encrypter, dir, name string, n int) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for i := range n {
		pt := fmt.Appendf(nil, "%s record %d", name, i)
		ct, err := e.Seal(context.Background(), pt)
		if err != nil {
			t.Fatal(err)
		}
		sub := filepath.Join(dir, fmt.Sprintf("sub%d", i%7))
		os.MkdirAll(sub, 0o755)
		path := filepath.Join(sub, fmt.Sprintf("%s-%d.kpc", name, i))
		if err := os.WriteFile(path, ct, 0o600); err != nil {
			t.Fatal(err)
		}
		out[path] = pt
	}
	return out
}

// wrappedDEKs returns the distinct (KEK, wrapped DEK fingerprint) pairs of
// the files' slots.
func wrappedDEKs(t *testing.T, paths map[string][]byte) map[string]bool {
	t.Helper()
	seen := map[string]bool{}
	for path := range paths {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		h, err := envelope.Inspect(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range h.Slots {
			if len(s.Fingerprint) != 16 {
				t.Fatalf("fingerprint %q", s.Fingerprint)
			}
			seen[s.KEK+" "+s.KeyVersion+" "+s.Fingerprint] = true
		}
	}
	return seen
}

// TestRewrapSharedDEKs rewraps 1,000 files written with data-key reuse
// under two KEKs, both rotated: each distinct wrapped DEK is rewrapped
// once and each KEK asked its version once, the rewrapped slot goes into
// every file that shared it, and a reader with a DataKeyCache then unwraps
// each DEK once.
func TestRewrapSharedDEKs(t *testing.T) {
	ctx := context.Background()
	env := startKP(t)
	k1, k2 := env.kek(t, "batch-a"), env.kek(t, "batch-b")
	dir := t.TempDir()
	const perKEK, perDEK = 500, 25
	files := map[string][]byte{}
	for _, k := range []*keyprotect.KEK{k1, k2} {
		e := &envelope.Encrypter{KEKs: []kms.KEK{k}, ChunkSize: 4096, Context: map[string]string{"tenant": "t"},
			Reuse: &envelope.DataKeyReuse{MaxStreams: perDEK, MaxAge: time.Hour}}
		for p, pt := range writeFiles(t, e, dir, k.KeyID()[:8], perKEK) {
			files[p] = pt
		}
	}
	before := wrappedDEKs(t, files)
	deks := len(before)
	if deks != 2*perKEK/perDEK {
		t.Fatalf("%d distinct wrapped DEKs, want %d", deks, 2*perKEK/perDEK)
	}
	for _, k := range []*keyprotect.KEK{k1, k2} {
		if _, err := k.Rotate(ctx); err != nil {
			t.Fatal(err)
		}
	}

	walk, err := batch.Walk([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	defer walk.Close()
	if walk.Len() != len(files) {
		t.Fatalf("walk found %d files, want %d", walk.Len(), len(files))
	}
	env.srv.ResetStats()
	results := batch.Rewrap(ctx, walk, &batch.RewrapOptions{Options: envelope.RewrapOptions{Keyring: envelope.KEKs{k1, k2}}, Jobs: 8})
	st := env.srv.Stats()
	t.Logf("rewrap of %d files sharing %d wrapped DEKs under 2 KEKs: %d KMS calls (%d get key, %d rewrap, %d unwrap, %d wrap)",
		len(files), deks, st.Requests, st.Get, st.Rewrap, st.Unwrap, st.Wrap)
	if st.Requests > int64(deks+2) || st.Rewrap != int64(deks) || st.Get != 2 {
		t.Fatalf("%d KMS calls (%d rewraps, %d get key), want at most %d", st.Requests, st.Rewrap, st.Get, deks+2)
	}
	for _, r := range results {
		if r.Status != batch.Rewrapped || r.Err != nil || !r.Rewrap.Changed || !r.Rewrap.Slots[0].ServerSide {
			t.Fatalf("%s: %v %v", r.Path, r.Status, r.Err)
		}
	}
	after := wrappedDEKs(t, files)
	if len(after) != deks {
		t.Fatalf("%d distinct wrapped DEKs after the rewrap, want %d", len(after), deks)
	}
	for k := range after {
		if before[k] {
			t.Fatalf("slot %s was not rewrapped", k)
		}
	}

	// A reader with a cache unwraps each shared DEK once.
	env.srv.ResetStats()
	d := &envelope.Decrypter{Keyring: envelope.KEKs{k1, k2}, Cache: envelope.NewDataKeyCache(2*deks, time.Hour)}
	for p, want := range files {
		ct, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		got, err := d.Open(ctx, ct)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: %v", p, err)
		}
	}
	if st := env.srv.Stats(); st.Unwrap > int64(deks) {
		t.Fatalf("%d unwraps to read %d files sharing %d DEKs", st.Unwrap, len(files), deks)
	} else {
		t.Logf("reading them back with a DataKeyCache: %d unwraps", st.Unwrap)
	}

	// Again: every file is current, for a version question per KEK.
	env.srv.ResetStats()
	for _, r := range batch.Rewrap(ctx, walk, &batch.RewrapOptions{Options: envelope.RewrapOptions{Keyring: envelope.KEKs{k1, k2}}, Jobs: 8}) {
		if r.Status != batch.Current {
			t.Fatalf("%s: %v %v", r.Path, r.Status, r.Err)
		}
	}
	if st := env.srv.Stats(); st.Requests != 2 {
		t.Fatalf("%d KMS calls to find %d files current, want 2", st.Requests, len(files))
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

// TestRewrapJobsBound: with Jobs n, n files are rewrapped at once and
// never more.
func TestRewrapJobsBound(t *testing.T) {
	ctx := context.Background()
	env := startKP(t)
	k := env.kek(t, "jobs")
	dir := t.TempDir()
	// Per-file DEKs: each file needs a rewrap call of its own.
	files := writeFiles(t, &envelope.Encrypter{KEKs: []kms.KEK{k}, ChunkSize: 4096}, dir, "f", 24)
	if _, err := k.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	const jobs = 3
	g := &gate{KEK: k, n: jobs, full: make(chan struct{})}
	walk, err := batch.Walk([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	defer walk.Close()
	var done int
	results := batch.Rewrap(ctx, walk, &batch.RewrapOptions{Options: envelope.RewrapOptions{Keyring: envelope.KEKs{g}}, Jobs: jobs,
		Done: func(batch.Result) { done++ }})
	if g.peak != jobs {
		t.Fatalf("%d rewraps in flight at most, want %d", g.peak, jobs)
	}
	if done != len(files) {
		t.Fatalf("Done called %d times for %d files", done, len(files))
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

// TestRewrapResults: each file gets a result that says what happened to
// it, in the walk's order.
func TestRewrapResults(t *testing.T) {
	ctx := context.Background()
	env := startKP(t)
	k, other := env.kek(t, "results"), env.kek(t, "other")
	dir := t.TempDir()
	seal := func(name string, keks ...kms.KEK) string {
		ct, err := (&envelope.Encrypter{KEKs: keks, ChunkSize: 4096}).Seal(ctx, []byte(name))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		os.WriteFile(p, ct, 0o600)
		return p
	}
	outdated := seal("a-outdated", k)
	if _, err := k.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	current := seal("b-current", k)
	unchecked := seal("c-unchecked", other)
	broken := filepath.Join(dir, "d-broken")
	os.WriteFile(broken, []byte("KPCF and then nothing a header needs"), 0o600)
	os.WriteFile(filepath.Join(dir, "e-plain"), []byte("not a kpcrypt file"), 0o600)
	os.WriteFile(filepath.Join(dir, ".f.kpcrypt-tmp-0123456789abcdef"), []byte("KPCF"), 0o600)

	walk, err := batch.Walk([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	defer walk.Close()
	if walk.NotKpcrypt != 1 || walk.Temporary != 1 || len(walk.Unreadable) != 0 {
		t.Fatalf("walk: %d not kpcrypt, %d temporary, %v unreadable", walk.NotKpcrypt, walk.Temporary, walk.Unreadable)
	}
	results := batch.Rewrap(ctx, walk, &batch.RewrapOptions{Options: envelope.RewrapOptions{Keyring: envelope.KEKs{k}}, Jobs: 2})
	want := []struct {
		path   string
		status batch.Status
	}{{outdated, batch.Rewrapped}, {current, batch.Current}, {unchecked, batch.NotChecked}, {broken, batch.Failed}}
	if len(results) != len(want) {
		t.Fatalf("%d results, want %d", len(results), len(want))
	}
	for i, w := range want {
		r := results[i]
		if r.Path != w.path || r.Status != w.status || (r.Err != nil) != (w.status == batch.Failed) {
			t.Errorf("result %d: %s %v %v, want %s %v", i, r.Path, r.Status, r.Err, w.path, w.status)
		}
	}

	// Scan sees the same: after the rewrap, nothing outdated; the slot of
	// a KEK the keyring lacks is not checked.
	sr := batch.Scan(ctx, walk, &batch.ScanOptions{Versions: batch.NewVersions(envelope.KEKs{k}), Jobs: 2})
	for i, r := range sr {
		switch {
		case i == 2:
			if r.Complete() || !errors.Is(r.Slots[0].Err, batch.ErrNoKEK) {
				t.Errorf("%s: %+v", r.Path, r)
			}
		case i == 3:
			if r.Err == nil {
				t.Errorf("%s: no error", r.Path)
			}
		case r.Outdated() || !r.Complete():
			t.Errorf("%s: %+v", r.Path, r)
		}
	}

	// A file swapped after the walk is not touched.
	os.Rename(current, current+".old")
	os.WriteFile(current, []byte("KPCF swapped in"), 0o600)
	r := batch.Rewrap(ctx, walk, &batch.RewrapOptions{Options: envelope.RewrapOptions{Keyring: envelope.KEKs{k}}})[1]
	if r.Status != batch.Failed || !errors.Is(r.Err, batch.ErrChangedDuringWalk) {
		t.Fatalf("swapped file: %v %v", r.Status, r.Err)
	}
}

// TestAtomicFile: nothing is at the target before Commit, and nothing
// after Abort.
func TestAtomicFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "out")
	f, err := batch.CreateAtomic(p, 0o600, false)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("data"))
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("target before Commit: %v", err)
	}
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	f.Abort()
	if b, _ := os.ReadFile(p); string(b) != "data" {
		t.Fatalf("target holds %q", b)
	}
	if _, err := batch.CreateAtomic(p, 0o600, false); !errors.Is(err, batch.ErrExists) {
		t.Fatalf("CreateAtomic over a file: %v", err)
	}
	g, err := batch.CreateAtomic(p, 0o600, true)
	if err != nil {
		t.Fatal(err)
	}
	g.Write([]byte("other"))
	g.Abort()
	if b, _ := os.ReadFile(p); string(b) != "data" {
		t.Fatalf("target after Abort holds %q", b)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("%d entries left in the directory", len(entries))
	}
}
