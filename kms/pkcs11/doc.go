// Package pkcs11 implements a KEK held in a PKCS#11 token (an HSM, a smart
// card, SoftHSM2), through github.com/miekg/pkcs11 (cgo). The KEK's keys
// never leave the token: the DEK is wrapped and unwrapped inside it.
//
// # URIs
//
// A KEK is named by a PKCS#11 URI (RFC 7512):
//
//	pkcs11:token=TOKEN;object=LABEL?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/run/secrets/pin
//
// Path attributes select the token and the key: token (the token label),
// serial, slot-id, manufacturer, model; object (the key's CKA_LABEL,
// required); id (a CKA_ID, percent-encoded: id=%01%02); type (secret-key
// only). Query attributes say how to reach it: module-path (an absolute
// path), and the user PIN as pin-source (a file path or a file: URI; the
// file holds the PIN, an ending newline is dropped, and it must not be
// readable by group or others) or pin-value (the PIN itself). Values are
// percent-decoded. Unknown or repeated attributes are refused, not
// ignored. The token attributes must select exactly one initialised token.
//
// Without module-path, the module is Config.Module, which [ConfigFromEnv]
// takes from KPCRYPT_PKCS11_MODULE, and as a last resort the first
// well-known SoftHSM2 path that exists ([DefaultModulePaths]). Without a
// PIN in the URI, Config.PIN (KPCRYPT_PKCS11_PIN) is used; a token that
// requires a login and gets no PIN is refused.
//
// # What file headers record
//
// [KEK.URI] is the KEK's identity, recorded in every slot it wraps and
// bound into the slot's associated data:
//
//	pkcs11:token=TOKEN;object=LABEL
//
// with the token's label as the token reports it (whichever attributes
// selected it) and the object label, percent-encoded in one canonical
// spelling; ";id=…" is added only for a KEK pinned to one CKA_ID. The
// module path, the PIN and the selectors serial, slot-id, manufacturer and
// model are configuration, not identity: they are never recorded, so a
// header never names code to load or a secret, and a file stays openable
// when the module moves or the token gets another slot. URIs given with
// any of them open the same KEK. Because a header cannot choose a module,
// the kpcrypt command never opens pkcs11: URIs from headers: decrypt needs
// --kek with the URI.
//
// # Mechanisms and associated data
//
// Wrap uses the first mechanism of Config.Mechanisms (by default
// [DefaultMechanisms]: AES-GCM, then the key wraps) that the token offers
// (C_GetMechanismList, with the right CKF_ flags). The wrapped DEK records
// which one, and which key version, in a header:
//
//	mechanism byte | CKA_ID length | CKA_ID | body
//
// [AESGCM] (CKM_AES_GCM) encrypts the DEK with C_Encrypt under the KEK:
// a 12-byte IV from crypto/rand (or the one the token writes back), a
// 16-byte tag, and as GCM's AAD the header then the associated data. This
// is preferred, since GCM authenticates the associated data itself. Random
// 96-bit IVs keep a key version safe for 2^32 wraps; rotate well before.
//
// [AESKeyWrapKWP] (CKM_AES_KEY_WRAP_KWP) and [AESKeyWrapPad]
// (CKM_AES_KEY_WRAP_PAD) have no associated data. The DEK is imported as a
// short-lived session object (CKO_SECRET_KEY, CKK_GENERIC_SECRET,
// extractable, not a token object) holding
//
//	SHA-256("kpcrypt pkcs11 key wrap aad v1\x00" | header | associated data) | len(DEK) (2 bytes) | DEK | zeros to a multiple of 8
//
// and wrapped with C_WrapKey; Unwrap unwraps it with C_UnwrapKey, reads the
// value, and compares the digest in constant time. AES key wrap is a
// deterministic authenticated cipher in which every output bit depends on
// every input bit, so the digest inside it binds the associated data (and
// the header) as firmly as an AAD would: other associated data gives
// another digest, and a modified wrapped value fails the token's integrity
// check or the digest. The value is padded by kpcrypt, and its length
// recorded, because tokens differ in the padding CKM_AES_KEY_WRAP_PAD adds
// and SoftHSM2 does not strip it from a generic secret. Tokens do not
// key-wrap raw bytes with C_Encrypt (SoftHSM2 answers CKR_MECHANISM_INVALID),
// hence the session object; the KEK never leaves the token either way.
//
// A DEK that does not authenticate (another KEK, a version that is not the
// KEK's, other associated data, modified bytes) fails with an error
// matching kms.ErrWrongKey. SoftHSM2 reports a failed GCM tag or key wrap
// integrity check as CKR_GENERAL_ERROR, so that code, from the step that
// decrypts or unwraps, counts as a wrong key too. A DEK wrapped with a
// mechanism the token lacks fails with [ErrMechanismUnsupported], naming
// it.
//
// # Versions
//
// The keys of a KEK are the token's AES secret keys with its label; each
// is a version, named by its CKA_ID in lowercase hex. [Provider.Generate]
// (kpcrypt keygen --pkcs11) makes the first, and [KEK.Rotate] (kpcrypt
// keygen --rotate-pkcs11) adds one. Their CKA_IDs are 12 bytes: a 64-bit
// big-endian generation (1, then one more than the highest at each
// rotation) and 4 random bytes, which keep two concurrent rotations apart.
// Versions are ordered by generation, then by CKA_ID bytes; a key made by
// another tool, with a CKA_ID of another length, counts as generation 0,
// older than kpcrypt's. The current version, the one Wrap uses, is the
// last. The order depends on no clock and is the same in every process.
// Unwrap uses the version recorded in the wrapped DEK and reports it, so
// old files still open after a rotation, and envelope.Rewrap moves them to
// the current version (client-side: the KEK does not implement
// kms.Rewrapper). The versions are read from the token at every operation,
// so a rotation made elsewhere is seen at once. A URI with id= pins the KEK
// to that one key: it has one version and does not rotate.
//
// The keys are made with CKM_AES_KEY_GEN: AES-256, CKA_TOKEN, CKA_PRIVATE
// (when logged in), CKA_SENSITIVE, not CKA_EXTRACTABLE, with CKA_ENCRYPT,
// CKA_DECRYPT, CKA_WRAP and CKA_UNWRAP and nothing else.
//
// # Sessions, login and closing
//
// A [Provider] is the explicit per-process state PKCS#11 needs: it loads and
// C_Initializes each module once, logs in to each token once (an anchor
// session holds the login, which all sessions share), and keeps a bounded
// pool of read-write sessions per token (Config.MaxSessions), so a KEK is
// safe for concurrent use. A token logged in accepts only the PIN it was
// logged in with; and if another user of the module in the process logged
// in already (a second Provider), the PIN could not be checked, so the
// open fails. Closing a KEK releases its share; the last KEK of a token
// closes its sessions (logging out), the last of a module finalises it.
// [Provider.Close] closes everything. While a key is created (Rotate,
// Generate) the other operations of the Provider on that token wait:
// SoftHSM2 does not create objects atomically.
//
// # Security notes
//
//   - The PIN never appears in errors, logs or URIs the package returns;
//     [Redact] hides pin-value in the URI of an error. pin-value puts the
//     PIN wherever the URI goes (command lines, shell history): prefer
//     pin-source or KPCRYPT_PKCS11_PIN. The kpcrypt command refuses
//     pin-value.
//   - Loading a module runs its code: a module path comes from the caller,
//     the URI given or the environment, never from a file header.
//     module-path must be absolute.
//   - Anyone holding the PIN can unwrap with the KEK (the token allows
//     CKA_DECRYPT and CKA_UNWRAP); the token protects the key, not the
//     use of it.
//   - The DEK is in the process's memory once unwrapped, as with every KEK.
//     The key wrap paths also place it, briefly, in a token session object,
//     destroyed after use; miekg/pkcs11 does not zero the C buffers it
//     copies results through.
package pkcs11
