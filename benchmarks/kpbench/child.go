package kpbench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"time"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/local"
)

// childEnv is the environment variable that makes the program a child: it
// holds the JSON Spec of the one measurement to make.
const childEnv = "KPBENCH_CHILD_SPEC"

// Spec is one measurement, made in a fresh process.
type Spec struct {
	Case  string // a peer name, "raw-1", "raw-all", "kpcrypt-file", or a special case
	Op    string // "encrypt" or "decrypt" for the throughput cases
	Size  int64  // plaintext bytes
	Dir   string // the run's temporary directory (KEKs, input files)
	Round int

	// Random access.
	Reads int
	// Rewrap.
	Iterations int
	// Small files.
	Objects, Workers int
	Latency          time.Duration
	// SequentialObjects are sealed on one goroutine against kplocal.
	SequentialObjects int
	// PerDEK is the streams per DEK of the pipeline case (DataKeyReuse).
	PerDEK int

	// Out is the output file of the raw-pwrite reference; Tmpfs the tmpfs
	// directory of the cases that write there ("" when none was found).
	Out, Tmpfs string

	// CPUProfile, when set, is where the child writes a CPU profile of its
	// timed section.
	CPUProfile string
}

// Result is what a child reports on its standard output, as one JSON line.
type Result struct {
	Seconds float64 `json:",omitempty"` // timed section
	MiBps   float64 `json:",omitempty"`
	// PeakRSS is the peak resident set during the timed section (VmHWM,
	// reset just before it); BaseRSS the resident set just before it, with
	// the inputs in memory.
	PeakRSS, BaseRSS int64 `json:",omitempty"`
	// CPU is the process's CPU time over the timed section divided by its
	// wall time: the cores it kept busy. Other is the cores busy
	// machine-wide over the timed section minus CPU: outside load.
	CPU   float64 `json:",omitempty"`
	Other float64
	// TimedOther tells that Other was measured over the timed section.
	TimedOther bool `json:",omitempty"`
	// OutBytes is the output the case allocated for the caller inside the
	// timed section (envelope.Seal and Open, raw-alloc): the report
	// subtracts it from the peak.
	OutBytes int64 `json:",omitempty"`
	// Metrics holds the special cases' figures.
	Metrics map[string]float64 `json:",omitempty"`
}

// IsChild reports whether this process was started as a measurement child.
func IsChild() bool { return os.Getenv(childEnv) != "" }

// RunChild makes the measurement described by the environment, prints its
// Result and returns the exit status.
func RunChild() int {
	var s Spec
	if err := json.Unmarshal([]byte(os.Getenv(childEnv)), &s); err != nil {
		fmt.Fprintln(os.Stderr, "kpbench child:", err)
		return 2
	}
	res, err := measure(context.Background(), &s)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kpbench child %s %s: %v\n", s.Case, s.Op, err)
		return 1
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		fmt.Fprintln(os.Stderr, "kpbench child:", err)
		return 1
	}
	return 0
}

// measure runs one measurement in this process.
func measure(ctx context.Context, s *Spec) (*Result, error) {
	switch s.Case {
	case "raw-1", "raw-all":
		return measureRaw(s)
	case "kpcrypt-file":
		return measureFile(ctx, s)
	case "raw-all-copy":
		return measureRawCopy(s)
	case "raw-alloc", "raw-alloc-16m":
		return measureRawAlloc(s)
	case "seal", "seal-16m":
		return measureSeal(ctx, s)
	case "raw-pread", "raw-pwrite":
		return measureRawFile(s)
	case "pipeline":
		return measurePipeline(ctx, s)
	case "blob-ranged":
		return measureBlobRanged(ctx, s)
	case "random-access":
		return measureRandomAccess(ctx, s)
	case "rewrap":
		return measureRewrap(ctx, s)
	case "small-local":
		return measureSmallLocal(ctx, s)
	case "small-kplocal":
		return measureSmallKplocal(ctx, s)
	}
	if ws, ok := sweepSizes[s.Case]; ok {
		c, err := newKpcrypt(s.Dir, 0)
		if err != nil {
			return nil, err
		}
		return measureCodec(s, &sweepIO{c.(*kpcryptCodec), ws})
	}
	p, ok := peerByName(s.Case)
	if !ok {
		return nil, fmt.Errorf("unknown case %q", s.Case)
	}
	return measurePeer(s, p)
}

