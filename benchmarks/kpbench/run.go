package kpbench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/local"
)

// Options configure a run.
type Options struct {
	Size        int64          // plaintext of the throughput cases
	Rounds      int            // fresh processes per case
	KMSRounds   int            // rounds of the kplocal small-file case
	RASize      int64          // plaintext of the random-access and rewrap file
	Reads       int            // random 4 KiB reads per round
	RewrapIters int            // rewraps of each file per round
	SmallN      int            // small files
	SeqN        int            // small files sealed on one goroutine against kplocal
	Workers     int            // goroutines of the small-file cases
	Latency     time.Duration  // kplocal's added latency
	SealSize    int64          // the second, smaller size of envelope.Seal and Open (16 MiB)
	PipelineN   int            // files of the batch-rewrap pipeline
	PerDEK      int            // files per DEK there (DataKeyReuse.MaxStreams)
	BlobSize    int64          // the object of the ranged reads over a bucket
	BlobReads   int            // random 4 KiB reads of it per round
	Tmpfs       string         // the tmpfs directory; "" finds one (/dev/shm first)
	Cases       *regexp.Regexp `json:"-"`
	Repo        string         // the kpcrypt repository, to build cmd/kpcrypt
	Go          string         // the go command
	BuildFlags  []string       // extra flags to build cmd/kpcrypt with
	TmpDir      string         // where the run's directory is made; "" is os.TempDir
	NoCLI       bool           // skip building and timing the CLI
	Sweep       bool           // also the write-size sweep and the raw-with-copy baseline
	CPUProfile  string         // a directory for the children's CPU profiles
	// Quiet is the outside load, in cores, above which a measurement counts
	// as disturbed: before each one the run waits up to QuietWait for the
	// machine to be that quiet, and a disturbed measurement is made again,
	// up to Attempts times in all, while the run is within Budget.
	Quiet     float64
	QuietWait time.Duration
	Attempts  int
	Budget    time.Duration
	Log       io.Writer `json:"-"`
}

// DefaultOptions is the full run, the one `make bench` makes.
func DefaultOptions() Options {
	return Options{
		Size: 512 << 20, Rounds: 5, KMSRounds: 3, RASize: 1 << 30, Reads: 2000, RewrapIters: 10,
		SmallN: 10000, SeqN: 100, Workers: 64, Latency: 20 * time.Millisecond, Go: "go", Log: os.Stderr,
		SealSize: 16 << 20, PipelineN: 10000, PerDEK: 100, BlobSize: 64 << 20, BlobReads: 1000,
		Quiet: 0.3, QuietWait: 10 * time.Second, Attempts: 3, Budget: 9 * time.Minute, Sweep: true,
	}
}

// QuickOptions is the -quick run: 16 MiB, one round, a 64 MiB
// random-access file, 500 small files, 500 files in the batch rewrap, 200
// ranged reads of a 16 MiB object, no sweep; it waits at most 1 s for a
// quiet machine and makes no second attempt, to stay within a minute.
func QuickOptions() Options {
	o := DefaultOptions()
	o.Size, o.Rounds, o.KMSRounds, o.RASize, o.Reads, o.RewrapIters = 16<<20, 1, 1, 64<<20, 200, 3
	o.SmallN, o.SeqN, o.Workers = 500, 10, 64
	o.PipelineN, o.BlobSize, o.BlobReads = 500, 16<<20, 200
	o.Sweep = false
	o.QuietWait, o.Attempts, o.Budget = time.Second, 1, 30*time.Second
	return o
}

// task is one case, measured once per round.
type task struct {
	key    string // case/op: what the tables aggregate on
	spec   Spec
	cli    []string // for the CLI cases: the arguments, with IN and OUT
	stdout bool     // the CLI writes to standard output (/dev/null)
	out    string   // a file the task writes, removed after it
	kms    bool     // counted against KMSRounds, never repeated (kplocal, pipeline, bucket)
}

// Measurement is one task's result in one round, with the load seen.
type Measurement struct {
	Key   string
	Round int
	Result
	// Wall is the child's whole life; ChildCPU the cores it used over it.
	Wall     float64
	ChildCPU float64
	// Busy is the cores busy machine-wide over the child's life, Steal the
	// hypervisor's. Result.Other is the outside load: over the timed
	// section when the child measured it, else Busy minus ChildCPU.
	Busy, Steal float64
	Load1       float64
	// Attempts is how many times the measurement was made; Disturbed that
	// the one kept still saw more outside load than Options.Quiet.
	Attempts  int
	Disturbed bool
}

