package envelope

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/kpcrypt/kpcrypt/envelope/internal/format"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/local"
	"github.com/kpcrypt/kpcrypt/stream"
)

// Header security: FORMAT.md §2–§4. Every tampered header must fail with
// one specific error class, and a malformed one before any KEK is called.

const fixtureTableSize = 512

// fixture is a sized, 2-chunk file with a context and one slot.
type fixture struct {
	kek  *local.KEK
	pt   []byte
	file []byte
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	k := newLocalKEK(t, "kek")
	pt := testPlaintext(testChunkSize + 100)
	enc := &Encrypter{KEKs: []kms.KEK{k}, ChunkSize: testChunkSize, SlotTableSize: fixtureTableSize,
		Context: map[string]string{"purpose": "test", "tenant": "acme"}}
	return &fixture{kek: k, pt: pt, file: mustSeal(t, enc, pt)}
}

func (f *fixture) parts(t *testing.T) *fileParts { return split(t, f.file) }

// open opens file with the fixture's KEK behind counters, and returns the
// error and how many times the keyring and the KEK were called.
func (f *fixture) open(t *testing.T, file []byte) (err error, keyringCalls, kekCalls int64) {
	t.Helper()
	ck := &countingKEK{KEK: f.kek}
	kr := &countingKeyring{Keyring: KEKs{ck}}
	got, err := Open(t.Context(), file, kr)
	if err == nil && !bytes.Equal(got, f.pt) {
		t.Fatal("opened to the wrong plaintext")
	}
	return err, kr.calls.Load(), ck.calls()
}

// expectOpen checks the outcome of opening file: nil for success, else the
// one class it must match. ErrInvalidHeader must come before any KEK or
// keyring call; ErrNoKEK must come from the KEK refusing the slot.
func (f *fixture) expectOpen(t *testing.T, what string, file []byte, want error) {
	t.Helper()
	err, krCalls, kekCalls := f.open(t, file)
	if want == nil {
		if err != nil {
			t.Errorf("%s: %v, want success", what, err)
		}
		return
	}
	checkClass(t, what, err, want)
	switch want {
	case ErrInvalidHeader:
		if krCalls != 0 || kekCalls != 0 {
			t.Errorf("%s: refused after %d keyring and %d KEK calls, want none", what, krCalls, kekCalls)
		}
		if _, err := Inspect(bytes.NewReader(file)); !errors.Is(err, ErrInvalidHeader) {
			t.Errorf("%s: Inspect: %v, want ErrInvalidHeader", what, err)
		}
	case ErrNoKEK:
		if !errors.Is(err, kms.ErrWrongKey) {
			t.Errorf("%s: %v does not wrap kms.ErrWrongKey", what, err)
		}
		if kekCalls == 0 {
			t.Errorf("%s: no KEK was tried", what)
		}
	}
	// NewReaderAt agrees.
	ra, raErr := NewReaderAt(t.Context(), bytes.NewReader(file), int64(len(file)), KEKs{f.kek})
	if raErr == nil {
		_, raErr = ra.ReadAt(make([]byte, ra.Size()), 0)
	}
	checkClass(t, what+" (ReaderAt)", raErr, want)
}

