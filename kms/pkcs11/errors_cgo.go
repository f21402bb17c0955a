//go:build cgo

package pkcs11

import (
	"errors"
	"fmt"

	p11 "github.com/miekg/pkcs11"

	"github.com/kpcrypt/kpcrypt/kms"
)

// rv returns the PKCS#11 return value inside err, or 0.
func rv(err error) uint {
	var e p11.Error
	if errors.As(err, &e) {
		return uint(e)
	}
	return 0
}

// classify wraps a token's error into the kms class it belongs to, keeping
// the PKCS#11 return value (errors.As finds the pkcs11.Error). what says
// what failed. A PKCS#11 error never carries a PIN or key material.
func classify(what string, err error) error {
	var class error
	switch rv(err) {
	case 0:
		return fmt.Errorf("%s: %w", what, err)
	case p11.CKR_PIN_INCORRECT:
		return fmt.Errorf("%w: %s: wrong PIN: %w", kms.ErrPermissionDenied, what, err)
	case p11.CKR_PIN_INVALID, p11.CKR_PIN_LEN_RANGE, p11.CKR_PIN_EXPIRED, p11.CKR_PIN_LOCKED,
		p11.CKR_USER_PIN_NOT_INITIALIZED, p11.CKR_USER_NOT_LOGGED_IN, p11.CKR_KEY_FUNCTION_NOT_PERMITTED,
		p11.CKR_USER_TYPE_INVALID, p11.CKR_USER_ANOTHER_ALREADY_LOGGED_IN:
		class = kms.ErrPermissionDenied
	case p11.CKR_TOKEN_NOT_PRESENT, p11.CKR_TOKEN_NOT_RECOGNIZED, p11.CKR_DEVICE_REMOVED, p11.CKR_DEVICE_ERROR,
		p11.CKR_DEVICE_MEMORY, p11.CKR_HOST_MEMORY, p11.CKR_SESSION_COUNT, p11.CKR_SESSION_HANDLE_INVALID,
		p11.CKR_SESSION_CLOSED, p11.CKR_CRYPTOKI_NOT_INITIALIZED, p11.CKR_FUNCTION_CANCELED:
		class = kms.ErrUnavailable
	case p11.CKR_MECHANISM_INVALID, p11.CKR_MECHANISM_PARAM_INVALID:
		class = ErrMechanismUnsupported
	case p11.CKR_KEY_HANDLE_INVALID, p11.CKR_OBJECT_HANDLE_INVALID:
		class = kms.ErrNotFound
	default:
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%w: %s: %w", class, what, err)
}

// authFailure reports whether err, from the step that decrypts or unwraps
// (after the operation was initialised with the key), means the wrapped
// DEK did not authenticate. SoftHSM2 reports a GCM tag mismatch and a key
// wrap integrity failure as CKR_GENERAL_ERROR or CKR_FUNCTION_FAILED, other
// tokens with the specific codes.
func authFailure(err error) bool {
	switch rv(err) {
	case p11.CKR_ENCRYPTED_DATA_INVALID, p11.CKR_ENCRYPTED_DATA_LEN_RANGE,
		p11.CKR_WRAPPED_KEY_INVALID, p11.CKR_WRAPPED_KEY_LEN_RANGE,
		p11.CKR_DATA_INVALID, p11.CKR_DATA_LEN_RANGE,
		p11.CKR_GENERAL_ERROR, p11.CKR_FUNCTION_FAILED,
		0x00000035: // CKR_AEAD_DECRYPT_FAILED (PKCS#11 3.1)
		return true
	}
	return false
}

// sessionBroken reports whether a session that returned err must not be
// used again.
func sessionBroken(err error) bool {
	switch rv(err) {
	case 0:
		return false
	case p11.CKR_PIN_INCORRECT, p11.CKR_PIN_LEN_RANGE:
		return false
	}
	// When in doubt (an operation left active, a session the token
	// dropped) open a new one: it is cheap, and the login state belongs to
	// the token, not the session.
	return true
}
