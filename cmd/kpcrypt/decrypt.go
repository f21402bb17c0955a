package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/stream"
)

func cmdDecrypt(ctx context.Context, u *ui, args []string) error {
	fs := flag.NewFlagSet("decrypt", flag.ContinueOnError)
	var keks, contexts listFlag
	fs.Var(&keks, "kek", "`URI` of a KEK to try on the file's key slots (repeatable); without it, the slots' own URIs are opened")
	out := fs.String("o", "", "write to `OUT` instead of standard output")
	force := fs.Bool("force", false, "overwrite OUT if it exists")
	quiet := fs.Bool("quiet", false, "show no progress bar")
	fs.Var(&contexts, "context", "require the encryption context to hold `key=value` (repeatable)")
	kmsTimeout := kmsTimeoutFlag(fs)
	operands, err := parseFlags(fs, args)
	if errors.Is(err, errHelp) {
		helpFor(fs, u.stdout, "kpcrypt decrypt [--kek URI]... [-o OUT] [--force] [IN]")
		return errHelp
	}
	if err != nil {
		return err
	}
	if err := refusePINValue(keks...); err != nil {
		return err
	}
	if err := u.checkKEKFlags("decrypt", keks...); err != nil {
		return err
	}
	if len(operands) > 1 {
		return usagef("decrypt: one input at most, got %d", len(operands))
	}
	required, err := parseContext(contexts)
	if err != nil {
		return usagef("decrypt: %v", err)
	}
	if err := checkTimeout("decrypt", *kmsTimeout); err != nil {
		return err
	}

	in, err := openInput(u, operand(operands))
	if err != nil {
		return err
	}
	defer in.Close()
	o, err := openOutput(u, *out, in, *force, 0o600) // plaintext: never more than the owner's
	if err != nil {
		return err
	}
	defer o.abort()

	keyring, err := u.slotKeyring(ctx, keks)
	if err != nil {
		return err
	}
	d := &envelope.Decrypter{Keyring: keyring, Context: required}
	var src io.Reader
	var done func()
	if in.regular() {
		// The library's workers read the file themselves, in parallel.
		src, done = u.fileProgress(ctx, in.file, in.size, *quiet, "decrypting")
	} else {
		var p io.Reader
		p, done = u.progress(in, in.size, *quiet, "decrypting")
		src = ctxReader{ctx, p}
	}
	defer done()
	kctx, cancel := context.WithTimeout(ctx, *kmsTimeout)
	defer cancel()
	// A rewrap rewrites the slot tables in place under an exclusive lock:
	// read the header under a shared one, so that it is never read torn.
	unlock, err := in.lockShared(kctx)
	if err != nil {
		return err
	}
	r, err := d.NewReader(kctx, src)
	unlock()
	cancel()
	if err != nil {
		return fmt.Errorf("%s: %w", in.name, explain(err, len(keks) > 0))
	}
	defer r.Close()
	r.SetContext(ctx) // an interrupt stops the copy between chunks
	var plain io.Reader = r
	if *out == "" && isTerminal(u.stdout) {
		// As age does: binary plaintext is not printed on a terminal,
		// where it would garble the screen or play escape sequences; text
		// is. "-o -" prints whatever it is.
		br := bufio.NewReaderSize(r, 1024)
		head, _ := br.Peek(512)
		if !printable(head) {
			return fmt.Errorf("refusing to print binary plaintext to a terminal: use -o OUT, or -o - to print it anyway")
		}
		plain = br
	}
	if _, err := io.Copy(o, plain); err != nil {
		return fmt.Errorf("%s: %w", in.name, explain(explainTruncation(in, err), len(keks) > 0))
	}
	return o.commit(u)
}

// printable reports whether b looks like text: valid UTF-8 (a sequence
// cut at the end allowed) without control characters but tab, newline and
// carriage return.
func printable(b []byte) bool {
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		if r == utf8.RuneError && size <= 1 {
			return len(b) < utf8.UTFMax && !utf8.FullRune(b) // a rune cut by the peek
		}
		if r != '\t' && r != '\n' && r != '\r' && (unicode.IsControl(r) || r == 0x7f) {
			return false
		}
		b = b[size:]
	}
	return true
}

// explain rewords the library's errors for the command line: each cause
// once, each KEK named once, and the words a user knows.
func explain(err error, kekGiven bool) error {
	var nk *envelope.NoKEKError
	if errors.As(err, &nk) {
		who := "no --kek"
		if !kekGiven {
			who = "no KEK named by the file"
		}
		s := "s"
		if nk.Slots == 1 {
			s = ""
		}
		msg := fmt.Sprintf("%s can open any of this file's %d key slot%s (%s)", who, nk.Slots, s, strings.Join(nk.URIs, ", "))
		var causes []string
		for _, e := range nk.Errors {
			c := causeText(e, nk.URIs)
			if !slices.Contains(causes, c) {
				causes = append(causes, c)
			}
		}
		if len(causes) > 0 {
			msg += ": " + strings.Join(causes, "; ")
		}
		return errors.New(msg)
	}
	var ce *stream.ChunkError
	switch {
	case errors.Is(err, stream.ErrTruncated):
		return errors.New("truncated: the file ends before its final chunk (it was cut short, or is still being written)")
	case errors.As(err, &ce) && errors.Is(err, stream.ErrAuthentication):
		return fmt.Errorf("chunk %d: authentication failed: the file is truncated or modified", ce.Index)
	}
	return err
}

// causeText is one slot's error without the KEK URIs the message already
// names ("unwrap with KEK crn:…: keyprotect unwrap: …" repeated the CRN).
func causeText(err error, uris []string) string {
	var ke *kms.Error
	if errors.As(err, &ke) && slices.Contains(uris, ke.URI) {
		return ke.Err.Error()
	}
	return err.Error()
}

// explainTruncation says "truncated" when the size of a regular input file
// proves it: shorter than its header says the file is.
func explainTruncation(in *input, err error) error {
	if !in.regular() || !errors.Is(err, stream.ErrAuthentication) {
		return err
	}
	h, herr := envelope.Inspect(io.NewSectionReader(in.file, 0, in.size))
	if herr != nil || h.PlaintextSize < 0 {
		return err
	}
	body, berr := stream.Header{ChunkSize: h.ChunkSize}.BodySize(h.PlaintextSize)
	if want := int64(h.HeaderSize) + body; berr == nil && in.size < want {
		return fmt.Errorf("truncated: the file is %d bytes, and its header says it holds %d (it was cut short, or is still being written)", in.size, want)
	}
	return err
}