// The bytes the code writes are those FORMAT.md §2–§3 specify.
func TestHeaderMatchesSpec(t *testing.T) {
	f := newFixture(t)
	p := f.parts(t)
	core := p.core
	if string(core[:4]) != "KPCF" || core[offVersion] != 1 || core[offFlags] != 1 {
		t.Errorf("core starts %x", core[:6])
	}
	if c := binary.BigEndian.Uint32(core[offTableSize:]); c != fixtureTableSize {
		t.Errorf("slot table size %d", c)
	}
	if n := binary.BigEndian.Uint64(core[offPlainSize:]); n != uint64(len(f.pt)) {
		t.Errorf("plaintext size %d", n)
	}
	var sh stream.Header
	if err := sh.UnmarshalBinary(core[offStream : offStream+stream.HeaderSize]); err != nil || sh.ChunkSize != testChunkSize {
		t.Errorf("stream header: %v, chunk size %d", err, sh.ChunkSize)
	}
	ctxBytes := specContext("purpose", "test", "tenant", "acme")
	if x := binary.BigEndian.Uint16(core[offCtxLen:]); int(x) != len(ctxBytes) || !bytes.Equal(core[offCtx:offCtx+int(x)], ctxBytes) {
		t.Errorf("context %x", core[offCtx:p.macOffset()])
	}

	// Slot table copies: identical, sequence 1, one slot.
	if !bytes.Equal(p.tables[0], p.tables[1]) {
		t.Error("the two table copies differ")
	}
	tb := p.tables[0]
	version, _ := f.kek.CurrentVersion(t.Context())
	s := p.table(t, 0).Slots[0]
	want := specTable(fixtureTableSize, 1, 1, []rawSlot{{1, f.kek.URI(), version, s.Wrapped}})
	if !bytes.Equal(tb, want) {
		t.Errorf("table copy\n%x\nwant\n%x", tb, want)
	}

	// The slot unwraps with the AAD of §3.2, and the MAC is §2.2's.
	dek := unwrapDEK(t, p, 0, 0, f.kek)
	if got := specMAC(t, dek, core); !bytes.Equal(got, core[p.macOffset():]) {
		t.Error("the core's MAC is not FORMAT.md's")
	}
	c, err := stream.NewCipher(dek, sh)
	if err != nil {
		t.Fatalf("commitment: %v", err)
	}
	// The body is the stream body of §1.3, right after the second copy.
	if len(p.body) != bodySize(len(f.pt), testChunkSize) {
		t.Errorf("body of %d bytes", len(p.body))
	}
	got, err := io.ReadAll(c.NewReader(bytes.NewReader(p.body), &stream.Options{Workers: 1}))
	if err != nil || !bytes.Equal(got, f.pt) {
		t.Errorf("body: %v", err)
	}
	h := mustInspect(t, f.file)
	if h.HeaderSize != int64(len(core)+2*fixtureTableSize) || h.SlotTableSequence != 1 || h.FormatVersion != 1 || h.Algorithm != AlgorithmName {
		t.Errorf("Inspect: %+v", h)
	}
}

// A slot table copied from file A into file B does not open B: the AAD
// binds each slot to its core.
func TestSlotBoundToItsFile(t *testing.T) {
	f := newFixture(t)
	b := f.parts(t)
	a := split(t, mustSeal(t, &Encrypter{KEKs: []kms.KEK{f.kek}, ChunkSize: testChunkSize, SlotTableSize: fixtureTableSize,
		Context: map[string]string{"purpose": "test", "tenant": "acme"}}, f.pt))
	if bytes.Equal(a.core, b.core) {
		t.Fatal("two files share a core")
	}
	frank := b.clone()
	frank.tables = [2][]byte{resum(bytes.Clone(a.tables[0])), resum(bytes.Clone(a.tables[1]))}
	// The header is well-formed and names the same KEK...
	if h := mustInspect(t, frank.join()); h.Slots[0].KEK != f.kek.URI() {
		t.Fatalf("slots %+v", h.Slots)
	}
	// ...but the KEK refuses the slot for this core.
	f.expectOpen(t, "slot table from another file", frank.join(), ErrNoKEK)

	// Only one copy from A: with equal sequences copy 0 is current.
	half := b.clone()
	half.tables[0] = bytes.Clone(a.tables[0])
	f.expectOpen(t, "copy 0 from another file", half.join(), ErrNoKEK)
	half = b.clone()
	half.tables[1] = bytes.Clone(a.tables[1])
	f.expectOpen(t, "copy 1 from another file", half.join(), nil)

	// A slot relabelled with another URI of the same key (a copy of the key
	// file) does not unwrap either: the URI is in the AAD.
	data, err := readKeyFile(f.kek)
	if err != nil {
		t.Fatal(err)
	}
	copyPath := t.TempDir() + "/copy.json"
	if err := writeKeyFile(copyPath, data); err != nil {
		t.Fatal(err)
	}
	copyKEK, err := local.OpenFile(copyPath)
	if err != nil {
		t.Fatal(err)
	}
	relabelled := b.clone()
	tb := relabelled.table(t, 0)
	tb.Slots[0].URI = copyKEK.URI()
	relabelled.setTables(t, tb)
	_, err = Open(t.Context(), relabelled.join(), KEKs{copyKEK})
	checkClass(t, "relabelled URI", err, ErrNoKEK)
	if !errors.Is(err, kms.ErrWrongKey) {
		t.Errorf("relabelled URI: %v", err)
	}
}

