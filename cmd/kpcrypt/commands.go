package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// command is one of kpcrypt's commands.
type command struct {
	name string
	run  func(ctx context.Context, u *ui, args []string) error
}

// allCommands returns kpcrypt's commands, in the order the help lists
// them. (A function, not a variable: completion, one of them, reads them.)
func allCommands() []command {
	return []command{
		{"encrypt", cmdEncrypt},
		{"decrypt", cmdDecrypt},
		{"inspect", cmdInspect},
		{"rewrap", cmdRewrap},
		{"scan", cmdScan},
		{"keygen", cmdKeygen},
		{"key", cmdKey},
		{"version", cmdVersion},
		{"completion", cmdCompletion},
	}
}

func findCommand(name string) *command {
	cs := allCommands()
	for i := range cs {
		if cs[i].name == name {
			return &cs[i]
		}
	}
	return nil
}

// dispatch runs the command args name.
func dispatch(ctx context.Context, u *ui, args []string) error {
	name, rest := args[0], args[1:]
	switch name {
	case "help", "-h", "--help":
		if len(rest) > 0 {
			// "kpcrypt help CMD" is "kpcrypt CMD -h".
			if c := findCommand(rest[0]); c != nil {
				return c.run(ctx, u, []string{"-h"})
			}
			return usagef("help: no command %q%s", rest[0], didYouMean(rest[0], commandNames()))
		}
		fmt.Fprint(u.stdout, usage)
		return nil
	case "--version", "-version":
		return cmdVersion(ctx, u, rest)
	}
	if c := findCommand(name); c != nil {
		return c.run(ctx, u, rest)
	}
	return usagef("unknown command %q%s", name, didYouMean(name, commandNames()))
}

func commandNames() []string {
	var names []string
	for _, c := range allCommands() {
		names = append(names, c.name)
	}
	return append(names, "help")
}

// didYouMean suggests the closest of candidates to a mistyped word, when
// one is close: `; did you mean "decrypt"?`, or nothing.
func didYouMean(word string, candidates []string) string {
	if best := closest(word, candidates); best != "" {
		return fmt.Sprintf("; did you mean %q?", best)
	}
	return ""
}

// closest returns the candidate nearest to word by edit distance, if it is
// near enough to be a typo (at most one edit per three letters), or "".
func closest(word string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if d := editDistance(strings.ToLower(word), c); d < bestD {
			best, bestD = c, d
		}
	}
	if best == "" || bestD > max(1, len(word)/3) {
		return ""
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// version is the module version kpcrypt was built from, with the VCS
// revision when the build recorded one.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " " + s.Value[:12]
		}
		if s.Key == "vcs.modified" && s.Value == "true" {
			v += "+dirty"
		}
	}
	return v
}

func cmdVersion(ctx context.Context, u *ui, args []string) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Fprintln(u.stdout, "Usage: kpcrypt version\n\nPrints the version of kpcrypt, from the build's module information.")
		return errHelp
	}
	if len(args) > 0 {
		return usagef("version: takes no arguments")
	}
	fmt.Fprintf(u.stdout, "kpcrypt %s (%s, %s/%s)\n", version(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return nil
}
