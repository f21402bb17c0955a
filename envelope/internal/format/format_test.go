package format

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/kpcrypt/kpcrypt/internal/testvec"
	"github.com/kpcrypt/kpcrypt/stream"
)

func testStreamHeader(t testing.TB, chunkSize int) stream.Header {
	t.Helper()
	h, err := stream.NewHeader(bytes.Repeat([]byte{7}, stream.KeySize), chunkSize)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func testCore(t testing.TB) *Core {
	c := &Core{SlotTableSize: 512, PlaintextSize: 12345, Stream: testStreamHeader(t, stream.MinChunkSize),
		Context: []Pair{{"purpose", "test"}, {"tenant", "acme"}}}
	for i := range c.MAC {
		c.MAC[i] = byte(i)
	}
	return c
}

func testSlot(i int) Slot {
	return Slot{AADRecipe: AADRecipeV1, URI: fmt.Sprintf("local:/keys/kek-%d.json", i), KeyVersion: fmt.Sprint(1000 + i),
		Wrapped: bytes.Repeat([]byte{byte(i + 1)}, 65)}
}

// wantInvalid fails unless err is an *Error naming field.
func wantInvalid(t *testing.T, what string, err error, field string) {
	t.Helper()
	var e *Error
	if !errors.Is(err, ErrInvalid) || !errors.As(err, &e) {
		t.Errorf("%s: error %v, want ErrInvalid", what, err)
		return
	}
	if field != "" && e.Field != field {
		t.Errorf("%s: field %q, want %q (%v)", what, e.Field, field, err)
	}
}

func TestLimits(t *testing.T) {
	// FORMAT.md §2.1 and §4.
	if coreFixedSize != 94 {
		t.Errorf("core fixed part of %d bytes, FORMAT.md says 94", coreFixedSize)
	}
	if MaxHeaderSize != 147_582 {
		t.Errorf("MaxHeaderSize %d, FORMAT.md says 147582", MaxHeaderSize)
	}
	if MinHeaderSize != 94+32+2*256 {
		t.Errorf("MinHeaderSize %d", MinHeaderSize)
	}
}

func TestCoreRoundTrip(t *testing.T) {
	maxKey := strings.Repeat("k", MaxContextKey)
	var pairs64 []Pair
	for i := range MaxContextPair {
		pairs64 = append(pairs64, Pair{fmt.Sprintf("k%02d", i), "v"})
	}
	cs := stream.MinChunkSize
	cases := []struct {
		name    string
		edit    func(c *Core)
		ctxSize int
	}{
		{"as is", func(*Core) {}, 27},
		{"size unknown", func(c *Core) { c.PlaintextSize = -1 }, 27},
		{"size 0", func(c *Core) { c.PlaintextSize = 0 }, 27},
		{"largest size", func(c *Core) { c.PlaintextSize = int64(cs)<<32 - 1 }, 27},
		{"no context", func(c *Core) { c.Context = nil }, 0},
		{"key of 255 bytes", func(c *Core) { c.Context = []Pair{{maxKey, ""}} }, 1 + 255 + 2},
		{"context of 16384 bytes", func(c *Core) { c.Context = []Pair{{"k", strings.Repeat("v", MaxContextSize-4)}} }, MaxContextSize},
		{"64 pairs", func(c *Core) { c.Context = pairs64 }, 64 * 7},
		{"UTF-8", func(c *Core) { c.Context = []Pair{{"ключ", "значение"}, {"键", "值"}} }, 0},
		{"table sizes", func(c *Core) { c.SlotTableSize = MaxSlotTableSize }, 27},
		{"largest chunk size", func(c *Core) { c.Stream = testStreamHeader(t, stream.MaxChunkSize) }, 27},
	}
	for _, tc := range cases {
		c := testCore(t)
		tc.edit(c)
		b, err := c.Marshal()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if tc.ctxSize > 0 && len(b) != coreFixedSize+tc.ctxSize+MACSize {
			t.Errorf("%s: %d bytes, want %d", tc.name, len(b), coreFixedSize+tc.ctxSize+MACSize)
		}
		without, err := c.AppendWithoutMAC([]byte("prefix"))
		if err != nil || !bytes.Equal(without, append([]byte("prefix"), b[:len(b)-MACSize]...)) {
			t.Errorf("%s: AppendWithoutMAC: %v", tc.name, err)
		}
		got, err := ParseCore(b)
		if err != nil {
			t.Fatalf("%s: ParseCore: %v", tc.name, err)
		}
		if !reflect.DeepEqual(got, c) {
			t.Errorf("%s: parsed %+v, want %+v", tc.name, got, c)
		}
		got, raw, err := ReadCore(io.MultiReader(bytes.NewReader(b), strings.NewReader("body")))
		if err != nil || !bytes.Equal(raw, b) || !reflect.DeepEqual(got, c) {
			t.Errorf("%s: ReadCore: %v", tc.name, err)
		}
		// Reading one byte at a time changes nothing.
		if _, raw, err := ReadCore(iotest.OneByteReader(bytes.NewReader(b))); err != nil || !bytes.Equal(raw, b) {
			t.Errorf("%s: ReadCore one byte at a time: %v", tc.name, err)
		}
	}
}

func TestCoreEncoding(t *testing.T) {
	c := testCore(t)
	b, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	sh, _ := c.Stream.MarshalBinary()
	want := []byte("KPCF\x01\x01\x00\x00\x02\x00")
	want = binary.BigEndian.AppendUint64(want, 12345)
	want = append(want, sh...)
	want = append(want, 0, 27)
	want = append(want, "\x07purpose\x00\x04test\x06tenant\x00\x04acme"...)
	want = append(want, c.MAC[:]...)
	if !bytes.Equal(b, want) {
		t.Errorf("core\n%x\nwant\n%x", b, want)
	}
	c.PlaintextSize = -1
	b, _ = c.Marshal()
	if b[5] != 0 || !bytes.Equal(b[10:18], make([]byte, 8)) {
		t.Errorf("unknown size encoded as flags %d, size %x", b[5], b[10:18])
	}
}

func TestCoreMarshalBounds(t *testing.T) {
	var pairs65 []Pair
	for i := range MaxContextPair + 1 {
		pairs65 = append(pairs65, Pair{fmt.Sprintf("k%02d", i), ""})
	}
	cases := map[string]func(c *Core){
		"slot table size 255":   func(c *Core) { c.SlotTableSize = MinSlotTableSize - 1 },
		"slot table size 65537": func(c *Core) { c.SlotTableSize = MaxSlotTableSize + 1 },
		"65 pairs":              func(c *Core) { c.Context = pairs65 },
		"empty key":             func(c *Core) { c.Context = []Pair{{"", "v"}} },
		"key of 256 bytes":      func(c *Core) { c.Context = []Pair{{strings.Repeat("k", 256), ""}} },
		"unsorted":              func(c *Core) { c.Context = []Pair{{"b", ""}, {"a", ""}} },
		"duplicate key":         func(c *Core) { c.Context = []Pair{{"a", "1"}, {"a", "2"}} },
		"key not UTF-8":         func(c *Core) { c.Context = []Pair{{"\xff", ""}} },
		"value not UTF-8":       func(c *Core) { c.Context = []Pair{{"a", "\xc3"}} },
		"context of 16385":      func(c *Core) { c.Context = []Pair{{"k", strings.Repeat("v", MaxContextSize-3)}} },
		"value of 65536":        func(c *Core) { c.Context = []Pair{{"k", strings.Repeat("v", 1<<16)}} },
	}
	for name, edit := range cases {
		c := testCore(t)
		edit(c)
		_, err := c.Marshal()
		wantInvalid(t, name, err, "")
	}
	c := testCore(t)
	c.Stream.ChunkSize = 100
	if _, err := c.Marshal(); !errors.Is(err, stream.ErrInvalidHeader) {
		t.Errorf("chunk size 100: %v", err)
	}
}

func TestParseCoreBounds(t *testing.T) {
	good, err := testCore(t).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	x := 27
	mac := good[len(good)-MACSize:]
	edit := func(f func(b []byte)) []byte {
		b := bytes.Clone(good)
		f(b)
		return b
	}
	withContext := func(ctx []byte) []byte {
		b := bytes.Clone(good[:coreFixedSize])
		binary.BigEndian.PutUint16(b[coreFixedSize-2:], uint16(len(ctx)))
		return append(append(b, ctx...), mac...)
	}
	pair := func(k, v string) []byte {
		b := append([]byte{byte(len(k))}, k...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
		return append(b, v...)
	}
	var pairs65 []byte
	for i := range MaxContextPair + 1 {
		pairs65 = append(pairs65, pair(fmt.Sprintf("k%02d", i), "")...)
	}
	bigCtx := pair("k", strings.Repeat("v", MaxContextSize-3)) // 16385 bytes
	cases := []struct {
		name  string
		raw   []byte
		field string
	}{
		{"empty", nil, "core"},
		{"93 bytes", good[:coreFixedSize-1], "core"},
		{"truncated", good[:len(good)-1], "core"},
		{"a byte after the MAC", append(bytes.Clone(good), 0), "core"},
		{"magic", edit(func(b []byte) { b[0] = 'k' }), "magic"},
		{"version 0", edit(func(b []byte) { b[4] = 0 }), "version"},
		{"version 2", edit(func(b []byte) { b[4] = 2 }), "version"},
		{"unknown flag", edit(func(b []byte) { b[5] |= 0x80 }), "flags"},
		{"size without its flag", edit(func(b []byte) { b[5] = 0 }), "plaintext size"},
		{"size 2^63", edit(func(b []byte) { binary.BigEndian.PutUint64(b[10:], 1<<63) }), "plaintext size"},
		{"size over the chunk limit", edit(func(b []byte) { binary.BigEndian.PutUint64(b[10:], uint64(stream.MinChunkSize)<<32) }), "plaintext size"},
		{"slot table size 255", edit(func(b []byte) { binary.BigEndian.PutUint32(b[6:], 255) }), "slot table size"},
		{"slot table size 65537", edit(func(b []byte) { binary.BigEndian.PutUint32(b[6:], MaxSlotTableSize+1) }), "slot table size"},
		{"stream magic", edit(func(b []byte) { b[18] = 'x' }), "stream header"},
		{"stream algorithm", edit(func(b []byte) { b[18+5] = 2 }), "stream header"},
		{"chunk size", edit(func(b []byte) { binary.BigEndian.PutUint32(b[18+6:], 1) }), "stream header"},
		{"context length past the MAC", edit(func(b []byte) { b[coreFixedSize-1] = byte(x + 1) }), "core"},
		{"context pair truncated", withContext(pair("a", "b")[:3]), "context"},
		{"empty key", withContext(pair("", "v")), "context"},
		{"unsorted", withContext(append(pair("b", ""), pair("a", "")...)), "context"},
		{"duplicate", withContext(append(pair("a", ""), pair("a", "")...)), "context"},
		{"not UTF-8", withContext(pair("a", "\xff")), "context"},
		{"65 pairs", withContext(pairs65), "context"},
		{"context of 16385 bytes", withContext(bigCtx), "context"},
	}
	for _, c := range cases {
		got, err := ParseCore(c.raw)
		wantInvalid(t, "ParseCore: "+c.name, err, c.field)
		if got != nil {
			t.Errorf("ParseCore: %s: a core with the error", c.name)
		}
		// ReadCore refuses it too (possibly sooner, as a truncated input),
		// except a byte after the MAC, which it leaves unread.
		if c.name == "a byte after the MAC" {
			continue
		}
		got, raw, err := ReadCore(bytes.NewReader(c.raw))
		if !errors.Is(err, ErrInvalid) || got != nil || raw != nil {
			t.Errorf("ReadCore: %s: %v", c.name, err)
		}
	}
	// ReadCore refuses an oversized context length before reading it.
	r := &countingReader{r: bytes.NewReader(withContext(bigCtx))}
	_, _, err = ReadCore(r)
	wantInvalid(t, "ReadCore: context of 16385 bytes", err, "context")
	if r.n != coreFixedSize {
		t.Errorf("ReadCore read %d bytes of an oversized core, want %d", r.n, coreFixedSize)
	}
	// An I/O error passes through, not as a format error.
	ioErr := errors.New("disk on fire")
	if _, _, err := ReadCore(iotest.ErrReader(ioErr)); !errors.Is(err, ioErr) || errors.Is(err, ErrInvalid) {
		t.Errorf("ReadCore on a failing reader: %v", err)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func TestSlotTableRoundTrip(t *testing.T) {
	var slots32 []Slot
	for i := range MaxSlots {
		slots32 = append(slots32, testSlot(i))
	}
	big := Slot{AADRecipe: AADRecipeV1, URI: "local:" + strings.Repeat("u", MaxURILength-6),
		KeyVersion: strings.Repeat("v", MaxVersionLen), Wrapped: bytes.Repeat([]byte{9}, MaxWrappedSize)}
	cases := []struct {
		name string
		t    SlotTable
		size int
	}{
		{"one slot", SlotTable{Sequence: 1, Slots: []Slot{testSlot(0)}}, DefaultSlotTableSize},
		{"smallest table", SlotTable{Sequence: 7, Slots: []Slot{testSlot(0)}}, MinSlotTableSize},
		{"no version", SlotTable{Sequence: 1, Slots: []Slot{{AADRecipe: 1, URI: "x:y", Wrapped: []byte{1}}}}, MinSlotTableSize},
		{"32 slots", SlotTable{Sequence: 1<<64 - 1, Slots: slots32}, 8192},
		{"largest fields", SlotTable{Sequence: 2, Slots: []Slot{big, big}}, MaxSlotTableSize},
	}
	for _, c := range cases {
		b, err := c.t.Marshal(c.size)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if len(b) != c.size {
			t.Errorf("%s: %d bytes, want %d", c.name, len(b), c.size)
		}
		if sum := sha256.Sum256(b[:c.size-32]); !bytes.Equal(sum[:], b[c.size-32:]) {
			t.Errorf("%s: checksum is not the SHA-256 of the rest", c.name)
		}
		got, err := ParseSlotTable(b)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if !reflect.DeepEqual(got, &c.t) {
			t.Errorf("%s: parsed %+v", c.name, got)
		}
	}

	// Exactly full, then one byte over.
	tb := &SlotTable{Sequence: 1, Slots: []Slot{testSlot(0)}}
	tb.Slots[0].Wrapped = make([]byte, 65+tb.Room(MinSlotTableSize))
	if room := tb.Room(MinSlotTableSize); room != 0 {
		t.Fatalf("room %d", room)
	}
	if b, err := tb.Marshal(MinSlotTableSize); err != nil {
		t.Errorf("exact fit: %v", err)
	} else if _, err := ParseSlotTable(b); err != nil {
		t.Errorf("exact fit: %v", err)
	}
	tb.Slots[0].Wrapped = append(tb.Slots[0].Wrapped, 0)
	_, err := tb.Marshal(MinSlotTableSize)
	if !errors.Is(err, ErrSlotTableFull) || errors.Is(err, ErrInvalid) {
		t.Errorf("one byte over: %v, want ErrSlotTableFull", err)
	}
}

func TestSlotTableEncoding(t *testing.T) {
	b, err := (&SlotTable{Sequence: 3, Slots: []Slot{{AADRecipe: 1, URI: "a:b", KeyVersion: "v1", Wrapped: []byte{0xaa, 0xbb}}}}).Marshal(MinSlotTableSize)
	if err != nil {
		t.Fatal(err)
	}
	want := []byte("KPST\x00\x00\x00\x00\x00\x00\x00\x03\x01\x01\x00\x03a:b\x02v1\x00\x02\xaa\xbb")
	want = append(want, make([]byte, MinSlotTableSize-32-len(want))...)
	sum := sha256.Sum256(want)
	want = append(want, sum[:]...)
	if !bytes.Equal(b, want) {
		t.Errorf("table\n%x\nwant\n%x", b, want)
	}
}

func TestSlotTableMarshalBounds(t *testing.T) {
	var slots33 []Slot
	for i := range MaxSlots + 1 {
		slots33 = append(slots33, testSlot(i))
	}
	slot := func(f func(s *Slot)) []Slot {
		s := testSlot(0)
		f(&s)
		return []Slot{s}
	}
	cases := []struct {
		name string
		t    SlotTable
		size int
	}{
		{"size 255", SlotTable{Sequence: 1, Slots: slot(func(*Slot) {})}, MinSlotTableSize - 1},
		{"size 65537", SlotTable{Sequence: 1, Slots: slot(func(*Slot) {})}, MaxSlotTableSize + 1},
		{"no slot", SlotTable{Sequence: 1}, MinSlotTableSize},
		{"33 slots", SlotTable{Sequence: 1, Slots: slots33}, MaxSlotTableSize},
		{"sequence 0", SlotTable{Sequence: 0, Slots: slot(func(*Slot) {})}, MinSlotTableSize},
		{"AAD recipe 3", SlotTable{Sequence: 1, Slots: slot(func(s *Slot) { s.AADRecipe = 3 })}, MinSlotTableSize},
		{"empty URI", SlotTable{Sequence: 1, Slots: slot(func(s *Slot) { s.URI = "" })}, MinSlotTableSize},
		{"URI of 1025", SlotTable{Sequence: 1, Slots: slot(func(s *Slot) { s.URI = strings.Repeat("u", MaxURILength+1) })}, MaxSlotTableSize},
		{"URI with a space", SlotTable{Sequence: 1, Slots: slot(func(s *Slot) { s.URI = "local:a b" })}, MinSlotTableSize},
		{"URI not ASCII", SlotTable{Sequence: 1, Slots: slot(func(s *Slot) { s.URI = "local:é" })}, MinSlotTableSize},
		{"version of 256", SlotTable{Sequence: 1, Slots: slot(func(s *Slot) { s.KeyVersion = strings.Repeat("v", 256) })}, MaxSlotTableSize},
		{"version with a tab", SlotTable{Sequence: 1, Slots: slot(func(s *Slot) { s.KeyVersion = "1\t" })}, MinSlotTableSize},
		{"no wrapped key", SlotTable{Sequence: 1, Slots: slot(func(s *Slot) { s.Wrapped = nil })}, MinSlotTableSize},
		{"wrapped key of 4097", SlotTable{Sequence: 1, Slots: slot(func(s *Slot) { s.Wrapped = make([]byte, MaxWrappedSize+1) })}, MaxSlotTableSize},
	}
	for _, c := range cases {
		_, err := c.t.Marshal(c.size)
		wantInvalid(t, c.name, err, "")
	}
}

func TestParseSlotTableBounds(t *testing.T) {
	size := 1024
	good, err := (&SlotTable{Sequence: 5, Slots: []Slot{testSlot(0), testSlot(1)}}).Marshal(size)
	if err != nil {
		t.Fatal(err)
	}
	// edit changes the table and recomputes its checksum.
	edit := func(f func(b []byte)) []byte {
		b := bytes.Clone(good)
		f(b)
		sum := sha256.Sum256(b[:len(b)-32])
		copy(b[len(b)-32:], sum[:])
		return b
	}
	slot0 := 13                                     // first slot
	uri0 := slot0 + 1                               // its URI length
	ver0 := uri0 + 2 + len(testSlot(0).URI)         // its version length
	wrap0 := ver0 + 1 + len(testSlot(0).KeyVersion) // its wrapped length
	end := wrap0 + 2 + 65 + (6 + len(testSlot(1).URI) + len(testSlot(1).KeyVersion) + 65)
	cases := []struct {
		name, field string
		raw         []byte
	}{
		{"255 bytes", "slot table", good[:255]},
		{"65537 bytes", "slot table", make([]byte, MaxSlotTableSize+1)},
		{"checksum", "slot table", func() []byte { b := bytes.Clone(good); b[len(b)-1] ^= 1; return b }()},
		{"one bit of a slot", "slot table", func() []byte { b := bytes.Clone(good); b[slot0+5] ^= 1; return b }()},
		{"magic", "slot table", edit(func(b []byte) { b[0] = 'X' })},
		{"sequence 0", "slot table", edit(func(b []byte) { binary.BigEndian.PutUint64(b[4:], 0) })},
		{"0 slots", "slot table", edit(func(b []byte) { b[12] = 0 })},
		{"33 slots", "slot table", edit(func(b []byte) { b[12] = 33 })},
		{"255 slots", "slot table", edit(func(b []byte) { b[12] = 255 })},
		{"count over the slots", "slot 2", edit(func(b []byte) { b[12] = 3 })},
		{"count under the slots", "slot table", edit(func(b []byte) { b[12] = 1 })},
		{"AAD recipe 0", "slot 0", edit(func(b []byte) { b[slot0] = 0 })},
		{"URI length 0", "", edit(func(b []byte) { binary.BigEndian.PutUint16(b[uri0:], 0) })},
		{"URI length past the table", "slot table", edit(func(b []byte) { binary.BigEndian.PutUint16(b[uri0:], 0xffff) })},
		{"URI not printable", "slot 0", edit(func(b []byte) { b[uri0+2] = ' ' })},
		{"version not printable", "slot 0", edit(func(b []byte) { b[ver0+1] = 0x80 })},
		{"wrapped length 0", "slot 0", edit(func(b []byte) { binary.BigEndian.PutUint16(b[wrap0:], 0) })},
		{"wrapped length past the table", "slot table", edit(func(b []byte) { binary.BigEndian.PutUint16(b[wrap0:], 4000) })},
		{"non-zero padding", "slot table", edit(func(b []byte) { b[end] = 1 })},
		{"last padding byte", "slot table", edit(func(b []byte) { b[size-33] = 1 })},
	}
	for _, c := range cases {
		got, err := ParseSlotTable(c.raw)
		if got != nil {
			t.Errorf("%s: a table with the error", c.name)
		}
		wantInvalid(t, c.name, err, c.field)
	}
	if _, err := ParseSlotTable(edit(func([]byte) {})); err != nil {
		t.Fatalf("the unmodified table: %v", err)
	}
	// A wrapped key of 4097 bytes in a table that holds it.
	big, err := (&SlotTable{Sequence: 1, Slots: []Slot{{AADRecipe: 1, URI: "a:b", Wrapped: make([]byte, MaxWrappedSize)}}}).Marshal(8192)
	if err != nil {
		t.Fatal(err)
	}
	over := bytes.Clone(big[:len(big)-32])
	binary.BigEndian.PutUint16(over[13+1+2+3+1:], MaxWrappedSize+1)
	sum := sha256.Sum256(over)
	over = append(over, sum[:]...)
	_, err = ParseSlotTable(over)
	wantInvalid(t, "wrapped key of 4097", err, "slot 0")
}

// buildHeader encodes a core and the two given table copies.
func buildHeader(t *testing.T, c *Core, t0, t1 []byte) []byte {
	t.Helper()
	core, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return append(append(core, t0...), t1...)
}

func TestReadHeader(t *testing.T) {
	c := testCore(t)
	table := func(seq uint64, slot int) []byte {
		b, err := (&SlotTable{Sequence: seq, Slots: []Slot{testSlot(slot)}}).Marshal(c.SlotTableSize)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	torn := func(b []byte) []byte { b = bytes.Clone(b); b[len(b)/2] ^= 0xff; return b }
	cases := []struct {
		name   string
		t0, t1 []byte
		active int
		slot   int
	}{
		{"equal sequences", table(1, 0), table(1, 1), 0, 0},
		{"copy 1 newer", table(1, 0), table(2, 1), 1, 1},
		{"copy 0 newer", table(3, 0), table(2, 1), 0, 0},
		{"copy 0 torn", torn(table(3, 0)), table(2, 1), 1, 1},
		{"copy 1 torn", table(1, 0), torn(table(2, 1)), 0, 0},
		{"largest sequence", table(1<<64-1, 0), table(1<<64-2, 1), 0, 0},
	}
	for _, tc := range cases {
		raw := buildHeader(t, c, tc.t0, tc.t1)
		r := bytes.NewReader(append(bytes.Clone(raw), "body"...))
		h, err := ReadHeader(r)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if h.Active != tc.active || h.Table() != h.Tables[tc.active] || h.Table().Slots[0].URI != testSlot(tc.slot).URI {
			t.Errorf("%s: active copy %d, want %d", tc.name, h.Active, tc.active)
		}
		for i, tb := range [2][]byte{tc.t0, tc.t1} {
			_, perr := ParseSlotTable(tb)
			if (h.Tables[i] == nil) != (perr != nil) || (h.TableErrs[i] == nil) != (perr == nil) {
				t.Errorf("%s: copy %d: table %v, error %v", tc.name, i, h.Tables[i], h.TableErrs[i])
			}
		}
		if h.Size() != int64(len(raw)) || h.TableOffset(0) != int64(len(raw)-2*c.SlotTableSize) || h.TableOffset(1) != int64(len(raw)-c.SlotTableSize) {
			t.Errorf("%s: size %d, offsets %d %d", tc.name, h.Size(), h.TableOffset(0), h.TableOffset(1))
		}
		// The reader is left at the body.
		if rest, _ := io.ReadAll(r); string(rest) != "body" {
			t.Errorf("%s: left %q unread", tc.name, rest)
		}
	}

	raw := buildHeader(t, c, torn(table(1, 0)), torn(table(1, 0)))
	h, err := ReadHeader(bytes.NewReader(raw))
	wantInvalid(t, "both torn", err, "slot tables")
	if h != nil {
		t.Error("both torn: a header with the error")
	}
	good := buildHeader(t, c, table(1, 0), table(1, 0))
	for _, n := range []int{0, 1, coreFixedSize - 1, coreFixedSize + 1, len(good) - 2*c.SlotTableSize, len(good) - 1} {
		h, err := ReadHeader(bytes.NewReader(good[:n]))
		if h != nil || !errors.Is(err, ErrInvalid) {
			t.Errorf("truncated to %d bytes: %v", n, err)
		}
	}
	ioErr := errors.New("disk on fire")
	if _, err := ReadHeader(io.MultiReader(bytes.NewReader(good[:200]), iotest.ErrReader(ioErr))); !errors.Is(err, ioErr) {
		t.Errorf("I/O error in the tables: %v", err)
	}
}

func TestErrorMessage(t *testing.T) {
	err := invalid("slot 3", "URI length %d", 0)
	if got := err.Error(); got != "invalid envelope header: slot 3: URI length 0" {
		t.Errorf("%q", got)
	}
	if !errors.Is(err, ErrInvalid) || errors.Is(err, ErrSlotTableFull) {
		t.Error("Error matches the wrong class")
	}
}

// vectorSeeds returns the envelope files of the test vectors: each vector
// file without its "key: value" preamble.
func vectorSeeds(tb testing.TB) [][]byte {
	files, err := testvec.ReadDir("../../../testdata/envelope")
	if err != nil {
		tb.Fatal(err)
	}
	var seeds [][]byte
	for _, f := range files {
		seeds = append(seeds, f.Body)
	}
	return seeds
}

// FuzzHeader feeds arbitrary bytes to ReadHeader. It must never panic; what
// it accepts must re-encode to exactly the input (no two encodings of one
// header), and what it refuses must come with no result.
func FuzzHeader(f *testing.F) {
	seeds := vectorSeeds(f)
	if len(seeds) == 0 {
		f.Fatal("no seed: the envelope vectors are missing from testdata/envelope")
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkHeader(t, data)
		// The same bytes with both copies' checksums made right, so that the
		// fuzzer reaches the slot parser behind the checksum.
		if fixed := fixChecksums(data); fixed != nil {
			checkHeader(t, fixed)
		}
	})
}

func fixChecksums(data []byte) []byte {
	c, raw, err := ReadCore(bytes.NewReader(data))
	if err != nil || len(data) < len(raw)+2*c.SlotTableSize {
		return nil
	}
	out := bytes.Clone(data)
	for i := range 2 {
		tb := out[len(raw)+i*c.SlotTableSize : len(raw)+(i+1)*c.SlotTableSize]
		sum := sha256.Sum256(tb[:len(tb)-32])
		copy(tb[len(tb)-32:], sum[:])
	}
	return out
}

func checkHeader(t *testing.T, data []byte) {
	h, err := ReadHeader(bytes.NewReader(data))
	if err != nil {
		if h != nil {
			t.Fatalf("a header with the error %v", err)
		}
		// From memory, every failure is a format error naming its field.
		var e *Error
		if !errors.As(err, &e) || !errors.Is(err, ErrInvalid) || e.Field == "" {
			t.Fatalf("error %v is not a format error", err)
		}
		return
	}
	if h.Size() > int64(len(data)) || h.Size() > MaxHeaderSize || h.Size() < MinHeaderSize {
		t.Fatalf("header of %d bytes from %d bytes of input", h.Size(), len(data))
	}
	core, err := h.Core.Marshal()
	if err != nil {
		t.Fatalf("re-encoding an accepted core: %v", err)
	}
	if !bytes.Equal(core, data[:len(core)]) || !bytes.Equal(core, h.CoreBytes) {
		t.Fatalf("the core re-encodes to other bytes:\n%x\ninput\n%x", core, data[:len(core)])
	}
	if again, err := ParseCore(h.CoreBytes); err != nil || !reflect.DeepEqual(again, h.Core) {
		t.Fatalf("ParseCore disagrees with ReadCore: %v", err)
	}
	if h.Table() == nil || h.Table() != h.Tables[h.Active] {
		t.Fatal("no current table")
	}
	size := h.Core.SlotTableSize
	for i, tb := range h.Tables {
		if (tb == nil) == (h.TableErrs[i] == nil) {
			t.Fatalf("copy %d: table %v and error %v", i, tb, h.TableErrs[i])
		}
		if tb == nil {
			continue
		}
		b, err := tb.Marshal(size)
		if err != nil {
			t.Fatalf("re-encoding accepted copy %d: %v", i, err)
		}
		off := h.TableOffset(i)
		if !bytes.Equal(b, data[off:off+int64(size)]) {
			t.Fatalf("copy %d re-encodes to other bytes", i)
		}
	}
	want := 0
	switch {
	case h.Tables[0] == nil:
		want = 1
	case h.Tables[1] != nil && h.Tables[1].Sequence > h.Tables[0].Sequence:
		want = 1
	}
	if h.Active != want {
		t.Fatalf("current copy %d, want %d", h.Active, want)
	}
}
