package envelope

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/cryptotest"

	"github.com/kpcrypt/kpcrypt/envelope/internal/format"
	"github.com/kpcrypt/kpcrypt/internal/testvec"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/local"
	"github.com/kpcrypt/kpcrypt/stream"
)

// The envelope test vectors live in ../testdata/envelope, one file per
// vector: a few "key: value" lines, an empty line, then the raw envelope
// file. FORMAT.md §6 describes them. The KEKs are the local key files
// kek.json, kek-2.json and kek-3.json beside them; the slots name them by
// relative URIs ("local:kek.json"), which the tests open from copies with
// mode 0600 in a temporary directory made current. Regenerate the vectors
// after a deliberate format change with
//
//	go test ./envelope -run TestVectors -update
//
// (which also creates missing key files; new keys change every vector).
var updateVectors = flag.Bool("update", false, "rewrite the test vectors in ../testdata/envelope")

const vectorDir = "../testdata/envelope"

var vectorKeyFiles = []string{"kek.json", "kek-2.json", "kek-3.json"}

// Expected outcomes of a vector, one per error class of FORMAT.md §5.
const (
	expectSuccess       = "success"
	expectInvalidHeader = "invalid header"
	expectNoKEK         = "no KEK"
	expectHeaderAuth    = "header authentication"
	expectCommitment    = "commitment failure"
	expectSizeMismatch  = "size mismatch"
	expectTrailingData  = "trailing data"
	expectAuth          = "authentication failure"
	expectTruncated     = "truncated"
)

var expectErr = map[string]error{
	expectInvalidHeader: ErrInvalidHeader,
	expectNoKEK:         ErrNoKEK,
	expectHeaderAuth:    ErrHeaderAuthentication,
	expectCommitment:    stream.ErrKeyCommitment,
	expectSizeMismatch:  ErrSizeMismatch,
	expectTrailingData:  ErrTrailingData,
	expectAuth:          stream.ErrAuthentication,
	expectTruncated:     stream.ErrTruncated,
}

type vector struct {
	name    string
	expect  string
	keyring []string // key files the decryptor is given, in order
	// For success only: the slot that opens, and the plaintext.
	slot    int
	size    int64
	sum     []byte
	comment string
	file    []byte
}

func (v *vector) marshal() []byte {
	fields := testvec.Pairs("expect", v.expect, "decryptor", "any", "keyring", strings.Join(v.keyring, " "))
	if v.expect == expectSuccess {
		fields = append(fields, testvec.Pairs(
			"opened slot", strconv.Itoa(v.slot),
			"plaintext size", strconv.FormatInt(v.size, 10),
			"plaintext sha256", hex.EncodeToString(v.sum))...)
	}
	fields = append(fields, testvec.Pairs("comment", v.comment)...)
	return (&testvec.File{Fields: fields, Body: v.file}).Marshal()
}

func parseVector(f *testvec.File) (*vector, error) {
	name := f.Name
	v := &vector{name: name, slot: -1, size: -1, file: f.Body}
	for _, fd := range f.Fields {
		var err error
		switch fd.Key {
		case "expect":
			v.expect = fd.Value
		case "decryptor":
			// Every envelope vector is for any decryptor (FORMAT.md §6).
			if fd.Value != "any" {
				err = fmt.Errorf("unknown decryptor %q", fd.Value)
			}
		case "keyring":
			v.keyring = strings.Fields(fd.Value)
		case "opened slot":
			v.slot, err = strconv.Atoi(fd.Value)
		case "plaintext size":
			v.size, err = strconv.ParseInt(fd.Value, 10, 64)
		case "plaintext sha256":
			v.sum, err = hex.DecodeString(fd.Value)
		case "comment":
			v.comment = fd.Value
		default:
			err = fmt.Errorf("unknown key %q", fd.Key)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %v", name, err)
		}
	}
	if _, ok := expectErr[v.expect]; !ok && v.expect != expectSuccess {
		return nil, fmt.Errorf("%s: unknown expectation %q", name, v.expect)
	}
	if len(v.keyring) == 0 {
		return nil, fmt.Errorf("%s: no keyring", name)
	}
	for _, k := range v.keyring {
		if !slices.Contains(vectorKeyFiles, k) {
			return nil, fmt.Errorf("%s: unknown key file %q", name, k)
		}
	}
	if v.expect == expectSuccess && (v.slot < 0 || v.size < 0 || len(v.sum) != sha256.Size) {
		return nil, fmt.Errorf("%s: a success vector needs its slot, size and plaintext hash", name)
	}
	return v, nil
}

