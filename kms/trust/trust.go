// Package trust is kpcrypt's trust configuration: which KEKs that a file's
// header names may be opened, and where the calls for each Key Protect or
// HPCS instance go.
//
// A header's KEK URIs are hints, never authority. Until a KEK has unwrapped
// the data key, nothing in the header is authenticated, so a file must not
// choose the host that receives the user's IAM token, the key file that
// decides what decrypts, or the PKCS#11 module that is loaded. A [Policy]
// is the [kms.DiscoveryFilter] that decides, from the user's own
// configuration:
//
//   - A key CRN must pass [keyprotect.ParseCRN]'s strict rules. When the
//     configuration lists Key Protect or HPCS instances, the CRN's service,
//     region and instance (and key ID, when the entry lists key IDs) must be
//     one of them. When it lists none, any CRN is allowed: its calls go to
//     the endpoint the user set (IBMCLOUD_KP_ENDPOINT) and nowhere else, or,
//     with none set, to the endpoint IBM publishes for the CRN's region,
//     whose host is under cloud.ibm.com or appdomain.cloud. A decrypt in that
//     last mode proves that the file opened under an IBM-hosted key that the
//     user's token may use; it says nothing about who made the file.
//   - A local: key file is opened only when the configuration lists its
//     path, and then under the path the configuration spells.
//   - A pkcs11: slot is opened only when the configuration lists a URI with
//     the same token and object, and then through that configured URI, with
//     the module and PIN source the user chose.
//
// The configuration is a JSON file, by default trust.json in kpcrypt's
// directory under the user's configuration directory
// (~/.config/kpcrypt/trust.json on Linux), or the file that
// KPCRYPT_TRUST_FILE names. It gets the checks of a key file: a regular
// file, owned by the user or root, not readable or writable by group or
// others, at most 1 MiB. For example:
//
//	{
//	  "instances": [
//	    {
//	      "service": "kms",
//	      "region": "us-south",
//	      "instance_id": "5c1b7e0a-3f2d-4e6b-9a8c-0d1e2f3a4b5c",
//	      "key_ids": ["12e8c9c2-a162-472d-b7d6-8b9a86b815a6"],
//	      "endpoint": "https://private.us-south.kms.cloud.ibm.com",
//	      "iam_endpoint": "https://private.iam.cloud.ibm.com"
//	    }
//	  ],
//	  "local_keys": ["/home/me/.config/kpcrypt/kek.json"],
//	  "pkcs11_keys": ["pkcs11:token=kpcrypt;object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/run/secrets/pin"]
//	}
//
// Every field is optional. key_ids, endpoint and iam_endpoint narrow or
// route one instance; without endpoint its calls go to IBMCLOUD_KP_ENDPOINT
// when set, or else to its published endpoint.
package trust

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/keyprotect"
	"github.com/kpcrypt/kpcrypt/kms/pkcs11"
)

// EnvFile is the environment variable that names the trust configuration
// file.
const EnvFile = "KPCRYPT_TRUST_FILE"

// MaxFileSize bounds the trust configuration file.
const MaxFileSize = 1 << 20

// Config is a parsed trust configuration.
type Config struct {
	// Instances are the Key Protect and HPCS instances whose key CRNs may
	// be opened from headers. When the field is present, even empty, only
	// these are; when it is absent (nil), any CRN that passes ParseCRN
	// is, routed to IBMCLOUD_KP_ENDPOINT or to IBM's published host.
	Instances []Instance `json:"instances"`
	// LocalKeys are the paths of the local key files that may be opened
	// from headers. Each is absolute.
	LocalKeys []string `json:"local_keys,omitempty"`
	// PKCS11Keys are PKCS#11 URIs, with module-path and pin-source as
	// needed: a header slot of the same token and object is opened through
	// the URI listed here.
	PKCS11Keys []string `json:"pkcs11_keys,omitempty"`
}

