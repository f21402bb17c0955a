package keyprotect

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// TokenSource supplies IAM access tokens.
type TokenSource interface {
	// Token returns a valid access token, without the "Bearer " prefix.
	Token(ctx context.Context) (string, error)
}

// Invalidator is a TokenSource that can drop a token the service refused,
// so that the next call to Token fetches a new one.
type Invalidator interface {
	Invalidate(token string)
}

// StaticToken is a token supplied by the caller. It is never refreshed.
type StaticToken string

// Token returns the token.
func (t StaticToken) Token(context.Context) (string, error) {
	return strings.TrimPrefix(string(t), "Bearer "), nil
}

// IAMTokenSource exchanges an API key for tokens at IAM, caches the token,
// and fetches a new one before it expires. One fetch runs at a time however
// many goroutines ask. It is safe for concurrent use, and several clients
// may share one.
type IAMTokenSource struct {
	apiKey string
	url    string
	http   *http.Client
	now    func() time.Time

	mu      sync.Mutex
	token   string
	refresh time.Time // fetch a new token from then on
	expiry  time.Time
}

// NewIAMTokenSource returns a token source for apiKey at the IAM base URL
// iamURL (DefaultIAMURL if empty). httpClient and now may be nil.
func NewIAMTokenSource(apiKey, iamURL string, httpClient *http.Client, now func() time.Time) (*IAMTokenSource, error) {
	if apiKey == "" {
		return nil, fmt.Errorf("keyprotect: no API key")
	}
	if iamURL == "" {
		iamURL = DefaultIAMURL
	}
	u, err := checkBaseURL(iamURL)
	if err != nil {
		return nil, fmt.Errorf("IAM endpoint: %w", err)
	}
	httpClient = noRedirects(httpClient)
	if now == nil {
		now = time.Now
	}
	return &IAMTokenSource{apiKey: apiKey, url: u.String() + "/identity/token", http: httpClient, now: now}, nil
}

// Token returns the cached token, or fetches one when it is missing or close
// to expiry: past 80% of its lifetime, or less than a minute before it.
func (s *IAMTokenSource) Token(ctx context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if s.token != "" && now.Before(s.refresh) {
		return s.token, nil
	}
	tok, lifetime, err := s.fetch(ctx)
	if err != nil {
		// A token that has not expired yet is still worth using.
		if s.token != "" && now.Before(s.expiry) {
			return s.token, nil
		}
		return "", err
	}
	early := min(lifetime/5, time.Minute)
	s.token, s.expiry, s.refresh = tok, now.Add(lifetime), now.Add(lifetime-early)
	return tok, nil
}

// Invalidate drops token if it is the cached one.
func (s *IAMTokenSource) Invalidate(token string) {
	s.mu.Lock()
	if s.token == token {
		s.token = ""
	}
	s.mu.Unlock()
}

type iamResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	ErrorCode    string `json:"errorCode"`
	ErrorMessage string `json:"errorMessage"`
}

func (s *IAMTokenSource) fetch(ctx context.Context) (string, time.Duration, error) {
	form := url.Values{
		"grant_type": {"urn:ibm:params:oauth:grant-type:apikey"},
		"apikey":     {s.apiKey},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, strings.NewReader(form.Encode()))
	if err != nil {
		return "", 0, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := s.http.Do(req)
	if err != nil {
		return "", 0, fmt.Errorf("keyprotect: IAM token request: %w", scrub(err, s.apiKey))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return "", 0, fmt.Errorf("keyprotect: IAM token response: %w", err)
	}
	var r iamResponse
	jerr := json.Unmarshal(body, &r)
	if resp.StatusCode != http.StatusOK {
		e := &Error{Op: "IAM token", StatusCode: resp.StatusCode, Message: r.ErrorMessage}
		if r.ErrorCode != "" {
			e.Reasons = []Reason{{Code: r.ErrorCode, Message: r.ErrorMessage}}
		}
		return "", 0, e
	}
	if jerr != nil || r.AccessToken == "" || r.ExpiresIn <= 0 {
		return "", 0, fmt.Errorf("keyprotect: IAM token response is malformed")
	}
	return r.AccessToken, time.Duration(r.ExpiresIn) * time.Second, nil
}

// scrub removes a secret from an error's text (a URL error may quote a
// request body in some transports).
func scrub(err error, secret string) error {
	if secret == "" || !strings.Contains(err.Error(), secret) {
		return err
	}
	return fmt.Errorf("%s", strings.ReplaceAll(err.Error(), secret, "[redacted]"))
}
