package keyprotect

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kplocal"
)

const (
	testInstance = "1e8a4d1c-0d2e-4a51-9a40-7f3f6a1c2b3d"
	testAPIKey   = "test-api-key-not-a-secret-anywhere"
)

// clock is a settable clock shared by a test's server and client.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

type env struct {
	server *kplocal.Running
	client *Client
	clock  *clock
}

// start runs a kplocal server and a client for it, over real HTTP.
func start(t *testing.T, mod func(*kplocal.Config), cmod func(*Config)) *env {
	t.Helper()
	clk := newClock()
	cfg := kplocal.Config{InstanceID: testInstance, APIKey: testAPIKey, Now: clk.Now, Seed: 1}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := kplocal.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	ccfg := Config{
		BaseURL: srv.BaseURL(), IAMURL: srv.BaseURL(), InstanceID: testInstance, APIKey: testAPIKey,
		Now: clk.Now, RetryBaseDelay: time.Millisecond, RetryMaxDelay: 5 * time.Millisecond,
	}
	if cmod != nil {
		cmod(&ccfg)
	}
	c, err := New(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	return &env{server: srv, client: c, clock: clk}
}

func (e *env) rootKey(t *testing.T, name string) *Key {
	t.Helper()
	k, err := e.client.CreateKey(context.Background(), CreateKeyRequest{Name: name, Root: true})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func wantErr(t *testing.T, err error, classes ...error) *Error {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", classes)
	}
	for _, c := range classes {
		if !errors.Is(err, c) {
			t.Fatalf("error %v does not match %v", err, c)
		}
	}
	var ke *Error
	if !errors.As(err, &ke) {
		t.Fatalf("error %v is not a *keyprotect.Error", err)
	}
	if ke.CorrelationID == "" {
		t.Fatalf("error %v lacks its correlation id", err)
	}
	if strings.Contains(err.Error(), testAPIKey) {
		t.Fatal("error text contains the API key")
	}
	return ke
}

func TestKeys(t *testing.T) {
	ctx := context.Background()
	e := start(t, nil, nil)
	root := e.rootKey(t, "root-key")
	if !root.IsRoot() || root.State != StateActive || root.ID == "" || root.KeyVersion == nil || !strings.HasPrefix(root.CRN, "crn:v1:") {
		t.Fatalf("created root key: %+v", root)
	}
	std, err := e.client.CreateKey(ctx, CreateKeyRequest{Name: "standard-key", Payload: bytes.Repeat([]byte{1}, 32)})
	if err != nil || std.IsRoot() {
		t.Fatalf("standard key: %v %+v", err, std)
	}
	got, err := e.client.GetKey(ctx, std.ID)
	if err != nil || got.Payload == "" {
		t.Fatalf("get standard key: %v, payload %q", err, got.Payload)
	}
	if got, _ := e.client.GetKey(ctx, root.ID); got.Payload != "" {
		t.Fatal("a root key revealed its material")
	}
	for i := range 5 {
		e.rootKey(t, fmt.Sprintf("more-%d", i))
	}
	page, err := e.client.ListKeys(ctx, &ListOptions{Limit: 3, Offset: 2})
	if err != nil || len(page) != 3 {
		t.Fatalf("list page: %v, %d keys", err, len(page))
	}
	var all []string
	for k, err := range e.client.AllKeys(ctx, ListOptions{}, 3) {
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, k.ID)
	}
	if len(all) != 7 {
		t.Fatalf("AllKeys paged through %d keys, want 7", len(all))
	}
	n, err := e.client.CountKeys(ctx, nil)
	if err != nil || n != 7 {
		t.Fatalf("count: %v, %d", err, n)
	}
	no := false
	if n, _ := e.client.CountKeys(ctx, &ListOptions{Extractable: &no}); n != 6 {
		t.Fatalf("count of root keys: %d, want 6", n)
	}
	vs, err := e.client.KeyVersions(ctx, root.ID)
	if err != nil || len(vs) != 1 || vs[0].ID != root.KeyVersion.ID {
		t.Fatalf("versions: %v %+v", err, vs)
	}
	if err := e.client.DeleteKey(ctx, std.ID, false); err != nil {
		t.Fatal(err)
	}
	wantErr(t, e.client.DeleteKey(ctx, std.ID, false), ErrGone, kms.ErrKeyDestroyed)
	if n, _ := e.client.CountKeys(ctx, nil); n != 6 {
		t.Fatalf("count after delete: %d", n)
	}
	_, err = e.client.GetKey(ctx, "no-such-key")
	if ke := wantErr(t, err, ErrNotFound, kms.ErrNotFound); !ke.HasReason("KEY_NOT_FOUND_ERR") || ke.StatusCode != 404 {
		t.Fatalf("not found: %+v", ke)
	}
}

