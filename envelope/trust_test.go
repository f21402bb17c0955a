package envelope

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/local"
)

// A slot's URI comes from the file: the keyring opens it only when its
// filter allows, and then opens what the filter returns, never the slot's
// own spelling.
func TestResolvingKeyringFilter(t *testing.T) {
	ctx := t.Context()
	k := newLocalKEK(t, "a")
	ct := mustSeal(t, &Encrypter{KEKs: []kms.KEK{k}}, testPlaintext(100))
	var opened []string
	var opens atomic.Int64
	resolver := kms.Resolver{"local": func(ctx context.Context, uri string) (kms.KEK, error) {
		opens.Add(1)
		opened = append(opened, uri)
		return local.Open(ctx, uri)
	}}

	// No filter: nothing is opened from the header.
	_, err := Open(ctx, ct, &ResolvingKeyring{Resolver: resolver})
	checkClass(t, "nil filter", err, ErrNoKEK)
	if n := opens.Load(); n != 0 {
		t.Fatalf("a keyring without a filter opened %d slot URIs", n)
	}

	// A refusing filter: the resolver is never called, and the refusal is
	// reported.
	refuse := kms.DiscoveryFunc(func(string) (string, error) { return "", fmt.Errorf("%w: not listed", kms.ErrUntrusted) })
	_, err = Open(ctx, ct, &ResolvingKeyring{Resolver: resolver, Filter: refuse})
	checkClass(t, "refused", err, ErrNoKEK)
	if !errors.Is(err, kms.ErrUntrusted) {
		t.Errorf("refusal %v does not match kms.ErrUntrusted", err)
	}
	if n := opens.Load(); n != 0 {
		t.Fatalf("a refused slot URI was opened %d times", n)
	}

	// The filter maps the slot's URI to the one the user configured.
	other := newLocalKEK(t, "b")
	ctOther := mustSeal(t, &Encrypter{KEKs: []kms.KEK{other}}, testPlaintext(100))
	toK := kms.DiscoveryFunc(func(string) (string, error) { return k.URI(), nil })
	if _, err := Open(ctx, ctOther, &ResolvingKeyring{Resolver: resolver, Filter: toK}); !errors.Is(err, ErrNoKEK) {
		t.Fatalf("a file opened though the configured KEK is another: %v", err)
	}
	if len(opened) != 1 || opened[0] != k.URI() {
		t.Fatalf("opened %q, want only the configured %s", opened, k.URI())
	}
}
