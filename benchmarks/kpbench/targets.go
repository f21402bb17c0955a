package kpbench

import (
	"fmt"
	"math"
	"strings"

	"github.com/kpcrypt/kpcrypt/stream"
)

// Issue 16 asks kpcrypt's entry points to keep up with raw AES-GCM doing the
// same work, and issue 15 bounds the KMS calls of pipelines at scale. Each
// target is a ratio to a reference measured in the same run (or a count),
// computed here by the parent from the measurements; none is a timed test,
// and an unmet target never fails the run.

// The 4 KiB objects' target is twice the ratio of envelope Seal and Open to
// raw AES-GCM sealing and opening 4 KiB messages (one chunk, allocating
// output) before the engine changes of issue 16. The committed BENCHMARKS.md
// (2026-11-25; 31 k/s encrypt, 33 k/s decrypt) has no raw 4 KiB reference,
// so the baseline was measured with this harness on the library of commit
// 33dca4a, on the shared 2-core machine:
//
//	go run ./cmd/kpbench -no-cli -cases '^small-local$' -rounds 7 -size 16MiB -ra-size 16MiB
//
// 10,000 objects, 64 goroutines, 7 rounds; the medians of the per-round
// ratios (encrypt 0.105–0.129, decrypt 0.090–0.126; Seal 41 k/s against raw
// 333 k/s, Open 43 k/s against raw 389 k/s at the medians).
const (
	smallBaselineSeal = 0.1201
	smallBaselineOpen = 0.1115
	smallBaselineNote = "baseline ratio measured on 2026-11-30 at commit 33dca4a"
)

// Target thresholds.
const (
	refRatioTarget      = 0.95 // ≥ this × the raw reference
	randomP50Target     = 1.5  // p50 of a random 4 KiB read ≤ this × the reference
	renewalTarget       = 2.0  // ≥ this × MaxStreams ÷ latency
	smallGainTarget     = 2.0  // ≥ this × the baseline ratio
	kpOverheadTarget    = 1331 // bytes a 4 KiB object grows by with one Key Protect slot
	defaultReuseStreams = 100  // envelope.DataKeyReuse's default MaxStreams
)

// Status of a target.
const (
	statusMet         = "met"
	statusNotMet      = "not met"
	statusNotMeasured = "not measured"
)

// Target is one row of the targets table.
type Target struct {
	Name, Measured, Goal, Status string
}

func status(ok bool) string {
	if ok {
		return statusMet
	}
	return statusNotMet
}

// overIO is a measurement's peak RSS over its inputs and its output: the
// peak minus the RSS before the timed section (which holds the input) minus
// the output the case allocated for the caller, in bytes.
func overIO(m *Measurement) float64 { return float64(m.PeakRSS - m.BaseRSS - m.OutBytes) }

// refPairs are the rows measured against a raw reference of issue 16:
// case, reference, and what they are.
var refPairs = []struct{ c, ref, name string }{
	{"seal", "raw-alloc", "envelope.Seal / Open"},
	{"seal-16m", "raw-alloc-16m", "envelope.Seal / Open"},
	{"kpcrypt-file", "raw-pread", "library, file → io.Discard"},
	{"cli-stdout", "raw-pread", "CLI, file → /dev/null"},
	{"cli-tmpfs", "raw-pwrite", "CLI, file → file on tmpfs"},
}

func (r *Report) pairSize(c string) int64 {
	if strings.HasSuffix(c, "-16m") {
		return r.Opts.SealSize
	}
	return r.Opts.Size
}

