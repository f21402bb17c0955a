// Package kms defines the key-encryption key (KEK) interface that every
// kpcrypt backend implements, the errors they share, and an explicit
// [Resolver] that opens a KEK from its URI.
//
// A KEK wraps and unwraps data keys (DEKs) and never reveals its own key
// material: it lives in a KMS (IBM Key Protect, Hyper Protect Crypto
// Services), in an HSM, or for development in a local key file. Each backend
// is a package of its own under kms/, and the core never imports one: the
// caller builds a [Resolver] from the backends it wants.
//
// Backends may offer more than wrapping. Optional capabilities are
// interfaces that callers discover by type assertion: [Rewrapper] (rewrap a
// wrapped DEK under the KEK's current version without the DEK leaving the
// KMS), [Rotator] and [VersionReporter].
package kms

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// KEK is a key-encryption key.
//
// Implementations must be safe for concurrent use. Wrap and Unwrap must
// authenticate aad: Unwrap with other associated data than Wrap was given
// must fail with an error matching [ErrWrongKey]. Errors must not contain key
// material.
type KEK interface {
	// URI identifies the KEK, for example "local:/keys/kek.json" or a Key
	// Protect key CRN. It is recorded next to every DEK the KEK wraps.
	URI() string

	// Wrap encrypts dek, bound to aad, under the KEK's current version.
	Wrap(ctx context.Context, dek, aad []byte) (WrappedKey, error)

	// Unwrap decrypts a DEK that Wrap returned. When the DEK fails to
	// authenticate (another KEK, other aad, modified bytes) the error matches
	// [ErrWrongKey].
	Unwrap(ctx context.Context, wrapped, aad []byte) (UnwrapResult, error)
}

// WrappedKey is a DEK wrapped by a KEK.
type WrappedKey struct {
	// Ciphertext is the wrapped DEK, opaque to everything but its KEK.
	Ciphertext []byte
	// KeyVersion names the version of the KEK that wrapped the DEK, or is
	// empty for a backend without versions.
	KeyVersion string
}

// UnwrapResult is what [KEK.Unwrap] returns.
type UnwrapResult struct {
	// DEK is the data key. The caller should clear it after use.
	DEK []byte
	// KeyVersion names the KEK version that unwrapped the DEK, when the
	// backend reports it; empty otherwise.
	KeyVersion string
	// Rewrapped is set when the KMS wrapped the DEK again under a newer
	// version of the KEK while unwrapping it (Key Protect does this after a
	// rotation). Saving it moves the file to the newer version.
	Rewrapped *WrappedKey
}

// Rewrapper is a KEK that can wrap a DEK again under its current version
// without the DEK leaving the KMS.
type Rewrapper interface {
	KEK
	// Rewrap returns wrapped, wrapped again under the current version with
	// the same aad.
	Rewrap(ctx context.Context, wrapped, aad []byte) (WrappedKey, error)
}

// Rotator is a KEK that can create a new version of itself. Versions made
// before the rotation still unwrap.
type Rotator interface {
	KEK
	// Rotate makes a new version current and returns its name.
	Rotate(ctx context.Context) (string, error)
}

// VersionReporter is a KEK that can tell its current version.
type VersionReporter interface {
	KEK
	// CurrentVersion returns the version that Wrap uses now.
	CurrentVersion(ctx context.Context) (string, error)
}

// VersionLister is a KEK that can list its versions.
type VersionLister interface {
	KEK
	// Versions returns every version, oldest first.
	Versions(ctx context.Context) ([]string, error)
}

// Error classes shared by every backend. Backends wrap them, so callers test
// with [errors.Is] whatever the backend.
var (
	// ErrWrongKey means a wrapped DEK did not authenticate: it was wrapped by
	// another KEK, with other associated data, or it was modified.
	ErrWrongKey = errors.New("wrong key: the wrapped data key does not authenticate under this KEK")
	// ErrUnavailable means the KEK could not be reached or is failing; a
	// later attempt may succeed.
	ErrUnavailable = errors.New("KEK unavailable")
	// ErrKeyDisabled means the KEK exists but is disabled or suspended.
	ErrKeyDisabled = errors.New("KEK disabled")
	// ErrKeyDestroyed means the KEK was deleted or destroyed; what it wrapped
	// can no longer be unwrapped.
	ErrKeyDestroyed = errors.New("KEK destroyed")
	// ErrPermissionDenied means the caller may not use the KEK.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrNotFound means no KEK exists at the URI.
	ErrNotFound = errors.New("KEK not found")
	// ErrInvalidURI means a URI is malformed or names no known backend.
	ErrInvalidURI = errors.New("invalid KEK URI")
)

// Error records a failed KEK operation. Err matches one of this package's
// error classes or carries a backend's own error.
type Error struct {
	// Op is the operation: "wrap", "unwrap", "rewrap", "rotate" or "open".
	Op string
	// URI is the KEK's URI, or empty when the URI could not be parsed far
	// enough to be worth showing. It may hold a PIN (pin-value): Error
	// shows it through [RedactURI].
	URI string
	// Err is the cause.
	Err error
}

// Error describes the failure. The URI is shown through [RedactURI], so
// that a PIN in it never is; an empty URI is left out.
func (e *Error) Error() string {
	if e.URI == "" {
		return fmt.Sprintf("%s KEK: %v", e.Op, e.Err)
	}
	return fmt.Sprintf("%s with KEK %s: %v", e.Op, RedactURI(e.URI), e.Err)
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// OpenFunc opens the KEK named by uri.
type OpenFunc func(ctx context.Context, uri string) (KEK, error)

// Resolver opens KEKs from their URIs, by scheme: the part of the URI before
// the first colon ("local", "crn", "pkcs11"). It is an explicit value built by
// the caller from the backends it wants; nothing registers itself.
type Resolver map[string]OpenFunc

// Open opens the KEK named by uri with the backend registered for its
// scheme. An unknown scheme fails with an [*Error] matching [ErrInvalidURI]
// that names the scheme, if it is one, and the known schemes; it does not
// repeat the URI, whatever it holds.
func (r Resolver) Open(ctx context.Context, uri string) (KEK, error) {
	scheme, _, ok := strings.Cut(uri, ":")
	open := r[scheme]
	if !ok || open == nil {
		known := slices.Sorted(maps.Keys(r))
		what := "the URI does not start with a scheme"
		if ok && validScheme(scheme) {
			what = fmt.Sprintf("no backend for scheme %q", scheme)
		}
		if len(known) == 0 {
			known = []string{"none"}
		}
		return nil, &Error{Op: "open", Err: fmt.Errorf("%w: %s (known schemes: %s)", ErrInvalidURI, what, strings.Join(known, ", "))}
	}
	return open(ctx, uri)
}

// validScheme reports whether s is a URI scheme as RFC 3986 spells one (a
// letter, then letters, digits, '+', '-' or '.'), of 32 bytes at most.
func validScheme(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		letter := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
		if !letter && (i == 0 || !('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.')) {
			return false
		}
	}
	return true
}

// Scheme returns the scheme of a KEK URI: what comes before the first colon.
func Scheme(uri string) string {
	scheme, _, _ := strings.Cut(uri, ":")
	return scheme
}