// Run is the parent: it prepares the inputs, runs every task in fresh
// processes for the rounds asked, and returns the report's data.
func Run(ctx context.Context, o Options) (*Report, error) {
	logf := func(format string, args ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, format+"\n", args...)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(o.TmpDir, "kpbench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	rep := newReport(o)
	rep.Start = time.Now()
	var tmpfs string
	if where, note := findTmpfs(o.Tmpfs); where != "" {
		if tmpfs, err = os.MkdirTemp(where, "kpbench-"); err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmpfs)
		rep.Tmpfs, rep.TmpfsNote = where, note
	} else {
		rep.TmpfsNote = note
	}

	var cli string
	if !o.NoCLI {
		cli = filepath.Join(dir, "kpcrypt")
		logf("building cmd/kpcrypt in %s", o.Repo)
		args := append(append([]string{"build"}, o.BuildFlags...), "-o", cli, "./cmd/kpcrypt")
		b := exec.CommandContext(ctx, o.Go, args...)
		b.Dir, b.Stdout, b.Stderr = o.Repo, o.Log, o.Log
		if err := b.Run(); err != nil {
			return nil, fmt.Errorf("building cmd/kpcrypt: %w", err)
		}
	}
	st := time.Now()
	if err := prepare(ctx, dir, o); err != nil {
		return nil, fmt.Errorf("preparing the inputs: %w", err)
	}
	logf("inputs ready in %s (%s)", time.Since(st).Round(time.Millisecond), dir)

	tasks := buildTasks(dir, tmpfs, cli, o)
	for round := range o.Rounds {
		// Rotate the order each round, so that a burst of outside load
		// does not always fall on the same case.
		n := len(tasks)
		for i := range n {
			t := tasks[(i+round*3)%n]
			if t.kms && round >= o.KMSRounds {
				continue
			}
			var m *Measurement
			for attempt := 1; ; attempt++ {
				inBudget := o.Budget <= 0 || time.Since(rep.Start) < o.Budget
				if inBudget {
					waitQuiet(ctx, o.Quiet, o.QuietWait)
				}
				m, err = runTask(ctx, exe, t, round, o)
				if err != nil {
					return nil, fmt.Errorf("%s, round %d: %w", t.key, round+1, err)
				}
				m.Attempts, m.Disturbed = attempt, m.Other > o.Quiet
				if !m.Disturbed || attempt >= o.Attempts || !inBudget || t.kms {
					break
				}
				logf("round %d/%d  %-26s disturbed (other load %.2f cores), again", round+1, o.Rounds, t.key, m.Other)
			}
			rep.add(m)
			logf("round %d/%d  %-26s %s", round+1, o.Rounds, t.key, m.brief())
		}
	}
	rep.End = time.Now()
	return rep, nil
}

// prepare makes the KEKs and input files in dir: the plaintext file and
// its ciphertext, the big random-access file and a 1 MiB file, all synced.
func prepare(ctx context.Context, dir string, o Options) error {
	keks := map[string]*local.KEK{}
	for _, name := range []string{kekMemFile, kekFileFile, kekRotateFile} {
		k, err := local.Generate(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		keks[name] = k
	}
	if err := writeFile(filepath.Join(dir, plainFile), func(w io.Writer) error {
		_, err := io.Copy(w, &patternReader{n: o.Size})
		return err
	}); err != nil {
		return err
	}
	encryptTo := func(name string, size int64, kek kms.KEK) error {
		return writeFile(filepath.Join(dir, name), func(w io.Writer) error {
			ew, err := (&envelope.Encrypter{KEKs: []kms.KEK{kek}}).NewWriter(ctx, w, size)
			if err != nil {
				return err
			}
			if _, err := io.Copy(ew, &patternReader{n: size}); err != nil {
				return err
			}
			return ew.Close()
		})
	}
	if err := encryptTo(cipherFile, o.Size, keks[kekFileFile]); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, rawFile), func(w io.Writer) error { return writeRawFile(w, o.Size) }); err != nil {
		return err
	}
	if err := encryptTo(bigFile, o.RASize, keks[kekRotateFile]); err != nil {
		return err
	}
	return encryptTo(smallFile, 1<<20, keks[kekRotateFile])
}

