package envelope

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/kpcrypt/kpcrypt/kms"
)

// DefaultVersionsTTL is how long a [Decrypter] enforcing MinKeyVersions
// keeps a KEK's list of versions unless Decrypter.VersionsTTL says
// otherwise.
const DefaultVersionsTTL = 5 * time.Minute

// versionCache keeps the version lists of KEKs, by URI, for a Decrypter.
// One caller at a time fetches a given KEK's list; the others wait for it,
// honouring their contexts.
type versionCache struct {
	mu      sync.Mutex
	entries map[string]*versionEntry
}

type versionEntry struct {
	versions []string
	expires  time.Time
	pending  chan struct{} // non-nil while a fetch is in flight
}

// list returns the versions of the KEK vl, from the cache unless they are
// older than ttl or refresh is set. A ttl below zero turns the cache off.
func (c *versionCache) list(ctx context.Context, ins *instruments, vl kms.VersionLister, ttl time.Duration, now func() time.Time, refresh bool) ([]string, error) {
	fetch := func(ctx context.Context) (v []string, err error) {
		err = ins.kmsCall(ctx, "versions", vl.URI(), func(ctx context.Context) error {
			v, err = vl.Versions(ctx)
			return err
		})
		return v, err
	}
	if ttl < 0 {
		return fetch(ctx)
	}
	uri := vl.URI()
	for {
		c.mu.Lock()
		if c.entries == nil {
			c.entries = map[string]*versionEntry{}
		}
		e := c.entries[uri]
		if e == nil {
			e = &versionEntry{}
			c.entries[uri] = e
		}
		if e.pending == nil && e.versions != nil && !refresh && now().Before(e.expires) {
			v := e.versions
			c.mu.Unlock()
			return v, nil
		}
		if wait := e.pending; wait != nil {
			c.mu.Unlock()
			select {
			case <-wait:
				// A fresh list is what a refresh asked for.
				refresh = false
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		done := make(chan struct{})
		e.pending = done
		c.mu.Unlock()

		versions, err := func() (v []string, err error) {
			// Even if the KEK panics, the waiters go on.
			defer func() {
				c.mu.Lock()
				e.pending = nil
				if err == nil && v != nil {
					e.versions, e.expires = slices.Clip(v), now().Add(ttl)
				}
				c.mu.Unlock()
				close(done)
			}()
			return fetch(ctx)
		}()
		return versions, err
	}
}
