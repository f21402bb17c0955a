package envelope

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

	"github.com/kpcrypt/kpcrypt/envelope/internal/format"
	"github.com/kpcrypt/kpcrypt/internal/filelock"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/keyprotect"
	"github.com/kpcrypt/kpcrypt/kms/local"
	"github.com/kpcrypt/kpcrypt/kplocal"
)

// kpEnv is a kplocal server with no rotation limit and a KEK opener for it.
type kpEnv struct {
	srv    *kplocal.Running
	opener *keyprotect.Opener
}

func startKP(t *testing.T) *kpEnv {
	t.Helper()
	srv, err := kplocal.Start(kplocal.Config{InstanceID: "0b6f2f4e-8f57-4a3c-a4f0-6c2a1f0d9e11", APIKey: "rewrap-test-key"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return &kpEnv{srv: srv, opener: &keyprotect.Opener{Config: keyprotect.Config{
		BaseURL: srv.BaseURL(), IAMURL: srv.BaseURL(), APIKey: "rewrap-test-key"}}}
}

func (e *kpEnv) kek(t *testing.T, name string) *keyprotect.KEK {
	t.Helper()
	id, err := e.srv.CreateKey(name, true)
	if err != nil {
		t.Fatal(err)
	}
	k, err := e.opener.Open(context.Background(), e.srv.KeyCRN(id))
	if err != nil {
		t.Fatal(err)
	}
	return k.(*keyprotect.KEK)
}

func (e *kpEnv) keyring() *ResolvingKeyring {
	return &ResolvingKeyring{Filter: trustAll, Resolver: kms.Resolver{keyprotect.Scheme: e.opener.Open, local.Scheme: local.Open}}
}

// encryptFile writes a file of n bytes encrypted under keks and returns its
// path and plaintext.
func encryptFile(t *testing.T, dir, name string, n int, keks ...kms.KEK) (string, []byte) {
	t.Helper()
	pt := testPlaintext(n)
	// The default room of a large file, for the slots the tests add.
	ct, err := (&Encrypter{KEKs: keks, ChunkSize: 4096, SlotTableSize: DefaultSlotTableSize}).Seal(context.Background(), pt)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, ct, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, pt
}

func mustDecrypt(t *testing.T, path string, want []byte, keyring Keyring) *OpenedSlot {
	t.Helper()
	ct, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewReader(context.Background(), bytes.NewReader(ct), keyring)
	if err != nil {
		t.Fatalf("%s: %v", filepath.Base(path), err)
	}
	defer r.Close()
	var got bytes.Buffer
	if _, err := got.ReadFrom(r); err != nil || !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("%s: decrypt: %v", filepath.Base(path), err)
	}
	s := r.Slot()
	return &s
}

func slotVersions(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h, err := Inspect(f)
	if err != nil {
		t.Fatal(err)
	}
	var vs []string
	for _, s := range h.Slots {
		vs = append(vs, s.KEK+"@"+s.KeyVersion)
	}
	return vs
}

// body returns the file's bytes after its header.
func body(t *testing.T, path string) []byte {
	t.Helper()
	b, _ := os.ReadFile(path)
	h, err := Inspect(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return b[h.HeaderSize:]
}

func TestRewrapAfterKeyProtectRotations(t *testing.T) {
	ctx := context.Background()
	kp := startKP(t)
	kek := kp.kek(t, "files")
	dir := t.TempDir()
	var paths []string
	var pts [][]byte
	for i := range 3 {
		p, pt := encryptFile(t, dir, fmt.Sprintf("f%d.kpc", i), 10_000+i*5000, kek)
		paths, pts = append(paths, p), append(pts, pt)
	}
	bodies := make([][]byte, len(paths))
	for i, p := range paths {
		bodies[i] = body(t, p)
	}
	v1, _ := kek.CurrentVersion(ctx)
	for range 2 {
		if _, err := kek.Rotate(ctx); err != nil {
			t.Fatal(err)
		}
	}
	v3, _ := kek.CurrentVersion(ctx)
	// Old files still decrypt, and the reader hands back a newer wrapping.
	for i, p := range paths {
		s := mustDecrypt(t, p, pts[i], kp.keyring())
		if s.KeyVersion != v1 || s.Rewrapped == nil || s.Rewrapped.KeyVersion != v3 {
			t.Fatalf("%s: slot %+v", p, s)
		}
	}

	// Rewrap every file: on the server side, never unwrapping.
	before := kp.srv.Stats()
	for i, p := range paths {
		res, err := RewrapPath(ctx, p, &RewrapOptions{Keyring: kp.keyring()})
		if err != nil {
			t.Fatal(err)
		}
		c := res.Slots[0]
		if !res.Changed || c.Action != "rewrapped" || !c.ServerSide || c.OldVersion != v1 || c.NewVersion != v3 || res.Sequence != 2 {
			t.Fatalf("rewrap %s: %+v", p, res)
		}
		if !bytes.Equal(body(t, p), bodies[i]) {
			t.Fatalf("%s: the body changed", p)
		}
		if s := mustDecrypt(t, p, pts[i], kp.keyring()); s.KeyVersion != v3 || s.Rewrapped != nil {
			t.Fatalf("%s after rewrap: %+v", p, s)
		}
	}
	after := kp.srv.Stats()
	if after.Rewrap-before.Rewrap != 3 || after.Unwrap-before.Unwrap != 3 || after.Wrap != before.Wrap {
		// 3 unwraps are the decrypt checks above; the rewraps unwrapped nothing.
		t.Fatalf("KMS calls during rewrap: %d rewraps, %d unwraps, %d wraps", after.Rewrap-before.Rewrap, after.Unwrap-before.Unwrap, after.Wrap-before.Wrap)
	}

	// Idempotent: no KMS write call and no file write the second time.
	before = kp.srv.Stats()
	for _, p := range paths {
		info, _ := os.Stat(p)
		old, _ := os.ReadFile(p)
		res, err := RewrapPath(ctx, p, &RewrapOptions{Keyring: kp.keyring()})
		if err != nil || res.Changed || res.Slots[0].Action != "current" {
			t.Fatalf("second rewrap: %v %+v", err, res)
		}
		now, _ := os.ReadFile(p)
		info2, _ := os.Stat(p)
		if !bytes.Equal(old, now) || !info.ModTime().Equal(info2.ModTime()) {
			t.Fatal("an already current file was written")
		}
	}
	after = kp.srv.Stats()
	if after.Rewrap != before.Rewrap || after.Wrap != before.Wrap || after.Unwrap != before.Unwrap || after.Rotate != before.Rotate {
		t.Fatal("an already current file cost a KMS write call")
	}
}

func TestRewrapLocalAndDryRun(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	k := newLocalKEK(t, "kek")
	p, pt := encryptFile(t, dir, "f.kpc", 50_000, k)
	old, _ := os.ReadFile(p)
	v2, _ := k.Rotate(ctx)
	keyring := KEKs{k}

	res, err := RewrapPath(ctx, p, &RewrapOptions{Keyring: keyring, DryRun: true})
	if err != nil || !res.Changed || res.Slots[0].NewVersion != v2 || res.Slots[0].ServerSide {
		t.Fatalf("dry run: %v %+v", err, res)
	}
	if now, _ := os.ReadFile(p); !bytes.Equal(now, old) {
		t.Fatal("a dry run wrote the file")
	}
	res, err = RewrapPath(ctx, p, &RewrapOptions{Keyring: keyring})
	if err != nil || !res.Changed || res.Slots[0].ServerSide {
		t.Fatalf("rewrap: %v %+v", err, res)
	}
	if s := mustDecrypt(t, p, pt, keyring); s.KeyVersion != v2 {
		t.Fatalf("version after rewrap %q, want %q", s.KeyVersion, v2)
	}
}

// TestRewrapFile: RewrapFile rewraps an open file, leaves it open and
// releases its lock.
func TestRewrapFile(t *testing.T) {
	ctx := context.Background()
	k := newLocalKEK(t, "kek")
	p, pt := encryptFile(t, t.TempDir(), "f.kpc", 20_000, k)
	v2, _ := k.Rotate(ctx)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := RewrapFile(ctx, f, &RewrapOptions{Keyring: KEKs{k}})
	if err != nil || !res.Changed || res.Slots[0].NewVersion != v2 {
		t.Fatalf("RewrapFile: %v %+v", err, res)
	}
	if s := mustDecrypt(t, p, pt, KEKs{k}); s.KeyVersion != v2 {
		t.Fatalf("version after rewrap %q, want %q", s.KeyVersion, v2)
	}
	if _, err := f.Stat(); err != nil {
		t.Fatalf("RewrapFile closed the file: %v", err)
	}
	// Unlocked: another open file description takes the lock at once.
	g, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if ok, err := filelock.TryLock(g, true); !ok || err != nil {
		t.Fatalf("the file is still locked after RewrapFile: %v", err)
	}
	filelock.Unlock(g)
	// A file opened read-only cannot be rewrapped.
	if _, err := RewrapFile(ctx, g, &RewrapOptions{Keyring: KEKs{k}, Remove: []string{"none"}, Add: []kms.KEK{newLocalKEK(t, "other")}}); err == nil {
		t.Fatal("RewrapFile wrote through a read-only file")
	}
}

func TestMinKeyVersion(t *testing.T) {
	ctx := context.Background()
	k := newLocalKEK(t, "kek")
	v1, _ := k.CurrentVersion(ctx)
	path, pt := encryptFile(t, t.TempDir(), "f.kpc", 1000, k)
	v2, _ := k.Rotate(ctx)
	ct, _ := os.ReadFile(path)
	strict := &Decrypter{Keyring: KEKs{k}, MinKeyVersions: map[string]string{k.URI(): v2}}
	_, err := strict.Open(ctx, ct)
	if !errors.Is(err, ErrKeyVersionRetired) || !errors.Is(err, ErrNoKEK) {
		t.Fatalf("slot under retired version %s: %v", v1, err)
	}
	lenient := &Decrypter{Keyring: KEKs{k}, MinKeyVersions: map[string]string{k.URI(): v1}}
	if got, err := lenient.Open(ctx, ct); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("minimum at the slot's version: %v", err)
	}
	if _, err := RewrapPath(ctx, path, &RewrapOptions{Keyring: KEKs{k}}); err != nil {
		t.Fatal(err)
	}
	ct, _ = os.ReadFile(path)
	if got, err := strict.Open(ctx, ct); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("after rewrap under the minimum: %v", err)
	}
}

