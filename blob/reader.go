package blob

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"

	"gocloud.dev/blob"

	"github.com/kpcrypt/kpcrypt/envelope"
)

// DefaultCacheChunks is the number of ciphertext chunks a [ReaderAt] keeps
// unless [ReaderAtOptions.CacheChunks] says otherwise: 8 chunks, about
// 512 KiB at the default 64 KiB chunk size.
const DefaultCacheChunks = 8

// ReaderAtOptions tunes [NewReaderAt].
type ReaderAtOptions struct {
	// HeaderReadSize is the size of the first ranged read; zero means
	// [DefaultHeaderReadSize]. An object no larger is read whole by it.
	HeaderReadSize int
	// CacheChunks bounds the ciphertext chunks kept, least recently used
	// first out; zero means [DefaultCacheChunks], and a negative value
	// keeps none. Memory is at most CacheChunks × (chunk size + 16) bytes,
	// besides the first read.
	CacheChunks int
}

// ReaderAt reads an object's plaintext at random offsets over ranged reads.
// Like envelope.ReaderAt it is safe for concurrent use and has no offset of
// its own. Concurrent reads that miss the same chunk at once may each fetch
// it. The object must not change while it is read: a read that finds it
// shorter fails with io.ErrUnexpectedEOF, and other bytes fail to
// authenticate.
type ReaderAt struct {
	*envelope.ReaderAt
}

// NewReaderAt opens the object at key for reading at random offsets with the
// KEKs of d. It reads the header in one ranged read (two for a header longer
// than HeaderReadSize; in the detached layout, a List and a read of the header
// object as well), opens a key slot, and authenticates the final chunk before
// it returns, so that a truncated object is refused here. ctx bounds the KMS
// calls and every ranged read the ReaderAt will make: it must stay live while
// the ReaderAt is used, as for gocloud.dev/blob's readers.
func NewReaderAt(ctx context.Context, b *blob.Bucket, key string, d *envelope.Decrypter, opts *ReaderAtOptions) (*ReaderAt, error) {
	if opts == nil {
		opts = &ReaderAtOptions{}
	}
	hr := opts.HeaderReadSize
	if hr <= 0 {
		hr = DefaultHeaderReadSize
	}
	h, err := readHead(ctx, b, key, hr)
	if err != nil {
		return nil, err
	}
	if err := h.attach(ctx, b, key); err != nil {
		return nil, err
	}
	n := opts.CacheChunks
	if n == 0 {
		n = DefaultCacheChunks
	}
	src := &source{ctx: ctx, b: b, key: key, head: h, max: max(n, 0), cache: map[int64][]byte{}}
	ra, err := d.NewReaderAt(ctx, src, h.size)
	if err != nil {
		return nil, err
	}
	return &ReaderAt{ra}, nil
}

// attach puts, for a detached object, the newest matching header object in
// place of the body object's zeroed header.
func (h *head) attach(ctx context.Context, b *blob.Bucket, key string) error {
	if !h.l.isDetached(h.buf[:h.l.headerSize]) {
		return nil
	}
	hdr, _, _, err := findHeader(ctx, b, key, h.buf[:h.l.coreSize])
	if err != nil {
		return err
	}
	copy(h.buf, hdr)
	return nil
}

// source is the object as an io.ReaderAt: its first bytes held, and the
// ciphertext chunks after the header fetched by ranged reads into a small
// LRU cache.
type source struct {
	ctx context.Context
	b   *blob.Bucket
	key string
	*head
	max int

	mu    sync.Mutex
	cache map[int64][]byte
	order []int64 // least recently used first
}

