package keyprotect_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/keyprotect"
	"github.com/kpcrypt/kpcrypt/kplocal"
	"github.com/kpcrypt/kpcrypt/kplocal/kpclient"
)

const (
	kpInstance = "2a3b4c5d-6e7f-4809-9a1b-2c3d4e5f6a7b"
	kpAPIKey   = "kplocal-external-test-key"
)

type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// startKP runs kplocal with cfg's changes and returns it with a client.
func startKP(t *testing.T, mod func(*kplocal.Config)) (*kplocal.Running, *keyprotect.Client, *fakeClock) {
	t.Helper()
	clk := newFakeClock()
	cfg := kplocal.Config{InstanceID: kpInstance, APIKey: kpAPIKey, Now: clk.Now, ImportKeyBits: 2048, Seed: 7}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := kplocal.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	ccfg := kpclient.Config(srv)
	ccfg.Now = clk.Now
	ccfg.RetryBaseDelay, ccfg.RetryMaxDelay = time.Millisecond, 2*time.Millisecond
	c, err := keyprotect.New(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	return srv, c, clk
}

func material(t *testing.T) []byte {
	m := make([]byte, 32)
	rand.Read(m)
	return m
}

// roundTrip checks that a key wraps and unwraps.
func roundTrip(t *testing.T, c *keyprotect.Client, id string) {
	t.Helper()
	ctx := context.Background()
	dek := material(t)
	w, err := c.Wrap(ctx, id, dek, []string{"aad"})
	if err != nil {
		t.Fatal(err)
	}
	u, err := c.Unwrap(ctx, id, w.Ciphertext, []string{"aad"})
	if err != nil || !bytes.Equal(u.Plaintext, dek) {
		t.Fatalf("unwrap: %v", err)
	}
}

// Secure import with this client: SHA-256 on Key Protect, SHA-1 on an HPCS
// instance served over TLS; expired and used-up tokens are refused.
func TestSecureImportAgainstKplocal(t *testing.T) {
	for _, hpcs := range []bool{false, true} {
		ctx := context.Background()
		srv, c, clk := startKP(t, func(cfg *kplocal.Config) {
			if hpcs {
				cfg.Service, cfg.TLS = kplocal.ServiceHPCS, true
			}
		})
		if _, err := c.CreateImportToken(ctx, 10*time.Minute, 2); err != nil {
			t.Fatal(err)
		}
		m := material(t)
		k, err := c.ImportRootKey(ctx, keyprotect.CreateKeyRequest{Name: "byok"}, m)
		if err != nil {
			t.Fatalf("hpcs=%v: import: %v", hpcs, err)
		}
		if !k.Imported || k.Extractable {
			t.Fatalf("imported key %+v", k)
		}
		roundTrip(t, c, k.ID)

		// Rotation to new material, under a new token's one retrieval.
		clk.Advance(2 * time.Hour)
		if _, err := c.CreateImportToken(ctx, 10*time.Minute, 1); err != nil {
			t.Fatal(err)
		}
		if err := c.RotateImported(ctx, k.ID, material(t)); err != nil {
			t.Fatalf("hpcs=%v: rotate imported: %v", hpcs, err)
		}
		roundTrip(t, c, k.ID)
		// The token is used up.
		if _, err := c.ImportRootKey(ctx, keyprotect.CreateKeyRequest{Name: "byok2"}, material(t)); !errors.Is(err, keyprotect.ErrConflict) {
			t.Fatalf("hpcs=%v: import with a used-up token: %v", hpcs, err)
		}
		// An expired token.
		if _, err := c.CreateImportToken(ctx, 5*time.Minute, 5); err != nil {
			t.Fatal(err)
		}
		clk.Advance(6 * time.Minute)
		_, err = c.ImportRootKey(ctx, keyprotect.CreateKeyRequest{Name: "byok3"}, material(t))
		var ke *keyprotect.Error
		if !errors.As(err, &ke) || !ke.HasReason("IMPORT_TOKEN_EXPIRED_ERR") {
			t.Fatalf("hpcs=%v: import with an expired token: %v", hpcs, err)
		}
		if st := srv.Stats(); st.CreateImportToken != 3 {
			t.Fatalf("%d import tokens created, want 3", st.CreateImportToken)
		}
	}
}

// tamper rewrites the JSON body of key creations on their way to the
// server.
type tamper struct {
	base http.RoundTripper
	edit func(map[string]any)
}

func (t tamper) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPost && r.URL.Path == "/api/v2/keys" && r.Body != nil {
		b, _ := io.ReadAll(r.Body)
		var env struct {
			Metadata  any              `json:"metadata"`
			Resources []map[string]any `json:"resources"`
		}
		if json.Unmarshal(b, &env) == nil && len(env.Resources) == 1 {
			t.edit(env.Resources[0])
			b, _ = json.Marshal(env)
		}
		r = r.Clone(r.Context())
		r.Body = io.NopCloser(bytes.NewReader(b))
		r.ContentLength = int64(len(b))
	}
	return t.base.RoundTrip(r)
}