// Targets computes the targets table from the measurements.
func (r *Report) Targets() []Target {
	var ts []Target
	add := func(name, measured, goal, st string) {
		ts = append(ts, Target{name, measured, goal, st})
	}
	none := func(name, goal string) { add(name, "—", goal, statusNotMeasured) }

	// 1–3: ratios to the raw references.
	for _, pr := range refPairs {
		for _, op := range []string{"encrypt", "decrypt"} {
			name := fmt.Sprintf("%s %s, %s (×%s)", pr.name, op, sizeStr(r.pairSize(pr.c)), pr.ref)
			if pr.c == "seal" || pr.c == "seal-16m" {
				fn := map[string]string{"encrypt": "envelope.Seal", "decrypt": "envelope.Open"}[op]
				name = fmt.Sprintf("%s, %s (×%s)", fn, sizeStr(r.pairSize(pr.c)), pr.ref)
			}
			goal := fmt.Sprintf("≥ %.2f×", refRatioTarget)
			k, ref := pr.c+"/"+op, pr.ref+"/"+op
			if !r.has(k) || !r.has(ref) {
				none(name, goal)
				continue
			}
			v, rv := r.med(k), r.med(ref)
			add(name, fmt.Sprintf("%.0f / %.0f MiB/s = %.2f×", v, rv, v/rv), goal, status(v/rv >= refRatioTarget))
		}
	}
	{
		name, goal := "envelope.Seal / Open peak RSS over inputs and output", fmt.Sprintf("≤ %s (stream.MemoryBudget)", sizeStr(stream.MemoryBudget))
		peak, parts := math.Inf(-1), []string{}
		for _, c := range []string{"seal", "seal-16m"} {
			for _, op := range []string{"encrypt", "decrypt"} {
				if k := c + "/" + op; r.has(k) {
					v := r.stat(k, overIO).hi
					peak = max(peak, v)
					parts = append(parts, fmt.Sprintf("%s %s %.1f", c, op, mib(int64(v))))
				}
			}
		}
		if len(parts) == 0 {
			none(name, goal)
		} else {
			add(name, fmt.Sprintf("max %.1f MiB (%s)", mib(int64(peak)), strings.Join(parts, ", ")), goal, status(peak <= stream.MemoryBudget))
		}
	}

	// 4: 4 KiB objects, local KEK, against raw AES-GCM on 4 KiB.
	for _, x := range []struct{ op, m, raw string }{{"Seal", "encrypt", "raw_seal"}, {"Open", "decrypt", "raw_open"}} {
		base := map[string]float64{"Seal": smallBaselineSeal, "Open": smallBaselineOpen}[x.op]
		name := fmt.Sprintf("4 KiB objects, local KEK: %s ÷ raw AES-GCM 4 KiB", x.op)
		goal := fmt.Sprintf("≥ %.0f× the baseline ratio %.4f, i.e. ≥ %.3f", smallGainTarget, base, smallGainTarget*base)
		if !r.has("small-local") || r.metric("small-local", x.raw+"_per_s").med == 0 {
			none(name, goal)
			continue
		}
		v, rv := r.metric("small-local", x.m+"_per_s").med, r.metric("small-local", x.raw+"_per_s").med
		// The median of the rounds' ratios: each round's two rates come
		// from one process, one after the other.
		ratio := r.stat("small-local", func(m *Measurement) float64 { return m.Metrics[x.m+"_per_s"] / m.Metrics[x.raw+"_per_s"] }).med
		st := status(base > 0 && ratio >= smallGainTarget*base)
		if base <= 0 {
			st = statusNotMeasured
		}
		add(name, fmt.Sprintf("%.0f / %.0f objects/s (medians); ratio %.3f (median of rounds) = %.2f× baseline", v, rv, ratio, ratio/base), goal, st)
	}

	// 5: random 4 KiB reads.
	{
		const k = "random-access"
		name, goal := "random 4 KiB read, p50 ÷ pread+open of one raw chunk (p50)", fmt.Sprintf("≤ %.1f×", randomP50Target)
		if !r.has(k) || r.metric(k, "ref_median_us").med == 0 {
			none(name, goal)
		} else {
			v, rv := r.metric(k, "median_us").med, r.metric(k, "ref_median_us").med
			add(name, fmt.Sprintf("%.1f / %.1f µs = %.2f×", v, rv, v/rv), goal, status(v/rv <= randomP50Target))
		}
		// MemStats counts the whole process: the child's own goroutines
		// (its load sampling) allocate now and then too, so a library
		// that allocates once per read shows 1, one that never does a
		// few hundredths at most. stream's TestReaderAtAllocations
		// asserts 0 with testing.AllocsPerRun.
		name, goal = "random 4 KiB read, allocations per read (steady state; MemStats of the whole process)", "0 (< 0.05)"
		if !r.has(k) {
			none(name, goal)
		} else {
			v := r.metric(k, "allocs_per_read").hi
			add(name, fmt.Sprintf("%.2f (max over rounds; %.0f bytes)", v, r.metric(k, "alloc_bytes_per_read").hi), goal, status(v < 0.05))
		}
	}

	// 6: issue 15.
	{
		const k = "pipeline"
		name, goal := "batch rewrap: KMS calls", "≤ distinct DEKs + KEKs"
		if !r.has(k) {
			none(name, goal)
		} else {
			calls, d, kk := r.metric(k, "rewrap_kms_calls").hi, r.metric(k, "deks").med, r.metric(k, "keks").med
			add(name, fmt.Sprintf("%.0f calls (max) for %.0f files, %.0f DEKs + %.0f KEK", calls, r.metric(k, "files").med, d, kk), goal, status(calls <= d+kk))
		}
		name, goal = "after the rewrap, unwraps of a reader with a DataKeyCache", "≤ distinct DEKs"
		if !r.has(k) {
			none(name, goal)
		} else {
			u, d := r.metric(k, "read_unwraps").hi, r.metric(k, "deks_after").med
			add(name, fmt.Sprintf("%.0f unwraps (max) for %.0f files, %.0f DEKs", u, r.metric(k, "files").med, d), goal, status(u <= d))
		}
	}
	{
		name, goal := fmt.Sprintf("DataKeyReuse renewal: 4 KiB objects/s at %s on %d goroutines ÷ (MaxStreams ÷ latency)", r.Opts.Latency, r.Opts.Workers), fmt.Sprintf("≥ %.0f×", renewalTarget)
		if !r.has("small-kplocal") || r.Opts.Latency <= 0 {
			none(name, goal)
		} else {
			v := r.metric("small-kplocal", "seal_reuse_per_s").med
			ceil := defaultReuseStreams / r.Opts.Latency.Seconds()
			add(name, fmt.Sprintf("%.0f / %.0f = %.2f×", v, ceil, v/ceil), goal, status(v/ceil >= renewalTarget))
		}
	}
	{
		name, goal := "bytes a 4 KiB object grows by, one Key Protect slot", fmt.Sprintf("≤ %d", kpOverheadTarget)
		if !r.has("pipeline") {
			none(name, goal)
		} else {
			v := r.metric("pipeline", "overhead_kp_bytes").hi
			add(name, fmt.Sprintf("%.0f (one local slot: %s)", v, fmtRange(r.metric("small-local", "overhead_bytes"), 0)), goal, status(v <= kpOverheadTarget))
		}
	}

	// Targets kept from before issue 16.
	for _, op := range []string{"encrypt", "decrypt"} {
		name, goal := fmt.Sprintf("library %s, memory → io.Discard (×raw-all)", op), "≥ 0.90×"
		kp, raw := r.med("kpcrypt/"+op), r.med("raw-all/"+op)
		if math.IsNaN(kp) || math.IsNaN(raw) {
			none(name, goal)
			continue
		}
		add(name, fmt.Sprintf("%.0f / %.0f MiB/s = %.2f×", kp, raw, kp/raw), goal, status(kp/raw >= 0.9))
	}
	{
		name, goal := "streaming peak memory, any file size", fmt.Sprintf("≤ %s", sizeStr(stream.MemoryBudget))
		peak, what := 0.0, []string{}
		for _, c := range []string{"kpcrypt-file", "cli-file", "cli-stdout", "cli-tmpfs"} {
			for _, op := range []string{"encrypt", "decrypt"} {
				k := c + "/" + op
				if !r.has(k) {
					continue
				}
				v := mib(int64(r.stat(k, func(m *Measurement) float64 { return float64(m.PeakRSS) }).hi))
				what = append(what, fmt.Sprintf("%s %s %.1f", c, op, v))
				peak = max(peak, v)
			}
		}
		if len(what) == 0 {
			none(name, goal)
		} else {
			add(name, fmt.Sprintf("max %.1f MiB (%s MiB; %s files)", peak, strings.Join(what, ", "), sizeStr(r.Opts.Size)), goal, status(peak <= mib(stream.MemoryBudget)))
		}
	}
	{
		name, goal := "chunk decryptions per random 4 KiB read", "≤ 2"
		if !r.has("random-access") {
			none(name, goal)
		} else {
			mx := r.metric("random-access", "decrypts_max").hi
			add(name, fmt.Sprintf("max %.0f, mean %.3f", mx, r.metric("random-access", "decrypts_mean").med), goal, status(mx <= 2))
		}
	}
	{
		name, goal := fmt.Sprintf("rewrap of a %s file ÷ of a 1 MiB file", sizeStr(r.Opts.RASize)), "≤ 2×"
		if !r.has("rewrap") {
			none(name, goal)
		} else {
			rt := r.metric("rewrap", "ratio")
			add(name, fmt.Sprintf("%.2f× (%.2f vs %.2f ms)", rt.med, r.metric("rewrap", "big_ms").med, r.metric("rewrap", "small_ms").med), goal, status(rt.med <= 2))
		}
	}
	return ts
}

