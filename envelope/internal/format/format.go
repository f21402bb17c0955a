// Package format encodes and decodes the kpcrypt envelope header: the core
// and the two copies of the key-slot table. It does no cryptography beyond
// the slot table's SHA-256 checksum; the envelope package authenticates what
// it parses. FORMAT.md §2–§3 specify the bytes.
//
// Every length read from input is bounded before anything is allocated.
package format

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"unicode/utf8"

	"golang.org/x/crypto/cryptobyte"

	"github.com/kpcrypt/kpcrypt/stream"
)

// Format constants and limits.
const (
	Magic      = "KPCF"
	Version    = 1
	TableMagic = "KPST"

	// FlagSizeKnown marks a core whose PlaintextSize is recorded.
	FlagSizeKnown = 0x01
	// FlagZstd marks a body whose plaintext is a zstd stream.
	FlagZstd   = 0x02
	knownFlags = FlagSizeKnown | FlagZstd

	// coreFixedSize is the core up to the context: magic, version, flags,
	// slot table size, plaintext size, stream header, context length.
	coreFixedSize = 4 + 1 + 1 + 4 + 8 + stream.HeaderSize + 2
	// MACSize is the size of the core's MAC.
	MACSize = 32

	MaxContextSize = 16 << 10 // bytes of encoded context
	MaxContextKey  = 255
	MaxContextPair = 64 // pairs

	MinSlotTableSize     = 256
	MaxSlotTableSize     = 64 << 10
	DefaultSlotTableSize = 2048

	MaxSlots        = 32
	MaxURILength    = 1024
	MaxVersionLen   = 255
	MaxWrappedSize  = 4096
	tableFixedSize  = 4 + 8 + 1
	checksumSize    = sha256.Size
	AADRecipeV1     = 1
	AADRecipeShared = 2
	MaxHeaderSize   = coreFixedSize + MaxContextSize + MACSize + 2*MaxSlotTableSize
	MinHeaderSize   = coreFixedSize + MACSize + 2*MinSlotTableSize
	slotFixedSize   = 1 + 2 + 1 + 2
	maxPlaintextLen = 1<<63 - 1
)

// ErrInvalid is the class of every parse error; the concrete error is an
// *Error naming the field.
var ErrInvalid = errors.New("invalid envelope header")

// ErrSlotTableFull means the slots do not fit in the slot table's size.
var ErrSlotTableFull = errors.New("key slots do not fit in the slot table")

// Error is a parse error. It matches [ErrInvalid].
type Error struct {
	// Field names the part of the header at fault.
	Field string
	// Reason says what is wrong with it.
	Reason string
}

func (e *Error) Error() string {
	return fmt.Sprintf("invalid envelope header: %s: %s", e.Field, e.Reason)
}

// Is reports whether target is [ErrInvalid].
func (e *Error) Is(target error) bool { return target == ErrInvalid }

