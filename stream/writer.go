package stream

import (
	"io"
	"runtime"
	"sync"
)

// chunk is one chunk buffer moving through a writer's or a reader's pipeline.
type chunk struct {
	// buf holds plaintext or ciphertext; its capacity is ChunkSize+TagSize.
	buf []byte
	// src, when set, is plaintext to seal into buf out of place. It aliases
	// the buffer passed to Writer.Write, which waits for it to be sealed.
	src   []byte
	index uint64
	final bool
	err   error
	// done receives one value when the chunk has been sealed or opened.
	done chan struct{}
	// nonce is the buffer for the chunk's nonce, so that sealing and
	// opening allocate nothing.
	nonce [nonceSize]byte
}

func newChunk(chunkSize int) *chunk {
	return &chunk{buf: make([]byte, 0, chunkSize+TagSize), done: make(chan struct{}, 1)}
}

// Writer encrypts what is written to it into a stream body. Create one with
// [NewEncryptWriter] or [Cipher.NewWriter]. It is not safe for concurrent
// use. Close must be called, even after an error: it writes the final chunk
// and stops the writer's goroutines. Close does not close the underlying
// writer.
type Writer struct {
	c       *Cipher
	dst     io.Writer
	cs      int
	workers int
	index   uint64 // index of the next chunk to submit
	cur     *chunk // plaintext being gathered
	err     error  // sticky
	closed  bool
	pipe    *encPipe // nil until a chunk goes to the workers; nil with one worker
}

// encPipe is a writer's parallel pipeline: workers seal chunks, and one
// goroutine writes them to dst in order.
type encPipe struct {
	work     chan *chunk
	order    chan *chunk
	free     chan *chunk
	aliased  sync.WaitGroup // chunks whose src aliases a Write buffer
	finished chan struct{}

	mu  sync.Mutex
	err error // first error writing to dst
}

// NewWriter returns a Writer that encrypts the body of c's stream into dst.
// It writes no header: the caller stores c.Header() where it belongs.
func (c *Cipher) NewWriter(dst io.Writer, opts *Options) *Writer {
	cs := c.header.ChunkSize
	return &Writer{c: c, dst: dst, cs: cs, workers: opts.workers(), cur: newChunk(cs)}
}

// Write encrypts p. It returns once p is no longer needed, so the caller may
// reuse p; chunks may still be on their way to the underlying writer, and
// an error writing them is returned by a later call.
func (w *Writer) Write(p []byte) (int, error) {
	if w.closed {
		return 0, ErrClosed
	}
	n := 0
	// Whole chunks are sealed straight from p, without a copy, but Write
	// must wait for them before it returns. With workers, the last chunks of
	// p are copied instead, so that they are sealed after Write returns and
	// the pipeline stays full from one Write to the next.
	tail := w.cs
	if w.workers > 1 {
		tail = w.cs * (w.workers + 1)
	}
	for len(p) > 0 && w.check() == nil {
		if len(w.cur.buf) == 0 && len(p) >= tail {
			// A whole chunk: seal it straight from p, without a copy.
			w.cur.src = p[:w.cs]
			if !w.submit(w.cur, false) {
				break
			}
			p, n = p[w.cs:], n+w.cs
			continue
		}
		k := copy(w.cur.buf[len(w.cur.buf):w.cs], p)
		w.cur.buf = w.cur.buf[:len(w.cur.buf)+k]
		p, n = p[k:], n+k
		if len(w.cur.buf) == w.cs {
			w.submit(w.cur, false)
		}
	}
	if w.pipe != nil {
		w.pipe.aliased.Wait()
	}
	return n, w.check()
}

// ReadFrom encrypts everything read from r until io.EOF. It reads straight
// into the chunk buffers. It implements [io.ReaderFrom], so io.Copy uses it.
func (w *Writer) ReadFrom(r io.Reader) (int64, error) {
	if w.closed {
		return 0, ErrClosed
	}
	var total int64
	for w.check() == nil {
		k, err := r.Read(w.cur.buf[len(w.cur.buf):w.cs])
		w.cur.buf = w.cur.buf[:len(w.cur.buf)+k]
		total += int64(k)
		if len(w.cur.buf) == w.cs {
			w.submit(w.cur, false)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return total, err
		}
	}
	return total, w.check()
}