func TestWrapUnwrapRotateRewrap(t *testing.T) {
	ctx := context.Background()
	e := start(t, nil, nil)
	key := e.rootKey(t, "kek")
	other := e.rootKey(t, "other")
	dek := bytes.Repeat([]byte{0x42}, 32)
	aad := []string{"file-a"}

	w1, err := e.client.Wrap(ctx, key.ID, dek, aad)
	if err != nil || w1.KeyVersion != key.KeyVersion.ID {
		t.Fatalf("wrap: %v, version %q want %q", err, w1.KeyVersion, key.KeyVersion.ID)
	}
	u, err := e.client.Unwrap(ctx, key.ID, w1.Ciphertext, aad)
	if err != nil || !bytes.Equal(u.Plaintext, dek) || u.Rewrapped != nil || u.KeyVersion != w1.KeyVersion {
		t.Fatalf("unwrap: %v %+v", err, u)
	}
	_, err = e.client.Unwrap(ctx, key.ID, w1.Ciphertext, []string{"file-b"})
	wantErr(t, err, ErrBadCiphertext, kms.ErrWrongKey)
	_, err = e.client.Unwrap(ctx, other.ID, w1.Ciphertext, aad)
	wantErr(t, err, ErrBadCiphertext, kms.ErrWrongKey)

	if err := e.client.Rotate(ctx, key.ID); err != nil {
		t.Fatal(err)
	}
	vs, _ := e.client.KeyVersions(ctx, key.ID)
	if len(vs) != 2 || vs[1].ID != w1.KeyVersion {
		t.Fatalf("versions after rotation: %+v", vs)
	}
	newest := vs[0].ID
	u, err = e.client.Unwrap(ctx, key.ID, w1.Ciphertext, aad)
	if err != nil || !bytes.Equal(u.Plaintext, dek) || u.KeyVersion != w1.KeyVersion ||
		u.Rewrapped == nil || u.Rewrapped.KeyVersion != newest {
		t.Fatalf("unwrap of an old ciphertext: %v %+v", err, u)
	}
	u2, err := e.client.Unwrap(ctx, key.ID, u.Rewrapped.Ciphertext, aad)
	if err != nil || !bytes.Equal(u2.Plaintext, dek) || u2.Rewrapped != nil {
		t.Fatalf("unwrap of the rewrapped ciphertext: %v %+v", err, u2)
	}
	rw, old, err := e.client.Rewrap(ctx, key.ID, w1.Ciphertext, aad)
	if err != nil || rw.KeyVersion != newest || old != w1.KeyVersion || rw.Ciphertext == w1.Ciphertext {
		t.Fatalf("rewrap: %v %+v old %q", err, rw, old)
	}
	if _, _, err := e.client.Rewrap(ctx, key.ID, w1.Ciphertext, nil); !errors.Is(err, ErrBadCiphertext) {
		t.Fatalf("rewrap without the AAD: %v", err)
	}

	// Disabled keys refuse to wrap; destroyed keys are gone.
	if err := e.client.Disable(ctx, key.ID); err != nil {
		t.Fatal(err)
	}
	_, err = e.client.Wrap(ctx, key.ID, dek, aad)
	wantErr(t, err, ErrWrongState, kms.ErrKeyDisabled)
	if err := e.client.DeleteKey(ctx, other.ID, false); err != nil {
		t.Fatal(err)
	}
	_, err = e.client.Wrap(ctx, other.ID, dek, aad)
	wantErr(t, err, ErrGone)

	std, _ := e.client.CreateKey(ctx, CreateKeyRequest{Name: "std"})
	_, err = e.client.Wrap(ctx, std.ID, dek, aad)
	if ke := wantErr(t, err, ErrBadRequest); !ke.HasReason("KEY_ROOT_REQ_ERR") {
		t.Fatalf("wrap with a standard key: %v", err)
	}
}

