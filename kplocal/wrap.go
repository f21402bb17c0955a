package kplocal

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
)

// Wrapped-key format.
//
// A ciphertext returned by wrap is the standard base64 encoding of a small
// JSON document, shaped like Key Protect's own:
//
//	{"ciphertext":"<base64 GCM output>","iv":"<base64 12-byte nonce>","version":"kplocal-1","handle":"<key version ID>"}
//
// The GCM output is AES-GCM under the material of the key version named by
// handle (AES-256 for generated keys; imported root keys may be 128 or 192
// bits), with a random nonce. The GCM additional data binds the key ID, the
// version ID and the caller's AAD list, so a ciphertext opens only under the
// same key and version and with exactly the same AAD (same strings, same
// order).
const (
	wrapFormat       = "kplocal-1"
	wrapADLabel      = "kplocal wrap v1\x00"
	maxCiphertextLen = 16 << 10 // base64 characters accepted in a ciphertext field
)

// wrappedBlob is the JSON document inside a ciphertext.
type wrappedBlob struct {
	Ciphertext string `json:"ciphertext"`
	IV         string `json:"iv"`
	Version    string `json:"version"`
	Handle     string `json:"handle"`
}

// errMalformed means a ciphertext is not a kplocal wrapped key.
var errMalformed = errors.New("kplocal: malformed ciphertext")

// wrapAD returns the GCM additional data for a wrap under key keyID,
// version versionID, with the caller's AAD.
func wrapAD(keyID, versionID string, aad []string) []byte {
	b := []byte(wrapADLabel)
	b = appendLP(b, keyID)
	b = appendLP(b, versionID)
	b = binary.BigEndian.AppendUint32(b, uint32(len(aad)))
	for _, a := range aad {
		b = appendLP(b, a)
	}
	return b
}

func appendLP(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

func newGCM(material []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(material)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// seal wraps dek under version v of key keyID, bound to aad, and returns the
// ciphertext text.
func seal(keyID string, v version, dek []byte, aad []string) (string, error) {
	aead, err := newGCM(v.Material)
	if err != nil {
		return "", err
	}
	nonce := randomBytes(aead.NonceSize())
	out := aead.Seal(nil, nonce, dek, wrapAD(keyID, v.ID, aad))
	doc, err := json.Marshal(wrappedBlob{
		Ciphertext: base64.StdEncoding.EncodeToString(out),
		IV:         base64.StdEncoding.EncodeToString(nonce),
		Version:    wrapFormat,
		Handle:     v.ID,
	})
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(doc), nil
}

// parsedCiphertext is a decoded, not yet authenticated, ciphertext.
type parsedCiphertext struct {
	versionID string
	nonce     []byte
	sealed    []byte
}

// parseCiphertext decodes a ciphertext's envelope. It returns errMalformed
// for anything that is not a kplocal wrapped key.
func parseCiphertext(text string) (parsedCiphertext, error) {
	if len(text) > maxCiphertextLen {
		return parsedCiphertext{}, errMalformed
	}
	doc, err := base64.StdEncoding.DecodeString(text)
	if err != nil {
		return parsedCiphertext{}, errMalformed
	}
	var blob wrappedBlob
	if err := json.Unmarshal(doc, &blob); err != nil || blob.Version != wrapFormat || blob.Handle == "" {
		return parsedCiphertext{}, errMalformed
	}
	nonce, err := base64.StdEncoding.DecodeString(blob.IV)
	if err != nil || len(nonce) != 12 {
		return parsedCiphertext{}, errMalformed
	}
	sealed, err := base64.StdEncoding.DecodeString(blob.Ciphertext)
	if err != nil || len(sealed) < 16 {
		return parsedCiphertext{}, errMalformed
	}
	return parsedCiphertext{versionID: blob.Handle, nonce: nonce, sealed: sealed}, nil
}

// open authenticates and decrypts c under version v of key keyID with aad.
func (c parsedCiphertext) open(keyID string, v version, aad []string) ([]byte, error) {
	aead, err := newGCM(v.Material)
	if err != nil {
		return nil, err
	}
	return aead.Open(nil, c.nonce, c.sealed, wrapAD(keyID, v.ID, aad))
}
