package kplocal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"hash"
	"net/http"
	"testing"
	"time"
)

// importHarness starts kplocal with a 2048-bit import key (faster to make
// than Key Protect's 4096 bits).
func importHarness(t *testing.T, cfg Config) *harness {
	cfg.ImportKeyBits = 2048
	return newHarness(t, cfg)
}

type tokenView struct {
	CreationDate         string `json:"creationDate"`
	ExpirationDate       string `json:"expirationDate"`
	MaxAllowedRetrievals int    `json:"maxAllowedRetrievals"`
	RemainingRetrievals  int    `json:"remainingRetrievals"`
	Payload              string `json:"payload"`
	Nonce                string `json:"nonce"`
	ID                   string `json:"id"`
	ImportToken          string `json:"importToken"`
}

// secureImport prepares the fields of a secure import of material under
// the token: RSA-OAEP (h) payload and AES-GCM encrypted nonce.
func secureImport(t *testing.T, tok tokenView, material, nonce []byte, h hash.Hash) (payload, encNonce, iv string) {
	t.Helper()
	pemKey, err := base64.StdEncoding.DecodeString(tok.Payload)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pemKey)
	if block == nil || block.Type != "PUBLIC KEY" {
		t.Fatalf("import token payload is not a PEM public key: %q", pemKey)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := rsa.EncryptOAEP(h, rand.Reader, pub.(*rsa.PublicKey), material, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := aes.NewCipher(material)
	gcm, _ := cipher.NewGCM(c)
	ivb := make([]byte, 12)
	_, _ = rand.Read(ivb)
	return base64.StdEncoding.EncodeToString(ct), base64.StdEncoding.EncodeToString(gcm.Seal(nil, ivb, nonce, nil)),
		base64.StdEncoding.EncodeToString(ivb)
}

func (h *harness) importToken(body any) tokenView {
	h.t.Helper()
	var created tokenView
	h.request(http.MethodPost, "/import_token", body).wantStatus(h.t, http.StatusCreated).decode(h.t, &created)
	var got tokenView
	h.request(http.MethodGet, "/import_token", nil).wantStatus(h.t, http.StatusOK).decode(h.t, &got)
	return got
}

func TestImportTokenLifecycle(t *testing.T) {
	h := importHarness(t, Config{})
	h.request(http.MethodGet, "/import_token", nil).wantError(t, http.StatusNotFound, "")
	var created tokenView
	h.request(http.MethodPost, "/import_token", map[string]int{"expiration": 300, "maxAllowedRetrievals": 2}).
		wantStatus(t, http.StatusCreated).decode(t, &created)
	now := h.clock.Now()
	if created.CreationDate != now.Format(time.RFC3339) || created.ExpirationDate != now.Add(300*time.Second).Format(time.RFC3339) ||
		created.MaxAllowedRetrievals != 2 || created.RemainingRetrievals != 2 || created.Payload != "" || created.Nonce != "" {
		t.Fatalf("created token = %+v", created)
	}
	for want := 1; want >= 0; want-- {
		var got tokenView
		h.request(http.MethodGet, "/import_token", nil).wantStatus(t, http.StatusOK).decode(t, &got)
		nonce, err := base64.StdEncoding.DecodeString(got.Nonce)
		if got.RemainingRetrievals != want || got.Payload == "" || err != nil || len(nonce) != 12 {
			t.Fatalf("retrieved token = %+v", got)
		}
	}
	// Exhausted.
	h.request(http.MethodGet, "/import_token", nil).wantError(t, http.StatusConflict, "IMPORT_TOKEN_EXPIRED_ERR")

	// Expired, by the server's clock.
	h.request(http.MethodPost, "/import_token", map[string]int{"expiration": 300, "maxAllowedRetrievals": 5}).wantStatus(t, http.StatusCreated)
	h.clock.Advance(299 * time.Second)
	h.request(http.MethodGet, "/import_token", nil).wantStatus(t, http.StatusOK)
	h.clock.Advance(time.Second)
	h.request(http.MethodGet, "/import_token", nil).wantError(t, http.StatusConflict, "IMPORT_TOKEN_EXPIRED_ERR")

	// Defaults and limits.
	var def tokenView
	h.request(http.MethodPost, "/import_token", nil).wantStatus(t, http.StatusCreated).decode(t, &def)
	if def.MaxAllowedRetrievals != 1 || def.ExpirationDate != h.clock.Now().Add(600*time.Second).Format(time.RFC3339) {
		t.Fatalf("default token = %+v", def)
	}
	h.request(http.MethodPost, "/import_token", map[string]int{"expiration": 299}).
		wantError(t, http.StatusBadRequest, "INVALID_FIELD_ERR").wantTarget(t, "field", "expiration")
	h.request(http.MethodPost, "/import_token", map[string]int{"maxAllowedRetrievals": 501}).
		wantError(t, http.StatusBadRequest, "INVALID_FIELD_ERR").wantTarget(t, "field", "maxAllowedRetrievals")
	if st := h.srv.Stats(); st.CreateImportToken != 5 || st.GetImportToken != 6 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestSecureImport(t *testing.T) {
	h := importHarness(t, Config{})
	tok := h.importToken(map[string]int{"maxAllowedRetrievals": 3})
	nonce, _ := base64.StdEncoding.DecodeString(tok.Nonce)
	material := []byte("0123456789abcdef0123456789abcdef")
	create := func(payload, encNonce, iv, alg string) *result {
		res := map[string]any{"name": "imported", "extractable": false, "payload": payload, "encryptedNonce": encNonce, "iv": iv}
		if alg != "" {
			res["encryptionAlgorithm"] = alg
		}
		return h.request(http.MethodPost, "/keys", keyBody(res))
	}

	p, n, iv := secureImport(t, tok, material, nonce, sha256.New())
	k := create(p, n, iv, "RSAES_OAEP_SHA_256").wantStatus(t, http.StatusCreated).key(t)
	if !k.Imported || k.AlgorithmBitSize != 256 {
		t.Fatalf("imported key = %+v", k)
	}
	// The key holds the material: a ciphertext sealed under it opens.
	ct := h.actionOK(k.ID, "wrap", map[string]any{"plaintext": b64("dek")}).Ciphertext
	if pt := h.actionOK(k.ID, "unwrap", map[string]any{"ciphertext": ct}).Plaintext; pt != b64("dek") {
		t.Fatalf("unwrap = %q", pt)
	}

	// A wrong nonce (well encrypted) → INCORRECT_NONCE_ERR.
	p, n, iv = secureImport(t, tok, material, []byte("wrong-nonce!"), sha256.New())
	create(p, n, iv, "").wantError(t, http.StatusBadRequest, "INCORRECT_NONCE_ERR")
	// The right nonce with another iv → INCORRECT_NONCE_IV_ERR.
	p, n, _ = secureImport(t, tok, material, nonce, sha256.New())
	create(p, n, base64.StdEncoding.EncodeToString(make([]byte, 12)), "").wantError(t, http.StatusBadRequest, "INCORRECT_NONCE_IV_ERR")
	create(p, n, b64("short"), "").wantError(t, http.StatusBadRequest, "INCORRECT_NONCE_IV_ERR")
	// A tampered payload does not decrypt.
	p, n, iv = secureImport(t, tok, material, nonce, sha256.New())
	raw, _ := base64.StdEncoding.DecodeString(p)
	raw[len(raw)/2] ^= 1
	create(base64.StdEncoding.EncodeToString(raw), n, iv, "").
		wantError(t, http.StatusBadRequest, "INVALID_FIELD_ERR").wantTarget(t, "field", "payload")
	// SHA-1 is for HPCS only; on Key Protect the SHA-1 payload is refused.
	p, n, iv = secureImport(t, tok, material, nonce, sha1.New())
	create(p, n, iv, "RSAES_OAEP_SHA_1").wantError(t, http.StatusBadRequest, "INVALID_FIELD_ERR").wantTarget(t, "field", "encryptionAlgorithm")
	// The nonce fields without the iv.
	create(p, n, "", "").wantError(t, http.StatusBadRequest, "INVALID_FIELD_ERR").wantTarget(t, "field", "iv")

	// Rotate with new material, securely.
	newMaterial := []byte("fedcba9876543210fedcba9876543210")
	p, n, iv = secureImport(t, tok, newMaterial, nonce, sha256.New())
	h.action(k.ID, "rotate", map[string]any{"payload": p, "encryptedNonce": n, "iv": iv, "encryptionAlgorithm": "RSAES_OAEP_SHA_256"}).
		wantStatus(t, http.StatusNoContent)
	if pt := h.actionOK(k.ID, "unwrap", map[string]any{"ciphertext": ct}).Plaintext; pt != b64("dek") {
		t.Fatalf("old ciphertext after secure rotation = %q", pt)
	}
	p, n, iv = secureImport(t, tok, newMaterial, []byte("another-one!"), sha256.New())
	h.action(k.ID, "rotate", map[string]any{"payload": p, "encryptedNonce": n, "iv": iv}).
		wantError(t, http.StatusBadRequest, "INCORRECT_NONCE_ERR")

	// Once the token expires, imports with it fail.
	h.clock.Advance(600 * time.Second)
	p, n, iv = secureImport(t, tok, material, nonce, sha256.New())
	create(p, n, iv, "").wantError(t, http.StatusConflict, "IMPORT_TOKEN_EXPIRED_ERR")
}

func TestSecureImportHPCS(t *testing.T) {
	h := importHarness(t, Config{Service: ServiceHPCS})
	tok := h.importToken(nil)
	nonce, _ := base64.StdEncoding.DecodeString(tok.Nonce)
	material := []byte("0123456789abcdef")
	p, n, iv := secureImport(t, tok, material, nonce, sha1.New())
	k := h.create("hpcs-imported", true, "payload", p, "encryptedNonce", n, "iv", iv, "encryptionAlgorithm", "RSAES_OAEP_SHA_1")
	if !k.Imported || k.AlgorithmBitSize != 128 || k.CRN != "crn:v1:bluemix:public:hs-crypto:us-south:a/"+DefaultAccount+":"+testInstance+":key:"+k.ID {
		t.Fatalf("HPCS imported key = %+v", k)
	}
	// The CBC-PAD nonce encryption (16-byte iv) is accepted too.
	c, _ := aes.NewCipher(material)
	padded := append(append([]byte{}, nonce...), 4, 4, 4, 4)
	ivb := make([]byte, 16)
	out := make([]byte, 16)
	cipher.NewCBCEncrypter(c, ivb).CryptBlocks(out, padded)
	p, _, _ = secureImport(t, tok, material, nonce, sha256.New())
	h.create("hpcs-cbc", true, "payload", p, "encryptedNonce", base64.StdEncoding.EncodeToString(out),
		"iv", base64.StdEncoding.EncodeToString(ivb), "encryptionAlgorithm", "RSAES_OAEP_SHA_256")
}

func TestLockers(t *testing.T) {
	h := importHarness(t, Config{})
	h.request(http.MethodGet, "/lockers", nil).wantError(t, http.StatusNotFound, "")
	var md tokenView
	h.request(http.MethodPost, "/lockers", map[string]int{"maxAllowedRetrievals": 1}).wantStatus(t, http.StatusCreated).decode(t, &md)
	if !isUUID(md.ID) || md.RemainingRetrievals != 1 || md.Payload != "" {
		t.Fatalf("locker metadata = %+v", md)
	}
	var listed tokenView
	h.request(http.MethodGet, "/lockers", nil).wantStatus(t, http.StatusOK).decode(t, &listed)
	if listed.ID != md.ID {
		t.Fatalf("GET /lockers = %+v", listed)
	}
	h.request(http.MethodGet, "/lockers/00000000-0000-4000-8000-000000000000", nil).wantError(t, http.StatusNotFound, "")
	var got tokenView
	h.request(http.MethodGet, "/lockers/"+md.ID, nil).wantStatus(t, http.StatusOK).decode(t, &got)
	der, err := base64.StdEncoding.DecodeString(got.Payload)
	if err != nil || got.ImportToken == "" {
		t.Fatalf("locker = %+v", got)
	}
	if _, err := x509.ParsePKIXPublicKey(der); err != nil {
		t.Fatalf("locker payload is not a DER PKIX public key: %v", err)
	}
	h.request(http.MethodGet, "/lockers/"+md.ID, nil).wantError(t, http.StatusConflict, "IMPORT_TOKEN_EXPIRED_ERR")
	h.request(http.MethodPost, "/lockers", nil).wantStatus(t, http.StatusCreated)
	h.clock.Advance(10 * time.Minute)
	h.request(http.MethodGet, "/lockers/"+md.ID, nil).wantError(t, http.StatusNotFound, "") // replaced
}
