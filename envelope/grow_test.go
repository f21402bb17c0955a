package envelope

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
	"strings"
	"testing"

	"github.com/kpcrypt/kpcrypt/envelope/internal/format"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/local"
)

// smallFile seals pt under keks (a small file: its slot tables hold its
// slots and room for their rotation only) into dir/name, mode 0640.
func smallFile(t *testing.T, dir, name string, pt []byte, keks ...kms.KEK) string {
	t.Helper()
	// The second file of an Encrypter has its table sized to the slots
	// the first one made, not to an estimate.
	e := &Encrypter{KEKs: keks}
	if _, err := e.Seal(context.Background(), pt); err != nil {
		t.Fatal(err)
	}
	ct, err := e.Seal(context.Background(), pt)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, ct, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o640); err != nil {
		t.Fatal(err)
	}
	return p
}

func headerOf(t *testing.T, p string) *format.Header {
	t.Helper()
	h, err := format.ReadHeader(bytes.NewReader(mustRead(t, p)))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func stat(t *testing.T, p string) os.FileInfo {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

// onlyEntries fails unless dir holds exactly the names given: no temporary
// file is left behind.
func onlyEntries(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Fatalf("directory holds %q, want %q", got, names)
	}
}

// TestGrowAddsSlotByRewriting: a slot that does not fit a small file's
// table is added by rewriting the file whole: a new inode with a larger
// table, the same body bytes, the same permissions, every slot opening it;
// a slot that fits is written in place (same inode).
func TestGrowAddsSlotByRewriting(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, b, c := newLocalKEK(t, "a"), newLocalKEK(t, "b"), newLocalKEK(t, "c")
	pt := testPlaintext(4096)
	p := smallFile(t, dir, "obj.kpc", pt, a)
	before, fiBefore := headerOf(t, p), stat(t, p)
	body := mustRead(t, p)[before.Size():]

	res, err := RewrapPath(ctx, p, &RewrapOptions{Keyring: KEKs{a}, Add: []kms.KEK{b}})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Changed || !res.Rewritten {
		t.Fatalf("result %+v: want Changed and Rewritten", res)
	}
	after, fiAfter := headerOf(t, p), stat(t, p)
	if os.SameFile(fiBefore, fiAfter) {
		t.Fatal("the file was not rewritten: same inode")
	}
	if fiAfter.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v after the rewrite, want 0640", fiAfter.Mode().Perm())
	}
	if after.Core.SlotTableSize <= before.Core.SlotTableSize {
		t.Fatalf("slot table %d bytes after, %d before", after.Core.SlotTableSize, before.Core.SlotTableSize)
	}
	if room := after.Table().Room(after.Core.SlotTableSize); room < 2*SlotRotationRoom {
		t.Fatalf("%d bytes of room left for rotating 2 slots", room)
	}
	if got := mustRead(t, p)[after.Size():]; !bytes.Equal(got, body) {
		t.Fatal("the body changed")
	}
	if after.Core.Stream != before.Core.Stream || after.Core.PlaintextSize != before.Core.PlaintextSize {
		t.Fatal("the stream header or the size changed")
	}
	for _, k := range []kms.KEK{a, b} {
		mustDecrypt(t, p, pt, KEKs{k})
	}
	onlyEntries(t, dir, "obj.kpc")

	// A rotation-sized change now fits: in place, same inode.
	fiGrown := fiAfter
	if _, err := RewrapPath(ctx, p, &RewrapOptions{Keyring: KEKs{a, b}, Remove: []string{b.URI()}}); err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(fiGrown, stat(t, p)) {
		t.Fatal("a change that fits was not made in place")
	}
	// And three more grow it again.
	d := newLocalKEK(t, "d")
	if res, err := RewrapPath(ctx, p, &RewrapOptions{Keyring: KEKs{a}, Add: []kms.KEK{b, c, d}}); err != nil || !res.Rewritten {
		t.Fatalf("adding three slots: %+v, %v", res, err)
	}
	for _, k := range []kms.KEK{a, b, c, d} {
		mustDecrypt(t, p, pt, KEKs{k})
	}
	onlyEntries(t, dir, "obj.kpc")
}

