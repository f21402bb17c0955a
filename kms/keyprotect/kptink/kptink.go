// Package kptink connects Tink to Key Protect: a registry.KMSClient and a
// tink.AEAD (also tink.AEADWithContext) for Key Protect root keys, so that
// Tink users reach Key Protect and HPCS through Tink's own KMS envelope AEAD
// (aead.NewKMSEnvelopeAEAD2, aead.NewKMSEnvelopeAEADWithContext).
//
// Key URIs are "ibmkp://" followed by a key CRN:
//
//	ibmkp://crn:v1:bluemix:public:kms:us-south:a/ACCOUNT:INSTANCE:key:KEYID
//
// Nothing registers itself: build a Client and pass its AEAD to Tink, or
// register it with registry.RegisterKMSClient if your program wants Tink's
// global registry.
package kptink

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/tink-crypto/tink-go/v2/core/registry"
	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/keyprotect"
)

// URIPrefix starts every Key Protect key URI of this package.
const URIPrefix = "ibmkp://"

// Client is a Tink KMS client for Key Protect keys.
type Client struct {
	opener    *keyprotect.Opener
	keyPrefix string
	timeout   time.Duration
}

var _ registry.KMSClient = (*Client)(nil)

// NewClient returns a client that opens keys through opener. keyURIPrefix
// restricts the keys it supports: URIPrefix alone supports every key, a
// longer prefix (a whole key URI, say) only those it starts.
func NewClient(opener *keyprotect.Opener, keyURIPrefix string) (*Client, error) {
	if !strings.HasPrefix(keyURIPrefix, URIPrefix) {
		return nil, fmt.Errorf("kptink: key URI prefix %q does not start with %s", keyURIPrefix, URIPrefix)
	}
	return &Client{opener: opener, keyPrefix: keyURIPrefix, timeout: time.Minute}, nil
}

// Supported reports whether keyURI is a Key Protect key URI this client
// serves.
func (c *Client) Supported(keyURI string) bool {
	if !strings.HasPrefix(keyURI, c.keyPrefix) {
		return false
	}
	_, err := keyprotect.ParseCRN(strings.TrimPrefix(keyURI, URIPrefix))
	return err == nil
}

// GetAEAD returns an AEAD backed by the Key Protect root key of keyURI. The
// AEAD also implements tink.AEADWithContext.
func (c *Client) GetAEAD(keyURI string) (tink.AEAD, error) {
	if !c.Supported(keyURI) {
		return nil, fmt.Errorf("kptink: unsupported key URI %q", keyURI)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	kek, err := c.opener.Open(ctx, strings.TrimPrefix(keyURI, URIPrefix))
	if err != nil {
		return nil, err
	}
	return &AEAD{kek: kek, timeout: c.timeout}, nil
}

// AEAD encrypts with a Key Protect root key: Encrypt is Key Protect's wrap
// with the associated data bound, Decrypt its unwrap. Plaintexts are keys,
// at most about 3 KiB. Without a context, each call is bounded by a timeout.
type AEAD struct {
	kek     kms.KEK
	timeout time.Duration
}

var (
	_ tink.AEAD            = (*AEAD)(nil)
	_ tink.AEADWithContext = (*AEAD)(nil)
)

// Encrypt wraps plaintext, bound to associatedData.
func (a *AEAD) Encrypt(plaintext, associatedData []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	return a.EncryptWithContext(ctx, plaintext, associatedData)
}

// Decrypt unwraps ciphertext, checking associatedData.
func (a *AEAD) Decrypt(ciphertext, associatedData []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	return a.DecryptWithContext(ctx, ciphertext, associatedData)
}

// EncryptWithContext wraps plaintext, bound to associatedData.
func (a *AEAD) EncryptWithContext(ctx context.Context, plaintext, associatedData []byte) ([]byte, error) {
	w, err := a.kek.Wrap(ctx, plaintext, associatedData)
	if err != nil {
		return nil, err
	}
	return w.Ciphertext, nil
}

// DecryptWithContext unwraps ciphertext, checking associatedData.
func (a *AEAD) DecryptWithContext(ctx context.Context, ciphertext, associatedData []byte) ([]byte, error) {
	res, err := a.kek.Unwrap(ctx, ciphertext, associatedData)
	if err != nil {
		return nil, err
	}
	return res.DEK, nil
}
