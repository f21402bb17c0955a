package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/kpcrypt/kpcrypt/envelope"
)

func cmdInspect(ctx context.Context, u *ui, args []string) error {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the header as JSON")
	operands, err := parseFlags(fs, args)
	if errors.Is(err, errHelp) {
		helpFor(fs, u.stdout, "kpcrypt inspect [--json] FILE")
		return errHelp
	}
	if err != nil {
		return err
	}
	if len(operands) != 1 {
		return usagef("inspect: want one FILE (or - for standard input), got %d", len(operands))
	}
	in, err := openInput(u, operands[0])
	if err != nil {
		return err
	}
	defer in.Close()
	h, err := envelope.Inspect(in)
	if err != nil {
		return fmt.Errorf("%s: %w", in.name, err)
	}
	if *asJSON {
		enc := json.NewEncoder(u.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			File string `json:"file"`
			*envelope.Header
		}{in.name, h})
	}
	tw := tabwriter.NewWriter(u.stdout, 0, 0, 2, ' ', 0)
	size := "unknown (streamed)"
	if h.PlaintextSize >= 0 {
		size = fmt.Sprintf("%d bytes", h.PlaintextSize)
	}
	fmt.Fprintf(tw, "file:\t%s\n", in.name)
	fmt.Fprintf(tw, "format version:\t%d\n", h.FormatVersion)
	fmt.Fprintf(tw, "algorithm:\t%s\n", h.Algorithm)
	fmt.Fprintf(tw, "chunk size:\t%d bytes\n", h.ChunkSize)
	fmt.Fprintf(tw, "plaintext size:\t%s\n", size)
	fmt.Fprintf(tw, "header size:\t%d bytes (slot table %d bytes × 2, sequence %d)\n", h.HeaderSize, h.SlotTableSize, h.SlotTableSequence)
	if len(h.Context) > 0 {
		var pairs []string
		for k, v := range h.Context {
			pairs = append(pairs, k+"="+v)
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
		fmt.Fprintf(tw, "  slot %d:\t%s (key version %s)\n", i, s.KEK, v)
	}
	return tw.Flush()
}