// TestGrowDryRun: a dry run reports the rewrite and changes nothing.
func TestGrowDryRun(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, b := newLocalKEK(t, "a"), newLocalKEK(t, "b")
	p := smallFile(t, dir, "obj.kpc", testPlaintext(100), a)
	raw, fi := mustRead(t, p), stat(t, p)
	res, err := RewrapPath(ctx, p, &RewrapOptions{Keyring: KEKs{a}, Add: []kms.KEK{b}, DryRun: true})
	if err != nil || !res.Rewritten || !res.Changed {
		t.Fatalf("dry run: %+v, %v", res, err)
	}
	if !bytes.Equal(raw, mustRead(t, p)) || !os.SameFile(fi, stat(t, p)) {
		t.Fatal("a dry run changed the file")
	}
}

// failingKEK wraps through a real KEK until fail is set.
type failingKEK struct {
	kms.KEK
	fail bool
}

func (k *failingKEK) Wrap(ctx context.Context, dek, aad []byte) (kms.WrappedKey, error) {
	if k.fail {
		return kms.WrappedKey{}, fmt.Errorf("wrap refused: %w", kms.ErrUnavailable)
	}
	return k.KEK.Wrap(ctx, dek, aad)
}

// TestGrowFailureChangesNothing: a rewrite that fails (a KEK refuses to wrap
// anew, a slot's KEK is not in the keyring, the file has two links, the
// context ends) leaves the file byte for byte as it was, at the same inode,
// and nothing else in its directory.
func TestGrowFailureChangesNothing(t *testing.T) {
	ctx := context.Background()
	a, b := newLocalKEK(t, "a"), newLocalKEK(t, "b")
	pt := testPlaintext(3000)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	for _, tc := range []struct {
		name string
		opts func(fa *failingKEK) *RewrapOptions
		link bool
		ctx  context.Context
		want error
	}{
		{name: "a KEK refuses the new wrap", opts: func(fa *failingKEK) *RewrapOptions {
			fa.fail = true
			return &RewrapOptions{Keyring: KEKs{fa}, Add: []kms.KEK{b}}
		}, want: kms.ErrUnavailable},
		{name: "a slot's KEK is missing", opts: func(*failingKEK) *RewrapOptions {
			// b alone cannot unwrap, so the DEK is not had.
			return &RewrapOptions{Keyring: KEKs{b}, Add: []kms.KEK{b}}
		}, want: ErrNoKEK},
		{name: "two hard links", link: true, opts: func(fa *failingKEK) *RewrapOptions {
			return &RewrapOptions{Keyring: KEKs{fa}, Add: []kms.KEK{b}}
		}, want: ErrSlotTableFull},
		{name: "context cancelled", ctx: cancelled, opts: func(fa *failingKEK) *RewrapOptions {
			return &RewrapOptions{Keyring: KEKs{fa}, Add: []kms.KEK{b}}
		}, want: context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := smallFile(t, dir, "obj.kpc", pt, a)
			names := []string{"obj.kpc"}
			if tc.link {
				if runtime.GOOS == "windows" {
					t.Skip("hard links")
				}
				if err := os.Link(p, filepath.Join(dir, "other.kpc")); err != nil {
					t.Fatal(err)
				}
				names = append(names, "other.kpc")
			}
			raw, fi := mustRead(t, p), stat(t, p)
			fa := &failingKEK{KEK: a}
			c := ctx
			if tc.ctx != nil {
				c = tc.ctx
			}
			_, err := RewrapPath(c, p, tc.opts(fa))
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if !bytes.Equal(raw, mustRead(t, p)) || !os.SameFile(fi, stat(t, p)) {
				t.Fatal("a failed rewrite changed the file")
			}
			onlyEntries(t, dir, names...)
			mustDecrypt(t, p, pt, KEKs{a})
		})
	}
}

// TestGrowUnopenableSlot: a slot whose KEK the keyring cannot give stops the
// rewrite (its wrapping is bound to the old core and cannot be carried
// over), naming the slot, and leaves the file as it was.
func TestGrowUnopenableSlot(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, b, c, d := newLocalKEK(t, "a"), newLocalKEK(t, "b"), newLocalKEK(t, "c"), newLocalKEK(t, "d")
	pt := testPlaintext(200)
	p := smallFile(t, dir, "obj.kpc", pt, a, b)
	raw := mustRead(t, p)
	// Two more slots never fit the room left for rotating two.
	_, err := RewrapPath(ctx, p, &RewrapOptions{Keyring: KEKs{a}, Add: []kms.KEK{c, d}})
	if err == nil || !strings.Contains(err.Error(), b.URI()) {
		t.Fatalf("got %v, want an error naming slot %s", err, b.URI())
	}
	if !bytes.Equal(raw, mustRead(t, p)) {
		t.Fatal("the file changed")
	}
	onlyEntries(t, dir, "obj.kpc")
}

