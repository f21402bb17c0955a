// Package interop checks kplocal against IBM's official Key Protect Go
// client (github.com/IBM/keyprotect-go-client): the official client is the
// referee for wire shapes.
package interop

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/IBM/keyprotect-go-client/iam"

	"github.com/kpcrypt/kpcrypt/kplocal"
)

const (
	instanceID = "6a1d7c1e-0b9f-4f55-9a43-2f7d1d9e0c11"
	apiKey     = "interop-api-key"
	// secondAPIKey is another caller of the same instance (dual-authorisation
	// delete needs two).
	secondAPIKey = "interop-second-api-key"
)

// clock is a settable clock for kplocal's Config.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// start runs kplocal with cfg (instance and API key filled in) and returns
// it with an official client pointed at it.
func start(t *testing.T, cfg kplocal.Config) (*kplocal.Running, *kp.Client) {
	t.Helper()
	cfg.InstanceID, cfg.APIKey = instanceID, apiKey
	cfg.Accounts = append(cfg.Accounts, kplocal.Account{APIKey: secondAPIKey, Instances: []string{instanceID}})
	srv, err := kplocal.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return srv, newClient(t, srv, apiKey)
}

func newClient(t *testing.T, srv *kplocal.Running, key string) *kp.Client {
	t.Helper()
	c, err := kp.New(kp.ClientConfig{
		BaseURL:    srv.BaseURL(),
		TokenURL:   srv.TokenURL(),
		InstanceID: instanceID,
		APIKey:     key,
	}, kp.DefaultTransport())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// wantKPError checks that err is a *kp.Error with the given status and
// first reason code ("" for an error without reasons).
func wantKPError(t *testing.T, err error, status int, code string) {
	t.Helper()
	var kerr *kp.Error
	if !errors.As(err, &kerr) {
		t.Fatalf("error = %v (%T), want *kp.Error %d %s", err, err, status, code)
	}
	if kerr.StatusCode != status {
		t.Fatalf("status = %d, want %d (%v)", kerr.StatusCode, status, kerr)
	}
	switch {
	case code == "" && len(kerr.Reasons) != 0:
		t.Fatalf("reasons = %v, want none", kerr.Reasons)
	case code != "" && (len(kerr.Reasons) == 0 || kerr.Reasons[0].Code != code):
		t.Fatalf("reasons = %v, want first code %s", kerr.Reasons, code)
	}
}

// must returns v, failing the test if err is not nil: must(f())(t).
func must[T any](v T, err error) func(*testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func b64(n int, fill byte) string {
	return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{fill}, n))
}

