package kplocal

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"slices"
	"strconv"
	"time"
)

// Key states, as Key Protect numbers them.
const (
	stateActive      = 1
	stateSuspended   = 2
	stateDeactivated = 3
	stateDestroyed   = 5
)

// Time rules of Key Protect that kplocal applies with its clock.
const (
	enableRestoreDelay = 30 * time.Second    // enable / restore not before 30 s after the last change
	purgeDelay         = 4 * time.Hour       // purge allowed 4 h after deletion
	restoreWindow      = 30 * 24 * time.Hour // restore allowed up to 30 d after deletion
	autoPurgeAfter     = 90 * 24 * time.Hour // deleted keys vanish after 90 d
	dualAuthWindow     = 7 * 24 * time.Hour  // a setKeyForDeletion authorisation lasts 7 d
	defaultKeyRing     = "default"           // key ring of keys created without x-kms-key-ring
	createdByID        = "ServiceId-kplocal" // createdBy / updatedBy / deletedBy of everything
)

const (
	keyType          = "application/vnd.ibm.kms.key+json"
	policyType       = "application/vnd.ibm.kms.policy+json"
	keyVersionType   = "application/vnd.ibm.kms.key.version+json"
	aliasType        = "application/vnd.ibm.kms.alias+json"
	rootMaterialSize = 32 // generated root and standard keys are 256-bit
)

// nonactiveReasons are kplocal's nonactiveStateReason values (Key Protect
// leaves their meaning undocumented): 2 for a disabled (suspended) key, 3
// for an expired (deactivated) key, 20 for a deleted (destroyed) key.
var nonactiveReasons = map[int]int{stateSuspended: 2, stateDeactivated: 3, stateDestroyed: 20}

// key is a stored key. Its exported fields are its persisted form.
type key struct {
	ID          string     `json:"id"`
	Instance    string     `json:"instance,omitempty"` // empty in state files of old kplocal versions: the primary instance
	Name        string     `json:"name"`
	Description string     `json:"description,omitempty"`
	Aliases     []string   `json:"aliases,omitempty"`
	Tags        []string   `json:"tags,omitempty"`
	Standard    bool       `json:"extractable"` // true: standard key; false: root key
	Imported    bool       `json:"imported"`
	KeyRingID   string     `json:"keyRingID"`
	Suspended   bool       `json:"suspended,omitempty"`
	Expiration  *time.Time `json:"expirationDate,omitempty"`
	Created     time.Time  `json:"creationDate"`
	Updated     *time.Time `json:"lastUpdateDate,omitempty"`
	Rotated     *time.Time `json:"lastRotateDate,omitempty"`
	Deleted     *time.Time `json:"deletionDate,omitempty"`

	// Versions holds the key's material, oldest first; the last one is
	// current. A standard key has exactly one.
	Versions []version `json:"versions"`

	Rotation       *rotationPolicy `json:"rotationPolicy,omitempty"`
	DualAuth       *dualAuthPolicy `json:"dualAuthPolicy,omitempty"`
	DeletionAuthAt *time.Time      `json:"deletionAuthorizedAt,omitempty"` // setKeyForDeletion time
	DeletionAuthBy string          `json:"deletionAuthorizedBy,omitempty"` // who called setKeyForDeletion
}

// version is one generation of a key's material.
type version struct {
	ID       string    `json:"id"`
	Created  time.Time `json:"creationDate"`
	Material []byte    `json:"material"`
}

// rotationPolicy is a key's rotation policy.
type rotationPolicy struct {
	ID            string    `json:"id"`
	Enabled       bool      `json:"enabled"`
	IntervalMonth int       `json:"intervalMonth"`
	Created       time.Time `json:"creationDate"`
	Updated       time.Time `json:"lastUpdateDate"`
}

// dualAuthPolicy is a key's dual-authorisation-delete policy.
type dualAuthPolicy struct {
	ID      string    `json:"id"`
	Enabled bool      `json:"enabled"`
	Created time.Time `json:"creationDate"`
	Updated time.Time `json:"lastUpdateDate"`
}

// clone returns a deep copy of k, so a failed change can be undone.
func (k *key) clone() *key {
	c := *k
	c.Aliases = slices.Clone(k.Aliases)
	c.Tags = slices.Clone(k.Tags)
	c.Versions = slices.Clone(k.Versions) // material slices are never mutated in place
	if k.Rotation != nil {
		r := *k.Rotation
		c.Rotation = &r
	}
	if k.DualAuth != nil {
		d := *k.DualAuth
		c.DualAuth = &d
	}
	return &c
}

