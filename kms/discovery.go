package kms

import "errors"

// ErrUntrusted means a KEK URI read from a file's header may not be opened:
// the user's trust configuration does not list it. A header's URIs are
// hints, never authority: a file must not choose the host that receives the
// user's credentials, the key file that decides what decrypts, or the
// module that is loaded.
var ErrUntrusted = errors.New("KEK not trusted")

// DiscoveryFilter decides which KEK URIs read from files' headers may be
// opened, after the AWS Encryption SDK's discovery filter. It is consulted
// only for URIs that come from files; URIs the user gave are opened as
// given.
type DiscoveryFilter interface {
	// Discover returns the URI to open for uri, read from a file: uri itself,
	// or the fuller URI the user configured for it (a PKCS#11 URI with its
	// module path, say). It fails with an error matching [ErrUntrusted] when
	// uri may not be opened, or [ErrInvalidURI] when it is malformed. The
	// error never repeats uri.
	Discover(uri string) (string, error)
}

// DiscoveryFunc adapts a function to [DiscoveryFilter].
type DiscoveryFunc func(uri string) (string, error)

// Discover implements [DiscoveryFilter].
func (f DiscoveryFunc) Discover(uri string) (string, error) { return f(uri) }
