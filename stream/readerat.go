package stream

import (
	"errors"
	"fmt"
	"io"
	"sync/atomic"
)

// ReaderAt decrypts a stream body at random offsets: a read opens only the
// chunks it touches. It authenticates the final chunk when it is created, so
// the plaintext size it reports is authenticated and a truncated stream is
// refused at once. ReadAt is safe for concurrent use.
//
// ReaderAt has no Read or Seek of its own, so that no offset is shared
// between its users: a caller who wants an [io.ReadSeeker] takes its own
// io.NewSectionReader(r, 0, r.Size()).
type ReaderAt struct {
	c        *Cipher
	src      io.ReaderAt
	bodySize int64
	size     int64 // plaintext size
	chunks   int64

	// last caches the most recently opened chunk.
	last atomic.Pointer[openedChunk]
}

type openedChunk struct {
	index     int64
	plaintext []byte
}

// NewReaderAt returns a random-access reader of the stream body held in the
// first bodySize bytes of src (the chunks, without the header). It opens the
// final chunk before returning.
//
// A body size that no stream has gets the error class a sequential
// [Reader] reports for a body whose only defect is its end (FORMAT.md
// §1.4): a body that ends 1 to 15 bytes into a chunk has a final chunk cut
// inside its tag ([ErrAuthentication]); one made only of full chunks is
// [ErrTruncated] if its last chunk opens as a full one, and
// [ErrAuthentication] if it does not (a full chunk sealed as final, say).
func (c *Cipher) NewReaderAt(src io.ReaderAt, bodySize int64) (*ReaderAt, error) {
	size, chunks, err := c.header.layout(bodySize)
	if err != nil {
		return nil, c.impossibleBody(src, bodySize, err)
	}
	if chunks > int64(c.maxChunks) {
		return nil, ErrTooLong
	}
	r := &ReaderAt{c: c, src: src, bodySize: bodySize, size: size, chunks: chunks}
	if _, err := r.chunk(chunks - 1); err != nil {
		return nil, err
	}
	return r, nil
}

// impossibleBody returns the error for a body of bodySize bytes, which
// layout refused with err.
func (c *Cipher) impossibleBody(src io.ReaderAt, bodySize int64, err error) error {
	var ce *ChunkError
	if bodySize <= 0 || !errors.As(err, &ce) || ce.Err != ErrTruncated {
		return err
	}
	full := int64(c.header.ChunkSize) + TagSize
	k := bodySize / full // the index of the final chunk, cut or missing
	if bodySize%full != 0 {
		// 1 to 15 bytes: a final chunk too short to hold its tag.
		return &ChunkError{Index: uint64(k), Err: ErrAuthentication}
	}
	if k >= int64(c.maxChunks) {
		return ErrTooLong
	}
	// Open the last chunk as a full one, as a sequential reader would.
	r := &ReaderAt{c: c, src: src, bodySize: bodySize, chunks: k + 1}
	if _, err := r.chunk(k - 1); err != nil {
		return err
	}
	return err
}

// Size returns the plaintext size, authenticated by the final chunk.
func (r *ReaderAt) Size() int64 { return r.size }

// chunk returns the plaintext of chunk i, opening it if it is not cached.
func (r *ReaderAt) chunk(i int64) ([]byte, error) {
	if oc := r.last.Load(); oc != nil && oc.index == i {
		return oc.plaintext, nil
	}
	full := int64(r.c.header.ChunkSize) + TagSize
	off := i * full
	final := i == r.chunks-1
	n := full
	if final {
		n = r.bodySize - off
	}
	buf := make([]byte, n)
	if k, err := r.src.ReadAt(buf, off); k < len(buf) {
		if err == nil || errors.Is(err, io.EOF) {
			err = &ChunkError{Index: uint64(i), Err: ErrTruncated}
		}
		return nil, fmt.Errorf("stream: reading chunk %d: %w", i, err)
	}
	pt, err := r.c.open(buf[:0], buf, uint64(i), final)
	if err != nil {
		return nil, err
	}
	r.last.Store(&openedChunk{index: i, plaintext: pt})
	return pt, nil
}

// ReadAt reads len(p) bytes of plaintext starting at offset off. It
// implements [io.ReaderAt].
func (r *ReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("stream: negative offset %d", off)
	}
	cs := int64(r.c.header.ChunkSize)
	n := 0
	for n < len(p) && off < r.size {
		i := off / cs
		pt, err := r.chunk(i)
		if err != nil {
			return n, err
		}
		k := copy(p[n:], pt[off-i*cs:])
		n += k
		off += int64(k)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
