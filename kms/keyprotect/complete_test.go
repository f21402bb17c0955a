package keyprotect

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kpcrypt/kpcrypt/kplocal"
)

// The key management calls beyond wrapping, against kplocal.
func TestKeyLifecycleCalls(t *testing.T) {
	ctx := context.Background()
	e := start(t, nil, nil)
	c := e.client
	k := e.rootKey(t, "lifecycle")

	if _, err := c.Wrap(ctx, k.ID, nil, nil); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("wrap of an empty DEK: %v", err)
	}
	md, err := c.GetKeyMetadata(ctx, k.ID)
	if err != nil || md.ID != k.ID || md.Payload != "" {
		t.Fatalf("metadata: %v %+v", err, md)
	}
	if err := c.CreateAlias(ctx, k.ID, "lifecycle-alias"); err != nil {
		t.Fatal(err)
	}
	if got, err := c.GetKey(ctx, "lifecycle-alias"); err != nil || got.ID != k.ID {
		t.Fatalf("get by alias: %v", err)
	}
	if err := c.DeleteAlias(ctx, k.ID, "lifecycle-alias"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetKey(ctx, "lifecycle-alias"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("alias still resolves: %v", err)
	}

	// Versions of a suspended key still list (allKeyStates).
	e.clock.Advance(2 * time.Hour)
	if err := c.Rotate(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	if err := c.Disable(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	vs, err := c.KeyVersions(ctx, k.ID)
	if err != nil || len(vs) != 2 {
		t.Fatalf("versions of a disabled key: %v, %d", err, len(vs))
	}
	e.clock.Advance(time.Minute)
	if err := c.Enable(ctx, k.ID); err != nil {
		t.Fatal(err)
	}

	// Delete, restore (not in the first 30 s), delete, purge (after 4 h).
	if err := c.DeleteKey(ctx, k.ID, false); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Minute)
	if got, err := c.RestoreKey(ctx, k.ID); err != nil || got.ID != k.ID {
		t.Fatalf("restore: %v", err)
	}
	e.clock.Advance(time.Minute)
	if err := c.DeleteKey(ctx, k.ID, false); err != nil {
		t.Fatal(err)
	}
	if err := c.PurgeKey(ctx, k.ID); err == nil {
		t.Fatal("purged within 4 hours of the deletion")
	}
	e.clock.Advance(5 * time.Hour)
	if err := c.PurgeKey(ctx, k.ID); err != nil {
		t.Fatalf("purge: %v", err)
	}
}

// Dual-auth deletion: authorise, withdraw.
func TestSetKeyForDeletion(t *testing.T) {
	ctx := context.Background()
	e := start(t, func(c *kplocal.Config) {}, nil)
	k := e.rootKey(t, "dual")
	if err := e.client.SetDualAuthDeletePolicy(ctx, k.ID, DualAuthDeletePolicy{Enabled: true}); err != nil {
		t.Fatal(err)
	}
	if err := e.client.DeleteKey(ctx, k.ID, false); err == nil {
		t.Fatal("deleted without the second authorisation")
	}
	if err := e.client.SetKeyForDeletion(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.client.UnsetKeyForDeletion(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
}