// Each field of the core, changed: the class it must give. Without the KEK
// an attacker meets the AAD (no KEK); a holder of the KEK who rewraps the
// DEK for the new core meets the MAC (header authentication); one who also
// recomputes the MAC with the DEK meets the stream's commitment.
func TestCoreFieldTampering(t *testing.T) {
	f := newFixture(t)
	base := f.parts(t)
	x := base.macOffset() - offCtx
	setU32 := func(off int, v uint32) func(p *fileParts) {
		return func(p *fileParts) { binary.BigEndian.PutUint32(p.core[off:], v) }
	}
	flip := func(off int, mask byte) func(p *fileParts) {
		return func(p *fileParts) { p.core[off] ^= mask }
	}
	addSize := func(d int64) func(p *fileParts) {
		return func(p *fileParts) {
			n := binary.BigEndian.Uint64(p.core[offPlainSize:])
			binary.BigEndian.PutUint64(p.core[offPlainSize:], uint64(int64(n)+d))
		}
	}
	cases := []struct {
		name string
		edit func(p *fileParts)
		want error
	}{
		{"magic", flip(0, 0x01), ErrInvalidHeader},
		{"format version 2", flip(offVersion, 0x03), ErrInvalidHeader},
		{"flags: unknown bit", flip(offFlags, 0x02), ErrInvalidHeader},
		{"flags: size bit cleared", flip(offFlags, 0x01), ErrInvalidHeader},
		{"slot table size within range", setU32(offTableSize, fixtureTableSize+256), ErrInvalidHeader},
		{"slot table size under range", setU32(offTableSize, format.MinSlotTableSize-1), ErrInvalidHeader},
		{"slot table size over range", setU32(offTableSize, format.MaxSlotTableSize+1), ErrInvalidHeader},
		{"plaintext size +1", addSize(1), ErrNoKEK},
		{"plaintext size -1", addSize(-1), ErrNoKEK},
		{"plaintext size past a chunk", addSize(testChunkSize), ErrNoKEK},
		{"stream magic", flip(offStream, 0x01), ErrInvalidHeader},
		{"stream version", flip(offStream+4, 0x02), ErrInvalidHeader},
		{"stream algorithm", flip(offStream+5, 0x02), ErrInvalidHeader},
		{"chunk size within range", setU32(offChunkSize, 2*testChunkSize), ErrNoKEK},
		{"chunk size out of range", setU32(offChunkSize, stream.MinChunkSize-1), ErrInvalidHeader},
		{"salt", flip(offSalt, 0x01), ErrNoKEK},
		{"salt, last byte", flip(offSalt+31, 0x80), ErrNoKEK},
		{"commitment", flip(offCommitment, 0x01), ErrNoKEK},
		{"context value byte", flip(offCtx+x-1, 0x01), ErrNoKEK},
		{"context key byte", flip(offCtx+1, 0x01), ErrNoKEK},
		{"context length", flip(offCtxLen+1, 0x01), ErrInvalidHeader},
		{"context pair length", flip(offCtx, 0x40), ErrInvalidHeader},
		{"MAC", flip(offCtx+x, 0x01), ErrNoKEK},
		{"MAC, last byte", flip(offCtx+x+31, 0x80), ErrNoKEK},
	}
	for _, c := range cases {
		p := base.clone()
		c.edit(p)
		f.expectOpen(t, c.name, p.join(), c.want)
	}

	// A holder of the KEK rewraps the DEK for the changed core.
	dek := unwrapDEK(t, base, 0, 0, f.kek)
	rewrapped := []struct {
		name  string
		edit  func(p *fileParts)
		remac bool
		want  error
	}{
		{"nothing changed", func(*fileParts) {}, false, nil},
		{"MAC", flip(offCtx+x, 0x01), false, ErrHeaderAuthentication},
		{"plaintext size", addSize(1), false, ErrHeaderAuthentication},
		{"context", flip(offCtx+x-1, 0x01), false, ErrHeaderAuthentication},
		{"flags and size", func(p *fileParts) {
			p.core[offFlags] = 0
			binary.BigEndian.PutUint64(p.core[offPlainSize:], 0)
		}, false, ErrHeaderAuthentication},
		{"salt", flip(offSalt, 0x01), false, ErrHeaderAuthentication},
		{"salt", flip(offSalt, 0x01), true, stream.ErrKeyCommitment},
		{"commitment", flip(offCommitment+5, 0x10), true, stream.ErrKeyCommitment},
		{"chunk size", setU32(offChunkSize, 2*testChunkSize), true, stream.ErrKeyCommitment},
		{"plaintext size", addSize(1), true, ErrSizeMismatch},
	}
	for _, c := range rewrapped {
		p := base.clone()
		c.edit(p)
		rewrap(t, p, dek, c.remac, f.kek)
		f.expectOpen(t, fmt.Sprintf("%s, rewrapped (MAC recomputed: %v)", c.name, c.remac), p.join(), c.want)
	}

	// A recorded size one byte short: both decryptors read the body that
	// size implies (FORMAT.md §2.1), whose final chunk is then cut and
	// fails, before they would look at the byte after it.
	p := base.clone()
	addSize(-1)(p)
	rewrap(t, p, dek, true, f.kek)
	_, err := Open(t.Context(), p.join(), KEKs{f.kek})
	checkClass(t, "size -1, rewrapped: Open", err, stream.ErrAuthentication)
	_, err = NewReaderAt(t.Context(), bytes.NewReader(p.join()), int64(len(p.join())), KEKs{f.kek})
	checkClass(t, "size -1, rewrapped: NewReaderAt", err, stream.ErrAuthentication)

	// A recorded size one byte long: the body that size implies is one
	// byte longer than the file's, which authenticates one byte short.
	p = base.clone()
	addSize(1)(p)
	rewrap(t, p, dek, true, f.kek)
	_, err = NewReaderAt(t.Context(), bytes.NewReader(p.join()), int64(len(p.join())), KEKs{f.kek})
	checkClass(t, "size +1, rewrapped: NewReaderAt", err, ErrSizeMismatch)
	// The right size and one byte after the body: trailing data, for both.
	p = base.clone()
	p.body = append(p.body, 0)
	_, err = Open(t.Context(), p.join(), KEKs{f.kek})
	checkClass(t, "trailing byte: Open", err, ErrTrailingData)
	_, err = NewReaderAt(t.Context(), bytes.NewReader(p.join()), int64(len(p.join())), KEKs{f.kek})
	checkClass(t, "trailing byte: NewReaderAt", err, ErrTrailingData)
}

