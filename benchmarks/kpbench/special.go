package kpbench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/keyprotect"
	"github.com/kpcrypt/kpcrypt/kms/local"
	"github.com/kpcrypt/kpcrypt/kplocal"
	"github.com/kpcrypt/kpcrypt/stream"
)

// countingReaderAt counts the reads made of a file. stream.ReaderAt reads
// each chunk it opens with exactly one ReadAt, so after the header is read
// the count is the number of chunk decryptions.
type countingReaderAt struct {
	r     io.ReaderAt
	reads atomic.Int64
	bytes atomic.Int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.reads.Add(1)
	c.bytes.Add(int64(len(p)))
	return c.r.ReadAt(p, off)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	i := int(p * float64(len(s)-1))
	return s[i]
}

// measureRandomAccess opens the big file with envelope.NewReaderAt over an
// *os.File and reads s.Reads × 4 KiB at uniformly random offsets, checking
// each against the plaintext.
func measureRandomAccess(ctx context.Context, s *Spec) (*Result, error) {
	kek, err := local.OpenFile(s.Dir + "/" + kekRotateFile)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(s.Dir + "/" + bigFile)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	cr := &countingReaderAt{r: f}
	t0 := time.Now()
	ra, err := envelope.NewReaderAt(ctx, cr, fi.Size(), envelope.KEKs{kek})
	if err != nil {
		return nil, err
	}
	open := time.Since(t0)
	if ra.Size() != s.Size {
		return nil, fmt.Errorf("random access: plaintext size %d, want %d", ra.Size(), s.Size)
	}
	openReads := cr.reads.Load()

	const readSize = 4 << 10
	rng := rand.New(rand.NewPCG(uint64(s.Round), 7))
	buf, want := make([]byte, readSize), make([]byte, readSize)
	lat := make([]float64, 0, s.Reads)
	per := make([]float64, 0, s.Reads)
	var readBytes int64
	spanning := 0
	t, err := startTimer(s)
	if err != nil {
		return nil, err
	}
	for range s.Reads {
		off := rng.Int64N(s.Size - readSize + 1)
		r0, b0 := cr.reads.Load(), cr.bytes.Load()
		st := time.Now()
		if _, err := ra.ReadAt(buf, off); err != nil {
			return nil, fmt.Errorf("random access at %d: %w", off, err)
		}
		lat = append(lat, float64(time.Since(st).Nanoseconds())/1000)
		per = append(per, float64(cr.reads.Load()-r0))
		readBytes += cr.bytes.Load() - b0
		if off/stream.DefaultChunkSize != (off+readSize-1)/stream.DefaultChunkSize {
			spanning++
		}
		fillAt(want, off)
		if !bytes.Equal(buf, want) {
			return nil, fmt.Errorf("random access at %d: wrong plaintext", off)
		}
	}
	res := t.stop(0)
	var sum float64
	for _, v := range per {
		sum += v
	}
	// Allocations in steady state: a second pass of as many reads at other
	// random offsets, untimed and unchecked, between two MemStats.
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	for range s.Reads {
		if _, err := ra.ReadAt(buf, rng.Int64N(s.Size-readSize+1)); err != nil {
			return nil, err
		}
	}
	runtime.ReadMemStats(&m1)
	// The reference: pread one whole sealed chunk (64 KiB + 16) of the
	// page-cached rawFile at a random index and open it with raw AES-GCM.
	refLat, err := rawChunkLatency(s.Dir, s.Reads, rng)
	if err != nil {
		return nil, err
	}
	res.Metrics = map[string]float64{
		"open_ms":              float64(open.Microseconds()) / 1000,
		"open_reads":           float64(openReads),
		"median_us":            median(lat),
		"p90_us":               percentile(lat, 0.90),
		"p99_us":               percentile(lat, 0.99),
		"decrypts_mean":        sum / float64(len(per)),
		"decrypts_max":         slices.Max(per),
		"spanning_share":       float64(spanning) / float64(s.Reads),
		"bytes_read_per_read":  float64(readBytes) / float64(s.Reads),
		"reads":                float64(s.Reads),
		"allocs_per_read":      float64(m1.Mallocs-m0.Mallocs) / float64(s.Reads),
		"alloc_bytes_per_read": float64(m1.TotalAlloc-m0.TotalAlloc) / float64(s.Reads),
		"ref_median_us":        median(refLat),
		"ref_p99_us":           percentile(refLat, 0.99),
	}
	return res, nil
}

