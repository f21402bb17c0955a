package kplocal

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net/http"
	"time"
)

// Secure import: import tokens (POST and GET /api/v2/import_token) and the
// 2019 lockers (transport keys, /api/v2/lockers). Both hand out the public
// half of the instance's one RSA key pair, made on first use with
// Config.ImportKeyBits bits; a key created or rotated with
// encryptedNonce and iv carries its material RSA-OAEP-encrypted under it.

const (
	// DefaultImportKeyBits is the size of an instance's import (transport)
	// RSA key when Config.ImportKeyBits is zero: 4096 bits, as Key Protect.
	DefaultImportKeyBits = 4096

	importNonceSize         = 12
	defaultImportExpiration = 600 // seconds
	minImportExpiration     = 300
	maxImportExpiration     = 86400
	maxImportRetrievals     = 500

	// Encryption algorithms of a secure import.
	algOAEPSHA256 = "RSAES_OAEP_SHA_256"
	algOAEPSHA1   = "RSAES_OAEP_SHA_1" // HPCS only

	whatImportToken   = "Import token could not be created"
	whatImportTokenGt = "Import token could not be retrieved"
	whatLocker        = "Transport key could not be created"
	whatLockerGt      = "Transport key could not be retrieved"
)

// importToken is an instance's current import token.
type importToken struct {
	created, expires time.Time
	maxRetrievals    int
	remaining        int
	nonce            []byte
}

// locker is an instance's current transport key (2019 API).
type locker struct {
	id               string
	created, expires time.Time
	maxRetrievals    int
	remaining        int
	importToken      string // opaque
}

// importTokenRequest is the body of POST /import_token and POST /lockers.
type importTokenRequest struct {
	Expiration           *int `json:"expiration"`
	MaxAllowedRetrievals *int `json:"maxAllowedRetrievals"`
}

// importTokenView is the wire shape of an import token (and, with ID, of
// locker metadata).
type importTokenView struct {
	ID                   string    `json:"id,omitempty"`
	CreationDate         *jsonTime `json:"creationDate"`
	ExpirationDate       *jsonTime `json:"expirationDate"`
	Expiration           int       `json:"expiration,omitempty"`
	MaxAllowedRetrievals int       `json:"maxAllowedRetrievals"`
	RemainingRetrievals  int       `json:"remainingRetrievals"`
	Payload              string    `json:"payload,omitempty"`
	Nonce                string    `json:"nonce,omitempty"`
	ImportToken          string    `json:"importToken,omitempty"`
}

func errImportTokenExpired(what, detail string) *apiError {
	return newAPIError(http.StatusConflict, what, "IMPORT_TOKEN_EXPIRED_ERR", detail, nil)
}

// parseImportRequest reads expiration (300–86400 s, default 600) and
// maxAllowedRetrievals (1–500, default 1).
func parseImportRequest(c *call, what string) (expiration, retrievals int, err error) {
	var b importTokenRequest
	if _, err := decodeStrict(c, what, &b); err != nil {
		return 0, 0, err
	}
	expiration, retrievals = defaultImportExpiration, 1
	if b.Expiration != nil {
		if *b.Expiration < minImportExpiration || *b.Expiration > maxImportExpiration {
			return 0, 0, errInvalidField(what, "expiration", "an integer between 300 and 86400 (inclusive)")
		}
		expiration = *b.Expiration
	}
	if b.MaxAllowedRetrievals != nil {
		if *b.MaxAllowedRetrievals < 1 || *b.MaxAllowedRetrievals > maxImportRetrievals {
			return 0, 0, errInvalidField(what, "maxAllowedRetrievals", "an integer between 1 and 500 (inclusive)")
		}
		retrievals = *b.MaxAllowedRetrievals
	}
	return expiration, retrievals, nil
}

// ensureTransportKey makes the instance's RSA key pair if it has none. The
// key is generated without holding s.mu.
func (s *Server) ensureTransportKey(inst *instance) error {
	s.mu.Lock()
	have := inst.transport != nil
	s.mu.Unlock()
	if have {
		return nil
	}
	k, err := rsa.GenerateKey(rand.Reader, s.cfg.ImportKeyBits)
	if err != nil {
		return fmt.Errorf("kplocal: generating the import key: %w", err)
	}
	s.mu.Lock()
	if inst.transport == nil {
		inst.transport = k
	}
	s.mu.Unlock()
	return nil
}

