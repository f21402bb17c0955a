package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/envelope/batch"
	"github.com/kpcrypt/kpcrypt/internal/termsafe"
)

// notAuthenticated says why inspect's output is not to be trusted: nothing
// in a header is authenticated without the DEK, which inspect never has.
const notAuthenticated = "no (inspect reads the header without a key; decrypt authenticates it)"

// cmdInspect prints a file's header. Everything in it (the context, the
// slots' URIs and key versions) comes from the file, unauthenticated: the
// human form says so and escapes every control character, and the JSON form
// says "authenticated": false and escapes them as \u escapes.
func cmdInspect(ctx context.Context, u *ui, args []string) error {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the header as JSON")
	current := fs.Bool("current", false, "ask each slot's KEK whether the slot is under its current key version; exit status 3 when a slot could not be checked")
	var keks listFlag
	fs.Var(&keks, "kek", "with --current, `URI` of a KEK to ask (repeatable); without it, the slots' own URIs are opened")
	kmsTimeout := kmsTimeoutFlag(fs)
	operands, err := parseFlags(fs, args)
	if errors.Is(err, errHelp) {
		helpFor(fs, u.stdout, "kpcrypt inspect [--json] [--current [--kek URI]...] [FILE]\n\nFILE defaults to standard input, as \"-\" does.")
		return errHelp
	}
	if err != nil {
		return err
	}
	if err := refusePINValue(keks...); err != nil {
		return err
	}
	if err := u.checkKEKFlags("inspect", keks...); err != nil {
		return err
	}
	if len(operands) > 1 {
		return usagef("inspect: one FILE at most (standard input without one), got %d", len(operands))
	}
	in, err := openInput(u, operand(operands))
	if err != nil {
		return err
	}
	defer in.Close()
	lctx, lcancel := context.WithTimeout(ctx, *kmsTimeout)
	unlock, err := in.lockShared(lctx)
	lcancel()
	if err != nil {
		return err
	}
	h, err := envelope.Inspect(in)
	unlock()
	if err != nil {
		return fmt.Errorf("%s: %w", in.name, err)
	}
	// With --current, each slot's KEK is asked for its current version;
	// a KEK that cannot be asked leaves the slot's state unknown.
	currents := make([]string, len(h.Slots))
	var askErrs []string
	if *current {
		if err := checkTimeout("inspect", *kmsTimeout); err != nil {
			return err
		}
		kctx, cancel := context.WithTimeout(ctx, *kmsTimeout)
		defer cancel()
		keyring, err := u.slotKeyring(kctx, keks)
		if err != nil {
			return err
		}
		v := batch.NewVersions(keyring)
		for i, s := range h.Slots {
			cur, err := v.Current(kctx, s.KEK)
			if err != nil {
				askErrs = append(askErrs, fmt.Sprintf("slot %d not checked: %v", i, slotError(s, err)))
				continue
			}
			currents[i] = cur
		}
	}
	if *asJSON {
		type slot struct {
			envelope.SlotInfo
			CurrentVersion string `json:"current_version,omitempty"`
			Current        *bool  `json:"current,omitempty"`
		}
		out := struct {
			File string `json:"file"`
			// Authenticated is always false: see notAuthenticated.
			Authenticated bool `json:"authenticated"`
			*envelope.Header
			Slots []slot `json:"slots"`
		}{File: in.name, Header: h}
		for i, s := range h.Slots {
			sl := slot{SlotInfo: s, CurrentVersion: currents[i]}
			if currents[i] != "" {
				c := currents[i] == s.KeyVersion
				sl.Current = &c
			}
			out.Slots = append(out.Slots, sl)
		}
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return err
		}
		if _, err := u.stdout.Write(termsafe.JSON(buf.Bytes())); err != nil {
			return err
		}
		for _, e := range askErrs {
			u.infof("%s", e)
		}
		if len(askErrs) > 0 {
			return exitStatus(3)
		}
		return nil
	}
	tw := tabwriter.NewWriter(u.stdout, 0, 0, 2, ' ', 0)
	size := "unknown (streamed)"
	if h.PlaintextSize >= 0 {
		size = fmt.Sprintf("%d bytes", h.PlaintextSize)
	}
	fmt.Fprintf(tw, "file:\t%s\n", termsafe.Escape(in.name))
	fmt.Fprintf(tw, "authenticated:\t%s\n", notAuthenticated)
	fmt.Fprintf(tw, "format version:\t%d\n", h.FormatVersion)
	fmt.Fprintf(tw, "algorithm:\t%s\n", h.Algorithm)
	fmt.Fprintf(tw, "chunk size:\t%d bytes\n", h.ChunkSize)
	fmt.Fprintf(tw, "plaintext size:\t%s\n", size)
	if h.Compression != "" {
		fmt.Fprintf(tw, "compression:\t%s\n", h.Compression)
	}
	fmt.Fprintf(tw, "header size:\t%d bytes (slot table %d bytes × 2, sequence %d)\n", h.HeaderSize, h.SlotTableSize, h.SlotTableSequence)
	if len(h.Context) > 0 {
		var pairs []string
		for k, v := range h.Context {
			pairs = append(pairs, termsafe.Escape(k)+"="+termsafe.Escape(v))
		}
		slices.Sort(pairs)
		fmt.Fprintf(tw, "context:\t%s\n", strings.Join(pairs, " "))
	}
	fmt.Fprintf(tw, "key slots:\t%d\n", len(h.Slots))
	for i, s := range h.Slots {
		v := s.KeyVersion
		if v == "" {
			v = "-"
		}
		state := ""
		switch {
		case *current && currents[i] == "":
			state = ", not checked"
		case currents[i] == "":
		case currents[i] == s.KeyVersion:
			state = ", current"
		default:
			state = fmt.Sprintf(", outdated: the current version is %s", termsafe.Escape(currents[i]))
		}
		fmt.Fprintf(tw, "  slot %d:\t%s (key version %s%s)\n", i, termsafe.Escape(s.KEK), termsafe.Escape(v), state)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, e := range askErrs {
		u.infof("%s", e)
	}
	if len(askErrs) > 0 {
		return exitStatus(3)
	}
	return nil
}