func invalid(field, format string, args ...any) error {
	return &Error{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Pair is one key/value pair of the encryption context.
type Pair struct{ Key, Value string }

// Core is the immutable part of the header. Its encoding, MAC included, is
// bound into every slot's associated data.
type Core struct {
	// SlotTableSize is the size of each of the two slot table copies.
	SlotTableSize int
	// PlaintextSize is the plaintext length, or -1 when not recorded.
	PlaintextSize int64
	// Stream is the stream header: chunk size, salt, commitment.
	Stream stream.Header
	// Context is the encryption context, sorted by key, keys unique.
	Context []Pair
	// Zstd marks a body whose plaintext is zstd-compressed. A compressed
	// file records no plaintext size.
	Zstd bool
	// MAC authenticates the rest of the core.
	MAC [MACSize]byte
}

// AppendWithoutMAC appends the encoding of the core up to its MAC: the bytes
// the MAC covers.
func (c *Core) AppendWithoutMAC(b []byte) ([]byte, error) {
	if c.SlotTableSize < MinSlotTableSize || c.SlotTableSize > MaxSlotTableSize {
		return nil, invalid("slot table size", "%d out of range [%d, %d]", c.SlotTableSize, MinSlotTableSize, MaxSlotTableSize)
	}
	ctx, err := encodeContext(c.Context)
	if err != nil {
		return nil, err
	}
	flags, size := byte(0), uint64(0)
	if c.PlaintextSize >= 0 {
		flags, size = FlagSizeKnown, uint64(c.PlaintextSize)
	}
	if c.Zstd {
		if c.PlaintextSize >= 0 {
			return nil, invalid("flags", "a compressed file records no plaintext size")
		}
		flags |= FlagZstd
	}
	b = append(b, Magic...)
	b = append(b, Version, flags)
	b = binary.BigEndian.AppendUint32(b, uint32(c.SlotTableSize))
	b = binary.BigEndian.AppendUint64(b, size)
	b, err = c.Stream.AppendBinary(b)
	if err != nil {
		return nil, err
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(ctx)))
	return append(b, ctx...), nil
}

// Marshal returns the whole encoded core, MAC included.
func (c *Core) Marshal() ([]byte, error) {
	b, err := c.AppendWithoutMAC(nil)
	if err != nil {
		return nil, err
	}
	return append(b, c.MAC[:]...), nil
}

// EncodeContext returns the encoding of an encryption context, as the core
// holds it.
func EncodeContext(ctx []Pair) ([]byte, error) { return encodeContext(ctx) }

func encodeContext(ctx []Pair) ([]byte, error) {
	if len(ctx) > MaxContextPair {
		return nil, invalid("context", "%d pairs, over the limit of %d", len(ctx), MaxContextPair)
	}
	var b cryptobyte.Builder
	for i, p := range ctx {
		if err := checkPair(p, i, ctx); err != nil {
			return nil, err
		}
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(p.Key)) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(p.Value)) })
	}
	out, err := b.Bytes()
	if err != nil {
		return nil, invalid("context", "%v", err)
	}
	if len(out) > MaxContextSize {
		return nil, invalid("context", "%d bytes, over the limit of %d", len(out), MaxContextSize)
	}
	return out, nil
}

func checkPair(p Pair, i int, all []Pair) error {
	switch {
	case p.Key == "" || len(p.Key) > MaxContextKey:
		return invalid("context", "key length %d out of range [1, %d]", len(p.Key), MaxContextKey)
	case !utf8.ValidString(p.Key) || !utf8.ValidString(p.Value):
		return invalid("context", "key or value of %q is not UTF-8", p.Key)
	case i > 0 && all[i-1].Key >= p.Key:
		return invalid("context", "keys not sorted and unique at %q", p.Key)
	}
	return nil
}

// ReadCore reads and decodes a core from r. It returns the core and its exact
// encoding.
func ReadCore(r io.Reader) (*Core, []byte, error) {
	var fixedBuf [coreFixedSize]byte
	fixed := fixedBuf[:]
	if n, err := io.ReadFull(r, fixed); err != nil {
		if n == 0 && err == io.EOF {
			return nil, nil, invalid("core", "input is empty")
		}
		if n >= len(Magic) && string(fixed[:len(Magic)]) != Magic {
			return nil, nil, invalid("magic", "%q is not a kpcrypt file", fixed[:len(Magic)])
		}
		if err == io.ErrUnexpectedEOF {
			return nil, nil, invalid("core", "input ends after %d bytes, inside the header", n)
		}
		return nil, nil, err
	}
	if string(fixed[:4]) != Magic {
		return nil, nil, invalid("magic", "%q is not a kpcrypt file", fixed[:4])
	}
	if fixed[4] != Version {
		return nil, nil, invalid("version", "unsupported format version %d", fixed[4])
	}
	ctxLen := int(binary.BigEndian.Uint16(fixed[coreFixedSize-2:]))
	if ctxLen > MaxContextSize {
		return nil, nil, invalid("context", "%d bytes, over the limit of %d", ctxLen, MaxContextSize)
	}
	// Allocated at its exact size: most cores carry a small context.
	raw := make([]byte, coreFixedSize+ctxLen+MACSize)
	copy(raw, fixed)
	if n, err := io.ReadFull(r, raw[coreFixedSize:]); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, nil, invalid("core", "input ends after %d bytes, inside the header", coreFixedSize+n)
		}
		return nil, nil, err
	}
	c, err := ParseCore(raw)
	if err != nil {
		return nil, nil, err
	}
	return c, raw, nil
}

