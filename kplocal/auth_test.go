package kplocal

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestTokenExchange(t *testing.T) {
	h := newHarness(t, Config{TokenTTL: 10 * time.Minute})
	for _, path := range []string{"/identity/token", "/oidc/token"} {
		r := h.exchange(path, url.Values{"grant_type": {apiKeyGrantType}, "apikey": {testAPIKey}}).wantStatus(t, http.StatusOK)
		var tok tokenResponse
		r.decode(t, &tok)
		now := h.clock.Now().Unix()
		if tok.TokenType != "Bearer" || tok.ExpiresIn != 600 || tok.Expiration != now+600 || tok.RefreshToken == "" {
			t.Fatalf("%s: token response %+v", path, tok)
		}
		// JWT-shaped, with iat and exp in the payload.
		parts := strings.Split(tok.AccessToken, ".")
		if len(parts) != 3 {
			t.Fatalf("token has %d parts, want 3", len(parts))
		}
		raw, err := base64.RawURLEncoding.DecodeString(parts[1])
		if err != nil {
			t.Fatal(err)
		}
		var claims struct{ Iat, Exp int64 }
		if err := json.Unmarshal(raw, &claims); err != nil || claims.Iat != now || claims.Exp != now+600 {
			t.Fatalf("claims %s: %+v, %v", raw, claims, err)
		}
	}

	bad := []struct {
		form url.Values
		code string
	}{
		{url.Values{"grant_type": {apiKeyGrantType}, "apikey": {"wrong"}}, "BXNIM0415E"},
		{url.Values{"grant_type": {apiKeyGrantType}}, "BXNIM0109E"},
		{url.Values{"apikey": {testAPIKey}}, "BXNIM0109E"},
		{url.Values{"grant_type": {"refresh_token"}, "apikey": {testAPIKey}}, "BXNIM0104E"},
	}
	for _, tc := range bad {
		r := h.exchange("/identity/token", tc.form).wantStatus(t, http.StatusBadRequest)
		var e iamError
		r.decode(t, &e)
		if e.ErrorCode != tc.code || e.ErrorMessage == "" || e.Context["requestId"] == "" {
			t.Fatalf("%v: IAM error %+v, want %s", tc.form, e, tc.code)
		}
		if strings.Contains(string(r.body), testAPIKey) {
			t.Fatalf("IAM error echoes the API key: %s", r.body)
		}
	}
	resp, err := http.Get(h.srv.TokenURL())
	if err != nil {
		t.Fatal(err)
	}
	readResult(t, resp).wantStatus(t, http.StatusMethodNotAllowed)
	if got := h.srv.Stats().Tokens; got != 8 { // harness + 2 good + 4 bad + GET
		t.Fatalf("Stats().Tokens = %d, want 8", got)
	}
}

func TestUnauthorized(t *testing.T) {
	h := newHarness(t, Config{TokenTTL: 5 * time.Minute})
	h.request(http.MethodGet, "/keys", nil).wantStatus(t, http.StatusOK)

	other := newHarness(t, Config{}) // another server: another signing secret
	tampered := []byte(h.token)
	if i := len(tampered) - 10; tampered[i] == 'A' {
		tampered[i] = 'B'
	} else {
		tampered[i] = 'A'
	}
	for name, authz := range map[string]string{
		"missing":            "",
		"not bearer":         "Basic " + h.token,
		"garbage":            "Bearer not-a-token",
		"tampered signature": "Bearer " + string(tampered),
		"other server":       "Bearer " + other.token,
	} {
		r := h.request(http.MethodGet, "/keys", nil, "authorization", authz)
		r.wantError(t, http.StatusUnauthorized, "")
		if !strings.Contains(string(r.body), "Unauthorized: The user does not have access to the specified resource") {
			t.Fatalf("%s: body %s", name, r.body)
		}
	}

	// Expiry is judged by the server's clock.
	h.clock.Advance(5*time.Minute - time.Second)
	h.request(http.MethodGet, "/keys", nil).wantStatus(t, http.StatusOK)
	h.clock.Advance(time.Second)
	h.request(http.MethodGet, "/keys", nil).wantError(t, http.StatusUnauthorized, "")
	h.token = h.fetchToken(testAPIKey)
	h.request(http.MethodGet, "/keys", nil).wantStatus(t, http.StatusOK)

	if got := h.srv.Stats().Unauthorized; got != 6 {
		t.Fatalf("Stats().Unauthorized = %d, want 6", got)
	}
}

func TestInstanceHeader(t *testing.T) {
	h := newHarness(t, Config{})
	id := h.create("instance-key", true).ID

	h.request(http.MethodGet, "/keys/"+id, nil, "bluemix-instance", "").wantError(t, http.StatusBadRequest, "")
	// A token of this account does not grant access to another instance.
	h.request(http.MethodGet, "/keys/"+id, nil, "bluemix-instance", "00000000-0000-4000-8000-000000000000").
		wantError(t, http.StatusUnauthorized, "")
	h.request(http.MethodGet, "/keys/"+id, nil).wantStatus(t, http.StatusOK)
}

func TestCorrelationIDAndContentTypes(t *testing.T) {
	h := newHarness(t, Config{})
	r := h.request(http.MethodGet, "/keys", nil, "correlation-id", "7a6b5c4d-0000-4000-8000-000000000001")
	if got := r.header.Get("correlation-id"); got != "7a6b5c4d-0000-4000-8000-000000000001" {
		t.Fatalf("correlation-id echoed as %q", got)
	}
	r = h.request(http.MethodGet, "/keys", nil)
	if got := r.header.Get("correlation-id"); !isUUID(got) {
		t.Fatalf("generated correlation-id %q is not a UUID", got)
	}
	if ct := r.header.Get("content-type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("content-type = %q", ct)
	}

	// Any content type, or none, is accepted.
	body := keyBody(map[string]any{"name": "ct-key", "extractable": false})
	for _, ct := range []string{"", "application/json", "application/vnd.ibm.kms.key+json", "text/plain"} {
		h.request(http.MethodPost, "/keys", body, "content-type", ct).wantStatus(t, http.StatusCreated)
	}
}

func TestRoutingErrors(t *testing.T) {
	h := newHarness(t, Config{})
	h.request(http.MethodGet, "/nothing", nil).wantError(t, http.StatusNotFound, "")
	h.request(http.MethodGet, "/keys/a/b/c/d/e", nil).wantError(t, http.StatusNotFound, "")
	r := h.request(http.MethodPut, "/keys", nil)
	r.wantError(t, http.StatusMethodNotAllowed, "")
	if allow := r.header.Get("Allow"); allow != "GET, HEAD, POST" {
		t.Fatalf("Allow = %q", allow)
	}
	resp, err := http.Get(h.srv.BaseURL() + "/elsewhere")
	if err != nil {
		t.Fatal(err)
	}
	readResult(t, resp).wantError(t, http.StatusNotFound, "")
}