// Instance is a Key Protect or HPCS service instance.
type Instance struct {
	// Service is "kms" (Key Protect) or "hs-crypto" (HPCS).
	Service keyprotect.Service `json:"service"`
	// Region is the instance's region, as in its CRNs.
	Region string `json:"region"`
	// InstanceID is the instance's GUID.
	InstanceID string `json:"instance_id"`
	// KeyIDs, when not empty, are the only keys of the instance that may
	// be opened from headers.
	KeyIDs []string `json:"key_ids,omitempty"`
	// Endpoint is the API base URL for the instance; empty means the
	// user's IBMCLOUD_KP_ENDPOINT, or else the published endpoint.
	Endpoint string `json:"endpoint,omitempty"`
	// IAMEndpoint is IAM's base URL for the instance's tokens; empty means
	// the user's IBMCLOUD_IAM_ENDPOINT, or else IBM's public IAM.
	IAMEndpoint string `json:"iam_endpoint,omitempty"`
	// Discover, for an HPCS instance without Endpoint, asks the HPCS broker
	// for the instance's key-management endpoint (kms.public, or
	// kms.private), as the HPCS set-up page advises. BrokerEndpoint
	// overrides the region's broker, https://REGION.broker.hs-crypto.cloud.ibm.com.
	Discover       bool   `json:"discover,omitempty"`
	BrokerEndpoint string `json:"broker_endpoint,omitempty"`
	// CAFile, when set, is a PEM file of the CA certificates that the
	// instance's endpoints (API, IAM, broker) are trusted under, instead of
	// the system's roots: for a server with a CA of its own, such as
	// kplocal with TLS. It must be a regular file that group and others
	// cannot write.
	CAFile string `json:"ca_file,omitempty"`
}

// ErrInvalidConfig means a trust configuration is malformed.
var ErrInvalidConfig = errors.New("invalid trust configuration")

// Parse parses and validates a trust configuration. Unknown fields are
// errors, so that a misspelt key never silently widens or narrows trust.
func Parse(data []byte) (*Config, error) {
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("%w: over %d bytes", ErrInvalidConfig, MaxFileSize)
	}
	if err := checkStrictJSON(data); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	var probe struct {
		Instances json.RawMessage `json:"instances"`
	}
	json.Unmarshal(data, &probe)
	if probe.Instances != nil && c.Instances == nil {
		c.Instances = []Instance{} // present but empty or null: no CRN
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the JSON object", ErrInvalidConfig)
	}
	bad := func(format string, args ...any) (*Config, error) {
		return nil, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	for i, in := range c.Instances {
		if in.Service != keyprotect.KeyProtect && in.Service != keyprotect.HPCS {
			return bad("instances[%d]: service must be kms or hs-crypto", i)
		}
		if !keyprotect.ValidRegion(in.Region) {
			return bad("instances[%d]: region must be a lowercase name such as us-south", i)
		}
		if !keyprotect.ValidInstanceID(in.InstanceID) {
			return bad("instances[%d]: instance_id must be the instance's GUID, in lowercase", i)
		}
		for j, k := range in.KeyIDs {
			if !keyprotect.ValidKeyID(k) {
				return bad("instances[%d].key_ids[%d]: not a key ID or alias", i, j)
			}
		}
		for _, ep := range []struct{ field, url string }{
			{"endpoint", in.Endpoint}, {"iam_endpoint", in.IAMEndpoint}, {"broker_endpoint", in.BrokerEndpoint},
		} {
			if ep.url != "" && keyprotect.CheckBaseURL(ep.url) != nil {
				return bad("instances[%d].%s: want https://HOST[:PORT] (http only on loopback)", i, ep.field)
			}
		}
		if in.CAFile != "" && !filepath.IsAbs(in.CAFile) {
			return bad("instances[%d].ca_file: the path must be absolute", i)
		}
		if (in.Discover || in.BrokerEndpoint != "") && in.Service != keyprotect.HPCS {
			return bad("instances[%d]: discover and broker_endpoint are for hs-crypto instances", i)
		}
	}
	for i, p := range c.LocalKeys {
		if !filepath.IsAbs(p) {
			return bad("local_keys[%d]: the path must be absolute", i)
		}
		c.LocalKeys[i] = filepath.Clean(p)
	}
	for i, u := range c.PKCS11Keys {
		if kms.HasPINValue(u) {
			return bad("pkcs11_keys[%d]: pin-value is not allowed here; use pin-source=FILE or KPCRYPT_PKCS11_PIN", i)
		}
		if _, _, err := pkcs11Identity(u); err != nil {
			return bad("pkcs11_keys[%d]: %v", i, err)
		}
	}
	return &c, nil
}