// ParseCore decodes a core that fills raw exactly.
func ParseCore(raw []byte) (*Core, error) {
	s := cryptobyte.String(raw)
	var (
		magic          []byte
		version, flags uint8
		tableSize      uint32
		size           uint64
		sh             []byte
		ctx            cryptobyte.String
		mac            []byte
	)
	if !s.ReadBytes(&magic, 4) || !s.ReadUint8(&version) || !s.ReadUint8(&flags) ||
		!s.ReadUint32(&tableSize) || !s.ReadUint64(&size) || !s.ReadBytes(&sh, stream.HeaderSize) ||
		!s.ReadUint16LengthPrefixed(&ctx) || !s.ReadBytes(&mac, MACSize) {
		return nil, invalid("core", "truncated")
	}
	if !s.Empty() {
		return nil, invalid("core", "%d unexpected bytes after the MAC", len(s))
	}
	if string(magic) != Magic {
		return nil, invalid("magic", "%q is not a kpcrypt file", magic)
	}
	if version != Version {
		return nil, invalid("version", "unsupported format version %d", version)
	}
	if len(ctx) > MaxContextSize {
		return nil, invalid("context", "%d bytes, over the limit of %d", len(ctx), MaxContextSize)
	}
	if flags&^knownFlags != 0 {
		return nil, invalid("flags", "unknown flags %#02x", flags&^knownFlags)
	}
	if tableSize < MinSlotTableSize || tableSize > MaxSlotTableSize {
		return nil, invalid("slot table size", "%d out of range [%d, %d]", tableSize, MinSlotTableSize, MaxSlotTableSize)
	}
	if flags&FlagZstd != 0 && flags&FlagSizeKnown != 0 {
		return nil, invalid("flags", "a compressed file records no plaintext size")
	}
	c := &Core{SlotTableSize: int(tableSize), PlaintextSize: -1, Zstd: flags&FlagZstd != 0}
	if flags&FlagSizeKnown != 0 {
		if size > maxPlaintextLen {
			return nil, invalid("plaintext size", "%d too large", size)
		}
		c.PlaintextSize = int64(size)
	} else if size != 0 {
		return nil, invalid("plaintext size", "recorded as %d but flagged unknown", size)
	}
	if err := c.Stream.UnmarshalBinary(sh); err != nil {
		return nil, invalid("stream header", "%v", err)
	}
	if c.PlaintextSize >= 0 {
		if _, err := c.Stream.BodySize(c.PlaintextSize); err != nil {
			return nil, invalid("plaintext size", "%d needs more chunks than a stream may hold", c.PlaintextSize)
		}
	}
	for !ctx.Empty() {
		var k, v cryptobyte.String
		if !ctx.ReadUint8LengthPrefixed(&k) || !ctx.ReadUint16LengthPrefixed(&v) {
			return nil, invalid("context", "truncated pair")
		}
		p := Pair{Key: string(k), Value: string(v)}
		c.Context = append(c.Context, p)
		if len(c.Context) > MaxContextPair {
			return nil, invalid("context", "over %d pairs", MaxContextPair)
		}
		if err := checkPair(p, len(c.Context)-1, c.Context); err != nil {
			return nil, err
		}
	}
	copy(c.MAC[:], mac)
	return c, nil
}

// Slot is one wrapped copy of the DEK.
type Slot struct {
	// AADRecipe says how the associated data given to the KEK was built:
	// [AADRecipeV1] binds the slot to its file's core, [AADRecipeShared]
	// to the encryption context only, for a DEK shared by several files.
	AADRecipe uint8
	// URI identifies the KEK.
	URI string
	// KeyVersion is the KEK version that wrapped the DEK, or empty.
	KeyVersion string
	// Wrapped is the wrapped DEK.
	Wrapped []byte
}

