package stream

import (
	"context"
	"fmt"
	"io"
)

// errReadAfterClose is the sticky error of a Reader after Close.
var errReadAfterClose = fmt.Errorf("stream: read after Close")

// Reader decrypts a stream body read in order. Create one with
// [NewDecryptReader] or [Cipher.NewReader]. It releases the plaintext of a
// chunk only after the chunk has authenticated, and it returns [io.EOF] only
// after the final chunk has. It is not safe for concurrent use.
//
// With one worker (or a [MemoryBudget] of one chunk) the Reader reads and
// opens each chunk in Read and WriteTo, on the caller's goroutine. With
// more, a producer goroutine reads chunks ahead of the caller, so that the
// plaintext of a chunk is served as soon as it has authenticated even when
// the next chunk is slow to come, and worker goroutines open them. The
// goroutines live until the end of the stream, an error, or Close, which
// stops them and waits for them: it returns only once nothing of the
// Reader runs or touches the underlying reader, so it first waits for a
// read of the underlying reader in progress to return (close a pipe or a
// connection first if it may never return). A panic in the underlying
// reader, or in the writer given to WriteTo, reaches the caller, and the
// Reader fails. Call Close if you stop reading before the end of the
// stream; a Reader dropped without Close lets its goroutines exit once it
// is garbage collected, after any read in progress.
type Reader struct {
	c       *Cipher
	src     io.Reader
	ctx     context.Context
	cs      int
	workers int
	nbuf    int // most chunk buffers the Reader may hold

	cur   *chunk // the chunk being served: plaintext in cur.buf[off:]
	off   int
	index uint64 // next chunk to read, with one worker
	err   error  // sticky; io.EOF once the final chunk is served
	pipe  *decPipe

	// at, when set, holds the body, read with ReadAt by the workers; src
	// is then nil.
	at *bodyAt
}

// bodyAt is a body read with ReadAt. The producer uses it, not the
// Reader, so that a Reader dropped without Close can be collected.
type bodyAt struct {
	c    *Cipher
	ra   io.ReaderAt
	size int64
	ctx  context.Context
}

// NewReaderFromAt returns a Reader of the plaintext of the stream body held
// in the first bodySize bytes of src. It decrypts as [Cipher.NewReader]
// does from io.NewSectionReader(src, 0, bodySize), with the same errors,
// but its workers read the chunks themselves, each with src.ReadAt into
// its own buffer, concurrently, so that the reads are parallel too. It
// never uses src's Read or Seek, so a file's offset does not move. A chunk
// src returns short (a file cut meanwhile) fails with [ErrTruncated].
func (c *Cipher) NewReaderFromAt(src io.ReaderAt, bodySize int64, opts *Options) *Reader {
	r := c.NewReader(nil, opts)
	r.at = &bodyAt{c: c, ra: src, size: bodySize, ctx: r.ctx}
	return r
}

// chunk sets up chunk ch.index of a body read with ReadAt: where it is,
// how long, and whether it is final, as a sequential read of the body
// would find; the read itself is left to ch.readAt. It fails the chunk
// where the sequential read would fail without opening it.
func (b *bodyAt) chunk(ch *chunk) {
	ch.err = nil
	if err := contextErr(b.ctx); err != nil {
		ch.buf = ch.buf[:0]
		ch.err = err
		return
	}
	off, n, final, err := b.c.bodyChunk(ch.index, b.size)
	if err != nil {
		ch.buf = ch.buf[:0]
		ch.err = err
		return
	}
	ch.final = final
	ch.ra, ch.raOff, ch.raLen = b.ra, off, n
}

// decPipe is a Reader's pipeline: a producer goroutine reads chunks from
// src into free buffers, workers open them, and the caller takes them from
// order in the stream's order.
type decPipe struct {
	pool  *workerPool
	order chan *chunk
	free  chan *chunk
}

