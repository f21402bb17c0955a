package envelope

import (
	"errors"
	"fmt"
	"strings"

	"github.com/kpcrypt/kpcrypt/envelope/internal/format"
)

// Error classes of this package. Errors from the stream engine
// ([stream.ErrAuthentication], [stream.ErrTruncated], …) and from KEKs
// ([kms.ErrWrongKey], [kms.ErrUnavailable], …) pass through wrapped, so
// callers test them with errors.Is as well.
var (
	// ErrInvalidHeader means the header is malformed or over a limit. It is
	// reported before any KEK is called.
	ErrInvalidHeader = format.ErrInvalid
	// ErrNoKEK means no KEK of the keyring opened any key slot. The concrete
	// error is a *[NoKEKError].
	ErrNoKEK = errors.New("no KEK can open any key slot")
	// ErrHeaderAuthentication means a KEK unwrapped a slot but the header
	// then failed: the unwrapped key is not 32 bytes, the slot's key
	// version disagrees with the KEK's, or the core failed its MAC. The
	// header was modified.
	ErrHeaderAuthentication = errors.New("header authentication failed")
	// ErrSizeMismatch means the plaintext is not as long as the header
	// says: on encryption, the writer was given another size than it got.
	ErrSizeMismatch = errors.New("plaintext size differs from the size in the header")
	// ErrTrailingData means bytes follow the body of a file whose size is
	// recorded.
	ErrTrailingData = errors.New("trailing data after the final chunk")
	// ErrContextMismatch means the file's encryption context is not the one
	// the caller required.
	ErrContextMismatch = errors.New("encryption context mismatch")
	// ErrKeyVersionRetired means a slot is under a key version older than
	// the minimum the caller allows.
	ErrKeyVersionRetired = errors.New("key version retired")
	// ErrCompressed means random access was asked of a compressed file,
	// which can only be read in order.
	ErrCompressed = errors.New("random access is not possible in a compressed file")
	// ErrSlotTableFull means the key slots do not fit in the slot table.
	ErrSlotTableFull = format.ErrSlotTableFull
	// ErrSlotMismatch means a slot given to [SaveRewrapped] is not a slot
	// of the file: it was opened from another file, or the file's slot has
	// changed since.
	ErrSlotMismatch = errors.New("the slot was not opened from this file, or has changed since")
	// ErrFileReplaced means a file was replaced (renamed over) or removed
	// while [RewrapFile] or [SaveRewrapped] waited for its lock: another
	// rewrap rewrote it whole, with a larger slot table. [RewrapPath] and
	// SaveRewrapped open the path again; a caller of RewrapFile does so.
	ErrFileReplaced = errors.New("the file was replaced or removed while waiting for its lock")
)

// NoKEKError reports that no KEK opened any slot of a file. It matches
// [ErrNoKEK], and through Unwrap the error each attempt met.
type NoKEKError struct {
	// Slots is the number of key slots in the file.
	Slots int
	// URIs are the slots' KEK URIs.
	URIs []string
	// Errors are the errors of each attempt, in order.
	Errors []error
}

func (e *NoKEKError) Error() string {
	s := "s"
	if e.Slots == 1 {
		s = ""
	}
	msg := fmt.Sprintf("no KEK can open any of this file's %d key slot%s (%s)", e.Slots, s, strings.Join(e.URIs, ", "))
	if len(e.Errors) > 0 {
		msg += ": " + e.Errors[0].Error()
		if len(e.Errors) > 1 {
			msg += fmt.Sprintf(" (and %d more)", len(e.Errors)-1)
		}
	}
	return msg
}

// Is reports whether target is [ErrNoKEK].
func (e *NoKEKError) Is(target error) bool { return target == ErrNoKEK }

// Unwrap returns the errors of each attempt.
func (e *NoKEKError) Unwrap() []error { return e.Errors }