func TestRotationLimit(t *testing.T) {
	ctx := context.Background()
	e := start(t, func(c *kplocal.Config) { c.MinRotationInterval = time.Hour }, nil)
	key := e.rootKey(t, "kek")
	if err := e.client.Rotate(ctx, key.ID); err != nil {
		t.Fatal(err)
	}
	err := e.client.Rotate(ctx, key.ID)
	if ke := wantErr(t, err, ErrConflict); !ke.HasReason("KEY_ROTATION_NOT_PERMITTED") {
		t.Fatalf("second rotation: %v", err)
	}
	e.clock.Advance(61 * time.Minute)
	if err := e.client.Rotate(ctx, key.ID); err != nil {
		t.Fatalf("rotation an hour later: %v", err)
	}
}

func TestPolicies(t *testing.T) {
	ctx := context.Background()
	e := start(t, nil, nil)
	key := e.rootKey(t, "kek")
	p, err := e.client.GetPolicies(ctx, key.ID)
	if err != nil || p.Rotation != nil || p.DualAuthDelete != nil {
		t.Fatalf("policies of a new key: %v %+v", err, p)
	}
	if err := e.client.SetRotationPolicy(ctx, key.ID, RotationPolicy{Enabled: true, IntervalMonths: 3}); err != nil {
		t.Fatal(err)
	}
	if err := e.client.SetDualAuthDeletePolicy(ctx, key.ID, DualAuthDeletePolicy{Enabled: true}); err != nil {
		t.Fatal(err)
	}
	p, err = e.client.GetPolicies(ctx, key.ID)
	if err != nil || p.Rotation == nil || p.Rotation.IntervalMonths != 3 || !p.Rotation.Enabled || p.DualAuthDelete == nil || !p.DualAuthDelete.Enabled {
		t.Fatalf("policies: %v %+v", err, p)
	}
	err = e.client.SetRotationPolicy(ctx, key.ID, RotationPolicy{Enabled: true, IntervalMonths: 13})
	wantErr(t, err, ErrBadRequest)
	// Dual authorisation now guards deletion.
	err = e.client.DeleteKey(ctx, key.ID, false)
	if ke := wantErr(t, err, ErrConflict); !ke.HasReason("AUTHORIZATIONS_NOT_MET") {
		t.Fatalf("delete under dual authorisation: %v", err)
	}
}

func TestAuthentication(t *testing.T) {
	ctx := context.Background()
	e := start(t, nil, func(c *Config) { c.APIKey = "wrong-key" })
	_, err := e.client.ListKeys(ctx, nil)
	var ke *Error
	if !errors.As(err, &ke) || ke.StatusCode != http.StatusBadRequest || ke.Op != "IAM token" || strings.Contains(err.Error(), "wrong-key") {
		t.Fatalf("bad API key: %v", err)
	}
	if e.server.Stats().Requests != 0 {
		t.Fatal("a request reached the API without a token")
	}

	bad, _ := New(Config{BaseURL: e.server.BaseURL(), InstanceID: testInstance, Token: StaticToken("Bearer not-a-token")})
	_, err = bad.ListKeys(ctx, nil)
	wantErr(t, err, ErrUnauthorized, kms.ErrPermissionDenied)

	good := start(t, nil, nil)
	other, _ := New(Config{BaseURL: good.server.BaseURL(), IAMURL: good.server.BaseURL(), InstanceID: "another-instance", APIKey: testAPIKey})
	_, err = other.ListKeys(ctx, nil)
	if err == nil {
		t.Fatal("a request for another instance succeeded")
	}
}

