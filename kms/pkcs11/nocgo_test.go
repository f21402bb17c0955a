//go:build !cgo

package pkcs11

import (
	"errors"
	"testing"
)

// Without cgo, PKCS#11 URIs still parse, and opening one says why it
// cannot be done.
func TestNoCgo(t *testing.T) {
	if _, err := ParseURI("pkcs11:token=T;object=k"); err != nil {
		t.Fatal(err)
	}
	p := &Provider{}
	if _, err := p.OpenKEK(t.Context(), "pkcs11:token=T;object=k?pin-value=1234"); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("OpenKEK = %v, want ErrNotSupported", err)
	}
}
