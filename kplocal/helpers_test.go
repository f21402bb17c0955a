package kplocal

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	testInstance = "3f9a4c2e-5b1d-4e8f-9a7c-1d2e3f4a5b6c"
	testAPIKey   = "test-api-key"
)

// fakeClock is a settable clock for Config.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// harness is a kplocal served over real HTTP, with a token.
type harness struct {
	t     *testing.T
	srv   *Running
	clock *fakeClock
	token string
}

// newHarness starts kplocal with cfg; the instance, API key and (unless
// set) clock are filled in.
func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	h := &harness{t: t, clock: newFakeClock()}
	cfg.InstanceID, cfg.APIKey = testInstance, testAPIKey
	if cfg.Now == nil {
		cfg.Now = h.clock.Now
	}
	srv, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	h.srv = srv
	h.token = h.fetchToken(testAPIKey)
	return h
}

// exchange posts an API key to the token endpoint.
func (h *harness) exchange(path string, form url.Values) *result {
	h.t.Helper()
	resp, err := http.PostForm(h.srv.BaseURL()+path, form)
	if err != nil {
		h.t.Fatal(err)
	}
	return readResult(h.t, resp)
}

func (h *harness) fetchToken(apiKey string) string {
	h.t.Helper()
	r := h.exchange("/identity/token", url.Values{"grant_type": {apiKeyGrantType}, "apikey": {apiKey}})
	if r.status != http.StatusOK {
		h.t.Fatalf("token exchange: %d %s", r.status, r.body)
	}
	var tok tokenResponse
	r.decode(h.t, &tok)
	return tok.AccessToken
}

// result is a response read in full.
type result struct {
	status int
	header http.Header
	body   []byte
}

func readResult(t *testing.T, resp *http.Response) *result {
	t.Helper()
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return &result{status: resp.StatusCode, header: resp.Header, body: body}
}

func (r *result) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decoding %d body %q: %v", r.status, r.body, err)
	}
}

// wantStatus fails unless the response has the given status.
func (r *result) wantStatus(t *testing.T, status int) *result {
	t.Helper()
	if r.status != status {
		t.Fatalf("status = %d, want %d; body %s", r.status, status, r.body)
	}
	return r
}

// wireError is a Key Protect error envelope as a client reads it.
type wireError struct {
	Metadata struct {
		CollectionType  string `json:"collectionType"`
		CollectionTotal int    `json:"collectionTotal"`
	} `json:"metadata"`
	Resources []struct {
		ErrorMsg string       `json:"errorMsg"`
		Reasons  []wireReason `json:"reasons"`
	} `json:"resources"`
}

type wireReason struct {
	Code     string `json:"code"`
	Message  string `json:"message"`
	Status   int    `json:"status"`
	MoreInfo string `json:"moreInfo"`
	Target   *struct {
		Type string `json:"type"`
		Name string `json:"name"`
	} `json:"target"`
}

// wantError checks an error answer: status, envelope, and the first
// reason's code ("" for an errorMsg-only error). It returns the first
// reason (zero when there is none).
func (r *result) wantError(t *testing.T, status int, code string) wireReason {
	t.Helper()
	r.wantStatus(t, status)
	var e wireError
	r.decode(t, &e)
	if e.Metadata.CollectionType != "application/vnd.ibm.kms.error+json" || e.Metadata.CollectionTotal != 1 ||
		len(e.Resources) != 1 || e.Resources[0].ErrorMsg == "" {
		t.Fatalf("malformed error envelope: %s", r.body)
	}
	res := e.Resources[0]
	if code == "" {
		if len(res.Reasons) != 0 {
			t.Fatalf("reasons = %+v, want none", res.Reasons)
		}
		return wireReason{}
	}
	if len(res.Reasons) == 0 || res.Reasons[0].Code != code {
		t.Fatalf("error %s, want first reason code %s", r.body, code)
	}
	if res.Reasons[0].Status != status || !strings.HasSuffix(res.ErrorMsg, "("+code+")") ||
		!strings.HasPrefix(res.ErrorMsg, http.StatusText(status)+": ") || res.Reasons[0].MoreInfo == "" {
		t.Fatalf("inconsistent error envelope for %d %s: %s", status, code, r.body)
	}
	return res.Reasons[0]
}

// wantTarget checks a reason's target.
func (w wireReason) wantTarget(t *testing.T, typ, name string) {
	t.Helper()
	if w.Target == nil || w.Target.Type != typ || w.Target.Name != name {
		t.Fatalf("target = %+v, want %s %s", w.Target, typ, name)
	}
}

// request sends an authenticated request to /api/v2+path. body may be nil,
// a string (sent as is) or a value (sent as JSON). headers are name, value
// pairs; a value of "" removes the header.
func (h *harness) request(method, path string, body any, headers ...string) *result {
	h.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			h.t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, h.srv.BaseURL()+"/api/v2"+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("authorization", "Bearer "+h.token)
	req.Header.Set("bluemix-instance", testInstance)
	req.Header.Set("accept", "application/json")
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i+1] == "" {
			req.Header.Del(headers[i])
		} else {
			req.Header.Set(headers[i], headers[i+1])
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	return readResult(h.t, resp)
}

