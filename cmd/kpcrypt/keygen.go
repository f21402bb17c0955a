package main

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"github.com/kpcrypt/kpcrypt/internal/atomicfile"

	"github.com/kpcrypt/kpcrypt/internal/termsafe"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/local"
	"github.com/kpcrypt/kpcrypt/kms/pkcs11"
)

func cmdKeygen(ctx context.Context, u *ui, args []string) error {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	out := fs.String("o", "", "create a local KEK file at `PATH` (mode 0600)")
	rotate := fs.String("rotate", "", "add a new current version to the local KEK file at `PATH`; through a symbolic link, the file it points to is rewritten and the link kept")
	p11New := fs.String("pkcs11", "", "create an AES-256 KEK in a PKCS#11 token: `URI` pkcs11:token=T;object=LABEL?module-path=…&pin-source=FILE")
	p11Rotate := fs.String("rotate-pkcs11", "", "add a new current version (key) to the PKCS#11 KEK at `URI`")
	operands, err := parseFlags(fs, args)
	if errors.Is(err, errHelp) {
		helpFor(fs, u.stdout, "kpcrypt keygen -o PATH | --rotate PATH | --pkcs11 URI | --rotate-pkcs11 URI")
		return errHelp
	}
	if err != nil {
		return err
	}
	if len(operands) > 0 {
		return usagef("keygen: unexpected argument %q", operands[0])
	}
	given := 0
	for _, v := range []string{*out, *rotate, *p11New, *p11Rotate} {
		if v != "" {
			given++
		}
	}
	if given != 1 {
		return usagef("keygen: give either -o PATH or --rotate PATH (or --pkcs11 URI, --rotate-pkcs11 URI for a PKCS#11 token)")
	}
	switch {
	case *out != "":
		k, err := local.Generate(*out)
		if errors.Is(err, atomicfile.ErrExists) {
			return fmt.Errorf("%s exists: keygen never overwrites a key file (what it wrapped would be lost); choose another path", *out)
		}
		if err != nil {
			return err
		}
		v, _ := k.CurrentVersion(ctx)
		u.infof("created %s (key version %s)", k.URI(), v)
		fmt.Fprintln(u.stdout, termsafe.Escape(k.URI()))
	case *rotate != "":
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
		fmt.Fprintln(u.stdout, termsafe.Escape(v))
	case *p11New != "":
		if err := refusePINValue(*p11New); err != nil {
			return err
		}
		k, err := u.p11.Generate(ctx, *p11New)
		if err != nil {
			return err
		}
		v, err := k.CurrentVersion(ctx)
		if err != nil {
			return err
		}
		m, _ := k.Mechanism()
		u.infof("created %s (key version %s; wraps with %v)", k.URI(), v, m)
		fmt.Fprintln(u.stdout, termsafe.Escape(k.URI()))
	default:
		if err := refusePINValue(*p11Rotate); err != nil {
			return err
		}
		k, err := u.p11.OpenKEK(ctx, *p11Rotate)
		if err != nil {
			return err
		}
		v, err := k.Rotate(ctx)
		if err != nil {
			return err
		}
		vs, _ := k.Versions(ctx)
		u.infof("rotated %s: key version %s is now current (%d versions)", k.URI(), v, len(vs))
		fmt.Fprintln(u.stdout, termsafe.Escape(v))
	}
	return nil
}

// openPKCS11 opens a pkcs11: KEK URI given on the command line, or listed
// in the trust configuration: a header's URI never chooses a module to
// load (see trust.Policy.Discover).
func (u *ui) openPKCS11(ctx context.Context, uri string) (kms.KEK, error) {
	if err := refusePINValue(uri); err != nil {
		return nil, err
	}
	return u.p11.Open(ctx, uri)
}

// refusePINValue refuses a PIN in command-line URIs: secrets come from
// files and the environment, never from flags. Every flag that takes a URI
// goes through it, whatever the URI's scheme, and it knows every spelling
// of pin-value that [kms.HasPINValue] does (any case, any percent-encoding
// of the name, in the path or the query). The error shows the URI redacted.
func refusePINValue(uris ...string) error {
	for _, uri := range uris {
		if kms.HasPINValue(uri) {
			return &kms.Error{Op: "open", URI: kms.RedactURI(uri), Err: fmt.Errorf(
				"%w: kpcrypt takes no pin-value on the command line, where other users can read it: use pin-source=FILE or set %s",
				kms.ErrInvalidURI, pkcs11.EnvPIN)}
		}
	}
	return nil
}
