package stream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"
)

// The attacks all start from one stream of three full chunks and a 5-byte
// final chunk at the minimum chunk size, and check every decryptor: the
// Reader with one and two workers, through Read and WriteTo, and the
// ReaderAt.

const (
	attackCS   = MinChunkSize
	attackFull = attackCS + TagSize
	// attackChunks is the number of chunks of the attacked stream.
	attackChunks = 4
)

type attackStream struct {
	dek    []byte
	c      *Cipher
	pt     []byte
	hdr    []byte
	chunks [][]byte
	ct     []byte
}

func newAttackStream(tb testing.TB, label string) *attackStream {
	tb.Helper()
	dek := testKey("attack")
	c := testCipher(tb, dek, attackCS, label)
	pt := testPlaintext(3*attackCS+5, 99)
	s := &attackStream{dek: dek, c: c, pt: pt, hdr: marshalHeader(tb, c.header), chunks: referenceChunks(c, pt)}
	if len(s.chunks) != attackChunks {
		tb.Fatalf("%d chunks, want %d", len(s.chunks), attackChunks)
	}
	s.ct = s.join(s.chunks...)
	return s
}

// join returns the header followed by chunks.
func (s *attackStream) join(chunks ...[]byte) []byte {
	return slices.Concat(append([][]byte{s.hdr}, chunks...)...)
}

// outcome is what a decryptor must report for a modified stream.
type outcome struct {
	// classes lists the acceptable error classes (errors.Is); usually one.
	classes []error
	// index is the ChunkError.Index, or -1 when the error is no ChunkError.
	index int
	// released is the number of leading chunks whose plaintext is released
	// before the error.
	released int
}

func fails(class error, index, released int) outcome {
	return outcome{classes: []error{class}, index: index, released: released}
}

// decryptor decrypts a whole stream and returns the plaintext it released and
// the error that ended it (io.EOF or nil on success).
type decryptor struct {
	name     string
	readerAt bool
	run      func(t *testing.T, ct, dek []byte) ([]byte, error)
}

func attackDecryptors() []decryptor {
	var ds []decryptor
	for _, workers := range []int{1, 2} {
		opts := &Options{Workers: workers}
		ds = append(ds,
			decryptor{name: fmt.Sprintf("Reader.Read/workers=%d", workers), run: func(t *testing.T, ct, dek []byte) ([]byte, error) {
				r, err := NewDecryptReader(bytes.NewReader(ct), dek, opts)
				if err != nil {
					return nil, err
				}
				defer r.Close()
				// A read size that straddles chunks.
				return readInPieces(r, 1000+workers*3097, len(ct))
			}},
			decryptor{name: fmt.Sprintf("Reader.WriteTo/workers=%d", workers), run: func(t *testing.T, ct, dek []byte) ([]byte, error) {
				r, err := NewDecryptReader(bytes.NewReader(ct), dek, opts)
				if err != nil {
					return nil, err
				}
				defer r.Close()
				var out bytes.Buffer
				_, err = io.Copy(&out, r)
				return out.Bytes(), err
			}},
		)
	}
	ds = append(ds, decryptor{name: "ReaderAt", readerAt: true, run: readAtAll})
	return ds
}

// readAtAll opens ct with NewDecryptReaderAt and reads it all with ReadAt. When
// a chunk fails it also checks that a read inside that chunk releases nothing.
func readAtAll(t *testing.T, ct, dek []byte) ([]byte, error) {
	ra, err := NewDecryptReaderAt(bytes.NewReader(ct), int64(len(ct)), dek)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, ra.Size())
	n, err := ra.ReadAt(buf, 0)
	if n == len(buf) && (err == nil || err == io.EOF) {
		return buf, nil
	}
	var ce *ChunkError
	if errors.As(err, &ce) {
		inside := make([]byte, 10)
		if k, err := ra.ReadAt(inside, int64(ce.Index)*attackCS+1); k != 0 || err == nil {
			t.Errorf("ReadAt inside failed chunk %d = %d, %v; want 0 and an error", ce.Index, k, err)
		}
	}
	return buf[:n], err
}

// checkOutcome checks a decryptor's result against want.
func checkOutcome(t *testing.T, desc string, pt, got []byte, err error, want outcome) {
	t.Helper()
	if err == nil || err == io.EOF {
		t.Errorf("%s: accepted, %d bytes released (error %v)", desc, len(got), err)
		return
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("%s: error %q matches an EOF", desc, err)
	}
	if !slices.ContainsFunc(want.classes, func(class error) bool { return errors.Is(err, class) }) {
		t.Errorf("%s: error %q, want one of %q", desc, err, want.classes)
	}
	var ce *ChunkError
	switch isChunk := errors.As(err, &ce); {
	case want.index < 0 && isChunk:
		t.Errorf("%s: error %q is a ChunkError, want none", desc, err)
	case want.index >= 0 && !isChunk:
		t.Errorf("%s: error %q is no ChunkError, want chunk %d", desc, err, want.index)
	case want.index >= 0 && ce.Index != uint64(want.index):
		t.Errorf("%s: ChunkError for chunk %d, want %d (%q)", desc, ce.Index, want.index, err)
	}
	if wantPT := pt[:want.released*attackCS]; !bytes.Equal(got, wantPT) {
		t.Errorf("%s: released %d bytes, want exactly the %d bytes of the %d chunks before the bad one",
			desc, len(got), len(wantPT), want.released)
	}
}

