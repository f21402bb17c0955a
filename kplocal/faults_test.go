package kplocal

import (
	"context"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestFaultInjectionAlways(t *testing.T) {
	h := newHarness(t, Config{FaultRate: 1})
	seen := map[int]bool{}
	for range 40 {
		r := h.request(http.MethodGet, "/keys", nil)
		if r.status != http.StatusTooManyRequests && r.status != http.StatusServiceUnavailable {
			t.Fatalf("status = %d with fault rate 1", r.status)
		}
		seen[r.status] = true
		r.wantError(t, r.status, "")
		if r.header.Get("Retry-After") != "0" || !strings.Contains(string(r.body), "fault injected by kplocal") {
			t.Fatalf("fault answer: Retry-After %q, body %s", r.header.Get("Retry-After"), r.body)
		}
	}
	if !seen[http.StatusTooManyRequests] || !seen[http.StatusServiceUnavailable] {
		t.Fatalf("40 faults gave only %v", seen)
	}
	// The token endpoint is never faulted, and faulted requests reach no operation.
	h.fetchToken(testAPIKey)
	if st := h.srv.Stats(); st.Faults != 40 || st.Requests != 40 || st.List != 0 || st.Tokens != 2 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestFaultInjectionRateAndSeed(t *testing.T) {
	run := func(seed uint64) []int {
		h := newHarness(t, Config{FaultRate: 0.3, Seed: seed})
		var statuses []int
		for range 200 {
			statuses = append(statuses, h.request(http.MethodGet, "/keys", nil).status)
		}
		faults := 0
		for _, s := range statuses {
			if s != http.StatusOK {
				faults++
			}
		}
		if st := h.srv.Stats(); st.Faults != int64(faults) || st.List != int64(200-faults) {
			t.Fatalf("stats = %+v, counted %d faults", st, faults)
		}
		// Some requests are faulted, most are served.
		if faults == 0 || faults > 120 {
			t.Fatalf("%d of 200 requests faulted at rate 0.3", faults)
		}
		return statuses
	}
	a, b := run(42), run(42)
	if !slices.Equal(a, b) {
		t.Fatal("the same seed gave different fault sequences")
	}
	if slices.Equal(a, run(43)) {
		t.Fatal("different seeds gave the same fault sequence")
	}
}

func TestLatencyHonoursCancellation(t *testing.T) {
	s, err := New(Config{InstanceID: testInstance, APIKey: testAPIKey, Latency: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/api/v2/keys", nil)
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req) // returns at once: the request is gone before the delay ends
	if st := s.Stats(); st.Requests != 0 {
		t.Fatalf("a request cancelled during the delay was served: %+v", st)
	}

	// A short latency still serves the request.
	fast, err := New(Config{InstanceID: testInstance, APIKey: testAPIKey, Latency: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	rec = httptest.NewRecorder()
	fast.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v2/keys", nil))
	if rec.Code != http.StatusUnauthorized || fast.Stats().Requests != 1 {
		t.Fatalf("with latency: status %d, stats %+v", rec.Code, fast.Stats())
	}
}

func TestStatsReset(t *testing.T) {
	h := newHarness(t, Config{})
	k := h.create("stats", true)
	h.actionOK(k.ID, "wrap", nil)
	if st := h.srv.Stats(); st.Wrap != 1 || st.Create != 1 || st.Requests != 2 {
		t.Fatalf("stats = %+v", st)
	}
	h.srv.ResetStats()
	if st := h.srv.Stats(); st != (Stats{}) {
		t.Fatalf("stats after reset = %+v", st)
	}
}

func TestMaxConcurrentAnswers429(t *testing.T) {
	s, err := New(Config{InstanceID: testInstance, APIKey: testAPIKey, Latency: time.Hour, MaxConcurrent: 1})
	if err != nil {
		t.Fatal(err)
	}
	// A first request held in the server by its latency.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.ServeHTTP(httptest.NewRecorder(), httptest.NewRequestWithContext(ctx, http.MethodGet, "/api/v2/keys", nil))
	}()
	for s.Stats().PeakInFlight < 1 {
		runtime.Gosched() // wait until the first request is in flight
	}
	// A second one while it is: refused at once with 429.
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v2/keys", nil))
	cancel()
	<-done
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") != "0" || !strings.Contains(rec.Body.String(), "errorMsg") {
		t.Fatalf("second request: %d %q", rec.Code, rec.Body.String())
	}
	if st := s.Stats(); st.RateLimited != 1 || st.PeakInFlight != 2 {
		t.Fatalf("stats: %+v", st)
	}
}
