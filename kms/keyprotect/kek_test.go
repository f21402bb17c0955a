package keyprotect

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/kms"
)

func TestKEKWithEnvelope(t *testing.T) {
	ctx := context.Background()
	e := start(t, nil, nil)
	key := e.rootKey(t, "files")
	crn := e.server.KeyCRN(key.ID)
	if crn != key.CRN {
		t.Fatalf("server CRN %q, key CRN %q", crn, key.CRN)
	}
	opener := &Opener{Config: Config{BaseURL: e.server.BaseURL(), IAMURL: e.server.BaseURL(), APIKey: testAPIKey, Now: e.clock.Now}}
	resolver := kms.Resolver{Scheme: opener.Open}
	kek, err := resolver.Open(ctx, crn)
	if err != nil {
		t.Fatal(err)
	}
	if kek.URI() != crn {
		t.Fatalf("URI %q", kek.URI())
	}
	pt := bytes.Repeat([]byte("pipeline record "), 20000)
	ct, err := envelope.Seal(ctx, pt, kek)
	if err != nil {
		t.Fatal(err)
	}
	h, _ := envelope.Inspect(bytes.NewReader(ct))
	if h.Slots[0].KEK != crn || h.Slots[0].KeyVersion != key.KeyVersion.ID {
		t.Fatalf("slot %+v", h.Slots[0])
	}

	// Decrypting needs no KEK given: the slot's CRN and the configuration
	// are enough.
	keyring := &envelope.ResolvingKeyring{Resolver: resolver, Filter: kms.DiscoveryFunc(func(u string) (string, error) { return u, nil })}
	r, err := envelope.NewReader(ctx, bytes.NewReader(ct), keyring)
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if _, err := got.ReadFrom(r); err != nil || !bytes.Equal(got.Bytes(), pt) {
		t.Fatalf("decrypt: %v", err)
	}
	if r.Slot().Rewrapped != nil {
		t.Fatal("rewrapped before any rotation")
	}

	// After a rotation the file still opens, and the reader hands back the
	// DEK wrapped under the new version.
	newVersion, err := kek.(kms.Rotator).Rotate(ctx)
	if err != nil || newVersion == key.KeyVersion.ID {
		t.Fatalf("rotate: %v, %q", err, newVersion)
	}
	if cur, _ := kek.(kms.VersionReporter).CurrentVersion(ctx); cur != newVersion {
		t.Fatalf("current version %q, want %q", cur, newVersion)
	}
	r, err = envelope.NewReader(ctx, bytes.NewReader(ct), keyring)
	if err != nil {
		t.Fatal(err)
	}
	if rw := r.Slot().Rewrapped; rw == nil || rw.KeyVersion != newVersion {
		t.Fatalf("after rotation: rewrapped %+v", rw)
	}
	r.Close()

	// Server-side rewrap of the slot's wrapped DEK, as a rewrap tool does.
	wrapped := []byte(nil)
	{
		w, err := kek.Wrap(ctx, make([]byte, 32), []byte("aad"))
		if err != nil || w.KeyVersion != newVersion {
			t.Fatalf("wrap after rotation: %v %+v", err, w)
		}
		wrapped = w.Ciphertext
	}
	if _, err := kek.(kms.Rewrapper).Rewrap(ctx, wrapped, []byte("other aad")); !errors.Is(err, kms.ErrWrongKey) {
		t.Fatalf("rewrap with other AAD: %v", err)
	}
	var ke *kms.Error
	if _, err := kek.Unwrap(ctx, wrapped, []byte("other aad")); !errors.As(err, &ke) || ke.URI != crn || ke.Op != "unwrap" {
		t.Fatalf("unwrap error %v does not name the KEK", err)
	}
}

func TestOpenerErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := (&Opener{}).Open(ctx, "crn:v1:bluemix:public:kms:us-south:a/x:9d3c1f2e-4b5a-4c6d-8e7f-0a1b2c3d4e5f:key:k1"); !errors.Is(err, kms.ErrPermissionDenied) {
		t.Fatalf("no API key: %v", err)
	}
	if _, err := (&Opener{Config: Config{APIKey: "k"}}).Open(ctx, "crn:bogus"); !errors.Is(err, kms.ErrInvalidURI) {
		t.Fatalf("bad CRN: %v", err)
	}
	cfg := ConfigFromEnv(func(k string) string {
		return map[string]string{EnvAPIKey: "key", EnvKPEndpoint: "http://127.0.0.1:1", EnvIAMEndpoint: "http://127.0.0.1:2"}[k]
	})
	if cfg.APIKey != "key" || cfg.BaseURL != "http://127.0.0.1:1" || cfg.IAMURL != "http://127.0.0.1:2" {
		t.Fatalf("ConfigFromEnv: %+v", cfg)
	}
}