// TestGrowLosesNoConcurrentUpdate: a rewrap that waited on the old file
// while another rewrote it finds it replaced: RewrapFile says so, and
// RewrapPath and SaveRewrapped open the path again, so both changes land.
// A reader that opened the old file reads it whole.
func TestGrowLosesNoConcurrentUpdate(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, b, c := newLocalKEK(t, "a"), newLocalKEK(t, "b"), newLocalKEK(t, "c")
	pt := testPlaintext(5000)
	p := smallFile(t, dir, "obj.kpc", pt, a)
	oldF, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer oldF.Close()
	reader, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()

	if res, err := RewrapPath(ctx, p, &RewrapOptions{Keyring: KEKs{a}, Add: []kms.KEK{b}}); err != nil || !res.Rewritten {
		t.Fatalf("first rewrap: %+v, %v", res, err)
	}
	// The second writer had opened the old file before the rename.
	if _, err := RewrapFile(ctx, oldF, &RewrapOptions{Keyring: KEKs{a}, Add: []kms.KEK{c}}); !errors.Is(err, ErrFileReplaced) {
		t.Fatalf("rewrap of the replaced file: %v, want ErrFileReplaced", err)
	}
	// (Growing again wraps every slot anew: the keyring holds b too.)
	if _, err := RewrapPath(ctx, p, &RewrapOptions{Keyring: KEKs{a, b}, Add: []kms.KEK{c}}); err != nil {
		t.Fatal(err)
	}
	for _, k := range []kms.KEK{a, b, c} {
		mustDecrypt(t, p, pt, KEKs{k})
	}
	// The reader of the old file still reads it whole, under its old slot.
	var got bytes.Buffer
	if err := Decrypt(ctx, &got, reader, KEKs{a}); err != nil || !bytes.Equal(got.Bytes(), pt) {
		t.Fatalf("reading the old file: %v", err)
	}
}

// TestGrowThroughSymlink: a path that is a symbolic link keeps being one;
// the file it names is rewritten.
func TestGrowThroughSymlink(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("symbolic links")
	}
	ctx := context.Background()
	dir := t.TempDir()
	a, b := newLocalKEK(t, "a"), newLocalKEK(t, "b")
	pt := testPlaintext(10)
	p := smallFile(t, dir, "target.kpc", pt, a)
	link := filepath.Join(dir, "link.kpc")
	if err := os.Symlink("target.kpc", link); err != nil {
		t.Fatal(err)
	}
	if res, err := RewrapPath(ctx, link, &RewrapOptions{Keyring: KEKs{a}, Add: []kms.KEK{b}}); err != nil || !res.Rewritten {
		t.Fatalf("%+v, %v", res, err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the link is no longer a link: %v", err)
	}
	mustDecrypt(t, p, pt, KEKs{b})
	onlyEntries(t, dir, "link.kpc", "target.kpc")
}

// TestGrowKeepsSharedSlot: a slot of a shared DEK (recipe 2) is bound to the
// context alone, so the rewrite carries it over byte for byte, and the
// DEK's other files keep sharing it.
func TestGrowKeepsSharedSlot(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, b := newLocalKEK(t, "a"), newLocalKEK(t, "b")
	e := &Encrypter{KEKs: []kms.KEK{a}, Reuse: &DataKeyReuse{MaxStreams: 10}}
	pt := testPlaintext(700)
	ct, err := e.Seal(ctx, pt)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "shared.kpc")
	if err := os.WriteFile(p, ct, 0o600); err != nil {
		t.Fatal(err)
	}
	old := headerOf(t, p).Table().Slots[0]
	if res, err := RewrapPath(ctx, p, &RewrapOptions{Keyring: KEKs{a}, Add: []kms.KEK{b}}); err != nil || !res.Rewritten {
		t.Fatalf("%+v, %v", res, err)
	}
	got := headerOf(t, p).Table().Slots[0]
	if got.AADRecipe != format.AADRecipeShared || !bytes.Equal(got.Wrapped, old.Wrapped) {
		t.Fatal("the shared slot was not carried over as it was")
	}
	mustDecrypt(t, p, pt, KEKs{a})
	mustDecrypt(t, p, pt, KEKs{b})
}

