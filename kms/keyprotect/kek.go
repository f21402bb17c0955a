package keyprotect

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"sync"

	"github.com/kpcrypt/kpcrypt/kms"
)

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

// Route says where the calls for one key CRN go.
type Route struct {
	// BaseURL is the API base URL; empty means the endpoint published for
	// the CRN's service, region and instance ([Endpoint]).
	BaseURL string
	// IAMURL is IAM's base URL; empty means Config.IAMURL, or
	// [DefaultIAMURL] when that is empty too.
	IAMURL string
	// Discover, for an HPCS CRN with no BaseURL, asks the HPCS broker for
	// the instance's key-management endpoint ([DiscoverEndpoint]) instead
	// of using the instance-based host. BrokerURL overrides the region's
	// broker ([BrokerURL]).
	Discover  bool
	BrokerURL string
	// HTTPClient, when set, replaces Config.HTTPClient for this route's
	// calls (API, IAM and broker): for an endpoint whose TLS certificate
	// comes from a CA of the user's own, trusted through RootCAs.
	HTTPClient *http.Client
}

// Opener opens KEKs from key CRNs, with one client per endpoint and
// instance, and one token source per IAM endpoint. Config is the template
// for every client: InstanceID, Service and Region come from each CRN.
//
// Route, when set, chooses the endpoint of each CRN, and may refuse a CRN;
// the routes of a trust configuration come in here. When nil, a CRN's calls
// go to Config.BaseURL if set, or else to the endpoint IBM publishes for the
// CRN, whose host is always under an IBM suffix ([IsIBMHost]). It is safe for
// concurrent use.
type Opener struct {
	Config Config
	Route  func(CRN) (Route, error)

	mu         sync.Mutex
	tokens     map[string]TokenSource // by IAM base URL
	clients    map[string]*Client     // by API base URL and instance
	discovered map[string]string      // HPCS endpoints, by broker and instance
}

// Open opens the KEK named by a key CRN. It has the signature of a
// kms.OpenFunc.
func (o *Opener) Open(ctx context.Context, uri string) (kms.KEK, error) {
	crn, err := ParseCRN(uri)
	if err != nil {
		return nil, &kms.Error{Op: "open", URI: "crn:…", Err: err}
	}
	c, err := o.Client(ctx, crn)
	if err != nil {
		return nil, &kms.Error{Op: "open", URI: uri, Err: err}
	}
	return &KEK{client: c, crn: crn}, nil
}

// Client returns the client for crn's instance, routed as Open routes it.
// crn may be a key CRN or an instance CRN ([ParseInstanceCRN]).
func (o *Opener) Client(ctx context.Context, crn CRN) (*Client, error) {
	var err error
	route := Route{BaseURL: o.Config.BaseURL}
	if o.Route != nil {
		if route, err = o.Route(crn); err != nil {
			return nil, err
		}
	}
	iam := route.IAMURL
	if iam == "" {
		iam = o.Config.IAMURL
	}
	if iam == "" {
		iam = DefaultIAMURL
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	hc := o.Config.HTTPClient
	if route.HTTPClient != nil {
		hc = route.HTTPClient
	}
	tokens, err := o.tokenSource(iam, hc)
	if err != nil {
		return nil, err
	}
	if route.BaseURL == "" && crn.Service == HPCS && route.Discover {
		if route.BaseURL, err = o.discover(ctx, route.BrokerURL, crn, tokens, hc); err != nil {
			return nil, err
		}
	}
	if route.BaseURL == "" {
		if route.BaseURL, err = Endpoint(crn.Service, crn.Region, crn.InstanceID, o.Config.Private); err != nil {
			return nil, err
		}
	}
	base, err := checkBaseURL(route.BaseURL)
	if err != nil {
		return nil, err
	}
	key := fmt.Sprintf("%s\x00%s\x00%p", base, crn.InstanceID, hc)
	c, ok := o.clients[key]
	if !ok {
		cfg := o.Config
		cfg.InstanceID, cfg.Service, cfg.Region = crn.InstanceID, crn.Service, crn.Region
		cfg.BaseURL, cfg.IAMURL, cfg.Token, cfg.HTTPClient = base.String(), iam, tokens, hc
		if c, err = New(cfg); err != nil {
			return nil, err
		}
		if o.clients == nil {
			o.clients = map[string]*Client{}
		}
		o.clients[key] = c
	}
	return c, nil
}

// tokenSource returns the token source for an IAM endpoint: Config.Token,
// or one shared IAM token source per endpoint. o.mu is held.
func (o *Opener) tokenSource(iam string, hc *http.Client) (TokenSource, error) {
	if o.Config.Token != nil {
		return o.Config.Token, nil
	}
	key := fmt.Sprintf("%s\x00%p", iam, hc)
	if ts, ok := o.tokens[key]; ok {
		return ts, nil
	}
	if o.Config.APIKey == "" {
		return nil, fmt.Errorf("%w: no API key (set IBMCLOUD_API_KEY)", kms.ErrPermissionDenied)
	}
	ts, err := NewIAMTokenSource(o.Config.APIKey, iam, hc, o.Config.Now)
	if err != nil {
		return nil, err
	}
	if o.tokens == nil {
		o.tokens = map[string]TokenSource{}
	}
	o.tokens[key] = ts
	return ts, nil
}

// discover finds an HPCS instance's endpoint through its broker, once per
// broker and instance. o.mu is held.
func (o *Opener) discover(ctx context.Context, broker string, crn CRN, tokens TokenSource, hc *http.Client) (string, error) {
	if broker == "" {
		var err error
		if broker, err = BrokerURL(crn.Region); err != nil {
			return "", err
		}
	}
	key := broker + "\x00" + crn.InstanceID
	if ep, ok := o.discovered[key]; ok {
		return ep, nil
	}
	ep, err := DiscoverEndpoint(ctx, hc, broker, crn.InstanceID, tokens, o.Config.Private)
	if err != nil {
		return "", err
	}
	if o.discovered == nil {
		o.discovered = map[string]string{}
	}
	o.discovered[key] = ep
	return ep, nil
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
