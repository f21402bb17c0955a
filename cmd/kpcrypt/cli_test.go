package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kpcrypt/kpcrypt/internal/atomicfile"
	"github.com/rogpeppe/go-internal/testscript"
)

// The CLI tests run the command as a user would, in processes of its own:
// the test binary itself, run as "kpcrypt" (testscript's Main), so that
// coverage counts. kpcryptBin is its path.
var kpcryptBin string

func TestMain(m *testing.M) {
	testscript.Main(cliTests{m}, map[string]func(){"kpcrypt": func() { os.Exit(mainCode()) }})
}

// cliTests sets up the tests' environment around m.Run, only when the test
// binary runs as the tests (not as the kpcrypt command).
type cliTests struct{ m *testing.M }

func (c cliTests) Run() int {
	dir, err := os.MkdirTemp("", "kpcrypt-cli-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if kpcryptBin, err = exec.LookPath("kpcrypt"); err != nil {
		fmt.Fprintln(os.Stderr, "testscript put no kpcrypt in PATH:", err)
		return 1
	}
	// The commands run with no trust configuration and no Key Protect
	// settings of the user's, unless a test gives them: an empty
	// configuration directory, and nothing routed through a proxy.
	os.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	for _, v := range []string{"KPCRYPT_TRUST_FILE", "KPCRYPT_KMS_TIMEOUT", "IBMCLOUD_API_KEY", "IBMCLOUD_KP_ENDPOINT", "IBMCLOUD_IAM_ENDPOINT",
		"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"} {
		os.Unsetenv(v)
	}
	return c.m.Run()
}

type result struct {
	stdout, stderr []byte
	code           int
}

// kp runs kpcrypt in dir with stdin and returns its outputs and status.
func kp(t *testing.T, dir string, stdin []byte, args ...string) result {
	t.Helper()
	return kpEnv(t, dir, append(os.Environ(), "LC_ALL=C"), stdin, args...)
}

// kpEnv runs kpcrypt in dir with the environment env.
func kpEnv(t *testing.T, dir string, env []string, stdin []byte, args ...string) result {
	t.Helper()
	cmd := exec.Command(kpcryptBin, args...)
	cmd.Dir, cmd.Env = dir, env
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{stdout.Bytes(), stderr.Bytes(), code}
}

func (r result) expect(t *testing.T, code int, stderrHas ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d; stderr: %s", r.code, code, r.stderr)
	}
	for _, s := range stderrHas {
		if !strings.Contains(string(r.stderr), s) {
			t.Fatalf("stderr %q lacks %q", r.stderr, s)
		}
	}
	if code != 0 && code != 2 {
		// A failure is one line.
		if n := bytes.Count(r.stderr, []byte("\n")); n != 1 {
			t.Fatalf("failure printed %d lines, want 1: %q", n, r.stderr)
		}
	}
}

// setup makes a directory with a local KEK and a plaintext file.
func setup(t *testing.T, size int) (dir string, plaintext []byte) {
	t.Helper()
	dir = t.TempDir()
	kp(t, dir, nil, "keygen", "-o", "kek.json").expect(t, 0)
	plaintext = make([]byte, size)
	rand.Read(plaintext)
	if err := os.WriteFile(filepath.Join(dir, "plain.bin"), plaintext, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, plaintext
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustNotExist(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s exists after a failure (%v)", path, err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	for _, e := range entries {
		if atomicfile.IsTemp(e.Name()) {
			t.Fatalf("temporary file %s left behind", e.Name())
		}
	}
}

func TestKeygen(t *testing.T) {
	dir := t.TempDir()
	r := kp(t, dir, nil, "keygen", "-o", "kek.json")
	r.expect(t, 0, "created local:kek.json")
	if got := strings.TrimSpace(string(r.stdout)); got != "local:kek.json" {
		t.Fatalf("keygen printed %q, want the URI", got)
	}
	fi, err := os.Stat(filepath.Join(dir, "kek.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v", err, fi.Mode())
	}
	kp(t, dir, nil, "keygen", "-o", "kek.json").expect(t, 1, "exists")

	r = kp(t, dir, nil, "keygen", "--rotate", "kek.json")
	r.expect(t, 0, "is now current (2 versions)")
	v2 := strings.TrimSpace(string(r.stdout))
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "-o", "f.kpc", "kek.json").expect(t, 0)
	var h struct {
		Slots []struct {
			KeyVersion string `json:"key_version"`
		} `json:"slots"`
	}
	json.Unmarshal(kp(t, dir, nil, "inspect", "--json", "f.kpc").stdout, &h)
	if len(h.Slots) != 1 || h.Slots[0].KeyVersion != v2 {
		t.Fatalf("file wrapped under %+v, want the rotated version %s", h.Slots, v2)
	}

	kp(t, dir, nil, "keygen").expect(t, 2, "either -o PATH or --rotate PATH")
	kp(t, dir, nil, "keygen", "--rotate", "missing.json").expect(t, 1, "not found")
	os.Chmod(filepath.Join(dir, "kek.json"), 0o644)
	kp(t, dir, nil, "keygen", "--rotate", "kek.json").expect(t, 1, "chmod 600")
}

