package keyprotect

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/kpcrypt/kpcrypt/kms"
)

// Scheme is the URI scheme of Key Protect and HPCS KEKs: their URIs are key
// CRNs.
const Scheme = "crn"

// CRN is a parsed key CRN:
// crn:v1:bluemix:public:kms:REGION:a/ACCOUNT:INSTANCE:key:KEYID, with
// "hs-crypto" in place of "kms" for HPCS.
type CRN struct {
	Service    Service
	Region     string
	Account    string
	InstanceID string
	KeyID      string
	raw        string
}

// ParseCRN parses a key CRN.
func ParseCRN(s string) (CRN, error) {
	f := strings.Split(s, ":")
	bad := func(why string) (CRN, error) {
		return CRN{}, fmt.Errorf("%w: %q is not a Key Protect key CRN: %s", kms.ErrInvalidURI, s, why)
	}
	if len(f) != 10 || f[0] != "crn" || f[1] != "v1" {
		return bad("want crn:v1:bluemix:public:kms:REGION:a/ACCOUNT:INSTANCE:key:KEYID")
	}
	svc := Service(f[4])
	if svc != KeyProtect && svc != HPCS {
		return bad(fmt.Sprintf("service %q is neither kms nor hs-crypto", f[4]))
	}
	if f[8] != "key" {
		return bad(fmt.Sprintf("resource type %q is not key", f[8]))
	}
	if f[5] == "" || f[7] == "" || f[9] == "" {
		return bad("region, instance and key ID are required")
	}
	return CRN{Service: svc, Region: f[5], Account: strings.TrimPrefix(f[6], "a/"), InstanceID: f[7], KeyID: f[9], raw: s}, nil
}

// String returns the CRN as it was parsed.
func (c CRN) String() string { return c.raw }

// KEK is a Key Protect or HPCS root key used as a KEK. It implements
// kms.KEK, kms.Rewrapper, kms.Rotator, kms.VersionReporter and
// kms.VersionLister.
//
// The associated data is passed to Key Protect as one string: the base64
// SHA-256 of the AAD, which fits Key Protect's 255-character limit whatever
// the AAD's length. Wrapped DEKs are Key Protect's ciphertext strings as
// they came.
type KEK struct {
	client *Client
	crn    CRN
}

var (
	_ kms.Rewrapper       = (*KEK)(nil)
	_ kms.Rotator         = (*KEK)(nil)
	_ kms.VersionReporter = (*KEK)(nil)
	_ kms.VersionLister   = (*KEK)(nil)
)

// NewKEK returns the KEK for a key CRN, called through client, which must be
// for the CRN's instance.
func NewKEK(client *Client, crn string) (*KEK, error) {
	c, err := ParseCRN(crn)
	if err != nil {
		return nil, err
	}
	if c.InstanceID != client.InstanceID() {
		return nil, fmt.Errorf("keyprotect: CRN %s is in instance %s, the client in %s", crn, c.InstanceID, client.InstanceID())
	}
	return &KEK{client: client, crn: c}, nil
}

// URI returns the key's CRN.
func (k *KEK) URI() string { return k.crn.raw }

// KeyID returns the key's ID.
func (k *KEK) KeyID() string { return k.crn.KeyID }

func aadStrings(aad []byte) []string {
	if len(aad) == 0 {
		return nil
	}
	sum := sha256.Sum256(aad)
	return []string{base64.StdEncoding.EncodeToString(sum[:])}
}

func (k *KEK) fail(op string, err error) error { return &kms.Error{Op: op, URI: k.crn.raw, Err: err} }

// Wrap wraps dek under the key's current version.
func (k *KEK) Wrap(ctx context.Context, dek, aad []byte) (kms.WrappedKey, error) {
	w, err := k.client.Wrap(ctx, k.crn.KeyID, dek, aadStrings(aad))
	if err != nil {
		return kms.WrappedKey{}, k.fail("wrap", err)
	}
	return kms.WrappedKey{Ciphertext: []byte(w.Ciphertext), KeyVersion: w.KeyVersion}, nil
}

// Unwrap unwraps a DEK. After a rotation Key Protect returns the DEK wrapped
// again under the newest version too, in UnwrapResult.Rewrapped.
func (k *KEK) Unwrap(ctx context.Context, wrapped, aad []byte) (kms.UnwrapResult, error) {
	u, err := k.client.Unwrap(ctx, k.crn.KeyID, string(wrapped), aadStrings(aad))
	if err != nil {
		return kms.UnwrapResult{}, k.fail("unwrap", err)
	}
	res := kms.UnwrapResult{DEK: u.Plaintext, KeyVersion: u.KeyVersion}
	if u.Rewrapped != nil {
		res.Rewrapped = &kms.WrappedKey{Ciphertext: []byte(u.Rewrapped.Ciphertext), KeyVersion: u.Rewrapped.KeyVersion}
	}
	return res, nil
}