func TestTokenExpiresMidRun(t *testing.T) {
	ctx := context.Background()
	e := start(t, func(c *kplocal.Config) { c.TokenTTL = 10 * time.Minute }, nil)
	key := e.rootKey(t, "kek")
	if got := e.server.Stats().Tokens; got != 1 {
		t.Fatalf("%d token requests, want 1", got)
	}
	// Near expiry the client refreshes before using the token.
	e.clock.Advance(9*time.Minute + 30*time.Second)
	if _, err := e.client.Wrap(ctx, key.ID, make([]byte, 32), nil); err != nil {
		t.Fatal(err)
	}
	if got := e.server.Stats().Tokens; got != 2 {
		t.Fatalf("%d token requests after nearing expiry, want 2", got)
	}
	// A token the server considers expired although the client does not
	// (clocks apart): the 401 makes the client fetch a new one and retry.
	src, _ := NewIAMTokenSource(testAPIKey, e.server.BaseURL(), nil, time.Now) // real clock: thinks the token is fresh
	c, _ := New(Config{BaseURL: e.server.BaseURL(), InstanceID: testInstance, Token: src})
	if _, err := c.GetKey(ctx, key.ID); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(11 * time.Minute) // the server's clock passes the token's expiry
	unauthorized := e.server.Stats().Unauthorized
	if _, err := c.GetKey(ctx, key.ID); err != nil {
		t.Fatalf("after the token expired on the server: %v", err)
	}
	if e.server.Stats().Unauthorized != unauthorized+1 {
		t.Fatal("the expired token was not refused once and then replaced")
	}
}

