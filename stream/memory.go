package stream

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
)

// SealBody encrypts the whole plaintext as the body of c's stream (the
// chunks, without the header) and appends it to dst, which it grows at most
// once, to exactly the size it needs: pass dst with enough capacity
// ([Header.BodySize]) and SealBody allocates nothing but a nonce per worker.
// The chunks are sealed straight from plaintext into dst, in parallel on
// opts.Workers goroutines (the caller's included); every goroutine has
// returned when SealBody returns. dst must not overlap plaintext.
//
// opts.Context is checked between chunks: once it is done, SealBody fails
// with its error. On any error ([ErrTooLong] for a plaintext of more than
// [MaxChunks] chunks, or the context's) it returns nil, and what it wrote
// into dst's spare capacity is cleared.
func (c *Cipher) SealBody(dst, plaintext []byte, opts *Options) ([]byte, error) {
	cs := c.header.ChunkSize
	chunks := uint64(len(plaintext)/cs) + 1
	if chunks > c.maxChunks {
		return nil, ErrTooLong
	}
	bodySize := len(plaintext) + int(chunks)*TagSize
	start := len(dst)
	dst = grow(dst, bodySize)
	body := dst[start:]
	full := cs + TagSize
	err := c.parallel(opts, chunks, func(n *[nonceSize]byte, i uint64) error {
		pt := plaintext[int(i)*cs : min(int(i+1)*cs, len(plaintext))]
		c.sealNonce(n, body[int(i)*full:int(i)*full:len(body)], pt, i, i == chunks-1)
		return nil
	})
	if err != nil {
		clear(body)
		return nil, err
	}
	return dst, nil
}

// OpenBody decrypts a whole stream body held in memory (the chunks, without
// the header) and appends its plaintext to dst, which it grows at most once,
// to exactly the size it needs. It opens the chunks straight from body into
// dst, in parallel on opts.Workers goroutines (the caller's included), and
// never writes to body; every goroutine has returned when OpenBody returns.
// dst must not overlap body.
//
// OpenBody releases nothing that did not authenticate: on any error it
// returns nil, and what it wrote into dst's spare capacity is cleared. It
// fails exactly as a sequential [Reader] of body would, with the error of
// the first defective chunk in the stream's order: a body that ends 1 to 15
// bytes into a chunk, or with trailing data after the final chunk, fails to
// authenticate that chunk ([ErrAuthentication]); a body made only of full
// chunks is [ErrTruncated] after its last chunk (if that one opens as a full
// chunk); a body of more than [MaxChunks] chunks is [ErrTooLong].
// opts.Context is checked between chunks: once it is done, OpenBody fails
// with its error.
func (c *Cipher) OpenBody(dst, body []byte, opts *Options) ([]byte, error) {
	cs := c.header.ChunkSize
	full := cs + TagSize
	// As a sequential reader sees it: every full read is a non-final chunk,
	// a short one is the final chunk, and none at all after a full one
	// means the final chunk is missing.
	whole := uint64(len(body) / full)
	rem := len(body) % full
	chunks := whole
	if rem > 0 || len(body) == 0 {
		chunks++
	}
	// The reader fails chunk i (a full one) with ErrTooLong when i+1 >=
	// maxChunks, before opening it: chunks past that point never matter.
	opened := min(chunks, c.maxChunks)
	plainSize := len(body) - int(chunks)*TagSize
	if rem > 0 && rem < TagSize {
		plainSize = int(whole) * cs
	}
	plainSize = max(plainSize, 0)
	start := len(dst)
	dst = grow(dst, plainSize)
	out := dst[start:]
	err := c.parallel(opts, opened, func(n *[nonceSize]byte, i uint64) error {
		off, k, final, err := c.bodyChunk(i, int64(len(body)))
		if err != nil {
			return err
		}
		ct := body[off:][:k]
		o := int(i) * cs
		pt := out[o:o:min(o+cs, len(out))]
		_, err = c.openNonce(n, pt, ct, i, final)
		return err
	})
	if err == nil && rem == 0 && len(body) > 0 && whole < c.maxChunks {
		// Full chunks only: the stream ended without its final chunk.
		err = &ChunkError{Index: whole, Err: ErrTruncated}
	}
	if err != nil {
		clear(out)
		return nil, err
	}
	return dst, nil
}

