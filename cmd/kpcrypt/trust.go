package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/keyprotect"
	"github.com/kpcrypt/kpcrypt/kms/trust"
)

// loadTrust reads the trust configuration and the endpoints set in the
// environment. A configuration that cannot be read is kept as an error that
// every KEK opened afterwards reports: no command trusts a header, or
// routes a CRN, by a configuration it could not read.
func (u *ui) loadTrust(getenv func(string) string) {
	cfg, path, err := trust.Load(getenv)
	u.trustErr = err
	u.policy = &trust.Policy{
		Config:      cfg,
		Source:      path,
		KPEndpoint:  getenv(keyprotect.EnvKPEndpoint),
		IAMEndpoint: getenv(keyprotect.EnvIAMEndpoint),
	}
}

// Discover implements kms.DiscoveryFilter: the user's trust configuration
// decides which slot URIs a command may open by itself.
func (u *ui) Discover(uri string) (string, error) {
	if u.trustErr != nil {
		return "", u.trustErr
	}
	return u.policy.Discover(uri)
}

// route routes a key CRN by the trust configuration and the environment.
func (u *ui) route(crn keyprotect.CRN) (keyprotect.Route, error) {
	// Without a known location for the configuration, CRNs the user gave
	// are still routed by the environment; only header URIs are refused.
	if u.trustErr != nil && !errors.Is(u.trustErr, trust.ErrNoLocation) {
		return keyprotect.Route{}, u.trustErr
	}
	return u.policy.Route(crn)
}

// slotKeyring is the keyring of commands that read files' slots (decrypt,
// rewrap, scan, inspect --current): the KEKs given with --kek and nothing
// else, or, with none given, the slots' own URIs that the trust
// configuration allows.
func (u *ui) slotKeyring(ctx context.Context, uris []string) (envelope.Keyring, error) {
	if len(uris) > 0 {
		return u.openKEKs(ctx, uris)
	}
	return &envelope.ResolvingKeyring{Resolver: u.resolver, Filter: kms.DiscoveryFunc(u.Discover)}, nil
}

// checkKEKFlags refuses, as usage errors, KEK URIs of no known scheme
// given on the command line ("--kek kek.json" for "--kek local:kek.json"),
// and says which schemes there are.
func (u *ui) checkKEKFlags(cmd string, uris ...string) error {
	for _, uri := range uris {
		scheme, _, ok := strings.Cut(uri, ":")
		if ok {
			if _, known := u.resolver[scheme]; known {
				continue
			}
		}
		hint := ""
		if !ok && (strings.HasSuffix(uri, ".json") || strings.Contains(uri, "/")) {
			hint = fmt.Sprintf(" (for a key file, --kek local:%s)", uri)
		}
		return usagef("%s: --kek %s names no kind of KEK%s: give local:PATH (a key file), crn:v1:… (a Key Protect or HPCS key) or pkcs11:… (an HSM key)", cmd, uri, hint)
	}
	return nil
}

// defaultKMSTimeout bounds the KMS work for one file.
const defaultKMSTimeout = 30 * time.Second

// envKMSTimeout overrides defaultKMSTimeout.
const envKMSTimeout = "KPCRYPT_KMS_TIMEOUT"

// kmsTimeoutFlag adds --kms-timeout to fs.
func kmsTimeoutFlag(fs *flag.FlagSet) *time.Duration {
	d := defaultKMSTimeout
	if v, err := time.ParseDuration(os.Getenv(envKMSTimeout)); err == nil && v > 0 {
		d = v
	}
	return fs.Duration("kms-timeout", d, fmt.Sprintf("bound the KMS calls for one file to `DURATION`, retries included (%s sets the default)", envKMSTimeout))
}

// checkTimeout refuses a non-positive --kms-timeout.
func checkTimeout(cmd string, d time.Duration) error {
	if d <= 0 {
		return usagef("%s: --kms-timeout must be positive, such as 30s or 2m", cmd)
	}
	return nil
}