// TestGrowCrash kills a process while it rewrites a file with a larger slot
// table: whenever the kill lands, the path holds the old file or the new
// one, and it decrypts; no temporary file with a name is left readable.
func TestGrowCrash(t *testing.T) {
	if os.Getenv("KPCRYPT_GROW_CRASH_CHILD") != "" {
		growCrashChild()
		return
	}
	if testing.Short() || runtime.GOOS == "windows" {
		t.Skip("re-executes the test binary and kills it")
	}
	ctx := context.Background()
	a := newLocalKEK(t, "a")
	b := newLocalKEK(t, "b")
	for i := range 8 {
		dir := t.TempDir()
		// A large file with a full 256-byte table: the copy of its body
		// takes long enough for the kill to land in it, or before, or
		// after; any of them must leave a whole file.
		pt := testPlaintext(8<<20 + i*12345)
		var buf bytes.Buffer
		if err := (&Encrypter{KEKs: []kms.KEK{a}, SlotTableSize: MinSlotTableSize}).Encrypt(ctx, &buf, bytes.NewReader(pt)); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "big.kpc")
		if err := os.WriteFile(p, buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestGrowCrash$")
		cmd.Env = append(os.Environ(), "KPCRYPT_GROW_CRASH_CHILD="+p, "KPCRYPT_GROW_CRASH_A="+a.URI(), "KPCRYPT_GROW_CRASH_B="+b.URI(), fmt.Sprintf("KPCRYPT_GROW_CRASH_N=%d", i%4))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line := make([]byte, 6)
		if _, err := io.ReadFull(out, line); err != nil {
			t.Fatal(err)
		}
		cmd.Process.Kill()
		cmd.Wait()
		// Old or new, the file at p decrypts under a; if new, under b too.
		mustDecrypt(t, p, pt, KEKs{a})
		n := len(headerOf(t, p).Table().Slots)
		if n == 2 {
			mustDecrypt(t, p, pt, KEKs{b})
		}
		t.Logf("round %d: the kill left %d slot(s)", i, n)
		if i%4 == 3 && n != 2 {
			t.Fatalf("round %d: killed after the rewrite, the file has %d slot(s)", i, n)
		}
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if e.Name() != "big.kpc" {
				// A named temporary file may be left by a kill on a
				// filesystem without O_TMPFILE; it must not be readable
				// by others and must be recognisable.
				fi, _ := e.Info()
				if !strings.Contains(e.Name(), "kpcrypt-tmp") || fi.Mode().Perm()&0o077 != 0 {
					t.Fatalf("left behind: %s %v", e.Name(), fi.Mode())
				}
			}
		}
	}
}

// signalKEK writes "ready" to standard output at its n-th Wrap: the
// rewrite then copies the body and renames, and the parent's kill lands
// around there.
type signalKEK struct {
	kms.KEK
	calls, n int
}

func (k *signalKEK) Wrap(ctx context.Context, dek, aad []byte) (kms.WrappedKey, error) {
	w, err := k.KEK.Wrap(ctx, dek, aad)
	if k.calls++; k.calls == k.n {
		os.Stdout.Write([]byte("ready\n"))
	}
	return w, err
}

func growCrashChild() {
	ctx := context.Background()
	p := os.Getenv("KPCRYPT_GROW_CRASH_CHILD")
	open := func(uri string) kms.KEK {
		k, err := local.Open(ctx, uri)
		if err != nil {
			panic(err)
		}
		return k
	}
	a := open(os.Getenv("KPCRYPT_GROW_CRASH_A"))
	var n int
	fmt.Sscan(os.Getenv("KPCRYPT_GROW_CRASH_N"), &n)
	// b wraps once when added and once for the new core.
	b := &signalKEK{KEK: open(os.Getenv("KPCRYPT_GROW_CRASH_B")), n: n}
	if n == 0 {
		os.Stdout.Write([]byte("ready\n"))
	}
	if _, err := RewrapPath(ctx, p, &RewrapOptions{Keyring: KEKs{a}, Add: []kms.KEK{b}}); err != nil {
		panic(err)
	}
	if n == 3 {
		os.Stdout.Write([]byte("ready\n"))
	}
	os.Exit(0)
}

