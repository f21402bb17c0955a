package kplocal

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"
)

// Defaults applied by [New] to the zero fields of a [Config].
const (
	// DefaultRegion is the region written into CRNs when Config.Region is empty.
	DefaultRegion = "us-south"

	// DefaultAccount is the account ID written into CRNs when Config.Account
	// is empty.
	DefaultAccount = "0000000000000000000000000000c0de"

	// DefaultTokenTTL is the lifetime of IAM tokens when Config.TokenTTL is
	// zero: one hour, as IBM Cloud IAM.
	DefaultTokenTTL = time.Hour

	// DefaultMinRotationInterval is Key Protect's rule of at most one rotation
	// per key per hour. The command uses it by default; an in-process
	// [Config] must ask for it explicitly (its zero value means no limit).
	DefaultMinRotationInterval = time.Hour
)

// Service names for Config.Service.
const (
	ServiceKeyProtect = "kms"
	ServiceHPCS       = "hs-crypto"
)

// MaxBodyBytes bounds the body of an /api/v2 request. A larger body is
// answered 400 BAD_BODY_ERR. (Token requests are bounded to 64 KiB.)
const MaxBodyBytes = 1 << 20

// Config configures a [Server]. The zero value is usable: [New] fills in
// defaults as documented on each field.
type Config struct {
	// InstanceID is the Key Protect instance GUID that requests must name in
	// their bluemix-instance header. Empty means a random v4 UUID.
	InstanceID string

	// APIKey is the API key whose tokens may use InstanceID. Empty means a
	// random key; read it back with [Server.Config].
	APIKey string

	// Accounts are further API keys, each with its own instances (which
	// may include InstanceID). See [Account].
	Accounts []Account

	// Service is the service name written into CRNs: [ServiceKeyProtect]
	// ("kms", the default) or [ServiceHPCS] ("hs-crypto"). An HPCS server
	// also accepts RSAES_OAEP_SHA_1 for secure import and serves the HPCS
	// broker's endpoint lookup, GET /crypto_v2/instances/{instance_id}.
	Service string

	// Region and Account are the region and account ID used in CRNs
	// (crn:v1:bluemix:public:SERVICE:REGION:a/ACCOUNT:INSTANCE:key:KEYID).
	// Empty means [DefaultRegion] and [DefaultAccount].
	Region  string
	Account string

	// TLS makes [Start] and [StartListener] serve HTTPS: they make a
	// self-signed CA and a server certificate for 127.0.0.1, ::1 and
	// localhost at start. Clients trust the CA through a RootCAs pool
	// ([Running.CertPool], or the PEM file CAFile), never through
	// process-wide settings. [New] and [Server.ServeHTTP] ignore it.
	TLS bool

	// CAFile, with TLS, is where [Start] and [StartListener] write the CA
	// certificate (PEM, mode 0644, atomically). Empty means not written.
	CAFile string

	// StateFile, when set, makes keys (with all their versions and material),
	// aliases, policies and the token-signing secret persist across
	// restarts. The file is loaded by [New] if it exists, and rewritten
	// atomically (temporary file in the same directory, fsync, rename, mode
	// 0600) after every change. It holds key material in the clear: protect
	// it like the keys themselves. Empty means state lives in memory only.
	StateFile string

	// FaultRate is the share, in [0, 1], of /api/v2 requests that are not
	// served but answered 429 or 503 (with a Retry-After of RetryAfter),
	// each with a Key Protect error body, before authentication. Zero
	// disables this global fault injection; see Faults for finer faults.
	FaultRate float64

	// Faults are per-operation fault rules (after-serving faults,
	// connection resets, slow bodies…) applied to authenticated requests
	// that FaultRate spared. See [Fault].
	Faults []Fault

	// RetryAfter is the Retry-After header, in whole seconds rounded up, of
	// FaultRate's and MaxConcurrent's 429 and 503 answers and of Faults
	// that set none. Zero sends "Retry-After: 0", as Key Protect does.
	RetryAfter time.Duration

	// Latency is added to every request before it is served.
	Latency time.Duration

	// MaxConcurrent, when positive, is a rate limit: at most that many
	// /api/v2 requests are served at once, and one more is answered 429
	// (Retry-After: RetryAfter) with a Key Protect error body, as a busy instance
	// answers a storm of requests. Stats.RateLimited counts them.
	MaxConcurrent int

	// TokenTTL is the lifetime of issued IAM tokens (expires_in). Zero means
	// [DefaultTokenTTL]. It must be at least one second.
	TokenTTL time.Duration

	// MinRotationInterval is the minimum time between two rotations of one
	// key; a rotation earlier than that is refused with 409
	// KEY_ROTATION_NOT_PERMITTED. Zero means no limit, which suits tests;
	// set [DefaultMinRotationInterval] for Key Protect's one-per-hour rule
	// (the kplocal command does so unless told otherwise).
	MinRotationInterval time.Duration

	// ImportKeyBits is the size of each instance's RSA import (transport)
	// key, made on the instance's first import token or locker. Zero means
	// [DefaultImportKeyBits] (4096, as Key Protect); 2048 and 3072 are
	// accepted too and make tests faster.
	ImportKeyBits int

	// Now is the server's clock. It decides token expiry, key expiry and
	// every time-based rule (rotation interval, the 30 s enable and restore
	// rules, the 4 h purge rule, the 30 d restore window, the 7 d dual
	// authorisation window). Nil means time.Now. Tests advance a fake clock
	// instead of sleeping.
	Now func() time.Time

	// Seed seeds the pseudo-random source that decides which requests get an
	// injected fault and which fault. The same seed and request sequence
	// give the same faults. Key material, nonces and IDs always come from
	// crypto/rand.
	Seed uint64

	// Logger, when set, receives one line per request (method, path, status,
	// operation, duration) and persistence errors. It never receives key
	// material, tokens or request bodies. Nil means no logging.
	Logger *slog.Logger
}

