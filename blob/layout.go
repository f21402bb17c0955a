package blob

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/kpcrypt/kpcrypt/envelope"
)

var (
	// ErrNoHeader means a detached object has no complete header object
	// whose core is the body's: it was never finished (the upload of its
	// first header failed) or its header objects were deleted.
	ErrNoHeader = errors.New("no header object matches the body")
	// ErrNotDetached means an operation that needs a detached object
	// ([Rewrap]) was given an attached one.
	ErrNotDetached = errors.New("object is not in the detached layout")
	// ErrConflict means [Rewrap] lost the race to write a header object
	// to concurrent rewraps at every attempt.
	ErrConflict = errors.New("concurrent rewraps of the object")
)

// HeaderSuffix separates an object's key from the sequence of its header
// objects: NAME + HeaderSuffix + 20 decimal digits.
const HeaderSuffix = ".kpch."

// IsHeaderKey reports whether name is the key of a header object of the
// detached layout (NAME.kpch. and 20 digits), which a walk of a bucket
// should pass over, and if so returns the key of its object.
func IsHeaderKey(name string) (object string, ok bool) {
	i := strings.LastIndex(name, HeaderSuffix)
	if i <= 0 {
		return "", false
	}
	if _, ok := parseHeaderKey(name[:i], name); !ok {
		return "", false
	}
	return name[:i], true
}

// headerKey returns the key of the header object of sequence n.
func headerKey(key string, n uint64) string {
	return fmt.Sprintf("%s%s%020d", key, HeaderSuffix, n)
}

// parseHeaderKey returns the sequence of a header object of key, or false
// when name is not one.
func parseHeaderKey(key, name string) (uint64, bool) {
	s, ok := strings.CutPrefix(name, key+HeaderSuffix)
	if !ok || len(s) != 20 {
		return 0, false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n == 0 {
		return 0, false
	}
	return n, true
}

// Offsets in the core (FORMAT.md §2.1).
const (
	coreFixed      = 94 // up to and including the context length
	coreMACSize    = 32
	offTableSize   = 6
	offChunkSize   = 18 + 6
	offContextSize = 92
)

// layout is what the first bytes of an envelope file tell, before any
// authentication: the sizes needed to find the header, the slot tables and
// the chunks.
type layout struct {
	coreSize   int64 // core, MAC included
	headerSize int64 // core and both slot table copies
	chunkSize  int64 // ciphertext chunk: plaintext chunk size + 16
}

// parseLayout reads the sizes from the start of an envelope file. It needs
// the first 94 bytes; a bound broken is an invalid header.
func parseLayout(b []byte) (layout, error) {
	if len(b) < coreFixed {
		return layout{}, fmt.Errorf("blob: %w: object shorter than a core", envelope.ErrInvalidHeader)
	}
	if string(b[:4]) != "KPCF" {
		return layout{}, fmt.Errorf("blob: %w: not a kpcrypt file", envelope.ErrInvalidHeader)
	}
	c := int64(binary.BigEndian.Uint32(b[offTableSize:]))
	if c < envelope.MinSlotTableSize || c > envelope.MaxSlotTableSize {
		return layout{}, fmt.Errorf("blob: %w: slot table size %d", envelope.ErrInvalidHeader, c)
	}
	cs := int64(binary.BigEndian.Uint32(b[offChunkSize:]))
	if cs < 4096 || cs > 16<<20 {
		return layout{}, fmt.Errorf("blob: %w: chunk size %d", envelope.ErrInvalidHeader, cs)
	}
	x := int64(binary.BigEndian.Uint16(b[offContextSize:]))
	if x > 16384 {
		return layout{}, fmt.Errorf("blob: %w: context size %d", envelope.ErrInvalidHeader, x)
	}
	core := coreFixed + x + coreMACSize
	return layout{coreSize: core, headerSize: core + 2*c, chunkSize: cs + 16}, nil
}

// isDetached reports whether the header bytes h (a whole header) are those
// of a detached body object: both slot table copies all zero.
func (l layout) isDetached(h []byte) bool {
	tables := h[l.coreSize:l.headerSize]
	return len(bytes.Trim(tables, "\x00")) == 0
}
