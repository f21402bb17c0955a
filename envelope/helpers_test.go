package envelope

import (
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/kpcrypt/kpcrypt/envelope/internal/format"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/local"
	"github.com/kpcrypt/kpcrypt/stream"
)

// Helpers shared by the envelope tests. The spec* functions re-implement
// FORMAT.md §2–§3 independently of the package, so that the tests check the
// code against the document rather than against itself.

// testChunkSize keeps files with several chunks small.
const testChunkSize = stream.MinChunkSize

// testPlaintext is the deterministic plaintext of n bytes of FORMAT.md §6:
// SHA-256 in counter mode over a fixed label.
func testPlaintext(n int) []byte {
	out := make([]byte, 0, n+sha256.Size)
	for i := 0; len(out) < n; i++ {
		s := sha256.Sum256(fmt.Appendf(nil, "kpcrypt test vector plaintext %d", i))
		out = append(out, s[:]...)
	}
	return out[:n]
}

// newLocalKEK generates a local KEK in a fresh temporary directory.
func newLocalKEK(t testing.TB, name string) *local.KEK {
	t.Helper()
	k, err := local.Generate(filepath.Join(t.TempDir(), name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// countingKEK counts the calls made to a real KEK. It exists to prove that
// a header is refused before any KEK is called. uri, when set, replaces the
// real KEK's URI (only for keyring tests that never unwrap through it).
type countingKEK struct {
	kms.KEK
	uri            string
	wraps, unwraps atomic.Int64
}

func (k *countingKEK) URI() string {
	if k.uri != "" {
		return k.uri
	}
	return k.KEK.URI()
}

func (k *countingKEK) Wrap(ctx context.Context, dek, aad []byte) (kms.WrappedKey, error) {
	k.wraps.Add(1)
	return k.KEK.Wrap(ctx, dek, aad)
}

func (k *countingKEK) Unwrap(ctx context.Context, wrapped, aad []byte) (kms.UnwrapResult, error) {
	k.unwraps.Add(1)
	return k.KEK.Unwrap(ctx, wrapped, aad)
}

func (k *countingKEK) calls() int64 { return k.wraps.Load() + k.unwraps.Load() }

// countingKeyring counts the slots a Keyring was asked about.
type countingKeyring struct {
	Keyring
	calls atomic.Int64
}

func (k *countingKeyring) KEKsFor(ctx context.Context, uri string) ([]kms.KEK, error) {
	k.calls.Add(1)
	return k.Keyring.KEKsFor(ctx, uri)
}

// errorClasses are the classes of FORMAT.md §5 (and §1.6 for the body). An
// error for bad input must match exactly one of them.
var errorClasses = []error{
	ErrInvalidHeader, ErrNoKEK, ErrHeaderAuthentication, stream.ErrKeyCommitment,
	ErrTrailingData, ErrSizeMismatch, ErrContextMismatch,
	stream.ErrAuthentication, stream.ErrTruncated, stream.ErrInvalidHeader,
}

// checkClass fails unless err matches want and no other error class.
func checkClass(t testing.TB, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("%s: error %v, want %v", what, err, want)
		return
	}
	for _, c := range errorClasses {
		if c != want && errors.Is(err, c) {
			t.Errorf("%s: error %v matches %v as well as %v", what, err, c, want)
		}
	}
}

// Offsets in the core, FORMAT.md §2.1 and §1.1.
const (
	offVersion    = 4
	offFlags      = 5
	offTableSize  = 6
	offPlainSize  = 10
	offStream     = 18
	offChunkSize  = offStream + 6
	offSalt       = offStream + 10
	offCommitment = offStream + 42
	offCtxLen     = 92
	offCtx        = 94
	specMACSize   = 32
)

// fileParts is an envelope file cut as FORMAT.md §2 says.
type fileParts struct {
	core   []byte // magic to MAC
	tables [2][]byte
	body   []byte
}

// split cuts a well-formed file into its parts, by the spec's offsets.
func split(t testing.TB, file []byte) *fileParts {
	t.Helper()
	x := int(binary.BigEndian.Uint16(file[offCtxLen:]))
	coreLen := offCtx + x + specMACSize
	c := int(binary.BigEndian.Uint32(file[offTableSize:]))
	if len(file) < coreLen+2*c {
		t.Fatalf("file of %d bytes too short for a core of %d and tables of %d", len(file), coreLen, c)
	}
	return &fileParts{
		core:   slices.Clone(file[:coreLen]),
		tables: [2][]byte{slices.Clone(file[coreLen : coreLen+c]), slices.Clone(file[coreLen+c : coreLen+2*c])},
		body:   slices.Clone(file[coreLen+2*c:]),
	}
}

func (p *fileParts) join() []byte {
	return slices.Concat(p.core, p.tables[0], p.tables[1], p.body)
}

func (p *fileParts) clone() *fileParts {
	return &fileParts{core: slices.Clone(p.core), tables: [2][]byte{slices.Clone(p.tables[0]), slices.Clone(p.tables[1])}, body: slices.Clone(p.body)}
}

func (p *fileParts) macOffset() int { return len(p.core) - specMACSize }

// table parses table copy i.
func (p *fileParts) table(t testing.TB, i int) *format.SlotTable {
	t.Helper()
	tb, err := format.ParseSlotTable(p.tables[i])
	if err != nil {
		t.Fatalf("table copy %d: %v", i, err)
	}
	return tb
}

// setTables encodes tb into the copies listed (both when none is).
func (p *fileParts) setTables(t testing.TB, tb *format.SlotTable, copies ...int) {
	t.Helper()
	if len(copies) == 0 {
		copies = []int{0, 1}
	}
	for _, i := range copies {
		b, err := tb.Marshal(len(p.tables[i]))
		if err != nil {
			t.Fatal(err)
		}
		p.tables[i] = b
	}
}

// resum recomputes a table copy's checksum (FORMAT.md §3.1).
func resum(table []byte) []byte {
	sum := sha256.Sum256(table[:len(table)-sha256.Size])
	copy(table[len(table)-sha256.Size:], sum[:])
	return table
}

// specAAD is the slot's associated data, FORMAT.md §3.2.
func specAAD(core []byte, uri string) []byte {
	sum := sha256.Sum256(core)
	aad := []byte("kpcrypt envelope v1 slot")
	aad = append(aad, sum[:]...)
	aad = binary.BigEndian.AppendUint16(aad, uint16(len(uri)))
	return append(aad, uri...)
}

// specSharedAAD is the associated data of a recipe-2 slot, FORMAT.md §3.2,
// from the encoded context.
func specSharedAAD(ctx []byte, uri string) []byte {
	sum := sha256.Sum256(ctx)
	aad := []byte("kpcrypt envelope v1 shared slot")
	aad = append(aad, sum[:]...)
	aad = binary.BigEndian.AppendUint16(aad, uint16(len(uri)))
	return append(aad, uri...)
}

// specMAC is the core's MAC, FORMAT.md §2.2, over the core without its MAC.
func specMAC(t testing.TB, dek, core []byte) []byte {
	t.Helper()
	key, err := hkdf.Key(sha256.New, dek, core[offSalt:offSalt+stream.SaltSize], "kpcrypt envelope v1 header mac", 32)
	if err != nil {
		t.Fatal(err)
	}
	h := hmac.New(sha256.New, key)
	h.Write(core[:len(core)-specMACSize])
	return h.Sum(nil)
}

// rawSlot is a slot encoded without any check, to build invalid tables.
type rawSlot struct {
	recipe  byte
	uri     string
	version string
	wrapped []byte
}

// specTable encodes a table copy of size c by FORMAT.md §3.1 with count as
// the slot count byte, and no bounds checked.
func specTable(c int, seq uint64, count byte, slots []rawSlot) []byte {
	b := []byte("KPST")
	b = binary.BigEndian.AppendUint64(b, seq)
	b = append(b, count)
	for _, s := range slots {
		b = append(b, s.recipe)
		b = binary.BigEndian.AppendUint16(b, uint16(len(s.uri)))
		b = append(b, s.uri...)
		b = append(b, byte(len(s.version)))
		b = append(b, s.version...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(s.wrapped)))
		b = append(b, s.wrapped...)
	}
	if len(b) > c-sha256.Size {
		panic(fmt.Sprintf("specTable: %d bytes of slots do not fit in %d", len(b), c))
	}
	b = append(b, make([]byte, c-len(b))...)
	return resum(b)
}

// specContext encodes context pairs by FORMAT.md §2.1.
func specContext(pairs ...string) []byte {
	var b []byte
	for i := 0; i < len(pairs); i += 2 {
		b = append(b, byte(len(pairs[i])))
		b = append(b, pairs[i]...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(pairs[i+1])))
		b = append(b, pairs[i+1]...)
	}
	return b
}

