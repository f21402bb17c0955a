package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestREADME runs the README's sh blocks as written, in order, in one
// shell, from a scratch copy of the repository's root that holds bin/ (a
// "make build" there does nothing more: the binaries are built). sh-pkcs11
// blocks run where SoftHSM2 is installed.
func TestREADME(t *testing.T) {
	if testing.Short() {
		t.Skip("the README's examples take a few seconds")
	}
	if runtime.GOOS != "linux" {
		t.Skip("the README's shell examples are written for Linux")
	}
	root := t.TempDir()
	bin := filepath.Join(root, "bin")
	os.Mkdir(bin, 0o755)
	for name, pkg := range map[string]string{"kpcrypt": ".", "kplocal": "../kplocal"} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, name), pkg).CombinedOutput(); err != nil {
			t.Fatalf("building %s: %v\n%s", name, err, out)
		}
	}
	tools := filepath.Join(root, "tools")
	os.Mkdir(tools, 0o755)
	// make build: the binaries are in bin/ already.
	os.WriteFile(filepath.Join(tools, "make"), []byte("#!/bin/sh\n[ \"$*\" = build ] && exit 0\necho \"make $*: not in this test\" >&2; exit 1\n"), 0o755)

	var script strings.Builder
	script.WriteString("set -euo pipefail\n")
	ran := 0
	_, err := exec.LookPath("softhsm2-util")
	pkcs11OK := err == nil
	for _, b := range readmeBlocks(t) {
		switch {
		case b.kind == "sh":
		case b.kind == "sh-pkcs11" && pkcs11OK:
		case b.kind == "sh-pkcs11" && os.Getenv("KPCRYPT_TEST_REQUIRE_PKCS11") != "":
			t.Fatal("SoftHSM2's softhsm2-util is not installed, and the PKCS#11 example must run")
		default:
			continue
		}
		script.WriteString("echo '== README.md:" + itoa(b.line) + "' >&2\n" + b.text)
		ran++
	}
	if ran < 3 {
		t.Fatalf("only %d sh blocks in README.md", ran)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script.String())
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "PATH="+tools+":"+os.Getenv("PATH"), "HOME="+root, "TMPDIR="+root)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	// The background servers the examples start end with the script.
	syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	if err != nil {
		t.Fatalf("the README's examples failed: %v\n%s", err, out.String())
	}
}
