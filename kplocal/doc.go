// Package kplocal is a local emulator of IBM Key Protect: a Key
// Protect-compatible HTTP server for tests and development, run in-process
// ([New], [Start]) or as the command cmd/kplocal.
//
// It serves the Key Protect API under /api/v2 and the IAM API-key token
// exchange under /identity/token (and /oidc/token, the official Go client's
// default path) on one address, so a client is configured with
// BaseURL = [Running.BaseURL] and TokenURL = [Running.TokenURL]. The wire
// shapes follow the project's wire reference (keyprotect-api.md) and are
// checked against IBM's official Go client (module interop/).
//
// # What is implemented
//
//   - IAM: form POST with grant_type=urn:ibm:params:oauth:grant-type:apikey
//     and apikey; IAM-shaped success and error bodies (BXNIM… codes). Tokens
//     are JWT-shaped (exp and iat in the payload), HMAC-signed with a
//     per-server secret, live Config.TokenTTL and expire by Config.Now.
//   - Every /api/v2 request needs a valid "Bearer" token (else 401 with an
//     errorMsg-only body) and the configured bluemix-instance (missing: 400;
//     another instance: 401). correlation-id is echoed or generated. Any
//     Content-Type (or none) is accepted; Accept is ignored.
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
//     accepts a key ID or an alias.
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
//     dualAuthDelete] with interval_month 1–12 and dual authorisation;
//     dual-authorisation delete (setKeyForDeletion, a 7-day window,
//     AUTHORIZATIONS_NOT_MET).
//   - Time rules, judged by Config.Now: enable not within 30 s of the key's
//     last change; restore not within 30 s of deletion and only for 30 days;
//     purge from 4 h after deletion; deleted keys vanish after 90 days.
//   - Error bodies: the error envelope with errorMsg
//     ("<Status>: <what> could not be …: Please see 'reasons' for more
//     details (CODE)") and reasons (code, message, status, moreInfo,
//     target) using the reason codes of the reference's §6.
//   - A concurrency rate limit (Config.MaxConcurrent: requests beyond it are
//     answered 429), counted in Stats.RateLimited with Stats.PeakInFlight.
//   - Fault injection (Config.FaultRate: 429 with Retry-After: 0, or 503,
//     each with an error body), latency (Config.Latency), request counters
//     ([Server.Stats]), persistence (Config.StateFile) and direct helpers
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
// With Config.StateFile, all keys (every version with its material),
// aliases, policies and the token-signing secret are saved as JSON after
// every change, atomically (temporary file in the same directory, fsync,
// rename, mode 0600), and loaded by [New]: keys, old ciphertexts and even
// tokens issued before a restart keep working. The file holds key material
// in the clear. A change whose write fails is undone and answered 500. Only
// one server may use a state file at a time.
//
// # Deviations from Key Protect
//
// Deliberate, or because the real behaviour is undocumented:
//
//   - One instance and one API key per server; the token grants access to
//     that instance only. There are no IAM roles, no key-level access
//     policies and no "different user" check: the same caller may
//     authorise (setKeyForDeletion) and then delete a dual-auth key.
//   - Not implemented (answered 404): import tokens and secure import
//     (payloads with encryptedNonce/iv are refused with 400
//     INVALID_FIELD_ERR), instance policies, key rings as resources
//     (x-kms-key-ring is stored and filters lookups and listings, but any
//     ring name is accepted), registrations (so delete never answers
//     PROTECTED_RESOURCE_ERR and force=true has no effect), KMIP, lockers,
//     allowed_ip_port, and the keyCreateImportAccess policy.
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
//     create); nonactiveStateReason is never sent; algorithmMode and
//     algorithmMetadata.mode are "Deprecated".
//   - Create without an extractable field makes a standard key (the 2019
//     OpenAPI default). The key material of a standard key is returned on
//     create only with Prefer: return=representation.
//   - Action bodies (wrap, unwrap, rewrap, rotate) with unknown fields are
//     refused with 400 BAD_BODY_ERR, so a misspelt "aad" cannot silently
//     disable AAD binding; other bodies ignore unknown fields.
//   - Where the reference gives no code, kplocal answers with an
//     errorMsg-only error: 401, 429/503 (injected faults), a missing
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
