//go:build darwin || dragonfly || freebsd || linux || netbsd || openbsd

package atomicfile

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/kpcrypt/kpcrypt/internal/filelock"
)

// The helper process is this test binary run again with helperEnv set: it
// does what helperEnv says in the directory helperDirEnv, then exits or, for
// "write", waits to be killed.
const (
	helperEnv    = "ATOMICFILE_TEST_HELPER"
	helperDirEnv = "ATOMICFILE_TEST_DIR"
	helperNamed  = "ATOMICFILE_TEST_NAMED"
)

// secret is the plaintext the killed writer writes.
var secret = bytes.Repeat([]byte("TOP-SECRET-PLAINTEXT "), 50_000)

func TestHelperProcess(t *testing.T) {
	what := os.Getenv(helperEnv)
	if what == "" {
		t.Skip("run as a helper process only")
	}
	dir := os.Getenv(helperDirEnv)
	forceNamed = os.Getenv(helperNamed) == "1"
	switch what {
	case "write":
		// Write the plaintext, say so, and wait to be killed.
		f, err := Create(filepath.Join(dir, "out"), 0o600, false)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(secret); err != nil {
			t.Fatal(err)
		}
		kind := "named"
		if f.tmp == "" {
			kind = "unnamed"
		}
		os.Stdout.WriteString("ready " + kind + "\n")
		io.Copy(io.Discard, os.Stdin) // until killed
		t.Fatal("not killed")
	case "umask":
		// Set the umask before this process starts any goroutine of its
		// own; nothing here reads it back.
		syscall.Umask(0o027)
		for name, perm := range map[string]os.FileMode{"public": 0o666, "private": 0o600} {
			if err := WriteFile(filepath.Join(dir, name), []byte(name), perm, false); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// helper runs the helper process.
func helper(t *testing.T, what, dir string, named bool) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+what, helperDirEnv+"="+dir)
	if named {
		cmd.Env = append(cmd.Env, helperNamed+"=1")
	}
	cmd.Stderr = os.Stderr
	return cmd
}

// killedWriter starts a writer, SIGKILLs it once it has written the
// plaintext, and returns the kind of temporary file it used.
func killedWriter(t *testing.T, dir string, named bool) string {
	t.Helper()
	cmd := helper(t, "write", dir, named)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if !strings.HasPrefix(line, "ready ") {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper said %q (%v)", line, err)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	return strings.TrimSpace(strings.TrimPrefix(line, "ready "))
}

// holdingSecret returns the names of the files of dir that hold any of the
// plaintext.
func holdingSecret(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		if bytes.Contains(b, secret[:64]) {
			names = append(names, e.Name())
		}
	}
	return names
}

func tmpfileWorks(dir string) bool {
	f, err := openUnnamed(dir, "probe", 0o600)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// TestKilledWriterLeavesNothing: on Linux with O_TMPFILE, a writer SIGKILLed
// mid-write leaves no file at all.
func TestKilledWriterLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	if runtime.GOOS != "linux" || !tmpfileWorks(dir) {
		t.Skip("no O_TMPFILE here")
	}
	if kind := killedWriter(t, dir, false); kind != "unnamed" {
		t.Fatalf("the writer used a %s temporary file where O_TMPFILE works", kind)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("a killed writer left %v", entries)
	}
}

// TestKilledWriterLeftoverRemoved: with a named temporary file, a writer
// SIGKILLed mid-write leaves a file of recognisable name, which the next
// Create in that directory removes.
func TestKilledWriterLeftoverRemoved(t *testing.T) {
	dir := t.TempDir()
	if kind := killedWriter(t, dir, true); kind != "named" {
		t.Fatalf("the writer used a %s temporary file", kind)
	}
	left := holdingSecret(t, dir)
	if len(left) != 1 || !IsTemp(left[0]) {
		t.Fatalf("the killed writer left %v, want one temporary file", left)
	}
	for _, named := range []bool{true, false} {
		forceNamed = named
		f, err := Create(filepath.Join(dir, "next"), 0o600, false)
		forceNamed = false
		if err != nil {
			t.Fatal(err)
		}
		f.Abort()
	}
	if left := holdingSecret(t, dir); len(left) != 0 {
		t.Fatalf("after the next Create, %v still hold the plaintext", left)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("left: %v", entries)
	}
}

// TestLiveWriterKept: Create removes no temporary file whose lock is held,
// nor one it does not recognise, nor one that is not a regular file.
func TestLiveWriterKept(t *testing.T) {
	dir := t.TempDir()
	forceNamed = true
	defer func() { forceNamed = false }()
	live, err := Create(filepath.Join(dir, "live"), 0o600, false)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Abort()
	live.Write([]byte("live"))

	// A temporary file locked by hand, as another process's writer would.
	held := filepath.Join(dir, ".held"+tmpInfix+"0123456789abcdef")
	h, err := os.OpenFile(held, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := filelock.Lock(t.Context(), h, true); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, ".stale"+tmpInfix+"fedcba9876543210")
	os.WriteFile(stale, []byte("stale"), 0o600)
	other := filepath.Join(dir, ".other.tmp-12345")
	os.WriteFile(other, []byte("other"), 0o600)
	subdir := filepath.Join(dir, ".sub"+tmpInfix+"00112233aabbccdd")
	os.Mkdir(subdir, 0o700)

	for _, named := range []bool{true, false} {
		forceNamed = named
		f, err := Create(filepath.Join(dir, "next"), 0o600, false)
		if err != nil {
			t.Fatal(err)
		}
		f.Abort()
	}
	for _, p := range []string{live.tmp, held, other, subdir} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s: %v", filepath.Base(p), err)
		}
	}
	if _, err := os.Lstat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the unlocked temporary file was not removed: %v", err)
	}
	if err := live.Commit(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "live")); string(b) != "live" {
		t.Fatalf("live file holds %q", b)
	}
}

// TestUmask: the umask applies to the permissions given, with either kind
// of temporary file.
func TestUmask(t *testing.T) {
	for _, named := range []bool{false, true} {
		dir := t.TempDir()
		if out, err := helper(t, "umask", dir, named).Output(); err != nil {
			t.Fatalf("helper: %v\n%s", err, out)
		}
		for name, want := range map[string]os.FileMode{"public": 0o640, "private": 0o600} {
			fi, err := os.Stat(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode().Perm(); got != want {
				t.Errorf("named=%v: %s has mode %04o, want %04o", named, name, got, want)
			}
		}
	}
}