// TestUnwrappedKeyLength: a slot that unwraps to a key of another length
// than 32 bytes fails header authentication (FORMAT.md §3.2), even when
// the MAC was made with that key.
func TestUnwrappedKeyLength(t *testing.T) {
	kek := newLocalKEK(t, "kek")
	file := encryptReal(t, []kms.KEK{kek}, true, vectorContext, testPlaintext(100))
	for _, n := range []int{16, 31, 33} {
		p := split(t, file)
		bad := bytes.Repeat([]byte{7}, n)
		copy(p.core[p.macOffset():], specMAC(t, bad, p.core))
		w, err := kek.Wrap(t.Context(), bad, specAAD(p.core, kek.URI()))
		if err != nil {
			t.Fatal(err)
		}
		tb := p.table(t, 0)
		tb.Slots[0].Wrapped = w.Ciphertext
		p.setTables(t, tb)
		_, err = Open(t.Context(), p.join(), KEKs{kek})
		checkClass(t, fmt.Sprintf("%d-byte key: Open", n), err, ErrHeaderAuthentication)
		_, err = NewReaderAt(t.Context(), bytes.NewReader(p.join()), int64(len(p.join())), KEKs{kek})
		checkClass(t, fmt.Sprintf("%d-byte key: NewReaderAt", n), err, ErrHeaderAuthentication)
	}
}

// Once a KEK unwraps a slot, a failed MAC is reported at once: the other
// slots are not tried.
func TestHeaderAuthenticationStopsAtFirstUnwrap(t *testing.T) {
	k1, k2 := &countingKEK{KEK: newLocalKEK(t, "a")}, &countingKEK{KEK: newLocalKEK(t, "b")}
	p := split(t, mustSeal(t, &Encrypter{KEKs: []kms.KEK{k1.KEK, k2.KEK}}, testPlaintext(10)))
	dek := unwrapDEK(t, p, 0, 0, k1)
	p.core[p.macOffset()] ^= 1
	rewrap(t, p, dek, false, k1.KEK, k2.KEK)
	k1.wraps.Store(0)
	k1.unwraps.Store(0)
	_, err := Open(t.Context(), p.join(), KEKs{k1, k2})
	checkClass(t, "MAC", err, ErrHeaderAuthentication)
	if k1.unwraps.Load() != 1 || k2.calls() != 0 {
		t.Errorf("unwraps: first KEK %d, second %d; want 1 and 0", k1.unwraps.Load(), k2.calls())
	}
}