// SlotTable is one copy of the key-slot table.
type SlotTable struct {
	// Sequence grows by one at every rewrite; the valid copy with the
	// highest sequence is the current one.
	Sequence uint64
	// Slots are the wrapped DEKs, at least one.
	Slots []Slot
}

// Marshal encodes t into a table of exactly size bytes: the slots, zero
// padding, and the SHA-256 checksum. It fails with [ErrSlotTableFull] if the
// slots do not fit.
func (t *SlotTable) Marshal(size int) ([]byte, error) {
	if size < MinSlotTableSize || size > MaxSlotTableSize {
		return nil, invalid("slot table size", "%d out of range [%d, %d]", size, MinSlotTableSize, MaxSlotTableSize)
	}
	if len(t.Slots) == 0 || len(t.Slots) > MaxSlots {
		return nil, invalid("slots", "%d slots, want 1 to %d", len(t.Slots), MaxSlots)
	}
	if t.Sequence == 0 {
		return nil, invalid("sequence", "must be at least 1")
	}
	b := cryptobyte.NewFixedBuilder(make([]byte, 0, size))
	b.AddBytes([]byte(TableMagic))
	b.AddUint64(t.Sequence)
	b.AddUint8(uint8(len(t.Slots)))
	need := tableFixedSize + checksumSize
	for _, s := range t.Slots {
		if err := checkSlot(&s); err != nil {
			return nil, err
		}
		need += slotFixedSize + len(s.URI) + len(s.KeyVersion) + len(s.Wrapped)
	}
	if need > size {
		return nil, fmt.Errorf("%w: %d slots need %d bytes, the table holds %d", ErrSlotTableFull, len(t.Slots), need, size)
	}
	for _, s := range t.Slots {
		b.AddUint8(s.AADRecipe)
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(s.URI)) })
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(s.KeyVersion)) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(s.Wrapped) })
	}
	out, err := b.Bytes()
	if err != nil {
		return nil, err
	}
	out = append(out, make([]byte, size-checksumSize-len(out))...)
	sum := sha256.Sum256(out)
	return append(out, sum[:]...), nil
}

// TableOverhead is what a slot table takes besides its slots: magic,
// sequence, slot count and checksum.
const TableOverhead = tableFixedSize + checksumSize

// Size returns the bytes the slot takes in a slot table.
func (s *Slot) Size() int { return slotFixedSize + len(s.URI) + len(s.KeyVersion) + len(s.Wrapped) }

// Room returns how many bytes of the table of the given size t leaves free.
func (t *SlotTable) Room(size int) int {
	used := tableFixedSize + checksumSize
	for _, s := range t.Slots {
		used += slotFixedSize + len(s.URI) + len(s.KeyVersion) + len(s.Wrapped)
	}
	return size - used
}