// current returns the key's current (latest) version.
func (k *key) current() version { return k.Versions[len(k.Versions)-1] }

// findVersion returns the version with the given ID.
func (k *key) findVersion(id string) (version, bool) {
	for _, v := range k.Versions {
		if v.ID == id {
			return v, true
		}
	}
	return version{}, false
}

// stateAt returns the key's state at now: destroyed once deleted,
// deactivated once past its expiration date, suspended when disabled.
func (k *key) stateAt(now time.Time) int {
	switch {
	case k.Deleted != nil:
		return stateDestroyed
	case k.Expiration != nil && !now.Before(*k.Expiration):
		return stateDeactivated
	case k.Suspended:
		return stateSuspended
	default:
		return stateActive
	}
}

// dualAuthEnabled reports whether deleting the key needs a prior
// authorisation.
func (k *key) dualAuthEnabled() bool { return k.DualAuth != nil && k.DualAuth.Enabled }

// deletionAuthorized reports whether a setKeyForDeletion authorisation is
// in force at now.
func (k *key) deletionAuthorized(now time.Time) bool {
	return k.dualAuthEnabled() && k.DeletionAuthAt != nil && now.Before(k.DeletionAuthAt.Add(dualAuthWindow))
}

// touch records a change at now.
func (k *key) touch(now time.Time) {
	t := now
	k.Updated = &t
}

// lastChange is when the key last changed (its creation if never updated).
func (k *key) lastChange() time.Time {
	if k.Updated != nil {
		return *k.Updated
	}
	return k.Created
}

// jsonTime marshals as an RFC 3339 UTC timestamp with second precision,
// as Key Protect writes them (2020-03-12T03:37:32Z).
type jsonTime time.Time

// MarshalJSON implements json.Marshaler.
func (t jsonTime) MarshalJSON() ([]byte, error) {
	return strconv.AppendQuote(nil, time.Time(t).UTC().Format(time.RFC3339)), nil
}

func timePtr(t *time.Time) *jsonTime {
	if t == nil {
		return nil
	}
	j := jsonTime(*t)
	return &j
}

func jt(t time.Time) *jsonTime { return timePtr(&t) }

// Wire shapes of a key.
type (
	collectionMetadata struct {
		CollectionType  string `json:"collectionType"`
		CollectionTotal int    `json:"collectionTotal"`
		TotalCount      *int   `json:"totalCount,omitempty"`
	}

	collection[T any] struct {
		Metadata  collectionMetadata `json:"metadata"`
		Resources []T                `json:"resources"`
	}

	keyView struct {
		Type                  string            `json:"type"`
		ID                    string            `json:"id"`
		Name                  string            `json:"name"`
		Description           string            `json:"description,omitempty"`
		Aliases               []string          `json:"aliases,omitempty"`
		Tags                  []string          `json:"tags,omitempty"`
		State                 int               `json:"state"`
		NonactiveStateReason  *int              `json:"nonactiveStateReason,omitempty"`
		ExpirationDate        *jsonTime         `json:"expirationDate,omitempty"`
		Extractable           bool              `json:"extractable"`
		CRN                   string            `json:"crn"`
		Imported              bool              `json:"imported"`
		KeyRingID             string            `json:"keyRingID"`
		CreationDate          *jsonTime         `json:"creationDate"`
		CreatedBy             string            `json:"createdBy"`
		AlgorithmType         string            `json:"algorithmType"`
		AlgorithmMetadata     algorithmMetadata `json:"algorithmMetadata"`
		AlgorithmBitSize      int               `json:"algorithmBitSize"`
		AlgorithmMode         string            `json:"algorithmMode"`
		LastUpdateDate        *jsonTime         `json:"lastUpdateDate,omitempty"`
		LastRotateDate        *jsonTime         `json:"lastRotateDate,omitempty"`
		KeyVersion            versionView       `json:"keyVersion"`
		DualAuthDelete        dualAuthView      `json:"dualAuthDelete"`
		Rotation              *rotationSetting  `json:"rotation,omitempty"`
		Deleted               bool              `json:"deleted"`
		DeletionDate          *jsonTime         `json:"deletionDate,omitempty"`
		DeletedBy             string            `json:"deletedBy,omitempty"`
		RestoreAllowed        *bool             `json:"restoreAllowed,omitempty"`
		RestoreExpirationDate *jsonTime         `json:"restoreExpirationDate,omitempty"`
		PurgeAllowed          *bool             `json:"purgeAllowed,omitempty"`
		PurgeAllowedFrom      *jsonTime         `json:"purgeAllowedFrom,omitempty"`
		PurgeScheduledOn      *jsonTime         `json:"purgeScheduledOn,omitempty"`
		Payload               string            `json:"payload,omitempty"`
	}

	algorithmMetadata struct {
		BitLength string `json:"bitLength"`
		Mode      string `json:"mode"`
	}

	versionView struct {
		ID           string    `json:"id"`
		CreationDate *jsonTime `json:"creationDate,omitempty"`
	}

	dualAuthView struct {
		Enabled           bool      `json:"enabled"`
		KeySetForDeletion *bool     `json:"keySetForDeletion,omitempty"`
		AuthExpiration    *jsonTime `json:"authExpiration,omitempty"`
	}

	rotationSetting struct {
		Enabled       bool `json:"enabled"`
		IntervalMonth int  `json:"interval_month"`
	}
)