// attackCase is one modified stream and what the sequential Reader and the
// ReaderAt must report. The ReaderAt opens the final chunk first and reads
// the others where asked, so it may fail elsewhere.
type attackCase struct {
	name   string
	ct     []byte
	reader outcome
	at     outcome
}

func runAttacks(t *testing.T, s *attackStream, cases []attackCase) {
	t.Helper()
	for _, d := range attackDecryptors() {
		t.Run(d.name, func(t *testing.T) {
			t.Parallel()
			for _, tc := range cases {
				got, err := d.run(t, tc.ct, s.dek)
				want := tc.reader
				if d.readerAt {
					want = tc.at
				}
				checkOutcome(t, tc.name, s.pt, got, err, want)
			}
		})
	}
}

// TestAttackBaseline makes sure the unmodified stream decrypts with every
// decryptor, so that the failures below are caused by the modifications.
func TestAttackBaseline(t *testing.T) {
	t.Parallel()
	s := newAttackStream(t, "baseline")
	for _, d := range attackDecryptors() {
		got, err := d.run(t, s.ct, s.dek)
		if err != nil && err != io.EOF || !bytes.Equal(got, s.pt) {
			t.Errorf("%s: %d bytes, %v", d.name, len(got), err)
		}
	}
}

func TestAttackTruncation(t *testing.T) {
	t.Parallel()
	s := newAttackStream(t, "truncation")
	var cases []attackCase
	for cut := range len(s.ct) {
		body := cut - HeaderSize
		k, rem := body/attackFull, body%attackFull
		// In short mode, sample the cuts inside chunks but keep every cut in
		// the header and around chunk boundaries and tags.
		if testing.Short() && body > 0 && rem > TagSize+1 && rem < attackFull-TagSize-1 && cut%13 != 0 {
			continue
		}
		tc := attackCase{name: fmt.Sprintf("cut at %d", cut)}
		switch {
		case cut < HeaderSize:
			tc.reader = fails(ErrInvalidHeader, -1, 0)
			tc.at = tc.reader
		case rem == 0:
			tc.reader = fails(ErrTruncated, k, k)
			tc.at = fails(ErrTruncated, k, 0)
		default:
			// The partial chunk is taken for a final chunk and fails; the
			// ReaderAt opens it first, or sees from the size alone that
			// it is too short for a tag (FORMAT.md §1.4).
			tc.reader = fails(ErrAuthentication, k, k)
			tc.at = fails(ErrAuthentication, k, 0)
		}
		tc.ct = s.ct[:cut]
		cases = append(cases, tc)
	}
	runAttacks(t, s, cases)
}

