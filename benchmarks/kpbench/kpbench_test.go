package kpbench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary serve as a measurement child, as the
// kpbench command does.
func TestMain(m *testing.M) {
	if IsChild() {
		os.Exit(RunChild())
	}
	os.Exit(m.Run())
}

// TestRoundTrip checks that every codec decrypts what it encrypted, at
// sizes around the chunk boundaries, and that a flipped bit is refused.
func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	for _, p := range peers {
		t.Run(p.name, func(t *testing.T) {
			c, err := p.new(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range []int64{0, 1, 64<<10 - 1, 64 << 10, 1<<20 + 123} {
				if n == 0 && p.name == "sio" {
					continue // sio writes nothing for an empty plaintext, and refuses to decrypt nothing
				}
				pt := plaintext(n)
				var ct bytes.Buffer
				if err := c.Encrypt(&ct, pt); err != nil {
					t.Fatalf("%d bytes: encrypt: %v", n, err)
				}
				var out bytes.Buffer
				if err := c.Decrypt(&out, bytes.NewReader(ct.Bytes())); err != nil {
					t.Fatalf("%d bytes: decrypt: %v", n, err)
				}
				if !bytes.Equal(out.Bytes(), pt) {
					t.Fatalf("%d bytes: the plaintext differs", n)
				}
				if n == 0 {
					continue
				}
				bad := bytes.Clone(ct.Bytes())
				bad[len(bad)-1] ^= 1
				if err := c.Decrypt(&bytes.Buffer{}, bytes.NewReader(bad)); err == nil {
					t.Fatalf("%d bytes: a flipped bit was not detected", n)
				}
			}
		})
	}
}

func TestRawGCM(t *testing.T) {
	g, err := newRawGCM()
	if err != nil {
		t.Fatal(err)
	}
	n := 1<<20 + 5
	pt := plaintext(int64(n))
	ct := make([]byte, rawSealedSize(n))
	chunks := rawChunks(n)
	if err := parallel(3, chunks, func(from, to int) error { g.seal(ct, pt, from, to); return nil }); err != nil {
		t.Fatal(err)
	}
	out := make([]byte, n)
	if err := parallel(2, chunks, func(from, to int) error { return g.open(out, ct, from, to) }); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, pt) {
		t.Fatal("the plaintext differs")
	}
}

func TestFillAt(t *testing.T) {
	all := plaintext(10000)
	for _, off := range []int64{0, 1, 15, 16, 17, 4095, 9000} {
		p := make([]byte, 1000)
		fillAt(p, off)
		if !bytes.Equal(p[:min(1000, 10000-off)], all[off:min(off+1000, 10000)]) {
			t.Fatalf("fillAt(%d) differs from the plaintext", off)
		}
	}
}