// wireKey is a key resource as a client reads it.
type wireKey struct {
	Type           string   `json:"type"`
	ID             string   `json:"id"`
	Name           string   `json:"name"`
	Description    string   `json:"description"`
	Aliases        []string `json:"aliases"`
	Tags           []string `json:"tags"`
	State          int      `json:"state"`
	Extractable    bool     `json:"extractable"`
	Imported       bool     `json:"imported"`
	CRN            string   `json:"crn"`
	KeyRingID      string   `json:"keyRingID"`
	Payload        string   `json:"payload"`
	Deleted        *bool    `json:"deleted"`
	CreationDate   string   `json:"creationDate"`
	LastUpdateDate string   `json:"lastUpdateDate"`
	LastRotateDate string   `json:"lastRotateDate"`
	DeletionDate   string   `json:"deletionDate"`
	ExpirationDate string   `json:"expirationDate"`
	KeyVersion     struct {
		ID           string `json:"id"`
		CreationDate string `json:"creationDate"`
	} `json:"keyVersion"`
	DualAuthDelete struct {
		Enabled           bool   `json:"enabled"`
		KeySetForDeletion *bool  `json:"keySetForDeletion"`
		AuthExpiration    string `json:"authExpiration"`
	} `json:"dualAuthDelete"`
	Rotation *struct {
		Enabled       bool `json:"enabled"`
		IntervalMonth int  `json:"interval_month"`
	} `json:"rotation"`
	AlgorithmType     string `json:"algorithmType"`
	AlgorithmBitSize  int    `json:"algorithmBitSize"`
	RestoreAllowed    *bool  `json:"restoreAllowed"`
	PurgeAllowed      *bool  `json:"purgeAllowed"`
	PurgeAllowedFrom  string `json:"purgeAllowedFrom"`
	PurgeScheduledOn  string `json:"purgeScheduledOn"`
	RestoreExpiration string `json:"restoreExpirationDate"`
}

// keyList is a collection of keys.
type keyList struct {
	Metadata struct {
		CollectionType  string `json:"collectionType"`
		CollectionTotal int    `json:"collectionTotal"`
	} `json:"metadata"`
	Resources []wireKey `json:"resources"`
}

// keys decodes a key collection and checks its envelope.
func (r *result) keys(t *testing.T) []wireKey {
	t.Helper()
	var l keyList
	r.decode(t, &l)
	if l.Metadata.CollectionType != keyType || l.Metadata.CollectionTotal != len(l.Resources) {
		t.Fatalf("malformed key collection: %s", r.body)
	}
	return l.Resources
}

// key decodes a collection holding exactly one key.
func (r *result) key(t *testing.T) wireKey {
	t.Helper()
	ks := r.keys(t)
	if len(ks) != 1 {
		t.Fatalf("collection has %d keys, want 1: %s", len(ks), r.body)
	}
	return ks[0]
}

// keyBody is a create-key request body for one resource.
func keyBody(resource map[string]any) map[string]any {
	if _, ok := resource["type"]; !ok {
		resource["type"] = keyType
	}
	return map[string]any{
		"metadata":  map[string]any{"collectionType": keyType, "collectionTotal": 1},
		"resources": []any{resource},
	}
}

// create creates a key over HTTP and returns it.
func (h *harness) create(name string, root bool, extra ...any) wireKey {
	h.t.Helper()
	res := map[string]any{"name": name, "extractable": !root}
	for i := 0; i+1 < len(extra); i += 2 {
		res[extra[i].(string)] = extra[i+1]
	}
	return h.request(http.MethodPost, "/keys", keyBody(res)).wantStatus(h.t, http.StatusCreated).key(h.t)
}

// actionResult is the flat body of wrap, unwrap and rewrap.
type actionResult struct {
	Plaintext  string `json:"plaintext"`
	Ciphertext string `json:"ciphertext"`
	KeyVersion *struct {
		ID string `json:"id"`
	} `json:"keyVersion"`
	RewrappedKeyVersion *struct {
		ID string `json:"id"`
	} `json:"rewrappedKeyVersion"`
}

// action posts a key action (current URL form) and returns the response.
func (h *harness) action(id, action string, body any) *result {
	h.t.Helper()
	return h.request(http.MethodPost, "/keys/"+id+"/actions/"+action, body)
}

// actionOK posts a key action that must succeed with 200 and decodes it.
func (h *harness) actionOK(id, action string, body any) actionResult {
	h.t.Helper()
	var out actionResult
	h.action(id, action, body).wantStatus(h.t, http.StatusOK).decode(h.t, &out)
	return out
}

func b64(data string) string { return base64.StdEncoding.EncodeToString([]byte(data)) }

func b64n(n int, fill byte) string {
	return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{fill}, n))
}