// Policy is the trust decision for one process: a configuration (which may
// be nil, for none) and the endpoints the user set in the environment. It
// implements [kms.DiscoveryFilter], and its Route method routes the calls
// for every key CRN, whether it came from a header or from the user.
type Policy struct {
	// Config is the trust configuration; nil means none.
	Config *Config
	// KPEndpoint is the API base URL the user set (IBMCLOUD_KP_ENDPOINT):
	// the calls of every CRN that no instance entry routes go there, and
	// nowhere else.
	KPEndpoint string
	// IAMEndpoint is IAM's base URL the user set (IBMCLOUD_IAM_ENDPOINT).
	IAMEndpoint string
	// Source names where Config came from, for messages: a path, or empty.
	Source string

	mu      sync.Mutex
	clients map[string]*http.Client // by CA file
}

// httpClientFor returns the HTTP client that trusts the CAs of caFile, one
// per file.
func (p *Policy) httpClientFor(caFile string) (*http.Client, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if hc, ok := p.clients[caFile]; ok {
		return hc, nil
	}
	pool, err := loadCAFile(caFile)
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		TLSClientConfig:       &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   64,
	}}
	if p.clients == nil {
		p.clients = map[string]*http.Client{}
	}
	p.clients[caFile] = hc
	return hc, nil
}

// loadCAFile reads a PEM file of CA certificates: a regular file that
// group and others cannot write, of at most 1 MiB.
func loadCAFile(path string) (*x509.CertPool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("ca_file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("ca_file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("ca_file %s is not a regular file", path)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("ca_file %s may be written by group or others (mode %04o): run chmod go-w %s", path, fi.Mode().Perm(), path)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if len(data) > MaxFileSize || !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("ca_file %s holds no PEM certificate", path)
	}
	return pool, nil
}

// Discover implements [kms.DiscoveryFilter].
func (p *Policy) Discover(uri string) (string, error) {
	scheme, rest, _ := strings.Cut(uri, ":")
	switch scheme {
	case keyprotect.Scheme:
		crn, err := keyprotect.ParseCRN(uri)
		if err != nil {
			return "", err
		}
		if p.Config == nil || p.Config.Instances == nil {
			return uri, nil
		}
		in := p.instance(crn)
		if in == nil {
			return "", fmt.Errorf("%w: its Key Protect instance is not listed in the trust configuration (%s); add it there, or give --kek", kms.ErrUntrusted, p.where())
		}
		if len(in.KeyIDs) > 0 && !slices.Contains(in.KeyIDs, crn.KeyID) {
			return "", fmt.Errorf("%w: its key is not among the key_ids listed for its instance in the trust configuration (%s)", kms.ErrUntrusted, p.where())
		}
		return uri, nil
	case "local":
		if p.Config != nil && filepath.IsAbs(rest) {
			want := filepath.Clean(rest)
			for _, path := range p.Config.LocalKeys {
				if path == want {
					return "local:" + path, nil
				}
			}
		}
		return "", fmt.Errorf("%w: a file may not choose a local key file; give --kek local:PATH, or list the key file's absolute path under local_keys in the trust configuration (%s)", kms.ErrUntrusted, p.where())
	case "pkcs11":
		token, object, err := pkcs11Identity(uri)
		if err != nil {
			return "", fmt.Errorf("%w: %v", kms.ErrInvalidURI, err)
		}
		if p.Config != nil {
			for _, c := range p.Config.PKCS11Keys {
				if t, o, err := pkcs11Identity(c); err == nil && t == token && o == object {
					return c, nil
				}
			}
		}
		return "", fmt.Errorf("%w: a file may not choose a PKCS#11 module; give --kek pkcs11:…, or list the token's URI under pkcs11_keys in the trust configuration (%s)", kms.ErrUntrusted, p.where())
	}
	return "", fmt.Errorf("%w: a KEK of an unknown scheme", kms.ErrUntrusted)
}

