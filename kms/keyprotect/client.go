package keyprotect

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/kpcrypt/kpcrypt/kms"
)

// maxResponse bounds the body read from any response.
const maxResponse = 4 << 20

// Client calls the Key Protect API of one service instance. It is safe for
// concurrent use.
type Client struct {
	base      *url.URL
	service   Service
	instance  string
	keyRing   string
	tokens    TokenSource
	http      *http.Client
	timeout   time.Duration
	attempts  int
	baseDelay time.Duration
	maxDelay  time.Duration
	inFlight  *limiter
	now       func() time.Time
	sleep     func(context.Context, time.Duration) error // tests replace it
}

// New returns a client for cfg.
func New(cfg Config) (*Client, error) {
	if cfg.InstanceID == "" {
		return nil, errors.New("keyprotect: no instance ID")
	}
	base := cfg.BaseURL
	if base == "" {
		var err error
		if base, err = Endpoint(cfg.Service, cfg.Region, cfg.InstanceID, cfg.Private); err != nil {
			return nil, err
		}
	}
	u, err := checkBaseURL(base)
	if err != nil {
		return nil, err
	}
	c := &Client{
		base:      u,
		service:   cfg.Service,
		instance:  cfg.InstanceID,
		keyRing:   cfg.KeyRing,
		tokens:    cfg.Token,
		http:      cfg.HTTPClient,
		timeout:   cfg.Timeout,
		attempts:  cfg.MaxAttempts,
		baseDelay: cfg.RetryBaseDelay,
		maxDelay:  cfg.RetryMaxDelay,
	}
	c.http = noRedirects(c.http)
	if c.tokens == nil {
		if c.tokens, err = NewIAMTokenSource(cfg.APIKey, cfg.IAMURL, c.http, cfg.Now); err != nil {
			return nil, err
		}
	}
	if c.timeout <= 0 {
		c.timeout = 30 * time.Second
	}
	if c.attempts <= 0 {
		c.attempts = 5
	}
	if c.baseDelay <= 0 {
		c.baseDelay = 250 * time.Millisecond
	}
	if c.maxDelay <= 0 {
		c.maxDelay = 10 * time.Second
	}
	n := cfg.MaxInFlight
	if n <= 0 {
		n = 64
	}
	c.inFlight = newLimiter(n)
	c.now = cfg.Now
	if c.now == nil {
		c.now = time.Now
	}
	c.sleep = sleepCtx
	return c, nil
}

func defaultHTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}}
}

// BaseURL returns the API base URL the client uses.
func (c *Client) BaseURL() string { return c.base.String() }

// InstanceID returns the service instance the client calls.
func (c *Client) InstanceID() string { return c.instance }

type call struct {
	// once marks a call that must not be repeated after it may have been
	// served (create, rotate).
	once   bool
	op     string
	method string
	path   string // under /api/v2/
	query  url.Values
	body   any
	prefer string
}

// ErrOutcomeUnknown means a call that must not be repeated blindly (create
// a key, rotate one) failed after its request may have reached the service:
// it may or may not have taken effect. The client reconciles where it can
// (a rotation is checked against the key's version, a creation with an
// alias against that alias) and returns this error where it cannot.
var ErrOutcomeUnknown = errors.New("the request may have been served: its outcome is unknown")

