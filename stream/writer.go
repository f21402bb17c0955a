package stream

import (
	"context"
	"fmt"
	"io"
)

// Writer encrypts what is written to it into a stream body. Create one with
// [NewEncryptWriter] or [Cipher.NewWriter]. It is not safe for concurrent
// use.
//
// A stream ends in one of two ways. Close writes the final chunk, which
// makes what was written a valid stream. Abort abandons the stream: it writes
// no final chunk, so what reached the underlying writer never decrypts, not
// even to a prefix. Any error — from the underlying writer, from a reader
// given to ReadFrom, from the context of [Options], or [ErrTooLong] — fails
// the Writer for good, and Close then returns that error and writes no
// final chunk either. Call Close only when every byte of the plaintext was
// written; on any error, call Abort (or Close, which then abandons too).
// Either one stops the Writer's goroutines before it returns. Neither closes
// the underlying writer.
//
// All the Writer's calls to the underlying writer are made by its methods,
// on the caller's goroutine: worker goroutines only seal chunks, and a panic
// in the underlying writer reaches the caller (the Writer is then abandoned).
// A Writer dropped without Close or Abort does not keep its goroutines once
// it is garbage collected.
type Writer struct {
	c       *Cipher
	dst     io.Writer
	ctx     context.Context
	cs      int
	workers int
	nbuf    int    // most chunk buffers the Writer may hold
	bufs    int    // chunk buffers allocated
	index   uint64 // index of the next chunk to submit
	cur     *chunk // plaintext being gathered
	err     error  // sticky
	closed  bool

	// With more than one worker and buffer, chunks go to the pool once the
	// first full chunk is submitted; until then pool is nil.
	pool    *workerPool
	pending queue    // chunks handed to the pool, not yet written, in order
	free    []*chunk // sealed chunks written out, ready for reuse
	aliased uint64   // chunks below this index may alias a Write's buffer
}

// NewWriter returns a Writer that encrypts the body of c's stream into dst.
// It writes no header: the caller stores c.Header() where it belongs.
func (c *Cipher) NewWriter(dst io.Writer, opts *Options) *Writer {
	cs := c.header.ChunkSize
	workers := opts.workers()
	w := &Writer{c: c, dst: dst, ctx: opts.context(), cs: cs, workers: workers, nbuf: maxBuffers(workers, cs)}
	size := cs
	if hint := opts.sizeHint(); hint > 0 && hint < int64(cs) {
		// One byte more than expected, so that ReadFrom sees the end of
		// its reader without growing the buffer.
		size = int(hint) + 1
	}
	w.cur = w.newBuffer(size)
	return w
}

// limit returns how much plaintext w.cur can gather: a chunk, or less
// while it is the small buffer of [Options.SizeHint].
func (w *Writer) limit() int { return min(w.cs, cap(w.cur.buf)-TagSize) }

// grow gives w.cur room for a whole chunk.
func (w *Writer) grow() {
	if cap(w.cur.buf) < w.cs+TagSize {
		b := make([]byte, len(w.cur.buf), w.cs+TagSize)
		copy(b, w.cur.buf)
		w.cur.buf = b
	}
}

// newBuffer allocates a chunk buffer for size bytes of plaintext.
func (w *Writer) newBuffer(size int) *chunk {
	w.bufs++
	return newChunk(size)
}

// pipelined reports whether chunks are sealed by workers.
func (w *Writer) pipelined() bool { return w.workers > 1 && w.nbuf > 1 }

// Write encrypts p. It returns once p is no longer needed, so the caller may
// reuse p; chunks may still be on their way to the underlying writer, and
// an error writing them is returned by a later call. After an error every
// call fails.
func (w *Writer) Write(p []byte) (int, error) {
	if w.closed {
		return 0, ErrClosed
	}
	if w.err != nil {
		return 0, w.err
	}
	ok := false
	defer w.guard(&ok)
	if len(w.cur.buf)+len(p) > w.limit() {
		w.grow()
	}
	// Whole chunks are sealed straight from p, without a copy, but Write
	// must wait for them before it returns. In the pipeline, the last chunks
	// of p are copied instead, so that they are sealed after Write returns
	// and the pipeline stays full from one Write to the next.
	n := 0
	tail := w.cs
	if w.pipelined() {
		tail = w.cs * min(w.workers+1, w.nbuf)
	}
	for len(p) > 0 && w.err == nil {
		if len(w.cur.buf) == 0 && len(p) >= tail {
			w.cur.src = p[:w.cs]
			if !w.submit(false) {
				break
			}
			p, n = p[w.cs:], n+w.cs
			continue
		}
		k := copy(w.cur.buf[len(w.cur.buf):w.limit()], p)
		w.cur.buf = w.cur.buf[:len(w.cur.buf)+k]
		p, n = p[k:], n+k
		if len(w.cur.buf) == w.cs {
			w.submit(false)
		}
	}
	// Write out the chunks sealed from p, so that none still reads it.
	w.writeBelow(w.aliased)
	ok = true
	return n, w.err
}

