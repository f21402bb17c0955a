package keyprotect

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/kpcrypt/kpcrypt/kms"
)

// Error classes for Key Protect responses. Each [*Error] matches the class
// of its status and reason codes with [errors.Is], and the matching class of
// package kms too, so that code written against any backend works.
var (
	// ErrNotFound: no key with that ID or alias (404). Matches kms.ErrNotFound.
	ErrNotFound = kms.ErrNotFound
	// ErrGone: the key was deleted or destroyed (410). Matches kms.ErrKeyDestroyed.
	ErrGone = kms.ErrKeyDestroyed
	// ErrWrongState: the key's state forbids the action, for example a
	// disabled key asked to wrap (409 KEY_ACTION_INVALID_STATE_ERR). Matches
	// kms.ErrKeyDisabled.
	ErrWrongState = kms.ErrKeyDisabled
	// ErrUnauthorized: the token is missing, invalid or expired, or the
	// caller lacks access (401, 403). Matches kms.ErrPermissionDenied.
	ErrUnauthorized = kms.ErrPermissionDenied
	// ErrBadCiphertext: the ciphertext or its AAD does not match the key
	// (400 INVALID_FIELD_ERR on the ciphertext, 422). Matches kms.ErrWrongKey.
	ErrBadCiphertext = kms.ErrWrongKey
	// ErrRateLimited: too many requests (429). Matches kms.ErrUnavailable.
	ErrRateLimited = errors.New("rate limited by Key Protect")
	// ErrConflict: any other 409, such as a second rotation within the hour.
	ErrConflict = errors.New("conflict")
	// ErrBadRequest: any other 400.
	ErrBadRequest = errors.New("bad request")
)

// Reason is one entry of the reasons list of a Key Protect error body.
type Reason struct {
	Code     string `json:"code"`
	Message  string `json:"message"`
	Status   int    `json:"status,omitempty"`
	MoreInfo string `json:"moreInfo,omitempty"`
	Target   *struct {
		Type string `json:"type"`
		Name string `json:"name"`
	} `json:"target,omitempty"`
}

// Error is an error response from Key Protect or its IAM endpoint.
type Error struct {
	// Op is the operation, for example "wrap".
	Op string
	// StatusCode is the HTTP status.
	StatusCode int
	// Message is the service's errorMsg (or IAM's errorMessage).
	Message string
	// Reasons are the reason codes and messages of the body.
	Reasons []Reason
	// CorrelationID identifies the request in Key Protect's logs.
	CorrelationID string

	retryAfter     string // the Retry-After header of a 429 or 503, if any
	immediate      bool   // retry at once (a refreshed token)
	outcomeUnknown bool   // a call not to repeat failed after it may have been served
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "key protect %s: %d %s", e.Op, e.StatusCode, http.StatusText(e.StatusCode))
	if words := e.inWords(); words != "" {
		fmt.Fprintf(&b, ": %s", words)
	}
	for _, r := range e.Reasons {
		fmt.Fprintf(&b, ": %s", r.Code)
		if r.Message != "" {
			fmt.Fprintf(&b, " (%s)", r.Message)
		}
	}
	if len(e.Reasons) == 0 && e.Message != "" {
		fmt.Fprintf(&b, ": %s", e.Message)
	}
	if e.CorrelationID != "" {
		fmt.Fprintf(&b, " [correlation-id %s]", e.CorrelationID)
	}
	return b.String()
}

// inWords says in a user's terms what the commonest refusals mean.
func (e *Error) inWords() string {
	switch {
	case e.HasReason("KEY_ACTION_INVALID_STATE_ERR"):
		return "the key is not active: it is disabled (suspended), deactivated or destroyed; see kpcrypt key show, and kpcrypt key enable"
	case e.HasReason("KEY_ROTATION_NOT_PERMITTED"):
		return "the key was rotated less than an hour ago, and Key Protect allows one rotation an hour"
	case e.HasReason("REQ_TOO_EARLY_ERR"):
		return "too soon after the key's last change: try again in 30 seconds"
	case e.StatusCode == http.StatusUnauthorized:
		return "the API key or token is not valid for this instance"
	case e.StatusCode == http.StatusForbidden:
		return "the caller may not use this key"
	case e.StatusCode == http.StatusGone:
		return "the key was deleted"
	case e.StatusCode == http.StatusNotFound:
		return "no such key in this instance"
	}
	return ""
}

// HasReason reports whether the body carried the reason code.
func (e *Error) HasReason(code string) bool {
	for _, r := range e.Reasons {
		if r.Code == code {
			return true
		}
	}
	return false
}

// Is maps the response to the error classes of this package and of kms.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.StatusCode == http.StatusNotFound
	case ErrGone:
		return e.StatusCode == http.StatusGone
	case ErrWrongState:
		return e.StatusCode == http.StatusConflict && e.HasReason("KEY_ACTION_INVALID_STATE_ERR")
	case ErrUnauthorized:
		return e.StatusCode == http.StatusUnauthorized || e.StatusCode == http.StatusForbidden
	case ErrBadCiphertext:
		return e.StatusCode == http.StatusUnprocessableEntity ||
			e.StatusCode == http.StatusBadRequest && e.badCiphertext()
	case ErrRateLimited:
		return e.StatusCode == http.StatusTooManyRequests
	case kms.ErrUnavailable:
		return e.StatusCode == http.StatusTooManyRequests || e.StatusCode >= 500
	case ErrConflict:
		return e.StatusCode == http.StatusConflict
	case ErrBadRequest:
		return e.StatusCode == http.StatusBadRequest
	case ErrOutcomeUnknown:
		return e.outcomeUnknown
	}
	return false
}

// badCiphertext tells Key Protect's answer to a ciphertext or AAD that does
// not authenticate: 400 INVALID_FIELD_ERR about the ciphertext field.
func (e *Error) badCiphertext() bool {
	for _, r := range e.Reasons {
		if r.Code == "INVALID_FIELD_ERR" && (r.Target != nil && r.Target.Name == "ciphertext" || strings.Contains(r.Message, "ciphertext")) {
			return true
		}
	}
	return false
}

// retryable reports whether a response status is worth another attempt:
// 429 and 5xx except 501.
func retryable(status int) bool {
	return status == http.StatusTooManyRequests || status >= 500 && status != http.StatusNotImplemented
}
