// Command kpbench measures kpcrypt side by side with age, Tink's streaming
// AEAD, minio/sio and raw AES-256-GCM, each case in fresh processes over
// several rounds, and writes BENCHMARKS.md. `make bench` runs it.
//
//	cd benchmarks && go run ./cmd/kpbench [-quick] [-o FILE] [-rounds N] [-size BYTES] ...
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/kpcrypt/kpcrypt/benchmarks/kpbench"
)

func main() {
	if kpbench.IsChild() {
		os.Exit(kpbench.RunChild())
	}
	o := kpbench.DefaultOptions()
	quick := flag.Bool("quick", false, "a small run, under a minute: 16 MiB, one round, 64 MiB random-access file, 500 small files, no sweep")
	out := flag.String("o", "", "write the report to `FILE` (- for standard output; default BENCHMARKS.md in -repo)")
	jsonOut := flag.String("json", "", "also write the run, every measurement included, as JSON to `FILE`")
	from := flag.String("from", "", "measure nothing: render the report from a run saved with -json in `FILE`")
	size := flag.String("size", "", "plaintext `size` of the throughput cases, e.g. 512MiB (default 512MiB, 16MiB with -quick)")
	raSize := flag.String("ra-size", "", "plaintext `size` of the random-access and rewrap file (default 1GiB, 64MiB with -quick)")
	rounds := flag.Int("rounds", 0, "fresh processes per case (default 5, 1 with -quick)")
	kmsRounds := flag.Int("kms-rounds", 0, "rounds of the kplocal small-file case (default 3, 1 with -quick)")
	reads := flag.Int("reads", 0, "random 4 KiB reads per round (default 2000, 200 with -quick)")
	smallN := flag.Int("small", 0, "number of 4 KiB objects in the small-file cases (default 10000, 500 with -quick)")
	workers := flag.Int("workers", 0, "goroutines of the small-file cases (default 64)")
	latency := flag.Duration("latency", 0, "latency kplocal adds to each request (default 20ms)")
	cases := flag.String("cases", "", "run only the tasks whose `REGEXP` matches case/op, e.g. 'kpcrypt|raw'")
	repo := flag.String("repo", "..", "the kpcrypt repository, where ./cmd/kpcrypt is built")
	noCLI := flag.Bool("no-cli", false, "do not build or time the kpcrypt command")
	sweep := flag.Bool("sweep", true, "also measure kpcrypt encryption by Write size, and raw AES-GCM decryption with a copy (about 45 s more)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of each child's timed section into `DIR`")
	quiet := flag.Float64("quiet", 0, "outside load, in `cores`, above which a measurement is disturbed (default 0.3)")
	quietWait := flag.Duration("quiet-wait", -1, "how long to wait for a quiet machine before each measurement (default 10s, 2s with -quick)")
	attempts := flag.Int("attempts", 0, "attempts at each measurement while disturbed (default 3, 2 with -quick)")
	budget := flag.Duration("budget", 0, "stop waiting and repeating after this long (default 9m, 1m with -quick)")
	tmp := flag.String("tmp", "", "make the run's temporary directory (up to 4 × size + ra-size) under `DIR`")
	tmpfs := flag.String("tmpfs", "", "the tmpfs `DIR` of the file → tmpfs cases (default /dev/shm if it is a tmpfs, else the first tmpfs of /run/shm, /tmp, $TMPDIR)")
	pipeline := flag.Int("pipeline", 0, "files of the batch-rewrap pipeline, 100 per DEK (default 10000, 500 with -quick)")
	blobSize := flag.String("blob-size", "", "`size` of the object of the ranged reads over a bucket (default 64MiB, 16MiB with -quick)")
	blobReads := flag.Int("blob-reads", 0, "random 4 KiB reads of that object per round (default 1000, 200 with -quick)")
	flag.Parse()
	if *quick {
		o = kpbench.QuickOptions()
	}
	var err error
	if *size != "" {
		if o.Size, err = parseSize(*size); err != nil {
			fail(err)
		}
	}
	if *raSize != "" {
		if o.RASize, err = parseSize(*raSize); err != nil {
			fail(err)
		}
	}
	setInt := func(dst *int, v int) {
		if v > 0 {
			*dst = v
		}
	}
	setInt(&o.Rounds, *rounds)
	setInt(&o.KMSRounds, *kmsRounds)
	setInt(&o.SmallN, *smallN)
	setInt(&o.Reads, *reads)
	setInt(&o.Workers, *workers)
	setInt(&o.Attempts, *attempts)
	setInt(&o.PipelineN, *pipeline)
	setInt(&o.BlobReads, *blobReads)
	if *blobSize != "" {
		if o.BlobSize, err = parseSize(*blobSize); err != nil {
			fail(err)
		}
	}
	if *quiet > 0 {
		o.Quiet = *quiet
	}
	if *quietWait >= 0 {
		o.QuietWait = *quietWait
	}
	if *budget > 0 {
		o.Budget = *budget
	}
	if *latency > 0 {
		o.Latency = *latency
	}
	if *cases != "" {
		if o.Cases, err = regexp.Compile(*cases); err != nil {
			fail(err)
		}
	}
	o.Repo, o.NoCLI, o.CPUProfile, o.TmpDir, o.Tmpfs = *repo, *noCLI, *cpuprofile, *tmp, *tmpfs
	o.Sweep = o.Sweep && *sweep
	if *out == "" {
		*out = filepath.Join(*repo, "BENCHMARKS.md")
	}
	if g := os.Getenv("GO"); g != "" {
		o.Go = g
	}
	if o.CPUProfile != "" {
		if err := os.MkdirAll(o.CPUProfile, 0o755); err != nil {
			fail(err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := kpbench.Main(ctx, o, *from, *out, *jsonOut); err != nil {
		fail(err)
	}
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	t := strings.TrimSpace(s)
	for _, suf := range []struct {
		s string
		m int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if v, ok := strings.CutSuffix(t, suf.s); ok {
			t, mult = v, suf.m
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size", s)
	}
	return n * mult, nil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kpbench:", err)
	os.Exit(1)
}
