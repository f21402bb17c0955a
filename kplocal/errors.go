package kplocal

import (
	"fmt"
	"net/http"
	"time"
)

const (
	errorCollectionType = "application/vnd.ibm.kms.error+json"
	moreInfoURL         = "https://cloud.ibm.com/apidocs/key-protect"
)

// Phrases naming what could not be done, used in errorMsg as in
// "Conflict: Key could not be rotated: Please see 'reasons' …".
const (
	whatCreate   = "Key could not be created"
	whatRetrieve = "Key could not be retrieved"
	whatDelete   = "Key could not be deleted"
	whatPurge    = "Key could not be purged"
	whatRestore  = "Key could not be restored"
	whatRotate   = "Key could not be rotated"
	whatUpdate   = "Key could not be updated"
	whatAction   = "Action could not be performed on key"
	whatPolicy   = "Policy could not be updated"
	whatPolicyGt = "Policy could not be retrieved"
	whatAlias    = "Alias could not be created"
	whatVersions = "Key versions could not be retrieved"
)

// apiError is a Key Protect error answer: an HTTP status and the error
// envelope's errorMsg and reasons. It never carries key material.
type apiError struct {
	status  int
	msg     string
	reasons []reason
	allow   string // Allow header of a 405
}

// reason is one element of an error's reasons list.
type reason struct {
	Code     string  `json:"code"`
	Message  string  `json:"message"`
	Status   int     `json:"status"`
	MoreInfo string  `json:"moreInfo"`
	Target   *target `json:"target,omitempty"`
}

// target names the request field or query parameter a reason is about.
type target struct {
	Type string `json:"type"`
	Name string `json:"name"`
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s", e.status, e.msg) }

// newAPIError builds an error with one reason. what says what failed
// ("Key could not be rotated"); message is the reason's message.
func newAPIError(status int, what, code, message string, tgt *target) *apiError {
	return &apiError{
		status: status,
		msg:    fmt.Sprintf("%s: %s: Please see 'reasons' for more details (%s)", http.StatusText(status), what, code),
		reasons: []reason{{
			Code:     code,
			Message:  message,
			Status:   status,
			MoreInfo: moreInfoURL,
			Target:   tgt,
		}},
	}
}

// plainError builds an error that carries only errorMsg, like Key Protect's
// 401 answers.
func plainError(status int, msg string) *apiError {
	return &apiError{status: status, msg: http.StatusText(status) + ": " + msg}
}

func fieldTarget(name string) *target { return &target{Type: "field", Name: name} }
func queryTarget(name string) *target { return &target{Type: "query_param", Name: name} }

func errUnauthorized() *apiError {
	return plainError(http.StatusUnauthorized, "The user does not have access to the specified resource")
}

func errKeyNotFound() *apiError {
	return newAPIError(http.StatusNotFound, whatRetrieve, "KEY_NOT_FOUND_ERR", "Key does not exist", nil)
}

// errMalformedID answers an {id} that is neither a UUID nor has the syntax
// of an alias: Key Protect's "malformed, invalid or missing ID" 400.
func errMalformedID() *apiError {
	return newAPIError(http.StatusBadRequest, whatRetrieve, "INVALID_QUERY_PARAM_ERR",
		"The query_param 'id' must be: a key ID (UUID) or an alias (2 to 90 letters, digits, '_' or '-')", queryTarget("id"))
}

func errKeyDeleted(what string) *apiError {
	return newAPIError(http.StatusGone, what, "KEY_DELETED_ERR",
		"Key has already been deleted: Please delete references to this key", nil)
}

func errInvalidState(what string) *apiError {
	return newAPIError(http.StatusConflict, what, "KEY_ACTION_INVALID_STATE_ERR", "Key is not in a valid state", nil)
}

func errRootRequired(what, detail string) *apiError {
	msg := "Requested action can only be completed with a root key"
	if detail != "" {
		msg += ": " + detail
	}
	return newAPIError(http.StatusBadRequest, what, "KEY_ROOT_REQ_ERR", msg, nil)
}

func errInvalidField(what, field, mustBe string) *apiError {
	return newAPIError(http.StatusBadRequest, what, "INVALID_FIELD_ERR",
		fmt.Sprintf("The field '%s' must be: %s", field, mustBe), fieldTarget(field))
}

func errInvalidQuery(what, param, mustBe string) *apiError {
	return newAPIError(http.StatusBadRequest, what, "INVALID_QUERY_PARAM_ERR",
		fmt.Sprintf("The query_param '%s' must be: %s", param, mustBe), queryTarget(param))
}

func errBadBody(what, detail string) *apiError {
	return newAPIError(http.StatusBadRequest, what, "BAD_BODY_ERR",
		"Invalid body data was passed: Please ensure the data passed had valid formatting with no invalid characters: "+detail, nil)
}

func errNoBody(what string) *apiError {
	return newAPIError(http.StatusBadRequest, what, "NO_BODY_ERR", "Missing body in request", nil)
}

func errTooEarly(what, detail string) *apiError {
	return newAPIError(http.StatusConflict, what, "REQ_TOO_EARLY_ERR",
		"The key was updated recently: Please wait and try again: "+detail, nil)
}

func errRotationNotPermitted(interval time.Duration) *apiError {
	span := "hour"
	if interval != time.Hour {
		span = interval.String()
	}
	return newAPIError(http.StatusConflict, whatRotate, "KEY_ROTATION_NOT_PERMITTED",
		fmt.Sprintf("This root key has been rotated within the last %s: Only one 'rotate' action per %s is permitted", span, span), nil)
}

// errBadCiphertext is Key Protect's answer to a ciphertext that is not
// base64, not a wrapped key, tampered with, or presented with the wrong AAD.
func errBadCiphertext() *apiError {
	return errInvalidField(whatAction, "ciphertext",
		"the original base64 encoded ciphertext from the wrap operation")
}

func errNotThisKey() *apiError {
	return newAPIError(http.StatusUnprocessableEntity, whatAction, "UNPROCESSABLE_CIPHERTEXT_ERR",
		"The provided ciphertext is invalid or corrupted: The ciphertext provided for the unwrap operation was not wrapped by this key", nil)
}

// Error envelope on the wire.
type errorEnvelope struct {
	Metadata  collectionMetadata `json:"metadata"`
	Resources []errorResource    `json:"resources"`
}

type errorResource struct {
	ErrorMsg string   `json:"errorMsg"`
	Reasons  []reason `json:"reasons,omitempty"`
}

func (e *apiError) envelope() errorEnvelope {
	return errorEnvelope{
		Metadata:  collectionMetadata{CollectionType: errorCollectionType, CollectionTotal: 1},
		Resources: []errorResource{{ErrorMsg: e.msg, Reasons: e.reasons}},
	}
}
