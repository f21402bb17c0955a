package stream

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"testing/cryptotest"

	"github.com/kpcrypt/kpcrypt/internal/testvec"
)

// The test vectors live in ../testdata/stream, one file per vector: a few
// "key: value" lines, an empty line, then the raw stream. FORMAT.md §6
// describes them. Regenerate them after a deliberate format change with
//
//	go test ./stream -run TestVectors -update
var updateVectors = flag.Bool("update", false, "rewrite the test vectors in ../testdata/stream")

const vectorDir = "../testdata/stream"

// Expected outcomes of a vector, one per error class.
const (
	expectSuccess    = "success"
	expectHeader     = "header failure"
	expectCommitment = "commitment failure"
	expectAuth       = "authentication failure"
	expectTruncated  = "truncated"
)

var expectErr = map[string]error{
	expectHeader:     ErrInvalidHeader,
	expectCommitment: ErrKeyCommitment,
	expectAuth:       ErrAuthentication,
	expectTruncated:  ErrTruncated,
}

// The decryptors a vector is for (FORMAT.md §6).
const (
	decryptorAny        = "any"
	decryptorSequential = "sequential"
	decryptorRandom     = "random access"
)

type vector struct {
	name       string
	expect     string
	decryptor  string
	dek        []byte
	chunkSize  int
	released   []byte // SHA-256 of the plaintext a Reader releases, error or not
	comment    string
	ciphertext []byte
}

func (v *vector) marshal() []byte {
	return (&testvec.File{Fields: testvec.Pairs(
		"expect", v.expect,
		"decryptor", v.decryptor,
		"dek", hex.EncodeToString(v.dek),
		"chunk size", strconv.Itoa(v.chunkSize),
		"released sha256", hex.EncodeToString(v.released),
		"comment", v.comment,
	), Body: v.ciphertext}).Marshal()
}

func parseVector(f *testvec.File) (*vector, error) {
	v := &vector{name: f.Name, ciphertext: f.Body}
	for _, fd := range f.Fields {
		var err error
		switch fd.Key {
		case "expect":
			v.expect = fd.Value
		case "decryptor":
			v.decryptor = fd.Value
		case "dek":
			v.dek, err = hex.DecodeString(fd.Value)
		case "chunk size":
			v.chunkSize, err = strconv.Atoi(fd.Value)
		case "released sha256":
			v.released, err = hex.DecodeString(fd.Value)
		case "comment":
			v.comment = fd.Value
		default:
			err = fmt.Errorf("unknown key %q", fd.Key)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %v", f.Name, err)
		}
	}
	if _, ok := expectErr[v.expect]; !ok && v.expect != expectSuccess {
		return nil, fmt.Errorf("%s: unknown expectation %q", f.Name, v.expect)
	}
	switch v.decryptor {
	case decryptorAny, decryptorSequential, decryptorRandom:
	default:
		return nil, fmt.Errorf("%s: unknown decryptor %q", f.Name, v.decryptor)
	}
	return v, nil
}

// loadVectors reads every vector in ../testdata/stream.
func loadVectors(tb testing.TB) []*vector {
	tb.Helper()
	files, err := testvec.ReadDir(vectorDir)
	if err != nil {
		tb.Fatal(err)
	}
	var vs []*vector
	for _, f := range files {
		v, err := parseVector(f)
		if err != nil {
			tb.Fatal(err)
		}
		vs = append(vs, v)
	}
	return vs
}

// vectorPlaintext is the deterministic plaintext of n bytes used by the
// vectors: SHA-256 in counter mode over a fixed label.
func vectorPlaintext(n int) []byte {
	out := make([]byte, 0, n+sha256.Size)
	for i := 0; len(out) < n; i++ {
		s := sha256.Sum256(fmt.Appendf(nil, "kpcrypt test vector plaintext %d", i))
		out = append(out, s[:]...)
	}
	return out[:n]
}

func vectorDEK(label string) []byte {
	s := sha256.Sum256([]byte("kpcrypt test vector data key " + label))
	return s[:]
}

const vectorChunkSize = MinChunkSize

