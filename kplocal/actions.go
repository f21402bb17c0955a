package kplocal

import (
	"encoding/base64"
	"net/http"
	"slices"
	"unicode/utf8"
)

const (
	maxPlaintextLen = 4096 // base64 characters of a wrap plaintext
	maxAADItems     = 126
	maxAADItemLen   = 255
	generatedDEKLen = 32
)

// actionBody is the flat body of a key action (never enveloped). Unknown
// fields are refused.
type actionBody struct {
	Plaintext           string   `json:"plaintext"`
	Ciphertext          string   `json:"ciphertext"`
	AAD                 []string `json:"aad"`
	Payload             string   `json:"payload"`
	EncryptedNonce      string   `json:"encryptedNonce"`
	IV                  string   `json:"iv"`
	EncryptionAlgorithm string   `json:"encryptionAlgorithm"`
	KeyVersion          any      `json:"keyVersion"` // accepted (the official client's request type has it) and ignored
}

// actionResponse is the flat answer of wrap, unwrap and rewrap.
type actionResponse struct {
	Plaintext           string       `json:"plaintext,omitempty"`
	Ciphertext          string       `json:"ciphertext,omitempty"`
	KeyVersion          *versionView `json:"keyVersion,omitempty"`
	RewrappedKeyVersion *versionView `json:"rewrappedKeyVersion,omitempty"`
}

func checkAAD(aad []string) error {
	if len(aad) > maxAADItems {
		return errInvalidField(whatAction, "aad", "a list of at most 126 strings")
	}
	for _, a := range aad {
		if utf8.RuneCountInString(a) > maxAADItemLen {
			return errInvalidField(whatAction, "aad", "a list of strings of at most 255 characters each")
		}
	}
	return nil
}

// actionKey finds the root key an action applies to and checks that the
// key is in one of the allowed states: a destroyed key is 410, a standard
// key 400, any other state 409. The caller holds s.mu.
func (s *Server) actionKey(c *call, what string, allowed ...int) (*key, error) {
	k, err := s.lookup(c)
	if err != nil {
		return nil, err
	}
	st := k.stateAt(c.now)
	switch {
	case st == stateDestroyed:
		return nil, errKeyDeleted(what)
	case k.Standard:
		return nil, errRootRequired(what, "")
	case !slices.Contains(allowed, st):
		return nil, errInvalidState(what)
	}
	return k, nil
}

