package stream

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"io"
	"runtime"
	"runtime/metrics"
	"sync"
	"testing"
	"time"
)

// The benchmarks encrypt and decrypt 64 MiB held in memory at the default
// chunk size, into io.Discard so that only the engine is measured. Compare
// them with BenchmarkRawAESGCM, which seals the same chunks with the standard
// library's AES-256-GCM and nothing else.
//
//	go test -run='^$' -bench=. -benchtime=3x -count=3 ./stream/

const benchSize = 64 << 20

var (
	benchPlaintext = sync.OnceValue(func() []byte { return testPlaintext(benchSize, 64) })
	benchCipher    = sync.OnceValue(func() *Cipher {
		dek := testKey("bench")
		h := Header{ChunkSize: DefaultChunkSize}
		ks, err := deriveKeys(dek, &h)
		if err != nil {
			panic(err)
		}
		h.Commitment = ks.commitment
		c, err := NewCipher(dek, h)
		if err != nil {
			panic(err)
		}
		return c
	})
	// benchCiphertext is the body (without the header) of benchPlaintext.
	benchCiphertext = sync.OnceValue(func() []byte {
		return bytes.Join(referenceChunks(benchCipher(), benchPlaintext()), nil)
	})
)

// benchWorkers returns 1 and GOMAXPROCS.
func benchWorkers() []int {
	if n := runtime.GOMAXPROCS(0); n > 1 {
		return []int{1, n}
	}
	return []int{1}
}