// Close writes the final chunk, waits until every chunk has been written,
// and stops the writer's goroutines. It returns the first error met by the
// Writer, if any. Calling Close again returns the same error.
func (w *Writer) Close() error {
	if w.closed {
		return w.err
	}
	w.closed = true
	if w.check() == nil {
		w.submit(w.cur, true)
	}
	if p := w.pipe; p != nil {
		close(p.work)
		close(p.order)
		<-p.finished
		w.check()
	}
	w.cur = nil
	return w.err
}

// check records an error from the pipeline, if any, and returns the sticky
// error.
func (w *Writer) check() error {
	if w.err == nil && w.pipe != nil {
		w.pipe.mu.Lock()
		w.err = w.pipe.err
		w.pipe.mu.Unlock()
	}
	return w.err
}

// submit seals ch as the next chunk and sends it on its way. In the
// pipeline it hands ch to the workers and takes a fresh buffer for w.cur when
// ch was w.cur. It reports whether the chunk was accepted.
func (w *Writer) submit(ch *chunk, final bool) bool {
	// A non-final chunk must leave an index for the final one.
	if w.index >= w.c.maxChunks || !final && w.index+1 >= w.c.maxChunks {
		w.err = ErrTooLong
		ch.src = nil
		return false
	}
	ch.index, ch.final = w.index, final
	w.index++
	if w.workers > 1 && w.pipe == nil && !final {
		w.startPipe()
	}
	if w.pipe == nil {
		w.sealChunk(ch)
		_, err := w.write(ch.buf)
		ch.buf = ch.buf[:0]
		if err != nil {
			w.err = err
			return false
		}
		return true
	}
	if ch.src != nil {
		w.pipe.aliased.Add(1)
	}
	w.pipe.work <- ch
	w.pipe.order <- ch
	if ch == w.cur && !final {
		w.cur = <-w.pipe.free
	}
	return true
}

func (w *Writer) sealChunk(ch *chunk) {
	if ch.src != nil {
		ch.buf = w.c.sealNonce(&ch.nonce, ch.buf[:0], ch.src, ch.index, ch.final)
		ch.src = nil
		return
	}
	ch.buf = w.c.sealNonce(&ch.nonce, ch.buf[:0], ch.buf, ch.index, ch.final)
}

func (w *Writer) write(b []byte) (int, error) {
	n, err := w.dst.Write(b)
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	return n, err
}

// startPipe starts the workers and the ordered writer. The pipeline owns
// 2×workers+1 chunk buffers, w.cur included.
func (w *Writer) startPipe() {
	inflight := 2*w.workers + 1
	p := &encPipe{
		work:     make(chan *chunk, inflight),
		order:    make(chan *chunk, inflight),
		free:     make(chan *chunk, inflight),
		finished: make(chan struct{}),
	}
	for range inflight - 1 {
		p.free <- newChunk(w.cs)
	}
	for range w.workers {
		go func() {
			for ch := range p.work {
				aliased := ch.src != nil
				w.sealChunk(ch)
				if aliased {
					p.aliased.Done()
				}
				ch.done <- struct{}{}
				// The send may have woken the ordered writer, which then
				// waits in this P's runnext slot until this worker blocks:
				// with as many workers as Ps it would stay there while the
				// queue drains, and the pipeline would run in bursts. Yield
				// so that it writes the chunk and frees its buffer now.
				runtime.Gosched()
			}
		}()
	}
	go func() {
		defer close(p.finished)
		for ch := range p.order {
			<-ch.done
			p.mu.Lock()
			failed := p.err != nil
			p.mu.Unlock()
			if !failed {
				if _, err := w.write(ch.buf); err != nil {
					p.mu.Lock()
					p.err = err
					p.mu.Unlock()
				}
			}
			ch.buf = ch.buf[:0]
			p.free <- ch
		}
	}()
	w.pipe = p
}
