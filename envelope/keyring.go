package envelope

import (
	"context"
	"sync"

	"github.com/kpcrypt/kpcrypt/kms"
)

// Keyring finds the KEKs to try on a key slot.
type Keyring interface {
	// KEKsFor returns the KEKs to try on a slot whose KEK URI is uri, the
	// most likely first. An empty list means none applies.
	KEKsFor(ctx context.Context, uri string) ([]kms.KEK, error)
}

// KEKs is a fixed list of KEKs used as a Keyring. For a slot it offers the
// KEKs whose URI is the slot's, then the others of the same scheme (a local
// key file may be named by another path than the one recorded).
type KEKs []kms.KEK

// KEKsFor implements [Keyring].
func (k KEKs) KEKsFor(_ context.Context, uri string) ([]kms.KEK, error) {
	var exact, others []kms.KEK
	for _, kek := range k {
		switch {
		case kek.URI() == uri:
			exact = append(exact, kek)
		case kms.Scheme(kek.URI()) == kms.Scheme(uri):
			others = append(others, kek)
		}
	}
	return append(exact, others...), nil
}

// ResolvingKeyring offers the KEKs of a fixed list first and, when none of
// them has a slot's exact URI, may open the slot's URI with a resolver.
//
// A slot's URI comes from the file, and a file is hostile until its header
// authenticates, which needs a KEK first. So a slot URI is opened only when
// Filter allows it, and what is opened is the URI Filter returns: the
// user's trust configuration decides which Key Protect instances, key files
// and tokens a file may name, never the file (see [kms.DiscoveryFilter]).
// With a nil Filter no slot URI is opened at all, and the keyring offers
// only KEKs. Opened KEKs are kept for later slots, by the URI opened.
type ResolvingKeyring struct {
	// KEKs are offered first.
	KEKs KEKs
	// Resolver opens the URIs Filter returns; schemes it lacks are skipped.
	Resolver kms.Resolver
	// Filter decides which slot URIs may be opened; nil means none.
	Filter kms.DiscoveryFilter

	mu     sync.Mutex
	opened map[string]kms.KEK
}

// KEKsFor implements [Keyring]. A slot URI that Filter refuses gives an
// error matching [kms.ErrUntrusted], with the given KEKs still offered.
func (r *ResolvingKeyring) KEKsFor(ctx context.Context, uri string) ([]kms.KEK, error) {
	keks, _ := r.KEKs.KEKsFor(ctx, uri)
	if len(keks) > 0 && keks[0].URI() == uri {
		return keks, nil
	}
	if r.Filter == nil {
		return keks, nil
	}
	open, err := r.Filter.Discover(uri)
	if err != nil {
		return keks, err
	}
	if _, ok := r.Resolver[kms.Scheme(open)]; !ok {
		return keks, nil
	}
	r.mu.Lock()
	kek, ok := r.opened[open]
	r.mu.Unlock()
	if !ok {
		if kek, err = r.Resolver.Open(ctx, open); err != nil {
			return keks, err
		}
		r.mu.Lock()
		if r.opened == nil {
			r.opened = map[string]kms.KEK{}
		}
		r.opened[open] = kek
		r.mu.Unlock()
	}
	return append([]kms.KEK{kek}, keks...), nil
}