func TestAttackChunkLayout(t *testing.T) {
	t.Parallel()
	s := newAttackStream(t, "layout")
	ch := s.chunks
	other := newAttackStream(t, "layout other") // same DEK and plaintext, another salt
	if bytes.Equal(other.chunks[0], ch[0]) {
		t.Fatal("streams with different salts share a chunk")
	}
	const last = attackChunks - 1
	var cases []attackCase
	add := func(name string, ct []byte, reader, at outcome) {
		cases = append(cases, attackCase{name: name, ct: ct, reader: reader, at: at})
	}

	// Dropped chunks. At the position of the dropped chunk comes the next,
	// sealed under another index. The ReaderAt sees a shorter stream whose
	// final chunk does not open under the index it then has.
	for i := range attackChunks {
		rest := slices.Concat(ch[:i], ch[i+1:])
		if i == last {
			add("drop final", s.join(rest...), fails(ErrTruncated, last, last), fails(ErrTruncated, last, 0))
		} else {
			add(fmt.Sprintf("drop %d", i), s.join(rest...), fails(ErrAuthentication, i, i), fails(ErrAuthentication, last-1, 0))
		}
	}

	// Duplicated chunks.
	for i := range attackChunks {
		dup := slices.Concat(ch[:i+1], ch[i:])
		if i == last {
			// Two copies of the final chunk read as one longer final chunk.
			add("duplicate final", s.join(dup...), fails(ErrAuthentication, last, last), fails(ErrAuthentication, last, 0))
		} else {
			add(fmt.Sprintf("duplicate %d", i), s.join(dup...), fails(ErrAuthentication, i+1, i+1), fails(ErrAuthentication, last+1, 0))
		}
	}

	// Reordered chunks.
	for _, p := range [][2]int{{0, 1}, {1, 2}, {0, 2}, {2, 3}, {0, 3}} {
		i, j := p[0], p[1]
		swapped := slices.Clone(ch)
		swapped[i], swapped[j] = swapped[j], swapped[i]
		at := fails(ErrAuthentication, i, i)
		if j == last {
			// The final chunk's place now ends a full chunk.
			at = fails(ErrAuthentication, last, 0)
		}
		add(fmt.Sprintf("swap %d %d", i, j), s.join(swapped...), fails(ErrAuthentication, i, i), at)
	}
	add("reverse full chunks", s.join(ch[2], ch[1], ch[0], ch[3]), fails(ErrAuthentication, 0, 0), fails(ErrAuthentication, 0, 0))

	// Chunks transplanted from another stream under the same DEK, at the
	// same index.
	for i := range attackChunks {
		mixed := slices.Clone(ch)
		mixed[i] = other.chunks[i]
		at := fails(ErrAuthentication, i, i)
		if i == last {
			at = fails(ErrAuthentication, last, 0)
		}
		add(fmt.Sprintf("transplant %d", i), s.join(mixed...), fails(ErrAuthentication, i, i), at)
	}
	add("other body", s.join(other.chunks...), fails(ErrAuthentication, 0, 0), fails(ErrAuthentication, last, 0))
	add("other header", other.join(ch...), fails(ErrAuthentication, 0, 0), fails(ErrAuthentication, last, 0))

	// Trailing bytes after the final chunk.
	for _, extra := range [][]byte{{0}, []byte("extra"), ch[last], bytes.Repeat([]byte{1}, TagSize)} {
		add(fmt.Sprintf("trailing %d bytes", len(extra)), slices.Concat(s.ct, extra),
			fails(ErrAuthentication, last, last), fails(ErrAuthentication, last, 0))
	}
	// Enough to fill the final chunk's place to a full chunk: both open it
	// as a full chunk, which fails.
	fill := make([]byte, attackFull-len(ch[last]))
	add("trailing to a full chunk", slices.Concat(s.ct, fill), fails(ErrAuthentication, last, last), fails(ErrAuthentication, last, 0))
	add("trailing chunk", slices.Concat(s.ct, ch[0]), fails(ErrAuthentication, last, last), fails(ErrAuthentication, last+1, 0))

	// A final chunk sealed full, or a short last chunk sealed as not final:
	// the end-of-stream rule, broken by someone holding the key.
	// A full chunk is never final: both open it as a full one, which fails.
	add("full final chunk", s.join(ch[0], ch[1], s.c.seal(nil, s.pt[2*attackCS:3*attackCS], 2, true)),
		fails(ErrAuthentication, 2, 2), fails(ErrAuthentication, 2, 0))
	// Two defects: chunk 0 flipped and the final chunk dropped. Each
	// decryptor reports the first it meets: the Reader reads in order, the
	// ReaderAt starts at the end.
	bad0 := slices.Clone(ch[0])
	bad0[3] ^= 1
	add("flip 0, drop final", s.join(bad0, ch[1], ch[2]), fails(ErrAuthentication, 0, 0), fails(ErrTruncated, last, 0))
	add("unflagged final chunk", s.join(ch[0], ch[1], ch[2], s.c.seal(nil, s.pt[3*attackCS:], 3, false)),
		fails(ErrAuthentication, 3, 3), fails(ErrAuthentication, 3, 0))

	runAttacks(t, s, cases)
}

func TestAttackBitFlips(t *testing.T) {
	t.Parallel()
	s := newAttackStream(t, "bit flips")
	flip := func(off int, mask byte) []byte {
		ct := slices.Clone(s.ct)
		ct[off] ^= mask
		return ct
	}
	var cases []attackCase
	// Every bit of the header. The magic, version and algorithm are
	// checked; a chunk size out of bounds is refused; anything else changes
	// what the commitment binds.
	for off := range HeaderSize {
		for bit := range 8 {
			ct := flip(off, 1<<bit)
			want := fails(ErrKeyCommitment, -1, 0)
			if cs := binary.BigEndian.Uint32(ct[6:10]); off < 6 || cs < MinChunkSize || cs > MaxChunkSize {
				want = fails(ErrInvalidHeader, -1, 0)
			}
			cases = append(cases, attackCase{name: fmt.Sprintf("header bit %d.%d", off, bit), ct: ct, reader: want, at: want})
		}
	}
	// Every 97th bit of the body, and the first and last byte of each chunk.
	var offsets []int
	for b := 0; b < (len(s.ct)-HeaderSize)*8; b += 97 {
		offsets = append(offsets, (HeaderSize+b/8)<<3|b%8) // byte offset<<3 | bit
	}
	for i, c := range s.chunks {
		start := HeaderSize + i*attackFull
		offsets = append(offsets, start<<3, (start+len(c)-1)<<3|7)
	}
	for _, ob := range offsets {
		off, bit := ob>>3, ob&7
		k := (off - HeaderSize) / attackFull
		at := fails(ErrAuthentication, k, k)
		if k == attackChunks-1 {
			at = fails(ErrAuthentication, k, 0)
		}
		cases = append(cases, attackCase{name: fmt.Sprintf("body bit %d.%d (chunk %d)", off, bit, k), ct: flip(off, 1<<bit),
			reader: fails(ErrAuthentication, k, k), at: at})
	}
	runAttacks(t, s, cases)

	// A header that fails is refused before any chunk is read.
	for off := range HeaderSize {
		ct := flip(off, 0x10)
		checkRefusedBeforeChunks(t, fmt.Sprintf("header byte %d flipped", off), ct, s.dek)
	}
}