// The key version is outside the AAD, but the KEK reports the version that
// wrapped the DEK: a changed version is a modified header.
func TestSlotVersionChanged(t *testing.T) {
	f := newFixture(t)
	base := f.parts(t)
	for _, c := range []struct {
		name    string
		version func(v string) string
	}{
		{"last digit", func(v string) string { return v[:len(v)-1] + string("1032547698"[v[len(v)-1]-'0']) }},
		{"emptied", func(string) string { return "" }},
		{"longer", func(v string) string { return v + "0" }},
	} {
		p := base.clone()
		tb := p.table(t, 0)
		tb.Slots[0].KeyVersion = c.version(tb.Slots[0].KeyVersion)
		p.setTables(t, tb) // checksums recomputed
		f.expectOpen(t, "version "+c.name, p.join(), ErrHeaderAuthentication)

		// Changed in copy 1 only, which is not current: no effect.
		p = base.clone()
		p.setTables(t, tb, 1)
		f.expectOpen(t, "version "+c.name+" in copy 1", p.join(), nil)
	}

	// The wrapped DEK changed: the KEK refuses it.
	for _, off := range []int{0, 5, 20, -1} {
		p := base.clone()
		tb := p.table(t, 0)
		w := tb.Slots[0].Wrapped
		if off < 0 {
			off = len(w) - 1
		}
		w[off] ^= 0x01
		p.setTables(t, tb)
		f.expectOpen(t, fmt.Sprintf("wrapped DEK byte %d", off), p.join(), ErrNoKEK)
	}
	// Cut short by one byte.
	p := base.clone()
	tb := p.table(t, 0)
	tb.Slots[0].Wrapped = tb.Slots[0].Wrapped[:len(tb.Slots[0].Wrapped)-1]
	p.setTables(t, tb)
	f.expectOpen(t, "wrapped DEK cut short", p.join(), ErrNoKEK)
}

// A torn copy (a crash mid-write) leaves the file readable from the other
// one; with both torn the file is refused before any KEK call.
func TestTornTableCopies(t *testing.T) {
	f := newFixture(t)
	base := f.parts(t)
	tear := func(b []byte, how string) {
		switch how {
		case "second half garbage":
			for i := len(b) / 2; i < len(b); i++ {
				b[i] = 0xa5
			}
		case "zeroed":
			clear(b)
		case "one bit":
			b[20] ^= 0x04
		case "checksum bit":
			b[len(b)-1] ^= 0x01
		}
	}
	for _, how := range []string{"second half garbage", "zeroed", "one bit", "checksum bit"} {
		for i := range 2 {
			p := base.clone()
			tear(p.tables[i], how)
			if _, err := format.ParseSlotTable(p.tables[i]); err == nil {
				t.Fatalf("%s: copy %d still valid", how, i)
			}
			f.expectOpen(t, fmt.Sprintf("copy %d %s", i, how), p.join(), nil)
			if h := mustInspect(t, p.join()); len(h.Slots) != 1 {
				t.Errorf("copy %d %s: Inspect %+v", i, how, h)
			}
		}
		p := base.clone()
		tear(p.tables[0], how)
		tear(p.tables[1], how)
		f.expectOpen(t, "both copies "+how, p.join(), ErrInvalidHeader)
	}
}