func TestEncryptDecryptFiles(t *testing.T) {
	dir, pt := setup(t, 300_000)
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "-o", "f.kpc", "plain.bin").expect(t, 0)
	ct := readFile(t, filepath.Join(dir, "f.kpc"))
	if bytes.Contains(ct, pt[:64]) {
		t.Fatal("ciphertext contains plaintext")
	}
	// With the KEK named, and with no --kek: the slot's URI is opened.
	kp(t, dir, nil, "decrypt", "--kek", "local:kek.json", "-o", "out1", "f.kpc").expect(t, 0)
	kp(t, dir, nil, "decrypt", "--kek", "local:kek.json", "-o", "out2", "f.kpc").expect(t, 0)
	// Operands may come before flags.
	kp(t, dir, nil, "decrypt", "--kek", "local:kek.json", "f.kpc", "-o", "out3").expect(t, 0)
	for _, out := range []string{"out1", "out2", "out3"} {
		if !bytes.Equal(readFile(t, filepath.Join(dir, out)), pt) {
			t.Fatalf("%s differs from the plaintext", out)
		}
		if fi, _ := os.Stat(filepath.Join(dir, out)); fi.Mode().Perm() != 0o600 {
			t.Fatalf("plaintext output mode %v, want 0600", fi.Mode().Perm())
		}
	}
}

func TestStdinStdout(t *testing.T) {
	dir, pt := setup(t, 100_000)
	r := kp(t, dir, pt, "encrypt", "--kek", "local:kek.json")
	r.expect(t, 0)
	ct := r.stdout
	r = kp(t, dir, ct, "decrypt", "--kek", "local:kek.json")
	r.expect(t, 0)
	if !bytes.Equal(r.stdout, pt) {
		t.Fatal("stdin/stdout round trip differs")
	}
	// "-" means the same.
	r = kp(t, dir, pt, "encrypt", "--kek", "local:kek.json", "-o", "-", "-")
	r.expect(t, 0)
	r = kp(t, dir, r.stdout, "decrypt", "--kek", "local:kek.json", "-o", "-", "-")
	r.expect(t, 0)
	if !bytes.Equal(r.stdout, pt) {
		t.Fatal("'-' round trip differs")
	}
	// A streamed file records no size.
	os.WriteFile(filepath.Join(dir, "s.kpc"), ct, 0o644)
	if out := string(kp(t, dir, nil, "inspect", "s.kpc").stdout); !strings.Contains(out, "unknown (streamed)") {
		t.Fatalf("inspect of a streamed file: %s", out)
	}
}

