package keyprotect

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
)

// An HPCS instance's endpoint comes from its broker, as host:port with no
// scheme; the value is checked before any token is sent to it.
func TestDiscoverEndpoint(t *testing.T) {
	var kmsPublic atomic.Value
	var apiCalls atomic.Int64
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/crypto_v2/instances/"):
			if r.Header.Get("Authorization") != "Bearer t" {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			json.NewEncoder(w).Encode(map[string]any{
				"instance_id": strings.TrimPrefix(r.URL.Path, "/crypto_v2/instances/"),
				"kms":         map[string]string{"public": kmsPublic.Load().(string), "private": "api.private.us-south.hs-crypto.cloud.ibm.com:9999"},
			})
		case strings.HasPrefix(r.URL.Path, "/api/v2/"):
			apiCalls.Add(1)
			w.Write([]byte(keyBody))
		}
	}))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	kmsPublic.Store(u.Host) // host:port, no scheme, as the broker gives it

	ctx := t.Context()
	ep, err := DiscoverEndpoint(ctx, srv.Client(), srv.URL, hostileInstance, StaticToken("t"), false)
	if err != nil || ep != "https://"+u.Host {
		t.Fatalf("DiscoverEndpoint = %q, %v", ep, err)
	}
	if ep, err := DiscoverEndpoint(ctx, srv.Client(), srv.URL, hostileInstance, StaticToken("t"), true); err != nil || ep != "https://api.private.us-south.hs-crypto.cloud.ibm.com:9999" {
		t.Fatalf("private endpoint = %q, %v", ep, err)
	}

	// Through an Opener: discovered once, then used.
	crn := "crn:v1:bluemix:public:hs-crypto:us-south:a/acc:" + hostileInstance + ":key:" + hostileInstance
	o := &Opener{
		Config: Config{Token: StaticToken("t"), HTTPClient: srv.Client()},
		Route:  func(CRN) (Route, error) { return Route{Discover: true, BrokerURL: srv.URL}, nil },
	}
	k, err := o.Open(ctx, crn)
	if err != nil {
		t.Fatal(err)
	}
	if got := k.(*KEK).client.BaseURL(); got != "https://"+u.Host {
		t.Fatalf("the KEK calls %s, want the discovered endpoint", got)
	}
	if _, err := k.(*KEK).CurrentVersion(ctx); err != nil || apiCalls.Load() != 1 {
		t.Fatalf("a call through the discovered endpoint: %v (%d calls)", err, apiCalls.Load())
	}

	// A broker answer naming another host, or plain http, gets no token.
	for _, bad := range []string{"evil.example:443", "http://" + u.Host, "evil.example", "x@" + u.Host, u.Host + "/path"} {
		kmsPublic.Store(bad)
		if ep, err := DiscoverEndpoint(ctx, srv.Client(), srv.URL, hostileInstance, StaticToken("t"), false); err == nil {
			t.Errorf("broker answer %q accepted as %q", bad, ep)
		}
	}
	if _, err := DiscoverEndpoint(ctx, srv.Client(), srv.URL, "not-a-uuid", StaticToken("t"), false); err == nil {
		t.Error("a malformed instance ID was sent to the broker")
	}
	if b, err := BrokerURL("us-south"); err != nil || b != "https://us-south.broker.hs-crypto.cloud.ibm.com" {
		t.Errorf("BrokerURL = %q, %v", b, err)
	}
	if _, err := BrokerURL("evil.example#"); err == nil {
		t.Error("BrokerURL accepted a host as region")
	}
}

// The kms.public value exactly as an HPCS instance publishes it (host:port)
// is accepted as a base URL, and means https.
func TestHostPortBaseURL(t *testing.T) {
	u, err := checkBaseURL("api.us-south.hs-crypto.cloud.ibm.com:8443")
	if err != nil || u.String() != "https://api.us-south.hs-crypto.cloud.ibm.com:8443" {
		t.Fatalf("checkBaseURL(host:port) = %v, %v", u, err)
	}
}
