// Package sha256pair lends SHA-256 digests to a sequence of HMACs (an HKDF
// and what follows it), so that a key derivation allocates two digests
// rather than two per HMAC.
package sha256pair

import (
	"crypto/sha256"
	"hash"
)

// Pair hands out two SHA-256 digests in turn, each reset. An HMAC takes two
// and is done with them before the next one starts, so Next may be given
// as the hash constructor of crypto/hkdf and crypto/hmac for HMACs computed
// one after another, never at once. The zero value is ready to use.
type Pair struct {
	d [2]hash.Hash
	n int
}

// Next returns the next digest, reset.
func (p *Pair) Next() hash.Hash {
	i := p.n % 2
	p.n++
	if p.d[i] == nil {
		p.d[i] = sha256.New()
	} else {
		p.d[i].Reset()
	}
	return p.d[i]
}