func TestMigrateAddRemove(t *testing.T) {
	ctx := context.Background()
	kp := startKP(t)
	kpA, kpB := kp.kek(t, "key-a"), kp.kek(t, "key-b")
	loc := newLocalKEK(t, "local")
	dir := t.TempDir()
	keyring := &ResolvingKeyring{Filter: trustAll, KEKs: KEKs{loc}, Resolver: kp.keyring().Resolver}

	// local → Key Protect.
	p, pt := encryptFile(t, dir, "f.kpc", 30_000, loc)
	bodyBefore := body(t, p)
	res, err := RewrapPath(ctx, p, &RewrapOptions{Keyring: keyring, To: []kms.KEK{kpA}})
	if err != nil || !res.Changed {
		t.Fatalf("migrate: %v %+v", err, res)
	}
	if vs := slotVersions(t, p); len(vs) != 1 || vs[0] != kpA.URI()+"@"+mustVersion(t, kpA) {
		t.Fatalf("slots after migration: %v", vs)
	}
	if _, err := Open(ctx, mustRead(t, p), KEKs{loc}); !errors.Is(err, ErrNoKEK) {
		t.Fatalf("the local KEK still opens the migrated file: %v", err)
	}
	mustDecrypt(t, p, pt, KEKs{kpA})
	if !bytes.Equal(body(t, p), bodyBefore) {
		t.Fatal("migration changed the body")
	}

	// Key Protect key A → key B.
	if _, err := RewrapPath(ctx, p, &RewrapOptions{Keyring: keyring, To: []kms.KEK{kpB}}); err != nil {
		t.Fatal(err)
	}
	mustDecrypt(t, p, pt, KEKs{kpB})
	if _, err := Open(ctx, mustRead(t, p), KEKs{kpA}); !errors.Is(err, ErrNoKEK) {
		t.Fatalf("key A still opens the file: %v", err)
	}

	// Add a slot, remove one, never the last.
	if _, err := RewrapPath(ctx, p, &RewrapOptions{Keyring: keyring, Add: []kms.KEK{loc}}); err != nil {
		t.Fatal(err)
	}
	if vs := slotVersions(t, p); len(vs) != 2 {
		t.Fatalf("slots after add: %v", vs)
	}
	mustDecrypt(t, p, pt, KEKs{loc})
	res, err = RewrapPath(ctx, p, &RewrapOptions{Keyring: keyring, Add: []kms.KEK{loc}})
	if err != nil || res.Changed {
		t.Fatalf("adding a KEK twice: %v %+v", err, res)
	}
	if _, err := RewrapPath(ctx, p, &RewrapOptions{Keyring: keyring, Remove: []string{kpB.URI()}}); err != nil {
		t.Fatal(err)
	}
	if vs := slotVersions(t, p); len(vs) != 1 || vs[0] != loc.URI()+"@"+mustVersion(t, loc) {
		t.Fatalf("slots after remove: %v", vs)
	}
	if _, err := Open(ctx, mustRead(t, p), KEKs{kpB}); !errors.Is(err, ErrNoKEK) {
		t.Fatal("a removed KEK still opens the file")
	}
	// Neither table copy keeps the removed slot.
	if raw := mustRead(t, p); bytes.Contains(raw, []byte(kpB.URI())) {
		t.Fatal("the removed slot lingers in the file")
	}
	_, err = RewrapPath(ctx, p, &RewrapOptions{Keyring: keyring, Remove: []string{loc.URI()}})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("at least one")) {
		t.Fatalf("removing the last slot: %v", err)
	}
	mustDecrypt(t, p, pt, KEKs{loc})
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustVersion(t *testing.T, k kms.KEK) string {
	t.Helper()
	v, err := k.(kms.VersionReporter).CurrentVersion(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// faultyFile fails at its n-th write or sync (counting from 1). A failing
// write first writes half its bytes: a torn write, as in a crash.
type faultyFile struct {
	*os.File
	n, ops       int
	read, writes int64
}

var errInjected = errors.New("injected failure")

func (f *faultyFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := f.File.ReadAt(p, off)
	f.read += int64(n)
	return n, err
}

func (f *faultyFile) WriteAt(p []byte, off int64) (int, error) {
	f.ops++
	if f.ops == f.n {
		n, _ := f.File.WriteAt(p[:len(p)/2], off)
		f.writes += int64(n)
		return n, errInjected
	}
	n, err := f.File.WriteAt(p, off)
	f.writes += int64(n)
	return n, err
}

func (f *faultyFile) Sync() error {
	f.ops++
	if f.ops == f.n {
		return errInjected
	}
	return f.File.Sync()
}

func TestRewrapCrashAtEveryWrite(t *testing.T) {
	ctx := context.Background()
	k := newLocalKEK(t, "kek")
	other := newLocalKEK(t, "other")
	dir := t.TempDir()
	orig, pt := encryptFile(t, dir, "orig.kpc", 20_000, k)
	k.Rotate(ctx)
	origBytes := mustRead(t, orig)
	for _, opts := range []*RewrapOptions{
		{Keyring: KEKs{k}},                                  // rotation
		{Keyring: KEKs{k}, To: []kms.KEK{other}},            // migration
		{Keyring: KEKs{k}, Add: []kms.KEK{other}},           // add
		{Keyring: KEKs{k, other}, Remove: []string{"none"}}, // nothing to do: no write at all
	} {
		// Writes and syncs: copy B, sync, copy A, sync.
		for n := 1; n <= 4; n++ {
			p := filepath.Join(dir, fmt.Sprintf("crash-%d.kpc", n))
			os.WriteFile(p, origBytes, 0o600)
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			_, err = Rewrap(ctx, &faultyFile{File: f, n: n}, opts)
			f.Close()
			// Whatever happened, the file decrypts with its old or new slots.
			mustDecrypt(t, p, pt, KEKs{k, other})
			if err == nil {
				continue
			}
			if !errors.Is(err, errInjected) {
				t.Fatalf("fault %d: %v", n, err)
			}
			// Re-running finishes the job.
			res, err := RewrapPath(ctx, p, opts)
			if err != nil {
				t.Fatalf("resume after fault %d: %v", n, err)
			}
			if n >= 2 && res.Changed && len(opts.To) == 0 && len(opts.Add) == 0 {
				// The new table was complete in one copy: already current.
				t.Fatalf("fault %d: rewrap redone although a copy held the new table", n)
			}
			mustDecrypt(t, p, pt, KEKs{k, other})
			h, _ := format.ReadHeader(bytes.NewReader(mustRead(t, p)))
			if h.Tables[0] == nil || h.Tables[1] == nil || h.Tables[0].Sequence != h.Tables[1].Sequence {
				t.Fatalf("fault %d: after the resumed rewrap the copies differ", n)
			}
		}
	}
}

func TestRewrapIOIsHeaderOnly(t *testing.T) {
	ctx := context.Background()
	k := newLocalKEK(t, "kek")
	dir := t.TempDir()
	var reads, writes []int64
	for _, n := range []int{1 << 10, 32 << 20} {
		p, _ := encryptFile(t, dir, fmt.Sprint(n), n, k)
		f, _ := os.OpenFile(p, os.O_RDWR, 0)
		ff := &faultyFile{File: f}
		if _, err := Rewrap(ctx, ff, &RewrapOptions{Keyring: KEKs{k}, Add: []kms.KEK{newLocalKEK(t, fmt.Sprint("add", n))}}); err != nil {
			t.Fatal(err)
		}
		f.Close()
		reads, writes = append(reads, ff.read), append(writes, ff.writes)
	}
	if reads[0] != reads[1] || writes[0] != writes[1] {
		t.Fatalf("I/O depends on the file size: read %v, wrote %v", reads, writes)
	}
	if writes[0] != 2*DefaultSlotTableSize || reads[0] > MaxHeaderSize {
		t.Fatalf("rewrap read %d and wrote %d bytes", reads[0], writes[0])
	}
}

func TestConcurrentRewrapsOfOneFile(t *testing.T) {
	ctx := context.Background()
	kp := startKP(t)
	kek := kp.kek(t, "root-key")
	p, pt := encryptFile(t, t.TempDir(), "f.kpc", 40_000, kek)
	kek.Rotate(ctx)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	changed := make(chan bool, 8)
	for range 8 {
		wg.Go(func() {
			res, err := RewrapPath(ctx, p, &RewrapOptions{Keyring: kp.keyring()})
			if err != nil {
				errs <- err
				return
			}
			changed <- res.Changed
		})
	}
	wg.Wait()
	close(errs)
	close(changed)
	for err := range errs {
		t.Fatal(err)
	}
	n := 0
	for c := range changed {
		if c {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d of 8 concurrent rewraps changed the file, want exactly 1", n)
	}
	if s := mustDecrypt(t, p, pt, kp.keyring()); s.KeyVersion != mustVersion(t, kek) {
		t.Fatalf("version after concurrent rewraps: %+v", s)
	}
}

func TestSaveRewrapped(t *testing.T) {
	ctx := context.Background()
	kp := startKP(t)
	kek := kp.kek(t, "root-key")
	p, pt := encryptFile(t, t.TempDir(), "f.kpc", 5000, kek)
	kek.Rotate(ctx)
	s := mustDecrypt(t, p, pt, kp.keyring())
	if s.Rewrapped == nil {
		t.Fatal("no newer wrapping after a rotation")
	}
	if err := SaveRewrapped(ctx, p, *s); err != nil {
		t.Fatal(err)
	}
	s2 := mustDecrypt(t, p, pt, kp.keyring())
	if s2.KeyVersion != s.Rewrapped.KeyVersion || s2.Rewrapped != nil {
		t.Fatalf("after saving: %+v", s2)
	}
}

// The slot opened from file A, saved to file B, must not touch B: it once
// overwrote both table copies of B, which no longer decrypted.
func TestSaveRewrappedRefusesAnotherFile(t *testing.T) {
	ctx := context.Background()
	kp := startKP(t)
	kek := kp.kek(t, "root-key")
	dir := t.TempDir()
	a, ptA := encryptFile(t, dir, "a.kpc", 5000, kek)
	b, ptB := encryptFile(t, dir, "b.kpc", 7000, kek)
	kek.Rotate(ctx)
	sA := mustDecrypt(t, a, ptA, kp.keyring())
	if sA.Rewrapped == nil {
		t.Fatal("no newer wrapping after a rotation")
	}
	before := readAll(t, b)
	if err := SaveRewrapped(ctx, b, *sA); !errors.Is(err, ErrSlotMismatch) {
		t.Fatalf("SaveRewrapped of A's slot into B = %v, want ErrSlotMismatch", err)
	}
	if !bytes.Equal(readAll(t, b), before) {
		t.Fatal("B was modified")
	}
	mustDecrypt(t, b, ptB, kp.keyring())
	// A slot of no file at all is refused too.
	if err := SaveRewrapped(ctx, a, OpenedSlot{URI: sA.URI, KeyVersion: sA.KeyVersion, Rewrapped: sA.Rewrapped}); !errors.Is(err, ErrSlotMismatch) {
		t.Fatalf("a made-up slot: %v", err)
	}
	// A's own slot still saves.
	if err := SaveRewrapped(ctx, a, *sA); err != nil {
		t.Fatal(err)
	}
	if s := mustDecrypt(t, a, ptA, kp.keyring()); s.KeyVersion != sA.Rewrapped.KeyVersion {
		t.Fatalf("after saving: %+v", s)
	}
}

func readAll(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Readers of an *os.File racing a tight rewrap loop never fail: they read
// the header under a shared lock.
func TestReadersDuringRewraps(t *testing.T) {
	ctx := context.Background()
	k, other := newLocalKEK(t, "a"), newLocalKEK(t, "b")
	p, pt := encryptFile(t, t.TempDir(), "f.kpc", 3000, k)
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		n := 0
		opts := []*RewrapOptions{{Keyring: KEKs{k}, Add: []kms.KEK{other}}, {Keyring: KEKs{k}, Remove: []string{other.URI()}}}
		for ; ; n++ {
			select {
			case <-stop:
				done <- n
				return
			default:
			}
			if _, err := RewrapPath(ctx, p, opts[n%2]); err != nil {
				t.Error(err)
			}
		}
	}()
	for i := range 200 {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := f.Stat()
		ra, err := NewReaderAt(ctx, f, fi.Size(), KEKs{k})
		if err == nil {
			got := make([]byte, len(pt))
			_, err = ra.ReadAt(got, 0)
			if err == nil && !bytes.Equal(got, pt) {
				err = fmt.Errorf("wrong plaintext")
			}
		}
		f.Close()
		if err != nil {
			close(stop)
			<-done
			t.Fatalf("read %d during rewraps: %v", i, err)
		}
	}
	close(stop)
	if n := <-done; n == 0 {
		t.Fatal("no rewrap ran: the test proves nothing")
	}
}

// failingRewraps is a KEK whose first n Rewrap calls fail.
type failingRewraps struct {
	*keyprotect.KEK
	mu    sync.Mutex
	fails int
}

var errRewrapRefused = errors.New("rewrap refused")

func (f *failingRewraps) Rewrap(ctx context.Context, wrapped, aad []byte) (kms.WrappedKey, error) {
	f.mu.Lock()
	fail := f.fails > 0
	f.fails--
	f.mu.Unlock()
	if fail {
		return kms.WrappedKey{}, errRewrapRefused
	}
	return f.KEK.Rewrap(ctx, wrapped, aad)
}

// TestRewrapCache: files sharing a DEK (recipe 2), rewrapped concurrently
// with one RewrapCache, cost one version question and one rewrap, and all
// end up with the same slot; a failure is not remembered; per-file slots
// (recipe 1) are still rewrapped one by one.
func TestRewrapCache(t *testing.T) {
	ctx := context.Background()
	kp := startKP(t)
	k := kp.kek(t, "shared")
	dir := t.TempDir()
	e := &Encrypter{KEKs: []kms.KEK{k}, ChunkSize: 4096, Reuse: &DataKeyReuse{MaxStreams: 100, MaxAge: time.Hour}}
	const n = 20
	var paths []string
	for i := range n {
		ct, err := e.Seal(ctx, []byte{byte(i)})
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, fmt.Sprintf("s%d", i))
		os.WriteFile(p, ct, 0o600)
		paths = append(paths, p)
	}
	single, _ := encryptFile(t, dir, "single", 10, k)
	if _, err := k.Rotate(ctx); err != nil {
		t.Fatal(err)
	}

	// The first rewrap fails: that file fails, and the next one asks again.
	cache := NewRewrapCache()
	fk := &failingRewraps{KEK: k, fails: 1}
	opts := &RewrapOptions{Keyring: KEKs{fk}, Cache: cache}
	if _, err := RewrapPath(ctx, paths[0], opts); !errors.Is(err, errRewrapRefused) {
		t.Fatalf("first rewrap: %v", err)
	}
	kp.srv.ResetStats()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, p := range paths {
		wg.Go(func() { _, errs[i] = RewrapPath(ctx, p, opts) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	st := kp.srv.Stats()
	if st.Rewrap != 1 || st.Get != 0 || st.Requests != 1 {
		t.Fatalf("%d rewraps, %d get key, %d requests for %d files sharing a DEK; want 1, 0 (cached), 1", st.Rewrap, st.Get, st.Requests, n)
	}
	var fp string
	for i, p := range paths {
		f, _ := os.Open(p)
		h, err := Inspect(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if s := h.Slots[0]; !s.Shared || fp != "" && s.Fingerprint != fp {
			t.Fatalf("%s: slot %+v, want shared with fingerprint %s", p, s, fp)
		} else {
			fp = s.Fingerprint
		}
		mustDecrypt(t, p, []byte{byte(i)}, KEKs{k})
	}

	kp.srv.ResetStats()
	if res, err := RewrapPath(ctx, single, opts); err != nil || !res.Changed {
		t.Fatalf("per-file slot: %v %+v", err, res)
	}
	if st := kp.srv.Stats(); st.Rewrap != 1 {
		t.Fatalf("%d rewraps for a per-file slot", st.Rewrap)
	}
}

// countingWraps is a KEK that counts its Wrap calls.
type countingWraps struct {
	*local.KEK
	mu    sync.Mutex
	wraps int
}

func (c *countingWraps) Wrap(ctx context.Context, dek, aad []byte) (kms.WrappedKey, error) {
	c.mu.Lock()
	c.wraps++
	c.mu.Unlock()
	return c.KEK.Wrap(ctx, dek, aad)
}

// TestRewrapCacheClientSide: a KEK that cannot rewrap on its side wraps a
// shared DEK anew once for all the files that share it, and the slot stays
// shared.
func TestRewrapCacheClientSide(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	k := newLocalKEK(t, "kek")
	e := &Encrypter{KEKs: []kms.KEK{k}, ChunkSize: 4096, Reuse: &DataKeyReuse{MaxStreams: 100, MaxAge: time.Hour}}
	const n = 10
	var paths []string
	for i := range n {
		ct, err := e.Seal(ctx, []byte{byte(i)})
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, fmt.Sprintf("s%d", i))
		os.WriteFile(p, ct, 0o600)
		paths = append(paths, p)
	}
	v2, err := k.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ck := &countingWraps{KEK: k}
	opts := &RewrapOptions{Keyring: KEKs{ck}, Cache: NewRewrapCache()}
	fps := map[string]bool{}
	for i, p := range paths {
		if res, err := RewrapPath(ctx, p, opts); err != nil || !res.Changed || res.Slots[0].NewVersion != v2 {
			t.Fatalf("%s: %v %+v", p, err, res)
		}
		f, _ := os.Open(p)
		h, err := Inspect(f)
		f.Close()
		if err != nil || !h.Slots[0].Shared || h.Slots[0].KeyVersion != v2 {
			t.Fatalf("%s: %v %+v", p, err, h)
		}
		fps[h.Slots[0].Fingerprint] = true
		mustDecrypt(t, p, []byte{byte(i)}, KEKs{k})
	}
	if ck.wraps != 1 || len(fps) != 1 {
		t.Fatalf("%d wraps, %d distinct wrapped DEKs for %d files sharing one", ck.wraps, len(fps), n)
	}
}