// vectorKEKs copies the vector key files into a temporary directory with
// mode 0600 (git does not keep modes; local.OpenFile requires it), makes it
// the current directory, and opens them by the relative paths the slots
// record. It returns the absolute vector directory.
func vectorKEKs(t *testing.T) (string, map[string]*local.KEK) {
	t.Helper()
	dir, err := filepath.Abs(vectorDir)
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	for _, name := range vectorKeyFiles {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tmp, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(tmp)
	keks := map[string]*local.KEK{}
	for _, name := range vectorKeyFiles {
		k, err := local.OpenFile(name)
		if err != nil {
			t.Fatal(err)
		}
		keks[name] = k
	}
	return dir, keks
}

func loadVectors(t *testing.T, dir string) []*vector {
	t.Helper()
	files, err := testvec.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var vs []*vector
	for _, f := range files {
		v, err := parseVector(f)
		if err != nil {
			t.Fatal(err)
		}
		vs = append(vs, v)
	}
	return vs
}

// Parameters of the vectors.
const (
	vectorChunkSize = stream.MinChunkSize
	vectorTableSize = 512
)

// vectorContext is the encryption context of most vectors, sorted by key.
var vectorContext = []string{"purpose", "test vectors", "tenant", "kpcrypt"}

func contextMap(pairs []string) map[string]string {
	m := map[string]string{}
	for i := 0; i < len(pairs); i += 2 {
		m[pairs[i]] = pairs[i+1]
	}
	return m
}

// vectorSeed makes crypto/rand (and so the DEK, the salt and Tink's nonces)
// deterministic, from the vector's name: each vector is reproducible alone.
func vectorSeed(t *testing.T, name string) {
	s := sha256.Sum256([]byte("kpcrypt envelope test vector " + name))
	cryptotest.SetGlobalRandom(t, binary.BigEndian.Uint64(s[:8]))
}

// encryptReal encrypts pt with the package's Encrypter.
func encryptReal(t *testing.T, keks []kms.KEK, sized bool, ctxPairs []string, pt []byte) []byte {
	t.Helper()
	enc := &Encrypter{KEKs: keks, ChunkSize: vectorChunkSize, SlotTableSize: vectorTableSize, Workers: 1}
	if len(ctxPairs) > 0 {
		enc.Context = contextMap(ctxPairs)
	}
	size := int64(UnknownSize)
	if sized {
		size = int64(len(pt))
	}
	var buf bytes.Buffer
	w, err := enc.NewWriter(context.Background(), &buf, size)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(pt); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// encryptBySpec builds the same file as the Encrypter from FORMAT.md alone,
// drawing randomness in the same order (DEK, salt, then each KEK's wrap),
// but wrapping under the KEKs one after the other: the Encrypter wraps them
// concurrently, so with several KEKs the order in which they draw from the
// deterministic source would vary.
func encryptBySpec(t *testing.T, keks []kms.KEK, sized bool, ctxPairs []string, pt []byte) []byte {
	t.Helper()
	dek := make([]byte, stream.KeySize)
	rand.Read(dek)
	sh, err := stream.NewHeader(dek, vectorChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	size := int64(-1)
	if sized {
		size = int64(len(pt))
	}
	core := specCore(vectorTableSize, size, sh, specContext(ctxPairs...))
	copy(core[len(core)-specMACSize:], specMAC(t, dek, core))
	var slots []rawSlot
	for _, k := range keks {
		w, err := k.Wrap(context.Background(), dek, specAAD(core, k.URI()))
		if err != nil {
			t.Fatal(err)
		}
		slots = append(slots, rawSlot{1, k.URI(), w.KeyVersion, w.Ciphertext})
	}
	table := specTable(vectorTableSize, 1, byte(len(slots)), slots)
	c, err := stream.NewCipher(dek, sh)
	if err != nil {
		t.Fatal(err)
	}
	var body bytes.Buffer
	w := c.NewWriter(&body, &stream.Options{Workers: 1})
	if _, err := w.Write(pt); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return slices.Concat(core, table, table, body.Bytes())
}

// generateVectors builds every vector from the key files in keks.
func generateVectors(t *testing.T, keks map[string]*local.KEK) []*vector {
	k1, k2, k3 := keks["kek.json"], keks["kek-2.json"], keks["kek-3.json"]
	cs := vectorChunkSize
	var vs []*vector
	add := func(v *vector) { vs = append(vs, v) }
	valid := func(name string, file []byte, keyring []string, slot int, pt []byte, comment string) {
		s := sha256.Sum256(pt)
		add(&vector{name: name, expect: expectSuccess, keyring: keyring, slot: slot, size: int64(len(pt)), sum: s[:], comment: comment, file: file})
	}
	invalid := func(name, expect string, file []byte, keyring []string, comment string) {
		add(&vector{name: name, expect: expect, keyring: keyring, comment: comment, file: file})
	}
	// byEncrypter encrypts with the Encrypter, and checks that the spec's
	// encoding gives the same bytes from the same randomness.
	byEncrypter := func(name string, sized bool, ctxPairs []string, pt []byte) []byte {
		vectorSeed(t, name)
		file := encryptReal(t, []kms.KEK{k1}, sized, ctxPairs, pt)
		vectorSeed(t, name)
		if bySpec := encryptBySpec(t, []kms.KEK{k1}, sized, ctxPairs, pt); !bytes.Equal(bySpec, file) {
			t.Fatalf("%s: the Encrypter's output differs from FORMAT.md's encoding", name)
		}
		return file
	}
	one := []string{"kek.json"}

	// Valid files.
	pt := testPlaintext(cs + 100)
	base := byEncrypter("valid-1-slot", true, vectorContext, pt)
	valid("valid-1-slot", base, one, 0, pt, "one local KEK, size recorded, a context, two chunks")
	vectorSeed(t, "valid-3-slots")
	three := encryptBySpec(t, []kms.KEK{k1, k2, k3}, true, vectorContext, pt)
	valid("valid-3-slots", three, []string{"kek-3.json"}, 2, pt,
		"three local KEKs; opened by the third alone, which the keyring offers for every slot (same scheme)")
	ptUnsized := testPlaintext(2 * cs)
	valid("valid-unknown-size", byEncrypter("valid-unknown-size", false, nil, ptUnsized), one, 0, ptUnsized,
		"size not recorded (flags 0), no context, two full chunks and an empty final chunk")
	valid("valid-empty", byEncrypter("valid-empty", true, nil, nil), one, 0, nil, "empty plaintext, size 0 recorded, no context")
	// The context rules at their limits: 64 pairs, a key of 255 bytes, an
	// empty value, UTF-8 beyond ASCII in a key and a value.
	var edges []string
	for i := range 61 {
		v := "v"
		switch i {
		case 0:
			v = ""
		case 1:
			v = "значение"
		}
		edges = append(edges, fmt.Sprintf("k%02d", i), v)
	}
	edges = append(edges, "purpose", "test vectors", strings.Repeat("z", 255), "v", "ключ", "v")
	valid("valid-context-limits", byEncrypter("valid-context-limits", true, edges, pt), one, 0, pt,
		"context of 64 pairs: k00 to k60, purpose, a 255-byte key of z and a UTF-8 key (ключ), in byte order; k00's value is empty, k01's is UTF-8 (значение)")

	// Changes to the base file.
	bp := split(t, base)
	x := bp.macOffset() - offCtx
	edit := func(f func(p *fileParts)) []byte {
		p := bp.clone()
		f(p)
		return p.join()
	}
	flip := func(off int, mask byte) []byte { return edit(func(p *fileParts) { p.core[off] ^= mask }) }
	setU32 := func(off int, v uint32) []byte {
		return edit(func(p *fileParts) { binary.BigEndian.PutUint32(p.core[off:], v) })
	}
	dek := unwrapDEK(t, bp, 0, 0, k1)
	k2Slot := func(seq uint64) []byte {
		w, err := k2.Wrap(context.Background(), dek, specAAD(bp.core, k2.URI()))
		if err != nil {
			t.Fatal(err)
		}
		return specTable(vectorTableSize, seq, 1, []rawSlot{{1, k2.URI(), w.KeyVersion, w.Ciphertext}})
	}
	k1Slot := func(seq uint64) []byte {
		s := bp.table(t, 0).Slots[0]
		return specTable(vectorTableSize, seq, 1, []rawSlot{{1, s.URI, s.KeyVersion, s.Wrapped}})
	}
	garbage := func(b []byte) {
		for i := len(b) / 2; i < len(b); i++ {
			b[i] = 0xa5
		}
	}

	valid("valid-copy-0-torn", edit(func(p *fileParts) { garbage(p.tables[0]) }), one, 0, pt,
		"the second half of table copy 0 is garbage (a torn write): copy 1 opens the file")
	valid("valid-copy-1-torn", edit(func(p *fileParts) { garbage(p.tables[1]) }), one, 0, pt,
		"the second half of table copy 1 is garbage (a torn write): copy 0 opens the file")
	vectorSeed(t, "valid-newer-table-in-copy-1")
	valid("valid-newer-table-in-copy-1", edit(func(p *fileParts) { p.tables[1] = k2Slot(2) }), []string{"kek-2.json"}, 0, pt,
		"copy 0 has sequence 1 and a slot for kek.json, copy 1 sequence 2 and a slot for kek-2.json: copy 1 is current")
	vectorSeed(t, "older-table-in-copy-1")
	invalid("older-table-in-copy-1", expectNoKEK, edit(func(p *fileParts) {
		p.tables[0], p.tables[1] = k1Slot(3), k2Slot(2)
	}), []string{"kek-2.json"}, "copy 0 has sequence 3 and a slot for kek.json, copy 1 sequence 2 and one for kek-2.json: kek-2.json is not in the current table")
	invalid("wrong-kek", expectNoKEK, base, []string{"kek-2.json"}, "valid-1-slot opened with another KEK")

	// The core's fields.
	invalid("bad-magic", expectInvalidHeader, flip(0, 0x01), one, "first byte of the magic changed")
	invalid("unknown-version", expectInvalidHeader, flip(offVersion, 0x03), one, "format version 2")
	invalid("flags-unknown-bit", expectInvalidHeader, flip(offFlags, 0x04), one, "flag bit 2 set")
	invalid("flags-compressed-with-size", expectInvalidHeader, flip(offFlags, 0x02), one, "flag bit 1 (compressed) set beside bit 0 (size recorded)")
	invalid("flags-size-cleared", expectInvalidHeader, flip(offFlags, 0x01), one, "flag bit 0 cleared, the plaintext size still non-zero")
	invalid("slot-table-size-changed", expectInvalidHeader, setU32(offTableSize, vectorTableSize+256), one,
		"slot table size 512 -> 768, within range: both copies are then read at the wrong offsets and fail their checksums")
	invalid("slot-table-size-out-of-range", expectInvalidHeader, setU32(offTableSize, format.MaxSlotTableSize+1), one, "slot table size 65537")
	invalid("slot-table-size-under-minimum", expectInvalidHeader, setU32(offTableSize, format.MinSlotTableSize-1), one, "slot table size 255")
	setSize := func(v uint64) []byte {
		return edit(func(p *fileParts) { binary.BigEndian.PutUint64(p.core[offPlainSize:], v) })
	}
	invalid("plaintext-size-over-chunk-limit", expectInvalidHeader, setSize(1<<44), one,
		"plaintext size 2^44, which needs 2^32 + 1 chunks of 4096 bytes: over the chunk limit")
	invalid("plaintext-size-over-int63", expectInvalidHeader, setSize(1<<63), one, "plaintext size 2^63")
	invalid("plaintext-size-changed", expectNoKEK, flip(offPlainSize+7, 0x01), one, "plaintext size + 1: the core changed, so its slot's AAD")
	invalid("chunk-size-changed", expectNoKEK, setU32(offChunkSize, 2*uint32(cs)), one, "chunk size 4096 -> 8192, within range: the AAD binds it")
	invalid("chunk-size-out-of-range", expectInvalidHeader, setU32(offChunkSize, uint32(cs)-1), one, "chunk size 4095")
	invalid("salt-changed", expectNoKEK, flip(offSalt, 0x01), one, "first bit of the salt flipped")
	invalid("commitment-changed", expectNoKEK, flip(offCommitment+31, 0x80), one, "last bit of the commitment flipped")
	invalid("context-changed", expectNoKEK, flip(offCtx+x-1, 0x01), one, "last byte of the context (a value) changed")
	invalid("mac-changed", expectNoKEK, flip(offCtx+x, 0x01), one, "first bit of the header MAC flipped")

	// Changes made by a holder of the KEK, who wraps the DEK again for the
	// changed core.
	rewrapped := func(name string, remac bool, f func(p *fileParts)) []byte {
		vectorSeed(t, name)
		p := bp.clone()
		f(p)
		rewrap(t, p, dek, remac, k1)
		return p.join()
	}
	invalid("mac-changed-rewrapped", expectHeaderAuth, rewrapped("mac-changed-rewrapped", false, func(p *fileParts) { p.core[offCtx+x] ^= 1 }), one,
		"MAC flipped and the DEK wrapped again for the new core: the unwrap succeeds, the MAC fails")
	invalid("salt-changed-rewrapped", expectCommitment, rewrapped("salt-changed-rewrapped", true, func(p *fileParts) { p.core[offSalt] ^= 1 }), one,
		"salt flipped, MAC recomputed and DEK wrapped again with the DEK: the stream commitment fails")
	invalid("plaintext-size-changed-rewrapped", expectSizeMismatch, rewrapped("plaintext-size-changed-rewrapped", true, func(p *fileParts) { p.core[offPlainSize+7] ^= 1 }), one,
		"plaintext size + 1, MAC recomputed and DEK wrapped again: the body that size implies is one byte longer than the file's, which authenticates one byte short")
	invalid("plaintext-size-decreased-rewrapped", expectAuth, rewrapped("plaintext-size-decreased-rewrapped", true, func(p *fileParts) {
		binary.BigEndian.PutUint64(p.core[offPlainSize:], uint64(len(pt)-1))
	}), one, "plaintext size - 1, MAC recomputed and DEK wrapped again: the body that size implies ends one byte before the file's, inside the final chunk's tag, which fails before the byte after it is looked at")
	invalid("plaintext-size-at-chunk-limit-rewrapped", expectSizeMismatch, rewrapped("plaintext-size-at-chunk-limit-rewrapped", true, func(p *fileParts) {
		binary.BigEndian.PutUint64(p.core[offPlainSize:], 1<<44-1)
	}), one, "plaintext size 2^44 - 1 (2^32 chunks of 4096 bytes, the limit, so a valid header), MAC recomputed and DEK wrapped again: the body authenticates 4196 bytes")

	// The checks after an unwrap, in order: key length, key version and
	// MAC (header authentication), then the commitment.
	invalid("salt-and-mac-changed-rewrapped", expectHeaderAuth, rewrapped("salt-and-mac-changed-rewrapped", false, func(p *fileParts) { p.core[offSalt] ^= 1 }), one,
		"salt flipped, MAC not recomputed, DEK wrapped again: the MAC is checked before the commitment")
	invalid("salt-and-version-changed-rewrapped", expectHeaderAuth, func() []byte {
		vectorSeed(t, "salt-and-version-changed-rewrapped")
		p := bp.clone()
		p.core[offSalt] ^= 1
		rewrap(t, p, dek, true, k1)
		tb := p.table(t, 0)
		tb.Slots[0].KeyVersion += "0"
		p.setTables(t, tb)
		return p.join()
	}(), one, "salt flipped, MAC recomputed, DEK wrapped again, a 0 appended to the key version: the version is checked before the commitment")
	invalid("dek-31-bytes-rewrapped", expectHeaderAuth, func() []byte {
		vectorSeed(t, "dek-31-bytes-rewrapped")
		p := bp.clone()
		short := dek[:31]
		copy(p.core[p.macOffset():], specMAC(t, short, p.core))
		w, err := k1.Wrap(context.Background(), short, specAAD(p.core, k1.URI()))
		if err != nil {
			t.Fatal(err)
		}
		tb := p.table(t, 0)
		tb.Slots[0].Wrapped = w.Ciphertext
		p.setTables(t, tb)
		return p.join()
	}(), one, "a holder of the KEK wraps the first 31 bytes of the DEK, and computes the MAC with them: an unwrapped key that is not 32 bytes")

	// The slots.
	slotEdit := func(f func(s *format.Slot)) []byte {
		return edit(func(p *fileParts) {
			tb := p.table(t, 0)
			f(&tb.Slots[0])
			p.setTables(t, tb)
		})
	}
	invalid("slot-version-changed", expectHeaderAuth, slotEdit(func(s *format.Slot) { s.KeyVersion += "0" }), one,
		"a 0 appended to the slot's key version (checksums recomputed): the KEK reports another version")
	invalid("wrapped-dek-changed", expectNoKEK, slotEdit(func(s *format.Slot) { s.Wrapped[len(s.Wrapped)-1] ^= 1 }), one,
		"last bit of the wrapped DEK flipped (checksums recomputed)")
	invalid("slot-uri-relabelled", expectNoKEK, slotEdit(func(s *format.Slot) { s.URI = "local:kek-2.json" }), one,
		"the slot's URI changed to local:kek-2.json (checksums recomputed): the URI is in the AAD")
	vectorSeed(t, "slot-from-other-file")
	other := split(t, encryptReal(t, []kms.KEK{k1}, true, vectorContext, pt))
	invalid("slot-from-other-file", expectNoKEK, edit(func(p *fileParts) { p.tables = other.tables }), one,
		"both table copies taken from another file under the same KEK: the AAD binds the slot to its core")
	invalid("slot-recipe-changed", expectNoKEK, slotEdit(func(s *format.Slot) { s.AADRecipe = 2 }), one,
		"the slot's AAD recipe changed from 1 to 2 (checksums recomputed): the unwrap is given another AAD")

	// The keyring: KEKs come from the caller, never from a slot's URI.
	vectorSeed(t, "valid-key-file-renamed")
	const renamed = "local:/etc/kpcrypt/old-name.json"
	valid("valid-key-file-renamed", edit(func(p *fileParts) {
		w, err := k1.Wrap(context.Background(), dek, specAAD(p.core, renamed))
		if err != nil {
			t.Fatal(err)
		}
		tb := specTable(vectorTableSize, 1, 1, []rawSlot{{1, renamed, w.KeyVersion, w.Ciphertext}})
		p.tables = [2][]byte{tb, tb}
	}), one, 0, pt, "the slot's URI is "+renamed+", wrapped under kek.json with that URI in the AAD: a keyring KEK is offered to every slot of its scheme")
	vectorSeed(t, "uri-names-key-not-in-keyring")
	invalid("uri-names-key-not-in-keyring", expectNoKEK, edit(func(p *fileParts) { p.tables[0], p.tables[1] = k2Slot(1), k2Slot(1) }), one,
		"one slot, local:kek-2.json, wrapped under kek-2.json; the keyring holds kek.json alone: the file that a URI names is never loaded")

	// Recipe 2: a slot bound to the context, not to the core.
	encCtx := specContext(vectorContext...)
	sharedTable := func(dek []byte) []byte {
		w, err := k1.Wrap(context.Background(), dek, specSharedAAD(encCtx, k1.URI()))
		if err != nil {
			t.Fatal(err)
		}
		return specTable(vectorTableSize, 1, 1, []rawSlot{{2, k1.URI(), w.KeyVersion, w.Ciphertext}})
	}
	vectorSeed(t, "valid-shared-slot")
	shared := edit(func(p *fileParts) { tb := sharedTable(dek); p.tables = [2][]byte{tb, tb} })
	valid("valid-shared-slot", shared, one, 0, pt, "valid-1-slot with its slot replaced by a recipe-2 slot for the same DEK")
	sp := split(t, shared)
	sharedEdit := func(f func(p *fileParts)) []byte { p := sp.clone(); f(p); return p.join() }
	invalid("shared-slot-context-changed", expectNoKEK, sharedEdit(func(p *fileParts) { p.core[offCtx+x-1] ^= 1 }), one,
		"valid-shared-slot with the last byte of the context changed: the recipe-2 AAD binds the context")
	invalid("shared-slot-salt-changed", expectHeaderAuth, sharedEdit(func(p *fileParts) { p.core[offSalt] ^= 1 }), one,
		"valid-shared-slot with a bit of the salt flipped: the recipe-2 slot still unwraps, the MAC fails")
	vectorSeed(t, "shared-slot-from-other-file")
	otherDEK := unwrapDEK(t, other, 0, 0, k1)
	invalid("shared-slot-from-other-file", expectHeaderAuth, edit(func(p *fileParts) { tb := sharedTable(otherDEK); p.tables = [2][]byte{tb, tb} }), one,
		"a recipe-2 slot for the DEK of another file with the same context: it unwraps (to the wrong DEK), the MAC fails")

	// Bounds.
	invalid("context-length-over-bound", expectInvalidHeader, edit(func(p *fileParts) {
		binary.BigEndian.PutUint16(p.core[offCtxLen:], format.MaxContextSize+1)
	}), one, "context length 16385")
	invalid("slot-count-over-bound", expectInvalidHeader, edit(func(p *fileParts) {
		for i := range 2 {
			p.tables[i][12] = format.MaxSlots + 1
			resum(p.tables[i])
		}
	}), one, "slot count 33 in both copies (checksums recomputed)")
	invalid("uri-over-bound", expectInvalidHeader, edit(func(p *fileParts) {
		binary.BigEndian.PutUint32(p.core[offTableSize:], 2048)
		s := p.table(t, 0).Slots[0]
		tb := specTable(2048, 1, 1, []rawSlot{{1, "local:" + strings.Repeat("k", format.MaxURILength-5), s.KeyVersion, s.Wrapped}})
		p.tables = [2][]byte{tb, tb}
	}), one, "slot table size 2048 and a slot URI of 1025 bytes in both copies")
	invalid("both-copies-torn", expectInvalidHeader, edit(func(p *fileParts) { garbage(p.tables[0]); garbage(p.tables[1]) }), one,
		"the second half of both table copies is garbage")
	invalid("truncated-in-core", expectInvalidHeader, base[:offCtx+5], one, "the file ends 5 bytes into the context")
	invalid("truncated-in-copy-0", expectInvalidHeader, base[:len(bp.core)+100], one, "the file ends 100 bytes into table copy 0")
	invalid("truncated-in-copy-1", expectInvalidHeader, base[:len(bp.core)+2*vectorTableSize-1], one,
		"the file ends one byte before the body, inside table copy 1, while copy 0 is whole and valid")

	// The context rules (the core changes, so the MAC and AAD would fail
	// too, but the parse comes first).
	setCtx := func(ctx []byte) []byte {
		return edit(func(p *fileParts) {
			mac := p.core[p.macOffset():]
			core := slices.Clone(p.core[:offCtxLen])
			core = binary.BigEndian.AppendUint16(core, uint16(len(ctx)))
			p.core = slices.Concat(core, ctx, mac)
		})
	}
	invalid("context-key-not-utf8", expectInvalidHeader, setCtx(specContext("purpose\xff", "test vectors", "tenant", "kpcrypt")), one, "the key purpose followed by the byte ff")
	invalid("context-value-not-utf8", expectInvalidHeader, setCtx(specContext("purpose", "test vectors", "tenant", "kpcrypt\xc3")), one, "the value kpcrypt followed by the byte c3, a cut UTF-8 sequence")
	invalid("context-not-sorted", expectInvalidHeader, setCtx(specContext("tenant", "kpcrypt", "purpose", "test vectors")), one, "tenant before purpose")
	invalid("context-duplicate-key", expectInvalidHeader, setCtx(specContext("purpose", "test vectors", "purpose", "x", "tenant", "kpcrypt")), one, "the key purpose twice")
	invalid("context-empty-key", expectInvalidHeader, setCtx(specContext("", "x", "purpose", "test vectors", "tenant", "kpcrypt")), one, "a first pair with an empty key")
	var many []string
	for i := range 65 {
		many = append(many, fmt.Sprintf("k%02d", i), "v")
	}
	invalid("context-65-pairs", expectInvalidHeader, setCtx(specContext(many...)), one, "65 pairs k00 to k64, each with value v")
	ctxBytes := specContext(vectorContext...)
	invalid("context-value-overrun", expectInvalidHeader, setCtx(ctxBytes[:len(ctxBytes)-1]), one,
		"the context length one byte short: the last value's length runs past the context")
	invalid("context-key-overrun", expectInvalidHeader, setCtx(append(slices.Clone(ctxBytes), 5)), one,
		"one byte 05 after the pairs: a key length with no key")

	// The slot table rules, in both copies, checksums recomputed.
	s0 := bp.table(t, 0).Slots[0]
	raw0 := rawSlot{1, s0.URI, s0.KeyVersion, s0.Wrapped}
	tables := func(f func(b []byte) []byte) []byte {
		return edit(func(p *fileParts) {
			for i := range 2 {
				p.tables[i] = resum(f(p.tables[i]))
			}
		})
	}
	rawSlots := func(seq uint64, count byte, f func(r *rawSlot)) []byte {
		r := raw0
		f(&r)
		return tables(func([]byte) []byte { return specTable(vectorTableSize, seq, count, []rawSlot{r}) })
	}
	invalid("table-padding-not-zero", expectInvalidHeader, tables(func(b []byte) []byte { b[len(b)-sha256.Size-1] = 1; return b }), one,
		"the last padding byte before the checksum is 01")
	invalid("table-magic-changed", expectInvalidHeader, tables(func(b []byte) []byte { b[0] ^= 1; return b }), one, "first byte of the table magic changed")
	invalid("table-sequence-zero", expectInvalidHeader, rawSlots(0, 1, func(*rawSlot) {}), one, "sequence 0")
	invalid("slot-count-zero", expectInvalidHeader, rawSlots(1, 0, func(*rawSlot) {}), one, "slot count 0 (the slot's bytes follow as non-zero padding)")
	invalid("slot-recipe-zero", expectInvalidHeader, rawSlots(1, 1, func(r *rawSlot) { r.recipe = 0 }), one, "AAD recipe 0")
	invalid("slot-recipe-unknown", expectInvalidHeader, rawSlots(1, 1, func(r *rawSlot) { r.recipe = 3 }), one, "AAD recipe 3")
	invalid("slot-uri-empty", expectInvalidHeader, rawSlots(1, 1, func(r *rawSlot) { r.uri = "" }), one, "URI length 0")
	invalid("slot-uri-space", expectInvalidHeader, rawSlots(1, 1, func(r *rawSlot) { r.uri = "local:kek .json" }), one, "a space (20) in the URI")
	invalid("slot-uri-not-ascii", expectInvalidHeader, rawSlots(1, 1, func(r *rawSlot) { r.uri = "local:kék.json" }), one, "a UTF-8 é (c3 a9) in the URI")
	invalid("slot-version-del", expectInvalidHeader, rawSlots(1, 1, func(r *rawSlot) { r.version += "\x7f" }), one, "a DEL (7f) after the key version")
	invalid("slot-wrapped-empty", expectInvalidHeader, rawSlots(1, 1, func(r *rawSlot) { r.wrapped = nil }), one, "wrapped length 0")
	invalid("slot-wrapped-over-bound", expectInvalidHeader, edit(func(p *fileParts) {
		binary.BigEndian.PutUint32(p.core[offTableSize:], 8192)
		tb := specTable(8192, 1, 1, []rawSlot{{1, s0.URI, s0.KeyVersion, bytes.Repeat([]byte{1}, format.MaxWrappedSize+1)}})
		p.tables = [2][]byte{tb, tb}
	}), one, "slot table size 8192 and a wrapped DEK of 4097 bytes in both copies")
	invalid("slot-overruns-table", expectInvalidHeader, tables(func(b []byte) []byte {
		off := 13 + 1 + 2 + len(s0.URI) + 1 + len(s0.KeyVersion)
		binary.BigEndian.PutUint16(b[off:], 500)
		return b
	}), one, "wrapped length 500: the slot runs past the 480 bytes before the checksum")

	// The body.
	invalid("trailing-data", expectTrailingData, slices.Concat(base, []byte("extra")), one, "five bytes after the body of a file whose size is recorded")
	invalid("body-bit-flip", expectAuth, edit(func(p *fileParts) { p.body[7] ^= 0x04 }), one, "a bit of chunk 0 flipped")
	invalid("body-ends-inside-tag", expectAuth, edit(func(p *fileParts) { p.body = p.body[:cs+stream.TagSize+5] }), one,
		"the body ends 5 bytes into the final chunk, too short for a tag")
	invalid("truncated-body", expectTruncated, edit(func(p *fileParts) { p.body = p.body[:cs+stream.TagSize] }), one,
		"the final chunk dropped: the body ends after a full chunk")
	return vs
}

func TestVectors(t *testing.T) {
	if *updateVectors {
		if err := os.MkdirAll(vectorDir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, name := range vectorKeyFiles {
			path := filepath.Join(vectorDir, name)
			if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
				if _, err := local.Generate(path); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	dir, keks := vectorKEKs(t)
	if *updateVectors {
		old, _ := filepath.Glob(filepath.Join(dir, "*.vec"))
		for _, p := range old {
			os.Remove(p)
		}
		for _, v := range generateVectors(t, keks) {
			if err := os.WriteFile(filepath.Join(dir, v.name+".vec"), v.marshal(), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	vs := loadVectors(t, dir)
	seen := map[string]bool{}
	for _, v := range vs {
		seen[v.expect] = true
		t.Run(v.name, func(t *testing.T) { checkVector(t, v, keks) })
	}
	for e := range expectErr {
		if !seen[e] {
			t.Errorf("no vector expects %q", e)
		}
	}
	if !seen[expectSuccess] {
		t.Error("no valid vector")
	}
}

// TestVectorsUpToDate fails when the code would now generate different
// vectors from those committed: a format change needs regenerated vectors
// (and FORMAT.md updated with them).
func TestVectorsUpToDate(t *testing.T) {
	dir, keks := vectorKEKs(t)
	onDisk := map[string][]byte{}
	for _, v := range loadVectors(t, dir) {
		onDisk[v.name] = v.marshal()
	}
	generated := generateVectors(t, keks)
	if len(generated) != len(onDisk) {
		t.Errorf("generator makes %d vectors, testdata has %d: run go test ./envelope -run TestVectors -update", len(generated), len(onDisk))
	}
	for _, v := range generated {
		if !bytes.Equal(onDisk[v.name], v.marshal()) {
			t.Errorf("vector %s differs from what the code generates: run go test ./envelope -run TestVectors -update", v.name)
		}
	}
}

func checkVector(t *testing.T, v *vector, keks map[string]*local.KEK) {
	ctx := t.Context()
	want := expectErr[v.expect]
	var ring KEKs
	for _, name := range v.keyring {
		ring = append(ring, keks[name])
	}
	check := func(how string, pt []byte, slot *OpenedSlot, err error) {
		t.Helper()
		if want == nil {
			if err != nil {
				t.Errorf("%s: %v, want success", how, err)
				return
			}
			if s := sha256.Sum256(pt); int64(len(pt)) != v.size || !bytes.Equal(s[:], v.sum) {
				t.Errorf("%s: %d bytes of plaintext, not the vector's", how, len(pt))
			}
			if slot != nil && slot.Index != v.slot {
				t.Errorf("%s: opened slot %d, want %d", how, slot.Index, v.slot)
			}
			return
		}
		checkClass(t, how, err, want)
		if v.expect == expectNoKEK && !errors.Is(err, kms.ErrWrongKey) {
			t.Errorf("%s: %v does not wrap kms.ErrWrongKey", how, err)
		}
	}

	// Inspect parses the header alone: it refuses exactly the invalid ones.
	_, err := Inspect(bytes.NewReader(v.file))
	if v.expect == expectInvalidHeader {
		checkClass(t, "Inspect", err, ErrInvalidHeader)
	} else if err != nil {
		t.Errorf("Inspect: %v", err)
	}

	// Open, behind counters: an invalid header calls neither the keyring
	// nor any KEK.
	var counted KEKs
	for _, k := range ring {
		counted = append(counted, &countingKEK{KEK: k})
	}
	kr := &countingKeyring{Keyring: counted}
	pt, err := Open(ctx, v.file, kr)
	check("Open", pt, nil, err)
	if v.expect == expectInvalidHeader {
		calls := kr.calls.Load()
		for _, k := range counted {
			calls += k.(*countingKEK).calls()
		}
		if calls != 0 {
			t.Errorf("%d keyring and KEK calls for an invalid header", calls)
		}
	}

	for _, workers := range []int{1, 3} {
		how := fmt.Sprintf("Reader(workers=%d)", workers)
		r, err := (&Decrypter{Keyring: ring, Workers: workers}).NewReader(ctx, bytes.NewReader(v.file))
		if err != nil {
			check(how, nil, nil, err)
			continue
		}
		pt, err := io.ReadAll(r)
		slot := r.Slot()
		r.Close()
		check(how, pt, &slot, err)
	}

	ra, err := NewReaderAt(ctx, bytes.NewReader(v.file), int64(len(v.file)), ring)
	if err != nil {
		check("ReaderAt", nil, nil, err)
		return
	}
	pt = make([]byte, ra.Size())
	_, err = ra.ReadAt(pt, 0)
	slot := ra.Slot()
	check("ReaderAt", pt, &slot, err)
}

// TestVectorsLocalKEKBySpec unwraps the slot that opens each valid vector
// from FORMAT.md §7.1 alone, as another implementation would: the Tink JSON
// keyset read with encoding/json, the AesGcmKey protobuf by hand, AES-GCM
// from the standard library, and no Tink. It then checks the key version
// and the header MAC (§3.2, §2.2) with the DEK it found.
func TestVectorsLocalKEKBySpec(t *testing.T) {
	dir, _ := vectorKEKs(t)
	type tinkKey struct {
		KeyData struct {
			TypeURL string `json:"typeUrl"`
			Value   []byte `json:"value"` // standard base64
		} `json:"keyData"`
		Status           string `json:"status"`
		KeyID            uint32 `json:"keyId"`
		OutputPrefixType string `json:"outputPrefixType"`
	}
	keysets := map[string][]tinkKey{}
	for _, name := range vectorKeyFiles {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		var ks struct {
			Key []tinkKey `json:"key"`
		}
		if err := json.Unmarshal(data, &ks); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		keysets[name] = ks.Key
	}
	// aesGcmKey returns field 3 of an AesGcmKey message; field 1 must be 0.
	aesGcmKey := func(msg []byte) []byte {
		var key []byte
		for len(msg) > 0 {
			tag, n := binary.Uvarint(msg)
			if n <= 0 {
				return nil
			}
			msg = msg[n:]
			switch tag {
			case 1<<3 | 0:
				v, n := binary.Uvarint(msg)
				if n <= 0 || v != 0 {
					return nil
				}
				msg = msg[n:]
			case 3<<3 | 2:
				l, n := binary.Uvarint(msg)
				if n <= 0 || uint64(len(msg)-n) < l {
					return nil
				}
				key, msg = msg[n:n+int(l)], msg[n+int(l):]
			default:
				return nil
			}
		}
		return key
	}
	const typeURL = "type.googleapis.com/google.crypto.tink.AesGcmKey"
	n := 0
	for _, v := range loadVectors(t, dir) {
		if v.expect != expectSuccess {
			continue
		}
		p := split(t, v.file)
		var tb *format.SlotTable
		for i := range 2 {
			if x, err := format.ParseSlotTable(p.tables[i]); err == nil && (tb == nil || x.Sequence > tb.Sequence) {
				tb = x
			}
		}
		s := tb.Slots[v.slot]
		aad := specAAD(p.core, s.URI)
		if s.AADRecipe == format.AADRecipeShared {
			aad = specSharedAAD(p.core[offCtx:p.macOffset()], s.URI)
		}
		w := s.Wrapped
		if len(w) != 5+12+32+16 || w[0] != 0x01 {
			t.Errorf("%s: wrapped DEK of %d bytes starting %x, want 65 bytes starting 01", v.name, len(w), w[:1])
			continue
		}
		id := binary.BigEndian.Uint32(w[1:5])
		var dek []byte
		for _, name := range v.keyring {
			for _, k := range keysets[name] {
				key := aesGcmKey(k.KeyData.Value)
				if k.Status != "ENABLED" || k.KeyData.TypeURL != typeURL || k.OutputPrefixType != "TINK" || len(key) != 32 || k.KeyID != id {
					continue
				}
				block, err := aes.NewCipher(key)
				if err != nil {
					t.Fatal(err)
				}
				g, err := cipher.NewGCM(block)
				if err != nil {
					t.Fatal(err)
				}
				if pt, err := g.Open(nil, w[5:17], w[17:], aad); err == nil {
					dek = pt
				}
			}
		}
		switch {
		case len(dek) != stream.KeySize:
			t.Errorf("%s: no key of the keyring unwraps slot %d by FORMAT.md §7.1", v.name, v.slot)
		case s.KeyVersion != strconv.FormatUint(uint64(id), 10):
			t.Errorf("%s: slot version %q, key ID %d", v.name, s.KeyVersion, id)
		case !bytes.Equal(specMAC(t, dek, p.core), p.core[p.macOffset():]):
			t.Errorf("%s: the DEK unwrapped by §7.1 does not verify the header MAC", v.name)
		}
		n++
	}
	if n == 0 {
		t.Fatal("no valid vector")
	}
}
