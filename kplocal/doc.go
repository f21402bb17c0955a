// Package kplocal is a local emulator of IBM Key Protect: a Key
// Protect-compatible HTTP server for tests and development, run in-process
// ([New], [Start]) or as the command cmd/kplocal.
//
// It serves the Key Protect API under /api/v2 and the IAM API-key token
// exchange under /identity/token (and /oidc/token, the official Go client's
// default path) on one address. [Running.ClientInfo] returns what a client
// needs: this project's keyprotect.Config takes BaseURL and IAMURL (both
// [Running.BaseURL]: IAM's base URL, to which it appends /identity/token),
// APIKey and InstanceID, plus an HTTP client trusting CAFile under TLS;
// IBM's official Go client takes BaseURL and TokenURL ([Running.TokenURL],
// the full token endpoint), InstanceID and APIKey. The wire shapes follow
// the project's wire reference (keyprotect-api.md) and are checked against
// IBM's official Go client (module interop/).
//
// # What is implemented
//
//   - IAM: form POST with grant_type=urn:ibm:params:oauth:grant-type:apikey
//     and apikey; IAM-shaped success and error bodies (BXNIM… codes). Tokens
//     are JWT-shaped (exp and iat in the payload), HMAC-signed with a
//     per-server secret, live Config.TokenTTL and expire by Config.Now.
//   - Accounts: Config.APIKey with Config.InstanceID, and Config.Accounts,
//     more API keys each with its instances ([Account]; the command reads
//     them from a JSON file, [AccountsFile]). A token grants the instances
//     of its API key. Instances are isolated (keys, aliases, key rings,
//     policies, import tokens); each API key is a distinct caller.
//   - Every /api/v2 request needs a valid "Bearer" token and a
//     bluemix-instance its API key may use (missing header: 400; a bad,
//     expired or other-instance token, or an address refused by the
//     instance's allowedIP policy: 401 with Key Protect's errorMsg-only
//     "Unauthorized: The user does not have access to the specified
//     resource"). correlation-id is echoed or generated. Any Content-Type
//     (or none) is accepted; Accept is ignored; HEAD answers carry
//     Content-Type.
//   - Keys: create root or standard keys, generated (256-bit) or imported
//     from a payload (root: 16, 24 or 32 bytes; standard: up to 7500),
//     with description, aliases, tags, expirationDate and x-kms-key-ring;
//     POST /keys_with_policy_overrides; GET /keys with limit, offset,
//     state, extractable, search (not:, exact:, escape:, name:, alias:),
//     sort and filter; HEAD /keys with Key-Total; GET /keys/{id} (payload
//     of standard keys only) and /metadata; PATCH /keys/{id} (key ring);
//     versions (newest first, limit, offset, totalCount, allKeyStates);
//     DELETE (204, or 200 with Prefer: return=representation), restore,
//     purge; aliases (POST/DELETE /keys/{id}/aliases/{alias}). Every {id}
//     accepts a key ID or an alias; an {id} that is neither a UUID nor of
//     alias syntax is 400 INVALID_QUERY_PARAM_ERR, an unknown one 404.
//     Keys not in state 1 carry nonactiveStateReason (kplocal's values: 2
//     suspended, 3 deactivated, 20 destroyed).
//   - Key rings: POST /key_rings/{id} (201, empty body), GET /key_rings
//     (limit, offset, totalCount), DELETE /key_rings/{id}[?force=true]
//     (409 KEY_RING_NOT_EMPTY_ERR while it holds a key; force moves
//     destroyed keys to "default"). Keys are created into an existing ring
//     named by x-kms-key-ring (an unknown ring is 404), moved by PATCH, and
//     x-kms-key-ring narrows lookups and listings.
//   - Instance policies: GET and PUT /instance/policies[?policy=…] (PUT →
//     204) for dualAuthDelete, rotation (interval_month), allowedNetwork,
//     allowedIP (CIDRs; enforced, 401), keyCreateImportAccess (enforced,
//     409 KEY_CREATE_IMPORT_ACCESS_ERR, enforce_token included) and
//     metrics. An enabled rotation or dualAuthDelete instance policy is
//     given to keys created after it (rotation: root keys only);
//     keys_with_policy_overrides overrides it.
//   - Secure import: POST /import_token (201; expiration 300–86400 s,
//     maxAllowedRetrievals 1–500) and GET /import_token (the RSA public key
//     as base64 PEM and a 12-byte nonce; each GET uses a retrieval). An
//     expired token, or one whose retrievals are used up, is 409
//     IMPORT_TOKEN_EXPIRED_ERR. Lockers (the 2019 transport keys): POST
//     /lockers, GET /lockers, GET /lockers/{id} (DER public key and an
//     opaque importToken; same limits). Each instance has one RSA key pair
//     (Config.ImportKeyBits, 4096 by default; made on first use, in memory
//     only) shared by both. Create and rotate accept payload (the material
//     RSA-OAEP-encrypted, SHA-256; SHA-1 too on an HPCS server) with
//     encryptedNonce and iv (the token's nonce AES-GCM-encrypted under the
//     material, or AES-CBC-PAD with a 16-byte iv) and encryptionAlgorithm;
//     errors INCORRECT_NONCE_ERR, INCORRECT_NONCE_IV_ERR, INVALID_FIELD_ERR
//     (payload, encryptionAlgorithm, a missing field) and
//     IMPORT_TOKEN_EXPIRED_ERR.
//   - HPCS mode (Config.Service = [ServiceHPCS]): hs-crypto CRNs, SHA-1
//     imports, and the broker's GET /crypto_v2/instances/{instance_id}
//     answering kms.public and kms.private as host:port (the address the
//     request came to) without a scheme.
//   - TLS (Config.TLS, for [Start] and [StartListener]): a self-signed CA
//     and a server certificate for 127.0.0.1, ::1 and localhost made at
//     start; the CA is written to Config.CAFile and available as
//     [Running.CertPool], [Running.CACertPEM] and [Running.HTTPClient].
//   - Actions, in both URL forms (/keys/{id}/actions/{action} and
//     /keys/{id}?action={action}): wrap, unwrap, rewrap, rotate, disable,
//     enable, setKeyForDeletion, unsetKeyForDeletion, restore (legacy form)
//     and sync (current form).
//   - Key states and the state × action matrix: active (1), suspended (2,
//     after disable), deactivated (3, once expirationDate has passed) and
//     destroyed (5, after delete).
//   - Versions and rotation: rotate adds a version; old ciphertexts keep
//     unwrapping, and unwrapping one made with an older version also returns
//     the DEK rewrapped under the current version (ciphertext and
//     rewrappedKeyVersion). Config.MinRotationInterval enforces Key
//     Protect's one-rotation-per-hour rule ([DefaultMinRotationInterval],
//     the command's default); its zero value means no limit.
//   - Key policies: GET and PUT /keys/{id}/policies[?policy=rotation|
//     dualAuthDelete] with interval_month 1–12 and dual authorisation
//     (Prefer: return=minimal answers 204); dual-authorisation delete
//     (setKeyForDeletion, a 7-day window, AUTHORIZATIONS_NOT_MET, and the
//     caller who authorised may not also delete: another API key must).
//   - Time rules, judged by Config.Now: enable not within 30 s of the key's
//     last change; restore not within 30 s of deletion and only for 30 days
//     (restoreAllowed says so); purge from 4 h after deletion; deleted keys
//     vanish after 90 days; import tokens and lockers expire.
//   - Error bodies: the error envelope with errorMsg
//     ("<Status>: <what> could not be …: Please see 'reasons' for more
//     details (CODE)") and reasons (code, message, status, moreInfo,
//     target) using the reason codes of the reference's §6.
//   - A concurrency rate limit (Config.MaxConcurrent: requests beyond it are
//     answered 429), counted in Stats.RateLimited with Stats.PeakInFlight.
//   - Fault injection: Config.FaultRate answers a share of all requests 429
//     or 503 before serving them; Config.Faults are per-operation rules
//     ([Fault]): an error status before serving, or after serving (the key
//     is created or rotated and the answer lost), a connection reset before
//     or after serving, or a slow body; each with a rate and a count.
//     Retry-After is Config.RetryAfter (or the rule's), "0" by default.
//     Also latency (Config.Latency), request counters ([Server.Stats]),
//     persistence (Config.StateFile) and direct helpers
//     ([Server.CreateKey], [Server.KeyCRN]).
//
// # Cryptography
//
// Root keys are real AES keys (AES-256 when generated). A wrapped key is
// AES-GCM under the material of the key's current version with a random
// 96-bit nonce; the GCM additional data binds the key ID, the version ID and
// the caller's AAD list (length-prefixed, so order and boundaries matter).
// The ciphertext is the base64 of a small JSON document, shaped like Key
// Protect's own, naming the version that sealed it:
// {"ciphertext":…,"iv":…,"version":"kplocal-1","handle":<version ID>}.
// Wrap without plaintext returns a fresh random 32-byte DEK. Key material
// is never logged and never appears in error bodies; a root key's material
// is never returned at all. Key material, nonces and IDs come from
// crypto/rand; only the choice of faulted requests uses a seeded
// math/rand/v2 source.
//
// # Persistence
//
// With Config.StateFile, all keys (every version with its material) of
// every instance, aliases, key and instance policies, key rings and the
// token-signing secret are saved as JSON after
// every change, atomically (temporary file in the same directory, fsync,
// rename, mode 0600), and loaded by [New]: keys, old ciphertexts and even
// tokens issued before a restart keep working. The file holds key material
// in the clear. A change whose write fails is undone and answered 500. Only
// one server may use a state file at a time. Import tokens, lockers and
// the instances' RSA import keys are not saved.
//
// # Deviations from Key Protect
//
// Deliberate, or because the real behaviour is undocumented:
//
//   - A caller is an API key; there are no IAM roles and no key-level
//     access policies. A key's createdBy, updatedBy and deletedBy are
//     always ServiceId-kplocal, whoever called; key rings and instance
//     policies name the calling API key's service ID (ServiceId-kplocal for
//     Config.APIKey, ServiceId-kplocal-N for Config.Accounts[N-1]).
//   - Not implemented (answered 404): registrations (so delete never
//     answers PROTECTED_RESOURCE_ERR and force=true has no effect), KMIP,
//     allowed_ip_port, and EP11 (the broker's ep11 entries only give its
//     answer the usual shape). allowedNetwork and metrics instance
//     policies are stored and reported, not enforced.
//   - Secure import: the reference gives no code for a secure import when
//     the instance has no import token (kplocal: 400 INVALID_FIELD_ERR on
//     encryptedNonce) nor for a used-up token or locker (kplocal: 409
//     IMPORT_TOKEN_EXPIRED_ERR). A GCM iv that does not open the nonce is
//     INCORRECT_NONCE_IV_ERR (GCM cannot tell a wrong iv from a wrong
//     encrypted nonce); a nonce that opens to another value is
//     INCORRECT_NONCE_ERR. A token stays usable for imports until it
//     expires; retrievals limit only GETs. A locker's importToken is
//     opaque and not accepted by create; its public key is the import
//     token's, so a payload encrypted under it imports with the import
//     token's nonce.
//   - Key rings, instance policies: the reference gives no code for an
//     existing ring (kplocal: 409 errorMsg-only), an unknown ring (404
//     errorMsg-only) or deleting "default" (400 INVALID_FIELD_ERR).
//   - Rotation policies are stored and reported but keys are never rotated
//     automatically; sync always succeeds.
//   - Ciphertexts use kplocal's own format (above); they are not
//     interchangeable with real Key Protect ciphertexts, and two keys
//     holding the same imported material cannot unwrap each other's
//     ciphertexts (Key Protect says they can).
//   - The first version of a key has the key's own ID (the reference leaves
//     this open; a client must not rely on either).
//   - lastUpdateDate is absent until the key first changes, as the official
//     client's integration test observes (current IBM docs show it on
//     create); algorithmMode and algorithmMetadata.mode are "Deprecated".
//   - Create without an extractable field makes a standard key (the 2019
//     OpenAPI default). The key material of a standard key is returned on
//     create only with Prefer: return=representation.
//   - Action bodies (wrap, unwrap, rewrap, rotate) with unknown fields are
//     refused with 400 BAD_BODY_ERR, so a misspelt "aad" cannot silently
//     disable AAD binding; other bodies ignore unknown fields.
//   - Where the reference gives no code, kplocal answers with an
//     errorMsg-only error: 401, injected fault statuses, a missing
//     bluemix-instance (400), unknown routes (404), wrong methods (405) and
//     internal errors (500). An alias already used by another key, or a
//     request to disable a key's dual authorisation (Key Protect forbids
//     it), is 400 INVALID_FIELD_ERR. A deleted key's actions answer 410
//     KEY_DELETED_ERR; versions of a suspended or deactivated key without
//     allKeyStates answer 409 KEY_ACTION_INVALID_STATE_ERR.
//   - Disable and enable are root-key-only (400 KEY_ROOT_REQ_ERR), as the
//     reference says.
//   - No rate limiting other than injected faults; the purge permission
//     (KeyPurge IAM attribute) is not checked.
package kplocal
