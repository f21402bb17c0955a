package keyprotect

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"time"
)

// Secure import (BYOK): key material the user generated is sent to Key
// Protect encrypted under the instance's import key (RSA-OAEP), never in
// the clear, together with the import token's nonce encrypted under the
// material itself (AES-GCM), which proves the material is the one the
// token was fetched for.

// ImportToken is an instance's import token: an RSA public key and a nonce
// to encrypt key material for import, valid until ExpirationDate and for a
// bounded number of retrievals.
type ImportToken struct {
	CreationDate         *time.Time `json:"creationDate,omitempty"`
	ExpirationDate       *time.Time `json:"expirationDate,omitempty"`
	MaxAllowedRetrievals int        `json:"maxAllowedRetrievals,omitempty"`
	RemainingRetrievals  int        `json:"remainingRetrievals,omitempty"`
	// Payload is the base64 of a PEM-encoded PKIX RSA public key; Nonce the
	// base64 of the nonce. Only a retrieval (ImportToken) returns them.
	Payload string `json:"payload,omitempty"`
	Nonce   string `json:"nonce,omitempty"`
}

// CreateImportToken creates the instance's import token, valid for
// expiration (5 minutes to 24 hours) and maxRetrievals retrievals (1 to
// 500). It replaces any earlier token.
func (c *Client) CreateImportToken(ctx context.Context, expiration time.Duration, maxRetrievals int) (*ImportToken, error) {
	body := struct {
		Expiration           int `json:"expiration"`
		MaxAllowedRetrievals int `json:"maxAllowedRetrievals"`
	}{int(expiration / time.Second), maxRetrievals}
	var out ImportToken
	if _, err := c.do(ctx, call{once: true, op: "create import token", method: http.MethodPost, path: "import_token", body: body}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ImportToken retrieves the import token's public key and nonce. Each
// retrieval uses one of the token's allowed retrievals.
func (c *Client) ImportToken(ctx context.Context) (*ImportToken, error) {
	var out ImportToken
	if _, err := c.do(ctx, call{op: "get import token", method: http.MethodGet, path: "import_token"}, &out); err != nil {
		return nil, err
	}
	if out.Payload == "" || out.Nonce == "" {
		return nil, fmt.Errorf("keyprotect get import token: the answer lacks the public key or the nonce")
	}
	return &out, nil
}

// importFields are what a create or rotate carries for a secure import.
type importFields struct {
	Payload             string `json:"payload"`
	EncryptedNonce      string `json:"encryptedNonce"`
	IV                  string `json:"iv"`
	EncryptionAlgorithm string `json:"encryptionAlgorithm"`
}

// oaepHash is the OAEP hash the service expects: SHA-256, or SHA-1 for
// HPCS.
func (c *Client) oaepHash() (hash.Hash, string) {
	if c.service == HPCS {
		return sha1.New(), "RSAES_OAEP_SHA_1"
	}
	return sha256.New(), "RSAES_OAEP_SHA_256"
}

// sealForImport prepares material for import under tok: the material under
// RSA-OAEP with the token's public key, and the token's nonce under
// AES-GCM keyed with the material.
func (c *Client) sealForImport(tok *ImportToken, material []byte) (*importFields, error) {
	switch len(material) {
	case 16, 24, 32:
	default:
		return nil, fmt.Errorf("keyprotect import: key material is %d bytes; a root key is 16, 24 or 32", len(material))
	}
	pemBytes, err := base64.StdEncoding.DecodeString(tok.Payload)
	if err != nil {
		return nil, errors.New("keyprotect import: the import token's public key is not base64")
	}
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("keyprotect import: the import token's public key is not PEM")
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("keyprotect import: the import token's public key: %v", err)
	}
	rsaPub, ok := pub.(*rsa.PublicKey)
	if !ok || rsaPub.N.BitLen() < 2048 {
		return nil, errors.New("keyprotect import: the import token's key is not an RSA key of 2048 bits or more")
	}
	nonce, err := base64.StdEncoding.DecodeString(tok.Nonce)
	if err != nil || len(nonce) == 0 {
		return nil, errors.New("keyprotect import: the import token's nonce is not base64")
	}
	h, alg := c.oaepHash()
	ct, err := rsa.EncryptOAEP(h, rand.Reader, rsaPub, material, nil)
	if err != nil {
		return nil, fmt.Errorf("keyprotect import: %v", err)
	}
	block2, err := aes.NewCipher(material)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(block2)
	if err != nil {
		return nil, err
	}
	iv := make([]byte, gcm.NonceSize())
	rand.Read(iv)
	return &importFields{
		Payload:             base64.StdEncoding.EncodeToString(ct),
		EncryptedNonce:      base64.StdEncoding.EncodeToString(gcm.Seal(nil, iv, nonce, nil)),
		IV:                  base64.StdEncoding.EncodeToString(iv),
		EncryptionAlgorithm: alg,
	}, nil
}

// importedKey is a key resource with the fields of a secure import.
type importedKey struct {
	Type        string   `json:"type"`
	Name        string   `json:"name"`
	Description string   `json:"description,omitempty"`
	Aliases     []string `json:"aliases,omitempty"`
	Extractable bool     `json:"extractable"`
	importFields
}

// ImportRootKey imports material (16, 24 or 32 bytes the caller generated)
// as a root key named by r, securely: it retrieves the import token (which
// must have been created with [Client.CreateImportToken]) and sends the
// material encrypted under its public key, never in the clear. r.Payload
// and r.Root are ignored.
func (c *Client) ImportRootKey(ctx context.Context, r CreateKeyRequest, material []byte) (*Key, error) {
	tok, err := c.ImportToken(ctx)
	if err != nil {
		return nil, err
	}
	f, err := c.sealForImport(tok, material)
	if err != nil {
		return nil, err
	}
	k := importedKey{Type: keyType, Name: r.Name, Description: r.Description, Aliases: r.Aliases, importFields: *f}
	var out collection[Key]
	_, err = c.do(ctx, call{once: true, op: "import key", method: http.MethodPost, path: "keys", body: newCollection(collectionKeys, k)}, &out)
	if errors.Is(err, ErrOutcomeUnknown) && len(r.Aliases) > 0 {
		if got, gerr := c.GetKey(ctx, r.Aliases[0]); gerr == nil && got.Name == r.Name {
			return got, nil
		}
	}
	if err != nil {
		return nil, err
	}
	return first(out, "import key")
}

// RotateImported rotates an imported root key to new material, sent as
// ImportRootKey sends it. Like [Client.Rotate] it never rotates twice on a
// lost answer.
func (c *Client) RotateImported(ctx context.Context, id string, material []byte) error {
	tok, err := c.ImportToken(ctx)
	if err != nil {
		return err
	}
	f, err := c.sealForImport(tok, material)
	if err != nil {
		return err
	}
	return c.rotate(ctx, id, f)
}
