package keyprotect

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Service names the two services that serve the Key Protect API.
type Service string

const (
	// KeyProtect is IBM Key Protect ("kms" in CRNs).
	KeyProtect Service = "kms"
	// HPCS is Hyper Protect Crypto Services ("hs-crypto" in CRNs).
	HPCS Service = "hs-crypto"
)

// DefaultIAMURL is IBM Cloud's public IAM endpoint; the token is requested
// at its /identity/token.
const DefaultIAMURL = "https://iam.cloud.ibm.com"

// Config configures a [Client]. InstanceID and one of APIKey or Token are
// required; the endpoint comes from BaseURL or from Service and Region.
type Config struct {
	// BaseURL is the API's base URL without /api/v2, for example
	// "https://us-south.kms.cloud.ibm.com" or an HPCS URL with its port. It
	// must be https, except on a loopback address. Empty means
	// [Endpoint](Service, Region, InstanceID, Private).
	BaseURL string
	// Service, Region and Private choose the endpoint when BaseURL is empty.
	Service Service
	Region  string
	Private bool

	// InstanceID is the service instance's GUID (bluemix-instance).
	InstanceID string
	// KeyRing, if set, is sent as x-kms-key-ring.
	KeyRing string

	// APIKey is exchanged at IAM for tokens. It is a secret: it is never
	// logged or put in errors.
	APIKey string
	// IAMURL is IAM's base URL; empty means DefaultIAMURL.
	IAMURL string
	// Token, if set, supplies tokens instead of the API key exchange.
	Token TokenSource

	// HTTPClient is the client for every request; nil means a client
	// with sensible transport timeouts. Whatever its CheckRedirect, no
	// redirect is ever followed.
	HTTPClient *http.Client
	// Timeout bounds each attempt; zero means 30 seconds.
	Timeout time.Duration
	// MaxAttempts bounds the attempts of each call; zero means 5.
	MaxAttempts int
	// RetryBaseDelay and RetryMaxDelay shape the exponential backoff with
	// full jitter between attempts; zero means 250 ms and 10 s. A
	// Retry-After header is honoured up to RetryMaxDelay.
	RetryBaseDelay time.Duration
	RetryMaxDelay  time.Duration
	// MaxInFlight bounds the requests in flight at once from this client;
	// zero means 64.
	MaxInFlight int

	// Now is the clock for token expiry; nil means time.Now.
	Now func() time.Time
}

// Endpoint returns the public or private base URL of a service instance in a
// region. HPCS instances get their instance-based host; give an older,
// port-based HPCS endpoint as BaseURL. The URL is built with net/url from a
// region and instance that must pass [ParseCRN]'s rules, and its host always
// ends in one of IBM's published suffixes ([IsIBMHost]).
func Endpoint(s Service, region, instanceID string, private bool) (string, error) {
	if !regionRE.MatchString(region) {
		return "", errors.New("keyprotect: the region is not a lowercase name such as us-south")
	}
	p := ""
	if private {
		p = "private."
	}
	var host string
	switch s {
	case KeyProtect, "":
		host = p + region + ".kms.cloud.ibm.com"
	case HPCS:
		if !uuidRE.MatchString(instanceID) {
			return "", errors.New("keyprotect: an HPCS endpoint needs the instance ID, a lowercase UUID")
		}
		host = instanceID + ".api." + p + region + ".hs-crypto.appdomain.cloud"
	default:
		return "", errors.New("keyprotect: unknown service (want kms or hs-crypto)")
	}
	u := url.URL{Scheme: "https", Host: host}
	if !IsIBMHost(u.Hostname()) {
		return "", errors.New("keyprotect: the endpoint built from the CRN is not an IBM Cloud host")
	}
	return u.String(), nil
}

// ibmSuffixes are the DNS suffixes under which IBM publishes the Key
// Protect, HPCS and IAM endpoints. appdomain.cloud also holds customers'
// applications, so only its HPCS part counts.
var ibmSuffixes = []string{".cloud.ibm.com", ".hs-crypto.appdomain.cloud"}

// IsIBMHost reports whether host (without a port) is a DNS name under one
// of the suffixes where IBM publishes Key Protect, HPCS and IAM endpoints:
// cloud.ibm.com, and hs-crypto.appdomain.cloud for HPCS instances. IP
// literals and other names are not.
func IsIBMHost(host string) bool {
	if host == "" || len(host) > 253 || net.ParseIP(host) != nil {
		return false
	}
	for _, r := range host {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	if strings.Contains(host, "..") || strings.HasPrefix(host, ".") || strings.HasPrefix(host, "-") {
		return false
	}
	for _, suf := range ibmSuffixes {
		if strings.HasSuffix(host, suf) && len(host) > len(suf) {
			return true
		}
	}
	return false
}

// errRedirect refuses every redirect: a token or an API key is never sent on
// to a URL the server chose.
var errRedirect = errors.New("keyprotect: the server answered with a redirect, which is never followed")

// noRedirects returns a copy of hc (or of the default client when nil) that
// follows no redirect.
func noRedirects(hc *http.Client) *http.Client {
	if hc == nil {
		hc = defaultHTTPClient()
	}
	c := *hc
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return errRedirect }
	return &c
}

// CheckBaseURL reports whether raw may be a base URL of the API or of IAM:
// https, or http on a loopback address, with a host and no path.
func CheckBaseURL(raw string) error {
	_, err := checkBaseURL(raw)
	return err
}

// checkBaseURL requires https, except on loopback, and no path beyond "/".
//
// A value without a scheme, such as the host:port that an HPCS instance
// publishes as its key-management endpoint, means https.
func checkBaseURL(raw string) (*url.URL, error) {
	if raw != "" && !strings.Contains(raw, "://") {
		raw = "https://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("keyprotect: base URL %q: %v", raw, err)
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && isLoopback(u.Hostname()):
	default:
		return nil, fmt.Errorf("keyprotect: base URL %q: https is required except on a loopback address", raw)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("keyprotect: base URL %q has no host", raw)
	}
	if u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return nil, fmt.Errorf("keyprotect: base URL %q must not have user information, a query or a fragment", raw)
	}
	if strings.Trim(u.Path, "/") != "" {
		return nil, fmt.Errorf("keyprotect: base URL %q must not have a path (the client adds /api/v2)", raw)
	}
	u.Path = ""
	return u, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