// bodyChunk locates chunk i of a body of size bytes as a sequential
// [Reader] of the body finds it: n bytes at off, final if shorter than a
// full chunk. It fails where that reader fails without opening the chunk:
// with [ErrTruncated] if the body ends before the chunk, and with
// [ErrTooLong] if a full chunk leaves no index for the final one.
func (c *Cipher) bodyChunk(i uint64, size int64) (off int64, n int, final bool, err error) {
	full := int64(c.header.ChunkSize) + TagSize
	off = int64(i) * full
	if off >= size || off < 0 {
		return 0, 0, false, &ChunkError{Index: i, Err: ErrTruncated}
	}
	n64 := min(full, size-off)
	final = n64 < full
	if !final && i+1 >= c.maxChunks {
		return 0, 0, false, &ChunkError{Index: i, Err: ErrTooLong}
	}
	return off, int(n64), final, nil
}

// parallel runs do on chunks 0 to n-1 on up to opts.workers() goroutines,
// the caller's included, and returns the error of the lowest chunk that
// failed, as a sequential loop stopping at its first failure would. A
// chunk above one that failed may be skipped. opts.Context is checked
// before each chunk. Every goroutine has returned when parallel returns.
func (c *Cipher) parallel(opts *Options, n uint64, do func(nonce *[nonceSize]byte, i uint64) error) error {
	ctx := opts.context()
	workers := uint64(opts.workers())
	if workers > n {
		workers = n
	}
	if workers <= 1 {
		var nonce [nonceSize]byte
		for i := range n {
			if err := ctxErr(ctx, i); err != nil {
				return err
			}
			if err := do(&nonce, i); err != nil {
				return err
			}
		}
		return nil
	}
	var (
		next atomic.Uint64 // the next chunk to take
		ff   firstFailure
		wg   sync.WaitGroup
	)
	// Workers take runs of up to 16 consecutive chunks (1 MiB at the
	// default size): fewer atomic operations, and each worker's writes,
	// which fault a fresh output's pages in, stay apart from the others'.
	block := max(1, min(16, n/(workers*4)))
	work := func() {
		var nonce [nonceSize]byte
		for {
			from := next.Add(block) - block
			if from >= n {
				return
			}
			for i := from; i < min(from+block, n); i++ {
				if ff.skip(i) {
					return
				}
				if err := ctxErr(ctx, i); err != nil {
					ff.record(i, err)
					return
				}
				if err := do(&nonce, i); err != nil {
					ff.record(i, err)
					return
				}
			}
		}
	}
	for range workers - 1 {
		wg.Go(work)
	}
	work()
	wg.Wait()
	return ff.err
}

// firstFailure keeps, among chunks processed in parallel, the error of the
// lowest one that failed: the one a sequential loop stopping at its first
// failure would return.
type firstFailure struct {
	failed atomic.Uint64 // lowest failed chunk + 1, or 0
	mu     sync.Mutex
	err    error // of the lowest failed chunk, guarded by mu
}

// record notes that chunk i failed with err.
func (f *firstFailure) record(i uint64, err error) {
	f.mu.Lock()
	if v := f.failed.Load(); v == 0 || i < v-1 {
		f.failed.Store(i + 1)
		f.err = err
	}
	f.mu.Unlock()
}

// skip reports whether chunk i is at or above a chunk that failed, so that
// a sequential loop would not reach it.
func (f *firstFailure) skip(i uint64) bool {
	v := f.failed.Load()
	return v != 0 && i >= v-1
}

// ctxErr is contextErr for chunk i, wrapped with the chunk's index.
func ctxErr(ctx context.Context, i uint64) error {
	if err := contextErr(ctx); err != nil {
		return fmt.Errorf("stream: chunk %d: %w", i, err)
	}
	return nil
}

// contextErr returns ctx.Err(), or nil if ctx is nil ([Options.Context]
// unset).
func contextErr(ctx context.Context) error {
	if ctx == nil {
		return nil
	}
	return ctx.Err()
}

// grow returns dst extended by n bytes, in place if its capacity allows.
// Otherwise it allocates with make, not append: a large fresh allocation
// comes zeroed from the OS, and its pages are then first touched by the
// workers, in parallel, where append's growth clears the new bytes on the
// caller's goroutine, faulting every page in one at a time.
func grow(dst []byte, n int) []byte {
	if cap(dst)-len(dst) >= n {
		return dst[:len(dst)+n]
	}
	if len(dst) == 0 {
		return make([]byte, n)
	}
	out := make([]byte, len(dst)+n)
	// Not copy(out, dst), which the compiler fuses with the make into an
	// allocation that clears the rest.
	copy(out[:len(dst)], dst)
	return out
}