// specCore encodes a core by FORMAT.md §2.1 with a zero MAC: the caller
// fills it in with specMAC.
func specCore(c int, size int64, sh stream.Header, ctx []byte) []byte {
	b := []byte("KPCF")
	flags := byte(0)
	if size >= 0 {
		flags = 1
	} else {
		size = 0
	}
	b = append(b, 1, flags)
	b = binary.BigEndian.AppendUint32(b, uint32(c))
	b = binary.BigEndian.AppendUint64(b, uint64(size))
	b, _ = sh.AppendBinary(b)
	b = binary.BigEndian.AppendUint16(b, uint16(len(ctx)))
	b = append(b, ctx...)
	return append(b, make([]byte, specMACSize)...)
}

// unwrapDEK unwraps the DEK of slot i of the current table with kek, using
// the spec's associated data.
func unwrapDEK(t testing.TB, p *fileParts, copyIndex, slot int, kek kms.KEK) []byte {
	t.Helper()
	s := p.table(t, copyIndex).Slots[slot]
	res, err := kek.Unwrap(context.Background(), s.Wrapped, specAAD(p.core, s.URI))
	if err != nil {
		t.Fatalf("unwrapping slot %d with the spec's AAD: %v", slot, err)
	}
	return res.DEK
}

// rewrap is what a holder of the KEK can do after changing the core: wrap
// the DEK again for the new core, in every slot of both copies, each with
// the KEK of the same URI in keks. With remac it first recomputes the MAC.
func rewrap(t testing.TB, p *fileParts, dek []byte, remac bool, keks ...kms.KEK) {
	t.Helper()
	if remac {
		copy(p.core[p.macOffset():], specMAC(t, dek, p.core))
	}
	tb := p.table(t, 0)
	for i, s := range tb.Slots {
		for _, k := range keks {
			if k.URI() != s.URI {
				continue
			}
			w, err := k.Wrap(context.Background(), dek, specAAD(p.core, s.URI))
			if err != nil {
				t.Fatal(err)
			}
			tb.Slots[i].Wrapped, tb.Slots[i].KeyVersion = w.Ciphertext, w.KeyVersion
		}
	}
	p.setTables(t, tb)
}

// trustAll lets a ResolvingKeyring open every slot URI: for tests of files
// the test itself made.
var trustAll = kms.DiscoveryFunc(func(uri string) (string, error) { return uri, nil })