// A tampered payload, a tampered nonce and a nonce of another token are all
// refused, and no key is made.
func TestSecureImportTampered(t *testing.T) {
	ctx := context.Background()
	srv, good, _ := startKP(t, nil)
	flip := func(field string) func(map[string]any) {
		return func(r map[string]any) {
			s, _ := r[field].(string)
			if len(s) > 8 {
				r[field] = s[:4] + strings.ToUpper(s[4:5]) + strings.ToLower(s[4:5]) + s[6:]
			}
		}
	}
	other := func(map[string]any) {
		// Another import token (another nonce) is made after this one was
		// fetched.
		if _, err := good.CreateImportToken(ctx, 10*time.Minute, 5); err != nil {
			t.Error(err)
		}
	}
	for name, edit := range map[string]func(map[string]any){
		"payload":     flip("payload"),
		"nonce":       flip("encryptedNonce"),
		"other token": other,
	} {
		cfg := kpclient.Config(srv)
		cfg.HTTPClient = &http.Client{Transport: tamper{base: http.DefaultTransport, edit: edit}}
		c, err := keyprotect.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := good.CreateImportToken(ctx, 10*time.Minute, 5); err != nil {
			t.Fatal(err)
		}
		before := srv.Stats().Create
		_, err = c.ImportRootKey(ctx, keyprotect.CreateKeyRequest{Name: "tampered"}, material(t))
		if !errors.Is(err, keyprotect.ErrBadRequest) {
			t.Errorf("%s tampered: %v, want a 400", name, err)
		}
		if n, _ := good.CountKeys(ctx, nil); n != 0 {
			t.Fatalf("%s tampered: %d keys exist", name, n)
		}
		_ = before
	}
}

// An HPCS instance's endpoint is discovered from its broker (kplocal, over
// TLS trusted through the client's RootCAs), then used.
func TestHPCSDiscoveryAgainstKplocal(t *testing.T) {
	ctx := context.Background()
	srv, c, _ := startKP(t, func(cfg *kplocal.Config) { cfg.Service, cfg.TLS = kplocal.ServiceHPCS, true })
	k, err := c.CreateKey(ctx, keyprotect.CreateKeyRequest{Name: "hpcs-root", Root: true})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(k.CRN, ":hs-crypto:") {
		t.Fatalf("CRN %s is not an HPCS CRN", k.CRN)
	}
	cfg := kpclient.Config(srv)
	o := &keyprotect.Opener{
		Config: keyprotect.Config{APIKey: cfg.APIKey, IAMURL: cfg.IAMURL, HTTPClient: cfg.HTTPClient},
		Route: func(keyprotect.CRN) (keyprotect.Route, error) {
			return keyprotect.Route{Discover: true, BrokerURL: srv.BaseURL()}, nil
		},
	}
	kek, err := o.Open(ctx, k.CRN)
	if err != nil {
		t.Fatal(err)
	}
	w, err := kek.Wrap(ctx, material(t), []byte("aad"))
	if err != nil {
		t.Fatalf("wrap through the discovered endpoint: %v", err)
	}
	if _, err := kek.Unwrap(ctx, w.Ciphertext, []byte("aad")); err != nil {
		t.Fatal(err)
	}
	if st := srv.Stats(); st.Broker != 1 {
		t.Fatalf("%d broker lookups, want 1 (cached)", st.Broker)
	}
}