// plantSlot appends to the table of the file at p a slot that nobody made
// with its KEK (a garbage wrapped DEK), as anyone who can write the file
// can: slots are not authenticated.
func plantSlot(t *testing.T, p, uri, version string) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h, err := format.ReadHeader(io.NewSectionReader(f, 0, MaxHeaderSize))
	if err != nil {
		t.Fatal(err)
	}
	slots := append(h.Table().Slots, format.Slot{AADRecipe: format.AADRecipeV1, URI: uri, KeyVersion: version, Wrapped: make([]byte, 65)})
	if err := writeTable(f, h, &format.SlotTable{Sequence: h.Table().Sequence + 1, Slots: slots}); err != nil {
		t.Fatal(err)
	}
}

// TestPlantedSlotGetsNoWrap: a slot planted with the URI of another KEK of
// the victim's keyring (stale version, garbage DEK) is never turned into a
// real wrapping of the file's DEK under that KEK: not by a rotation (the
// slot is left, "unchecked"), not by a rewrite whole (which fails, naming
// it), not in a dry run's report.
func TestPlantedSlotGetsNoWrap(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		version func(b kms.KEK) string
		opts    func(a, b, c kms.KEK) *RewrapOptions
	}{
		{"rotation", func(kms.KEK) string { return "1" }, func(a, b, c kms.KEK) *RewrapOptions { return &RewrapOptions{Keyring: KEKs{a, b}} }},
		{"rotation, dry run", func(kms.KEK) string { return "1" }, func(a, b, c kms.KEK) *RewrapOptions {
			return &RewrapOptions{Keyring: KEKs{a, b}, DryRun: true}
		}},
		{"rewrite whole", func(b kms.KEK) string { v, _ := b.(kms.VersionReporter).CurrentVersion(ctx); return v }, func(a, b, c kms.KEK) *RewrapOptions {
			return &RewrapOptions{Keyring: KEKs{a, b}, Add: []kms.KEK{c, newLocalKEK(t, "d"), newLocalKEK(t, "e")}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			a, b, c := newLocalKEK(t, "a"), newLocalKEK(t, "b"), newLocalKEK(t, "c")
			pt := testPlaintext(3000)
			// Room for the planted slot, not for three more.
			ct, err := (&Encrypter{KEKs: []kms.KEK{a}, SlotTableSize: 512}).Seal(ctx, pt)
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, "f.kpc")
			if err := os.WriteFile(p, ct, 0o600); err != nil {
				t.Fatal(err)
			}
			plantSlot(t, p, b.URI(), tc.version(b))
			res, err := RewrapPath(ctx, p, tc.opts(a, b, c))
			t.Logf("result %+v, error %v", res, err)
			if _, err := Open(ctx, mustRead(t, p), KEKs{b}); err == nil {
				t.Fatal("KEK b, named only by a planted slot, now opens the file")
			}
			if err == nil {
				for _, ch := range res.Slots {
					if ch.URI == b.URI() && ch.Action != "unchecked" && ch.Action != "current" {
						t.Fatalf("the planted slot is reported %q, want unchecked", ch.Action)
					}
				}
			}
			mustDecrypt(t, p, pt, KEKs{a})
		})
	}
}

// TestGrowKeepsOwner: a file rewritten whole keeps its owner and group
// (run as root, which may give them).
func TestGrowKeepsOwner(t *testing.T) {
	if runtime.GOOS == "windows" || os.Geteuid() != 0 {
		t.Skip("needs root to give a file to another user")
	}
	ctx := context.Background()
	dir := t.TempDir()
	a, b := newLocalKEK(t, "a"), newLocalKEK(t, "b")
	p := smallFile(t, dir, "obj.kpc", testPlaintext(4096), a)
	if err := os.Chown(p, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	before := stat(t, p)
	if res, err := RewrapPath(ctx, p, &RewrapOptions{Keyring: KEKs{a}, Add: []kms.KEK{b}}); err != nil || !res.Rewritten {
		t.Fatalf("%+v, %v", res, err)
	}
	after := stat(t, p)
	if os.SameFile(before, after) {
		t.Fatal("not rewritten")
	}
	if o, n := fileOwner(before), fileOwner(after); o != n {
		t.Fatalf("owner %s became %s", o, n)
	}
	if after.Mode().Perm() != before.Mode().Perm() {
		t.Fatalf("mode %v became %v", before.Mode(), after.Mode())
	}
}
