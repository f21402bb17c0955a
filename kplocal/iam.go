package kplocal

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"time"
)

// IAM token exchange.
//
// Tokens are JWT-shaped (header.payload.signature, base64url) so that code
// expecting IBM's JWTs can read exp and iat from the payload. They are
// signed with HMAC-SHA-256 under a per-server secret (kept in the state file
// when there is one, so tokens survive a restart) and judged against
// Config.Now.

const (
	apiKeyGrantType = "urn:ibm:params:oauth:grant-type:apikey"
	maxTokenBody    = 64 << 10
	tokenSecretSize = 32
)

var jwtHeader = base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","kid":"kplocal","typ":"JWT"}`))

// tokenClaims is the payload of an issued token.
type tokenClaims struct {
	IAMID     string         `json:"iam_id"`
	ID        string         `json:"id"`
	Sub       string         `json:"sub"`
	SubType   string         `json:"sub_type"`
	Account   map[string]any `json:"account"`
	Instances []string       `json:"instances"` // kplocal's: the instances the token may use
	GrantType string         `json:"grant_type"`
	Scope     string         `json:"scope"`
	Issuer    string         `json:"iss"`
	JTI       string         `json:"jti"`
	IssuedAt  int64          `json:"iat"`
	ExpiresAt int64          `json:"exp"`
}

// issueToken returns a signed token for p valid from now for the
// configured TTL.
func (s *Server) issueToken(p principal, now time.Time) (token string, expiresAt int64) {
	claims := tokenClaims{
		IAMID:     "iam-" + p.iamID,
		ID:        "iam-" + p.iamID,
		Sub:       p.iamID,
		SubType:   "ServiceId",
		Account:   map[string]any{"bss": s.instances[p.instances[0]].account, "valid": true},
		Instances: p.instances,
		GrantType: apiKeyGrantType,
		Scope:     "ibm openid",
		Issuer:    "kplocal",
		JTI:       newUUID(),
		IssuedAt:  now.Unix(),
		ExpiresAt: now.Add(s.cfg.TokenTTL).Unix(),
	}
	payload, _ := json.Marshal(claims) // cannot fail: plain struct
	signing := jwtHeader + "." + base64.RawURLEncoding.EncodeToString(payload)
	return signing + "." + s.sign(signing), claims.ExpiresAt
}

func (s *Server) sign(signing string) string {
	mac := hmac.New(sha256.New, s.tokenSecret)
	mac.Write([]byte(signing))
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// validToken returns the claims of the token in an authorization header
// value, and reports whether it is a token this server issued that has not
// expired at now.
func (s *Server) validToken(authorization string, now time.Time) (tokenClaims, bool) {
	var claims tokenClaims
	scheme, token, ok := strings.Cut(strings.TrimSpace(authorization), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return claims, false
	}
	token = strings.TrimSpace(token)
	dot := strings.LastIndexByte(token, '.')
	if dot < 0 {
		return claims, false
	}
	signing, sig := token[:dot], token[dot+1:]
	if !hmac.Equal([]byte(sig), []byte(s.sign(signing))) {
		return claims, false
	}
	_, payload, ok := strings.Cut(signing, ".")
	if !ok {
		return claims, false
	}
	raw, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil {
		return claims, false
	}
	if err := json.Unmarshal(raw, &claims); err != nil {
		return claims, false
	}
	return claims, now.Unix() < claims.ExpiresAt
}

// principalFor returns the caller whose API key is apiKey, comparing in
// constant time.
func (s *Server) principalFor(apiKey string) (principal, bool) {
	var found principal
	ok := false
	for _, p := range s.principals {
		if subtle.ConstantTimeCompare([]byte(apiKey), []byte(p.apiKey)) == 1 {
			found, ok = p, true
		}
	}
	return found, ok
}

// tokenResponse is IAM's answer to a successful exchange.
type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	Expiration   int64  `json:"expiration"`
	Scope        string `json:"scope"`
}

// iamError is IAM's error body.
type iamError struct {
	ErrorCode    string            `json:"errorCode"`
	ErrorMessage string            `json:"errorMessage"`
	Context      map[string]string `json:"context"`
}

// handleToken serves POST /identity/token and /oidc/token.
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) (int, string) {
	s.count(opToken)
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return s.writeIAMError(w, r, http.StatusMethodNotAllowed, "BXNIM0101E", "Method not allowed: use POST"), opToken.String()
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxTokenBody)
	if err := r.ParseForm(); err != nil {
		return s.writeIAMError(w, r, http.StatusBadRequest, "BXNIM0109E", "Invalid request body"), opToken.String()
	}
	grant := r.PostForm.Get("grant_type")
	apiKey := r.PostForm.Get("apikey")
	p, known := s.principalFor(apiKey)
	switch {
	case grant == "":
		return s.writeIAMError(w, r, http.StatusBadRequest, "BXNIM0109E", "Property missing or empty. Property name(s): 'grant_type'"), opToken.String()
	case grant != apiKeyGrantType:
		return s.writeIAMError(w, r, http.StatusBadRequest, "BXNIM0104E", "Unsupported grant type"), opToken.String()
	case apiKey == "":
		return s.writeIAMError(w, r, http.StatusBadRequest, "BXNIM0109E", "Property missing or empty. Property name(s): 'apikey'"), opToken.String()
	case !known:
		return s.writeIAMError(w, r, http.StatusBadRequest, "BXNIM0415E", "Provided API key could not be found"), opToken.String()
	}
	token, exp := s.issueToken(p, s.now())
	writeJSON(w, http.StatusOK, tokenResponse{
		AccessToken:  token,
		RefreshToken: "not_supported",
		TokenType:    "Bearer",
		ExpiresIn:    int64(s.cfg.TokenTTL / time.Second),
		Expiration:   exp,
		Scope:        "ibm openid",
	})
	return http.StatusOK, opToken.String()
}

func (s *Server) writeIAMError(w http.ResponseWriter, r *http.Request, status int, code, msg string) int {
	now := s.now().UTC().Format(time.RFC3339)
	writeJSON(w, status, iamError{
		ErrorCode:    code,
		ErrorMessage: msg,
		Context: map[string]string{
			"requestId":   w.Header().Get("correlation-id"),
			"requestType": "incoming.OIDC_Token",
			"userAgent":   r.UserAgent(),
			"url":         r.URL.Path,
			"instanceId":  "kplocal",
			"threadId":    "0",
			"host":        "kplocal",
			"startTime":   now,
			"endTime":     now,
			"elapsedTime": "0",
			"locale":      "en_US",
			"clusterName": "kplocal",
			"clientIp":    r.RemoteAddr,
		},
	})
	return status
}