// After-serving faults: the work is done and the answer lost. A rotation
// is not made twice nor reported as a 409; a creation is not made twice.
func TestAfterServingFaults(t *testing.T) {
	ctx := context.Background()
	srv, c, clk := startKP(t, func(cfg *kplocal.Config) {
		cfg.Faults = []kplocal.Fault{
			{Mode: kplocal.FaultResetAfterServing, Ops: []string{"rotate"}, Times: 1},
			{Mode: kplocal.FaultStatusAfterServing, Ops: []string{"create"}, Status: 500, Times: 2},
		}
	})
	// Two lost creations: without an alias the outcome is unknown, with
	// one it is reconciled. Never two keys for one call.
	if _, err := c.CreateKey(ctx, keyprotect.CreateKeyRequest{Name: "lost", Root: true}); !errors.Is(err, keyprotect.ErrOutcomeUnknown) {
		t.Fatalf("lost creation: %v", err)
	}
	k, err := c.CreateKey(ctx, keyprotect.CreateKeyRequest{Name: "found", Root: true, Aliases: []string{"found-alias"}})
	if err != nil || k.Name != "found" {
		t.Fatalf("lost creation with an alias: %v", err)
	}
	if n, _ := c.CountKeys(ctx, nil); n != 2 || srv.Stats().Create != 2 {
		t.Fatalf("%d keys after two creations (%d requests), want 2", n, srv.Stats().Create)
	}
	clk.Advance(2 * time.Hour)
	if err := c.Rotate(ctx, k.ID); err != nil {
		t.Fatalf("rotate with a lost answer: %v", err)
	}
	vs, err := c.KeyVersions(ctx, k.ID)
	if err != nil || len(vs) != 2 || srv.Stats().Rotate != 1 {
		t.Fatalf("%d versions after one rotation (%d rotate requests): %v", len(vs), srv.Stats().Rotate, err)
	}
}

// A Retry-After past the deadline ends the call at once with the rate
// limit, after one attempt.
func TestRetryAfterAgainstKplocal(t *testing.T) {
	srv, c, _ := startKP(t, func(cfg *kplocal.Config) {
		cfg.Faults = []kplocal.Fault{{Mode: kplocal.FaultStatus, Status: 429, RetryAfter: time.Hour, Ops: []string{"list"}}}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.ListKeys(ctx, nil); !errors.Is(err, keyprotect.ErrRateLimited) || !errors.Is(err, kms.ErrUnavailable) {
		t.Fatalf("list under a long Retry-After: %v", err)
	}
	if st := srv.Stats(); st.Requests != 1 || st.Faults != 1 {
		t.Fatalf("%d requests, %d faults, want 1 and 1: the Retry-After was not honoured", st.Requests, st.Faults)
	}
}

// Key rings and instance policies through this client.
func TestKeyRingsAndInstancePolicies(t *testing.T) {
	ctx := context.Background()
	_, c, _ := startKP(t, nil)
	if err := c.CreateKeyRing(ctx, "ring-a"); err != nil {
		t.Fatal(err)
	}
	rings, err := c.KeyRings(ctx)
	if err != nil || !containsRing(rings, "ring-a") {
		t.Fatalf("key rings %+v, %v", rings, err)
	}
	if err := c.DeleteKeyRing(ctx, "ring-a", false); err != nil {
		t.Fatal(err)
	}
	var p keyprotect.InstancePolicy
	p.Type = keyprotect.InstanceRotation
	p.Data.Enabled = true
	p.Data.Attributes = map[string]json.RawMessage{"interval_month": json.RawMessage("3")}
	if err := c.SetInstancePolicy(ctx, p); err != nil {
		t.Fatal(err)
	}
	ps, err := c.InstancePolicies(ctx)
	if err != nil || len(ps) == 0 || ps[0].Type != keyprotect.InstanceRotation || !ps[0].Data.Enabled {
		t.Fatalf("instance policies %+v, %v", ps, err)
	}
}

func containsRing(rings []keyprotect.KeyRing, id string) bool {
	for _, r := range rings {
		if r.ID == id {
			return true
		}
	}
	return false
}
