package envelope

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"sync"
	"time"

	"github.com/kpcrypt/kpcrypt/envelope/internal/format"
)

// DataKeyReuse lets an [Encrypter] use one DEK, wrapped once by each KEK,
// for several streams: one KMS call per KEK serves up to MaxStreams streams,
// MaxAge or MaxBytes of plaintext, whichever ends first. Each stream still
// gets its own salt, so its chunk key, nonces, commitment and header MAC are
// its own; what the streams share is the wrapped DEK in their slots, whose
// associated data then binds the encryption context rather than each file
// (FORMAT.md §3.2, recipe 2).
//
// Zero fields take the defaults: 100 streams, 1 minute, 1 GiB. MaxStreams 1
// turns reuse off. MaxAge counts from the first stream a DEK serves.
//
// The Encrypter renews the shared DEK ahead: once the one in use has served
// half of MaxStreams, the next stream's caller wraps a successor, while the
// other callers go on with the DEK in use. It starts with one DEK wrapped
// ahead, and each time writers find none left (the renewals did not keep
// up) it keeps one more, up to Ahead. No lock is held across a KMS call,
// and a caller that finds no DEK left waits for one until its context
// ends. So the KMS's latency does not stop the writers: encryption runs at
// up to Ahead × MaxStreams ÷ latency streams per second. DEKs wrapped
// ahead and never used (as many as were kept ahead, at most Ahead) cost
// their KMS calls for nothing; [Encrypter.ClearDataKey] zeroes them.
type DataKeyReuse struct {
	MaxStreams int
	MaxAge     time.Duration
	MaxBytes   int64
	// Ahead is the most DEKs kept wrapped ahead of need, counting those
	// whose wrapping is in flight; zero means 8.
	Ahead int
}

func (r *DataKeyReuse) ahead() int {
	if r.Ahead <= 0 {
		return 8
	}
	return r.Ahead
}

func (r *DataKeyReuse) limits() (int, time.Duration, int64) {
	n, age, b := r.MaxStreams, r.MaxAge, r.MaxBytes
	if n == 0 {
		n = 100
	}
	if age == 0 {
		age = time.Minute
	}
	if b == 0 {
		b = 1 << 30
	}
	return n, age, b
}

// sharedKey is a DEK in use by an Encrypter for several streams.
type sharedKey struct {
	dek     []byte
	slots   []format.Slot
	created time.Time
	streams int
	bytes   int64
}

// DataKeyCache keeps unwrapped DEKs for a [Decrypter], so that files sharing
// a DEK cost one KMS call. Entries are keyed by KEK URI, wrapped DEK and
// associated data; they expire after a TTL, the least recently used is
// evicted beyond the size limit, and an evicted DEK is zeroed. It is safe
// for concurrent use.
type DataKeyCache struct {
	// Telemetry receives the cache's hits, misses and evictions; nil means
	// OpenTelemetry's global meter provider. Set it before first use.
	Telemetry *Telemetry

	max int
	ttl time.Duration
	now func() time.Time
	tel telemetryOnce

	mu      sync.Mutex
	entries map[[32]byte]*list.Element
	lru     *list.List // front: most recently used
	pending map[[32]byte]chan struct{}
}

type cacheEntry struct {
	key     [32]byte
	dek     []byte
	version string
	expires time.Time
}

// NewDataKeyCache returns a cache of at most maxEntries DEKs, each kept for
// ttl. Zero values mean 1000 entries and 5 minutes.
func NewDataKeyCache(maxEntries int, ttl time.Duration) *DataKeyCache {
	if maxEntries <= 0 {
		maxEntries = 1000
	}
	if ttl <= 0 {
		ttl = 5 * time.Minute
	}
	return &DataKeyCache{max: maxEntries, ttl: ttl, now: time.Now, entries: map[[32]byte]*list.Element{}, lru: list.New(),
		pending: map[[32]byte]chan struct{}{}}
}

func cacheKey(uri string, wrapped, aad []byte) [32]byte {
	h := sha256.New()
	for _, part := range [][]byte{[]byte(uri), wrapped, aad} {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(part)))
		h.Write(n[:])
		h.Write(part)
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}

// acquire returns a copy of a cached DEK. On a miss it makes the caller the
// one that fetches it and returns release, which the caller must call once
// it has put the DEK (or failed); callers that miss the same entry
// meanwhile wait for release, then look again.
func (c *DataKeyCache) acquire(ctx context.Context, uri string, wrapped, aad []byte) (dek []byte, version string, release func(), err error) {
	k := cacheKey(uri, wrapped, aad)
	for {
		c.mu.Lock()
		if dek, version, ok := c.lookup(k); ok {
			c.mu.Unlock()
			return dek, version, nil, nil
		}
		wait, busy := c.pending[k]
		if !busy {
			c.tel.get(c.Telemetry).count(missCounter, 1)
			done := make(chan struct{})
			c.pending[k] = done
			c.mu.Unlock()
			return nil, "", func() {
				c.mu.Lock()
				delete(c.pending, k)
				c.mu.Unlock()
				close(done)
			}, nil
		}
		c.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, "", nil, ctx.Err()
		}
	}
}

// get returns a copy of a cached DEK.
func (c *DataKeyCache) get(uri string, wrapped, aad []byte) ([]byte, string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lookup(cacheKey(uri, wrapped, aad))
}

// lookup finds an entry; c.mu is held.
func (c *DataKeyCache) lookup(k [32]byte) ([]byte, string, bool) {
	el, ok := c.entries[k]
	if !ok {
		return nil, "", false
	}
	e := el.Value.(*cacheEntry)
	ins := c.tel.get(c.Telemetry)
	if !c.now().Before(e.expires) {
		c.remove(el)
		ins.countEviction("expired")
		return nil, "", false
	}
	ins.count(hitCounter, 1)
	c.lru.MoveToFront(el)
	return slices.Clone(e.dek), e.version, true
}

// put stores a copy of dek.
func (c *DataKeyCache) put(uri string, wrapped, aad, dek []byte, version string) {
	k := cacheKey(uri, wrapped, aad)
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[k]; ok {
		c.remove(el)
	}
	e := &cacheEntry{key: k, dek: slices.Clone(dek), version: version, expires: c.now().Add(c.ttl)}
	c.entries[k] = c.lru.PushFront(e)
	for c.lru.Len() > c.max {
		c.remove(c.lru.Back())
		c.tel.get(c.Telemetry).countEviction("size")
	}
}

func (c *DataKeyCache) remove(el *list.Element) {
	e := c.lru.Remove(el).(*cacheEntry)
	clear(e.dek)
	delete(c.entries, e.key)
}

// Len returns the number of cached DEKs.
func (c *DataKeyCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// Purge zeroes and drops every cached DEK.
func (c *DataKeyCache) Purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.lru.Len() > 0 {
		c.remove(c.lru.Back())
	}
}
