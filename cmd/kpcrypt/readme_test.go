package main

import (
	"bufio"
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

// readmeBlock is a fenced code block of README.md.
type readmeBlock struct {
	kind string // the fence's info string: sh, sh-norun, sh-pkcs11, json, go
	line int
	text string
}

func readmeBlocks(t *testing.T) []readmeBlock {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []readmeBlock
	var cur *readmeBlock
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		switch {
		case cur == nil && strings.HasPrefix(l, "```"):
			cur = &readmeBlock{kind: strings.TrimPrefix(l, "```"), line: n}
		case cur != nil && l == "```":
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.text += l + "\n"
		}
	}
	return blocks
}

// TestREADMECommandLines checks every kpcrypt command line of the README,
// run or not: its command exists, and so does each flag it gives, so that
// the README cannot drift from the command.
func TestREADMECommandLines(t *testing.T) {
	u := &ui{}
	u.resolver = u.newResolver()
	help := map[string]string{}
	checked := 0
	for _, b := range readmeBlocks(t) {
		if !strings.HasPrefix(b.kind, "sh") {
			continue
		}
		for i, line := range strings.Split(b.text, "\n") {
			if c := strings.Index(line, " #"); c >= 0 {
				line = line[:c]
			}
			words := strings.Fields(line)
			for j, w := range words {
				if w != "kpcrypt" || j+1 >= len(words) {
					continue
				}
				name := words[j+1]
				if findCommand(name) == nil {
					t.Errorf("README.md:%d: no command %q", b.line+i+1, name)
					continue
				}
				if _, ok := help[name]; !ok {
					help[name] = helpText(context.Background(), u, name)
				}
				text := help[name]
				if name == "key" && j+2 < len(words) {
					if !strings.Contains(keyUsage, "\n  "+words[j+2]+" ") {
						t.Errorf("README.md:%d: no key command %q", b.line+i+1, words[j+2])
					}
				}
				for _, f := range words[j+2:] {
					if f == "&&" || f == "||" || f == ";" || f == "|" {
						break
					}
					if !strings.HasPrefix(f, "-") || f == "-" {
						continue
					}
					f, _, _ = strings.Cut(f, "=")
					f = strings.TrimRight(f, ";")
					if !strings.Contains(text, f) {
						t.Errorf("README.md:%d: kpcrypt %s has no flag %s", b.line+i+1, name, f)
					}
					checked++
				}
			}
		}
	}
	if checked < 20 {
		t.Fatalf("only %d flags checked: the README parser found too little", checked)
	}
}

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

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}
