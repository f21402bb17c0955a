package keyprotect

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/kpcrypt/kpcrypt/kms"
)

const hostileInstance = "9d3c1f2e-4b5a-4c6d-8e7f-0a1b2c3d4e5f"

// A CRN read from a file must not be able to name a host, a port or a
// path: each of these made the client send the user's token to
// evil.example before ParseCRN was strict.
func TestParseCRNRefusesInjection(t *testing.T) {
	for _, bad := range []string{
		"crn:v1:bluemix:public:kms:evil.example#:a/acc:" + hostileInstance + ":key:k1",
		"crn:v1:bluemix:public:kms:evil.example?:a/acc:" + hostileInstance + ":key:k1",
		"crn:v1:bluemix:public:kms:x@evil.example#:a/acc:" + hostileInstance + ":key:k1",
		"crn:v1:bluemix:public:kms:evil.example/:a/acc:" + hostileInstance + ":key:k1",
		"crn:v1:bluemix:public:kms:127.0.0.1:a/acc:" + hostileInstance + ":key:k1",
		"crn:v1:bluemix:public:kms:[::1]:a/acc:" + hostileInstance + ":key:k1",
		"crn:v1:bluemix:public:kms:US-SOUTH:a/acc:" + hostileInstance + ":key:k1",
		"crn:v1:bluemix:public:kms:us-süd:a/acc:" + hostileInstance + ":key:k1",
		"crn:v1:bluemix:public:kms:us-south%2eevil:a/acc:" + hostileInstance + ":key:k1",
		"crn:v1:bluemix:public:kms:-us:a/acc:" + hostileInstance + ":key:k1",
		"crn:v1:bluemix:public:kms:us-south:a/acc:" + strings.ToUpper(hostileInstance) + ":key:k1",
		"crn:v1:bluemix:public:hs-crypto:us-south:a/acc:evil.example#:key:k1",
		"crn:v1:bluemix:public:kms:us-south:a/acc:" + hostileInstance + ":key:../../x",
		"crn:v1:bluemix:public:kms:us-south:a/acc:" + hostileInstance + ":key:k1?x=y",
		"crn:v1:bluemix:public:kms:us-south:a/ac@c:" + hostileInstance + ":key:k1",
		"crn:v1:evil:public:kms:us-south:a/acc:" + hostileInstance + ":key:k1",
	} {
		_, err := ParseCRN(bad)
		if !errors.Is(err, kms.ErrInvalidURI) {
			t.Errorf("ParseCRN(%q) = %v, want ErrInvalidURI", bad, err)
			continue
		}
		if strings.Contains(err.Error(), "evil") || strings.Contains(err.Error(), bad) {
			t.Errorf("ParseCRN's error repeats its input: %v", err)
		}
	}
}

// FuzzParseCRN: whatever ParseCRN accepts builds an endpoint under IBM's
// suffixes whose host is exactly the one the region and instance imply, and
// its errors never repeat the input.
func FuzzParseCRN(f *testing.F) {
	f.Add("crn:v1:bluemix:public:kms:us-south:a/acc:" + hostileInstance + ":key:" + hostileInstance)
	f.Add("crn:v1:bluemix:public:hs-crypto:eu-de:a/acc:" + hostileInstance + ":key:my-alias")
	f.Add("crn:v1:bluemix:public:kms:evil.example#:a/acc:" + hostileInstance + ":key:k1")
	f.Add("crn:v1:bluemix:public:kms:x@evil.example#:a/acc:" + hostileInstance + ":key:k1")
	f.Fuzz(func(t *testing.T, s string) {
		if _, err := ParseCRN(s + "QXQ"); err != nil && strings.Contains(err.Error(), "QXQ") {
			t.Fatalf("error repeats the input: %v", err)
		}
		c, err := ParseCRN(s)
		if err != nil {
			return
		}
		for _, private := range []bool{false, true} {
			e, err := Endpoint(c.Service, c.Region, c.InstanceID, private)
			if err != nil {
				t.Fatalf("Endpoint of an accepted CRN: %v", err)
			}
			u, err := url.Parse(e)
			if err != nil || u.Scheme != "https" || u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.Port() != "" {
				t.Fatalf("endpoint %q is not a bare https URL", e)
			}
			if !IsIBMHost(u.Hostname()) || !strings.Contains("."+u.Hostname(), "."+c.Region+".") {
				t.Fatalf("endpoint %q is not the region's IBM host", e)
			}
		}
	})
}

func TestIsIBMHost(t *testing.T) {
	for host, want := range map[string]bool{
		"us-south.kms.cloud.ibm.com":                  true,
		"x.api.us-south.hs-crypto.appdomain.cloud":    true,
		"iam.cloud.ibm.com":                           true,
		"cloud.ibm.com.evil.example":                  false,
		"evilcloud.ibm.com":                           false,
		".cloud.ibm.com":                              false,
		"127.0.0.1":                                   false,
		"US-SOUTH.KMS.CLOUD.IBM.COM":                  false,
		"us-south.kms.cloud.ibm.com.":                 false,
		"a..cloud.ibm.com":                            false,
		"x\x00.cloud.ibm.com":                         false,
		"us-south.kms.cloud.ibm.com#.appdomain.cloud": false,
	} {
		if got := IsIBMHost(host); got != want {
			t.Errorf("IsIBMHost(%q) = %v, want %v", host, got, want)
		}
	}
}

// recordingDialer records the addresses dialed and never reaches the
// network: it fails every dial, so no real host is ever looked up.
type recordingDialer struct {
	mu    sync.Mutex
	addrs []string
}