// waitQuiet waits, up to maxWait, until the machine is quiet: fewer than
// quiet cores busy over a 300 ms window (this process idles meanwhile).
func waitQuiet(ctx context.Context, quiet float64, maxWait time.Duration) {
	if maxWait <= 0 {
		return
	}
	deadline := time.Now().Add(maxWait)
	for {
		a := readCPUStat()
		select {
		case <-ctx.Done():
			return
		case <-time.After(300 * time.Millisecond):
		}
		busy, _ := coresBusy(a, readCPUStat())
		if busy < 0 || busy < quiet || time.Now().After(deadline) {
			return
		}
	}
}

// writeFile writes a file with f and syncs it.
func writeFile(path string, f func(io.Writer) error) error {
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := f(out); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// buildTasks lists the tasks of a round, in table order. tmpfs is the run's
// directory on a tmpfs, or "" if there is none.
func buildTasks(dir, tmpfs, cli string, o Options) []task {
	var ts []task
	add := func(t task) {
		if o.Cases == nil || o.Cases.MatchString(t.key) {
			ts = append(ts, t)
		}
	}
	base := Spec{Size: o.Size, Dir: dir, Tmpfs: tmpfs}
	for _, c := range append(slices.Clone(throughputCases), sealSmallCases...) {
		for _, op := range []string{"encrypt", "decrypt"} {
			s := base
			s.Case, s.Op = c, op
			t := task{key: c + "/" + op, spec: s}
			switch c {
			case "raw-alloc-16m", "seal-16m":
				t.spec.Size = o.SealSize
			case "raw-pwrite":
				if tmpfs == "" {
					continue
				}
				t.spec.Out = filepath.Join(tmpfs, "raw.out")
				t.out = t.spec.Out
			case "cli-file", "cli-stdout", "cli-tmpfs":
				if cli == "" || (c == "cli-tmpfs" && tmpfs == "") {
					continue
				}
				in, out := filepath.Join(dir, plainFile), filepath.Join(dir, "cli.out")
				if op == "decrypt" {
					in = filepath.Join(dir, cipherFile)
				}
				switch c {
				case "cli-stdout":
					out = "-"
					t.stdout = true
				case "cli-tmpfs":
					out = filepath.Join(tmpfs, "cli.out")
				}
				if out != "-" {
					t.out = out
				}
				t.cli = []string{cli, op, "--kek", "local:" + filepath.Join(dir, kekFileFile), "--quiet", "--force", "-o", out, in}
			}
			add(t)
		}
	}
	if o.Sweep {
		for _, c := range sweepCases {
			s := base
			s.Case, s.Op = c, "encrypt"
			add(task{key: c + "/encrypt", spec: s})
		}
		s := base
		s.Case, s.Op = "raw-all-copy", "decrypt"
		add(task{key: "raw-all-copy/decrypt", spec: s})
	}
	s := base
	s.Case, s.Size, s.Reads = "random-access", o.RASize, o.Reads
	add(task{key: "random-access", spec: s})
	s = base
	s.Case, s.Iterations = "rewrap", o.RewrapIters
	add(task{key: "rewrap", spec: s})
	s = base
	s.Case, s.Objects, s.Workers = "small-local", o.SmallN, o.Workers
	add(task{key: "small-local", spec: s})
	s.Case, s.Latency, s.SequentialObjects = "small-kplocal", o.Latency, o.SeqN
	add(task{key: "small-kplocal", spec: s, kms: true})
	s = base
	s.Case, s.Objects, s.PerDEK, s.Workers, s.Latency = "pipeline", o.PipelineN, o.PerDEK, o.Workers, o.Latency
	add(task{key: "pipeline", spec: s, kms: true})
	s = base
	s.Case, s.Size, s.Reads = "blob-ranged", o.BlobSize, o.BlobReads
	add(task{key: "blob-ranged", spec: s, kms: true})
	return ts
}

// throughputCases are the encrypt/decrypt cases in table order, at
// Options.Size.
var throughputCases = []string{
	"raw-1", "raw-all", "raw-alloc", "raw-pread", "raw-pwrite",
	"kpcrypt", "kpcrypt-64k", "kpcrypt-1w", "seal", "kpcrypt-file", "cli-file", "cli-stdout", "cli-tmpfs",
	"age", "tink", "sio",
}

// sealSmallCases are envelope.Seal and Open and their reference at
// Options.SealSize.
var sealSmallCases = []string{"raw-alloc-16m", "seal-16m"}

// runTask runs one task in a fresh process and measures the load around it.
func runTask(ctx context.Context, exe string, t task, round int, o Options) (*Measurement, error) {
	spec := t.spec
	spec.Round = round
	var cmd *exec.Cmd
	var stdout bytes.Buffer
	// Under the race detector (the smoke test), a process sleeps 1 s at
	// exit unless told otherwise.
	env := append(os.Environ(), "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	if t.cli != nil {
		cmd = exec.CommandContext(ctx, t.cli[0], t.cli[1:]...)
		cmd.Env = env
		if t.stdout {
			devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
			if err != nil {
				return nil, err
			}
			defer devnull.Close()
			cmd.Stdout = devnull
		}
	} else {
		if o.CPUProfile != "" {
			spec.CPUProfile = filepath.Join(o.CPUProfile, fmt.Sprintf("%s-r%d.pprof", strings.ReplaceAll(t.key, "/", "-"), round+1))
		}
		js, err := json.Marshal(spec)
		if err != nil {
			return nil, err
		}
		cmd = exec.CommandContext(ctx, exe)
		cmd.Env = append(env, childEnv+"="+string(js))
		cmd.Stdout = &stdout
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	load := loadavg()
	c0 := readCPUStat()
	st := time.Now()
	err := cmd.Run()
	wall := time.Since(st)
	c1 := readCPUStat()
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
	}
	m := &Measurement{Key: t.key, Round: round + 1, Wall: wall.Seconds(), Load1: load}
	ps := cmd.ProcessState
	m.ChildCPU = (ps.UserTime() + ps.SystemTime()).Seconds() / wall.Seconds()
	m.Busy, m.Steal = coresBusy(c0, c1)
	lifeOther := max(0, m.Busy-m.ChildCPU)
	if t.cli != nil {
		if t.cli[1] == "encrypt" || t.cli[1] == "decrypt" {
			m.Seconds = wall.Seconds()
			m.MiBps = float64(o.Size) / (1 << 20) / wall.Seconds()
			m.CPU = m.ChildCPU
			if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
				m.PeakRSS = ru.Maxrss << 10
			}
		}
		m.Other = lifeOther
		if t.out != "" {
			os.Remove(t.out)
		}
		return m, nil
	}
	line := bytes.TrimSpace(stdout.Bytes())
	if i := bytes.LastIndexByte(line, '\n'); i >= 0 {
		line = line[i+1:]
	}
	if err := json.Unmarshal(line, &m.Result); err != nil {
		return nil, fmt.Errorf("reading the child's result %q: %w", line, err)
	}
	if !m.TimedOther {
		m.Other = lifeOther
	}
	return m, nil
}