// createImportToken serves POST /import_token → 201: a new token (and
// nonce) replaces the instance's previous one.
func (s *Server) createImportToken(c *call) (reply, error) {
	expiration, retrievals, err := parseImportRequest(c, whatImportToken)
	if err != nil {
		return reply{}, err
	}
	if err := s.ensureTransportKey(c.inst); err != nil {
		return reply{}, err
	}
	t := &importToken{
		created: c.now, expires: c.now.Add(time.Duration(expiration) * time.Second),
		maxRetrievals: retrievals, remaining: retrievals, nonce: randomBytes(importNonceSize),
	}
	s.mu.Lock()
	c.inst.importToken = t
	s.mu.Unlock()
	return reply{status: http.StatusCreated, body: importTokenView{
		CreationDate: jt(t.created), ExpirationDate: jt(t.expires), Expiration: expiration,
		MaxAllowedRetrievals: t.maxRetrievals, RemainingRetrievals: t.remaining,
	}}, nil
}

// getImportToken serves GET /import_token: the public key (base64 of a
// PEM "PUBLIC KEY" block) and the nonce. Each retrieval uses one of
// maxAllowedRetrievals; an expired or used-up token is 409
// IMPORT_TOKEN_EXPIRED_ERR.
func (s *Server) getImportToken(c *call) (reply, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := c.inst.importToken
	switch {
	case t == nil:
		return reply{}, plainError(http.StatusNotFound, whatImportTokenGt+": no import token has been created for this instance")
	case !c.now.Before(t.expires):
		return reply{}, errImportTokenExpired(whatImportTokenGt, "The import token has expired: Please create a new import token")
	case t.remaining <= 0:
		return reply{}, errImportTokenExpired(whatImportTokenGt,
			"The import token has reached its maximum number of retrievals: Please create a new import token")
	}
	der, err := x509.MarshalPKIXPublicKey(&c.inst.transport.PublicKey)
	if err != nil {
		return reply{}, err
	}
	t.remaining--
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	return reply{status: http.StatusOK, body: importTokenView{
		CreationDate: jt(t.created), ExpirationDate: jt(t.expires),
		MaxAllowedRetrievals: t.maxRetrievals, RemainingRetrievals: t.remaining,
		Payload: base64.StdEncoding.EncodeToString(pemKey),
		Nonce:   base64.StdEncoding.EncodeToString(t.nonce),
	}}, nil
}

// createLocker serves POST /lockers → 201 with the locker's metadata; a new
// locker replaces the previous one.
func (s *Server) createLocker(c *call) (reply, error) {
	expiration, retrievals, err := parseImportRequest(c, whatLocker)
	if err != nil {
		return reply{}, err
	}
	if err := s.ensureTransportKey(c.inst); err != nil {
		return reply{}, err
	}
	l := &locker{
		id: newUUID(), created: c.now, expires: c.now.Add(time.Duration(expiration) * time.Second),
		maxRetrievals: retrievals, remaining: retrievals, importToken: randomToken(32),
	}
	s.mu.Lock()
	c.inst.locker = l
	s.mu.Unlock()
	return reply{status: http.StatusCreated, body: lockerMetadata(l)}, nil
}

func lockerMetadata(l *locker) importTokenView {
	return importTokenView{ID: l.id, CreationDate: jt(l.created), ExpirationDate: jt(l.expires),
		MaxAllowedRetrievals: l.maxRetrievals, RemainingRetrievals: l.remaining}
}

// listLockers serves GET /lockers: the current locker's metadata.
func (s *Server) listLockers(c *call) (reply, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := c.inst.locker
	if l == nil {
		return reply{}, plainError(http.StatusNotFound, whatLockerGt+": no transport key has been created for this instance")
	}
	return reply{status: http.StatusOK, body: lockerMetadata(l)}, nil
}

// getLocker serves GET /lockers/{id}: the transport key (base64 of the DER
// PKIX public key) and an opaque importToken; each retrieval uses one of
// maxAllowedRetrievals.
func (s *Server) getLocker(c *call) (reply, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := c.inst.locker
	switch {
	case l == nil || l.id != c.ref:
		return reply{}, plainError(http.StatusNotFound, whatLockerGt+": no transport key has this ID")
	case !c.now.Before(l.expires):
		return reply{}, errImportTokenExpired(whatLockerGt, "The transport key has expired: Please create a new transport key")
	case l.remaining <= 0:
		return reply{}, errImportTokenExpired(whatLockerGt,
			"The transport key has reached its maximum number of retrievals: Please create a new transport key")
	}
	der, err := x509.MarshalPKIXPublicKey(&c.inst.transport.PublicKey)
	if err != nil {
		return reply{}, err
	}
	l.remaining--
	return reply{status: http.StatusOK, body: importTokenView{
		ID: l.id, CreationDate: jt(l.created), ExpirationDate: jt(l.expires),
		Payload: base64.StdEncoding.EncodeToString(der), ImportToken: l.importToken,
	}}, nil
}