// rawChunkLatency times n preads of one sealed chunk of rawFile at random
// indexes, each opened with raw AES-GCM into a reused buffer, in µs.
func rawChunkLatency(dir string, n int, rng *rand.Rand) ([]float64, error) {
	a, err := rawFileGCM()
	if err != nil {
		return nil, err
	}
	f, err := os.Open(dir + "/" + rawFile)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	const sealed = rawChunk + 16
	full := fi.Size() / sealed // whole chunks only
	if full == 0 {
		return nil, fmt.Errorf("%s holds no whole chunk", rawFile)
	}
	buf, out := make([]byte, sealed), make([]byte, 0, rawChunk)
	var nonce [12]byte
	lat := make([]float64, 0, n)
	for range n {
		i := rng.Int64N(full)
		st := time.Now()
		if _, err := f.ReadAt(buf, i*sealed); err != nil {
			return nil, err
		}
		if _, err := a.Open(out[:0], chunkNonce(&nonce, uint64(i)), buf, nil); err != nil {
			return nil, err
		}
		lat = append(lat, float64(time.Since(st).Nanoseconds())/1000)
	}
	return lat, nil
}

// measureRewrap rotates the local KEK, then rewraps the 1 MiB file and the
// big one with envelope.RewrapPath, s.Iterations times, alternating which
// goes first. The files were synced when they were made, so each rewrap's
// two fsyncs flush only its slot table.
func measureRewrap(ctx context.Context, s *Spec) (*Result, error) {
	kek, err := local.OpenFile(s.Dir + "/" + kekRotateFile)
	if err != nil {
		return nil, err
	}
	opts := &envelope.RewrapOptions{Keyring: envelope.KEKs{kek}}
	var small, big []float64
	one := func(path string) (float64, error) {
		st := time.Now()
		res, err := envelope.RewrapPath(ctx, path, opts)
		d := time.Since(st)
		if err != nil {
			return 0, err
		}
		if !res.Changed {
			return 0, fmt.Errorf("rewrap of %s changed nothing", path)
		}
		return float64(d.Microseconds()) / 1000, nil
	}
	t, err := startTimer(s)
	if err != nil {
		return nil, err
	}
	for i := range s.Iterations {
		if _, err := kek.Rotate(ctx); err != nil {
			return nil, err
		}
		order := []string{smallFile, bigFile}
		if i%2 == 1 {
			order = []string{bigFile, smallFile}
		}
		for _, name := range order {
			ms, err := one(s.Dir + "/" + name)
			if err != nil {
				return nil, err
			}
			if name == smallFile {
				small = append(small, ms)
			} else {
				big = append(big, ms)
			}
		}
	}
	res := t.stop(0)
	res.Metrics = map[string]float64{
		"small_ms":   median(small),
		"big_ms":     median(big),
		"ratio":      median(big) / median(small),
		"iterations": float64(s.Iterations),
	}
	return res, nil
}

// objects returns n plaintexts of 4 KiB, each distinct.
func objects(n int) [][]byte {
	all := plaintext(int64(n) * 4096)
	out := make([][]byte, n)
	for i := range out {
		out[i] = all[i*4096 : (i+1)*4096 : (i+1)*4096]
	}
	return out
}