// sealStream encrypts pt as a whole stream with the given header, sealing
// chunks directly so generators can break the rules on purpose.
func sealStream(t *testing.T, dek []byte, h Header, pt []byte) (ct []byte, chunks [][]byte) {
	t.Helper()
	c, err := NewCipher(dek, h)
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	cs := h.ChunkSize
	for i := 0; ; i++ {
		end := min((i+1)*cs, len(pt))
		final := end-i*cs < cs
		chunks = append(chunks, c.seal(nil, pt[i*cs:end], uint64(i), final))
		if final {
			break
		}
	}
	return slices.Concat(append([][]byte{hdr}, chunks...)...), chunks
}

func sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// generateVectors builds every vector from a fixed DEK, with crypto/rand made
// deterministic by testing/cryptotest so that salts are reproducible.
func generateVectors(t *testing.T) []*vector {
	cryptotest.SetGlobalRandom(t, 1)
	dek := vectorDEK("main")
	cs := vectorChunkSize
	newHeader := func() Header {
		h, err := NewHeader(dek, cs)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	var vs []*vector
	valid := func(name string, n int, comment string) {
		h := newHeader()
		pt := vectorPlaintext(n)
		// The vectors are made by the real Writer, so they pin down what it
		// writes; sealStream must agree with it.
		var buf bytes.Buffer
		hdr, _ := h.MarshalBinary()
		buf.Write(hdr)
		c, err := NewCipher(dek, h)
		if err != nil {
			t.Fatal(err)
		}
		w := c.NewWriter(&buf, &Options{Workers: 1})
		if _, err := w.Write(pt); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if manual, _ := sealStream(t, dek, h, pt); !bytes.Equal(manual, buf.Bytes()) {
			t.Fatalf("%s: Writer output differs from the format's chunk rule", name)
		}
		vs = append(vs, &vector{name: name, expect: expectSuccess, decryptor: decryptorAny, dek: dek, chunkSize: cs,
			released: sum(pt), comment: comment, ciphertext: buf.Bytes()})
	}
	valid("valid-empty", 0, "empty plaintext: one empty final chunk")
	valid("valid-1", 1, "one byte")
	valid("valid-chunk-minus-1", cs-1, "one short final chunk")
	valid("valid-chunk", cs, "one full chunk, then an empty final chunk")
	valid("valid-chunk-plus-1", cs+1, "one full chunk, then a 1-byte final chunk")
	valid("valid-3-chunks-plus-5", 3*cs+5, "three full chunks, then a 5-byte final chunk")

	// The invalid vectors all start from one stream of three full chunks and
	// a 5-byte final chunk.
	h := newHeader()
	pt := vectorPlaintext(3*cs + 5)
	ct, chunks := sealStream(t, dek, h, pt)
	hdr := ct[:HeaderSize]
	released := func(nChunks int) []byte { return sum(pt[:nChunks*cs]) }
	for_ := func(decryptor, name, expect string, ct []byte, releasedChunks int, comment string) {
		// The chunk size line shows the header's field, whatever it holds.
		headerCS := cs
		if len(ct) >= 10 {
			headerCS = int(binary.BigEndian.Uint32(ct[6:10]))
		}
		vs = append(vs, &vector{name: name, expect: expect, decryptor: decryptor, dek: dek, chunkSize: headerCS,
			released: released(releasedChunks), comment: comment, ciphertext: ct})
	}
	invalid := func(name, expect string, ct []byte, releasedChunks int, comment string) {
		for_(decryptorAny, name, expect, ct, releasedChunks, comment)
	}
	flip := func(b []byte, off int, mask byte) []byte {
		b = slices.Clone(b)
		b[off] ^= mask
		return b
	}
	join := func(parts ...[]byte) []byte { return slices.Concat(parts...) }

	invalid("truncated-header", expectHeader, ct[:HeaderSize-1], 0, "the stream ends one byte before the end of the header")
	invalid("truncated-no-chunks", expectTruncated, ct[:HeaderSize], 0, "the header alone, no chunk")
	invalid("truncated-at-chunk-boundary", expectTruncated, join(hdr, chunks[0], chunks[1], chunks[2]), 3, "the final chunk is dropped: the stream ends after a full chunk")
	invalid("truncated-inside-chunk", expectAuth, ct[:HeaderSize+len(chunks[0])+100], 1, "cut 100 bytes into chunk 1, which is then taken for a final chunk and fails")
	invalid("truncated-inside-final-chunk", expectAuth, ct[:len(ct)-1], 3, "the last byte of the final chunk is missing")
	invalid("dropped-chunk", expectAuth, join(hdr, chunks[0], chunks[2], chunks[3]), 1, "chunk 1 is removed")
	invalid("duplicated-chunk", expectAuth, join(hdr, chunks[0], chunks[1], chunks[1], chunks[2], chunks[3]), 2, "chunk 1 appears twice")
	invalid("reordered-chunks", expectAuth, join(hdr, chunks[1], chunks[0], chunks[2], chunks[3]), 0, "chunks 0 and 1 are swapped")
	_, other := sealStream(t, dek, newHeader(), pt)
	invalid("transplanted-chunk", expectAuth, join(hdr, chunks[0], other[1], chunks[2], chunks[3]), 1, "chunk 1 comes from another stream under the same data key")
	invalid("trailing-data", expectAuth, join(ct, []byte("extra")), 3, "five bytes follow the final chunk")
	invalid("trailing-chunk", expectAuth, join(hdr, chunks[0], chunks[1], chunks[2], chunks[3], chunks[3]), 3, "a copy of the final chunk follows it")
	invalid("bad-magic", expectHeader, flip(ct, 0, 0x01), 0, "first byte of the magic changed")
	invalid("unknown-version", expectHeader, flip(ct, 4, 0x02), 0, "version 3")
	invalid("unknown-algorithm", expectHeader, flip(ct, 5, 0x02), 0, "algorithm 3")
	invalid("chunk-size-out-of-range", expectHeader, flip(ct, 6, 0x01), 0, "chunk size 16781312, over the 16 MiB bound")
	setCS := func(v uint32) []byte {
		b := slices.Clone(ct)
		binary.BigEndian.PutUint32(b[6:], v)
		return b
	}
	invalid("chunk-size-under-minimum", expectHeader, setCS(MinChunkSize-1), 0, "chunk size 4095, one under the 4 KiB bound")
	invalid("chunk-size-over-maximum", expectHeader, setCS(MaxChunkSize+1), 0, "chunk size 16777217, one over the 16 MiB bound")
	invalid("chunk-size-changed", expectCommitment, flip(ct, 8, 0x20), 0, "chunk size 4096 -> 12288, within bounds: the commitment binds it")
	invalid("salt-bit-flip", expectCommitment, flip(ct, 10, 0x01), 0, "first bit of the salt flipped")
	invalid("commitment-bit-flip", expectCommitment, flip(ct, HeaderSize-1, 0x80), 0, "last bit of the commitment flipped")
	invalid("body-bit-flip", expectAuth, flip(ct, HeaderSize+len(chunks[0])+7, 0x04), 1, "a bit of chunk 1's ciphertext flipped")
	invalid("tag-bit-flip", expectAuth, flip(ct, len(ct)-1, 0x01), 3, "a bit of the final chunk's tag flipped")
	invalid("body-ends-1-byte-into-chunk", expectAuth, join(hdr, chunks[0], chunks[1], chunks[2], chunks[3][:1]), 3,
		"the final chunk cut to its first byte: 1 byte after the full chunks, too short for a tag")
	invalid("body-ends-15-bytes-into-chunk", expectAuth, join(hdr, chunks[0], chunks[1], chunks[2], chunks[3][:15]), 3,
		"the final chunk cut to 15 bytes after the full chunks, too short for a tag")
	invalid("body-15-bytes", expectAuth, join(hdr, chunks[0][:15]), 0, "a body of 15 bytes: a final chunk 0 too short for a tag")

	// Two defects: each decryptor reports the first it meets (FORMAT.md
	// §1.4), the sequential one in order, the random-access one from the
	// end.
	twoDefects := join(hdr, flip(chunks[0], 5, 0x01), chunks[1], chunks[2])
	for_(decryptorSequential, "flip-and-dropped-final-sequential", expectAuth, twoDefects, 0,
		"a bit of chunk 0 flipped and the final chunk dropped: a sequential decryptor meets chunk 0 first")
	for_(decryptorRandom, "flip-and-dropped-final-random-access", expectTruncated, twoDefects, 0,
		"the stream of flip-and-dropped-final-sequential: a random-access decryptor meets the missing final chunk first")

	// Breaking the end-of-stream rule needs the key: a generator may.
	c, err := NewCipher(dek, h)
	if err != nil {
		t.Fatal(err)
	}
	fullFinal := join(hdr, chunks[0], chunks[1], c.seal(nil, pt[2*cs:3*cs], 2, true))
	invalid("full-size-final-chunk", expectAuth, fullFinal, 2, "chunk 2 is full but sealed as final: a full chunk is never final, so it is opened as a full one and fails")
	unflagged := join(hdr, chunks[0], chunks[1], chunks[2], c.seal(nil, pt[3*cs:], 3, false))
	invalid("final-chunk-without-flag", expectAuth, unflagged, 3, "the short last chunk was sealed without the final flag")

	wrong := &vector{name: "wrong-dek", expect: expectCommitment, decryptor: decryptorAny, dek: vectorDEK("other"), chunkSize: cs,
		released: released(0), comment: "a valid stream opened with another data key", ciphertext: ct}
	vs = append(vs, wrong)
	return vs
}

func TestVectors(t *testing.T) {
	if *updateVectors {
		if err := os.MkdirAll(vectorDir, 0o755); err != nil {
			t.Fatal(err)
		}
		old, _ := filepath.Glob(filepath.Join(vectorDir, "*.vec"))
		for _, p := range old {
			os.Remove(p)
		}
		for _, v := range generateVectors(t) {
			if err := os.WriteFile(filepath.Join(vectorDir, v.name+".vec"), v.marshal(), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	vs := loadVectors(t)
	for _, v := range vs {
		t.Run(v.name, func(t *testing.T) { checkVector(t, v) })
	}
}

// TestVectorsUpToDate fails when the code would now generate different
// vectors from those committed: a format change needs regenerated vectors
// (and FORMAT.md updated with them).
func TestVectorsUpToDate(t *testing.T) {
	onDisk := map[string][]byte{}
	for _, v := range loadVectors(t) {
		onDisk[v.name] = v.marshal()
	}
	generated := generateVectors(t)
	if len(generated) != len(onDisk) {
		t.Errorf("generator makes %d vectors, testdata has %d: run go test ./stream -run TestVectors -update", len(generated), len(onDisk))
	}
	for _, v := range generated {
		if !bytes.Equal(onDisk[v.name], v.marshal()) {
			t.Errorf("vector %s differs from what the code generates: run go test ./stream -run TestVectors -update", v.name)
		}
	}
}

func checkVector(t *testing.T, v *vector) {
	want := expectErr[v.expect]
	check := func(how string, got []byte, err error) {
		t.Helper()
		if !bytes.Equal(sum(got), v.released) {
			t.Errorf("%s: released %d bytes whose hash differs from the vector's", how, len(got))
		}
		if want == nil {
			if err != nil {
				t.Errorf("%s: %v, want success", how, err)
			}
			return
		}
		if !errors.Is(err, want) {
			t.Errorf("%s: error %v, want %q (%v)", how, err, v.expect, want)
		}
	}
	if v.decryptor != decryptorRandom {
		for _, workers := range []int{1, 3} {
			r, err := NewDecryptReader(bytes.NewReader(v.ciphertext), v.dek, &Options{Workers: workers})
			if err != nil {
				check(fmt.Sprintf("NewDecryptReader(workers=%d)", workers), nil, err)
				continue
			}
			var got bytes.Buffer
			_, err = io.Copy(&got, r)
			check(fmt.Sprintf("Reader(workers=%d)", workers), got.Bytes(), err)
		}
	}
	if v.decryptor == decryptorSequential {
		return
	}

	// The random-access reader, reading everything from offset 0, reports
	// the same class. What it releases is checked for a vector made for it
	// alone, and for a valid one.
	ra, err := NewDecryptReaderAt(bytes.NewReader(v.ciphertext), int64(len(v.ciphertext)), v.dek)
	var got []byte
	if err == nil {
		got = make([]byte, ra.Size())
		var n int
		n, err = ra.ReadAt(got, 0)
		got = got[:n]
		if err == io.EOF {
			err = nil
		}
	}
	if v.decryptor == decryptorRandom || v.expect == expectSuccess {
		check("ReaderAt", got, err)
	} else if !errors.Is(err, want) {
		t.Errorf("ReaderAt: error %v, want %q", err, v.expect)
	}

	// A valid vector re-encrypts to itself under its own salt.
	if v.expect == expectSuccess {
		h, err := ReadHeader(bytes.NewReader(v.ciphertext))
		if err != nil {
			t.Fatal(err)
		}
		pt := vectorPlaintext(int(ra.Size()))
		if ct, _ := sealStream(t, v.dek, h, pt); !bytes.Equal(ct, v.ciphertext) {
			t.Errorf("re-encryption under the vector's salt differs from the vector")
		}
	}
}