// NewReader returns a Reader of the plaintext of the stream body read from
// src. src must be positioned after the header.
func (c *Cipher) NewReader(src io.Reader, opts *Options) *Reader {
	cs := c.header.ChunkSize
	workers := opts.workers()
	return &Reader{c: c, src: src, ctx: opts.context(), cs: cs, workers: workers, nbuf: maxBuffers(workers, cs)}
}

// Read reads decrypted plaintext into p.
func (r *Reader) Read(p []byte) (int, error) {
	ok := false
	defer r.guard(&ok)
	n := 0
	for n < len(p) {
		if r.cur == nil || r.off == len(r.cur.buf) {
			// Return what is available rather than wait for the next chunk.
			if r.err != nil || n > 0 {
				break
			}
			r.next()
			continue
		}
		k := copy(p[n:], r.cur.buf[r.off:])
		r.off += k
		n += k
	}
	ok = true
	if n > 0 {
		return n, nil
	}
	return 0, r.err
}

// WriteTo writes the decrypted plaintext to w until the end of the stream or
// an error. It implements [io.WriterTo], so io.Copy uses it and no plaintext
// is copied through an intermediate buffer.
func (r *Reader) WriteTo(w io.Writer) (int64, error) {
	ok := false
	defer r.guard(&ok)
	var total int64
	for {
		if r.cur != nil && r.off < len(r.cur.buf) {
			k, err := w.Write(r.cur.buf[r.off:])
			if k < 0 || k > len(r.cur.buf)-r.off {
				k, err = 0, fmt.Errorf("stream: the writer wrote %d of %d bytes", k, len(r.cur.buf)-r.off)
			}
			r.off += k
			total += int64(k)
			if err == nil && r.off < len(r.cur.buf) {
				err = io.ErrShortWrite
			}
			if err != nil {
				ok = true
				return total, err
			}
		}
		if r.err != nil {
			ok = true
			if r.err == io.EOF {
				return total, nil
			}
			return total, r.err
		}
		r.next()
	}
}

// Close stops the Reader's goroutines and waits for them: once it returns,
// nothing of the Reader runs or touches the underlying reader, which it does
// not close. Reads after Close fail.
func (r *Reader) Close() error {
	if r.err == nil || r.err == io.EOF {
		r.err = errReadAfterClose
	}
	r.cur, r.off = nil, 0
	r.release()
	return nil
}

// guard is deferred by Read and WriteTo, with ok set just before a normal
// return: if the underlying reader or writer panics, the Reader fails and
// its goroutines stop before the panic goes on to the caller.
func (r *Reader) guard(ok *bool) {
	if !*ok {
		r.fail(errPanicked)
	}
}

// fail records err, unless an error is recorded already, drops the
// plaintext not yet read, and stops the pipeline.
func (r *Reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
	r.cur, r.off = nil, 0
	r.release()
}

// release stops the goroutines, waits for them, and drops the buffers.
func (r *Reader) release() {
	if r.pipe != nil {
		r.pipe.pool.stop()
		r.pipe = nil
	}
}

// next makes the next authenticated chunk current, or sets r.err.
func (r *Reader) next() {
	if r.err != nil {
		return
	}
	if r.workers <= 1 || r.nbuf <= 1 {
		if r.cur == nil {
			r.cur = newChunk(r.cs)
		}
		ch := r.cur
		ch.index = r.index
		r.index++
		if r.at != nil {
			r.at.chunk(ch)
		} else {
			readChunk(r.src, r.ctx, r.c, ch)
		}
		if ch.err == nil {
			openChunk(r.c, ch)
		}
		if v := ch.panicked; v != nil {
			ch.panicked = nil
			r.fail(errPanicked)
			panic(v)
		}
		r.take(ch)
		return
	}
	if r.pipe == nil {
		r.startPipe()
	}
	if r.cur != nil {
		r.cur.buf = r.cur.buf[:0]
		r.pipe.free <- r.cur
		r.cur = nil
	}
	ch, ok := <-r.pipe.order
	if !ok {
		// The producer stopped without a final chunk or an error: its
		// underlying reader called runtime.Goexit.
		r.fail(errPanicked)
		return
	}
	ch.wait()
	if v := ch.panicked; v != nil {
		r.fail(errPanicked)
		panic(v)
	}
	r.take(ch)
	if r.err != nil {
		// The final chunk, or an error: nothing follows.
		r.release()
	}
}