// do performs a call with retries and decodes a JSON answer into out. It
// retries network errors, 429 and 5xx but 501 with exponential backoff and
// full jitter; on 429 and 503 a Retry-After header is a floor under that
// backoff, never a replacement for it. Every wait is bounded by the
// context's deadline: a wait that would pass it ends the call with the last
// error (matching ErrRateLimited or kms.ErrUnavailable). A 401 with a token
// from IAM is retried once with a new token.
//
// A call that is not idempotent (cl.once) is repeated only when its
// request cannot have been served: a 429, or a connection that was never
// made. After any other failure it ends with an error matching
// ErrOutcomeUnknown.
func (c *Client) do(ctx context.Context, cl call, out any) (http.Header, error) {
	var body []byte
	if cl.body != nil {
		var err error
		if body, err = json.Marshal(cl.body); err != nil {
			return nil, err
		}
	}
	u := *c.base
	u.Path = "/api/v2/" + cl.path
	u.RawQuery = cl.query.Encode()
	correlation := newUUID()
	reauthorized := false
	var lastErr error
	for attempt := 0; attempt < c.attempts; attempt++ {
		if attempt > 0 {
			if err := c.backoff(ctx, attempt, lastErr); err != nil {
				return nil, lastErr
			}
		}
		header, status, respBody, token, err := c.attempt(ctx, cl, u.String(), body, correlation)
		switch {
		case err != nil && ctx.Err() != nil:
			return nil, fmt.Errorf("keyprotect %s: %w", cl.op, ctx.Err())
		case err != nil && errors.Is(err, errRedirect):
			return nil, fmt.Errorf("keyprotect %s: %w: %w", cl.op, kms.ErrUnavailable, errRedirect)
		case err != nil:
			var ke *Error
			if errors.As(err, &ke) && !retryable(ke.StatusCode) {
				return nil, err // IAM refused the API key
			}
			if cl.once && !errors.As(err, &ke) && !neverSent(err) {
				return nil, fmt.Errorf("keyprotect %s: %w: %w: %w", cl.op, kms.ErrUnavailable, ErrOutcomeUnknown, err)
			}
			lastErr = fmt.Errorf("keyprotect %s: %w: %w", cl.op, kms.ErrUnavailable, err)
			continue
		case status >= 200 && status < 300:
			if out != nil && len(bytes.TrimSpace(respBody)) > 0 {
				if err := json.Unmarshal(respBody, out); err != nil {
					return nil, fmt.Errorf("keyprotect %s: malformed response: %v", cl.op, err)
				}
			}
			return header, nil
		}
		e := parseError(cl.op, status, respBody, correlation)
		if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
			e.retryAfter = header.Get("Retry-After")
		}
		lastErr = e
		if status == http.StatusUnauthorized && !reauthorized {
			if inv, ok := c.tokens.(Invalidator); ok {
				// The token may have expired early: fetch a new one and
				// try again at once; this is not counted as a retry.
				inv.Invalidate(token)
				reauthorized = true
				attempt--
				e.immediate = true
				continue
			}
		}
		if !retryable(status) {
			return nil, e
		}
		if cl.once && status != http.StatusTooManyRequests {
			e.outcomeUnknown = true
			return nil, e
		}
	}
	return nil, lastErr
}

// neverSent reports whether a transport error proves that the request never
// reached the server: the connection could not be made.
func neverSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// attempt sends one request. It returns the token it used.
func (c *Client) attempt(ctx context.Context, cl call, u string, body []byte, correlation string) (http.Header, int, []byte, string, error) {
	if err := c.inFlight.acquire(ctx); err != nil {
		return nil, 0, nil, "", err
	}
	status := 0
	defer func() { c.inFlight.release(status) }()
	token, err := c.tokens.Token(ctx)
	if err != nil {
		return nil, 0, nil, "", err
	}
	actx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(actx, cl.method, u, rd)
	if err != nil {
		return nil, 0, nil, token, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Bluemix-Instance", c.instance)
	req.Header.Set("Correlation-Id", correlation)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.keyRing != "" {
		req.Header.Set("X-Kms-Key-Ring", c.keyRing)
	}
	if cl.prefer != "" {
		req.Header.Set("Prefer", cl.prefer)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, 0, nil, token, err
	}
	defer resp.Body.Close()
	respBody, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return nil, 0, nil, token, err
	}
	status = resp.StatusCode
	return resp.Header, resp.StatusCode, respBody, token, nil
}

// maxRetryAfter bounds a Retry-After wait when the context has no deadline.
const maxRetryAfter = 5 * time.Minute

// backoff waits before attempt (from 1): a random wait up to the
// exponential backoff (full jitter), raised to the Retry-After of the last
// answer if that is longer. It fails at once if the wait would pass the
// context's deadline.
func (c *Client) backoff(ctx context.Context, attempt int, lastErr error) error {
	backoff := c.baseDelay << min(attempt-1, 20)
	if backoff > c.maxDelay || backoff <= 0 {
		backoff = c.maxDelay
	}
	wait := rand.N(backoff + 1) // full jitter
	var e *Error
	if errors.As(lastErr, &e) {
		if e.immediate {
			wait = 0
		} else if floor, ok := retryAfter(e.retryAfter, c.now()); ok {
			wait = max(wait, min(floor, maxRetryAfter))
		}
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait { // deadlines are on the real clock
		return context.DeadlineExceeded
	}
	if wait == 0 {
		return ctx.Err()
	}
	return c.sleep(ctx, wait)
}

// retryAfter parses a Retry-After value: seconds, or an HTTP date.
func retryAfter(v string, now time.Time) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(min(s, 1<<20)) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

// sleepCtx waits for d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// parseError decodes a Key Protect error body.
func parseError(op string, status int, body []byte, correlation string) *Error {
	e := &Error{Op: op, StatusCode: status, CorrelationID: correlation}
	var env struct {
		Resources []struct {
			ErrorMsg string   `json:"errorMsg"`
			Reasons  []Reason `json:"reasons"`
		} `json:"resources"`
	}
	if json.Unmarshal(body, &env) == nil && len(env.Resources) > 0 {
		e.Message = env.Resources[0].ErrorMsg
		e.Reasons = env.Resources[0].Reasons
	} else if len(body) > 0 {
		e.Message = strings.TrimSpace(string(body[:min(len(body), 512)]))
	}
	return e
}

// newUUID returns a random version 4 UUID.
func newUUID() string {
	var b [16]byte
	crand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
