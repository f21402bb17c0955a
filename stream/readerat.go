package stream

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
)

// ReaderAt decrypts a stream body at random offsets: a read opens only the
// chunks it touches. It authenticates the final chunk when it is created, so
// the plaintext size it reports is authenticated and a truncated stream is
// refused at once. ReadAt is safe for concurrent use.
//
// A read that spans several chunks opens them in parallel, on up to
// Options.Workers goroutines (the caller's included) and within
// [MemoryBudget]; the goroutines have returned when ReadAt returns, and
// they call the underlying io.ReaderAt concurrently. Chunk buffers are
// reused from one read to the next (a free list of at most
// min(2×workers+1, MemoryBudget/(ChunkSize+TagSize)) of them, and the most
// recently opened chunk is kept), so a ReadAt in steady state allocates
// nothing.
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
	workers  int
	maxFree  int

	mu   sync.Mutex
	free []*atBuf // guarded by mu
	last *atBuf   // the most recently opened chunk, guarded by mu

	spans []*spanRead // kept for reuse by reads spanning chunks, guarded by mu
}

// atBuf is a chunk buffer of a ReaderAt. While refs is positive the
// buffer is in use (by reads, or as the cached last chunk) and holds the
// plaintext of chunk index in pt.
type atBuf struct {
	buf   []byte
	pt    []byte
	index int64
	refs  int // guarded by ReaderAt.mu
	nonce [nonceSize]byte
}

// NewReaderAt returns a random-access reader of the stream body held in the
// first bodySize bytes of src (the chunks, without the header). It opens the
// final chunk before returning. It is NewReaderAtOptions with nil options.
//
// A body size that no stream has gets the error class a sequential
// [Reader] reports for a body whose only defect is its end (FORMAT.md
// §1.4): a body that ends 1 to 15 bytes into a chunk has a final chunk cut
// inside its tag ([ErrAuthentication]); one made only of full chunks is
// [ErrTruncated] if its last chunk opens as a full one, and
// [ErrAuthentication] if it does not (a full chunk sealed as final, say).
func (c *Cipher) NewReaderAt(src io.ReaderAt, bodySize int64) (*ReaderAt, error) {
	return c.NewReaderAtOptions(src, bodySize, nil)
}

