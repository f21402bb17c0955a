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
// them has a slot's exact URI, opens the slot's URI with a resolver. So a
// file whose slot names a Key Protect key opens with credentials from the
// environment and no KEK given. Opened KEKs are kept for later slots.
type ResolvingKeyring struct {
	// KEKs are offered first.
	KEKs KEKs
	// Resolver opens slot URIs; schemes it lacks are skipped.
	Resolver kms.Resolver

	mu     sync.Mutex
	opened map[string]kms.KEK
}

// KEKsFor implements [Keyring].
func (r *ResolvingKeyring) KEKsFor(ctx context.Context, uri string) ([]kms.KEK, error) {
	keks, _ := r.KEKs.KEKsFor(ctx, uri)
	if len(keks) > 0 && keks[0].URI() == uri {
		return keks, nil
	}
	if _, ok := r.Resolver[kms.Scheme(uri)]; !ok {
		return keks, nil
	}
	r.mu.Lock()
	kek, ok := r.opened[uri]
	r.mu.Unlock()
	if !ok {
		var err error
		if kek, err = r.Resolver.Open(ctx, uri); err != nil {
			return keks, err
		}
		r.mu.Lock()
		if r.opened == nil {
			r.opened = map[string]kms.KEK{}
		}
		r.opened[uri] = kek
		r.mu.Unlock()
	}
	return append([]kms.KEK{kek}, keks...), nil
}