// wrap serves the wrap action: it seals the given plaintext, or a fresh
// 32-byte DEK, under the key's current version.
func (s *Server) wrap(c *call) (reply, error) {
	var b actionBody
	if _, err := decodeStrict(c, whatAction, &b); err != nil {
		return reply{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.actionKey(c, whatAction, stateActive)
	if err != nil {
		return reply{}, err
	}
	if err := checkAAD(b.AAD); err != nil {
		return reply{}, err
	}
	generated := b.Plaintext == ""
	var dek []byte
	switch {
	case generated:
		dek = randomBytes(generatedDEKLen)
	case len(b.Plaintext) > maxPlaintextLen:
		return reply{}, errInvalidField(whatAction, "plaintext", "a base64 encoded key material of at most 4096 characters")
	default:
		if dek, err = base64.StdEncoding.DecodeString(b.Plaintext); err != nil {
			return reply{}, errInvalidField(whatAction, "plaintext", "a base64 encoded key material: "+err.Error())
		}
	}
	cur := k.current()
	ct, err := seal(k.ID, cur, dek, b.AAD)
	if err != nil {
		return reply{}, err
	}
	vv := newVersionView(cur)
	resp := actionResponse{Ciphertext: ct, KeyVersion: &vv}
	if generated {
		resp.Plaintext = base64.StdEncoding.EncodeToString(dek)
	}
	return reply{status: http.StatusOK, body: resp}, nil
}

// opened is an authenticated, decrypted ciphertext.
type opened struct {
	k   *key
	v   version // the version that made the ciphertext
	dek []byte
	aad []string
}

// openCiphertext parses and authenticates the ciphertext of an unwrap or
// rewrap body. The caller holds s.mu.
func (s *Server) openCiphertext(c *call, b actionBody, present bool) (opened, error) {
	if !present {
		return opened{}, errNoBody(whatAction)
	}
	k, err := s.actionKey(c, whatAction, stateActive, stateDeactivated)
	if err != nil {
		return opened{}, err
	}
	if err := checkAAD(b.AAD); err != nil {
		return opened{}, err
	}
	parsed, err := parseCiphertext(b.Ciphertext)
	if err != nil {
		return opened{}, errBadCiphertext()
	}
	v, ok := k.findVersion(parsed.versionID)
	if !ok {
		return opened{}, errNotThisKey()
	}
	dek, err := parsed.open(k.ID, v, b.AAD)
	if err != nil {
		return opened{}, errBadCiphertext() // tampered, or wrong AAD
	}
	return opened{k: k, v: v, dek: dek, aad: b.AAD}, nil
}

// withOpened decodes an unwrap or rewrap body and, holding the server's
// lock, opens its ciphertext and hands it to fn.
func (s *Server) withOpened(c *call, fn func(o opened) (reply, error)) (reply, error) {
	var b actionBody
	present, err := decodeStrict(c, whatAction, &b)
	if err != nil {
		return reply{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	o, err := s.openCiphertext(c, b, present)
	if err != nil {
		return reply{}, err
	}
	return fn(o)
}

// unwrap serves the unwrap action. A ciphertext made with an older version
// also gets the DEK rewrapped under the current version.
func (s *Server) unwrap(c *call) (reply, error) {
	return s.withOpened(c, func(o opened) (reply, error) {
		used := newVersionView(o.v)
		resp := actionResponse{Plaintext: base64.StdEncoding.EncodeToString(o.dek), KeyVersion: &used}
		if cur := o.k.current(); cur.ID != o.v.ID {
			var err error
			if resp.Ciphertext, err = seal(o.k.ID, cur, o.dek, o.aad); err != nil {
				return reply{}, err
			}
			rewrapped := newVersionView(cur)
			resp.RewrappedKeyVersion = &rewrapped
		}
		return reply{status: http.StatusOK, body: resp}, nil
	})
}

// rewrap serves the rewrap action: the DEK re-sealed under the current
// version, never the plaintext.
func (s *Server) rewrap(c *call) (reply, error) {
	return s.withOpened(c, func(o opened) (reply, error) {
		cur := o.k.current()
		ct, err := seal(o.k.ID, cur, o.dek, o.aad)
		if err != nil {
			return reply{}, err
		}
		used, rewrapped := newVersionView(o.v), newVersionView(cur)
		return reply{status: http.StatusOK, body: actionResponse{Ciphertext: ct, KeyVersion: &used, RewrappedKeyVersion: &rewrapped}}, nil
	})
}

// rotate serves the rotate action: a new current version with fresh (or,
// for imported keys, supplied) material.
func (s *Server) rotate(c *call) (reply, error) {
	var b actionBody
	if _, err := decodeStrict(c, whatRotate, &b); err != nil {
		return reply{}, err
	}
	imp := importFields{Payload: b.Payload, EncryptedNonce: b.EncryptedNonce, IV: b.IV, EncryptionAlgorithm: b.EncryptionAlgorithm}
	if imp.secure() {
		if err := s.ensureTransportKey(c.inst); err != nil {
			return reply{}, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.actionKey(c, whatRotate, stateActive, stateDeactivated)
	if err != nil {
		return reply{}, err
	}
	var material []byte
	switch {
	case !k.Imported && (b.Payload != "" || imp.secure()):
		return reply{}, errInvalidQuery(whatRotate, "payload", "provided only if key is imported")
	case k.Imported && b.Payload == "":
		return reply{}, newAPIError(http.StatusBadRequest, whatRotate, "KEY_PAYLOAD_REQ_ERR",
			"This root key was created with user-supplied key material: Key material is required to perform a 'rotate' action",
			fieldTarget("payload"))
	case imp.secure():
		if material, err = s.openSecureImport(c, whatRotate, imp); err != nil {
			return reply{}, err
		}
	case k.Imported:
		if p := c.inst.enabledPolicy(ipolicyKeyAccess); p != nil && p.Attributes != nil && *p.Attributes.EnforceToken {
			return reply{}, newAPIError(http.StatusConflict, whatRotate, "KEY_CREATE_IMPORT_ACCESS_ERR",
				"The instance's keyCreateImportAccess policy forbids importing keys without an import token", nil)
		}
		material, err = base64.StdEncoding.DecodeString(b.Payload)
		if err != nil || !validRootSize(len(material)) {
			return reply{}, errInvalidField(whatRotate, "payload", "a base64 encoded 128, 192 or 256 bit key material")
		}
	default:
		material = randomBytes(rootMaterialSize)
	}
	if interval := s.cfg.MinRotationInterval; interval > 0 && k.Rotated != nil && c.now.Before(k.Rotated.Add(interval)) {
		return reply{}, errRotationNotPermitted(interval)
	}
	err = s.update(k, func(k *key) error {
		k.Versions = append(k.Versions, version{ID: newUUID(), Created: c.now, Material: material})
		t := c.now
		k.Rotated = &t
		k.touch(c.now)
		return nil
	})
	if err != nil {
		return reply{}, err
	}
	return reply{status: http.StatusNoContent}, nil
}

// disable serves the disable action: active → suspended.
func (s *Server) disable(c *call) (reply, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.actionKey(c, whatAction, stateActive)
	if err != nil {
		return reply{}, err
	}
	return s.noContent(s.update(k, func(k *key) error {
		k.Suspended = true
		k.touch(c.now)
		return nil
	}))
}

// enable serves the enable action: suspended → active, not within 30 s of
// the key's last change.
func (s *Server) enable(c *call) (reply, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.actionKey(c, whatAction, stateSuspended)
	if err != nil {
		return reply{}, err
	}
	if c.now.Before(k.lastChange().Add(enableRestoreDelay)) {
		return reply{}, errTooEarly(whatAction, "Enable operation is allowed 30s after the last change of the key")
	}
	return s.noContent(s.update(k, func(k *key) error {
		k.Suspended = false
		k.touch(c.now)
		return nil
	}))
}

// setKeyForDeletion records the first authorisation of a dual-auth delete.
func (s *Server) setKeyForDeletion(c *call) (reply, error) {
	return s.dualAuthAction(c, true)
}

// unsetKeyForDeletion cancels a dual-auth delete authorisation.
func (s *Server) unsetKeyForDeletion(c *call) (reply, error) {
	return s.dualAuthAction(c, false)
}

func (s *Server) dualAuthAction(c *call, set bool) (reply, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.lookup(c)
	if err != nil {
		return reply{}, err
	}
	if k.Deleted != nil {
		return reply{}, errKeyDeleted(whatAction)
	}
	if !k.dualAuthEnabled() {
		return reply{}, newAPIError(http.StatusConflict, whatAction, "NOT_DUAL_AUTH_ERR",
			"The key is not dual auth enabled and cannot be set for deletion", nil)
	}
	return s.noContent(s.update(k, func(k *key) error {
		if set {
			t := c.now
			k.DeletionAuthAt, k.DeletionAuthBy = &t, c.caller
		} else {
			k.DeletionAuthAt, k.DeletionAuthBy = nil, ""
		}
		return nil
	}))
}

func (s *Server) noContent(err error) (reply, error) {
	if err != nil {
		return reply{}, err
	}
	return reply{status: http.StatusNoContent}, nil
}