// TargetNames are the names of every target, for the tests: each appears
// in every targets table, measured or not.
func (r *Report) TargetNames() []string {
	var names []string
	for _, t := range r.Targets() {
		names = append(names, t.Name)
	}
	return names
}

// TargetsTable renders the targets as a Markdown table.
func (r *Report) TargetsTable() string {
	var b strings.Builder
	b.WriteString("| target | measured | goal | |\n|---|---|---|---|\n")
	met, notMet, none := 0, 0, 0
	for _, t := range r.Targets() {
		cell := "**" + t.Status + "**"
		switch t.Status {
		case statusMet:
			met++
		case statusNotMet:
			notMet++
		default:
			none++
			cell = t.Status
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", t.Name, t.Measured, t.Goal, cell)
	}
	fmt.Fprintf(&b, "\n%d met, %d not met, %d not measured.\n", met, notMet, none)
	return b.String()
}

func (r *Report) writeTargets(p printer) {
	p("## Targets\n\n")
	p("Computed by `kpbench` from the measurements above: each throughput target is a ratio of medians to a reference measured in the same run (§ *Against raw AES-GCM doing the same work*), each count is kplocal's. The ratios to age, Tink and minio/sio are information, not targets. An unmet target does not fail the run. The 4 KiB objects' baseline: %s (%.3f for Seal, %.3f for Open).\n\n", smallBaselineNote, smallBaselineSeal, smallBaselineOpen)
	p("%s", r.TargetsTable())
}

// writeReferences renders issue 16's rows against their raw references.
func (r *Report) writeReferences(p printer) {
	found := false
	for _, pr := range refPairs {
		found = found || r.has(pr.c+"/encrypt") || r.has(pr.c+"/decrypt")
	}
	if !found {
		return
	}
	p("## Against raw AES-GCM doing the same work\n\n")
	p("Each kpcrypt entry point against raw AES-256-GCM (64 KiB chunks, GOMAXPROCS goroutines) doing the same work on the same input in the same run; MiB/s, median (min–max) of the rounds. The references:\n\n")
	p("- *raw-alloc*: seal (open) a whole in-memory message into an output allocated inside the timed section, as `envelope.Seal` (`Open`) must.\n")
	p("- *raw-pread*: each worker takes the next chunk index, `pread`s that chunk of the page-cached input file (the plaintext, or a file of raw sealed chunks) and seals (opens) it into a buffer of its own.\n")
	p("- *raw-pwrite*: the same, then `pwrite`s the result at its place in an output file on the tmpfs (%s), created before and fsynced and closed after, inside the timed section. The CLI writes there atomically: a temporary file beside OUT, fsync, rename.\n\n", tmpfsWhere(r))
	p("| case | size | reference | encrypt MiB/s | reference | ratio | decrypt MiB/s | reference | ratio |\n|---|---:|---|---:|---:|---:|---:|---:|---:|\n")
	for _, pr := range refPairs {
		e, d := pr.c+"/encrypt", pr.c+"/decrypt"
		if !r.has(e) && !r.has(d) {
			continue
		}
		p("| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", pr.name, sizeStr(r.pairSize(pr.c)), pr.ref,
			fmtRange(r.stat(e, mibps), 0), fmtRange(r.stat(pr.ref+"/encrypt", mibps), 0), ratio(r.med(e), r.med(pr.ref+"/encrypt")),
			fmtRange(r.stat(d, mibps), 0), fmtRange(r.stat(pr.ref+"/decrypt", mibps), 0), ratio(r.med(d), r.med(pr.ref+"/decrypt")))
	}
	p("\nPeak RSS over the inputs and the output, MiB, max over the rounds: the peak during the timed section minus the RSS just before it (which holds the input) minus the output allocated for the caller.\n\n")
	p("| case | size | encrypt | decrypt |\n|---|---:|---:|---:|\n")
	for _, c := range []string{"raw-alloc", "seal", "raw-alloc-16m", "seal-16m"} {
		e, d := c+"/encrypt", c+"/decrypt"
		if !r.has(e) && !r.has(d) {
			continue
		}
		val := func(k string) string {
			if !r.has(k) {
				return "—"
			}
			return fmt.Sprintf("%.1f", r.stat(k, overIO).hi/(1<<20))
		}
		p("| %s | %s | %s | %s |\n", describe(c), sizeStr(r.pairSize(c)), val(e), val(d))
	}
	p("\n")
}

func tmpfsWhere(r *Report) string {
	if r.TmpfsNote == "" {
		return "not looked for"
	}
	return r.TmpfsNote
}

// writePipelines renders issue 15's pipelines at scale.
func (r *Report) writePipelines(p printer) {
	if !r.has("pipeline") && !r.has("blob-ranged") && !r.has("small-kplocal") {
		return
	}
	o := r.Opts
	p("## Pipelines at scale\n\n")
	if k := "pipeline"; r.has(k) {
		where := "the run's temporary directory (no tmpfs)"
		if r.Tmpfs != "" {
			where = "the tmpfs " + "`" + r.Tmpfs + "`"
		}
		p("**Batch rewrap.** %.0f files of 4 KiB written to %s by one `Encrypter` with `Reuse: &envelope.DataKeyReuse{MaxStreams: %d}` under a kplocal Key Protect root key (%s per request, through `keyprotect.Opener`); the key rotated; `batch.Walk` and `batch.Rewrap` with one `envelope.RewrapCache` and %d jobs; then every file read by a `Decrypter` with `envelope.NewDataKeyCache(0, 0)` on %d goroutines. KMS calls are kplocal's `Stats` (every `/api/v2` request) over each phase; distinct DEKs are the distinct slot fingerprints `envelope.Inspect` finds in the files. Medians (max) over %d rounds.\n\n",
			r.metric(k, "files").med, where, o.PerDEK, o.Latency, o.Workers, o.Workers, r.stat(k, func(*Measurement) float64 { return 0 }).n)
		cell := func(name string, prec int) string {
			s := r.metric(k, name)
			if s.n > 1 && s.hi != s.med {
				return fmt.Sprintf("%.*f (%.*f)", prec, s.med, prec, s.hi)
			}
			return fmt.Sprintf("%.*f", prec, s.med)
		}
		p("| | |\n|---|---:|\n")
		p("| files | %s |\n", cell("files", 0))
		p("| distinct DEKs (KEKs) in the files | %s (%s) |\n", cell("deks", 0), cell("keks", 0))
		p("| KMS wraps while writing them | %s |\n", cell("write_wraps", 0))
		p("| rewrap: KMS calls (all requests) | %s |\n", cell("rewrap_kms_calls", 0))
		p("| rewrap: of which rewraps / unwraps / wraps / version listings / key reads | %s / %s / %s / %s / %s |\n", cell("rewrap_rewraps", 0), cell("rewrap_unwraps", 0), cell("rewrap_wraps", 0), cell("rewrap_versions", 0), cell("rewrap_gets", 0))
		p("| rewrap: files rewrapped; slots left on the old version | %s; %s |\n", cell("rewrapped", 0), cell("slots_not_rotated", 0))
		p("| rewrap: seconds | %s |\n", cell("rewrap_s", 2))
		p("| distinct DEKs after the rewrap | %s |\n", cell("deks_after", 0))
		p("| reading them all with a DataKeyCache: KMS unwraps (all requests) | %s (%s) |\n", cell("read_unwraps", 0), cell("read_kms_calls", 0))
		p("| reading: seconds | %s |\n\n", cell("read_s", 2))
	}
	if k := "small-kplocal"; r.has(k) && o.Latency > 0 {
		ceil := defaultReuseStreams / o.Latency.Seconds()
		v := r.metric(k, "seal_reuse_per_s")
		p("**DataKeyReuse renewal.** 4 KiB objects sealed with `Reuse: &envelope.DataKeyReuse{}` (defaults: %d streams per DEK) on %d goroutines against kplocal with %s per request (the small-files table's reuse row): %s objects/s, %s MaxStreams ÷ latency = %.0f/s, the ceiling of a renewal that stops the writers.\n\n",
			defaultReuseStreams, o.Workers, o.Latency, fmtRange(v, 0), ratio(v.med, ceil), ceil)
	}
	if r.has("pipeline") || r.has("small-local") {
		p("**Small-object overhead.** Bytes a 4 KiB object grows by (`Seal`, no reuse): one Key Protect slot %s (%s with `DataKeyReuse`'s shared slot); one local slot %s.\n\n",
			fmtRange(r.metric("pipeline", "overhead_kp_bytes"), 0), fmtRange(r.metric("pipeline", "overhead_kp_reuse_bytes"), 0), fmtRange(r.metric("small-local", "overhead_bytes"), 0))
	}
	if k := "blob-ranged"; r.has(k) {
		p("**Ranged reads over a bucket.** A %s object (64 KiB chunks, %s of them) written by `blob.NewWriter` to an in-process S3 (gofakes3, in memory, over loopback HTTP, through `s3blob`), then %d reads of 4 KiB at uniformly random offsets through `blob.NewReaderAt` with its default cache (%d chunks), each checked; GETs and bytes are counted at the HTTP client. Package blob does not export its cache's hits: the hit rate is derived as 1 − chunks fetched ÷ chunks the reads touched, a chunk fetched being 64 KiB + 16 bytes of GET body. Median (min–max) over rounds.\n\n",
			sizeStr(o.BlobSize), fmtRange(r.metric(k, "object_chunks"), 0), o.BlobReads, blobCacheChunks(r))
		p("| | |\n|---|---:|\n")
		p("| open: GETs, bytes | %s, %s |\n", fmtRange(r.metric(k, "open_gets"), 0), fmtRange(r.metric(k, "open_bytes"), 0))
		p("| GETs per 4 KiB read | %s |\n", fmtRange(r.metric(k, "gets_per_read"), 3))
		p("| bytes fetched per 4 KiB read | %s |\n", fmtRange(r.metric(k, "bytes_per_read"), 0))
		p("| chunk cache hit rate | %s |\n", fmtRange(r.metric(k, "cache_hit_rate"), 3))
		p("| latency of one read, median, µs | %s |\n", fmtRange(r.metric(k, "median_us"), 0))
		p("| latency, p99, µs | %s |\n\n", fmtRange(r.metric(k, "p99_us"), 0))
	}
}

func blobCacheChunks(r *Report) int {
	if v := r.metric("blob-ranged", "cache_chunks").med; !math.IsNaN(v) {
		return int(v)
	}
	return 0
}