// headerOnlyReader serves a stream but fails the test if it is read past
// the header.
type headerOnlyReader struct {
	t   *testing.T
	ct  []byte
	off int
}

func (r *headerOnlyReader) Read(p []byte) (int, error) {
	if r.off+len(p) > HeaderSize {
		r.t.Errorf("read of %d bytes at %d: past the header", len(p), r.off)
		p = p[:max(HeaderSize-r.off, 0)]
	}
	n := copy(p, r.ct[r.off:])
	r.off += n
	return n, nil
}

type headerOnlyReaderAt struct {
	t  *testing.T
	ct []byte
}

func (r *headerOnlyReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > HeaderSize {
		r.t.Errorf("ReadAt of %d bytes at %d: past the header", len(p), off)
	}
	return bytes.NewReader(r.ct).ReadAt(p, off)
}

// checkRefusedBeforeChunks requires that both readers refuse ct with dek
// reading nothing but the header.
func checkRefusedBeforeChunks(t *testing.T, desc string, ct, dek []byte) {
	t.Helper()
	_, err := NewDecryptReader(&headerOnlyReader{t: t, ct: ct}, dek, &Options{Workers: 2})
	if err == nil {
		t.Errorf("%s: NewDecryptReader accepted the header", desc)
	}
	_, errAt := NewDecryptReaderAt(&headerOnlyReaderAt{t: t, ct: ct}, int64(len(ct)), dek)
	if errAt == nil {
		t.Errorf("%s: NewDecryptReaderAt accepted the header", desc)
	}
	if !errors.Is(errAt, ErrInvalidHeader) && !errors.Is(errAt, ErrKeyCommitment) ||
		!errors.Is(err, ErrInvalidHeader) && !errors.Is(err, ErrKeyCommitment) {
		t.Errorf("%s: errors %q and %q, want a header or commitment failure", desc, err, errAt)
	}
}

func TestAttackWrongKey(t *testing.T) {
	t.Parallel()
	s := newAttackStream(t, "wrong key")
	for _, dek := range [][]byte{testKey("other"), make([]byte, KeySize), flipFirstBit(s.dek)} {
		checkRefusedBeforeChunks(t, "wrong DEK", s.ct, dek)
		if _, err := NewDecryptReader(&headerOnlyReader{t: t, ct: s.ct}, dek, nil); !errors.Is(err, ErrKeyCommitment) {
			t.Errorf("NewDecryptReader with a wrong DEK: %v, want ErrKeyCommitment", err)
		}
		if _, err := NewDecryptReaderAt(&headerOnlyReaderAt{t: t, ct: s.ct}, int64(len(s.ct)), dek); !errors.Is(err, ErrKeyCommitment) {
			t.Errorf("NewDecryptReaderAt with a wrong DEK: %v, want ErrKeyCommitment", err)
		}
		if _, err := NewCipher(dek, s.c.header); !errors.Is(err, ErrKeyCommitment) {
			t.Errorf("NewCipher with a wrong DEK: %v, want ErrKeyCommitment", err)
		}
	}
	// A key of the wrong size is an error, not a panic, and opens nothing.
	for _, n := range []int{0, 16, KeySize - 1, KeySize + 1} {
		if _, err := NewDecryptReader(&headerOnlyReader{t: t, ct: s.ct}, make([]byte, n), nil); err == nil {
			t.Errorf("NewDecryptReader accepted a %d-byte key", n)
		}
		if _, err := NewEncryptWriter(io.Discard, make([]byte, n), nil); err == nil {
			t.Errorf("NewEncryptWriter accepted a %d-byte key", n)
		}
	}
}

func flipFirstBit(b []byte) []byte {
	b = slices.Clone(b)
	b[0] ^= 1
	return b
}
