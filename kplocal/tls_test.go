package kplocal

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tlsClient is an HTTP client trusting only the CA in the PEM file.
func tlsClient(t *testing.T, caFile string) *http.Client {
	t.Helper()
	pemData, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		t.Fatalf("CA file %s holds no certificate", caFile)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

func startTLS(t *testing.T, cfg Config) (*Running, string) {
	t.Helper()
	cfg.InstanceID, cfg.APIKey, cfg.TLS = testInstance, testAPIKey, true
	cfg.CAFile = filepath.Join(t.TempDir(), "ca.pem")
	srv, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return srv, cfg.CAFile
}

func tokenFor(t *testing.T, c *http.Client, tokenURL, apiKey string) string {
	t.Helper()
	resp, err := c.PostForm(tokenURL, url.Values{"grant_type": {apiKeyGrantType}, "apikey": {apiKey}})
	if err != nil {
		t.Fatal(err)
	}
	var tok tokenResponse
	readResult(t, resp).wantStatus(t, http.StatusOK).decode(t, &tok)
	return tok.AccessToken
}

func getWith(t *testing.T, c *http.Client, rawURL, token string) *result {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, rawURL, nil)
	if token != "" {
		req.Header.Set("authorization", "Bearer "+token)
	}
	req.Header.Set("bluemix-instance", testInstance)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return readResult(t, resp)
}

func TestTLSWithCAFile(t *testing.T) {
	srv, caFile := startTLS(t, Config{})
	info := srv.ClientInfo()
	if !strings.HasPrefix(info.BaseURL, "https://127.0.0.1:") || info.IAMURL != info.BaseURL ||
		info.TokenURL != info.BaseURL+"/identity/token" || info.CAFile != caFile || info.APIKey != testAPIKey || info.InstanceID != testInstance {
		t.Fatalf("ClientInfo = %+v", info)
	}
	if fi, err := os.Stat(caFile); err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("CA file: %v, %v", fi, err)
	}
	c := tlsClient(t, caFile)
	tok := tokenFor(t, c, info.TokenURL, info.APIKey)
	getWith(t, c, info.BaseURL+"/api/v2/keys", tok).wantStatus(t, http.StatusOK)
	// The same through the server's own pool and client.
	getWith(t, srv.HTTPClient(), info.BaseURL+"/api/v2/keys", tok).wantStatus(t, http.StatusOK)

	// A client that does not trust the CA fails the handshake.
	_, err := http.DefaultClient.Get(info.BaseURL + "/api/v2/keys")
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Fatalf("untrusting client: %v, want x509.UnknownAuthorityError", err)
	}
	// Each server has its own CA.
	other, _ := startTLS(t, Config{})
	if _, err := c.Get(other.BaseURL() + "/api/v2/keys"); !errors.As(err, &unknown) {
		t.Fatalf("another server's certificate: %v", err)
	}
}

func TestClientInfoPlain(t *testing.T) {
	h := newHarness(t, Config{})
	info := h.srv.ClientInfo()
	if !strings.HasPrefix(info.BaseURL, "http://") || info.CAFile != "" || h.srv.CertPool() != nil || h.srv.CACertPEM() != nil {
		t.Fatalf("ClientInfo = %+v", info)
	}
	if _, err := New(Config{CAFile: "x.pem"}); err == nil {
		t.Fatal("a CA file without TLS was accepted")
	}
}

func TestHPCSBroker(t *testing.T) {
	srv, caFile := startTLS(t, Config{Service: ServiceHPCS})
	c := tlsClient(t, caFile)
	tok := tokenFor(t, c, srv.TokenURL(), testAPIKey)
	r := getWith(t, c, srv.BaseURL()+"/crypto_v2/instances/"+testInstance, tok).wantStatus(t, http.StatusOK)
	var got struct {
		InstanceID string `json:"instance_id"`
		KMS        struct{ Public, Private string }
		EP11       struct{ Public, Private string }
	}
	if err := json.Unmarshal(r.body, &got); err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(srv.BaseURL(), "https://")
	if got.InstanceID != testInstance || got.KMS.Public != host || got.KMS.Private != host || got.EP11.Public == "" {
		t.Fatalf("broker answer %s, want kms at %s", r.body, host)
	}
	// The kms value has no scheme: https://<value>/api/v2 is the key API.
	getWith(t, c, "https://"+got.KMS.Public+"/api/v2/keys", tok).wantStatus(t, http.StatusOK)
	getWith(t, c, srv.BaseURL()+"/crypto_v2/instances/"+testInstance, "").wantError(t, http.StatusUnauthorized, "")
	getWith(t, c, srv.BaseURL()+"/crypto_v2/instances/00000000-0000-4000-8000-000000000000", tok).wantError(t, http.StatusNotFound, "")
	if st := srv.Stats(); st.Broker != 3 {
		t.Fatalf("stats = %+v", st)
	}

	// A Key Protect server has no broker.
	h := newHarness(t, Config{})
	getWith(t, http.DefaultClient, h.srv.BaseURL()+"/crypto_v2/instances/"+testInstance, h.token).wantError(t, http.StatusNotFound, "")
}
