package stream

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
)

// MemoryBudget bounds the chunk buffers of one Writer or Reader: a stream
// holds at most min(2×workers+1, MemoryBudget/(ChunkSize+TagSize)) of them,
// and never fewer than one (two with more than one worker). At the default
// 64 KiB chunks the budget is never the limit below 255 workers; at 16 MiB
// chunks it leaves two buffers.
const MemoryBudget = 32 << 20

// errPanicked is the sticky error of a stream whose caller's reader or
// writer panicked while the stream was using it.
var errPanicked = errors.New("stream: abandoned after a panic in the underlying reader or writer")

// buffersAllocated counts the chunk buffers allocated by this package; tests
// use it to check the accounting.
var buffersAllocated atomic.Int64

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
	// done receives one value when a worker has sealed or opened the chunk;
	// ready records that it was received.
	done  chan struct{}
	ready bool
	// panicked holds what a Reader's underlying reader panicked with while
	// the producer read this chunk, to be raised again in the caller.
	panicked any
	// nonce is the buffer for the chunk's nonce, so that sealing and
	// opening allocate nothing.
	nonce [nonceSize]byte
	// ra, when set, is read by the worker: raLen bytes at raOff into buf,
	// before it seals or opens them.
	ra    io.ReaderAt
	raOff int64
	raLen int
}

// readAt reads the chunk's raLen bytes from ch.ra into ch.buf. A short read
// fails the chunk with [ErrTruncated]; a panic in ch.ra is recovered into
// ch.panicked, for the caller's goroutine to raise again. It reports
// whether the chunk was read.
func (ch *chunk) readAt() (ok bool) {
	ra := ch.ra
	ch.ra = nil
	returned := false
	defer ch.recoverPanic(&returned)
	ch.buf = ch.buf[:ch.raLen]
	err := readChunkAt(ra, ch.buf, ch.raOff, ch.index)
	returned = true
	if err != nil {
		ch.buf = ch.buf[:0]
		ch.err = err
		return false
	}
	return true
}

// recoverPanic is deferred around a call of the caller's reader, with
// *returned set once the call has returned: otherwise it recovers the panic
// into ch.panicked, for the caller's goroutine to raise again, and fails the
// chunk with errPanicked.
func (ch *chunk) recoverPanic(returned *bool) {
	if *returned {
		return
	}
	ch.panicked = recover()
	if ch.panicked == nil {
		// runtime.Goexit, or panic(nil) with GODEBUG=panicnil=1.
		ch.panicked = errPanicked
	}
	ch.err = errPanicked
}

// readChunkAt reads len(buf) bytes of chunk index at off in ra. A short read
// fails with [ErrTruncated].
func readChunkAt(ra io.ReaderAt, buf []byte, off int64, index uint64) error {
	// A ReaderAt may return io.EOF with a full read at the end of its input.
	if k, err := ra.ReadAt(buf, off); k < len(buf) {
		if err == nil || errors.Is(err, io.EOF) {
			err = &ChunkError{Index: index, Err: ErrTruncated}
		}
		return fmt.Errorf("stream: reading chunk %d: %w", index, err)
	}
	return nil
}

// newChunk returns a chunk buffer for size bytes of plaintext and a tag.
func newChunk(size int) *chunk {
	buffersAllocated.Add(1)
	return &chunk{buf: make([]byte, 0, size+TagSize), done: make(chan struct{}, 1)}
}

// maxBuffers returns the number of chunk buffers a stream of chunkSize-byte
// chunks may hold with the given number of workers.
func maxBuffers(workers, chunkSize int) int {
	if workers <= 1 {
		return 1
	}
	n := 2*workers + 1
	return max(min(n, MemoryBudget/(chunkSize+TagSize)), 2)
}

// workerPool runs the goroutines that seal or open chunks, and a Reader's
// producer. The workers take chunks from work, run do on each, and signal
// its done channel; they never touch the caller's reader or writer. None of
// the goroutines holds a reference to the Writer or Reader that owns the
// pool, so that a stream dropped without Close can be collected, and its
// cleanup lets them exit.
type workerPool struct {
	work     chan *chunk
	stopc    chan struct{} // closed to stop a producer
	producer bool
	wg       sync.WaitGroup
	workOnce sync.Once
	stopOnce sync.Once
	stopped  atomic.Bool // chunks still queued are skipped, not processed
	cleanup  runtime.Cleanup
}

// startWorkers starts n goroutines running do on the chunks sent to the
// pool, which holds up to queue chunks, and, if produce is not nil, a
// producer goroutine running it; the producer then owns the work channel,
// which it closes when it returns. owner is the public object whose
// collection stops the goroutines.
func startWorkers[T any](owner *T, n, queue int, do func(*chunk), produce func(*workerPool)) *workerPool {
	p := &workerPool{work: make(chan *chunk, queue), stopc: make(chan struct{}), producer: produce != nil}
	for range n {
		p.wg.Go(func() {
			for ch := range p.work {
				if !p.stopped.Load() {
					do(ch)
				}
				ch.done <- struct{}{}
				// The send may have woken the caller, which then waits in
				// this P's runnext slot until this worker blocks: with as
				// many workers as Ps it would stay there while the queue
				// drains, and the pipeline would run in bursts. Yield so
				// that it takes the chunk now.
				runtime.Gosched()
			}
		})
	}
	if produce != nil {
		p.wg.Go(func() {
			defer p.closeWork()
			produce(p)
		})
	}
	p.cleanup = runtime.AddCleanup(owner, (*workerPool).signal, p)
	return p
}

func (p *workerPool) closeWork() { p.workOnce.Do(func() { close(p.work) }) }

// signal tells the goroutines to exit: the workers once the chunks queued
// are done, a producer before its next read.
func (p *workerPool) signal() {
	if p.producer {
		p.stopOnce.Do(func() { close(p.stopc) })
	} else {
		p.closeWork()
	}
}

// stopping reports whether the pool was told to stop.
func (p *workerPool) stopping() bool {
	select {
	case <-p.stopc:
		return true
	default:
		return false
	}
}

// stop makes the workers skip the chunks still queued, tells the goroutines
// to exit, and waits until they have: a producer must first return from a
// read in progress.
func (p *workerPool) stop() {
	p.stopped.Store(true)
	p.cleanup.Stop()
	p.signal()
	p.wg.Wait()
}

// queue is a FIFO of the chunks handed to the workers, in stream order.
type queue struct {
	ring []*chunk
	head int
	n    int
}

func (q *queue) push(ch *chunk) {
	if q.n == len(q.ring) {
		ring := make([]*chunk, max(2*len(q.ring), 4))
		for i := range q.n {
			ring[i] = q.ring[(q.head+i)%len(q.ring)]
		}
		q.ring, q.head = ring, 0
	}
	q.ring[(q.head+q.n)%len(q.ring)] = ch
	q.n++
}

func (q *queue) front() *chunk { return q.ring[q.head] }

func (q *queue) pop() *chunk {
	ch := q.ring[q.head]
	q.ring[q.head] = nil
	q.head = (q.head + 1) % len(q.ring)
	q.n--
	return ch
}

// wait blocks until a worker is done with ch.
func (ch *chunk) wait() {
	if !ch.ready {
		<-ch.done
		ch.ready = true
	}
}

// poll reports whether a worker is done with ch, without blocking.
func (ch *chunk) poll() bool {
	if !ch.ready {
		select {
		case <-ch.done:
			ch.ready = true
		default:
		}
	}
	return ch.ready
}
