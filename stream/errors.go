package stream

import (
	"errors"
	"fmt"
)

// Error classes. Every error returned for bad input wraps exactly one of them,
// so callers can branch with [errors.Is].
var (
	// ErrInvalidHeader means the stream header is malformed: bad magic, an
	// unknown version or algorithm, a chunk size out of bounds, or too short.
	// The concrete error is a *[HeaderError].
	ErrInvalidHeader = errors.New("invalid stream header")

	// ErrKeyCommitment means the header's key commitment does not match the
	// data key: either the key is wrong or the header was modified.
	ErrKeyCommitment = errors.New("key commitment mismatch: wrong data key or modified header")

	// ErrAuthentication means a chunk failed to authenticate: it was modified,
	// moved, dropped, duplicated, or cut short, or trailing data follows the
	// final chunk (the reader then takes the final chunk and the data after it
	// for one chunk). The concrete error is a *[ChunkError].
	ErrAuthentication = errors.New("authentication failed")

	// ErrTruncated means the stream ended at a chunk boundary before its final
	// chunk. The concrete error is a *[ChunkError].
	ErrTruncated = errors.New("stream truncated before its final chunk")

	// ErrTooLong means a stream would need more than [MaxChunks] chunks; the
	// encryptor refuses to go on rather than reuse a nonce.
	ErrTooLong = errors.New("stream exceeds the chunk counter limit")

	// ErrClosed is returned by a Writer used after Close or Abort.
	ErrClosed = errors.New("stream writer already closed")

	// ErrAborted is returned by Close after [Writer.Abort]: the stream was
	// abandoned without its final chunk, so it does not decrypt.
	ErrAborted = errors.New("stream abandoned without its final chunk")
)

// HeaderError reports a malformed stream header. It matches
// [ErrInvalidHeader] with [errors.Is].
type HeaderError struct {
	// Reason names what is wrong, for example "unknown algorithm 7".
	Reason string
}

func (e *HeaderError) Error() string { return "invalid stream header: " + e.Reason }

// Is reports whether target is [ErrInvalidHeader].
func (e *HeaderError) Is(target error) bool { return target == ErrInvalidHeader }

// ChunkError reports a chunk that could not be decrypted. Err is
// [ErrAuthentication] or [ErrTruncated].
type ChunkError struct {
	// Index is the zero-based position of the chunk in the stream.
	Index uint64
	// Err is the error class.
	Err error
}

func (e *ChunkError) Error() string { return fmt.Sprintf("chunk %d: %v", e.Index, e.Err) }

// Unwrap returns the error class.
func (e *ChunkError) Unwrap() error { return e.Err }
