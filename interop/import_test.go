package interop

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	kp "github.com/IBM/keyprotect-go-client"

	"github.com/kpcrypt/kpcrypt/kplocal"
)

// prepareImport encrypts material (base64) for a secure import with the
// official client's helpers: the payload under the import token's public
// key (SHA-256, or SHA-1 when sha1), the nonce under the material with a
// fresh GCM iv.
func prepareImport(t *testing.T, tok *kp.ImportTokenKeyResponse, material string, sha1 bool) (payload, encNonce, iv string) {
	t.Helper()
	var err error
	if sha1 {
		payload, err = kp.EncryptKeyWithSHA1(material, tok.Payload)
	} else {
		payload, err = kp.EncryptKey(material, tok.Payload)
	}
	if err != nil {
		t.Fatal(err)
	}
	encNonce, iv, err = kp.EncryptNonce(material, tok.Nonce, "")
	if err != nil {
		t.Fatal(err)
	}
	return payload, encNonce, iv
}

// TestOfficialClientSecureImport runs the official client's import-token
// flow: CreateImportToken, GetImportTokenTransportKey, then
// CreateImportedRootKey and RotateV2 with an encrypted payload, nonce and iv.
func TestOfficialClientSecureImport(t *testing.T) {
	clk := &clock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	_, c := start(t, kplocal.Config{Now: clk.Now, ImportKeyBits: 2048})
	ctx := context.Background()

	md := must(c.CreateImportToken(ctx, 600, 2))(t)
	if md.MaxAllowedRetrievals != 2 || md.RemainingRetrievals != 2 || md.CreationDate == nil || !md.CreationDate.Equal(clk.Now()) ||
		md.ExpirationDate == nil || !md.ExpirationDate.Equal(clk.Now().Add(600*time.Second)) {
		t.Fatalf("CreateImportToken = %+v", md)
	}
	tok := must(c.GetImportTokenTransportKey(ctx))(t)
	if tok.Payload == "" || tok.Nonce == "" {
		t.Fatalf("GetImportTokenTransportKey = %+v", tok)
	}

	material := b64(32, 0x42)
	payload, encNonce, iv := prepareImport(t, tok, material, false)
	k := must(c.CreateImportedRootKey(ctx, "securely-imported", nil, payload, encNonce, iv))(t)
	if !k.Imported || k.Extractable {
		t.Fatalf("CreateImportedRootKey = %+v", k)
	}
	dek := b64(32, 3)
	ct := must(c.Wrap(ctx, k.ID, []byte(dek), nil))(t)
	if pt := must(c.Unwrap(ctx, k.ID, ct, nil))(t); string(pt) != dek {
		t.Fatalf("unwrap = %q", pt)
	}

	// A wrong nonce, well encrypted.
	wrongNonce, wrongIV, err := kp.EncryptNonce(material, base64.StdEncoding.EncodeToString([]byte("not-the-nonce")), "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.CreateImportedRootKey(ctx, "wrong-nonce", nil, payload, wrongNonce, wrongIV)
	wantKPError(t, err, http.StatusBadRequest, "INCORRECT_NONCE_ERR")

	// Rotate with new material, securely imported.
	p2, n2, iv2 := prepareImport(t, tok, b64(32, 0x43), false)
	newKey := kp.NewKeyPayload(p2, n2, iv2).WithRSA256()
	if err := c.RotateV2(ctx, k.ID, &newKey); err != nil {
		t.Fatal(err)
	}
	if pt := must(c.Unwrap(ctx, k.ID, ct, nil))(t); string(pt) != dek {
		t.Fatalf("old ciphertext after the secure rotation = %q", pt)
	}

	// Retrievals are counted, and the token expires by the server's clock.
	must(c.GetImportTokenTransportKey(ctx))(t)
	_, err = c.GetImportTokenTransportKey(ctx)
	wantKPError(t, err, http.StatusConflict, "IMPORT_TOKEN_EXPIRED_ERR")
	clk.Advance(601 * time.Second)
	_, err = c.CreateImportedRootKey(ctx, "too-late", nil, payload, encNonce, iv)
	wantKPError(t, err, http.StatusConflict, "IMPORT_TOKEN_EXPIRED_ERR")
}

// TestOfficialClientHPCSImportOverTLS runs the official client against an
// HPCS-mode kplocal over TLS, found through the broker: RSAES_OAEP_SHA_1
// import with CreateImportedKeyWithSHA1.
func TestOfficialClientHPCSImportOverTLS(t *testing.T) {
	srv, err := kplocal.Start(kplocal.Config{InstanceID: instanceID, APIKey: apiKey, Service: kplocal.ServiceHPCS, TLS: true, ImportKeyBits: 2048})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	info := srv.ClientInfo()
	hc := srv.HTTPClient()

	// The official client's IAM exchange uses http.DefaultTransport, which
	// does not trust kplocal's CA (and must not be changed process-wide):
	// fetch the token with a client that does and hand it over.
	resp, err := hc.PostForm(info.TokenURL, url.Values{"grant_type": {"urn:ibm:params:oauth:grant-type:apikey"}, "apikey": {info.APIKey}})
	if err != nil {
		t.Fatal(err)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	err = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	ctx := kp.NewContextWithAuth(context.Background(), "Bearer "+tok.AccessToken)

	// The broker names the key-management endpoint as host:port.
	req, _ := http.NewRequest(http.MethodGet, info.BaseURL+"/crypto_v2/instances/"+info.InstanceID, nil)
	req.Header.Set("authorization", "Bearer "+tok.AccessToken)
	resp, err = hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var broker struct{ KMS struct{ Public string } }
	err = json.NewDecoder(resp.Body).Decode(&broker)
	resp.Body.Close()
	if err != nil || strings.Contains(broker.KMS.Public, "://") {
		t.Fatalf("broker: %+v, %v", broker, err)
	}

	c, err := kp.New(kp.ClientConfig{BaseURL: "https://" + broker.KMS.Public, InstanceID: info.InstanceID, APIKey: info.APIKey},
		&http.Transport{TLSClientConfig: &tls.Config{RootCAs: srv.CertPool()}})
	if err != nil {
		t.Fatal(err)
	}
	must(c.CreateImportToken(ctx, 300, 1))(t)
	itok := must(c.GetImportTokenTransportKey(ctx))(t)
	payload, encNonce, iv := prepareImport(t, itok, b64(16, 9), true)
	k := must(c.CreateImportedKeyWithSHA1(ctx, "hpcs-imported", nil, payload, encNonce, iv, false, nil))(t)
	if !k.Imported || !strings.Contains(k.CRN, ":hs-crypto:") {
		t.Fatalf("CreateImportedKeyWithSHA1 = %+v", k)
	}
}

// TestOfficialClientKeyRingsAndInstancePolicies drives key rings and
// instance policies through the official client.
func TestOfficialClientKeyRingsAndInstancePolicies(t *testing.T) {
	_, c := start(t, kplocal.Config{})
	ctx := context.Background()

	if err := c.CreateKeyRing(ctx, "interop-ring"); err != nil {
		t.Fatal(err)
	}
	rings := must(c.GetKeyRings(ctx))(t)
	var ids []string
	for _, r := range rings.KeyRings {
		ids = append(ids, r.ID)
	}
	if !slices.Equal(ids, []string{"default", "interop-ring"}) || rings.KeyRings[1].CreationDate == nil {
		t.Fatalf("GetKeyRings = %+v", rings)
	}
	ringed, err := kp.New(kp.ClientConfig{BaseURL: c.Config.BaseURL, TokenURL: c.Config.TokenURL, InstanceID: instanceID, APIKey: apiKey,
		KeyRing: "interop-ring"}, kp.DefaultTransport())
	if err != nil {
		t.Fatal(err)
	}
	k := must(ringed.CreateRootKey(ctx, "in-a-ring", nil))(t)
	if k.KeyRingID != "interop-ring" {
		t.Fatalf("key ring of the key = %q", k.KeyRingID)
	}
	wantKPError(t, c.DeleteKeyRing(ctx, "interop-ring"), http.StatusConflict, "KEY_RING_NOT_EMPTY_ERR")
	must(c.DeleteKey(ctx, k.ID, kp.ReturnMinimal))(t)
	if err := c.DeleteKeyRing(ctx, "interop-ring", kp.WithForce(true)); err != nil {
		t.Fatal(err)
	}

	three := 3
	if err := c.SetRotationInstancePolicy(ctx, true, &three); err != nil {
		t.Fatal(err)
	}
	rp := must(c.GetRotationInstancePolicy(ctx))(t)
	if rp == nil || rp.PolicyData.Enabled == nil || !*rp.PolicyData.Enabled || rp.PolicyData.Attributes == nil ||
		rp.PolicyData.Attributes.IntervalMonth == nil || *rp.PolicyData.Attributes.IntervalMonth != 3 || rp.CreatedAt == nil {
		t.Fatalf("GetRotationInstancePolicy = %+v", rp)
	}
	if p := must(c.GetDualAuthInstancePolicy(ctx))(t); p != nil {
		t.Fatalf("unset dual auth policy = %+v", p)
	}
	if err := c.SetInstancePolicies(ctx, kp.MultiplePolicies{
		DualAuthDelete: &kp.BasicPolicyData{Enabled: false},
		AllowedNetwork: &kp.AllowedNetworkPolicyData{Enabled: true, Network: "public-and-private"},
		Metrics:        &kp.BasicPolicyData{Enabled: true},
	}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetKeyCreateImportAccessInstancePolicy(ctx, true, map[string]bool{kp.CreateStandardKey: false}); err != nil {
		t.Fatal(err)
	}
	all := must(c.GetInstancePolicies(ctx))(t)
	var types []string
	for _, p := range all {
		types = append(types, p.PolicyType)
	}
	if !slices.Equal(types, []string{"dualAuthDelete", "rotation", "allowedNetwork", "keyCreateImportAccess", "metrics"}) {
		t.Fatalf("GetInstancePolicies types = %v", types)
	}
	// The instance rotation policy applies to keys created after it.
	root := must(c.CreateRootKey(ctx, "after-policy", nil))(t)
	if p := must(c.GetRotationPolicy(ctx, root.ID))(t); p == nil || p.Rotation == nil || p.Rotation.Interval != 3 {
		t.Fatalf("key rotation policy = %+v", p)
	}
	_, err = c.CreateStandardKey(ctx, "forbidden", nil)
	wantKPError(t, err, http.StatusConflict, "KEY_CREATE_IMPORT_ACCESS_ERR")
}