// ReadFrom encrypts everything read from r until io.EOF. It reads straight
// into the chunk buffers. It implements [io.ReaderFrom], so io.Copy uses it.
// An error from r fails the Writer: ReadFrom returns it, and so does Close,
// which then writes no final chunk.
func (w *Writer) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	if w.closed {
		return 0, ErrClosed
	}
	ok := false
	defer w.guard(&ok)
	for w.err == nil {
		if len(w.cur.buf) == w.limit() {
			w.grow()
		}
		limit := w.limit()
		k, err := r.Read(w.cur.buf[len(w.cur.buf):limit])
		if k < 0 || k > limit-len(w.cur.buf) {
			w.fail(fmt.Errorf("stream: the reader returned %d bytes for a %d-byte read", k, limit-len(w.cur.buf)))
			break
		}
		w.cur.buf = w.cur.buf[:len(w.cur.buf)+k]
		total += int64(k)
		if len(w.cur.buf) == w.cs {
			w.submit(false)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			w.fail(err)
			break
		}
	}
	ok = true
	return total, w.err
}

// Close writes the final chunk, writes out every chunk still in flight, and
// stops the Writer's goroutines. If the Writer failed earlier, or fails now,
// Close writes no final chunk and returns the error: what was written does
// not decrypt. After an Abort it returns the Abort's error. Calling Close
// again returns the same error.
func (w *Writer) Close() error {
	if w.closed {
		return w.err
	}
	w.closed = true
	ok := false
	defer w.guard(&ok)
	if w.err == nil && w.submit(true) {
		w.writeBelow(w.index)
	}
	w.release()
	ok = true
	return w.err
}

// Abort abandons the stream: it writes no final chunk, so what was written
// to the underlying writer never decrypts, and it stops the Writer's
// goroutines before it returns, without writing the chunks still in flight.
// Afterwards every call fails. Close then returns the error that had failed
// the Writer, if any, or else an error matching [ErrAborted] and, when err
// is not nil, err. Abort after Close, or after another Abort, does nothing.
func (w *Writer) Abort(err error) {
	if w.closed {
		return
	}
	w.closed = true
	if w.err == nil {
		if err == nil {
			w.err = ErrAborted
		} else {
			w.err = fmt.Errorf("%w: %w", ErrAborted, err)
		}
	}
	w.release()
}

// fail records err as the sticky error and stops the pipeline.
func (w *Writer) fail(err error) {
	if w.err == nil {
		w.err = err
	}
	w.release()
}

// release stops the workers, waits for them, and drops the buffers.
func (w *Writer) release() {
	if w.pool != nil {
		w.pool.stop()
		w.pool = nil
	}
	w.pending = queue{}
	w.free = nil
	if w.closed || w.err != nil {
		w.cur = nil
	}
}

// guard is deferred by every method that calls the underlying writer or
// reader, with ok set just before a normal return: if they panic (or call
// runtime.Goexit), the Writer is abandoned and its goroutines stopped
// before the panic goes on to the caller.
func (w *Writer) guard(ok *bool) {
	if !*ok {
		w.closed = true
		w.fail(errPanicked)
	}
}

// submit seals w.cur as the next chunk and sends it on its way; when it is
// not final, w.cur becomes a free buffer. It reports whether the chunk was
// accepted.
func (w *Writer) submit(final bool) bool {
	ch := w.cur
	if err := contextErr(w.ctx); err != nil {
		ch.src, ch.ra = nil, nil
		w.fail(err)
		return false
	}
	// A non-final chunk must leave an index for the final one.
	if w.index >= w.c.maxChunks || !final && w.index+1 >= w.c.maxChunks {
		ch.src, ch.ra = nil, nil
		// The chunks before go out all the same: the stream stays
		// without a final chunk.
		w.writeBelow(w.index)
		w.fail(ErrTooLong)
		return false
	}
	ch.index, ch.final = w.index, final
	w.index++
	if ch.src != nil {
		w.aliased = w.index
	}
	if w.pool == nil && w.pipelined() && !final {
		c := w.c
		w.pool = startWorkers(w, w.workers, w.nbuf, func(ch *chunk) { sealChunk(c, ch) }, nil)
	}
	if w.pool == nil {
		sealChunk(w.c, ch)
		if ch.err != nil {
			ch.buf = ch.buf[:0]
			w.failChunk(ch)
			return false
		}
		err := w.write(ch.buf)
		ch.buf = ch.buf[:0]
		if err != nil {
			w.fail(err)
			return false
		}
		return true
	}
	ch.ready = false
	w.pool.work <- ch
	w.pending.push(ch)
	w.cur = nil
	if !final {
		w.cur = w.takeBuffer()
	}
	return w.err == nil
}

