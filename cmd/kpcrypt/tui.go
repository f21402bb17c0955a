package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/kpcrypt/kpcrypt/internal/termsafe"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/keyprotect"
	"github.com/kpcrypt/kpcrypt/kms/pkcs11"
	"github.com/kpcrypt/kpcrypt/kms/trust"
)

// Output rules: results go to stdout; everything else goes to stderr as
// lines starting "kpcrypt: ", lowercase, one line per error.
type ui struct {
	stdin          io.Reader
	stdout, stderr io.Writer

	// resolver opens every KEK URI of the command, so that KEKs of one
	// service share a client and a token source.
	resolver kms.Resolver
	// p11 is the command's PKCS#11 provider: a module is initialised once,
	// and a token logged in to once.
	p11 *pkcs11.Provider
	// policy is the trust configuration with the environment's endpoints;
	// trustErr is set when the configuration could not be read.
	policy   *trust.Policy
	trustErr error
	// kp opens Key Protect and HPCS keys and clients, one per endpoint.
	kp *keyprotect.Opener
}

// errorf prints a failure on stderr as one line, through safeText: errors
// carry text from files, servers and the command line.
// internalPrefixes are the package names the library puts before its
// messages, which mean nothing to a user of the command.
var internalPrefixes = []string{"envelope: ", "stream: ", "keyprotect: ", "format: ", "atomicfile: ", "securefile: ", "filelock: "}

func (u *ui) errorf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	for _, p := range internalPrefixes {
		msg = strings.ReplaceAll(msg, p, "")
	}
	fmt.Fprintf(u.stderr, "kpcrypt: %s\n", safeText(msg))
}

// infof prints a message on stderr as one line, through safeText.
func (u *ui) infof(format string, args ...any) {
	fmt.Fprintf(u.stderr, "kpcrypt: %s\n", safeText(fmt.Sprintf(format, args...)))
}

// safeText makes a message safe to print: a pin-value in any word of it is
// redacted (a PIN could reach a message from a mistyped operand, or inside
// a URI a library error quotes), and every control character, line breaks
// included, is escaped, so that text from outside can neither drive the
// terminal nor print lines of its own.
func safeText(s string) string {
	if kms.HasPINValue(s) {
		// A PIN may hold spaces, so the words after it are not safe to
		// keep: redact each clause of the message (they are joined by
		// ": ") as one URI, which drops everything from the value to the
		// next attribute or the end of the clause.
		clauses := strings.Split(s, ": ")
		for i, c := range clauses {
			clauses[i] = kms.RedactURI(c)
		}
		s = strings.Join(clauses, ": ")
	}
	words := strings.Split(s, " ")
	for i, w := range words {
		// A URI already redacted, followed by punctuation of the message
		// ("…?pin-value=REDACTED: "), keeps the punctuation.
		if t := strings.TrimRight(w, `:,.;)"'`); t != w && kms.RedactURI(t) == t {
			continue
		}
		words[i] = kms.RedactURI(w)
	}
	return termsafe.Escape(strings.Join(words, " "))
}

// isTerminal reports whether w is a terminal.
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progressThreshold is the input size from which a progress bar is shown.
const progressThreshold = 8 << 20

// progressBar returns a progress bar on stderr for an input of size bytes
// (-1 if unknown), or nil when none is shown: when stderr is not a
// terminal, the input is small or quiet is set.
func (u *ui) progressBar(size int64, quiet bool, what string) *progressbar.ProgressBar {
	if quiet || size < progressThreshold || !isTerminal(u.stderr) {
		return nil
	}
	return progressbar.NewOptions64(size,
		progressbar.OptionSetWriter(u.stderr),
		progressbar.OptionSetDescription(what),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowTotalBytes(true),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100_000_000),
		progressbar.OptionClearOnFinish(),
	)
}

// progress wraps r in a progress bar on stderr when stderr is a terminal,
// the input is large and not quiet. size is the input size or -1.
func (u *ui) progress(r io.Reader, size int64, quiet bool, what string) (io.Reader, func()) {
	bar := u.progressBar(size, quiet, what)
	if bar == nil {
		return r, func() {}
	}
	pr := progressbar.NewReader(r, bar)
	return &pr, func() { bar.Finish() }
}

// fileProgress is progress for a regular input file that the library reads
// with ReadAt from its workers: it returns the source to give the library
// (a fileSource, which the library recognises as a file) and the function
// that ends the bar.
func (u *ui) fileProgress(ctx context.Context, f *os.File, size int64, quiet bool, what string) (*fileSource, func()) {
	src := &fileSource{f: f, ctx: ctx}
	bar := u.progressBar(size, quiet, what)
	if bar == nil {
		return src, func() {}
	}
	src.add = func(n int) { bar.Add(n) } // safe for concurrent use
	return src, func() { bar.Finish() }
}

// errHelp is returned after -h printed the usage of a command.
var errHelp = errors.New("help shown")

// parseFlags parses args with fs, letting flags and operands interleave
// ("encrypt in.txt --kek K" works too). It returns the operands. Its errors
// spell flags the way the help does (--kek, -o) and suggest the closest
// flag for a mistyped one.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var operands []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, errHelp
			}
			return nil, usagef("%s: %s", fs.Name(), flagError(fs, err))
		}
		if fs.NArg() == 0 {
			return operands, nil
		}
		operands = append(operands, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// flagError rewords the flag package's errors.
func flagError(fs *flag.FlagSet, err error) string {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		name = strings.TrimPrefix(name, "-")
		var names []string
		fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
		hint := ""
		if best := closest(name, names); best != "" {
			hint = fmt.Sprintf("; did you mean %s?", dashed(best))
		}
		return fmt.Sprintf("unknown flag %s%s", dashed(name), hint)
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		return fmt.Sprintf("flag %s needs a value", dashed(strings.TrimPrefix(name, "-")))
	}
	if rest, ok := strings.CutPrefix(msg, "invalid value "); ok {
		// invalid value "x" for flag -name: reason
		if i := strings.Index(rest, " for flag -"); i >= 0 {
			val, tail := rest[:i], rest[i+len(" for flag -"):]
			name, reason, _ := strings.Cut(tail, ": ")
			return fmt.Sprintf("%s %s: %s", dashed(name), val, reason)
		}
	}
	return msg
}

// dashed spells a flag as the help does: -o for one letter, --name else.
func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// helpFor prints a command's usage and flags to w when asked with -h, in
// the --flag spelling used everywhere else.
func helpFor(fs *flag.FlagSet, w io.Writer, synopsis string) {
	fmt.Fprintf(w, "Usage: %s\n\nFlags:\n", synopsis)
	printFlags(fs, w)
}

// printFlags lists fs's flags as "  --name VALUE" lines, each followed by its
// usage, with the default when it is not the zero value.
func printFlags(fs *flag.FlagSet, w io.Writer) {
	fs.VisitAll(func(f *flag.Flag) {
		value, usage := flag.UnquoteUsage(f)
		line := "  " + dashed(f.Name)
		if value != "" {
			line += " " + value
		}
		fmt.Fprintln(w, line)
		def := ""
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "[]" {
			def = fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "        %s%s\n", usage, def)
	})
}

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }
