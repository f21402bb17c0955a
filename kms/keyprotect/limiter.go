package keyprotect

import (
	"context"
	"net/http"
	"sync"
)

// limiter bounds a client's requests in flight, and adapts the bound to the
// service's answers, AIMD-style (as TCP does): a 429 halves it, and each
// answer that is not a 429 raises it by 1/bound, so that a whole round of
// successes raises it by one, up to the configured maximum. So a client
// that meets a rate limit backs off at once and probes its way back up,
// instead of sending its full concurrency into a limit again and again.
type limiter struct {
	mu    sync.Mutex
	limit float64 // current bound, 1 ≤ limit ≤ max
	max   int
	inUse int
	wake  chan struct{} // closed and replaced when a slot frees
}

func newLimiter(max int) *limiter {
	return &limiter{limit: float64(max), max: max, wake: make(chan struct{})}
}

// acquire waits for a slot, or until ctx is done.
func (l *limiter) acquire(ctx context.Context) error {
	for {
		l.mu.Lock()
		if l.inUse < int(l.limit) {
			l.inUse++
			l.mu.Unlock()
			return nil
		}
		wake := l.wake
		l.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// release frees a slot and adapts the bound to the answer's status (0 for
// none).
func (l *limiter) release(status int) {
	l.mu.Lock()
	l.inUse--
	switch {
	case status == http.StatusTooManyRequests:
		l.limit = max(1, l.limit/2)
	case status != 0:
		l.limit = min(float64(l.max), l.limit+1/l.limit)
	}
	close(l.wake)
	l.wake = make(chan struct{})
	l.mu.Unlock()
}

// bound returns the current bound, for tests.
func (l *limiter) bound() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return int(l.limit)
}