// Rewrap wraps a DEK again under the newest version inside Key Protect; the
// DEK never reaches the client.
func (k *KEK) Rewrap(ctx context.Context, wrapped, aad []byte) (kms.WrappedKey, error) {
	w, _, err := k.client.Rewrap(ctx, k.crn.KeyID, string(wrapped), aadStrings(aad))
	if err != nil {
		return kms.WrappedKey{}, k.fail("rewrap", err)
	}
	return kms.WrappedKey{Ciphertext: []byte(w.Ciphertext), KeyVersion: w.KeyVersion}, nil
}

// Rotate rotates the key and returns its new current version.
func (k *KEK) Rotate(ctx context.Context) (string, error) {
	if err := k.client.Rotate(ctx, k.crn.KeyID); err != nil {
		return "", k.fail("rotate", err)
	}
	return k.CurrentVersion(ctx)
}

// CurrentVersion returns the key's current version.
func (k *KEK) CurrentVersion(ctx context.Context) (string, error) {
	key, err := k.client.GetKey(ctx, k.crn.KeyID)
	if err != nil {
		return "", k.fail("get key", err)
	}
	if key.KeyVersion == nil {
		return "", k.fail("get key", errors.New("the key has no version"))
	}
	return key.KeyVersion.ID, nil
}

// Versions returns the key's versions, oldest first.
func (k *KEK) Versions(ctx context.Context) ([]string, error) {
	vs, err := k.client.KeyVersions(ctx, k.crn.KeyID)
	if err != nil {
		return nil, k.fail("list key versions", err)
	}
	out := make([]string, len(vs))
	for i, v := range vs {
		out[len(vs)-1-i] = v.ID // the service lists newest first
	}
	return out, nil
}

// Opener opens KEKs from key CRNs, with one client per instance sharing one
// token source. Config is the template for every client: InstanceID,
// Service and Region come from each CRN, and BaseURL, when set, overrides
// the endpoint for every instance. It is safe for concurrent use.
type Opener struct {
	Config Config

	mu      sync.Mutex
	tokens  TokenSource
	clients map[string]*Client
}

// Open opens the KEK named by a key CRN. It has the signature of a
// kms.OpenFunc.
func (o *Opener) Open(ctx context.Context, uri string) (kms.KEK, error) {
	crn, err := ParseCRN(uri)
	if err != nil {
		return nil, &kms.Error{Op: "open", URI: uri, Err: err}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	c, ok := o.clients[crn.InstanceID]
	if !ok {
		cfg := o.Config
		cfg.InstanceID, cfg.Service, cfg.Region = crn.InstanceID, crn.Service, crn.Region
		if cfg.Token == nil {
			if o.tokens == nil {
				if cfg.APIKey == "" {
					return nil, &kms.Error{Op: "open", URI: uri, Err: fmt.Errorf("%w: no API key (set IBMCLOUD_API_KEY)", kms.ErrPermissionDenied)}
				}
				if o.tokens, err = NewIAMTokenSource(cfg.APIKey, cfg.IAMURL, cfg.HTTPClient, cfg.Now); err != nil {
					return nil, &kms.Error{Op: "open", URI: uri, Err: err}
				}
			}
			cfg.Token = o.tokens
		}
		if c, err = New(cfg); err != nil {
			return nil, &kms.Error{Op: "open", URI: uri, Err: err}
		}
		if o.clients == nil {
			o.clients = map[string]*Client{}
		}
		o.clients[crn.InstanceID] = c
	}
	return &KEK{client: c, crn: crn}, nil
}

// Environment variables read by [ConfigFromEnv], after IBM Cloud's
// conventions.
const (
	EnvAPIKey      = "IBMCLOUD_API_KEY"
	EnvKPEndpoint  = "IBMCLOUD_KP_ENDPOINT"
	EnvIAMEndpoint = "IBMCLOUD_IAM_ENDPOINT"
)

// ConfigFromEnv returns a configuration from IBMCLOUD_API_KEY,
// IBMCLOUD_KP_ENDPOINT (the API base URL, for HPCS, private endpoints or a
// local server) and IBMCLOUD_IAM_ENDPOINT (IAM's base URL). getenv is
// usually os.Getenv.
func ConfigFromEnv(getenv func(string) string) Config {
	return Config{
		APIKey:  getenv(EnvAPIKey),
		BaseURL: getenv(EnvKPEndpoint),
		IAMURL:  getenv(EnvIAMEndpoint),
	}
}
