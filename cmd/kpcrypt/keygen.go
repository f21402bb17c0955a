package main

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"github.com/kpcrypt/kpcrypt/kms/local"
)

func cmdKeygen(ctx context.Context, u *ui, args []string) error {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	out := fs.String("o", "", "create a local KEK file at `PATH` (mode 0600)")
	rotate := fs.String("rotate", "", "add a new current version to the local KEK file at `PATH`")
	operands, err := parseFlags(fs, args)
	if errors.Is(err, errHelp) {
		helpFor(fs, u.stdout, "kpcrypt keygen -o PATH | kpcrypt keygen --rotate PATH")
		return errHelp
	}
	if err != nil {
		return err
	}
	if len(operands) > 0 {
		return usagef("keygen: unexpected argument %q", operands[0])
	}
	switch {
	case *out != "" && *rotate != "", *out == "" && *rotate == "":
		return usagef("keygen: give either -o PATH or --rotate PATH")
	case *out != "":
		k, err := local.Generate(*out)
		if err != nil {
			return err
		}
		v, _ := k.CurrentVersion(ctx)
		u.infof("created %s (key version %s)", k.URI(), v)
		fmt.Fprintln(u.stdout, k.URI())
	default:
		k, err := local.OpenFile(*rotate)
		if err != nil {
			return err
		}
		v, err := k.Rotate(ctx)
		if err != nil {
			return err
		}
		vs, _ := k.Versions(ctx)
		u.infof("rotated %s: key version %s is now current (%d versions)", k.URI(), v, len(vs))
		fmt.Fprintln(u.stdout, v)
	}
	return nil
}
