package kplocal

import (
	"crypto/rsa"
	"time"
)

// instance is one Key Protect (or HPCS) service instance: its key rings,
// instance policies and secure-import state. Its keys live in Server.keys
// with key.Instance naming it. Fields are guarded by Server.mu, except id
// and account, which never change.
type instance struct {
	id      string
	account string // account ID of its CRNs

	rings    map[string]*keyRing        // by ring ID; "default" always exists
	policies map[string]*instancePolicy // by policy type

	// Secure import (memory only, never persisted).
	transport   *rsa.PrivateKey // the instance's import / transport key pair, made on first use
	importToken *importToken
	locker      *locker
}

func newInstance(id, account string, now time.Time) *instance {
	return &instance{
		id:       id,
		account:  account,
		rings:    map[string]*keyRing{defaultKeyRing: {ID: defaultKeyRing, Created: now, CreatedBy: createdByID}},
		policies: make(map[string]*instancePolicy),
	}
}

// keyRing is a key ring of an instance. Its fields are its persisted form.
type keyRing struct {
	ID        string    `json:"id"`
	Created   time.Time `json:"creationDate"`
	CreatedBy string    `json:"createdBy"`
}

// instanceState is the persisted form of an instance's rings and policies.
type instanceState struct {
	ID       string            `json:"id"`
	Rings    []*keyRing        `json:"keyRings,omitempty"`
	Policies []*instancePolicy `json:"policies,omitempty"`
}