// takeBuffer returns a free chunk buffer. It writes out the chunks already
// sealed, allocates a buffer if the budget allows, and otherwise waits for
// the oldest chunk in flight and writes it out. After an error it returns
// a buffer all the same, so that w.cur is never nil before Close.
func (w *Writer) takeBuffer() *chunk {
	for w.err == nil && w.pending.n > 0 && w.pending.front().poll() {
		w.writeFront()
	}
	if len(w.free) == 0 && w.bufs >= w.nbuf && w.err == nil {
		w.writeFront()
	}
	if k := len(w.free); k > 0 {
		ch := w.free[k-1]
		w.free = w.free[:k-1]
		return ch
	}
	return w.newBuffer(w.cs)
}

// writeBelow writes out, in order, the chunks in flight whose index is
// below end (all of them for w.index), until an error.
func (w *Writer) writeBelow(end uint64) {
	for w.err == nil && w.pending.n > 0 && w.pending.front().index < end {
		w.writeFront()
	}
}

// writeFront waits for the oldest chunk in flight, writes it to dst, and
// frees its buffer.
func (w *Writer) writeFront() {
	ch := w.pending.pop()
	ch.wait()
	if ch.err != nil {
		ch.buf = ch.buf[:0]
		w.free = append(w.free, ch)
		w.failChunk(ch)
		return
	}
	err := w.write(ch.buf)
	ch.buf = ch.buf[:0]
	w.free = append(w.free, ch)
	if err != nil {
		w.fail(err)
	}
}

func sealChunk(c *Cipher, ch *chunk) {
	ch.err = nil
	if ch.ra != nil && !ch.readAt() {
		return
	}
	if ch.src != nil {
		ch.buf = c.sealNonce(&ch.nonce, ch.buf[:0], ch.src, ch.index, ch.final)
		ch.src = nil
		return
	}
	ch.buf = c.sealNonce(&ch.nonce, ch.buf[:0], ch.buf, ch.index, ch.final)
}

// failChunk fails the Writer with the error of a chunk read from an
// io.ReaderAt, and raises again on the caller's goroutine what the reader
// panicked with.
func (w *Writer) failChunk(ch *chunk) {
	err, v := ch.err, ch.panicked
	ch.err, ch.panicked = nil, nil
	w.fail(err)
	if v != nil {
		w.closed = true
		panic(v)
	}
}

// ReadFromAt encrypts the n bytes of src from offset off. The Writer's
// workers read the whole chunks among them with src.ReadAt, concurrently,
// each into its own chunk buffer, and seal them there; the caller's
// goroutine reads the bytes that complete a chunk begun by an earlier call,
// and those after the last whole chunk, and writes every chunk to the
// underlying writer, in order. So it reads src in parallel, within the
// Writer's [MemoryBudget]. It returns once the n bytes are written out, or
// an error: src ending before them (an error matching [ErrTruncated]), an
// error from src or the underlying writer, or the Writer's context; like
// any error, it fails the Writer. It does not use src's Read or Seek, so a
// file's offset does not move. A panic in src is raised again on the
// caller's goroutine, and the Writer is abandoned.
func (w *Writer) ReadFromAt(src io.ReaderAt, off, n int64) (int64, error) {
	if w.closed {
		return 0, ErrClosed
	}
	if w.err != nil {
		return 0, w.err
	}
	ok := false
	defer w.guard(&ok)
	var done int64
	for done < n && w.err == nil {
		if len(w.cur.buf) > 0 || n-done < int64(w.cs) {
			// Part of a chunk, on the caller's goroutine.
			if len(w.cur.buf) == w.limit() {
				w.grow()
			}
			limit := w.limit()
			k := int(min(int64(limit-len(w.cur.buf)), n-done))
			if err := readChunkAt(src, w.cur.buf[len(w.cur.buf):len(w.cur.buf)+k], off+done, w.index); err != nil {
				w.fail(err)
				break
			}
			w.cur.buf = w.cur.buf[:len(w.cur.buf)+k]
			done += int64(k)
			if len(w.cur.buf) == w.cs {
				w.submit(false)
			}
			continue
		}
		w.grow()
		w.cur.ra, w.cur.raOff, w.cur.raLen = src, off+done, w.cs
		if !w.submit(false) {
			break
		}
		done += int64(w.cs)
	}
	// Write out every chunk, so that an error reading src is known now.
	w.writeBelow(w.index)
	ok = true
	if w.err != nil {
		return 0, w.err
	}
	return done, nil
}

func (w *Writer) write(b []byte) error {
	n, err := w.dst.Write(b)
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	return err
}
