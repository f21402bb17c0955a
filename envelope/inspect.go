package envelope

import (
	"crypto/sha256"
	"encoding/hex"
	"io"

	"github.com/kpcrypt/kpcrypt/envelope/internal/format"
)

// Header describes a file's header as [Inspect] reads it. Nothing in it is
// authenticated: that takes the DEK.
type Header struct {
	// FormatVersion is the envelope format version.
	FormatVersion int `json:"format_version"`
	// Algorithm names the body's cipher and key derivation.
	Algorithm string `json:"algorithm"`
	// ChunkSize is the plaintext size of a chunk.
	ChunkSize int `json:"chunk_size"`
	// PlaintextSize is the plaintext size, or -1 when the header does not
	// record it.
	PlaintextSize int64 `json:"plaintext_size"`
	// HeaderSize is the size of the header, where the body starts.
	HeaderSize int64 `json:"header_size"`
	// SlotTableSize is the size of each slot table copy.
	SlotTableSize int `json:"slot_table_size"`
	// SlotTableSequence counts the rewrites of the slot table, from 1.
	SlotTableSequence uint64 `json:"slot_table_sequence"`
	// Compression names the compression of the plaintext, if any.
	Compression string `json:"compression,omitempty"`
	// Context is the encryption context.
	Context map[string]string `json:"context,omitempty"`
	// Slots are the key slots.
	Slots []SlotInfo `json:"slots"`
}

// SlotInfo describes one key slot.
type SlotInfo struct {
	// KEK is the URI of the KEK that wrapped the DEK.
	KEK string `json:"kek"`
	// KeyVersion is the KEK version that wrapped it, if the KEK has versions.
	KeyVersion string `json:"key_version,omitempty"`
	// WrappedSize is the size of the wrapped DEK.
	WrappedSize int `json:"wrapped_size"`
	// Fingerprint names the wrapped DEK: the first 16 hex digits (8
	// bytes) of the SHA-256 of its bytes, as the slot holds them. Slots of
	// one KEK with equal fingerprints hold the same wrapped DEK, as the
	// files an Encrypter with [DataKeyReuse] writes do, and a batch rewrap
	// with a [RewrapCache] keeps them so. It identifies; it is no secret
	// and proves nothing: like the rest of the header it is not
	// authenticated.
	Fingerprint string `json:"fingerprint"`
	// Shared is set for a slot bound to the encryption context rather than
	// to the file (FORMAT.md §3.2, recipe 2): a DEK shared by several files.
	Shared bool `json:"shared,omitempty"`
}

// WrappedFingerprint returns [SlotInfo.Fingerprint] for a wrapped DEK.
func WrappedFingerprint(wrapped []byte) string {
	sum := sha256.Sum256(wrapped)
	return hex.EncodeToString(sum[:8])
}

// AlgorithmName is the name [Inspect] gives the only algorithm of format
// version 1.
const AlgorithmName = "AES-256-GCM, HKDF-SHA-256, key-committing"

// Inspect reads a file's header from src and describes it, without calling
// any KEK. It checks the header's structure and bounds, not its
// authenticity.
func Inspect(src io.Reader) (*Header, error) {
	h, err := format.ReadHeader(src)
	if err != nil {
		return nil, err
	}
	return describe(h), nil
}

func describe(h *format.Header) *Header {
	t := h.Table()
	out := &Header{
		FormatVersion:     format.Version,
		Algorithm:         AlgorithmName,
		ChunkSize:         h.Core.Stream.ChunkSize,
		PlaintextSize:     h.Core.PlaintextSize,
		HeaderSize:        h.Size(),
		SlotTableSize:     h.Core.SlotTableSize,
		SlotTableSequence: t.Sequence,
	}
	if h.Core.Zstd {
		out.Compression = string(CompressionZstd)
	}
	for _, p := range h.Core.Context {
		if out.Context == nil {
			out.Context = map[string]string{}
		}
		out.Context[p.Key] = p.Value
	}
	for _, s := range t.Slots {
		out.Slots = append(out.Slots, SlotInfo{KEK: s.URI, KeyVersion: s.KeyVersion, WrappedSize: len(s.Wrapped),
			Fingerprint: WrappedFingerprint(s.Wrapped), Shared: s.AADRecipe == format.AADRecipeShared})
	}
	return out
}