func TestInspect(t *testing.T) {
	dir, _ := setup(t, 70_000)
	kp(t, dir, nil, "keygen", "-o", "kek2.json").expect(t, 0)
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "--kek", "local:kek2.json",
		"--chunk-size", "16KiB", "--context", "tenant=a", "-o", "f.kpc", "plain.bin").expect(t, 0)
	// Inspect calls no KEK: it works with the key files gone.
	os.Remove(filepath.Join(dir, "kek.json"))
	os.Remove(filepath.Join(dir, "kek2.json"))
	r := kp(t, dir, nil, "inspect", "f.kpc")
	r.expect(t, 0)
	for _, want := range []string{"format version:  1", "AES-256-GCM", "chunk size:      16384 bytes",
		"plaintext size:  70000 bytes", "key slots:       2", "local:kek.json (key version ", "local:kek2.json", "tenant=a"} {
		if !strings.Contains(string(r.stdout), want) {
			t.Errorf("inspect lacks %q:\n%s", want, r.stdout)
		}
	}
	r = kp(t, dir, nil, "inspect", "--json", "f.kpc")
	r.expect(t, 0)
	var h struct {
		FormatVersion int               `json:"format_version"`
		Algorithm     string            `json:"algorithm"`
		ChunkSize     int               `json:"chunk_size"`
		PlaintextSize int64             `json:"plaintext_size"`
		Context       map[string]string `json:"context"`
		Slots         []struct {
			KEK        string `json:"kek"`
			KeyVersion string `json:"key_version"`
		} `json:"slots"`
	}
	if err := json.Unmarshal(r.stdout, &h); err != nil {
		t.Fatalf("inspect --json: %v\n%s", err, r.stdout)
	}
	if h.FormatVersion != 1 || h.ChunkSize != 16384 || h.PlaintextSize != 70000 || h.Context["tenant"] != "a" ||
		len(h.Slots) != 2 || h.Slots[0].KEK != "local:kek.json" || h.Slots[1].KEK != "local:kek2.json" ||
		h.Slots[0].KeyVersion == "" || h.Algorithm == "" {
		t.Fatalf("inspect --json: %+v", h)
	}
	kp(t, dir, nil, "inspect", "plain.bin").expect(t, 1, "plain.bin: invalid envelope header: magic")
	// With no FILE, inspect reads standard input, as encrypt and decrypt do.
	if r := kp(t, dir, readFile(t, filepath.Join(dir, "f.kpc")), "inspect"); r.code != 0 || !strings.Contains(string(r.stdout), "file:            standard input") {
		t.Fatalf("inspect from standard input: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	kp(t, dir, nil, "inspect", "a", "b").expect(t, 2, "one FILE at most")
}

func TestMultipleKEKs(t *testing.T) {
	dir, pt := setup(t, 5000)
	kp(t, dir, nil, "keygen", "-o", "kek2.json").expect(t, 0)
	kp(t, dir, nil, "keygen", "-o", "other.json").expect(t, 0)
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "--kek", "local:kek2.json", "-o", "f.kpc", "plain.bin").expect(t, 0)
	for _, k := range []string{"local:kek.json", "local:kek2.json"} {
		r := kp(t, dir, nil, "decrypt", "--kek", k, "f.kpc")
		r.expect(t, 0)
		if !bytes.Equal(r.stdout, pt) {
			t.Fatalf("decrypt with %s differs", k)
		}
	}
	kp(t, dir, nil, "decrypt", "--kek", "local:other.json", "-o", "out", "f.kpc").
		expect(t, 1, "f.kpc: no --kek can open any of this file's 2 key slots", "wrong key")
	mustNotExist(t, filepath.Join(dir, "out"))
}

func TestFailuresLeaveNoOutput(t *testing.T) {
	dir, _ := setup(t, 200_000)
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "-o", "f.kpc", "plain.bin").expect(t, 0)
	ct := readFile(t, filepath.Join(dir, "f.kpc"))

	tampered := bytes.Clone(ct)
	tampered[len(tampered)-70_000] ^= 0x10
	os.WriteFile(filepath.Join(dir, "tampered.kpc"), tampered, 0o644)
	kp(t, dir, nil, "decrypt", "--kek", "local:kek.json", "-o", "out", "tampered.kpc").expect(t, 1, "tampered.kpc: chunk 1: authentication failed")
	mustNotExist(t, filepath.Join(dir, "out"))

	for _, cut := range []int{len(ct) - 1, len(ct) - 100, 4500 + 65552} {
		os.WriteFile(filepath.Join(dir, "truncated.kpc"), ct[:cut], 0o644)
		r := kp(t, dir, nil, "decrypt", "--kek", "local:kek.json", "-o", "out", "truncated.kpc")
		r.expect(t, 1, "truncated.kpc: ")
		mustNotExist(t, filepath.Join(dir, "out"))
	}
	kp(t, dir, nil, "decrypt", "-o", "out", "plain.bin").expect(t, 1, "plain.bin: invalid envelope header")
	mustNotExist(t, filepath.Join(dir, "out"))

	// An existing output is never overwritten without --force, and a
	// failure with --force leaves it untouched.
	os.WriteFile(filepath.Join(dir, "existing"), []byte("keep me"), 0o600)
	kp(t, dir, nil, "decrypt", "--kek", "local:kek.json", "-o", "existing", "f.kpc").expect(t, 1, "existing: file exists (use --force to overwrite)")
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "-o", "existing", "plain.bin").expect(t, 1, "file exists")
	kp(t, dir, nil, "decrypt", "--kek", "local:kek.json", "--force", "-o", "existing", "tampered.kpc").expect(t, 1, "authentication failed")
	if got := readFile(t, filepath.Join(dir, "existing")); string(got) != "keep me" {
		t.Fatalf("existing output changed to %d bytes", len(got))
	}
	kp(t, dir, nil, "decrypt", "--kek", "local:kek.json", "--force", "-o", "existing", "f.kpc").expect(t, 0)
	if got := readFile(t, filepath.Join(dir, "existing")); !bytes.Equal(got, readFile(t, filepath.Join(dir, "plain.bin"))) {
		t.Fatal("--force did not replace the output")
	}

	// Input and output the same file.
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "--force", "-o", "plain.bin", "plain.bin").expect(t, 1, "same file")
	// A KEK that cannot be opened: nothing is created.
	kp(t, dir, nil, "encrypt", "--kek", "local:nope.json", "-o", "new.kpc", "plain.bin").expect(t, 1, "not found")
	mustNotExist(t, filepath.Join(dir, "new.kpc"))
}

