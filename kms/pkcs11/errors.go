package pkcs11

import (
	"errors"
	"fmt"

	p11 "github.com/miekg/pkcs11"
)

// Mechanism is a way of wrapping DEKs in the token. Its value is the byte
// that starts every wrapped DEK, so that Unwrap knows which one wrapped it.
type Mechanism byte

// The wrapping mechanisms, by their format byte.
const (
	// AESGCM is CKM_AES_GCM through C_Encrypt and C_Decrypt, with a
	// 12-byte random IV and a 16-byte tag; the associated data is GCM's AAD.
	AESGCM Mechanism = 1
	// AESKeyWrapKWP is CKM_AES_KEY_WRAP_KWP (PKCS#11 3.0; RFC 5649)
	// through C_WrapKey and C_UnwrapKey.
	AESKeyWrapKWP Mechanism = 2
	// AESKeyWrapPad is CKM_AES_KEY_WRAP_PAD through C_WrapKey and
	// C_UnwrapKey: RFC 5649 in SoftHSM2, RFC 3394 with PKCS #7 padding in
	// some other tokens; either way it is the same on wrap and unwrap.
	AESKeyWrapPad Mechanism = 3
)

// ckmAESKeyWrapKWP is CKM_AES_KEY_WRAP_KWP, which miekg/pkcs11 lacks.
const ckmAESKeyWrapKWP = 0x0000210B

// DefaultMechanisms is the order of preference when Config.Mechanisms is
// empty: AES-GCM, which authenticates the associated data itself, then the
// key wraps.
func DefaultMechanisms() []Mechanism { return []Mechanism{AESGCM, AESKeyWrapKWP, AESKeyWrapPad} }

// String returns the PKCS#11 name of the mechanism.
func (m Mechanism) String() string {
	switch m {
	case AESGCM:
		return "CKM_AES_GCM"
	case AESKeyWrapKWP:
		return "CKM_AES_KEY_WRAP_KWP"
	case AESKeyWrapPad:
		return "CKM_AES_KEY_WRAP_PAD"
	}
	return fmt.Sprintf("mechanism#%d", byte(m))
}

// ckm returns the PKCS#11 mechanism type.
func (m Mechanism) ckm() uint {
	switch m {
	case AESGCM:
		return p11.CKM_AES_GCM
	case AESKeyWrapKWP:
		return ckmAESKeyWrapKWP
	case AESKeyWrapPad:
		return p11.CKM_AES_KEY_WRAP_PAD
	}
	return 0
}

// flags are the CKF_ flags the token must report for the mechanism.
func (m Mechanism) flags() uint {
	if m == AESGCM {
		return p11.CKF_ENCRYPT | p11.CKF_DECRYPT
	}
	return p11.CKF_WRAP | p11.CKF_UNWRAP
}

func (m Mechanism) valid() bool { return m.ckm() != 0 }

// ErrMechanismUnsupported means the token does not offer a mechanism
// kpcrypt needs: the message names it.
var ErrMechanismUnsupported = errors.New("mechanism not supported by the token")

// ErrClosed means the KEK, or the Provider it came from, was closed.
var ErrClosed = errors.New("PKCS#11 KEK closed")

// ErrKeyExists means Generate found a key with the label already.
var ErrKeyExists = errors.New("a key with this label exists")
