package kplocal

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"hash"
	"net/http"
)

// importFields are the secure-import fields of a create or rotate body.
type importFields struct {
	Payload, EncryptedNonce, IV, EncryptionAlgorithm string
}

func (f importFields) secure() bool {
	return f.EncryptedNonce != "" || f.IV != "" || f.EncryptionAlgorithm != ""
}

// openSecureImport returns the key material of a secure import: payload is
// the material RSA-OAEP-encrypted (SHA-256; SHA-1 too on an HPCS server,
// empty label) under the instance's import key, and encryptedNonce the
// import token's nonce encrypted under the material with iv: AES-GCM with
// a 12-byte iv, or AES-CBC with PKCS#7 padding and a 16-byte iv (the
// official client's EncryptNonceWithCBCPAD). The caller holds s.mu.
//
// Errors: no payload or no token, or an undecryptable payload → 400
// INVALID_FIELD_ERR; an expired token → 409 IMPORT_TOKEN_EXPIRED_ERR; an
// iv that is not 12 or 16 base64-encoded bytes, or that does not decrypt
// the nonce (GCM authentication or CBC padding fails) → 400
// INCORRECT_NONCE_IV_ERR; a nonce that decrypts to anything but the
// token's → 400 INCORRECT_NONCE_ERR.
func (s *Server) openSecureImport(c *call, what string, f importFields) ([]byte, error) {
	var h hash.Hash
	switch f.EncryptionAlgorithm {
	case "", algOAEPSHA256:
		h = sha256.New()
	case algOAEPSHA1:
		if s.cfg.Service != ServiceHPCS {
			return nil, errInvalidField(what, "encryptionAlgorithm", algOAEPSHA256+" (RSAES_OAEP_SHA_1 is for Hyper Protect Crypto Services)")
		}
		h = sha1.New()
	default:
		return nil, errInvalidField(what, "encryptionAlgorithm", algOAEPSHA256+" or "+algOAEPSHA1)
	}
	switch {
	case f.Payload == "":
		return nil, errInvalidField(what, "payload", "the key material encrypted with the import token's public key")
	case f.EncryptedNonce == "":
		return nil, errInvalidField(what, "encryptedNonce", "the import token's nonce encrypted with the key material")
	case f.IV == "":
		return nil, errInvalidField(what, "iv", "the base64 encoded initialization vector used to encrypt the nonce")
	}
	t := c.inst.importToken
	switch {
	case t == nil:
		return nil, errInvalidField(what, "encryptedNonce", "the nonce of the instance's import token (the instance has none)")
	case !c.now.Before(t.expires):
		return nil, errImportTokenExpired(what, "The import token has expired: Please create a new import token")
	}
	ct, err := base64.StdEncoding.DecodeString(f.Payload)
	if err != nil {
		return nil, errInvalidField(what, "payload", "a base64 encoded, RSA-OAEP encrypted key material")
	}
	material, err := rsa.DecryptOAEP(h, nil, c.inst.transport, ct, nil)
	if err != nil {
		return nil, errInvalidField(what, "payload", "the key material encrypted with the import token's public key")
	}
	if !validRootSize(len(material)) {
		return nil, errInvalidField(what, "payload", "an encrypted 128, 192 or 256 bit key material")
	}
	iv, err := base64.StdEncoding.DecodeString(f.IV)
	if err != nil || len(iv) != 12 && len(iv) != aes.BlockSize {
		return nil, errNonceIV(what)
	}
	encNonce, err := base64.StdEncoding.DecodeString(f.EncryptedNonce)
	if err != nil {
		return nil, errNonce(what)
	}
	nonce, err := decryptNonce(what, material, iv, encNonce)
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(nonce, t.nonce) != 1 {
		return nil, errNonce(what)
	}
	return material, nil
}

// decryptNonce decrypts an encrypted nonce: AES-GCM for a 12-byte iv,
// AES-CBC with PKCS#7 padding for a 16-byte one.
func decryptNonce(what string, material, iv, encNonce []byte) ([]byte, error) {
	block, err := aes.NewCipher(material)
	if err != nil {
		return nil, errNonce(what)
	}
	if len(iv) == 12 {
		gcm, err := cipher.NewGCM(block)
		if err != nil {
			return nil, errNonce(what)
		}
		nonce, err := gcm.Open(nil, iv, encNonce, nil)
		if err != nil {
			return nil, errNonceIV(what)
		}
		return nonce, nil
	}
	if len(encNonce) == 0 || len(encNonce)%aes.BlockSize != 0 {
		return nil, errNonce(what)
	}
	out := make([]byte, len(encNonce))
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(out, encNonce)
	pad := int(out[len(out)-1])
	if pad == 0 || pad > aes.BlockSize || !bytes.Equal(out[len(out)-pad:], bytes.Repeat([]byte{byte(pad)}, pad)) {
		return nil, errNonceIV(what)
	}
	return out[:len(out)-pad], nil
}

func errNonce(what string) *apiError {
	return newAPIError(http.StatusBadRequest, what, "INCORRECT_NONCE_ERR",
		"The encrypted nonce given does not match the import token's nonce: Please check the nonce and the key material", fieldTarget("encryptedNonce"))
}

func errNonceIV(what string) *apiError {
	return newAPIError(http.StatusBadRequest, what, "INCORRECT_NONCE_IV_ERR",
		"The nonce could not be decrypted with the given iv: Please check the iv", fieldTarget("iv"))
}
