package kpbench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
	for _, c := range throughputCases {
		for _, op := range []string{"encrypt", "decrypt"} {
			k := c + "/" + op
			if o.NoCLI && strings.HasPrefix(c, "cli-") {
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
	md := rep.Markdown()
	for _, want := range []string{"## Machine", "## Encrypt and decrypt throughput", "## Random access", "## Rewrap", "## Small files", "## Targets", "filippo.io/age"} {
		if !strings.Contains(md, want) {
			t.Errorf("the report lacks %q", want)
		}
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