// The current table is the valid copy with the higher sequence, copy 0 when
// they are equal (FORMAT.md §3.1).
func TestTableChoice(t *testing.T) {
	ctx := t.Context()
	f := newFixture(t)
	base := f.parts(t)
	other := newLocalKEK(t, "other")
	dek := unwrapDEK(t, base, 0, 0, f.kek)
	w, err := other.Wrap(ctx, dek, specAAD(base.core, other.URI()))
	if err != nil {
		t.Fatal(err)
	}
	a := base.table(t, 0).Slots[0] // opens with f.kek
	b := format.Slot{AADRecipe: format.AADRecipeV1, URI: other.URI(), KeyVersion: w.KeyVersion, Wrapped: w.Ciphertext}
	table := func(seq uint64, s format.Slot) []byte {
		out, err := (&format.SlotTable{Sequence: seq, Slots: []format.Slot{s}}).Marshal(fixtureTableSize)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, c := range []struct {
		seq0, seq1 uint64
		current    int
	}{
		{1, 2, 1}, {2, 1, 0}, {3, 2, 0}, {2, 3, 1}, {5, 5, 0}, {1<<64 - 1, 1<<64 - 2, 0}, {1, 1<<64 - 1, 1},
	} {
		p := base.clone()
		p.tables = [2][]byte{table(c.seq0, a), table(c.seq1, b)}
		file := p.join()
		h := mustInspect(t, file)
		wantURI, wantSeq := []string{a.URI, b.URI}[c.current], []uint64{c.seq0, c.seq1}[c.current]
		if h.SlotTableSequence != wantSeq || h.Slots[0].KEK != wantURI {
			t.Errorf("sequences %d/%d: Inspect shows sequence %d, slot %s", c.seq0, c.seq1, h.SlotTableSequence, h.Slots[0].KEK)
		}
		current, stale := []kms.KEK{f.kek, other}[c.current], []kms.KEK{f.kek, other}[1-c.current]
		r, err := NewReader(ctx, bytes.NewReader(file), KEKs{current})
		if err != nil {
			t.Errorf("sequences %d/%d: the current table's KEK: %v", c.seq0, c.seq1, err)
		} else if r.Slot().URI != wantURI {
			t.Errorf("sequences %d/%d: opened %s", c.seq0, c.seq1, r.Slot().URI)
		}
		_, err = Open(ctx, file, KEKs{stale})
		checkClass(t, fmt.Sprintf("sequences %d/%d: the other table's KEK", c.seq0, c.seq1), err, ErrNoKEK)
	}
}

// Every bound of FORMAT.md §4 is checked before any KEK is called.
func TestBoundsBeforeAnyKEK(t *testing.T) {
	f := newFixture(t)
	base := f.parts(t)
	slot := base.table(t, 0).Slots[0]
	goodSlot := rawSlot{1, slot.URI, slot.KeyVersion, slot.Wrapped}

	// withTables gives the file a new table size and both copies.
	withTables := func(c int, table []byte) []byte {
		p := base.clone()
		binary.BigEndian.PutUint32(p.core[offTableSize:], uint32(c))
		p.tables = [2][]byte{table, table}
		return p.join()
	}
	withCore := func(edit func(core []byte) []byte) []byte {
		p := base.clone()
		p.core = edit(p.core)
		return p.join()
	}
	withContext := func(ctx []byte) []byte {
		return withCore(func(core []byte) []byte {
			out := bytes.Clone(core[:offCtx])
			binary.BigEndian.PutUint16(out[offCtxLen:], uint16(len(ctx)))
			out = append(out, ctx...)
			return append(out, core[len(core)-specMACSize:]...)
		})
	}
	slots := func(n int) []rawSlot {
		var s []rawSlot
		for range n {
			s = append(s, goodSlot)
		}
		return s
	}
	var pairs []string
	for i := range format.MaxContextPair + 1 {
		pairs = append(pairs, fmt.Sprintf("k%02d", i), "")
	}
	setSize := func(v uint64) []byte {
		return withCore(func(core []byte) []byte {
			binary.BigEndian.PutUint64(core[offPlainSize:], v)
			return core
		})
	}
	withCopies := func(edit func(tb []byte)) []byte {
		p := base.clone()
		for i := range 2 {
			edit(p.tables[i])
			resum(p.tables[i])
		}
		return p.join()
	}

	cases := map[string][]byte{
		"empty input":               nil,
		"10 bytes":                  f.file[:10],
		"inside the core":           f.file[:offCtx+3],
		"inside the MAC":            f.file[:len(base.core)-1],
		"inside table copy 0":       f.file[:len(base.core)+100],
		"inside table copy 1":       f.file[:len(base.core)+2*fixtureTableSize-1],
		"bad magic":                 withCore(func(c []byte) []byte { c[3] = 'X'; return c }),
		"format version 0":          withCore(func(c []byte) []byte { c[offVersion] = 0; return c }),
		"format version 2":          withCore(func(c []byte) []byte { c[offVersion] = 2; return c }),
		"format version 255":        withCore(func(c []byte) []byte { c[offVersion] = 255; return c }),
		"unknown flags":             withCore(func(c []byte) []byte { c[offFlags] = 0x81; return c }),
		"size without its flag":     withCore(func(c []byte) []byte { c[offFlags] = 0; return c }),
		"size over the chunk limit": setSize(uint64(testChunkSize) << 32),
		"size over 2^63":            setSize(1 << 63),
		"size 2^64-1":               setSize(1<<64 - 1),
		"context length 16385":      withCore(func(c []byte) []byte { binary.BigEndian.PutUint16(c[offCtxLen:], format.MaxContextSize+1); return c }),
		"context length 65535":      withCore(func(c []byte) []byte { binary.BigEndian.PutUint16(c[offCtxLen:], 0xffff); return c }),
		"65 context pairs":          withContext(specContext(pairs...)),
		"context keys unsorted":     withContext(specContext("b", "1", "a", "2")),
		"context key twice":         withContext(specContext("a", "1", "a", "2")),
		"context key empty":         withContext(specContext("", "1")),
		"context not UTF-8":         withContext(specContext("a", "\xc3")),
		"context pair truncated":    withContext(specContext("a", "1")[:3]),
		"slot table size 0":         withTables(0, nil),
		"slot table size 255":       withTables(255, specTable(255, 1, 1, nil)),
		"slot table size 65537":     withTables(format.MaxSlotTableSize+1, make([]byte, format.MaxSlotTableSize+1)),
		"slot table size 2^32-1":    withTables(1<<32-1, nil),
		"33 slots":                  withTables(8192, specTable(8192, 1, 33, slots(33))),
		"slot count 255":            withTables(8192, specTable(8192, 1, 255, slots(20))),
		"0 slots":                   withTables(fixtureTableSize, specTable(fixtureTableSize, 1, 0, nil)),
		"slot count over the slots": withTables(fixtureTableSize, specTable(fixtureTableSize, 1, 2, slots(1))),
		"sequence 0":                withTables(fixtureTableSize, specTable(fixtureTableSize, 0, 1, slots(1))),
		"URI of 1025 bytes":         withTables(2048, specTable(2048, 1, 1, []rawSlot{{1, "local:" + strings.Repeat("u", 1019), "1", slot.Wrapped}})),
		"URI empty":                 withTables(fixtureTableSize, specTable(fixtureTableSize, 1, 1, []rawSlot{{1, "", "1", slot.Wrapped}})),
		"URI with a space":          withTables(fixtureTableSize, specTable(fixtureTableSize, 1, 1, []rawSlot{{1, "local:a b", "1", slot.Wrapped}})),
		"URI with a control byte":   withTables(fixtureTableSize, specTable(fixtureTableSize, 1, 1, []rawSlot{{1, "local:a\x00", "1", slot.Wrapped}})),
		"version not printable":     withTables(fixtureTableSize, specTable(fixtureTableSize, 1, 1, []rawSlot{{1, slot.URI, "1\x7f", slot.Wrapped}})),
		"wrapped DEK empty":         withTables(fixtureTableSize, specTable(fixtureTableSize, 1, 1, []rawSlot{{1, slot.URI, "1", nil}})),
		"wrapped DEK of 4097 bytes": withTables(8192, specTable(8192, 1, 1, []rawSlot{{1, slot.URI, "1", make([]byte, format.MaxWrappedSize+1)}})),
		"AAD recipe 0":              withTables(fixtureTableSize, specTable(fixtureTableSize, 1, 1, []rawSlot{{0, slot.URI, slot.KeyVersion, slot.Wrapped}})),
		"AAD recipe 3":              withTables(fixtureTableSize, specTable(fixtureTableSize, 1, 1, []rawSlot{{3, slot.URI, slot.KeyVersion, slot.Wrapped}})),
		"table magic":               withCopies(func(tb []byte) { tb[0] = 'X' }),
		"non-zero padding":          withCopies(func(tb []byte) { tb[len(tb)-sha256.Size-1] = 1 }),
		"checksums wrong":           withCopies(func(tb []byte) {}), // resum, then break below
	}
	// "checksums wrong": both checksums flipped after recomputation.
	p := split(t, cases["checksums wrong"])
	p.tables[0][len(p.tables[0])-1] ^= 1
	p.tables[1][len(p.tables[1])-1] ^= 1
	cases["checksums wrong"] = p.join()
	// A slot whose wrapped length runs past the table.
	long := specTable(fixtureTableSize, 1, 1, []rawSlot{goodSlot})
	binary.BigEndian.PutUint16(long[13+1+2+len(slot.URI)+1+len(slot.KeyVersion):], fixtureTableSize)
	cases["wrapped length past the table"] = withTables(fixtureTableSize, resum(long))

	// The unmodified file opens, through the counted KEK.
	if err, krCalls, kekCalls := f.open(t, f.file); err != nil || krCalls == 0 || kekCalls == 0 {
		t.Fatalf("unmodified file: %v after %d keyring and %d KEK calls", err, krCalls, kekCalls)
	}
	for name, file := range cases {
		err, krCalls, kekCalls := f.open(t, file)
		checkClass(t, name, err, ErrInvalidHeader)
		if krCalls != 0 || kekCalls != 0 {
			t.Errorf("%s: %d keyring and %d KEK calls before the refusal", name, krCalls, kekCalls)
		}
		var fe *format.Error
		if !errors.As(err, &fe) || fe.Field == "" {
			t.Errorf("%s: %v names no field", name, err)
		}
		if _, err := Inspect(bytes.NewReader(file)); !errors.Is(err, ErrInvalidHeader) {
			t.Errorf("%s: Inspect: %v", name, err)
		}
		ck := &countingKEK{KEK: f.kek}
		if _, err := NewReaderAt(t.Context(), bytes.NewReader(file), int64(len(file)), &ResolvingKeyring{Filter: trustAll, KEKs: KEKs{ck}}); !errors.Is(err, ErrInvalidHeader) || ck.calls() != 0 {
			t.Errorf("%s: NewReaderAt: %v after %d KEK calls", name, err, ck.calls())
		}
	}
}

// Helpers to copy a local key file with its mode.
func readKeyFile(k *local.KEK) ([]byte, error) {
	return os.ReadFile(strings.TrimPrefix(k.URI(), "local:"))
}

func writeKeyFile(path string, data []byte) error { return os.WriteFile(path, data, 0o600) }

// TestDecryptorsAgreeOnBodyEnd cuts and extends the body of a file with and
// without a recorded size at many lengths: the sequential Reader and the
// ReaderAt report the same error class for each (FORMAT.md §1.4, §2.1).
func TestDecryptorsAgreeOnBodyEnd(t *testing.T) {
	t.Parallel()
	kek := newLocalKEK(t, "kek")
	cs := testChunkSize
	classOf := func(err error) error {
		if err == nil || err == io.EOF {
			return nil
		}
		for _, c := range errorClasses {
			if errors.Is(err, c) {
				return c
			}
		}
		return err
	}
	for _, sized := range []bool{true, false} {
		file := encryptReal(t, []kms.KEK{kek}, sized, nil, testPlaintext(2*cs+20))
		p := split(t, file)
		full := cs + stream.TagSize
		for k := 0; k <= len(p.body)+full+20; k++ {
			// Every length near a chunk boundary or the body's end, and a
			// sample of the others.
			if r := k % full; r > 20 && r < full-20 && (k < len(p.body)-20 || k > len(p.body)+20) && k%97 != 0 {
				continue
			}
			q := p.clone()
			if k <= len(p.body) {
				q.body = q.body[:k]
			} else {
				q.body = append(q.body, bytes.Repeat([]byte{0xa5}, k-len(p.body))...)
			}
			f := q.join()
			_, serr := Open(t.Context(), f, KEKs{kek})
			var rerr error
			if ra, err := NewReaderAt(t.Context(), bytes.NewReader(f), int64(len(f)), KEKs{kek}); err != nil {
				rerr = err
			} else {
				_, rerr = ra.ReadAt(make([]byte, ra.Size()), 0)
			}
			if sc, rc := classOf(serr), classOf(rerr); sc != rc {
				t.Errorf("sized %v, body of %d bytes (valid: %d): Reader %v, ReaderAt %v", sized, k, len(p.body), serr, rerr)
			}
		}
	}
}