// TestOfficialClient drives every method kplocal serves through the official
// client, in the order of a key's life.
func TestOfficialClient(t *testing.T) {
	clk := &clock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	srv, c := start(t, kplocal.Config{
		Now:                 clk.Now,
		MinRotationInterval: kplocal.DefaultMinRotationInterval, // Key Protect's rule
		TokenTTL:            48 * time.Hour,                     // outlives the clock jumps below
	})
	ctx := context.Background()

	// Create: root, standard, imported root, imported standard, options.
	root := must(c.CreateRootKey(ctx, "interop-root", nil))(t)
	if root.Extractable || root.State != int(kp.Active) || root.ID == "" || root.KeyVersion == nil ||
		root.CRN != srv.KeyCRN(root.ID) || root.KeyRingID != "default" || root.Deleted == nil || *root.Deleted {
		t.Fatalf("root key = %+v", root)
	}
	if root.CreationDate == nil || !root.CreationDate.Equal(clk.Now()) {
		t.Fatalf("creationDate = %v, want %v", root.CreationDate, clk.Now())
	}
	if root.LastUpdateDate != nil || root.LastRotateDate != nil {
		t.Fatalf("new key has lastUpdateDate %v / lastRotateDate %v", root.LastUpdateDate, root.LastRotateDate)
	}
	std := must(c.CreateStandardKey(ctx, "interop-standard", nil))(t)
	if !std.Extractable || std.Payload != "" {
		t.Fatalf("standard key = %+v", std)
	}
	impRoot := must(c.CreateImportedRootKey(ctx, "interop-imported-root", nil, b64(32, 7), "", ""))(t)
	if !impRoot.Imported || impRoot.Extractable {
		t.Fatalf("imported root key = %+v", impRoot)
	}
	impStd := must(c.CreateImportedStandardKey(ctx, "interop-imported-std", nil, b64(100, 9)))(t)
	expiry := clk.Now().Add(24 * time.Hour)
	opts := must(c.CreateKeyWithOptions(ctx, "interop-options", false,
		kp.WithDescription("created with options"), kp.WithAliases([]string{"interop-alias"}),
		kp.WithTags([]string{"tag-one", "tag-two"}), kp.WithExpiration(&expiry)))(t)
	if opts.Description != "created with options" || !slices.Equal(opts.Aliases, []string{"interop-alias"}) ||
		!slices.Equal(opts.Tags, []string{"tag-one", "tag-two"}) || opts.Expiration == nil || !opts.Expiration.Equal(expiry) {
		t.Fatalf("key with options = %+v", opts)
	}
	_, err := c.CreateKeyWithOptions(ctx, "x", false)
	wantKPError(t, err, http.StatusBadRequest, "INVALID_FIELD_ERR")

	t.Run("list", func(t *testing.T) {
		all := must(c.GetKeys(ctx, 0, 0))(t)
		if all.Metadata.NumberOfKeys != 5 || len(all.Keys) != 5 {
			t.Fatalf("GetKeys = %d keys (metadata %d), want 5", len(all.Keys), all.Metadata.NumberOfKeys)
		}
		for _, k := range all.Keys {
			if k.Payload != "" {
				t.Fatalf("list returned payload for %s", k.ID)
			}
		}
		var paged []string
		for off := 0; off < 5; off += 2 {
			p := must(c.GetKeys(ctx, 2, off))(t)
			for _, k := range p.Keys {
				paged = append(paged, k.ID)
			}
		}
		var ids []string
		for _, k := range all.Keys {
			ids = append(ids, k.ID)
		}
		if !slices.Equal(paged, ids) || !slices.IsSorted(ids) {
			t.Fatalf("paged ids %v, all ids %v (want equal, sorted by id)", paged, ids)
		}
		yes, limit := true, uint32(10)
		search := "imported"
		got := must(c.ListKeys(ctx, &kp.ListKeysOptions{Extractable: &yes, Limit: &limit, Search: &search}))(t)
		if len(got.Keys) != 1 || got.Keys[0].ID != impStd.ID {
			t.Fatalf("ListKeys(extractable, search imported) = %+v", got.Keys)
		}
		sortStr := kp.GetKeySortStr(kp.WithCreationDateDesc())
		got = must(c.ListKeys(ctx, &kp.ListKeysOptions{Sort: sortStr, State: []kp.KeyState{kp.Active}}))(t)
		if len(got.Keys) != 5 {
			t.Fatalf("ListKeys(sort, state) = %d keys", len(got.Keys))
		}
		filter := kp.GetFilterQueryBuilder().Extractable(false).Build()
		got = must(c.ListKeys(ctx, &kp.ListKeysOptions{Filter: &filter}))(t)
		if len(got.Keys) != 3 {
			t.Fatalf("ListKeys(filter extractable=false) = %d keys, want 3", len(got.Keys))
		}
	})

	t.Run("get", func(t *testing.T) {
		k := must(c.GetKey(ctx, std.ID))(t)
		if material, err := base64.StdEncoding.DecodeString(k.Payload); err != nil || len(material) != 32 {
			t.Fatalf("standard key payload %q (%v), want 32 bytes", k.Payload, err)
		}
		if k := must(c.GetKey(ctx, impStd.ID))(t); k.Payload != b64(100, 9) {
			t.Fatal("imported standard key payload differs from the imported material")
		}
		if k := must(c.GetKeyMetadata(ctx, std.ID))(t); k.Payload != "" {
			t.Fatal("metadata returned the payload")
		}
		if k := must(c.GetKey(ctx, root.ID))(t); k.Payload != "" || k.ID != root.ID {
			t.Fatalf("root key get = %+v", k)
		}
		if k := must(c.GetKey(ctx, "interop-alias"))(t); k.ID != opts.ID {
			t.Fatalf("get by alias = %s, want %s", k.ID, opts.ID)
		}
		_, err := c.GetKey(ctx, "9d0c1d43-3c37-4ad1-8f8c-4f1f7cf1b8a1")
		wantKPError(t, err, http.StatusNotFound, "KEY_NOT_FOUND_ERR")
	})

	aad := []string{"volume-42", "tenant-a"}
	var oldCiphertext, oldPlaintext []byte
	t.Run("wrap and unwrap", func(t *testing.T) {
		dek := []byte(b64(32, 1))
		ct := must(c.Wrap(ctx, root.ID, dek, &aad))(t)
		pt := must(c.Unwrap(ctx, root.ID, ct, &aad))(t)
		if !bytes.Equal(pt, dek) {
			t.Fatalf("unwrap = %s, want %s", pt, dek)
		}
		_, err := c.Unwrap(ctx, root.ID, ct, &[]string{"tenant-a", "volume-42"})
		wantKPError(t, err, http.StatusBadRequest, "INVALID_FIELD_ERR")
		_, err = c.Unwrap(ctx, root.ID, ct, nil)
		wantKPError(t, err, http.StatusBadRequest, "INVALID_FIELD_ERR")
		_, err = c.Unwrap(ctx, impRoot.ID, ct, &aad)
		wantKPError(t, err, http.StatusUnprocessableEntity, "UNPROCESSABLE_CIPHERTEXT_ERR")

		res := must(c.WrapCreateDEKV2(ctx, root.ID, &aad))(t)
		raw, err := base64.StdEncoding.DecodeString(res.PlainText)
		if err != nil || len(raw) != 32 || res.KeyVersion == nil || res.KeyVersion.ID != root.KeyVersion.ID {
			t.Fatalf("WrapCreateDEKV2 = %+v (%v)", res, err)
		}
		versions := must(c.ListKeyVersions(ctx, root.ID, nil))(t)
		if len(versions.KeyVersion) != 1 || versions.KeyVersion[0].ID != res.KeyVersion.ID {
			t.Fatalf("versions = %+v, want the wrap's version", versions.KeyVersion)
		}
		pt, rewrapped, err := c.UnwrapV2(ctx, root.ID, []byte(res.CipherText), &aad)
		if err != nil || string(pt) != res.PlainText || len(rewrapped) != 0 {
			t.Fatalf("UnwrapV2 before rotation = %q, rewrapped %q, %v", pt, rewrapped, err)
		}
		oldCiphertext, oldPlaintext = []byte(res.CipherText), pt

		_, _, err = c.WrapCreateDEK(ctx, std.ID, nil)
		wantKPError(t, err, http.StatusBadRequest, "KEY_ROOT_REQ_ERR")
	})

	t.Run("rotate", func(t *testing.T) {
		if err := c.Rotate(ctx, root.ID, ""); err != nil {
			t.Fatal(err)
		}
		rotated := must(c.GetKey(ctx, root.ID))(t)
		if rotated.KeyVersion.ID == root.KeyVersion.ID || rotated.LastRotateDate == nil || rotated.LastUpdateDate == nil {
			t.Fatalf("after rotate: %+v", rotated)
		}
		pt, rewrapped, err := c.UnwrapV2(ctx, root.ID, oldCiphertext, &aad)
		if err != nil || !bytes.Equal(pt, oldPlaintext) || len(rewrapped) == 0 || bytes.Equal(rewrapped, oldCiphertext) {
			t.Fatalf("UnwrapV2 of old ciphertext = %q, rewrapped %q, %v", pt, rewrapped, err)
		}
		pt2, again, err := c.UnwrapV2(ctx, root.ID, rewrapped, &aad)
		if err != nil || !bytes.Equal(pt2, oldPlaintext) || len(again) != 0 {
			t.Fatalf("UnwrapV2 of rewrapped ciphertext = %q, rewrapped %q, %v", pt2, again, err)
		}
		res := must(c.WrapV2(ctx, root.ID, []byte(b64(16, 3)), nil))(t)
		if res.KeyVersion.ID != rotated.KeyVersion.ID {
			t.Fatalf("wrap after rotate used version %s, want %s", res.KeyVersion.ID, rotated.KeyVersion.ID)
		}
		versions := must(c.ListKeyVersions(ctx, root.ID, nil))(t)
		if len(versions.KeyVersion) != 2 || versions.KeyVersion[0].ID != rotated.KeyVersion.ID ||
			versions.KeyVersion[1].ID != root.KeyVersion.ID {
			t.Fatalf("versions after rotate = %+v", versions.KeyVersion)
		}

		wantKPError(t, c.Rotate(ctx, root.ID, ""), http.StatusConflict, "KEY_ROTATION_NOT_PERMITTED")
		clk.Advance(61 * time.Minute)
		if err := c.RotateV2(ctx, root.ID, nil); err != nil { // sends the body null
			t.Fatal(err)
		}
		if pt, _, err := c.UnwrapV2(ctx, root.ID, oldCiphertext, &aad); err != nil || !bytes.Equal(pt, oldPlaintext) {
			t.Fatalf("oldest ciphertext after two rotations: %q, %v", pt, err)
		}
		wantKPError(t, c.Rotate(ctx, root.ID, b64(32, 5)), http.StatusBadRequest, "INVALID_QUERY_PARAM_ERR")

		impCT := must(c.Wrap(ctx, impRoot.ID, []byte(b64(32, 2)), nil))(t)
		wantKPError(t, c.Rotate(ctx, impRoot.ID, ""), http.StatusBadRequest, "KEY_PAYLOAD_REQ_ERR")
		payload := kp.NewKeyPayload(b64(32, 8), "", "")
		if err := c.RotateV2(ctx, impRoot.ID, &payload); err != nil {
			t.Fatal(err)
		}
		if pt := must(c.Unwrap(ctx, impRoot.ID, impCT, nil))(t); string(pt) != b64(32, 2) {
			t.Fatalf("imported key: old ciphertext unwraps to %q", pt)
		}
		wantKPError(t, c.Rotate(ctx, std.ID, ""), http.StatusBadRequest, "KEY_ROOT_REQ_ERR")
	})

	t.Run("rewrap over HTTP with an official IAM token", func(t *testing.T) {
		// The official client has no rewrap method: call it with a token from
		// the client's own IAM token source.
		ts := iam.CredentialFromAPIKey(apiKey)
		ts.TokenURL = srv.TokenURL()
		tok := must(ts.Token())(t)
		body, _ := json.Marshal(map[string]any{"ciphertext": string(oldCiphertext), "aad": aad})
		req, _ := http.NewRequest(http.MethodPost, srv.BaseURL()+"/api/v2/keys/"+root.ID+"/actions/rewrap", bytes.NewReader(body))
		req.Header.Set("authorization", tok.TokenType+" "+tok.AccessToken)
		req.Header.Set("bluemix-instance", instanceID)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct {
			Ciphertext          string `json:"ciphertext"`
			Plaintext           string `json:"plaintext"`
			KeyVersion          struct{ ID string }
			RewrappedKeyVersion struct{ ID string }
		}
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("rewrap: %d, %v", resp.StatusCode, err)
		}
		current := must(c.GetKeyMetadata(ctx, root.ID))(t).KeyVersion.ID
		if out.Plaintext != "" || out.KeyVersion.ID != root.KeyVersion.ID || out.RewrappedKeyVersion.ID != current {
			t.Fatalf("rewrap = %+v, want no plaintext, versions %s -> %s", out, root.KeyVersion.ID, current)
		}
		pt, rewrapped, err := c.UnwrapV2(ctx, root.ID, []byte(out.Ciphertext), &aad)
		if err != nil || !bytes.Equal(pt, oldPlaintext) || len(rewrapped) != 0 {
			t.Fatalf("unwrap of rewrapped ciphertext = %q, %q, %v", pt, rewrapped, err)
		}
	})

	t.Run("disable and enable", func(t *testing.T) {
		if err := c.DisableKey(ctx, root.ID); err != nil {
			t.Fatal(err)
		}
		if k := must(c.GetKey(ctx, root.ID))(t); k.State != int(kp.Suspended) {
			t.Fatalf("state after disable = %d", k.State)
		}
		_, _, err := c.WrapCreateDEK(ctx, root.ID, nil)
		wantKPError(t, err, http.StatusConflict, "KEY_ACTION_INVALID_STATE_ERR")
		_, err = c.Unwrap(ctx, root.ID, oldCiphertext, &aad)
		wantKPError(t, err, http.StatusConflict, "KEY_ACTION_INVALID_STATE_ERR")
		wantKPError(t, c.DisableKey(ctx, root.ID), http.StatusConflict, "KEY_ACTION_INVALID_STATE_ERR")
		wantKPError(t, c.EnableKey(ctx, root.ID), http.StatusConflict, "REQ_TOO_EARLY_ERR")
		clk.Advance(31 * time.Second)
		if err := c.EnableKey(ctx, root.ID); err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.WrapCreateDEK(ctx, root.ID, nil); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("policies", func(t *testing.T) {
		if p := must(c.GetRotationPolicy(ctx, root.ID))(t); p != nil {
			t.Fatalf("rotation policy before any = %+v", p)
		}
		p := must(c.SetRotationPolicy(ctx, root.ID, 3))(t)
		if p.Rotation == nil || p.Rotation.Interval != 3 || p.Rotation.Enabled == nil || !*p.Rotation.Enabled ||
			p.Type != "application/vnd.ibm.kms.policy+json" || p.CRN == "" || p.CreatedAt == nil {
			t.Fatalf("SetRotationPolicy = %+v", p)
		}
		p = must(c.DisableRotationPolicy(ctx, root.ID))(t)
		if p.Rotation.Interval != 3 || *p.Rotation.Enabled {
			t.Fatalf("DisableRotationPolicy = %+v", p.Rotation)
		}
		p = must(c.GetRotationPolicy(ctx, root.ID))(t)
		if p.Rotation.Interval != 3 || *p.Rotation.Enabled {
			t.Fatalf("GetRotationPolicy = %+v", p.Rotation)
		}
		_, err := c.SetRotationPolicy(ctx, root.ID, 0) // the client sends -1
		wantKPError(t, err, http.StatusBadRequest, "INVALID_FIELD_ERR")
		_, err = c.SetRotationPolicy(ctx, root.ID, 13)
		wantKPError(t, err, http.StatusBadRequest, "INVALID_FIELD_ERR")
		_, err = c.SetRotationPolicy(ctx, std.ID, 2)
		wantKPError(t, err, http.StatusBadRequest, "KEY_ROOT_REQ_ERR")

		if p := must(c.SetPolicy(ctx, root.ID, kp.ReturnRepresentation, 6))(t); p.Rotation.Interval != 6 {
			t.Fatalf("legacy SetPolicy = %+v", p.Rotation)
		}
		if p := must(c.GetPolicy(ctx, root.ID))(t); p.Rotation == nil || p.Rotation.Interval != 6 {
			t.Fatalf("legacy GetPolicy = %+v", p)
		}
		if k := must(c.GetKey(ctx, root.ID))(t); k.Rotation == nil || k.Rotation.Interval != 6 {
			t.Fatalf("key's rotation field = %+v", k.Rotation)
		}

		if p := must(c.GetDualAuthDeletePolicy(ctx, std.ID))(t); p != nil {
			t.Fatalf("dual auth policy before any = %+v", p)
		}
		p = must(c.SetDualAuthDeletePolicy(ctx, std.ID, true))(t)
		if p.DualAuth == nil || p.DualAuth.Enabled == nil || !*p.DualAuth.Enabled {
			t.Fatalf("SetDualAuthDeletePolicy = %+v", p)
		}
		if p := must(c.GetDualAuthDeletePolicy(ctx, std.ID))(t); !*p.DualAuth.Enabled {
			t.Fatalf("GetDualAuthDeletePolicy = %+v", p.DualAuth)
		}
		_, err = c.SetDualAuthDeletePolicy(ctx, std.ID, false)
		wantKPError(t, err, http.StatusBadRequest, "INVALID_FIELD_ERR")

		both := must(c.SetPolicies(ctx, impRoot.ID, true, 2, true, true))(t)
		if len(both) != 2 || both[0].Rotation == nil || both[0].Rotation.Interval != 2 || both[1].DualAuth == nil {
			t.Fatalf("SetPolicies = %+v", both)
		}
		if all := must(c.GetPolicies(ctx, impRoot.ID))(t); len(all) != 2 {
			t.Fatalf("GetPolicies = %+v", all)
		}

		enabled := true
		over := must(c.CreateRootKeyWithPolicyOverrides(ctx, "interop-overrides", nil, nil,
			kp.Policy{Rotation: &kp.Rotation{Enabled: &enabled, Interval: 4}, DualAuth: &kp.DualAuth{Enabled: &enabled}}))(t)
		if over.Rotation == nil || over.Rotation.Interval != 4 || over.DualAuthDelete == nil || !*over.DualAuthDelete.Enabled {
			t.Fatalf("CreateRootKeyWithPolicyOverrides = %+v", over)
		}
		_, err = c.CreateStandardKeyWithPolicyOverrides(ctx, "interop-bad-overrides", nil, nil,
			kp.Policy{Rotation: &kp.Rotation{Interval: 4}})
		wantKPError(t, err, http.StatusBadRequest, "KEY_ROOT_REQ_ERR")
	})

	t.Run("dual authorization delete", func(t *testing.T) {
		_, err := c.DeleteKey(ctx, std.ID, kp.ReturnMinimal)
		wantKPError(t, err, http.StatusConflict, "AUTHORIZATIONS_NOT_MET")
		wantKPError(t, c.InitiateDualAuthDelete(ctx, opts.ID), http.StatusConflict, "NOT_DUAL_AUTH_ERR")
		if err := c.InitiateDualAuthDelete(ctx, std.ID); err != nil {
			t.Fatal(err)
		}
		if err := c.CancelDualAuthDelete(ctx, std.ID); err != nil {
			t.Fatal(err)
		}
		_, err = c.DeleteKey(ctx, std.ID, kp.ReturnMinimal)
		wantKPError(t, err, http.StatusConflict, "AUTHORIZATIONS_NOT_MET")
		if err := c.InitiateDualAuthDelete(ctx, std.ID); err != nil {
			t.Fatal(err)
		}
		// The caller who authorised cannot also delete; another one can.
		_, err = c.DeleteKey(ctx, std.ID, kp.ReturnMinimal)
		wantKPError(t, err, http.StatusConflict, "AUTHORIZATIONS_NOT_MET")
		if k, err := newClient(t, srv, secondAPIKey).DeleteKey(ctx, std.ID, kp.ReturnMinimal); err != nil || k != nil {
			t.Fatalf("DeleteKey after authorization = %+v, %v", k, err)
		}
	})

	t.Run("aliases, key ring, sync", func(t *testing.T) {
		a := must(c.CreateKeyAlias(ctx, "interop-second", root.ID))(t)
		if a.KeyID != root.ID || a.Alias != "interop-second" {
			t.Fatalf("CreateKeyAlias = %+v", a)
		}
		ptDEK, wdek, err := c.WrapCreateDEK(ctx, "interop-second", nil)
		if err != nil {
			t.Fatal(err)
		}
		if pt := must(c.Unwrap(ctx, "interop-second", wdek, nil))(t); !bytes.Equal(pt, ptDEK) {
			t.Fatal("unwrap by alias returned another DEK")
		}
		if err := c.DeleteKeyAlias(ctx, "interop-second", root.ID); err != nil {
			t.Fatal(err)
		}
		_, err = c.GetKey(ctx, "interop-second")
		wantKPError(t, err, http.StatusNotFound, "KEY_NOT_FOUND_ERR")

		if err := c.CreateKeyRing(ctx, "ring-two"); err != nil {
			t.Fatal(err)
		}
		if k := must(c.SetKeyRing(ctx, opts.ID, "ring-two"))(t); k.KeyRingID != "ring-two" {
			t.Fatalf("SetKeyRing = %+v", k)
		}
		if err := c.SyncAssociatedResources(ctx, root.ID); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("expiry", func(t *testing.T) {
		ct := must(c.Wrap(ctx, opts.ID, []byte(b64(32, 4)), nil))(t)
		clk.Advance(25 * time.Hour) // past opts' expiration date
		if k := must(c.GetKey(ctx, opts.ID))(t); k.State != int(kp.Deactivated) {
			t.Fatalf("state after expiry = %d", k.State)
		}
		_, _, err := c.WrapCreateDEK(ctx, opts.ID, nil)
		wantKPError(t, err, http.StatusConflict, "KEY_ACTION_INVALID_STATE_ERR")
		if pt := must(c.Unwrap(ctx, opts.ID, ct, nil))(t); string(pt) != b64(32, 4) {
			t.Fatal("expired key: unwrap failed")
		}
	})

	t.Run("delete, restore, purge", func(t *testing.T) {
		k := must(c.DeleteKey(ctx, root.ID, kp.ReturnRepresentation))(t)
		if k == nil || k.State != int(kp.Destroyed) || k.Deleted == nil || !*k.Deleted || k.DeletionDate == nil ||
			k.PurgeAllowedFrom == nil || k.PurgeScheduledOn == nil || k.PurgeScheduledOn.Sub(*k.PurgeAllowedFrom) != 2156*time.Hour {
			t.Fatalf("DeleteKey(representation) = %+v", k)
		}
		_, err := c.DeleteKey(ctx, root.ID, kp.ReturnMinimal)
		wantKPError(t, err, http.StatusGone, "KEY_DELETED_ERR")
		if k := must(c.GetKey(ctx, root.ID))(t); k.State != int(kp.Destroyed) {
			t.Fatalf("get deleted key: state %d", k.State)
		}
		_, err = c.Unwrap(ctx, root.ID, oldCiphertext, &aad)
		wantKPError(t, err, http.StatusGone, "KEY_DELETED_ERR")
		_, err = c.ListKeyVersions(ctx, root.ID, nil)
		wantKPError(t, err, http.StatusGone, "KEY_DELETED_ERR")
		all := true
		if v := must(c.ListKeyVersions(ctx, root.ID, &kp.ListKeyVersionsOptions{AllKeyStates: &all, TotalCount: &all}))(t); v.Metadata.TotalCount == nil || *v.Metadata.TotalCount != 3 {
			t.Fatalf("versions of a deleted key with allKeyStates: %+v", v.Metadata)
		}

		_, err = c.RestoreKey(ctx, root.ID)
		wantKPError(t, err, http.StatusConflict, "REQ_TOO_EARLY_ERR")
		clk.Advance(31 * time.Second)
		if k := must(c.RestoreKey(ctx, root.ID))(t); k.State != int(kp.Active) || *k.Deleted {
			t.Fatalf("RestoreKey = %+v", k)
		}
		if pt, _, err := c.UnwrapV2(ctx, root.ID, oldCiphertext, &aad); err != nil || !bytes.Equal(pt, oldPlaintext) {
			t.Fatalf("unwrap after restore: %v", err)
		}

		must(c.DeleteKey(ctx, root.ID, kp.ReturnMinimal))(t)
		_, err = c.PurgeKey(ctx, root.ID, kp.ReturnMinimal)
		wantKPError(t, err, http.StatusConflict, "REQ_TOO_EARLY_ERR")
		_, err = c.PurgeKey(ctx, impRoot.ID, kp.ReturnMinimal)
		wantKPError(t, err, http.StatusConflict, "KEY_ACTION_INVALID_STATE_ERR")
		clk.Advance(4 * time.Hour)
		if k, err := c.PurgeKey(ctx, root.ID, kp.ReturnMinimal); err != nil || k != nil {
			t.Fatalf("PurgeKey = %+v, %v", k, err)
		}
		_, err = c.GetKey(ctx, root.ID)
		wantKPError(t, err, http.StatusNotFound, "KEY_NOT_FOUND_ERR")
	})

	st := srv.Stats()
	if st.Rotate < 3 || st.Wrap == 0 || st.Unwrap == 0 || st.Rewrap != 1 || st.Purge != 3 || st.Unauthorized != 0 {
		t.Fatalf("stats = %+v", st)
	}
}

// TestOfficialClientAuth checks the token exchange and 401s as the official
// client sees them.
func TestOfficialClientAuth(t *testing.T) {
	clk := &clock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	srv, c := start(t, kplocal.Config{Now: clk.Now, TokenTTL: 2 * time.Minute})
	ctx := context.Background()

	_, err := newClient(t, srv, "wrong-key").GetKeys(ctx, 0, 0)
	var ierr iam.Error
	if !errors.As(err, &ierr) || ierr.ErrorCode != "BXNIM0415E" || ierr.HTTPResponse.StatusCode != http.StatusBadRequest {
		t.Fatalf("wrong API key: %v (%T)", err, err)
	}

	must(c.GetKeys(ctx, 0, 0))(t)
	// The client caches its token for expires_in-60 s of its own clock; the
	// server's clock decides that the token has expired.
	clk.Advance(3 * time.Minute)
	_, err = c.GetKeys(ctx, 0, 0)
	wantKPError(t, err, http.StatusUnauthorized, "")

	other, err := kp.New(kp.ClientConfig{
		BaseURL: srv.BaseURL(), TokenURL: srv.TokenURL(), InstanceID: "00000000-0000-4000-8000-000000000000", APIKey: apiKey,
	}, kp.DefaultTransport())
	if err != nil {
		t.Fatal(err)
	}
	_, err = other.GetKeys(ctx, 0, 0)
	wantKPError(t, err, http.StatusUnauthorized, "")
	if st := srv.Stats(); st.Unauthorized != 2 || st.Tokens != 3 {
		t.Fatalf("stats = %+v, want 2 unauthorized, 3 token requests", st)
	}
}

// TestOfficialClientFaults checks that injected faults are retried by the
// official client and that the last one surfaces as a *kp.Error.
func TestOfficialClientFaults(t *testing.T) {
	srv, c := start(t, kplocal.Config{FaultRate: 1, Seed: 7})
	_, err := c.GetKeys(context.Background(), 0, 0)
	var kerr *kp.Error
	if !errors.As(err, &kerr) || (kerr.StatusCode != http.StatusTooManyRequests && kerr.StatusCode != http.StatusServiceUnavailable) {
		t.Fatalf("error = %v, want *kp.Error 429 or 503", err)
	}
	if st := srv.Stats(); st.Faults != int64(kp.RetryMax)+1 || st.List != 0 {
		t.Fatalf("stats = %+v, want %d faults (every attempt) and no list served", st, kp.RetryMax+1)
	}
}