func newVersionView(v version) versionView {
	return versionView{ID: v.ID, CreationDate: jt(v.Created)}
}

// view renders k for the wire. withPayload adds a standard key's material
// (GET /keys/{id} only); a root key's material is never rendered.
func (s *Server) view(k *key, now time.Time, withPayload bool) keyView {
	cur := k.current()
	v := keyView{
		Type:              keyType,
		ID:                k.ID,
		Name:              k.Name,
		Description:       k.Description,
		Aliases:           k.Aliases,
		Tags:              k.Tags,
		State:             k.stateAt(now),
		ExpirationDate:    timePtr(k.Expiration),
		Extractable:       k.Standard,
		CRN:               s.crn(k.Instance, "key", k.ID),
		Imported:          k.Imported,
		KeyRingID:         k.KeyRingID,
		CreationDate:      jt(k.Created),
		CreatedBy:         createdByID,
		AlgorithmType:     "AES",
		AlgorithmMetadata: algorithmMetadata{BitLength: strconv.Itoa(8 * len(cur.Material)), Mode: "Deprecated"},
		AlgorithmBitSize:  8 * len(cur.Material),
		AlgorithmMode:     "Deprecated",
		LastUpdateDate:    timePtr(k.Updated),
		LastRotateDate:    timePtr(k.Rotated),
		KeyVersion:        newVersionView(cur),
		DualAuthDelete:    dualAuthView{Enabled: k.dualAuthEnabled()},
		Deleted:           k.Deleted != nil,
	}
	if reason, ok := nonactiveReasons[v.State]; ok {
		v.NonactiveStateReason = &reason
	}
	if k.deletionAuthorized(now) {
		yes := true
		v.DualAuthDelete.KeySetForDeletion = &yes
		v.DualAuthDelete.AuthExpiration = jt(k.DeletionAuthAt.Add(dualAuthWindow))
	}
	if k.Rotation != nil {
		v.Rotation = &rotationSetting{Enabled: k.Rotation.Enabled, IntervalMonth: k.Rotation.IntervalMonth}
	}
	if d := k.Deleted; d != nil {
		restoreUntil := d.Add(restoreWindow)
		if k.Expiration != nil && k.Expiration.Before(restoreUntil) {
			restoreUntil = *k.Expiration
		}
		// Not within 30 s of the deletion, nor after the restore window.
		restoreAllowed := !now.Before(d.Add(enableRestoreDelay)) && now.Before(restoreUntil)
		purgeAllowed := !now.Before(d.Add(purgeDelay))
		v.DeletionDate = jt(*d)
		v.DeletedBy = createdByID
		v.RestoreAllowed = &restoreAllowed
		v.RestoreExpirationDate = jt(restoreUntil)
		v.PurgeAllowed = &purgeAllowed
		v.PurgeAllowedFrom = jt(d.Add(purgeDelay))
		v.PurgeScheduledOn = jt(d.Add(autoPurgeAfter))
	}
	if withPayload && k.Standard && k.Deleted == nil {
		v.Payload = base64.StdEncoding.EncodeToString(cur.Material)
	}
	return v
}

// keyCollection wraps key views in Key Protect's collection envelope.
func keyCollection(views ...keyView) collection[keyView] {
	if views == nil {
		views = []keyView{}
	}
	return collection[keyView]{
		Metadata:  collectionMetadata{CollectionType: keyType, CollectionTotal: len(views)},
		Resources: views,
	}
}

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (it aborts the program instead)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

// randomBytes returns n bytes from crypto/rand.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails, see newUUID
	return b
}

// randomToken returns n random bytes as unpadded base64url text.
func randomToken(n int) string {
	return base64.RawURLEncoding.EncodeToString(randomBytes(n))
}

// isUUID reports whether s has the shape of a UUID.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}
