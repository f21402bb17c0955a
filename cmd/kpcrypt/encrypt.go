package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/keyprotect"
	"github.com/kpcrypt/kpcrypt/kms/local"
	"github.com/kpcrypt/kpcrypt/kms/pkcs11"
)

// newResolver returns the resolver of the KEK URIs the command line
// accepts; a command builds one and uses it for every URI. Key Protect and
// HPCS take their credentials from the environment, and their endpoints
// from the trust configuration and the environment (ui.route); PKCS#11
// tokens take their module and PIN from the URI or the environment
// (KPCRYPT_PKCS11_MODULE, KPCRYPT_PKCS11_PIN), through the process's one
// provider.
func (u *ui) newResolver() kms.Resolver {
	u.kp = &keyprotect.Opener{Config: keyprotect.ConfigFromEnv(os.Getenv), Route: u.route}
	return kms.Resolver{local.Scheme: local.Open, keyprotect.Scheme: u.kp.Open, pkcs11.Scheme: u.openPKCS11}
}

func cmdEncrypt(ctx context.Context, u *ui, args []string) error {
	fs := flag.NewFlagSet("encrypt", flag.ContinueOnError)
	var keks, contexts listFlag
	fs.Var(&keks, "kek", "`URI` of a KEK to wrap the data key (repeatable; at least one)")
	out := fs.String("o", "", "write to `OUT` instead of standard output")
	force := fs.Bool("force", false, "overwrite OUT if it exists")
	quiet := fs.Bool("quiet", false, "show no progress bar")
	chunk := fs.String("chunk-size", "64KiB", "plaintext `size` of a chunk, 4KiB to 16MiB")
	fs.Var(&contexts, "context", "encryption context `key=value`, stored and authenticated (repeatable)")
	compress := fs.String("compress", "", "compress before encrypting: `zstd` (reveals compressibility; no random access)")
	kmsTimeout := kmsTimeoutFlag(fs)
	operands, err := parseFlags(fs, args)
	if errors.Is(err, errHelp) {
		helpFor(fs, u.stdout, "kpcrypt encrypt --kek URI [--kek URI]... [-o OUT] [--force] [IN]")
		return errHelp
	}
	if err != nil {
		return err
	}
	if err := refusePINValue(keks...); err != nil {
		return err
	}
	if err := u.checkKEKFlags("encrypt", keks...); err != nil {
		return err
	}
	if len(keks) == 0 {
		return usagef("encrypt: at least one --kek is required")
	}
	if len(operands) > 1 {
		return usagef("encrypt: one input at most, got %d", len(operands))
	}
	chunkSize, err := parseSize(*chunk)
	if err != nil {
		return usagef("encrypt: --chunk-size: %v", err)
	}
	if chunkSize < minChunk || chunkSize > maxChunk {
		return usagef("encrypt: --chunk-size %s is out of range: give 4KiB to 16MiB", *chunk)
	}
	encCtx, err := parseContext(contexts)
	if err != nil {
		return usagef("encrypt: %v", err)
	}
	if err := checkTimeout("encrypt", *kmsTimeout); err != nil {
		return err
	}
	if *compress != "" && *compress != string(envelope.CompressionZstd) {
		return usagef("encrypt: --compress %q: only zstd is known", *compress)
	}
	if (*out == "" || *out == "-") && isTerminal(u.stdout) {
		return fmt.Errorf("refusing to write ciphertext to a terminal: use -o OUT or redirect standard output")
	}

	in, err := openInput(u, operand(operands))
	if err != nil {
		return err
	}
	defer in.Close()
	o, err := openOutput(u, *out, in, *force, 0o666) // less the umask, as cp and age do
	if err != nil {
		return err
	}
	defer o.abort()

	// Files made by the command keep room for slots added later (rewrap
	// --add rewrites only the slot tables), whatever their size: the
	// library's smaller tables for small files are for pipelines.
	e := &envelope.Encrypter{ChunkSize: chunkSize, Context: encCtx, Compression: envelope.Compression(*compress),
		SlotTableSize: envelope.DefaultSlotTableSize}
	kctx, cancel := context.WithTimeout(ctx, *kmsTimeout)
	defer cancel()
	for _, uri := range keks {
		k, err := u.resolver.Open(kctx, uri)
		if err != nil {
			return err
		}
		e.KEKs = append(e.KEKs, k)
	}
	w, err := e.NewWriter(kctx, o, in.size)
	if err != nil {
		return err
	}
	cancel()
	// An error or an interrupt abandons the output: without its final
	// chunk, what reached it never decrypts.
	w.SetContext(ctx)
	if in.regular() {
		// The library's workers read the file themselves, in parallel.
		src, done := u.fileProgress(ctx, in.file, in.size, *quiet, "encrypting")
		_, err = w.ReadFrom(src)
		done()
	} else {
		src, done := u.progress(in, in.size, *quiet, "encrypting")
		_, err = io.Copy(w, ctxReader{ctx, src})
		done()
	}
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		w.Abort(err)
	} else {
		err = w.Close()
	}
	if err != nil {
		return fmt.Errorf("%s: %w", in.name, err)
	}
	return o.commit(u)
}

func operand(ops []string) string {
	if len(ops) == 0 {
		return "-"
	}
	return ops[0]
}

func parseContext(pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--context %q: want key=value", p)
		}
		if _, dup := m[k]; dup {
			return nil, fmt.Errorf("--context: key %q given twice", k)
		}
		m[k] = v
	}
	return m, nil
}