// startPipe starts the producer and the workers.
func (r *Reader) startPipe() {
	d := &decPipe{order: make(chan *chunk, r.nbuf), free: make(chan *chunk, r.nbuf)}
	c, src, ctx, cs, nbuf, at := r.c, r.src, r.ctx, r.cs, r.nbuf, r.at
	produce := func(p *workerPool) {
		defer close(d.order)
		bufs := 0 // chunk buffers allocated
		for index := uint64(0); ; index++ {
			if p.stopping() {
				return
			}
			var ch *chunk
			select {
			case ch = <-d.free:
			default:
				if bufs < nbuf {
					bufs++
					ch = newChunk(cs)
					break
				}
				select {
				case ch = <-d.free:
				case <-p.stopc:
					return
				}
			}
			ch.index = index
			ch.ready = false
			if at != nil {
				at.chunk(ch)
				if ch.err != nil {
					ch.ready = true
					d.order <- ch
					return
				}
			} else if !readChunkRecover(src, ctx, c, ch) || ch.err != nil {
				ch.ready = true
				d.order <- ch
				return
			}
			p.work <- ch
			d.order <- ch
			if ch.final {
				return
			}
		}
	}
	d.pool = startWorkers(r, r.workers, r.nbuf, func(ch *chunk) { openChunk(c, ch) }, produce)
	r.pipe = d
}

// readChunkRecover is readChunk that recovers a panic of src into
// ch.panicked. It reports whether src returned normally.
func readChunkRecover(src io.Reader, ctx context.Context, c *Cipher, ch *chunk) (ok bool) {
	defer ch.recoverPanic(&ok)
	readChunk(src, ctx, c, ch)
	return true
}

// take makes ch current, or records its error.
func (r *Reader) take(ch *chunk) {
	r.off = 0
	if ch.err != nil {
		r.err = ch.err
		ch.buf = ch.buf[:0]
		r.cur = nil
		return
	}
	r.cur = ch
	if ch.final {
		r.err = io.EOF
	}
}

// readChunk reads the ciphertext of chunk ch.index into ch.buf and decides
// whether it is the final chunk: a chunk shorter than a full one is. A done
// ctx fails the chunk with ctx.Err().
func readChunk(src io.Reader, ctx context.Context, c *Cipher, ch *chunk) {
	ch.err = nil
	if err := contextErr(ctx); err != nil {
		ch.buf = ch.buf[:0]
		ch.err = err
		return
	}
	cs := c.header.ChunkSize
	n, err := io.ReadFull(src, ch.buf[:cs+TagSize])
	ch.buf = ch.buf[:n]
	switch err {
	case nil:
		ch.final = false
		if ch.index+1 >= c.maxChunks {
			ch.err = &ChunkError{Index: ch.index, Err: ErrTooLong}
		}
	case io.ErrUnexpectedEOF:
		ch.final = true
	case io.EOF:
		ch.err = &ChunkError{Index: ch.index, Err: ErrTruncated}
	default:
		ch.err = fmt.Errorf("stream: reading chunk %d: %w", ch.index, err)
	}
}

func openChunk(c *Cipher, ch *chunk) {
	if ch.ra != nil && !ch.readAt() {
		return
	}
	pt, err := c.openNonce(&ch.nonce, ch.buf[:0], ch.buf, ch.index, ch.final)
	if err != nil {
		ch.err = err
		return
	}
	ch.buf = pt
}