func BenchmarkEncrypt(b *testing.B) {
	pt := benchPlaintext()
	c := benchCipher()
	for _, workers := range benchWorkers() {
		opts := &Options{Workers: workers}
		b.Run(fmt.Sprintf("Write/workers=%d", workers), func(b *testing.B) {
			b.SetBytes(benchSize)
			b.ReportAllocs()
			for b.Loop() {
				w := c.NewWriter(io.Discard, opts)
				if _, err := w.Write(pt); err != nil {
					b.Fatal(err)
				}
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("Write1MiB/workers=%d", workers), func(b *testing.B) {
			b.SetBytes(benchSize)
			b.ReportAllocs()
			for b.Loop() {
				w := c.NewWriter(io.Discard, opts)
				for p := pt; len(p) > 0; p = p[1<<20:] {
					if _, err := w.Write(p[:1<<20]); err != nil {
						b.Fatal(err)
					}
				}
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("ReadFrom/workers=%d", workers), func(b *testing.B) {
			b.SetBytes(benchSize)
			b.ReportAllocs()
			for b.Loop() {
				w := c.NewWriter(io.Discard, opts)
				// onlyReader hides bytes.Reader's WriteTo: io.Copy takes
				// the Writer's ReadFrom.
				if _, err := io.Copy(w, onlyReader{bytes.NewReader(pt)}); err != nil {
					b.Fatal(err)
				}
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDecrypt(b *testing.B) {
	body := benchCiphertext()
	c := benchCipher()
	out := make([]byte, benchSize)
	for _, workers := range benchWorkers() {
		opts := &Options{Workers: workers}
		b.Run(fmt.Sprintf("Read/workers=%d", workers), func(b *testing.B) {
			b.SetBytes(benchSize)
			b.ReportAllocs()
			for b.Loop() {
				r := c.NewReader(bytes.NewReader(body), opts)
				if _, err := io.ReadFull(r, out); err != nil {
					b.Fatal(err)
				}
				if n, err := r.Read(out[:1]); n != 0 || err != io.EOF {
					b.Fatalf("after the plaintext: %d, %v", n, err)
				}
			}
		})
		b.Run(fmt.Sprintf("WriteTo/workers=%d", workers), func(b *testing.B) {
			b.SetBytes(benchSize)
			b.ReportAllocs()
			for b.Loop() {
				r := c.NewReader(bytes.NewReader(body), opts)
				if n, err := io.Copy(io.Discard, r); err != nil || n != benchSize {
					b.Fatal(n, err)
				}
			}
		})
	}
}

// BenchmarkRawAESGCM is the baseline: the standard library's AES-256-GCM
// sealing (or opening) 64 KiB chunks into a preallocated buffer, on one
// goroutine and on all cores.
func BenchmarkRawAESGCM(b *testing.B) {
	pt := benchPlaintext()
	const cs = DefaultChunkSize
	const chunks = benchSize / cs
	block, err := aes.NewCipher(testKey("raw"))
	if err != nil {
		b.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		b.Fatal(err)
	}
	ct := make([]byte, chunks*(cs+TagSize))
	// sealRange seals chunks [from, to) in place in ct.
	sealRange := func(from, to int) {
		var nonce [12]byte
		for i := from; i < to; i++ {
			binary.BigEndian.PutUint64(nonce[3:], uint64(i))
			aead.Seal(ct[i*(cs+TagSize):i*(cs+TagSize)], nonce[:], pt[i*cs:(i+1)*cs], nil)
		}
	}
	out := make([]byte, benchSize)
	openRange := func(from, to int) {
		var nonce [12]byte
		for i := from; i < to; i++ {
			binary.BigEndian.PutUint64(nonce[3:], uint64(i))
			if _, err := aead.Open(out[i*cs:i*cs], nonce[:], ct[i*(cs+TagSize):(i+1)*(cs+TagSize)], nil); err != nil {
				panic(err)
			}
		}
	}
	parallel := func(f func(from, to int)) {
		n := runtime.GOMAXPROCS(0)
		var wg sync.WaitGroup
		for g := range n {
			wg.Go(func() { f(g*chunks/n, (g+1)*chunks/n) })
		}
		wg.Wait()
	}
	b.Run("seal/1-goroutine", func(b *testing.B) {
		b.SetBytes(benchSize)
		b.ReportAllocs()
		for b.Loop() {
			sealRange(0, chunks)
		}
	})
	b.Run("seal/all-cores", func(b *testing.B) {
		b.SetBytes(benchSize)
		b.ReportAllocs()
		for b.Loop() {
			parallel(sealRange)
		}
	})
	sealRange(0, chunks)
	b.Run("open/1-goroutine", func(b *testing.B) {
		b.SetBytes(benchSize)
		b.ReportAllocs()
		for b.Loop() {
			openRange(0, chunks)
		}
	})
	b.Run("open/all-cores", func(b *testing.B) {
		b.SetBytes(benchSize)
		b.ReportAllocs()
		for b.Loop() {
			parallel(openRange)
		}
	})
}

// BenchmarkPipeline1GiB streams 1 GiB generated on the fly through a Writer,
// a pipe and a Reader, all with GOMAXPROCS workers, and reports the peak
// growth of the heap over the run (sampled) as peak-MiB: it stays a small
// multiple of workers × chunk size, whatever the length.
func BenchmarkPipeline1GiB(b *testing.B) {
	const size = 1 << 30
	dek := testKey("pipeline")
	opts := &Options{Workers: runtime.GOMAXPROCS(0)}
	b.SetBytes(size)
	b.ReportAllocs()
	heap := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	readHeap := func() uint64 {
		metrics.Read(heap)
		return heap[0].Value.Uint64()
	}
	var peak uint64
	for b.Loop() {
		b.StopTimer()
		runtime.GC()
		base := readHeap()
		stop, sampled := make(chan struct{}), make(chan uint64)
		go func() {
			top := uint64(0)
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			for {
				top = max(top, readHeap())
				select {
				case <-stop:
					sampled <- top
					return
				case <-tick.C:
				}
			}
		}()
		b.StartTimer()

		pr, pw := io.Pipe()
		go func() {
			w, err := NewEncryptWriter(pw, dek, opts)
			if err == nil {
				_, err = io.Copy(w, &patternReader{n: size})
				if cerr := w.Close(); err == nil {
					err = cerr
				}
			}
			pw.CloseWithError(err)
		}()
		r, err := NewDecryptReader(pr, dek, opts)
		if err != nil {
			b.Fatal(err)
		}
		if n, err := io.Copy(io.Discard, r); err != nil || n != size {
			b.Fatal(n, err)
		}

		b.StopTimer()
		close(stop)
		if top := <-sampled; top > base {
			peak = max(peak, top-base)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(peak)/(1<<20), "peak-MiB")
}