// timer brackets a timed section: it settles the heap, resets the peak RSS
// and starts the clock and, if asked, a CPU profile.
type timer struct {
	spec    *Spec
	base    int64
	cpu0    time.Duration
	stat0   cpuStat
	t0      time.Time
	profile *os.File
}

func startTimer(s *Spec) (*timer, error) {
	t := &timer{spec: s}
	settle()
	t.base = currentRSS()
	resetPeakRSS()
	if s.CPUProfile != "" {
		f, err := os.Create(s.CPUProfile)
		if err != nil {
			return nil, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil, err
		}
		t.profile = f
	}
	t.cpu0 = cpuTime()
	t.stat0 = readCPUStat()
	t.t0 = time.Now()
	return t, nil
}

// stop ends the timed section; bytes is the plaintext processed.
func (t *timer) stop(bytes int64) *Result {
	d := time.Since(t.t0)
	cpu := cpuTime() - t.cpu0
	busy, _ := coresBusy(t.stat0, readCPUStat())
	if t.profile != nil {
		pprof.StopCPUProfile()
		t.profile.Close()
	}
	r := &Result{
		Seconds: d.Seconds(),
		PeakRSS: peakRSS(),
		BaseRSS: t.base,
		CPU:     cpu.Seconds() / d.Seconds(),
	}
	if busy >= 0 {
		r.Other, r.TimedOther = max(0, busy-r.CPU), true
	}
	if bytes > 0 {
		r.MiBps = float64(bytes) / (1 << 20) / d.Seconds()
	}
	return r
}

func checkCount(got, want int64) error {
	if got != want {
		return fmt.Errorf("%d bytes out, want %d", got, want)
	}
	return nil
}

// measurePeer encrypts or decrypts s.Size bytes held in memory into a sink.
// For decrypt, the ciphertext is made first, and the plaintext dropped.
func measurePeer(s *Spec, p peer) (*Result, error) {
	c, err := p.new(s.Dir)
	if err != nil {
		return nil, err
	}
	return measureCodec(s, c)
}

func measureCodec(s *Spec, c codec) (*Result, error) {
	pt := plaintext(s.Size)
	switch s.Op {
	case "encrypt":
		var out sink
		t, err := startTimer(s)
		if err != nil {
			return nil, err
		}
		err = c.Encrypt(&out, pt)
		res := t.stop(s.Size)
		runtime.KeepAlive(pt)
		return res, err
	case "decrypt":
		var ct bytes.Buffer
		ct.Grow(int(s.Size + s.Size/64 + 1<<20))
		if err := c.Encrypt(&ct, pt); err != nil {
			return nil, err
		}
		pt = nil
		var out sink
		t, err := startTimer(s)
		if err != nil {
			return nil, err
		}
		err = c.Decrypt(&out, bytes.NewReader(ct.Bytes()))
		res := t.stop(s.Size)
		runtime.KeepAlive(ct.Bytes())
		if err == nil {
			err = checkCount(out.n, s.Size)
		}
		return res, err
	}
	return nil, fmt.Errorf("unknown op %q", s.Op)
}

