package stream

import (
	"fmt"
	"io"
	"runtime"
	"sync"
)

// Reader decrypts a stream body read in order. Create one with
// [NewDecryptReader] or [Cipher.NewReader]. It releases the plaintext of a
// chunk only after the chunk has authenticated, and it returns [io.EOF] only
// after the final chunk has. It is not safe for concurrent use.
//
// With more than one worker the Reader reads and opens chunks ahead of the
// caller. Call Close if you stop reading before the end of the stream, so
// that its goroutines stop.
type Reader struct {
	c       *Cipher
	src     io.Reader
	cs      int
	workers int

	cur   *chunk // the chunk being served: plaintext in cur.buf[off:]
	off   int
	index uint64 // next chunk to read, with one worker
	err   error  // sticky; io.EOF once the final chunk is served
	pipe  *decPipe
}

// decPipe is a reader's parallel pipeline: one goroutine reads chunks from
// src, workers open them, and the caller takes them in order.
type decPipe struct {
	work  chan *chunk
	order chan *chunk
	free  chan *chunk
	stop  chan struct{}
	once  sync.Once
}

// NewReader returns a Reader of the plaintext of the stream body read from
// src. src must be positioned after the header.
func (c *Cipher) NewReader(src io.Reader, opts *Options) *Reader {
	return &Reader{c: c, src: src, cs: c.header.ChunkSize, workers: opts.workers()}
}

// Read reads decrypted plaintext into p.
func (r *Reader) Read(p []byte) (int, error) {
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
	if n > 0 {
		return n, nil
	}
	return 0, r.err
}

// WriteTo writes the decrypted plaintext to w until the end of the stream or
// an error. It implements [io.WriterTo], so io.Copy uses it and no plaintext
// is copied through an intermediate buffer.
func (r *Reader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if r.cur != nil && r.off < len(r.cur.buf) {
			k, err := w.Write(r.cur.buf[r.off:])
			r.off += k
			total += int64(k)
			if err != nil {
				return total, err
			}
			if r.off < len(r.cur.buf) {
				return total, io.ErrShortWrite
			}
		}
		if r.err != nil {
			if r.err == io.EOF {
				return total, nil
			}
			return total, r.err
		}
		r.next()
	}
}

// Close stops the Reader's goroutines. It does not close the underlying
// reader. Reads after Close fail.
func (r *Reader) Close() error {
	if r.pipe != nil {
		r.pipe.once.Do(func() { close(r.pipe.stop) })
	}
	if r.err == nil || r.err == io.EOF {
		r.err = fmt.Errorf("stream: read after Close")
	}
	// Drop the plaintext not yet read, so that reads after Close fail.
	if r.cur != nil {
		r.off = len(r.cur.buf)
	}
	return nil
}

// next makes the next authenticated chunk current, or sets r.err.
func (r *Reader) next() {
	if r.workers <= 1 {
		if r.cur == nil {
			r.cur = newChunk(r.cs)
		}
		ch := r.cur
		ch.index = r.index
		r.index++
		r.readChunk(ch)
		if ch.err == nil {
			r.openChunk(ch)
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
		// The producer stopped without a final chunk or an error: only
		// after Close.
		r.err = fmt.Errorf("stream: read after Close")
		return
	}
	<-ch.done
	r.take(ch)
	if r.err != nil {
		r.pipe.once.Do(func() { close(r.pipe.stop) })
	}
}

// take makes ch current, or records its error.
func (r *Reader) take(ch *chunk) {
	r.off = 0
	if ch.err != nil {
		r.err = ch.err
		ch.buf = ch.buf[:0]
		r.cur = ch
		return
	}
	r.cur = ch
	if ch.final {
		r.err = io.EOF
	}
}

// readChunk reads the ciphertext of chunk ch.index into ch.buf and decides
// whether it is the final chunk: a chunk shorter than a full one is.
func (r *Reader) readChunk(ch *chunk) {
	ch.err = nil
	n, err := io.ReadFull(r.src, ch.buf[:r.cs+TagSize])
	ch.buf = ch.buf[:n]
	switch err {
	case nil:
		ch.final = false
		if ch.index+1 >= r.c.maxChunks {
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

func (r *Reader) openChunk(ch *chunk) {
	pt, err := r.c.openNonce(&ch.nonce, ch.buf[:0], ch.buf, ch.index, ch.final)
	if err != nil {
		ch.err = err
		return
	}
	ch.buf = pt
}

// startPipe starts the producer and the workers. The pipeline owns
// 2×workers+1 chunk buffers.
func (r *Reader) startPipe() {
	inflight := 2*r.workers + 1
	p := &decPipe{
		work:  make(chan *chunk, inflight),
		order: make(chan *chunk, inflight),
		free:  make(chan *chunk, inflight),
		stop:  make(chan struct{}),
	}
	for range inflight {
		p.free <- newChunk(r.cs)
	}
	for range r.workers {
		go func() {
			for ch := range p.work {
				r.openChunk(ch)
				ch.done <- struct{}{}
				// Let the reader's caller, which the send may have woken,
				// take the chunk now (see the Writer's workers).
				runtime.Gosched()
			}
		}()
	}
	go func() {
		defer close(p.order)
		defer close(p.work)
		for index := uint64(0); ; index++ {
			var ch *chunk
			select {
			case ch = <-p.free:
			case <-p.stop:
				return
			}
			ch.index = index
			r.readChunk(ch)
			if ch.err != nil {
				ch.done <- struct{}{}
				p.order <- ch
				return
			}
			p.work <- ch
			p.order <- ch
			if ch.final {
				return
			}
		}
	}()
	r.pipe = p
}
