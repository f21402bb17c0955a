package main

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
