package kplocal

import (
	"encoding/base64"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

const (
	maxStandardMaterial = 7500 // bytes of an imported standard key
	maxAliasesPerKey    = 5
	maxTags             = 30
)

var (
	aliasPattern   = regexp.MustCompile(`^[A-Za-z0-9_-]{2,90}$`)
	keyRingPattern = regexp.MustCompile(`^[A-Za-z0-9-]{2,100}$`)
	reservedAlias  = map[string]bool{
		"allowed_ip": true, "key": true, "keys": true, "metadata": true, "policy": true,
		"policies": true, "registration": true, "registrations": true, "ring": true,
		"rings": true, "rotate": true, "wrap": true, "unwrap": true, "rewrap": true,
		"version": true, "versions": true,
	}
)

// createBody is the body of POST /keys and /keys_with_policy_overrides.
type createBody struct {
	Metadata  *metadataIn      `json:"metadata"`
	Resources []createResource `json:"resources"`
}

type metadataIn struct {
	CollectionType  string `json:"collectionType"`
	CollectionTotal *int   `json:"collectionTotal"`
}

type createResource struct {
	Type                string      `json:"type"`
	Name                string      `json:"name"`
	Description         string      `json:"description"`
	Aliases             []string    `json:"aliases"`
	Tags                []string    `json:"tags"`
	ExpirationDate      string      `json:"expirationDate"`
	Extractable         *bool       `json:"extractable"`
	Payload             string      `json:"payload"`
	EncryptionAlgorithm string      `json:"encryptionAlgorithm"`
	EncryptedNonce      string      `json:"encryptedNonce"`
	IV                  string      `json:"iv"`
	Rotation            *rotationIn `json:"rotation"`
	DualAuthDelete      *dualAuthIn `json:"dualAuthDelete"`
}

// checkMetadata validates a request collection's metadata against its
// number of resources.
func checkMetadata(what string, md *metadataIn, n int) error {
	if md == nil {
		return errBadBody(what, "CollectionMetadata is empty")
	}
	if md.CollectionTotal == nil || *md.CollectionTotal != n {
		return newAPIError(http.StatusBadRequest, what, "COLLECTION_TOTAL_MISMATCH_ERR",
			"The value of collectionTotal does not match the number of resources in the collection", nil)
	}
	return nil
}

// CreateKey creates a generated key directly, without HTTP: a root key
// (AES-256, usable for wrap/unwrap/rewrap/rotate) when root is true, a
// standard key otherwise. It returns the key's ID.
func (s *Server) CreateKey(name string, root bool) (string, error) {
	if n := utf8.RuneCountInString(name); n < 2 || n > 90 {
		return "", errInvalidField(whatCreate, "name", "a string of 2 to 90 characters")
	}
	now := s.now()
	k := newKey(s.cfg.InstanceID, name, !root, randomBytes(rootMaterialSize), false, defaultKeyRing, now)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.insert(k); err != nil {
		return "", err
	}
	return k.ID, nil
}

// newKey returns a new key whose first version has the key's own ID.
func newKey(instanceID, name string, standard bool, material []byte, imported bool, ring string, now time.Time) *key {
	id := newUUID()
	return &key{
		ID:        id,
		Instance:  instanceID,
		Name:      name,
		Standard:  standard,
		Imported:  imported,
		KeyRingID: ring,
		Created:   now,
		Versions:  []version{{ID: id, Created: now, Material: material}},
	}
}

// createKey serves POST /keys and (overrides) POST /keys_with_policy_overrides.
func (s *Server) createKey(c *call, overrides bool) (reply, error) {
	var body createBody
	present, err := decodeBody(c, whatCreate, &body)
	if err != nil {
		return reply{}, err
	}
	if !present {
		return reply{}, errNoBody(whatCreate)
	}
	if err := checkMetadata(whatCreate, body.Metadata, len(body.Resources)); err != nil {
		return reply{}, err
	}
	if len(body.Resources) != 1 {
		return reply{}, errBadBody(whatCreate, "Only creation of one key per request is supported")
	}
	res := body.Resources[0]
	if res.Type != keyType {
		return reply{}, errInvalidField(whatCreate, "type", keyType)
	}
	if n := utf8.RuneCountInString(res.Name); n < 2 || n > 90 {
		return reply{}, errInvalidField(whatCreate, "name", "a string of 2 to 90 characters")
	}
	if res.Description != "" {
		if n := utf8.RuneCountInString(res.Description); n < 2 || n > 240 {
			return reply{}, errInvalidField(whatCreate, "description", "a string of 2 to 240 characters")
		}
	}
	if err := checkAliases(whatCreate, res.Aliases); err != nil {
		return reply{}, err
	}
	if err := checkTags(res.Tags); err != nil {
		return reply{}, err
	}
	standard := res.Extractable == nil || *res.Extractable
	var expiration *time.Time
	if res.ExpirationDate != "" {
		t, err := time.Parse(time.RFC3339, res.ExpirationDate)
		if err != nil || !t.After(c.now) {
			return reply{}, errInvalidField(whatCreate, "expirationDate", "an RFC 3339 date in the future")
		}
		expiration = &t
	}
	imp := importFields{Payload: res.Payload, EncryptedNonce: res.EncryptedNonce, IV: res.IV, EncryptionAlgorithm: res.EncryptionAlgorithm}
	if imp.secure() && standard {
		return reply{}, errInvalidField(whatCreate, "encryptedNonce", "omitted: secure import (import tokens) is for root keys only")
	}
	var material []byte
	imported := imp.Payload != ""
	if !imp.secure() {
		if material, imported, err = createMaterial(res.Payload, standard); err != nil {
			return reply{}, err
		}
	}
	var rotation *rotationPolicy
	var dualAuth *dualAuthPolicy
	if overrides {
		if res.Rotation != nil {
			if standard {
				return reply{}, errRootRequired(whatCreate, "Rotation policy cannot be set on a standard key")
			}
			if rotation, err = s.applyRotation(whatCreate, nil, res.Rotation, c.now); err != nil {
				return reply{}, err
			}
		}
		if res.DualAuthDelete != nil {
			if dualAuth, err = s.applyDualAuth(whatCreate, nil, res.DualAuthDelete, c.now); err != nil {
				return reply{}, err
			}
		}
	}
	ring := c.r.Header.Get("x-kms-key-ring")
	if ring == "" {
		ring = defaultKeyRing
	} else if !keyRingPattern.MatchString(ring) {
		return reply{}, errInvalidField(whatCreate, "x-kms-key-ring", "2 to 100 letters, digits or dashes")
	}
	if imp.secure() {
		if err := s.ensureTransportKey(c.inst); err != nil {
			return reply{}, err
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if c.inst.rings[ring] == nil {
		return reply{}, errKeyRingNotFound(whatCreate)
	}
	if err := c.inst.checkCreateAccess(standard, imported, imp.secure()); err != nil {
		return reply{}, err
	}
	if imp.secure() {
		if material, err = s.openSecureImport(c, whatCreate, imp); err != nil {
			return reply{}, err
		}
	}
	// Instance policies apply to keys created after them, unless the
	// request overrides them.
	if p := c.inst.enabledPolicy(ipolicyRotation); p != nil && rotation == nil && !standard && p.Attributes != nil && p.Attributes.IntervalMonth != nil {
		rotation = &rotationPolicy{ID: newUUID(), Enabled: true, IntervalMonth: *p.Attributes.IntervalMonth, Created: c.now, Updated: c.now}
	}
	if p := c.inst.enabledPolicy(ipolicyDualAuth); p != nil && dualAuth == nil {
		dualAuth = &dualAuthPolicy{ID: newUUID(), Enabled: true, Created: c.now, Updated: c.now}
	}

	k := newKey(c.inst.id, res.Name, standard, material, imported, ring, c.now)
	k.Description = res.Description
	k.Aliases = slices.Clone(res.Aliases)
	k.Tags = slices.Clone(res.Tags)
	k.Expiration = expiration
	k.Rotation = rotation
	k.DualAuth = dualAuth

	for _, a := range k.Aliases {
		if _, taken := s.aliases[aliasKey(c.inst.id, a)]; taken {
			return reply{}, errInvalidField(whatCreate, "aliases", "unique within the instance")
		}
	}
	if err := s.insert(k); err != nil {
		return reply{}, err
	}
	return reply{status: http.StatusCreated, body: keyCollection(s.view(k, c.now, preferRepresentation(c.r)))}, nil
}

// createMaterial returns the material of a new key: the decoded payload
// when one is given (imported), or 32 random bytes.
func createMaterial(payload string, standard bool) (material []byte, imported bool, err error) {
	if payload == "" {
		return randomBytes(rootMaterialSize), false, nil
	}
	material, err = base64.StdEncoding.DecodeString(payload)
	switch {
	case err != nil:
		return nil, false, errInvalidField(whatCreate, "payload", "a base64 encoded key material: "+err.Error())
	case !standard && !validRootSize(len(material)):
		return nil, false, errInvalidField(whatCreate, "payload", "a base64 encoded 128, 192 or 256 bit key material")
	case standard && (len(material) == 0 || len(material) > maxStandardMaterial):
		return nil, false, errInvalidField(whatCreate, "payload", "a base64 encoded key material of at most 7500 bytes")
	}
	return material, true, nil
}

func validRootSize(n int) bool { return n == 16 || n == 24 || n == 32 }

func checkAliases(what string, aliases []string) error {
	if len(aliases) > maxAliasesPerKey {
		return errInvalidField(what, "aliases", "at most 5 aliases")
	}
	for i, a := range aliases {
		if err := checkAlias(what, "aliases", a); err != nil {
			return err
		}
		if slices.Contains(aliases[:i], a) {
			return errInvalidField(what, "aliases", "a list of distinct aliases")
		}
	}
	return nil
}

func checkAlias(what, field, a string) error {
	if !aliasPattern.MatchString(a) || isUUID(a) || reservedAlias[a] {
		return errInvalidField(what, field,
			"2 to 90 letters, digits, '_' or '-', not a UUID and not a reserved word")
	}
	return nil
}

func checkTags(tags []string) error {
	if len(tags) > maxTags {
		return errInvalidField(whatCreate, "tags", "at most 30 tags")
	}
	for _, t := range tags {
		if n := utf8.RuneCountInString(t); n < 2 || n > 30 || strings.ContainsAny(t, "<>,:&|") {
			return errInvalidField(whatCreate, "tags", "tags of 2 to 30 characters without <>,:&|")
		}
	}
	return nil
}

// preferMinimal reports whether the request asks for no body (Prefer:
// return=minimal).
func preferMinimal(r *http.Request) bool {
	return strings.Contains(r.Header.Get("prefer"), "return=minimal")
}

func preferRepresentation(r *http.Request) bool {
	return strings.Contains(r.Header.Get("prefer"), "return=representation")
}

// getKey serves GET /keys/{id} (withPayload) and GET /keys/{id}/metadata.
func (s *Server) getKey(c *call, withPayload bool) (reply, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.lookup(c)
	if err != nil {
		return reply{}, err
	}
	return reply{status: http.StatusOK, body: keyCollection(s.view(k, c.now, withPayload))}, nil
}

// setKeyRing serves PATCH /keys/{id}: move a key to another key ring.
func (s *Server) setKeyRing(c *call) (reply, error) {
	var body struct {
		KeyRingID string `json:"keyRingID"`
	}
	present, err := decodeBody(c, whatUpdate, &body)
	if err != nil {
		return reply{}, err
	}
	if !present {
		return reply{}, errNoBody(whatUpdate)
	}
	if !keyRingPattern.MatchString(body.KeyRingID) {
		return reply{}, errInvalidField(whatUpdate, "keyRingID", "2 to 100 letters, digits or dashes")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.lookup(c)
	if err != nil {
		return reply{}, err
	}
	if k.Deleted != nil {
		return reply{}, errKeyDeleted(whatUpdate)
	}
	if c.inst.rings[body.KeyRingID] == nil {
		return reply{}, errKeyRingNotFound(whatUpdate)
	}
	err = s.update(k, func(k *key) error {
		k.KeyRingID = body.KeyRingID
		k.touch(c.now)
		return nil
	})
	if err != nil {
		return reply{}, err
	}
	return reply{status: http.StatusOK, body: keyCollection(s.view(k, c.now, false))}, nil
}

// listKeys serves GET /keys.
func (s *Server) listKeys(c *call) (reply, error) {
	q, err := parseListQuery(c, true)
	if err != nil {
		return reply{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := s.selectKeys(q, c)
	keys = page(keys, q.offset, q.limit)
	views := make([]keyView, len(keys))
	for i, k := range keys {
		views[i] = s.view(k, c.now, false)
	}
	return reply{status: http.StatusOK, body: keyCollection(views...)}, nil
}

// countKeys serves HEAD /keys: the number of matching keys in Key-Total.
func (s *Server) countKeys(c *call) (reply, error) {
	q, err := parseListQuery(c, false)
	if err != nil {
		return reply{}, err
	}
	s.mu.Lock()
	n := len(s.selectKeys(q, c))
	s.mu.Unlock()
	return reply{status: http.StatusOK, headers: map[string]string{"Key-Total": strconv.Itoa(n)}}, nil
}

// page returns items[offset : offset+limit], clamped.
func page[T any](items []T, offset, limit int) []T {
	if offset >= len(items) {
		return nil
	}
	items = items[offset:]
	if limit < len(items) {
		items = items[:limit]
	}
	return items
}

// listVersions serves GET /keys/{id}/versions.
func (s *Server) listVersions(c *call) (reply, error) {
	query := c.r.URL.Query()
	limit, err := intParam(query, "limit", 200, 1, 5000, whatVersions)
	if err != nil {
		return reply{}, err
	}
	offset, err := intParam(query, "offset", 0, 0, maxInt, whatVersions)
	if err != nil {
		return reply{}, err
	}
	totalCount, err := boolParam(query, "totalCount", whatVersions)
	if err != nil {
		return reply{}, err
	}
	allStates, err := boolParam(query, "allKeyStates", whatVersions)
	if err != nil {
		return reply{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.lookup(c)
	if err != nil {
		return reply{}, err
	}
	if !allStates {
		switch k.stateAt(c.now) {
		case stateActive:
		case stateDestroyed:
			return reply{}, errKeyDeleted(whatVersions)
		default:
			return reply{}, errInvalidState(whatVersions)
		}
	}
	all := make([]versionView, len(k.Versions))
	for i, v := range k.Versions {
		all[len(all)-1-i] = newVersionView(v) // newest first
	}
	views := page(all, offset, limit)
	if views == nil {
		views = []versionView{}
	}
	md := collectionMetadata{CollectionType: keyVersionType, CollectionTotal: len(views)}
	if totalCount {
		n := len(all)
		md.TotalCount = &n
	}
	return reply{status: http.StatusOK, body: collection[versionView]{Metadata: md, Resources: views}}, nil
}

// deleteKey serves DELETE /keys/{id}.
func (s *Server) deleteKey(c *call) (reply, error) {
	if _, err := boolParam(c.r.URL.Query(), "force", whatDelete); err != nil {
		return reply{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.lookup(c)
	if err != nil {
		return reply{}, err
	}
	if k.Deleted != nil {
		return reply{}, errKeyDeleted(whatDelete)
	}
	if k.dualAuthEnabled() && (!k.deletionAuthorized(c.now) || k.DeletionAuthBy == c.caller) {
		// The authorisation must come from another caller than the delete.
		return reply{}, newAPIError(http.StatusConflict, whatDelete, "AUTHORIZATIONS_NOT_MET",
			"1 prior authorization(s) are required for deletion", nil)
	}
	err = s.update(k, func(k *key) error {
		t := c.now
		k.Deleted = &t
		k.DeletionAuthAt, k.DeletionAuthBy = nil, ""
		k.touch(c.now)
		return nil
	})
	if err != nil {
		return reply{}, err
	}
	if preferRepresentation(c.r) {
		return reply{status: http.StatusOK, body: keyCollection(s.view(k, c.now, false))}, nil
	}
	return reply{status: http.StatusNoContent}, nil
}

// restoreKey serves POST /keys/{id}/restore and ?action=restore.
func (s *Server) restoreKey(c *call) (reply, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.lookup(c)
	if err != nil {
		return reply{}, err
	}
	switch d := k.Deleted; {
	case d == nil:
		return reply{}, errInvalidState(whatRestore)
	case c.now.Before(d.Add(enableRestoreDelay)):
		return reply{}, errTooEarly(whatRestore, "Restore operation is allowed 30s after key is deleted")
	case k.Expiration != nil && !c.now.Before(*k.Expiration):
		return reply{}, newAPIError(http.StatusBadRequest, whatRestore, "KEY_EXPIRED_ERR",
			"Key has expired and cannot be restored", nil)
	case !c.now.Before(d.Add(restoreWindow)):
		return reply{}, newAPIError(http.StatusBadRequest, whatRestore, "KEY_RESTORE_EXPIRED",
			"The key can only be restored within 30 days of its deletion", nil)
	}
	err = s.update(k, func(k *key) error {
		k.Deleted = nil
		k.Suspended = false
		k.touch(c.now)
		return nil
	})
	if err != nil {
		return reply{}, err
	}
	return reply{status: http.StatusCreated, body: keyCollection(s.view(k, c.now, false))}, nil
}

// purgeKey serves DELETE /keys/{id}/purge.
func (s *Server) purgeKey(c *call) (reply, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.lookup(c)
	if err != nil {
		return reply{}, err
	}
	switch d := k.Deleted; {
	case d == nil:
		return reply{}, errInvalidState(whatPurge)
	case c.now.Before(d.Add(purgeDelay)):
		return reply{}, errTooEarly(whatPurge, "Purge operation is allowed 4h0m0s after key is deleted")
	}
	final := s.view(k, c.now, false)
	s.remove(k)
	if err := s.persist(); err != nil {
		s.keys[k.ID] = k
		for _, a := range k.Aliases {
			s.aliases[aliasKey(k.Instance, a)] = k.ID
		}
		return reply{}, err
	}
	if preferRepresentation(c.r) {
		return reply{status: http.StatusOK, body: keyCollection(final)}, nil
	}
	return reply{status: http.StatusNoContent}, nil
}

// aliasView is the wire shape of an alias.
type aliasView struct {
	KeyID        string    `json:"keyId"`
	Alias        string    `json:"alias"`
	CreationDate *jsonTime `json:"creationDate"`
	CreatedBy    string    `json:"createdBy"`
}

// createAlias serves POST /keys/{id}/aliases/{alias}.
func (s *Server) createAlias(c *call) (reply, error) {
	if err := checkAlias(whatAlias, "alias", c.alias); err != nil {
		return reply{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.lookup(c)
	if err != nil {
		return reply{}, err
	}
	if k.Deleted != nil {
		return reply{}, errKeyDeleted(whatAlias)
	}
	out := reply{status: http.StatusCreated, body: collection[aliasView]{
		Metadata:  collectionMetadata{CollectionType: aliasType, CollectionTotal: 1},
		Resources: []aliasView{{KeyID: k.ID, Alias: c.alias, CreationDate: jt(c.now), CreatedBy: createdByID}},
	}}
	ak := aliasKey(k.Instance, c.alias)
	switch owner, taken := s.aliases[ak]; {
	case taken && owner == k.ID:
		return out, nil
	case taken:
		return reply{}, errInvalidField(whatAlias, "alias", "unique within the instance")
	case len(k.Aliases) >= maxAliasesPerKey:
		return reply{}, errInvalidField(whatAlias, "alias", "one of at most 5 aliases of the key")
	}
	err = s.update(k, func(k *key) error {
		k.Aliases = append(k.Aliases, c.alias)
		s.aliases[ak] = k.ID
		return nil
	})
	if err != nil {
		delete(s.aliases, ak)
		return reply{}, err
	}
	return out, nil
}

// deleteAlias serves DELETE /keys/{id}/aliases/{alias}.
func (s *Server) deleteAlias(c *call) (reply, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.lookup(c)
	if err != nil {
		return reply{}, err
	}
	i := slices.Index(k.Aliases, c.alias)
	if i < 0 {
		return reply{}, plainError(http.StatusNotFound, "Alias could not be found: the key has no alias "+strconv.Quote(c.alias))
	}
	err = s.update(k, func(k *key) error {
		k.Aliases = slices.Delete(k.Aliases, i, i+1)
		delete(s.aliases, aliasKey(k.Instance, c.alias))
		return nil
	})
	if err != nil {
		s.aliases[aliasKey(k.Instance, c.alias)] = k.ID
		return reply{}, err
	}
	return reply{status: http.StatusNoContent}, nil
}

// syncKey serves POST /keys/{id}/actions/sync. kplocal has no
// registrations, so there is nothing to synchronise.
func (s *Server) syncKey(c *call) (reply, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.lookup(c)
	if err != nil {
		return reply{}, err
	}
	if k.Deleted != nil {
		return reply{}, errKeyDeleted(whatAction)
	}
	return reply{status: http.StatusNoContent}, nil
}