func (d *recordingDialer) dial(_ context.Context, _, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.addrs = append(d.addrs, addr)
	d.mu.Unlock()
	return nil, errors.New("test dialer: no network")
}

// With no endpoint configured, a strictly valid CRN is sent to its
// region's published IBM host and to nothing else.
func TestOpenerDialsOnlyTheCRNsIBMHost(t *testing.T) {
	d := &recordingDialer{}
	o := &Opener{Config: Config{
		Token:       StaticToken("t"),
		HTTPClient:  &http.Client{Transport: &http.Transport{DialContext: d.dial, Proxy: nil}},
		MaxAttempts: 1,
	}}
	k, err := o.Open(t.Context(), "crn:v1:bluemix:public:kms:eu-de:a/acc:"+hostileInstance+":key:"+hostileInstance)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.Unwrap(t.Context(), []byte("x"), nil); !errors.Is(err, kms.ErrUnavailable) {
		t.Fatalf("unwrap without network: %v", err)
	}
	if len(d.addrs) != 1 || d.addrs[0] != "eu-de.kms.cloud.ibm.com:443" {
		t.Fatalf("dialed %q, want only eu-de.kms.cloud.ibm.com:443", d.addrs)
	}
}

// Clients are cached by endpoint and instance: a CRN routed to one host
// never reuses the client of another host for the same instance (a
// planted file once poisoned a whole rewrap this way).
func TestOpenerCachesClientsByEndpoint(t *testing.T) {
	o := &Opener{
		Config: Config{Token: StaticToken("t")},
		Route: func(c CRN) (Route, error) {
			return Route{BaseURL: map[string]string{"eu-de": "http://127.0.0.1:1", "us-south": "http://127.0.0.1:2"}[c.Region]}, nil
		},
	}
	crn := func(region string) string {
		return "crn:v1:bluemix:public:kms:" + region + ":a/acc:" + hostileInstance + ":key:" + hostileInstance
	}
	a, err := o.Open(t.Context(), crn("eu-de"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := o.Open(t.Context(), crn("us-south"))
	if err != nil {
		t.Fatal(err)
	}
	if got := a.(*KEK).client.BaseURL(); got != "http://127.0.0.1:1" {
		t.Errorf("eu-de client at %s", got)
	}
	if got := b.(*KEK).client.BaseURL(); got != "http://127.0.0.1:2" {
		t.Errorf("us-south client at %s: the cache handed back another host's client", got)
	}
	if _, err := (&Opener{Config: Config{Token: StaticToken("t")}, Route: func(CRN) (Route, error) {
		return Route{}, kms.ErrUntrusted
	}}).Open(t.Context(), crn("eu-de")); !errors.Is(err, kms.ErrUntrusted) {
		t.Errorf("a refusing route opened the KEK: %v", err)
	}
}

// countingServer counts the requests it receives.
func countingServer(t *testing.T) (*httptest.Server, *atomic.Int64) {
	var n atomic.Int64
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.WriteHeader(http.StatusOK)
		w.Write([]byte(`{"access_token":"stolen","expires_in":3600,"resources":[{"plaintext":"AAAA"}]}`))
	}))
	t.Cleanup(s.Close)
	return s, &n
}

// Neither IAM nor Key Protect redirects are followed: the API key and the
// token never go on to a URL the server chose.
func TestNoRedirects(t *testing.T) {
	elsewhere, hits := countingServer(t)
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	t.Cleanup(redirector.Close)

	// IAM answers with a redirect.
	c, err := New(Config{BaseURL: elsewhere.URL, IAMURL: redirector.URL, InstanceID: hostileInstance, APIKey: "secret-api-key", MaxAttempts: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Unwrap(t.Context(), hostileInstance, "x", nil); err == nil {
		t.Fatal("unwrap succeeded through an IAM redirect")
	}
	// Key Protect answers with a redirect.
	c, err = New(Config{BaseURL: redirector.URL, InstanceID: hostileInstance, Token: StaticToken("user-token"), MaxAttempts: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Unwrap(t.Context(), hostileInstance, "x", nil); !errors.Is(err, errRedirect) {
		t.Fatalf("unwrap through a redirect: %v", err)
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the redirect target received %d requests", n)
	}
}

func TestParseInstanceCRN(t *testing.T) {
	for _, s := range []string{
		"crn:v1:bluemix:public:kms:us-south:a/acc:" + hostileInstance + "::",
		"crn:v1:bluemix:public:kms:us-south:a/acc:" + hostileInstance + ":key:k1",
	} {
		c, err := ParseInstanceCRN(s)
		if err != nil || c.InstanceID != hostileInstance || c.Region != "us-south" || c.KeyID != "" || c.String() != "crn:v1:bluemix:public:kms:us-south:a/acc:"+hostileInstance+"::" {
			t.Errorf("ParseInstanceCRN(%q) = %+v, %v", s, c, err)
		}
	}
	for _, bad := range []string{
		"crn:v1:bluemix:public:kms:evil.example#:a/acc:" + hostileInstance + "::",
		"crn:v1:bluemix:public:kms:us-south:a/acc:x::",
		"crn:v1:bluemix:public:kms:us-south:a/acc:" + hostileInstance + ":key:",
	} {
		if _, err := ParseInstanceCRN(bad); !errors.Is(err, kms.ErrInvalidURI) {
			t.Errorf("ParseInstanceCRN(%q) = %v", bad, err)
		}
	}
}
