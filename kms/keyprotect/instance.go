package keyprotect

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"time"
)

// Instance policy types (§7.2 of the reference).
const (
	InstanceDualAuthDelete        = "dualAuthDelete"
	InstanceRotation              = "rotation"
	InstanceAllowedNetwork        = "allowedNetwork"
	InstanceAllowedIP             = "allowedIP"
	InstanceKeyCreateImportAccess = "keyCreateImportAccess"
	InstanceMetrics               = "metrics"
)

// InstancePolicy is one policy of a service instance.
type InstancePolicy struct {
	// Type is one of the Instance* constants.
	Type string `json:"policy_type"`
	Data struct {
		Enabled bool `json:"enabled"`
		// Attributes are the type's attributes, for example
		// {"interval_month": 3} for rotation, {"allowed_network":
		// "private-only"} for allowedNetwork.
		Attributes map[string]json.RawMessage `json:"attributes,omitempty"`
	} `json:"policy_data"`
	CreatedBy    string     `json:"createdBy,omitempty"`
	CreationDate *time.Time `json:"creationDate,omitempty"`
	UpdatedBy    string     `json:"updatedBy,omitempty"`
	LastUpdated  *time.Time `json:"lastUpdated,omitempty"`
}

// InstancePolicies returns the instance's policies.
func (c *Client) InstancePolicies(ctx context.Context) ([]InstancePolicy, error) {
	var out collection[InstancePolicy]
	if _, err := c.do(ctx, call{op: "get instance policies", method: http.MethodGet, path: "instance/policies"}, &out); err != nil {
		return nil, err
	}
	return out.Resources, nil
}

// SetInstancePolicy sets one instance policy.
func (c *Client) SetInstancePolicy(ctx context.Context, p InstancePolicy) error {
	p.CreatedBy, p.CreationDate, p.UpdatedBy, p.LastUpdated = "", nil, "", nil
	q := url.Values{"policy": {p.Type}}
	_, err := c.do(ctx, call{op: "set instance policy", method: http.MethodPut, path: "instance/policies", query: q, body: newCollection(policyType, p)}, nil)
	return err
}
