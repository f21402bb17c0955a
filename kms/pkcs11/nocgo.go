//go:build !cgo

package pkcs11

import (
	"context"
	"errors"

	"github.com/kpcrypt/kpcrypt/kms"
)

// ErrNotSupported means this build has no PKCS#11 support: PKCS#11 modules
// are C libraries, and the program was built without cgo (CGO_ENABLED=0,
// or no C compiler). Build it with cgo to use PKCS#11 tokens; every other
// backend works without.
var ErrNotSupported = errors.New("this build of kpcrypt has no PKCS#11 support: it was built without cgo (CGO_ENABLED=0 or no C compiler); rebuild with CGO_ENABLED=1 and a C compiler to use PKCS#11 tokens")

// Provider opens PKCS#11 KEKs. In this build, without cgo, every call
// fails with [ErrNotSupported].
type Provider struct {
	Config Config
}

// Open fails with [ErrNotSupported].
func (p *Provider) Open(ctx context.Context, uri string) (kms.KEK, error) {
	return nil, p.fail(uri)
}

// OpenKEK fails with [ErrNotSupported].
func (p *Provider) OpenKEK(ctx context.Context, uri string) (*KEK, error) {
	return nil, p.fail(uri)
}

// Generate fails with [ErrNotSupported].
func (p *Provider) Generate(ctx context.Context, uri string) (*KEK, error) {
	return nil, p.fail(uri)
}

// Close does nothing.
func (p *Provider) Close() error { return nil }

func (p *Provider) fail(uri string) error {
	return &kms.Error{Op: "open", URI: Redact(uri), Err: ErrNotSupported}
}

// KEK is a PKCS#11 KEK. In this build, without cgo, none can be opened.
type KEK struct{ uri string }

// URI returns the KEK's URI.
func (k *KEK) URI() string { return k.uri }

// Mechanism fails with [ErrNotSupported].
func (k *KEK) Mechanism() (Mechanism, error) { return 0, ErrNotSupported }

// Close does nothing.
func (k *KEK) Close() error { return nil }

// Rotate fails with [ErrNotSupported].
func (k *KEK) Rotate(context.Context) (string, error) { return "", ErrNotSupported }

// Versions fails with [ErrNotSupported].
func (k *KEK) Versions(context.Context) ([]string, error) { return nil, ErrNotSupported }

// CurrentVersion fails with [ErrNotSupported].
func (k *KEK) CurrentVersion(context.Context) (string, error) { return "", ErrNotSupported }

// Wrap fails with [ErrNotSupported].
func (k *KEK) Wrap(context.Context, []byte, []byte) (kms.WrappedKey, error) {
	return kms.WrappedKey{}, ErrNotSupported
}

// Unwrap fails with [ErrNotSupported].
func (k *KEK) Unwrap(context.Context, []byte, []byte) (kms.UnwrapResult, error) {
	return kms.UnwrapResult{}, ErrNotSupported
}