// withDefaults validates c and returns it with defaults filled in.
func (c Config) withDefaults() (Config, error) {
	if c.InstanceID == "" {
		c.InstanceID = newUUID()
	}
	if err := checkCRNSegment("instance ID", c.InstanceID); err != nil {
		return c, err
	}
	if c.APIKey == "" {
		c.APIKey = randomToken(32)
	}
	switch c.Service {
	case "":
		c.Service = ServiceKeyProtect
	case ServiceKeyProtect, ServiceHPCS:
	default:
		return c, fmt.Errorf("kplocal: service %q is neither %q nor %q", c.Service, ServiceKeyProtect, ServiceHPCS)
	}
	if c.Region == "" {
		c.Region = DefaultRegion
	}
	if err := checkCRNSegment("region", c.Region); err != nil {
		return c, err
	}
	if c.Account == "" {
		c.Account = DefaultAccount
	}
	if err := checkCRNSegment("account", c.Account); err != nil {
		return c, err
	}
	if !(c.FaultRate >= 0 && c.FaultRate <= 1) { // also rejects NaN
		return c, fmt.Errorf("kplocal: fault rate %v is not in [0, 1]", c.FaultRate)
	}
	c.Faults = slices.Clone(c.Faults) // the caller's slice may change
	c.Accounts = slices.Clone(c.Accounts)
	if c.CAFile != "" && !c.TLS {
		return c, errors.New("kplocal: a CA file needs TLS")
	}
	for _, f := range c.Faults {
		if err := f.check(); err != nil {
			return c, err
		}
	}
	if c.RetryAfter < 0 {
		return c, errors.New("kplocal: retry-after must not be negative")
	}
	if c.Latency < 0 {
		return c, errors.New("kplocal: latency must not be negative")
	}
	if c.TokenTTL == 0 {
		c.TokenTTL = DefaultTokenTTL
	}
	if c.TokenTTL < time.Second {
		return c, fmt.Errorf("kplocal: token TTL %v is shorter than one second", c.TokenTTL)
	}
	switch c.ImportKeyBits {
	case 0:
		c.ImportKeyBits = DefaultImportKeyBits
	case 2048, 3072, 4096:
	default:
		return c, fmt.Errorf("kplocal: import key size %d is not 2048, 3072 or 4096 bits", c.ImportKeyBits)
	}
	if c.MinRotationInterval < 0 {
		return c, errors.New("kplocal: minimum rotation interval must not be negative")
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c, nil
}

// checkCRNSegment rejects values that would corrupt a CRN.
func checkCRNSegment(what, v string) error {
	if v == "" || strings.ContainsAny(v, ": \t\r\n/") {
		return fmt.Errorf("kplocal: %s %q must be non-empty and contain no ':', '/' or white space", what, v)
	}
	return nil
}