// TestQuickRun runs every case once, each in a fresh process (this test
// binary, re-executed), on 1 MiB, and checks the report.
func TestQuickRun(t *testing.T) {
	o := QuickOptions()
	o.Size, o.RASize, o.Reads, o.RewrapIters = 1<<20, 4<<20, 50, 2
	o.SmallN, o.SeqN, o.Workers, o.Latency = 100, 3, 16, 20*time.Millisecond
	o.SealSize, o.PipelineN, o.PerDEK, o.BlobSize, o.BlobReads = 256<<10, 250, 100, 1<<20, 50
	o.TmpDir = t.TempDir()
	o.Repo = filepath.Join("..", "..")
	o.Go = goCommand()
	o.NoCLI = testing.Short()
	if raceEnabled {
		// Then `make test` has just compiled cmd/kpcrypt's packages with
		// -race: building the command so only links it.
		o.BuildFlags = []string{"-race"}
	}
	o.QuietWait, o.Attempts = 0, 1 // a smoke test: no waiting for a quiet machine
	var log bytes.Buffer
	o.Log = &log
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	tmpfs := rep.Tmpfs != ""
	if !tmpfs {
		t.Logf("no tmpfs: %s", rep.TmpfsNote)
	}
	for _, c := range append(slices.Clone(throughputCases), sealSmallCases...) {
		for _, op := range []string{"encrypt", "decrypt"} {
			k := c + "/" + op
			if o.NoCLI && strings.HasPrefix(c, "cli-") || !tmpfs && (c == "cli-tmpfs" || c == "raw-pwrite") {
				continue
			}
			ms := rep.byKey[k]
			if len(ms) != 1 {
				t.Errorf("%s: %d measurements, want 1", k, len(ms))
				continue
			}
			if m := ms[0]; !(m.MiBps > 0) || m.PeakRSS <= 0 {
				t.Errorf("%s: %.1f MiB/s, peak RSS %d", k, m.MiBps, m.PeakRSS)
			}
		}
	}
	check := func(key, metric string, ok func(float64) bool) {
		t.Helper()
		ms := rep.byKey[key]
		if len(ms) != 1 {
			t.Errorf("%s: %d measurements, want 1", key, len(ms))
			return
		}
		if v, found := ms[0].Metrics[metric]; !found || !ok(v) {
			t.Errorf("%s: %s = %v", key, metric, v)
		}
	}
	positive := func(v float64) bool { return v > 0 }
	check("random-access", "decrypts_max", func(v float64) bool { return v >= 1 && v <= 2 })
	check("random-access", "median_us", positive)
	check("rewrap", "small_ms", positive)
	check("rewrap", "big_ms", positive)
	check("small-local", "encrypt_per_s", positive)
	check("small-local", "decrypt_per_s", positive)
	check("small-kplocal", "seal_fresh_wraps", func(v float64) bool { return v == 100 })
	check("small-kplocal", "seal_reuse_wraps", func(v float64) bool { return v >= 1 && v < 100 })
	check("small-kplocal", "open_fresh_unwraps", func(v float64) bool { return v == 100 })
	check("small-kplocal", "open_reuse_cache_unwraps", func(v float64) bool { return v >= 1 && v <= 100 })
	check("random-access", "ref_median_us", positive)
	check("random-access", "allocs_per_read", func(v float64) bool { return v >= 0 })
	check("small-local", "raw_seal_per_s", positive)
	check("small-local", "raw_open_per_s", positive)
	check("small-local", "encrypt_alloc_bytes", positive)
	// 250 files at 100 per DEK: 3 DEKs, under one KEK.
	check("pipeline", "files", func(v float64) bool { return v == 250 })
	check("pipeline", "deks", func(v float64) bool { return v == 3 })
	check("pipeline", "keks", func(v float64) bool { return v == 1 })
	check("pipeline", "rewrapped", func(v float64) bool { return v == 250 })
	check("pipeline", "slots_not_rotated", func(v float64) bool { return v == 0 })
	check("pipeline", "rewrap_kms_calls", positive)
	check("pipeline", "read_unwraps", positive)
	check("pipeline", "overhead_kp_bytes", positive)
	check("blob-ranged", "gets_per_read", positive)
	check("blob-ranged", "bytes_per_read", positive)
	check("blob-ranged", "cache_hit_rate", func(v float64) bool { return v >= 0 && v <= 1 })
	md := rep.Markdown()
	for _, want := range []string{"## Machine", "## Encrypt and decrypt throughput", "## Against raw AES-GCM doing the same work", "## Random access", "## Rewrap", "## Small files", "## Pipelines at scale", "## Targets", "filippo.io/age", "| tmpfs |"} {
		if !strings.Contains(md, want) {
			t.Errorf("the report lacks %q", want)
		}
	}
	// The report ends with the targets table, which has a row for every
	// target with a status cell; no number is asserted.
	i := strings.LastIndex(md, "## Targets")
	if i < 0 {
		t.Fatal("no targets section")
	}
	table := md[i:]
	if strings.Contains(table[len("## Targets"):], "\n## ") {
		t.Error("the targets section is not the last")
	}
	names := rep.TargetNames()
	if len(names) < 20 {
		t.Errorf("%d targets: %q", len(names), names)
	}
	rows := map[string]string{}
	for line := range strings.SplitSeq(table, "\n") {
		cells := strings.Split(line, " | ")
		if len(cells) == 4 && strings.HasPrefix(line, "| ") {
			rows[strings.TrimPrefix(cells[0], "| ")] = strings.Trim(strings.TrimSuffix(cells[3], " |"), "*")
		}
	}
	for _, name := range names {
		st, ok := rows[name]
		switch {
		case !ok:
			t.Errorf("the targets table lacks %q", name)
		case st == statusMet || st == statusNotMet:
		case st == statusNotMeasured && (o.NoCLI && strings.HasPrefix(name, "CLI") || !tmpfs && strings.Contains(name, "tmpfs") || strings.HasPrefix(name, "4 KiB objects") && smallBaselineSeal == 0):
		default:
			t.Errorf("target %q: status %q", name, st)
		}
	}
	for _, want := range []string{
		"envelope.Seal", "envelope.Open", "peak RSS over inputs and output", "×raw-pread", "×raw-pwrite", "4 KiB objects, local KEK",
		"random 4 KiB read, p50", "allocations per read", "batch rewrap: KMS calls", "DataKeyCache", "DataKeyReuse renewal", "one Key Protect slot",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("the targets table lacks %q", want)
		}
	}
	if strings.Contains(table, "every peer") {
		t.Error("≥ 2× every peer is still a target")
	}
	// A run re-rendered from its JSON gives the same targets.
	js := filepath.Join(t.TempDir(), "run.json")
	if err := rep.WriteJSON(js); err != nil {
		t.Fatal(err)
	}
	again, err := ReadJSON(js)
	if err != nil {
		t.Fatal(err)
	}
	if again.TargetsTable() != rep.TargetsTable() {
		t.Errorf("the targets differ once read back from JSON:\n%s\n%s", again.TargetsTable(), rep.TargetsTable())
	}
	if testing.Verbose() {
		fmt.Println(log.String())
	}
}

// goCommand returns the go command that runs this test, if it can be found.
func goCommand() string {
	if g := os.Getenv("GO"); g != "" {
		return g
	}
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(os.Getenv("GOROOT"), "bin", "go")
}