func (m *Measurement) brief() string {
	var b strings.Builder
	if m.MiBps > 0 {
		fmt.Fprintf(&b, "%8.0f MiB/s  peak %6.1f MiB  cpu %.2f", m.MiBps, mib(m.PeakRSS), m.CPU)
	}
	keys := sortedKeys(m.Metrics)
	for _, k := range keys {
		switch {
		case m.Key == "random-access" && k != "median_us" && k != "decrypts_max" && k != "decrypts_mean":
			continue
		case m.Key == "small-kplocal" && !strings.HasSuffix(k, "_per_s") && !strings.HasSuffix(k, "wraps"):
			continue
		}
		fmt.Fprintf(&b, " %s=%.4g", k, m.Metrics[k])
	}
	fmt.Fprintf(&b, "  [%.1fs; other load %.2f cores, steal %.2f, load1 %.2f]", m.Wall, m.Other, m.Steal, m.Load1)
	if m.Attempts > 1 {
		fmt.Fprintf(&b, " attempt %d", m.Attempts)
	}
	return b.String()
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// Main runs the benchmarks, or reads a run's JSON from the file from, and
// writes the report to out ("-" for standard output) and, if jsonOut is
// set, the run as JSON.
func Main(ctx context.Context, o Options, from, out, jsonOut string) error {
	if runtime.GOOS != "linux" {
		return errors.New("kpbench measures peak memory from /proc: it runs on Linux only")
	}
	var rep *Report
	var err error
	if from != "" {
		rep, err = ReadJSON(from)
	} else {
		rep, err = Run(ctx, o)
	}
	if err != nil {
		return err
	}
	if jsonOut != "" {
		if err := rep.WriteJSON(jsonOut); err != nil {
			return err
		}
	}
	md := rep.Markdown()
	if out == "" || out == "-" {
		// The report ends with the targets table.
		_, err = os.Stdout.WriteString(md)
		return err
	}
	if err := os.WriteFile(out, []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(o.Log, "wrote %s\n", out)
	fmt.Fprint(o.Log, rep.Headline())
	fmt.Printf("\nTargets (%s):\n\n%s", out, rep.TargetsTable())
	return nil
}