// measureRaw seals or opens s.Size bytes with the raw AES-GCM baseline.
func measureRaw(s *Spec) (*Result, error) {
	g, err := newRawGCM()
	if err != nil {
		return nil, err
	}
	goroutines := 1
	if s.Case == "raw-all" {
		goroutines = runtime.GOMAXPROCS(0)
	}
	n := int(s.Size)
	pt := plaintext(s.Size)
	ct := make([]byte, rawSealedSize(n))
	chunks := rawChunks(n)
	switch s.Op {
	case "encrypt":
		prefault(ct)
		t, err := startTimer(s)
		if err != nil {
			return nil, err
		}
		parallel(goroutines, chunks, func(from, to int) error { g.seal(ct, pt, from, to); return nil })
		return t.stop(s.Size), nil
	case "decrypt":
		g.seal(ct, pt, 0, chunks)
		out := make([]byte, n)
		prefault(out)
		t, err := startTimer(s)
		if err != nil {
			return nil, err
		}
		err = parallel(goroutines, chunks, func(from, to int) error { return g.open(out, ct, from, to) })
		res := t.stop(s.Size)
		if err == nil && !bytes.Equal(out, pt) {
			err = fmt.Errorf("raw AES-GCM: the plaintext differs")
		}
		return res, err
	}
	return nil, fmt.Errorf("unknown op %q", s.Op)
}

// measureRawCopy is raw AES-GCM opening on all cores, each goroutine first
// copying every chunk into a buffer of its own: the least that decrypting
// from an io.Reader, which must copy the ciphertext out, can cost.
func measureRawCopy(s *Spec) (*Result, error) {
	g, err := newRawGCM()
	if err != nil {
		return nil, err
	}
	n := int(s.Size)
	pt := plaintext(s.Size)
	ct := make([]byte, rawSealedSize(n))
	chunks := rawChunks(n)
	g.seal(ct, pt, 0, chunks)
	out := make([]byte, n)
	prefault(out)
	t, err := startTimer(s)
	if err != nil {
		return nil, err
	}
	err = parallel(runtime.GOMAXPROCS(0), chunks, func(from, to int) error {
		buf := make([]byte, rawChunk+16)
		for i := from; i < to; i++ {
			o := i * (rawChunk + 16)
			c := buf[:copy(buf, ct[o:min(o+rawChunk+16, len(ct))])]
			if err := g.open(out[i*rawChunk:], c, 0, 1, uint64(i)); err != nil {
				return err
			}
		}
		return nil
	})
	res := t.stop(s.Size)
	if err == nil && !bytes.Equal(out, pt) {
		err = fmt.Errorf("raw AES-GCM with a copy: the plaintext differs")
	}
	return res, err
}

// File names in the run's directory.
const (
	kekMemFile    = "kek-mem.json"    // the in-memory kpcrypt cases
	kekFileFile   = "kek-file.json"   // the file and CLI cases
	kekRotateFile = "kek-rotate.json" // random access and rewrap, rotated
	plainFile     = "plain.bin"       // Size bytes of plaintext
	cipherFile    = "plain.bin.kpc"   // plainFile encrypted under kekFileFile
	bigFile       = "big.kpc"         // RASize bytes under kekRotateFile
	smallFile     = "small.kpc"       // 1 MiB under kekRotateFile
	rawFile       = "plain.bin.raw"   // plainFile as raw AES-GCM chunks (rawFileKey)
)

// measureFile is kpcrypt through the library, streaming from a file into
// io.Discard: its peak RSS is the library's working memory.
func measureFile(ctx context.Context, s *Spec) (*Result, error) {
	kek, err := local.OpenFile(s.Dir + "/" + kekFileFile)
	if err != nil {
		return nil, err
	}
	var path string
	switch s.Op {
	case "encrypt":
		path = s.Dir + "/" + plainFile
	case "decrypt":
		path = s.Dir + "/" + cipherFile
	default:
		return nil, fmt.Errorf("unknown op %q", s.Op)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	t, err := startTimer(s)
	if err != nil {
		return nil, err
	}
	if s.Op == "encrypt" {
		err = (&envelope.Encrypter{KEKs: []kms.KEK{kek}}).Encrypt(ctx, io.Discard, f)
	} else {
		var out sink
		err = (&envelope.Decrypter{Keyring: envelope.KEKs{kek}}).Decrypt(ctx, &out, f)
		if err == nil {
			err = checkCount(out.n, s.Size)
		}
	}
	return t.stop(s.Size), err
}