// Route chooses where the calls for crn go: the endpoint of its instance
// entry, else the user's KPEndpoint, else (empty BaseURL) the endpoint IBM
// publishes for it. It has the signature of keyprotect.Opener.Route.
func (p *Policy) Route(crn keyprotect.CRN) (keyprotect.Route, error) {
	r := keyprotect.Route{BaseURL: p.KPEndpoint, IAMURL: p.IAMEndpoint}
	if in := p.instance(crn); in != nil {
		if in.Endpoint != "" {
			r.BaseURL = in.Endpoint
		}
		if in.IAMEndpoint != "" {
			r.IAMURL = in.IAMEndpoint
		}
		if in.Endpoint == "" && in.Discover {
			r.BaseURL, r.Discover, r.BrokerURL = "", true, in.BrokerEndpoint
		}
		if in.CAFile != "" {
			hc, err := p.httpClientFor(in.CAFile)
			if err != nil {
				return r, err
			}
			r.HTTPClient = hc
		}
	}
	return r, nil
}

func (p *Policy) instance(crn keyprotect.CRN) *Instance {
	if p.Config == nil {
		return nil
	}
	for i, in := range p.Config.Instances {
		if in.Service == crn.Service && in.Region == crn.Region && in.InstanceID == crn.InstanceID {
			return &p.Config.Instances[i]
		}
	}
	return nil
}

func (p *Policy) where() string {
	if p.Source != "" {
		return p.Source
	}
	return "none is set: see " + EnvFile
}

// pkcs11Identity returns the token and object labels of a PKCS#11 URI,
// as pkcs11.ParseURI reads them. The error never repeats the URI.
func pkcs11Identity(uri string) (token, object string, err error) {
	u, err := pkcs11.ParseURI(uri)
	if err != nil {
		return "", "", err
	}
	if u.Token == "" || u.Object == "" {
		return "", "", errors.New("a pkcs11: URI needs token= and object=")
	}
	return u.Token, u.Object, nil
}

// checkStrictJSON refuses what encoding/json would let through silently:
// a top level that is not an object, and an object with two keys that
// differ at most in case (encoding/json matches field names without regard
// to case, and the last one wins), so that a second spelling of a field
// can never replace the first.
func checkStrictJSON(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return errors.New("the configuration must be a JSON object")
	}
	type frame struct {
		object bool
		keys   map[string]bool
		expect bool // in an object, the next string is a key
	}
	stack := []frame{{object: true, keys: map[string]bool{}, expect: true}}
	for len(stack) > 0 {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		top := &stack[len(stack)-1]
		if top.object && top.expect {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:len(stack)-1]
				if len(stack) > 0 && stack[len(stack)-1].object {
					stack[len(stack)-1].expect = true
				}
				continue
			}
			key := strings.ToLower(tok.(string))
			if top.keys[key] {
				return fmt.Errorf("the key %q appears twice in one object (keys are compared without regard to case)", tok.(string))
			}
			top.keys[key] = true
			top.expect = false
			continue
		}
		switch d, _ := tok.(json.Delim); d {
		case '{':
			stack = append(stack, frame{object: true, keys: map[string]bool{}, expect: true})
			continue
		case '[':
			stack = append(stack, frame{})
			continue
		case ']':
			stack = stack[:len(stack)-1]
		}
		if len(stack) > 0 && stack[len(stack)-1].object {
			stack[len(stack)-1].expect = true
		}
	}
	return nil
}
