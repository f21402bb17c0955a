package kplocal

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rawClient sends each request on a new connection, so that Go's transport
// never retries a request whose connection was reset.
func (h *harness) rawClient() *http.Client {
	return &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
}

// send is request without failing on a transport error, through c.
func (h *harness) send(c *http.Client, method, path, body string) (*http.Response, error) {
	req, err := http.NewRequest(method, h.srv.BaseURL()+"/api/v2"+path, strings.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("authorization", "Bearer "+h.token)
	req.Header.Set("bluemix-instance", testInstance)
	return c.Do(req)
}

func createBodyJSON(name string) string {
	return `{"metadata":{"collectionType":"application/vnd.ibm.kms.key+json","collectionTotal":1},` +
		`"resources":[{"type":"application/vnd.ibm.kms.key+json","name":"` + name + `","extractable":false}]}`
}

func TestFaultStatusAfterServingCreate(t *testing.T) {
	h := newHarness(t, Config{Faults: []Fault{{Mode: FaultStatusAfterServing, Ops: []string{"create"}, Status: 500, Times: 1}}})
	h.request(http.MethodPost, "/keys", keyBody(map[string]any{"name": "lost-answer", "extractable": false})).
		wantError(t, http.StatusInternalServerError, "")
	// The key was created although the client saw an error.
	keys := h.request(http.MethodGet, "/keys", nil).keys(t)
	if len(keys) != 1 || keys[0].Name != "lost-answer" {
		t.Fatalf("keys after a lost create answer = %+v", keys)
	}
	h.create("second", true) // Times: 1
	if st := h.srv.Stats(); st.Create != 2 || st.Faults != 1 || st.List != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestFaultPerRouteWithRetryAfter(t *testing.T) {
	h := newHarness(t, Config{Faults: []Fault{{Mode: FaultStatus, Ops: []string{"rotate"}, Status: 429, RetryAfter: 2500 * time.Millisecond}}})
	k := h.create("rotating", true)
	h.actionOK(k.ID, "wrap", nil)
	r := h.action(k.ID, "rotate", nil)
	r.wantError(t, http.StatusTooManyRequests, "")
	if got := r.header.Get("Retry-After"); got != "3" {
		t.Fatalf("Retry-After = %q, want 3", got)
	}
	// Not served: the key still has one version.
	if v := h.request(http.MethodGet, "/keys/"+k.ID, nil).key(t); v.KeyVersion.ID != k.KeyVersion.ID {
		t.Fatalf("a rotate answered 429 rotated the key")
	}
	if st := h.srv.Stats(); st.Rotate != 0 || st.Faults != 1 || st.Wrap != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestFaultRetryAfterGlobal(t *testing.T) {
	h := newHarness(t, Config{FaultRate: 1, RetryAfter: 7 * time.Second})
	if got := h.request(http.MethodGet, "/keys", nil).header.Get("Retry-After"); got != "7" {
		t.Fatalf("Retry-After = %q, want 7", got)
	}
}

func TestFaultResetBeforeServing(t *testing.T) {
	h := newHarness(t, Config{Faults: []Fault{{Mode: FaultReset, Ops: []string{"create"}}}})
	c := h.rawClient()
	for range 3 {
		if resp, err := h.send(c, http.MethodPost, "/keys", createBodyJSON("never")); err == nil {
			resp.Body.Close()
			t.Fatalf("create answered %d, want a reset connection", resp.StatusCode)
		}
	}
	if n := len(h.request(http.MethodGet, "/keys", nil).keys(t)); n != 0 {
		t.Fatalf("%d keys created by reset requests", n)
	}
	if st := h.srv.Stats(); st.Create != 0 || st.Faults != 3 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestFaultResetAfterServingRotate(t *testing.T) {
	h := newHarness(t, Config{Faults: []Fault{{Mode: FaultResetAfterServing, Ops: []string{"rotate"}, Times: 1}}})
	k := h.create("rotated-anyway", true)
	c := h.rawClient()
	if resp, err := h.send(c, http.MethodPost, "/keys/"+k.ID+"/actions/rotate", ""); err == nil {
		resp.Body.Close()
		t.Fatalf("rotate answered %d, want a reset connection", resp.StatusCode)
	}
	// The rotation happened although the client saw an error.
	var versions struct {
		Resources []struct{ ID string } `json:"resources"`
	}
	h.request(http.MethodGet, "/keys/"+k.ID+"/versions", nil).wantStatus(t, http.StatusOK).decode(t, &versions)
	if len(versions.Resources) != 2 {
		t.Fatalf("versions after a lost rotate answer = %+v", versions)
	}
	if st := h.srv.Stats(); st.Rotate != 1 || st.Faults != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestFaultSlowBody(t *testing.T) {
	h := newHarness(t, Config{Faults: []Fault{{Mode: FaultSlowBody, Ops: []string{"list"}, SlowBodyDelay: time.Hour}}})
	h.create("listed", true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.srv.BaseURL()+"/api/v2/keys", nil)
	req.Header.Set("authorization", "Bearer "+h.token)
	req.Header.Set("bluemix-instance", testInstance)
	resp, err := h.rawClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength <= 0 {
		t.Fatalf("slow list: %d, length %d", resp.StatusCode, resp.ContentLength)
	}
	first := make([]byte, resp.ContentLength/2)
	if _, err := io.ReadFull(resp.Body, first); err != nil || !bytes.HasPrefix(first, []byte(`{"metadata"`)) {
		t.Fatalf("first half %q, %v", first, err)
	}
	// The rest does not come until the pause ends; the client gives up.
	cancel()
	if _, err := io.ReadAll(resp.Body); !errors.Is(err, context.Canceled) {
		t.Fatalf("reading the rest after giving up: %v", err)
	}
	if st := h.srv.Stats(); st.List != 1 || st.Faults != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestFaultConfigErrors(t *testing.T) {
	for _, f := range []Fault{
		{Mode: 0},
		{Mode: FaultStatus, Status: 404},
		{Mode: FaultStatus, Ops: []string{"nope"}},
		{Mode: FaultStatus, Rate: 2},
	} {
		if _, err := New(Config{Faults: []Fault{f}}); !errors.Is(err, ErrBadFault) {
			t.Errorf("fault %+v: err = %v, want ErrBadFault", f, err)
		}
	}
}
