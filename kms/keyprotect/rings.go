package keyprotect

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// KeyRing is a key ring: a group of keys under one access policy.
type KeyRing struct {
	ID           string     `json:"id"`
	CreationDate *time.Time `json:"creationDate,omitempty"`
	CreatedBy    string     `json:"createdBy,omitempty"`
}

// CreateKeyRing creates a key ring. Its ID is 2 to 100 letters, digits and
// dashes.
func (c *Client) CreateKeyRing(ctx context.Context, id string) error {
	_, err := c.do(ctx, call{op: "create key ring", method: http.MethodPost, path: "key_rings/" + url.PathEscape(id)}, nil)
	return err
}

// KeyRings lists the instance's key rings.
func (c *Client) KeyRings(ctx context.Context) ([]KeyRing, error) {
	var out collection[KeyRing]
	if _, err := c.do(ctx, call{op: "list key rings", method: http.MethodGet, path: "key_rings"}, &out); err != nil {
		return nil, err
	}
	return out.Resources, nil
}

// DeleteKeyRing deletes an empty key ring; force deletes one that holds
// only deleted keys, moving them to the default ring.
func (c *Client) DeleteKeyRing(ctx context.Context, id string, force bool) error {
	q := url.Values{}
	if force {
		q.Set("force", "true")
	}
	_, err := c.do(ctx, call{op: "delete key ring", method: http.MethodDelete, path: "key_rings/" + url.PathEscape(id), query: q}, nil)
	return err
}
