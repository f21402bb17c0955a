package stream

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// Benchmarks of the in-memory, file and random-access paths, each beside
// the reference it is measured against in the same run:
//
//	go test -run x -bench 'InMemory|File|Small|ReadAt4KiB' -count 3 ./stream/
//
// raw-* is the standard library's AES-256-GCM sealing or opening the same
// 64 KiB chunks on all cores into an output it allocates, nothing else.

const memBenchSize = 16 << 20

// rawParallel seals (or opens) the chunks of in into a newly allocated
// output on GOMAXPROCS goroutines, each a contiguous range.
func rawParallel(aead cipher.AEAD, in []byte, seal bool) []byte {
	const cs = DefaultChunkSize
	inFull, outFull := cs, cs+TagSize
	if !seal {
		inFull, outFull = cs+TagSize, cs
	}
	chunks := (len(in) + inFull - 1) / inFull
	out := make([]byte, chunks*outFull)
	n := runtime.GOMAXPROCS(0)
	var wg sync.WaitGroup
	for g := range n {
		wg.Go(func() {
			var nonce [12]byte
			for i := g * chunks / n; i < (g+1)*chunks/n; i++ {
				binary.BigEndian.PutUint64(nonce[3:], uint64(i))
				src := in[i*inFull : min((i+1)*inFull, len(in))]
				if seal {
					aead.Seal(out[i*outFull:i*outFull], nonce[:], src, nil)
				} else if _, err := aead.Open(out[i*outFull:i*outFull], nonce[:], src, nil); err != nil {
					panic(err)
				}
			}
		})
	}
	wg.Wait()
	return out
}

func BenchmarkInMemory16MiB(b *testing.B) {
	pt := benchPlaintext()[:memBenchSize]
	c := benchCipher()
	block, _ := aes.NewCipher(testKey("raw"))
	aead, _ := cipher.NewGCM(block)
	rawCT := rawParallel(aead, pt, true)
	body, err := c.SealBody(nil, pt, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("raw-seal", func(b *testing.B) {
		b.SetBytes(memBenchSize)
		b.ReportAllocs()
		for b.Loop() {
			rawParallel(aead, pt, true)
		}
	})
	b.Run("SealBody", func(b *testing.B) {
		b.SetBytes(memBenchSize)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.SealBody(nil, pt, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("raw-open", func(b *testing.B) {
		b.SetBytes(memBenchSize)
		b.ReportAllocs()
		for b.Loop() {
			rawParallel(aead, rawCT, false)
		}
	})
	b.Run("OpenBody", func(b *testing.B) {
		b.SetBytes(memBenchSize)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.OpenBody(nil, body, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkFile64MiB encrypts and decrypts a 64 MiB file (in the page
// cache) into io.Discard, read in order by one goroutine (read) or by the
// workers with ReadAt (pread).
func BenchmarkFile64MiB(b *testing.B) {
	pt := benchPlaintext()
	c := benchCipher()
	dir := b.TempDir()
	ptPath, ctPath := filepath.Join(dir, "pt"), filepath.Join(dir, "ct")
	if err := os.WriteFile(ptPath, pt, 0o600); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(ctPath, benchCiphertext(), 0o600); err != nil {
		b.Fatal(err)
	}
	open := func(p string) *os.File {
		f, err := os.Open(p)
		if err != nil {
			b.Fatal(err)
		}
		return f
	}
	b.Run("encrypt/read", func(b *testing.B) {
		b.SetBytes(benchSize)
		for b.Loop() {
			f := open(ptPath)
			w := c.NewWriter(io.Discard, nil)
			if _, err := w.ReadFrom(struct{ io.Reader }{f}); err != nil {
				b.Fatal(err)
			}
			if err := w.Close(); err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
	})
	b.Run("encrypt/pread", func(b *testing.B) {
		b.SetBytes(benchSize)
		for b.Loop() {
			f := open(ptPath)
			w := c.NewWriter(io.Discard, nil)
			if _, err := w.ReadFromAt(f, 0, benchSize); err != nil {
				b.Fatal(err)
			}
			if err := w.Close(); err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
	})
	size := int64(len(benchCiphertext()))
	b.Run("decrypt/read", func(b *testing.B) {
		b.SetBytes(benchSize)
		for b.Loop() {
			f := open(ctPath)
			r := c.NewReader(f, nil)
			if _, err := r.WriteTo(io.Discard); err != nil {
				b.Fatal(err)
			}
			r.Close()
			f.Close()
		}
	})
	b.Run("decrypt/pread", func(b *testing.B) {
		b.SetBytes(benchSize)
		for b.Loop() {
			f := open(ctPath)
			r := c.NewReaderFromAt(f, size, nil)
			if _, err := r.WriteTo(io.Discard); err != nil {
				b.Fatal(err)
			}
			r.Close()
			f.Close()
		}
	})
}

// BenchmarkSmall4KiB seals and opens a 4 KiB body in memory.
func BenchmarkSmall4KiB(b *testing.B) {
	pt := benchPlaintext()[:4096]
	c := benchCipher()
	body, _ := c.SealBody(nil, pt, nil)
	b.Run("SealBody", func(b *testing.B) {
		b.SetBytes(4096)
		b.ReportAllocs()
		for b.Loop() {
			c.SealBody(nil, pt, nil)
		}
	})
	b.Run("OpenBody", func(b *testing.B) {
		b.SetBytes(4096)
		b.ReportAllocs()
		for b.Loop() {
			c.OpenBody(nil, body, nil)
		}
	})
}

// BenchmarkReadAt4KiB reads 4 KiB at random offsets of a 64 MiB stream in
// memory, on one goroutine and on GOMAXPROCS.
func BenchmarkReadAt4KiB(b *testing.B) {
	c := benchCipher()
	ct := benchCiphertext()
	r, err := c.NewReaderAt(bytes.NewReader(ct), int64(len(ct)))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("serial", func(b *testing.B) {
		b.SetBytes(4096)
		b.ReportAllocs()
		p := make([]byte, 4096)
		rng := rand.New(rand.NewPCG(1, 2))
		for b.Loop() {
			if _, err := r.ReadAt(p, rng.Int64N(r.Size()-4096)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("concurrent", func(b *testing.B) {
		b.SetBytes(4096)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			p := make([]byte, 4096)
			rng := rand.New(rand.NewPCG(rand.Uint64(), 2))
			for pb.Next() {
				if _, err := r.ReadAt(p, rng.Int64N(r.Size()-4096)); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}
