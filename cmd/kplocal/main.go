// Command kplocal runs a local IBM Key Protect-compatible server: the Key
// Protect API under /api/v2 and the IAM token exchange under
// /identity/token, on one address.
//
// Usage:
//
//	KPLOCAL_API_KEY=KEY kplocal --instance GUID [--listen ADDR] [--state FILE]
//	        [--service kms|hs-crypto] [--tls [--ca-out FILE]]
//	        [--fault-rate F] [--retry-after D] [--latency D] [--max-concurrent N]
//	        [--min-rotation-interval D] [--token-ttl D] [--region R] [--account A]
//	        [--seed N] [--verbose] [--root-key NAME]...
//
// Secrets never come from flags. The API key whose tokens may use the
// instance --instance comes from the environment variable KPLOCAL_API_KEY
// (required). More API keys, each with its own instances, come from the
// JSON file named by KPLOCAL_API_KEYS_FILE (optional):
//
//	{"accounts": [
//	  {"apiKey": "second-key", "instances": ["<GUID>"]},
//	  {"apiKey": "other-key", "accountID": "otheraccount", "instances": ["<GUID>"]}
//	]}
//
// (see kplocal.AccountsFile; a second key on the same instance is a second
// user, as dual-authorisation delete needs).
//
// The first line kplocal prints on standard output is its base URL, such as
// http://127.0.0.1:41234; with --listen 127.0.0.1:0 it picks a free port.
// Each --root-key creates a root key at start-up and prints its CRN on a
// line of its own, after the base URL, ready for kpcrypt --kek. Point a Key
// Protect client at that URL: it is also the IAM base URL (the token
// endpoint is base URL + "/identity/token").
//
// With --tls kplocal serves HTTPS with a certificate for 127.0.0.1 and
// localhost signed by a CA it makes at start; --ca-out writes that CA
// (PEM) to a file for clients to trust. --service hs-crypto makes kplocal an
// HPCS instance: hs-crypto CRNs, RSAES_OAEP_SHA_1 accepted for secure
// import, and the broker's endpoint lookup GET /crypto_v2/instances/GUID.
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

// Environment variables the command reads.
const (
	envAPIKey     = "KPLOCAL_API_KEY"
	envAPIKeyFile = "KPLOCAL_API_KEYS_FILE"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run is the command; it returns the exit status. getenv reads the
// environment.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("kplocal", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on (port 0 picks a free port)")
	instance := fs.String("instance", "", "instance GUID that "+envAPIKey+"'s tokens may use in bluemix-instance (required)")
	service := fs.String("service", kplocal.ServiceKeyProtect, "service: kms (Key Protect) or hs-crypto (HPCS)")
	useTLS := fs.Bool("tls", false, "serve HTTPS with a certificate signed by a CA made at start")
	caOut := fs.String("ca-out", "", "with --tls, write the CA certificate (PEM) to this `file`")
	stateFile := fs.String("state", "", "persist keys in this file (written atomically, mode 0600)")
	faultRate := fs.Float64("fault-rate", 0, "share in [0,1] of /api/v2 requests answered 429 or 503")
	retryAfter := fs.Duration("retry-after", 0, "Retry-After of 429 and 503 answers (whole seconds)")
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
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: %s=KEY kplocal --instance GUID [flags]\n\n"+
			"Environment: %s (required) is the API key of the instance; %s (optional) names a JSON file of more API keys.\n\nFlags:\n",
			envAPIKey, envAPIKey, envAPIKeyFile)
		fs.PrintDefaults()
	}
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
	apiKey := getenv(envAPIKey)
	var missing []string
	if *instance == "" {
		missing = append(missing, "the instance: give --instance GUID")
	}
	if apiKey == "" {
		missing = append(missing, "the API key: set the environment variable "+envAPIKey)
	}
	for _, m := range missing {
		fmt.Fprintf(stderr, "kplocal: missing %s\n", m)
	}
	if len(missing) > 0 {
		return 2
	}
	var accounts []kplocal.Account
	if path := getenv(envAPIKeyFile); path != "" {
		data, err := os.ReadFile(path)
		if err == nil {
			accounts, err = kplocal.ParseAccounts(data)
		}
		if err != nil {
			fmt.Fprintf(stderr, "kplocal: %s: %v\n", envAPIKeyFile, err)
			return 1
		}
	}

	logger := slog.New(slog.NewTextHandler(stderr, nil))
	cfg := kplocal.Config{
		InstanceID:          *instance,
		APIKey:              apiKey,
		Accounts:            accounts,
		Service:             *service,
		TLS:                 *useTLS,
		CAFile:              *caOut,
		Region:              *region,
		Account:             *account,
		StateFile:           *stateFile,
		FaultRate:           *faultRate,
		RetryAfter:          *retryAfter,
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
	logger.Info("kplocal serving", "url", srv.BaseURL(), "instance", *instance, "service", *service,
		"accounts", 1+len(accounts), "state", *stateFile, "ca", *caOut)

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