func checkSlot(s *Slot) error {
	switch {
	case s.AADRecipe != AADRecipeV1 && s.AADRecipe != AADRecipeShared:
		return invalid("slot", "unknown AAD recipe %d", s.AADRecipe)
	case s.URI == "" || len(s.URI) > MaxURILength:
		return invalid("slot", "KEK URI length %d out of range [1, %d]", len(s.URI), MaxURILength)
	case !printable(s.URI):
		return invalid("slot", "KEK URI %q has a character outside printable ASCII", s.URI)
	case len(s.KeyVersion) > MaxVersionLen:
		return invalid("slot", "key version length %d over %d", len(s.KeyVersion), MaxVersionLen)
	case !printable(s.KeyVersion):
		return invalid("slot", "key version %q has a character outside printable ASCII", s.KeyVersion)
	case len(s.Wrapped) == 0 || len(s.Wrapped) > MaxWrappedSize:
		return invalid("slot", "wrapped key length %d out of range [1, %d]", len(s.Wrapped), MaxWrappedSize)
	}
	return nil
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// ParseSlotTable decodes one table copy of exactly len(raw) bytes. A copy
// whose checksum fails (for example one torn by a crash mid-write) is an
// error, as is anything out of bounds or any non-zero padding.
func ParseSlotTable(raw []byte) (*SlotTable, error) {
	if len(raw) < MinSlotTableSize || len(raw) > MaxSlotTableSize {
		return nil, invalid("slot table", "%d bytes out of range", len(raw))
	}
	body, sum := raw[:len(raw)-checksumSize], raw[len(raw)-checksumSize:]
	if want := sha256.Sum256(body); !bytes.Equal(want[:], sum) {
		return nil, invalid("slot table", "checksum mismatch")
	}
	s := cryptobyte.String(body)
	var (
		magic []byte
		t     SlotTable
		n     uint8
	)
	if !s.ReadBytes(&magic, 4) || !s.ReadUint64(&t.Sequence) || !s.ReadUint8(&n) {
		return nil, invalid("slot table", "truncated")
	}
	if string(magic) != TableMagic {
		return nil, invalid("slot table", "bad magic %q", magic)
	}
	if t.Sequence == 0 {
		return nil, invalid("slot table", "sequence 0")
	}
	if n == 0 || n > MaxSlots {
		return nil, invalid("slot table", "%d slots, want 1 to %d", n, MaxSlots)
	}
	for i := range int(n) {
		var (
			sl                Slot
			uri, ver, wrapped cryptobyte.String
		)
		if !s.ReadUint8(&sl.AADRecipe) || !s.ReadUint16LengthPrefixed(&uri) ||
			!s.ReadUint8LengthPrefixed(&ver) || !s.ReadUint16LengthPrefixed(&wrapped) {
			return nil, invalid("slot table", "slot %d truncated", i)
		}
		sl.URI, sl.KeyVersion, sl.Wrapped = string(uri), string(ver), slices.Clone([]byte(wrapped))
		if err := checkSlot(&sl); err != nil {
			reason := err.Error()
			if fe, ok := err.(*Error); ok {
				reason = fe.Reason
			}
			return nil, &Error{Field: fmt.Sprintf("slot %d", i), Reason: reason}
		}
		t.Slots = append(t.Slots, sl)
	}
	for _, c := range s {
		if c != 0 {
			return nil, invalid("slot table", "non-zero padding")
		}
	}
	return &t, nil
}

// Header is a parsed envelope header.
type Header struct {
	Core *Core
	// CoreBytes is the exact encoding of the core.
	CoreBytes []byte
	// Tables are the two slot table copies, nil where a copy is invalid,
	// with the errors that made them so.
	Tables    [2]*SlotTable
	TableErrs [2]error
	// Active is the index of the current table: the valid copy with the
	// highest sequence.
	Active int
}

// Size returns the size of the whole header: the offset of the body.
func (h *Header) Size() int64 { return int64(len(h.CoreBytes)) + 2*int64(h.Core.SlotTableSize) }

// Table returns the current slot table.
func (h *Header) Table() *SlotTable { return h.Tables[h.Active] }

// TableOffset returns the file offset of table copy i (0 or 1).
func (h *Header) TableOffset(i int) int64 {
	return int64(len(h.CoreBytes)) + int64(i)*int64(h.Core.SlotTableSize)
}

// ReadHeader reads the core and both slot table copies from r, leaving r at
// the start of the body. It fails if neither table copy is valid.
func ReadHeader(r io.Reader) (*Header, error) {
	core, raw, err := ReadCore(r)
	if err != nil {
		return nil, err
	}
	h := &Header{Core: core, CoreBytes: raw}
	tables := make([]byte, 2*core.SlotTableSize)
	if n, err := io.ReadFull(r, tables); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, invalid("slot table", "input ends %d bytes into the slot tables", n)
		}
		return nil, err
	}
	for i := range 2 {
		h.Tables[i], h.TableErrs[i] = ParseSlotTable(tables[i*core.SlotTableSize : (i+1)*core.SlotTableSize])
	}
	switch {
	case h.Tables[0] == nil && h.Tables[1] == nil:
		return nil, &Error{Field: "slot tables", Reason: fmt.Sprintf("both copies are invalid (%v; %v)", h.TableErrs[0], h.TableErrs[1])}
	case h.Tables[0] == nil:
		h.Active = 1
	case h.Tables[1] != nil && h.Tables[1].Sequence > h.Tables[0].Sequence:
		h.Active = 1
	}
	return h, nil
}