// exerciseAll calls every method of the client once or more and checks the
// results.
func exerciseAll(t *testing.T, e *env) {
	t.Helper()
	ctx := context.Background()
	key := e.rootKey(t, "kek")
	std, err := e.client.CreateKey(ctx, CreateKeyRequest{Name: "std", Description: "a standard key"})
	if err != nil {
		t.Fatalf("create standard key: %v", err)
	}
	if got, err := e.client.GetKey(ctx, key.ID); err != nil || got.ID != key.ID {
		t.Fatalf("get: %v", err)
	}
	if page, err := e.client.ListKeys(ctx, &ListOptions{Limit: 1}); err != nil || len(page) != 1 {
		t.Fatalf("list: %v %d", err, len(page))
	}
	n := 0
	for _, err := range e.client.AllKeys(ctx, ListOptions{}, 1) {
		if err != nil {
			t.Fatalf("all keys: %v", err)
		}
		n++
	}
	if n != 2 {
		t.Fatalf("all keys: %d", n)
	}
	if c, err := e.client.CountKeys(ctx, nil); err != nil || c != 2 {
		t.Fatalf("count: %v %d", err, c)
	}
	var olds []Wrapped
	for i := range 20 {
		dek := bytes.Repeat([]byte{byte(i)}, 32)
		w, err := e.client.Wrap(ctx, key.ID, dek, []string{"x"})
		if err != nil {
			t.Fatalf("wrap %d: %v", i, err)
		}
		u, err := e.client.Unwrap(ctx, key.ID, w.Ciphertext, []string{"x"})
		if err != nil || !bytes.Equal(u.Plaintext, dek) {
			t.Fatalf("unwrap %d: %v", i, err)
		}
		olds = append(olds, w)
	}
	if err := e.client.Rotate(ctx, key.ID); err != nil {
		t.Fatalf("rotate: %v", err)
	}
	vs, err := e.client.KeyVersions(ctx, key.ID)
	if err != nil || len(vs) != 2 {
		t.Fatalf("versions: %v %d", err, len(vs))
	}
	if u, err := e.client.Unwrap(ctx, key.ID, olds[0].Ciphertext, []string{"x"}); err != nil || u.Rewrapped == nil || u.Rewrapped.KeyVersion != vs[0].ID {
		t.Fatalf("unwrap after rotation: %v", err)
	}
	if w, _, err := e.client.Rewrap(ctx, key.ID, olds[1].Ciphertext, []string{"x"}); err != nil || w.KeyVersion != vs[0].ID {
		t.Fatalf("rewrap: %v", err)
	}
	if err := e.client.SetRotationPolicy(ctx, key.ID, RotationPolicy{Enabled: true, IntervalMonths: 1}); err != nil {
		t.Fatalf("set rotation policy: %v", err)
	}
	if err := e.client.SetDualAuthDeletePolicy(ctx, std.ID, DualAuthDeletePolicy{Enabled: false}); err != nil {
		t.Fatalf("set dual auth policy: %v", err)
	}
	if p, err := e.client.GetPolicies(ctx, key.ID); err != nil || p.Rotation == nil || p.Rotation.IntervalMonths != 1 {
		t.Fatalf("get policies: %v", err)
	}
	if err := e.client.Disable(ctx, key.ID); err != nil {
		t.Fatalf("disable: %v", err)
	}
	e.clock.Advance(time.Minute) // enable is refused within 30 s of a change
	if err := e.client.Enable(ctx, key.ID); err != nil {
		t.Fatalf("enable: %v", err)
	}
	if err := e.client.DeleteKey(ctx, std.ID, false); err != nil {
		t.Fatalf("delete: %v", err)
	}
}

func TestEveryMethod(t *testing.T) {
	exerciseAll(t, start(t, nil, nil))
}

func TestFaultInjection(t *testing.T) {
	ctx := context.Background()
	e := start(t, func(c *kplocal.Config) { c.FaultRate = 0.3 }, func(c *Config) { c.MaxAttempts = 12 })
	exerciseAll(t, e)
	if f := e.server.Stats().Faults; f < 10 {
		t.Fatalf("only %d faults injected: the test did not exercise retries", f)
	}

	// Every request failing: the client gives up after MaxAttempts with
	// the last error, classified.
	all := start(t, func(c *kplocal.Config) { c.FaultRate = 1 }, func(c *Config) { c.MaxAttempts = 3 })
	_, err := all.client.ListKeys(ctx, nil)
	wantErr(t, err, kms.ErrUnavailable)
	if got := all.server.Stats().Requests; got != 3 {
		t.Fatalf("%d attempts, want 3", got)
	}
	// A context deadline bounds the retries too.
	dctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	slow := start(t, func(c *kplocal.Config) { c.FaultRate = 1 }, func(c *Config) {
		c.MaxAttempts = 1000
		c.RetryBaseDelay, c.RetryMaxDelay = 20*time.Millisecond, 20*time.Millisecond
	})
	if _, err := slow.client.ListKeys(dctx, nil); err == nil {
		t.Fatal("no error under a deadline with every request failing")
	}
	if got := slow.server.Stats().Requests; got >= 1000 {
		t.Fatalf("%d attempts: the deadline did not bound the retries", got)
	}
}

