package stream

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Format constants. FORMAT.md specifies them.
const (
	// KeySize is the size of a data key (DEK) in bytes.
	KeySize = 32
	// SaltSize is the size of the per-stream salt.
	SaltSize = 32
	// CommitmentSize is the size of the key commitment.
	CommitmentSize = 32
	// TagSize is the AES-GCM tag appended to every chunk.
	TagSize = 16
	// HeaderSize is the size of an encoded [Header].
	HeaderSize = 4 + 1 + 1 + 4 + SaltSize + CommitmentSize

	// DefaultChunkSize is the plaintext size of a chunk when none is given.
	DefaultChunkSize = 64 << 10
	// MinChunkSize and MaxChunkSize bound the chunk size.
	MinChunkSize = 4 << 10
	MaxChunkSize = 16 << 20

	// MaxChunks is the number of chunks a stream may hold, final chunk
	// included. Chunk indexes run from 0 to MaxChunks-1.
	MaxChunks = 1 << 32

	// Version is the stream format version this package reads and writes.
	Version = 1
	// AlgorithmAES256GCMHKDFSHA256 identifies AES-256-GCM chunks under keys
	// derived with HKDF-SHA-256, the only algorithm of format version 1.
	AlgorithmAES256GCMHKDFSHA256 = 1
)

// magic opens every stream header.
const magic = "KPCS"

// prefixSize is the part of the header that the key derivations bind:
// magic, version, algorithm and chunk size.
const prefixSize = 10

// Header is the stream header: the parameters a decryptor needs before the
// first chunk. It is not secret.
type Header struct {
	// ChunkSize is the plaintext size of every chunk but the last.
	ChunkSize int
	// Salt is chosen at random for each stream.
	Salt [SaltSize]byte
	// Commitment commits to the data key, the salt and the parameters.
	Commitment [CommitmentSize]byte
}

// NewHeader returns a header for a new stream under dek, with a fresh random
// salt and the commitment computed. chunkSize 0 means [DefaultChunkSize].
// To encrypt the stream, [NewFreshCipher] gives the header and its Cipher
// for the cost of one key derivation, where NewHeader then [NewCipher]
// derive the keys twice.
func NewHeader(dek []byte, chunkSize int) (Header, error) {
	c, err := NewFreshCipher(dek, chunkSize)
	if err != nil {
		return Header{}, err
	}
	return c.Header(), nil
}

func checkChunkSize(n int) error {
	if n < MinChunkSize || n > MaxChunkSize {
		return &HeaderError{Reason: fmt.Sprintf("chunk size %d out of range [%d, %d]", n, MinChunkSize, MaxChunkSize)}
	}
	return nil
}

// AppendBinary appends the encoded header to b. It implements
// [encoding.BinaryAppender].
func (h Header) AppendBinary(b []byte) ([]byte, error) {
	if err := checkChunkSize(h.ChunkSize); err != nil {
		return nil, err
	}
	b = append(b, magic...)
	b = append(b, Version, AlgorithmAES256GCMHKDFSHA256)
	b = binary.BigEndian.AppendUint32(b, uint32(h.ChunkSize))
	b = append(b, h.Salt[:]...)
	b = append(b, h.Commitment[:]...)
	return b, nil
}

// MarshalBinary returns the [HeaderSize]-byte encoding of h.
func (h Header) MarshalBinary() ([]byte, error) {
	return h.AppendBinary(make([]byte, 0, HeaderSize))
}

// UnmarshalBinary decodes a header. b must be exactly [HeaderSize] bytes.
// Errors match [ErrInvalidHeader].
func (h *Header) UnmarshalBinary(b []byte) error {
	if len(b) != HeaderSize {
		return &HeaderError{Reason: fmt.Sprintf("header is %d bytes, want %d", len(b), HeaderSize)}
	}
	if string(b[:4]) != magic {
		return &HeaderError{Reason: fmt.Sprintf("bad magic %q", b[:4])}
	}
	if b[4] != Version {
		return &HeaderError{Reason: fmt.Sprintf("unsupported version %d", b[4])}
	}
	if b[5] != AlgorithmAES256GCMHKDFSHA256 {
		return &HeaderError{Reason: fmt.Sprintf("unknown algorithm %d", b[5])}
	}
	cs := binary.BigEndian.Uint32(b[6:10])
	if cs < MinChunkSize || cs > MaxChunkSize {
		return checkChunkSize(int(cs))
	}
	h.ChunkSize = int(cs)
	copy(h.Salt[:], b[10:10+SaltSize])
	copy(h.Commitment[:], b[10+SaltSize:])
	return nil
}

// ReadHeader reads and decodes a header from r. A stream that ends inside the
// header yields an error matching [ErrInvalidHeader].
func ReadHeader(r io.Reader) (Header, error) {
	var buf [HeaderSize]byte
	if n, err := io.ReadFull(r, buf[:]); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return Header{}, &HeaderError{Reason: fmt.Sprintf("stream ends after %d of %d header bytes", n, HeaderSize)}
		}
		return Header{}, fmt.Errorf("stream: reading header: %w", err)
	}
	var h Header
	if err := h.UnmarshalBinary(buf[:]); err != nil {
		return Header{}, err
	}
	return h, nil
}

// BodySize returns the size of the encrypted body (the chunks, without the
// header) for a plaintext of plaintextSize bytes. It fails with [ErrTooLong]
// if the plaintext needs more than [MaxChunks] chunks, and with an error
// matching [ErrInvalidHeader] if h's chunk size is out of bounds (as in the
// zero Header).
func (h Header) BodySize(plaintextSize int64) (int64, error) {
	if plaintextSize < 0 {
		return 0, fmt.Errorf("stream: negative plaintext size %d", plaintextSize)
	}
	if err := checkChunkSize(h.ChunkSize); err != nil {
		return 0, err
	}
	cs := int64(h.ChunkSize)
	chunks := plaintextSize/cs + 1
	if chunks > MaxChunks {
		return 0, ErrTooLong
	}
	return plaintextSize + chunks*TagSize, nil
}

// PlaintextSize returns the plaintext size of an encrypted body of bodySize
// bytes (the chunks, without the header). It fails with an error matching
// [ErrTruncated] if no valid stream has that size. The size is not
// authenticated until the final chunk has been opened.
func (h Header) PlaintextSize(bodySize int64) (int64, error) {
	n, _, err := h.layout(bodySize)
	return n, err
}

// layout returns the plaintext size and the number of chunks of a body.
func (h Header) layout(bodySize int64) (plaintext int64, chunks int64, err error) {
	if err := checkChunkSize(h.ChunkSize); err != nil {
		return 0, 0, err
	}
	full := int64(h.ChunkSize) + TagSize
	switch {
	case bodySize < 0:
		return 0, 0, fmt.Errorf("stream: negative body size %d", bodySize)
	case bodySize < TagSize:
		return 0, 0, &ChunkError{Index: 0, Err: ErrTruncated}
	case bodySize%full == 0:
		// Every chunk is full, so the final one is missing.
		return 0, 0, &ChunkError{Index: uint64(bodySize / full), Err: ErrTruncated}
	case bodySize%full < TagSize:
		return 0, 0, &ChunkError{Index: uint64(bodySize / full), Err: ErrTruncated}
	}
	chunks = bodySize/full + 1
	if chunks > MaxChunks {
		return 0, 0, ErrTooLong
	}
	return bodySize - chunks*TagSize, chunks, nil
}
