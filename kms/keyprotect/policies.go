package keyprotect

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// RotationPolicy rotates a root key automatically.
type RotationPolicy struct {
	Enabled bool `json:"enabled"`
	// IntervalMonths is 1 to 12.
	IntervalMonths int `json:"interval_month"`
}

// DualAuthDeletePolicy requires two users to delete a key.
type DualAuthDeletePolicy struct {
	Enabled bool `json:"enabled"`
}

// Policy is a key policy resource.
type Policy struct {
	ID             string                `json:"id,omitempty"`
	CRN            string                `json:"crn,omitempty"`
	Type           string                `json:"type,omitempty"`
	Rotation       *RotationPolicy       `json:"rotation,omitempty"`
	DualAuthDelete *DualAuthDeletePolicy `json:"dualAuthDelete,omitempty"`
	LastUpdateDate *time.Time            `json:"lastUpdateDate,omitempty"`
}

// Policies are a key's policies; a nil field is a policy not set.
type Policies struct {
	Rotation       *RotationPolicy
	DualAuthDelete *DualAuthDeletePolicy
}

// GetPolicies returns the policies of a key.
func (c *Client) GetPolicies(ctx context.Context, id string) (*Policies, error) {
	var out collection[Policy]
	if _, err := c.do(ctx, call{op: "get policies", method: http.MethodGet, path: "keys/" + url.PathEscape(id) + "/policies"}, &out); err != nil {
		return nil, err
	}
	var p Policies
	for _, r := range out.Resources {
		if r.Rotation != nil {
			p.Rotation = r.Rotation
		}
		if r.DualAuthDelete != nil {
			p.DualAuthDelete = r.DualAuthDelete
		}
	}
	return &p, nil
}

// SetRotationPolicy sets a root key's rotation policy.
func (c *Client) SetRotationPolicy(ctx context.Context, id string, p RotationPolicy) error {
	return c.putPolicy(ctx, id, "rotation", Policy{Type: policyType, Rotation: &p})
}

// SetDualAuthDeletePolicy sets a key's dual-authorisation deletion policy.
func (c *Client) SetDualAuthDeletePolicy(ctx context.Context, id string, p DualAuthDeletePolicy) error {
	return c.putPolicy(ctx, id, "dualAuthDelete", Policy{Type: policyType, DualAuthDelete: &p})
}

func (c *Client) putPolicy(ctx context.Context, id, which string, p Policy) error {
	var out collection[Policy]
	_, err := c.do(ctx, call{op: "set " + which + " policy", method: http.MethodPut,
		path: "keys/" + url.PathEscape(id) + "/policies", query: url.Values{"policy": {which}},
		body: newCollection(policyType, p)}, &out)
	return err
}