func TestConcurrentWraps(t *testing.T) {
	ctx := context.Background()
	e := start(t, nil, func(c *Config) { c.MaxInFlight = 8 })
	key := e.rootKey(t, "kek")
	e.server.ResetStats()
	src, _ := NewIAMTokenSource(testAPIKey, e.server.BaseURL(), nil, e.clock.Now)
	c, _ := New(Config{BaseURL: e.server.BaseURL(), InstanceID: testInstance, Token: src, MaxInFlight: 8})
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		wg.Go(func() {
			dek := bytes.Repeat([]byte{byte(i)}, 32)
			w, err := c.Wrap(ctx, key.ID, dek, []string{fmt.Sprint(i)})
			if err == nil {
				var u Unwrapped
				u, err = c.Unwrap(ctx, key.ID, w.Ciphertext, []string{fmt.Sprint(i)})
				if err == nil && !bytes.Equal(u.Plaintext, dek) {
					err = errors.New("round trip differs")
				}
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st := e.server.Stats()
	if st.Tokens != 1 || st.Wrap != 64 || st.Unwrap != 64 {
		t.Fatalf("stats: %d token requests (want 1), %d wraps, %d unwraps", st.Tokens, st.Wrap, st.Unwrap)
	}
}

func TestErrorClasses(t *testing.T) {
	invalidCiphertext := []Reason{{Code: "INVALID_FIELD_ERR", Message: "The field 'ciphertext' must be: the original base64 encoded ciphertext"}}
	for _, tc := range []struct {
		status  int
		reasons []Reason
		is      []error
		isNot   []error
	}{
		{400, []Reason{{Code: "KEY_ROOT_REQ_ERR"}}, []error{ErrBadRequest}, []error{ErrBadCiphertext, kms.ErrUnavailable}},
		{400, invalidCiphertext, []error{ErrBadRequest, ErrBadCiphertext, kms.ErrWrongKey}, nil},
		{401, nil, []error{ErrUnauthorized, kms.ErrPermissionDenied}, []error{kms.ErrUnavailable}},
		{403, []Reason{{Code: "CONFIG_RULE_CONFLICT_ERR"}}, []error{ErrUnauthorized}, nil},
		{404, []Reason{{Code: "KEY_NOT_FOUND_ERR"}}, []error{ErrNotFound, kms.ErrNotFound}, []error{ErrGone}},
		{409, []Reason{{Code: "KEY_ACTION_INVALID_STATE_ERR"}}, []error{ErrWrongState, ErrConflict, kms.ErrKeyDisabled}, nil},
		{409, []Reason{{Code: "KEY_ROTATION_NOT_PERMITTED"}}, []error{ErrConflict}, []error{ErrWrongState}},
		{410, []Reason{{Code: "KEY_DELETED_ERR"}}, []error{ErrGone, kms.ErrKeyDestroyed}, nil},
		{422, []Reason{{Code: "UNPROCESSABLE_CIPHERTEXT_ERR"}}, []error{ErrBadCiphertext, kms.ErrWrongKey}, nil},
		{429, nil, []error{ErrRateLimited, kms.ErrUnavailable}, nil},
		{500, []Reason{{Code: "INCOMPLETE_METADATA_ERR"}}, []error{kms.ErrUnavailable}, []error{ErrRateLimited}},
		{503, nil, []error{kms.ErrUnavailable}, nil},
	} {
		e := &Error{Op: "test", StatusCode: tc.status, Reasons: tc.reasons, CorrelationID: "c"}
		for _, c := range tc.is {
			if !errors.Is(e, c) {
				t.Errorf("%d %v: not %v", tc.status, tc.reasons, c)
			}
		}
		for _, c := range tc.isNot {
			if errors.Is(e, c) {
				t.Errorf("%d %v: wrongly %v", tc.status, tc.reasons, c)
			}
		}
		if !strings.Contains(e.Error(), fmt.Sprint(tc.status)) || !strings.Contains(e.Error(), "correlation-id c") {
			t.Errorf("message %q lacks the status or correlation id", e.Error())
		}
	}
	for status, want := range map[int]bool{429: true, 500: true, 502: true, 503: true, 501: false, 400: false, 404: false} {
		if retryable(status) != want {
			t.Errorf("retryable(%d) = %v", status, !want)
		}
	}
}

func TestEndpointsAndCRNs(t *testing.T) {
	for _, tc := range []struct {
		s       Service
		private bool
		want    string
	}{
		{KeyProtect, false, "https://us-south.kms.cloud.ibm.com"},
		{KeyProtect, true, "https://private.us-south.kms.cloud.ibm.com"},
		{HPCS, false, "https://9d3c1f2e-4b5a-4c6d-8e7f-0a1b2c3d4e5f.api.us-south.hs-crypto.appdomain.cloud"},
		{HPCS, true, "https://9d3c1f2e-4b5a-4c6d-8e7f-0a1b2c3d4e5f.api.private.us-south.hs-crypto.appdomain.cloud"},
	} {
		if got, err := Endpoint(tc.s, "us-south", "9d3c1f2e-4b5a-4c6d-8e7f-0a1b2c3d4e5f", tc.private); err != nil || got != tc.want {
			t.Errorf("Endpoint(%s, private=%v) = %q, %v", tc.s, tc.private, got, err)
		}
	}
	for _, ok := range []string{"https://api.us-south.hs-crypto.cloud.ibm.com:8443", "http://127.0.0.1:8080", "http://[::1]:1", "http://localhost:9"} {
		if _, err := checkBaseURL(ok); err != nil {
			t.Errorf("%s refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"http://example.com", "ftp://x", "https://x/api/v2", "https://"} {
		if _, err := checkBaseURL(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	c, err := ParseCRN("crn:v1:bluemix:public:hs-crypto:eu-de:a/acc:9d3c1f2e-4b5a-4c6d-8e7f-0a1b2c3d4e5f:key:kid")
	if err != nil || c.Service != HPCS || c.Region != "eu-de" || c.Account != "acc" || c.InstanceID != "9d3c1f2e-4b5a-4c6d-8e7f-0a1b2c3d4e5f" || c.KeyID != "kid" {
		t.Fatalf("ParseCRN: %v %+v", err, c)
	}
	for _, bad := range []string{"crn:v1:bluemix:public:cos:us-south:a/x:i:key:k", "crn:v1:bluemix:public:kms:us-south:a/x:i:policy:k", "local:x", "crn:v1:bluemix:public:kms::a/x:i:key:k"} {
		if _, err := ParseCRN(bad); !errors.Is(err, kms.ErrInvalidURI) {
			t.Errorf("ParseCRN(%q): %v", bad, err)
		}
	}
	if _, err := New(Config{InstanceID: "i", BaseURL: "http://10.0.0.1", APIKey: "k"}); err == nil {
		t.Error("plain http to a non-loopback host accepted")
	}
}

// TestInFlightLimitAvoidsRateLimits runs 100 goroutines through one Opener
// (one client per instance, one token source) against a server that
// answers 429 beyond 8 requests in flight: the client's own bound keeps it
// under, so no request is refused and one token serves them all.
func TestInFlightLimitAvoidsRateLimits(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	srv, err := kplocal.Start(kplocal.Config{InstanceID: testInstance, APIKey: testAPIKey, Now: clk.Now,
		MaxConcurrent: 8, Latency: 2 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	id, _ := srv.CreateKey("shared-kek", true)
	opener := &Opener{Config: Config{BaseURL: srv.BaseURL(), IAMURL: srv.BaseURL(), APIKey: testAPIKey, Now: clk.Now,
		MaxInFlight: 8, MaxAttempts: 1}}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Go(func() {
			kek, err := opener.Open(ctx, srv.KeyCRN(id))
			if err == nil {
				_, err = kek.Wrap(ctx, bytes.Repeat([]byte{byte(i)}, 32), []byte("aad"))
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st := srv.Stats()
	if st.RateLimited != 0 || st.PeakInFlight > 8 || st.Wrap != 100 || st.Tokens != 1 {
		t.Fatalf("rate limited %d, peak in flight %d, wraps %d, token requests %d", st.RateLimited, st.PeakInFlight, st.Wrap, st.Tokens)
	}
}
