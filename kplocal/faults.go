package kplocal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"time"
)

// FaultMode says what an injected [Fault] does to a request.
type FaultMode int

const (
	// FaultStatus answers Fault.Status with a Key Protect error body
	// without serving the request.
	FaultStatus FaultMode = iota + 1
	// FaultStatusAfterServing serves the request (a key is created, a key
	// rotated…) and then answers Fault.Status instead of the real answer,
	// as when a proxy loses the service's answer.
	FaultStatusAfterServing
	// FaultReset resets the connection (TCP RST) without serving.
	FaultReset
	// FaultResetAfterServing serves the request and then resets the
	// connection: the change is made, the answer is lost.
	FaultResetAfterServing
	// FaultSlowBody serves the request and sends the first half of the
	// answer's body, then pauses for Fault.SlowBodyDelay (or until the
	// client goes away) before sending the rest.
	FaultSlowBody
)

// DefaultSlowBodyDelay is the pause of a [FaultSlowBody] fault whose
// SlowBodyDelay is zero.
const DefaultSlowBodyDelay = time.Minute

// ErrBadFault is wrapped by [New]'s error for an invalid Config.Faults
// entry.
var ErrBadFault = errors.New("kplocal: bad fault")

// Fault is a fault-injection rule for authenticated /api/v2 requests. The
// first rule (in Config.Faults order) that matches a request's operation
// and wins its draw applies. Connection faults (FaultReset,
// FaultResetAfterServing) need a real connection: serve the [Server]
// with [Start], [StartListener] or an http.Server.
type Fault struct {
	Mode FaultMode

	// Ops are the operations the rule applies to, named as in [Stats] in
	// lower camel case: "create", "rotate", "wrap", "unwrap", "list",
	// "getImportToken"… Empty means every /api/v2 operation.
	Ops []string

	// Status is the answer of FaultStatus and FaultStatusAfterServing: 429
	// or a 5xx. Zero means 503.
	Status int

	// RetryAfter is the Retry-After header of a 429 or 503 answer, in whole
	// seconds (rounded up). Zero means Config.RetryAfter.
	RetryAfter time.Duration

	// Rate is the share, in (0, 1], of matching requests that get the
	// fault, drawn from Config.Seed's source. Zero means every one.
	Rate float64

	// Times, when positive, is how many requests at most get the fault.
	Times int

	// SlowBodyDelay is FaultSlowBody's pause. Zero means
	// [DefaultSlowBodyDelay].
	SlowBodyDelay time.Duration
}

// check validates f.
func (f Fault) check() error {
	if f.Mode < FaultStatus || f.Mode > FaultSlowBody {
		return fmt.Errorf("%w: unknown mode %d", ErrBadFault, f.Mode)
	}
	if f.Status != 0 && f.Status != http.StatusTooManyRequests && (f.Status < 500 || f.Status > 599) {
		return fmt.Errorf("%w: status %d is neither 429 nor a 5xx", ErrBadFault, f.Status)
	}
	if !(f.Rate >= 0 && f.Rate <= 1) || f.Times < 0 || f.RetryAfter < 0 || f.SlowBodyDelay < 0 {
		return fmt.Errorf("%w: rate, times, retry-after and slow-body delay must be in range", ErrBadFault)
	}
	for _, name := range f.Ops {
		if !slices.Contains(opNames[opCreate:], name) {
			return fmt.Errorf("%w: unknown operation %q", ErrBadFault, name)
		}
	}
	return nil
}

func (f *Fault) afterServing() bool {
	return f.Mode == FaultStatusAfterServing || f.Mode == FaultResetAfterServing || f.Mode == FaultSlowBody
}

// pickFault returns the fault rule that applies to a request for o, or nil.
func (s *Server) pickFault(o op) *Fault {
	if len(s.cfg.Faults) == 0 {
		return nil
	}
	s.rngMu.Lock()
	defer s.rngMu.Unlock()
	for i := range s.cfg.Faults {
		f := &s.cfg.Faults[i]
		if len(f.Ops) > 0 && !slices.Contains(f.Ops, o.String()) {
			continue
		}
		if f.Times > 0 && s.faultHits[i] >= f.Times {
			continue
		}
		if f.Rate > 0 && s.rng.Float64() >= f.Rate {
			continue
		}
		s.faultHits[i]++
		return f
	}
	return nil
}

// retryAfter formats d as whole seconds, rounded up.
func retryAfter(d time.Duration) string {
	return strconv.FormatInt(int64((d+time.Second-1)/time.Second), 10)
}

// writeFaultStatus writes an injected error answer.
func (s *Server) writeFaultStatus(w http.ResponseWriter, f *Fault) int {
	status := f.Status
	if status == 0 {
		status = http.StatusServiceUnavailable
	}
	if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		d := f.RetryAfter
		if d == 0 {
			d = s.cfg.RetryAfter
		}
		w.Header().Set("Retry-After", retryAfter(d))
	}
	msg := "The request could not be completed (fault injected by kplocal)"
	switch status {
	case http.StatusTooManyRequests:
		msg = "Too many requests: Please wait a few minutes and try again (fault injected by kplocal)"
	case http.StatusServiceUnavailable:
		msg = "Key Protect is currently unavailable: Your request could not be processed: Please try again later (fault injected by kplocal)"
	}
	return writeError(w, plainError(status, msg))
}

// resetConnection closes the request's connection with a TCP reset. Without
// a connection to take over (HTTP/2, a recorder) it aborts the handler,
// which closes or resets the stream.
func resetConnection(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	raw := conn
	if nc, ok := conn.(interface{ NetConn() net.Conn }); ok { // TLS
		raw = nc.NetConn()
	}
	if tcp, ok := raw.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0) // close sends RST
	}
	_ = raw.Close()
}

// writeSlowly writes a reply's answer in two halves with a pause between
// them that ends early when the client goes away.
func writeSlowly(ctx context.Context, w http.ResponseWriter, rep reply, delay time.Duration) {
	if delay == 0 {
		delay = DefaultSlowBodyDelay
	}
	pause := func() {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
	for name, v := range rep.headers {
		w.Header().Set(name, v)
	}
	if rep.body == nil {
		pause()
		w.WriteHeader(rep.status)
		return
	}
	body, err := json.Marshal(rep.body)
	if err != nil {
		rep.status, body = http.StatusInternalServerError, []byte(`{"errorMsg":"Internal Server Error"}`)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(rep.status)
	half := len(body) / 2
	_, _ = w.Write(body[:half])
	_ = http.NewResponseController(w).Flush()
	pause()
	_, _ = w.Write(body[half:])
}
