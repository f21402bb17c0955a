package keyprotect

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpcrypt/kpcrypt/kms"
)

// sleeps records the waits of a client instead of waiting.
type sleeps struct {
	mu sync.Mutex
	d  []time.Duration
}

func (s *sleeps) sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	s.d = append(s.d, d)
	s.mu.Unlock()
	return ctx.Err()
}

func (s *sleeps) waits() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.d...)
}

const retryInstance = "9d3c1f2e-4b5a-4c6d-8e7f-0a1b2c3d4e5f"

func retryClient(t *testing.T, h http.HandlerFunc) (*Client, *sleeps) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c, err := New(Config{BaseURL: srv.URL, InstanceID: retryInstance, Token: StaticToken("t")})
	if err != nil {
		t.Fatal(err)
	}
	s := &sleeps{}
	c.sleep = s.sleep
	return c, s
}

const keyBody = `{"metadata":{"collectionType":"application/vnd.ibm.kms.key+json","collectionTotal":1},"resources":[{"id":"k1","name":"n","keyVersion":{"id":"v1"}}]}`

// Retry-After is a floor under the jittered backoff, never a replacement:
// "Retry-After: 0" once made five attempts land within a millisecond.
func TestRetryAfterIsAFloor(t *testing.T) {
	for _, ra := range []string{"0", "2"} {
		var n atomic.Int64
		c, s := retryClient(t, func(w http.ResponseWriter, r *http.Request) {
			if n.Add(1) <= 3 {
				w.Header().Set("Retry-After", ra)
				w.WriteHeader(http.StatusTooManyRequests)
				return
			}
			w.Write([]byte(keyBody))
		})
		if _, err := c.GetKey(t.Context(), "k1"); err != nil {
			t.Fatal(err)
		}
		waits := s.waits()
		if len(waits) != 3 {
			t.Fatalf("Retry-After %s: %d waits, want 3", ra, len(waits))
		}
		var total time.Duration
		for _, d := range waits {
			if ra == "2" && d < 2*time.Second {
				t.Errorf("waited %v under Retry-After: 2", d)
			}
			total += d
		}
		if total == 0 {
			t.Errorf("Retry-After %s: no backoff at all between attempts", ra)
		}
	}
}

// A Retry-After longer than what is left of the deadline ends the call at
// once with the rate-limit error, without waiting.
func TestRetryAfterPastTheDeadline(t *testing.T) {
	c, s := retryClient(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "3600")
		w.WriteHeader(http.StatusTooManyRequests)
	})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	_, err := c.GetKey(ctx, "k1")
	if !errors.Is(err, ErrRateLimited) || !errors.Is(err, kms.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrRateLimited", err)
	}
	if w := s.waits(); len(w) != 0 {
		t.Fatalf("waited %v past the deadline", w)
	}
}

// After 429s the client lowers its requests in flight (AIMD), then climbs
// back as answers succeed.
func TestInFlightAdaptsToRateLimits(t *testing.T) {
	var inFlight, peak atomic.Int64
	var limited atomic.Int64
	c, _ := retryClient(t, func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		if n > 4 {
			limited.Add(1)
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		w.Write([]byte(keyBody))
	})
	c.attempts = 50
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range 64 {
		wg.Go(func() {
			if _, err := c.GetKey(t.Context(), "k1"); err != nil {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d calls failed", failed.Load())
	}
	if limited.Load() == 0 {
		t.Skip("the server never limited: nothing to adapt to")
	}
	if b := c.inFlight.bound(); b >= 64 {
		t.Fatalf("bound %d after %d rate-limited answers: no decrease", b, limited.Load())
	}
	l := newLimiter(64)
	l.release(http.StatusTooManyRequests)
	if l.bound() != 32 {
		t.Fatalf("one 429 left the bound at %d, want 32", l.bound())
	}
	for range 32 {
		l.release(http.StatusOK)
	}
	if l.bound() != 33 {
		t.Fatalf("a round of successes left the bound at %d, want 33", l.bound())
	}
}

// A rotation whose answer is lost is not repeated blindly: the client
// sees that the key rotated, and reports success.
func TestRotateLostAnswer(t *testing.T) {
	var rotations atomic.Int64
	var mu sync.Mutex
	version := "v1"
	c, _ := retryClient(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/actions/rotate") {
			if rotations.Add(1) > 1 {
				w.WriteHeader(http.StatusConflict)
				w.Write([]byte(`{"resources":[{"errorMsg":"Conflict","reasons":[{"code":"KEY_ROTATION_NOT_PERMITTED"}]}]}`))
				return
			}
			mu.Lock()
			version = "v2"
			mu.Unlock()
			w.WriteHeader(http.StatusBadGateway) // served, answer lost
			return
		}
		mu.Lock()
		v := version
		mu.Unlock()
		w.Write([]byte(strings.Replace(keyBody, `"v1"`, `"`+v+`"`, 1)))
	})
	if err := c.Rotate(t.Context(), "k1"); err != nil {
		t.Fatalf("rotate with a lost answer: %v", err)
	}
	if n := rotations.Load(); n != 1 {
		t.Fatalf("%d rotate requests, want 1", n)
	}
}

// A creation whose answer is lost is never sent twice; with an alias it is
// found again.
func TestCreateLostAnswer(t *testing.T) {
	var creates atomic.Int64
	c, _ := retryClient(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/api/v2/keys":
			creates.Add(1)
			w.WriteHeader(http.StatusInternalServerError)
		case r.URL.Path == "/api/v2/keys/my-alias":
			w.Write([]byte(keyBody))
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	})
	if _, err := c.CreateKey(t.Context(), CreateKeyRequest{Name: "n", Root: true}); !errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("create without alias: %v, want ErrOutcomeUnknown", err)
	}
	if n := creates.Load(); n != 1 {
		t.Fatalf("%d create requests, want 1", n)
	}
	k, err := c.CreateKey(t.Context(), CreateKeyRequest{Name: "n", Root: true, Aliases: []string{"my-alias"}})
	if err != nil || k.ID != "k1" {
		t.Fatalf("create with an alias, answer lost: %v %+v", err, k)
	}
	if n := creates.Load(); n != 2 {
		t.Fatalf("%d create requests, want 2", n)
	}
}