func TestContext(t *testing.T) {
	dir, _ := setup(t, 1000)
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "--context", "tenant=b", "-o", "f.kpc", "plain.bin").expect(t, 0)
	kp(t, dir, nil, "decrypt", "--kek", "local:kek.json", "--context", "tenant=b", "-o", "ok", "f.kpc").expect(t, 0)
	kp(t, dir, nil, "decrypt", "--kek", "local:kek.json", "--context", "tenant=a", "-o", "out", "f.kpc").expect(t, 1, "encryption context mismatch")
	mustNotExist(t, filepath.Join(dir, "out"))
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "--context", "novalue", "plain.bin").expect(t, 2)
}

func TestCompression(t *testing.T) {
	dir := t.TempDir()
	kp(t, dir, nil, "keygen", "-o", "kek.json").expect(t, 0)
	pt := bytes.Repeat([]byte("compressible record\n"), 20_000)
	os.WriteFile(filepath.Join(dir, "log.txt"), pt, 0o600)
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "--compress", "zstd", "-o", "log.kpc", "log.txt").expect(t, 0)
	if n := len(readFile(t, filepath.Join(dir, "log.kpc"))); n > len(pt)/10 {
		t.Fatalf("compressed file is %d bytes", n)
	}
	if out := string(kp(t, dir, nil, "inspect", "log.kpc").stdout); !strings.Contains(out, "compression:     zstd") {
		t.Fatalf("inspect:\n%s", out)
	}
	r := kp(t, dir, nil, "decrypt", "--kek", "local:kek.json", "log.kpc")
	r.expect(t, 0)
	if !bytes.Equal(r.stdout, pt) {
		t.Fatal("compressed round trip differs")
	}
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "--compress", "gzip", "log.txt").expect(t, 2)
}

func TestUsageErrors(t *testing.T) {
	dir, _ := setup(t, 10)
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"encrypt", "plain.bin"},
		{"encrypt", "--kek", "local:kek.json", "a", "b"},
		{"encrypt", "--bogus"},
		{"decrypt", "a", "b"},
		{"encrypt", "--kek", "local:kek.json", "--chunk-size", "lots", "plain.bin"},
	} {
		r := kp(t, dir, nil, args...)
		if r.code != 2 {
			t.Errorf("kpcrypt %v: exit %d, want 2 (%s)", args, r.code, r.stderr)
		}
	}
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "--chunk-size", "1KiB", "plain.bin").expect(t, 2, "out of range: give 4KiB to 16MiB")
	r := kp(t, dir, nil, "encrypt", "-h")
	if r.code != 0 || !strings.Contains(string(r.stdout), "-kek") {
		t.Fatalf("encrypt -h: %d %s", r.code, r.stdout)
	}
}

// slotsOf returns the KEK URI and key version of each slot of a file, from
// kpcrypt inspect --json.
func slotsOf(t *testing.T, dir, file string) [][2]string {
	t.Helper()
	r := kp(t, dir, nil, "inspect", "--json", file)
	r.expect(t, 0)
	var h struct {
		Slots []struct {
			KEK        string `json:"kek"`
			KeyVersion string `json:"key_version"`
		} `json:"slots"`
	}
	if err := json.Unmarshal(r.stdout, &h); err != nil {
		t.Fatalf("inspect --json: %v\n%s", err, r.stdout)
	}
	var out [][2]string
	for _, s := range h.Slots {
		out = append(out, [2]string{s.KEK, s.KeyVersion})
	}
	return out
}