func (s *source) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("blob: negative offset")
	}
	if off >= s.size {
		return 0, io.EOF
	}
	end := min(off+int64(len(p)), s.size)
	n := 0
	if off < int64(len(s.buf)) {
		n = copy(p[:end-off], s.buf[off:])
		off += int64(n)
	}
	if off < end {
		m, err := s.readChunks(p[n:end-off+int64(n)], off)
		n += m
		if err != nil {
			return n, err
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// chunkBounds returns the object offsets of ciphertext chunk i.
func (s *source) chunkBounds(i int64) (int64, int64) {
	start := s.l.headerSize + i*s.l.chunkSize
	return start, min(start+s.l.chunkSize, s.size)
}

// readChunks fills p from offset off (past the first bytes held) with whole
// chunks, from the cache or from one ranged read per run of missing chunks.
func (s *source) readChunks(p []byte, off int64) (int, error) {
	first := (off - s.l.headerSize) / s.l.chunkSize
	last := (off + int64(len(p)) - 1 - s.l.headerSize) / s.l.chunkSize
	got := make(map[int64][]byte, last-first+1)
	s.mu.Lock()
	for i := first; i <= last; i++ {
		if c, ok := s.cache[i]; ok {
			got[i] = c
			s.touch(i)
		}
	}
	s.mu.Unlock()
	for i := first; i <= last; {
		if got[i] != nil {
			i++
			continue
		}
		j := i
		for j+1 <= last && got[j+1] == nil {
			j++
		}
		start, _ := s.chunkBounds(i)
		_, stop := s.chunkBounds(j)
		buf, _, err := readRange(s.ctx, s.b, s.key, start, stop-start)
		if err != nil {
			return 0, err
		}
		if int64(len(buf)) != stop-start {
			return 0, fmt.Errorf("blob: %q changed size while open: %w", s.key, io.ErrUnexpectedEOF)
		}
		for k := i; k <= j; k++ {
			a, z := s.chunkBounds(k)
			got[k] = buf[a-start : z-start : z-start]
		}
		s.mu.Lock()
		for k := i; k <= j; k++ {
			s.put(k, got[k])
		}
		s.mu.Unlock()
		i = j + 1
	}
	n := 0
	for i := first; i <= last; i++ {
		a, _ := s.chunkBounds(i)
		c := got[i]
		lo := max(off+int64(n)-a, 0)
		n += copy(p[n:], c[lo:])
	}
	return n, nil
}

// touch marks chunk i as used last. s.mu is held.
func (s *source) touch(i int64) {
	for k, v := range s.order {
		if v == i {
			s.order = append(append(s.order[:k:k], s.order[k+1:]...), i)
			return
		}
	}
}

// put caches chunk i, evicting the least recently used beyond s.max. s.mu
// is held.
func (s *source) put(i int64, c []byte) {
	if s.max == 0 {
		return
	}
	if _, ok := s.cache[i]; ok {
		s.touch(i)
		return
	}
	for len(s.order) >= s.max {
		delete(s.cache, s.order[0])
		s.order = s.order[1:]
	}
	s.cache[i] = bytes.Clone(c) // not the run's buffer, which may be large
	s.order = append(s.order, i)
}

// Reader decrypts an object read in order, in one read of the object (and,
// in the detached layout, a List and a read of its header object).
type Reader struct {
	*envelope.Reader
	body *blob.Reader
}

// NewReader opens the object at key with the KEKs of d and returns a Reader
// of its plaintext. ctx bounds the KMS calls and the download. Close the
// Reader when done.
func NewReader(ctx context.Context, b *blob.Bucket, key string, d *envelope.Decrypter) (*Reader, error) {
	body, err := b.NewReader(ctx, key, nil)
	if err != nil {
		return nil, fmt.Errorf("blob: %w", err)
	}
	r, err := newReader(ctx, b, key, d, body)
	if err != nil {
		body.Close()
		return nil, err
	}
	return r, nil
}

func newReader(ctx context.Context, b *blob.Bucket, key string, d *envelope.Decrypter, body *blob.Reader) (*Reader, error) {
	buf := make([]byte, coreFixed)
	if _, err := io.ReadFull(body, buf); err != nil {
		return nil, fmt.Errorf("blob: %w: %q: %v", envelope.ErrInvalidHeader, key, err)
	}
	l, err := parseLayout(buf)
	if err != nil {
		return nil, err
	}
	buf = append(buf, make([]byte, l.headerSize-coreFixed)...)
	if _, err := io.ReadFull(body, buf[coreFixed:]); err != nil {
		return nil, fmt.Errorf("blob: %w: object %q ends inside its header", envelope.ErrInvalidHeader, key)
	}
	h := &head{buf: buf, size: body.Size(), l: l}
	if err := h.attach(ctx, b, key); err != nil {
		return nil, err
	}
	er, err := d.NewReader(ctx, io.MultiReader(bytes.NewReader(h.buf), body))
	if err != nil {
		return nil, err
	}
	er.SetContext(ctx)
	return &Reader{Reader: er, body: body}, nil
}

// Close stops the Reader's goroutines and closes the download.
func (r *Reader) Close() error {
	err := r.Reader.Close()
	if cerr := r.body.Close(); err == nil {
		err = cerr
	}
	return err
}
