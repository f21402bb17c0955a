// Command kplocal runs a local IBM Key Protect-compatible server: the Key
// Protect API under /api/v2 and the IAM token exchange under
// /identity/token, on one address.
//
// Usage:
//
//	kplocal --listen ADDR --instance GUID --api-key KEY [--state FILE]
//	        [--fault-rate F] [--latency D] [--min-rotation-interval D]
//	        [--token-ttl D] [--region R] [--account A] [--seed N] [--verbose]
//	        [--max-concurrent N] [--root-key NAME]...
//
// The first line kplocal prints on standard output is its base URL, such as
// http://127.0.0.1:41234; with --listen 127.0.0.1:0 it picks a free port.
// Each --root-key creates a root key at start-up and prints its CRN on a
// line of its own, after the base URL, ready for kpcrypt --kek.
// Point a Key Protect client at that URL (token URL: base URL +
// "/identity/token"). The API key may also come from the KPLOCAL_API_KEY
// environment variable, which keeps it out of the process list.
//
// kplocal shuts down cleanly on SIGINT or SIGTERM, letting requests in
// flight finish. See package github.com/kpcrypt/kpcrypt/kplocal for what is
// emulated and how it differs from the real service.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/kpcrypt/kpcrypt/kplocal"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is the command; it returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("kplocal", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on (port 0 picks a free port)")
	instance := fs.String("instance", "", "Key Protect instance GUID that requests must send in bluemix-instance (required)")
	apiKey := fs.String("api-key", "", "the API key the token endpoint accepts (required, or KPLOCAL_API_KEY)")
	stateFile := fs.String("state", "", "persist keys in this file (written atomically, mode 0600)")
	faultRate := fs.Float64("fault-rate", 0, "share in [0,1] of /api/v2 requests answered 429 or 503")
	latency := fs.Duration("latency", 0, "delay added to every request")
	maxConcurrent := fs.Int("max-concurrent", 0, "answer 429 beyond this many /api/v2 requests in flight (0: no limit)")
	minRotation := fs.Duration("min-rotation-interval", kplocal.DefaultMinRotationInterval,
		"minimum time between two rotations of a key (0: no limit)")
	tokenTTL := fs.Duration("token-ttl", kplocal.DefaultTokenTTL, "lifetime of issued IAM tokens")
	region := fs.String("region", kplocal.DefaultRegion, "region written into CRNs")
	account := fs.String("account", kplocal.DefaultAccount, "account ID written into CRNs")
	seed := fs.Uint64("seed", 1, "seed of the fault-injection random source")
	verbose := fs.Bool("verbose", false, "log every request on standard error")
	var rootKeys []string
	fs.Func("root-key", "create a root key `NAME` at start-up and print its CRN (repeatable)", func(v string) error {
		rootKeys = append(rootKeys, v)
		return nil
	})
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "kplocal: unexpected arguments: %q\n", fs.Args())
		return 2
	}
	if *apiKey == "" {
		*apiKey = os.Getenv("KPLOCAL_API_KEY")
	}
	if *instance == "" || *apiKey == "" {
		fmt.Fprintln(stderr, "kplocal: --instance and --api-key (or KPLOCAL_API_KEY) are required")
		fs.Usage()
		return 2
	}

	logger := slog.New(slog.NewTextHandler(stderr, nil))
	cfg := kplocal.Config{
		InstanceID:          *instance,
		APIKey:              *apiKey,
		Region:              *region,
		Account:             *account,
		StateFile:           *stateFile,
		FaultRate:           *faultRate,
		Latency:             *latency,
		MaxConcurrent:       *maxConcurrent,
		TokenTTL:            *tokenTTL,
		MinRotationInterval: *minRotation,
		Seed:                *seed,
	}
	if *verbose {
		cfg.Logger = logger
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "kplocal: %v\n", err)
		return 1
	}
	srv, err := kplocal.StartListener(cfg, ln)
	if err != nil {
		_ = ln.Close()
		fmt.Fprintf(stderr, "kplocal: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, srv.BaseURL())
	for _, name := range rootKeys {
		id, err := srv.CreateKey(name, true)
		if err != nil {
			srv.Close()
			fmt.Fprintf(stderr, "kplocal: creating root key %q: %v\n", name, err)
			return 1
		}
		fmt.Fprintln(stdout, srv.KeyCRN(id))
	}
	logger.Info("kplocal serving", "url", srv.BaseURL(), "instance", *instance, "state", *stateFile)

	select {
	case <-ctx.Done():
	case <-srv.Done():
		fmt.Fprintf(stderr, "kplocal: %v\n", srv.Close())
		return 1
	}
	stop()
	logger.Info("kplocal shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		fmt.Fprintf(stderr, "kplocal: shutdown: %v\n", err)
		return 1
	}
	return 0
}