// pool runs f(i) for i in [0, n) on workers goroutines and returns the
// elapsed time and the first error.
func pool(workers, n int, f func(i int) error) (time.Duration, error) {
	var next atomic.Int64
	var first atomic.Pointer[error]
	var wg sync.WaitGroup
	st := time.Now()
	for range min(workers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || first.Load() != nil {
					return
				}
				if err := f(i); err != nil {
					first.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	d := time.Since(st)
	if e := first.Load(); e != nil {
		return d, *e
	}
	return d, nil
}

// sealAll encrypts every object with enc and returns the ciphertexts.
func sealAll(ctx context.Context, enc *envelope.Encrypter, pts [][]byte, workers int) ([][]byte, time.Duration, error) {
	cts := make([][]byte, len(pts))
	d, err := pool(workers, len(pts), func(i int) error {
		ct, err := enc.Seal(ctx, pts[i])
		cts[i] = ct
		return err
	})
	return cts, d, err
}

// openAll decrypts every ciphertext with dec and checks it.
func openAll(ctx context.Context, dec *envelope.Decrypter, cts, pts [][]byte, workers int) (time.Duration, error) {
	return pool(workers, len(cts), func(i int) error {
		pt, err := dec.Open(ctx, cts[i])
		if err != nil {
			return err
		}
		if !bytes.Equal(pt, pts[i]) {
			return fmt.Errorf("object %d: wrong plaintext", i)
		}
		return nil
	})
}

func perSecond(n int, d time.Duration) float64 { return float64(n) / d.Seconds() }

// measureSmallLocal seals and opens s.Objects × 4 KiB with a local KEK
// (in memory, Seal and Open), on s.Workers goroutines.
func measureSmallLocal(ctx context.Context, s *Spec) (*Result, error) {
	kek, err := local.OpenFile(s.Dir + "/" + kekMemFile)
	if err != nil {
		return nil, err
	}
	pts := objects(s.Objects)
	enc := &envelope.Encrypter{KEKs: []kms.KEK{kek}}
	dec := &envelope.Decrypter{Keyring: envelope.KEKs{kek}}
	g, err := newRawGCM()
	if err != nil {
		return nil, err
	}
	m := map[string]float64{}
	// allocPhase runs f between two MemStats, after a GC, and records its
	// allocated bytes per object.
	allocPhase := func(name string, f func() (time.Duration, error)) error {
		runtime.GC()
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		d, err := f()
		runtime.ReadMemStats(&m1)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		m[name+"_per_s"] = perSecond(s.Objects, d)
		m[name+"_alloc_bytes"] = float64(m1.TotalAlloc-m0.TotalAlloc) / float64(s.Objects)
		m[name+"_allocs"] = float64(m1.Mallocs-m0.Mallocs) / float64(s.Objects)
		return nil
	}
	t, err := startTimer(s)
	if err != nil {
		return nil, err
	}
	// The reference: raw AES-GCM sealing and opening each 4 KiB object as
	// one chunk into a freshly allocated output, on the same pool.
	rawCTs := make([][]byte, len(pts))
	if err := allocPhase("raw_seal", func() (time.Duration, error) {
		return pool(s.Workers, len(pts), func(i int) error {
			var nonce [12]byte
			rawCTs[i] = g.aead.Seal(nil, chunkNonce(&nonce, uint64(i)), pts[i], nil)
			return nil
		})
	}); err != nil {
		return nil, err
	}
	if err := allocPhase("raw_open", func() (time.Duration, error) {
		return pool(s.Workers, len(pts), func(i int) error {
			var nonce [12]byte
			pt, err := g.aead.Open(nil, chunkNonce(&nonce, uint64(i)), rawCTs[i], nil)
			if err == nil && !bytes.Equal(pt, pts[i]) {
				err = fmt.Errorf("raw object %d: wrong plaintext", i)
			}
			return err
		})
	}); err != nil {
		return nil, err
	}
	rawCTs = nil
	var cts [][]byte
	if err := allocPhase("encrypt", func() (d time.Duration, err error) {
		cts, d, err = sealAll(ctx, enc, pts, s.Workers)
		return d, err
	}); err != nil {
		return nil, err
	}
	if err := allocPhase("decrypt", func() (time.Duration, error) {
		return openAll(ctx, dec, cts, pts, s.Workers)
	}); err != nil {
		return nil, err
	}
	res := t.stop(0)
	m["overhead_bytes"] = float64(len(cts[0]) - len(pts[0]))
	res.Metrics = m
	return res, nil
}

// measureSmallKplocal runs the small-file cases against an in-process
// kplocal with s.Latency per request, through the Key Protect client:
// sealing without and with data-key reuse, and opening with and without a
// data-key cache, counting the KMS calls kplocal served.
func measureSmallKplocal(ctx context.Context, s *Spec) (*Result, error) {
	srv, err := kplocal.Start(kplocal.Config{APIKey: "kpbench-api-key", Latency: s.Latency})
	if err != nil {
		return nil, err
	}
	defer srv.Close()
	id, err := srv.CreateKey("kpbench-root", true)
	if err != nil {
		return nil, err
	}
	opener := &keyprotect.Opener{Config: keyprotect.Config{
		BaseURL: srv.BaseURL(), IAMURL: srv.BaseURL(), APIKey: "kpbench-api-key",
		MaxInFlight: max(64, s.Workers),
	}}
	kek, err := opener.Open(ctx, srv.KeyCRN(id))
	if err != nil {
		return nil, err
	}
	pts := objects(s.Objects)
	keks := []kms.KEK{kek}
	// Warm up: the IAM token and a connection.
	if ct, err := envelope.Seal(ctx, pts[0], kek); err != nil {
		return nil, err
	} else if _, err := envelope.Open(ctx, ct, envelope.KEKs{kek}); err != nil {
		return nil, err
	}
	m := map[string]float64{}
	var phaseN func(name string, n int, f func() (time.Duration, error)) error
	phase := func(name string, f func() (time.Duration, error)) error {
		return phaseN(name, s.Objects, f)
	}
	phaseN = func(name string, n int, f func() (time.Duration, error)) error {
		srv.ResetStats()
		d, err := f()
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		st := srv.Stats()
		m[name+"_objects"] = float64(n)
		m[name+"_per_s"] = perSecond(n, d)
		m[name+"_wraps"] = float64(st.Wrap)
		m[name+"_unwraps"] = float64(st.Unwrap)
		m[name+"_requests"] = float64(st.Requests)
		return nil
	}
	t, err := startTimer(s)
	if err != nil {
		return nil, err
	}
	var fresh, reused [][]byte
	if err := phase("seal_fresh", func() (d time.Duration, err error) {
		fresh, d, err = sealAll(ctx, &envelope.Encrypter{KEKs: keks}, pts, s.Workers)
		return d, err
	}); err != nil {
		return nil, err
	}
	// One goroutine, no reuse: every object waits for its own wrap.
	seq := min(s.Objects, s.SequentialObjects)
	if err := phaseN("seal_fresh_seq", seq, func() (time.Duration, error) {
		_, d, err := sealAll(ctx, &envelope.Encrypter{KEKs: keks}, pts[:seq], 1)
		return d, err
	}); err != nil {
		return nil, err
	}
	if err := phase("seal_reuse", func() (d time.Duration, err error) {
		reused, d, err = sealAll(ctx, &envelope.Encrypter{KEKs: keks, Reuse: &envelope.DataKeyReuse{}}, pts, s.Workers)
		return d, err
	}); err != nil {
		return nil, err
	}
	if err := phase("open_fresh", func() (time.Duration, error) {
		return openAll(ctx, &envelope.Decrypter{Keyring: envelope.KEKs{kek}}, fresh, pts, s.Workers)
	}); err != nil {
		return nil, err
	}
	if err := phase("open_reuse", func() (time.Duration, error) {
		return openAll(ctx, &envelope.Decrypter{Keyring: envelope.KEKs{kek}}, reused, pts, s.Workers)
	}); err != nil {
		return nil, err
	}
	if err := phase("open_reuse_cache", func() (time.Duration, error) {
		dec := &envelope.Decrypter{Keyring: envelope.KEKs{kek}, Cache: envelope.NewDataKeyCache(0, 0)}
		return openAll(ctx, dec, reused, pts, s.Workers)
	}); err != nil {
		return nil, err
	}
	res := t.stop(0)
	res.Metrics = m
	return res, nil
}