// NewReaderAtOptions is [Cipher.NewReaderAt] with options: opts.Workers
// bounds the chunks a read opens at once (GOMAXPROCS by default). The
// other options are ignored.
func (c *Cipher) NewReaderAtOptions(src io.ReaderAt, bodySize int64, opts *Options) (*ReaderAt, error) {
	size, chunks, err := c.header.layout(bodySize)
	if err != nil {
		return nil, c.impossibleBody(src, bodySize, err)
	}
	if chunks > int64(c.maxChunks) {
		return nil, ErrTooLong
	}
	workers := opts.workers()
	r := &ReaderAt{c: c, src: src, bodySize: bodySize, size: size, chunks: chunks,
		workers: min(workers, max(MemoryBudget/(c.header.ChunkSize+TagSize), 1)),
		maxFree: maxBuffers(max(workers, 2), c.header.ChunkSize)}
	if b, err := r.chunk(chunks - 1); err != nil {
		return nil, err
	} else {
		r.release(b)
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

// getBuf returns a buffer, not cached and with one reference, from the
// free list or newly allocated.
func (r *ReaderAt) getBuf() *atBuf {
	r.mu.Lock()
	if k := len(r.free); k > 0 {
		b := r.free[k-1]
		r.free = r.free[:k-1]
		b.refs = 1
		r.mu.Unlock()
		return b
	}
	r.mu.Unlock()
	buffersAllocated.Add(1)
	return &atBuf{buf: make([]byte, r.c.header.ChunkSize+TagSize), refs: 1}
}

// release drops a reference to b; the last one puts it on the free list,
// or lets it go if the list is full.
func (r *ReaderAt) release(b *atBuf) {
	r.mu.Lock()
	b.refs--
	if b.refs == 0 {
		b.pt = nil
		if len(r.free) < r.maxFree {
			r.free = append(r.free, b)
		}
	}
	r.mu.Unlock()
}

// cached returns the last chunk opened, with a reference, if it is chunk i.
func (r *ReaderAt) cached(i int64) *atBuf {
	r.mu.Lock()
	defer r.mu.Unlock()
	if b := r.last; b != nil && b.index == i {
		b.refs++
		return b
	}
	return nil
}

// chunk returns a buffer holding the plaintext of chunk i, with a
// reference the caller releases, opening the chunk if it is not the one
// cached.
func (r *ReaderAt) chunk(i int64) (*atBuf, error) {
	if b := r.cached(i); b != nil {
		return b, nil
	}
	b := r.getBuf()
	pt, err := r.open(b, b.buf[:0], i)
	if err != nil {
		clear(b.buf)
		r.release(b)
		return nil, err
	}
	b.pt, b.index = pt, i
	r.mu.Lock()
	old := r.last
	r.last = b
	b.refs++
	r.mu.Unlock()
	if old != nil {
		r.release(old)
	}
	return b, nil
}

// open reads the ciphertext of chunk i into b.buf, opens it, and appends
// the plaintext to dst, which may be b.buf[:0].
func (r *ReaderAt) open(b *atBuf, dst []byte, i int64) ([]byte, error) {
	full := int64(r.c.header.ChunkSize) + TagSize
	off := i * full
	n := full
	final := i == r.chunks-1
	if final {
		n = r.bodySize - off
	}
	ct := b.buf[:n]
	if err := readChunkAt(r.src, ct, off, uint64(i)); err != nil {
		return nil, err
	}
	return r.c.openNonce(&b.nonce, dst, ct, uint64(i), final)
}

// readInto puts the plaintext of chunk i from offset from (within the
// chunk) into p. A chunk that p holds whole is opened straight into p, its
// ciphertext read into a buffer of the free list; otherwise the chunk is
// opened in a buffer, and cached.
func (r *ReaderAt) readInto(p []byte, i, from int64) error {
	cs := int64(r.c.header.ChunkSize)
	plain := min(cs, r.size-i*cs)
	if from == 0 && int64(len(p)) >= plain && plain > 0 {
		if b := r.cached(i); b != nil {
			copy(p, b.pt)
			r.release(b)
			return nil
		}
		b := r.getBuf()
		defer r.release(b)
		_, err := r.open(b, p[:0:plain], i)
		return err
	}
	b, err := r.chunk(i)
	if err != nil {
		return err
	}
	copy(p, b.pt[from:])
	r.release(b)
	return nil
}

// ReadAt reads len(p) bytes of plaintext starting at offset off. It
// implements [io.ReaderAt]. It returns the plaintext up to the first chunk
// that fails, and the error; p holds nothing after that.
func (r *ReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("stream: negative offset %d", off)
	}
	var eof error
	if off >= r.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	if int64(len(p)) > r.size-off {
		p, eof = p[:r.size-off], io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	cs := int64(r.c.header.ChunkSize)
	first, last := off/cs, (off+int64(len(p))-1)/cs
	n := uint64(last - first + 1)
	workers := uint64(r.workers)
	if n == 1 || workers <= 1 {
		for i := first; i <= last; i++ {
			q, from := r.span(p, off, i)
			if err := r.readInto(q, i, from); err != nil {
				return r.failAt(p, off, i, err)
			}
		}
		return len(p), eof
	}
	if k, err := r.readParallel(p, off, first, n, workers); err != nil {
		return k, err
	}
	return len(p), eof
}

// span returns the part of p, read from off, that chunk i holds, and the
// offset of that part in the chunk.
func (r *ReaderAt) span(p []byte, off, i int64) ([]byte, int64) {
	cs := int64(r.c.header.ChunkSize)
	lo := max(i*cs, off)
	hi := min((i+1)*cs, off+int64(len(p)))
	return p[lo-off : hi-off], lo - i*cs
}

// readParallel reads the n chunks from first on into p, read from off, on
// up to workers goroutines, the caller's included. On failure it returns
// the plaintext before the lowest chunk that failed, and that chunk's
// error; p holds nothing after it. The goroutines have returned when it
// returns.
func (r *ReaderAt) readParallel(p []byte, off, first int64, n, workers uint64) (int, error) {
	var j *spanRead
	r.mu.Lock()
	if k := len(r.spans); k > 0 {
		j, r.spans = r.spans[k-1], r.spans[:k-1]
	}
	r.mu.Unlock()
	if j == nil {
		j = &spanRead{}
		// A go statement on a func value with no arguments allocates
		// nothing: its goroutine reuses a dead one's.
		j.worker = func() { j.run(true) }
	}
	j.r, j.p, j.off, j.first, j.n, j.err = r, p, off, first, n, nil
	j.next.Store(0)
	j.failed.Store(0)
	for range min(workers, n) - 1 {
		j.wg.Add(1)
		go j.worker()
	}
	j.run(false)
	j.wg.Wait()
	f, err := j.failed.Load(), j.err
	j.r, j.p, j.err = nil, nil, nil
	r.mu.Lock()
	if len(r.spans) < maxSpans {
		r.spans = append(r.spans, j)
	}
	r.mu.Unlock()
	if f != 0 {
		return r.failAt(p, off, first+int64(f)-1, err)
	}
	return len(p), nil
}

// failAt returns the result of a read of p from off that failed at chunk i
// with err: the plaintext before chunk i, and err. It clears the rest of p.
func (r *ReaderAt) failAt(p []byte, off, i int64, err error) (int, error) {
	k := int(max(i*int64(r.c.header.ChunkSize), off) - off)
	clear(p[k:])
	return k, err
}

// maxSpans bounds the spanReads a ReaderAt keeps: as many as concurrent
// spanning reads usually are.
const maxSpans = 8

// spanRead is one ReadAt spanning several chunks, shared by the goroutines
// opening them; ReaderAt.spans keeps them for reuse.
type spanRead struct {
	worker func() // run(true), made once
	r      *ReaderAt
	p      []byte
	off    int64
	first  int64
	n      uint64
	next   atomic.Uint64
	// firstFailure counts chunks from first: failed is the lowest failed
	// chunk - first + 1, or 0.
	firstFailure
	wg sync.WaitGroup
}

// run opens chunks until none is left, or one below the next has failed.
func (s *spanRead) run(goroutine bool) {
	if goroutine {
		defer s.wg.Done()
	}
	for {
		j := s.next.Add(1) - 1
		if j >= s.n {
			return
		}
		if s.skip(j) {
			return
		}
		i := s.first + int64(j)
		q, from := s.r.span(s.p, s.off, i)
		if err := s.r.readInto(q, i, from); err != nil {
			s.record(j, err)
			return
		}
	}
}
