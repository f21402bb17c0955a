package kplocal

import (
	"net/http"
	"net/netip"
	"slices"
	"time"
)

// Instance policy types (GET|PUT /api/v2/instance/policies).
const (
	ipolicyDualAuth       = "dualAuthDelete"
	ipolicyRotation       = "rotation"
	ipolicyAllowedNetwork = "allowedNetwork"
	ipolicyAllowedIP      = "allowedIP"
	ipolicyKeyAccess      = "keyCreateImportAccess"
	ipolicyMetrics        = "metrics"
)

var instancePolicyTypes = []string{ipolicyDualAuth, ipolicyRotation, ipolicyAllowedNetwork, ipolicyAllowedIP, ipolicyKeyAccess, ipolicyMetrics}

func knownInstancePolicy(t string) bool { return slices.Contains(instancePolicyTypes, t) }

const (
	whatInstancePolicy   = "Instance policy could not be updated"
	whatInstancePolicyGt = "Instance policy could not be retrieved"
)

// instancePolicy is an instance policy. Its fields are its persisted form.
type instancePolicy struct {
	Type       string            `json:"type"`
	Enabled    bool              `json:"enabled"`
	Attributes *policyAttributes `json:"attributes,omitempty"`
	CreatedBy  string            `json:"createdBy"`
	Created    time.Time         `json:"creationDate"`
	UpdatedBy  string            `json:"updatedBy"`
	Updated    time.Time         `json:"lastUpdated"`
}

// policyAttributes are the attributes of an instance policy, on the wire
// and persisted.
type policyAttributes struct {
	AllowedNetwork    *string  `json:"allowed_network,omitempty"`
	AllowedIP         []string `json:"allowed_ip,omitempty"`
	CreateRootKey     *bool    `json:"create_root_key,omitempty"`
	CreateStandardKey *bool    `json:"create_standard_key,omitempty"`
	ImportRootKey     *bool    `json:"import_root_key,omitempty"`
	ImportStandardKey *bool    `json:"import_standard_key,omitempty"`
	EnforceToken      *bool    `json:"enforce_token,omitempty"`
	IntervalMonth     *int     `json:"interval_month,omitempty"`
}

// instancePolicyView is the wire shape of an instance policy.
type instancePolicyView struct {
	PolicyType   string         `json:"policy_type"`
	PolicyData   policyDataView `json:"policy_data"`
	CreatedBy    string         `json:"createdBy"`
	CreationDate *jsonTime      `json:"creationDate"`
	UpdatedBy    string         `json:"updatedBy"`
	LastUpdated  *jsonTime      `json:"lastUpdated"`
}

type policyDataView struct {
	Enabled    bool              `json:"enabled"`
	Attributes *policyAttributes `json:"attributes,omitempty"`
}

// instancePolicyBody is the body of PUT /instance/policies. Unknown fields
// are refused.
type instancePolicyBody struct {
	Metadata  *metadataIn `json:"metadata"`
	Resources []struct {
		PolicyType string `json:"policy_type"`
		PolicyData *struct {
			Enabled    *bool             `json:"enabled"`
			Attributes *policyAttributes `json:"attributes"`
		} `json:"policy_data"`
	} `json:"resources"`
}

func instancePolicyParam(c *call, what string) (string, error) {
	p := c.r.URL.Query().Get("policy")
	if p == "" || knownInstancePolicy(p) {
		return p, nil
	}
	return "", errInvalidQuery(what, "policy", "one of dualAuthDelete, rotation, allowedNetwork, allowedIP, keyCreateImportAccess, metrics")
}

// getInstancePolicies serves GET /instance/policies[?policy=…]: the
// policies that have been set, in a fixed order.
func (s *Server) getInstancePolicies(c *call) (reply, error) {
	which, err := instancePolicyParam(c, whatInstancePolicyGt)
	if err != nil {
		return reply{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	views := []instancePolicyView{}
	for _, t := range instancePolicyTypes {
		p := c.inst.policies[t]
		if p == nil || which != "" && which != t {
			continue
		}
		views = append(views, instancePolicyView{
			PolicyType:   p.Type,
			PolicyData:   policyDataView{Enabled: p.Enabled, Attributes: p.Attributes},
			CreatedBy:    p.CreatedBy,
			CreationDate: jt(p.Created),
			UpdatedBy:    p.UpdatedBy,
			LastUpdated:  jt(p.Updated),
		})
	}
	return reply{status: http.StatusOK, body: collection[instancePolicyView]{
		Metadata:  collectionMetadata{CollectionType: policyType, CollectionTotal: len(views)},
		Resources: views,
	}}, nil
}

// putInstancePolicies serves PUT /instance/policies[?policy=…] → 204.
func (s *Server) putInstancePolicies(c *call) (reply, error) {
	which, err := instancePolicyParam(c, whatInstancePolicy)
	if err != nil {
		return reply{}, err
	}
	var body instancePolicyBody
	present, err := decodeStrict(c, whatInstancePolicy, &body)
	if err != nil {
		return reply{}, err
	}
	if !present {
		return reply{}, errNoBody(whatInstancePolicy)
	}
	if err := checkMetadata(whatInstancePolicy, body.Metadata, len(body.Resources)); err != nil {
		return reply{}, err
	}
	if n := len(body.Resources); n == 0 || n > len(instancePolicyTypes) || which != "" && n != 1 {
		return reply{}, newAPIError(http.StatusBadRequest, whatInstancePolicy, "NUM_COLLECTION_RESOURCE_ERR",
			"The number of resources in the collection is not valid for this request", nil)
	}
	var next []*instancePolicy
	for _, r := range body.Resources {
		if !knownInstancePolicy(r.PolicyType) {
			return reply{}, errInvalidField(whatInstancePolicy, "policy_type",
				"one of dualAuthDelete, rotation, allowedNetwork, allowedIP, keyCreateImportAccess, metrics")
		}
		if which != "" && r.PolicyType != which {
			return reply{}, newAPIError(http.StatusBadRequest, whatInstancePolicy, "BODY_QUERY_PARAM_MISMATCH_ERR",
				"The policy in the body does not match the policy query parameter", nil)
		}
		if slices.ContainsFunc(next, func(p *instancePolicy) bool { return p.Type == r.PolicyType }) {
			return reply{}, errBadBody(whatInstancePolicy, "policy "+r.PolicyType+" is given twice")
		}
		if r.PolicyData == nil || r.PolicyData.Enabled == nil {
			return reply{}, errInvalidField(whatInstancePolicy, "enabled", "true or false")
		}
		attrs, err := checkPolicyAttributes(r.PolicyType, *r.PolicyData.Enabled, r.PolicyData.Attributes)
		if err != nil {
			return reply{}, err
		}
		next = append(next, &instancePolicy{Type: r.PolicyType, Enabled: *r.PolicyData.Enabled, Attributes: attrs})
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	saved := make(map[string]*instancePolicy, len(c.inst.policies))
	for t, p := range c.inst.policies {
		saved[t] = p
	}
	for _, p := range next {
		p.Created, p.CreatedBy = c.now, c.caller
		if old := c.inst.policies[p.Type]; old != nil {
			p.Created, p.CreatedBy = old.Created, old.CreatedBy
		}
		p.Updated, p.UpdatedBy = c.now, c.caller
		c.inst.policies[p.Type] = p
	}
	if err := s.persist(); err != nil {
		c.inst.policies = saved
		return reply{}, err
	}
	return reply{status: http.StatusNoContent}, nil
}

// checkPolicyAttributes validates and normalises the attributes of one
// instance policy.
func checkPolicyAttributes(typ string, enabled bool, a *policyAttributes) (*policyAttributes, error) {
	empty := a == nil || a.AllowedNetwork == nil && a.AllowedIP == nil && a.CreateRootKey == nil && a.CreateStandardKey == nil &&
		a.ImportRootKey == nil && a.ImportStandardKey == nil && a.EnforceToken == nil && a.IntervalMonth == nil
	only := func(ok bool) error {
		if !ok {
			return errBadBody(whatInstancePolicy, "attributes not allowed for policy "+typ)
		}
		return nil
	}
	switch typ {
	case ipolicyDualAuth, ipolicyMetrics:
		return nil, only(empty)
	case ipolicyRotation:
		if a == nil {
			a = &policyAttributes{}
		}
		if err := only(a.AllowedNetwork == nil && a.AllowedIP == nil && a.CreateRootKey == nil && a.CreateStandardKey == nil &&
			a.ImportRootKey == nil && a.ImportStandardKey == nil && a.EnforceToken == nil); err != nil {
			return nil, err
		}
		if m := a.IntervalMonth; m != nil && (*m < 1 || *m > 12) || m == nil && enabled {
			return nil, errInvalidField(whatInstancePolicy, "interval_month", "an integer between 1 and 12 (inclusive)")
		}
		if a.IntervalMonth == nil {
			return nil, nil
		}
		return &policyAttributes{IntervalMonth: a.IntervalMonth}, nil
	case ipolicyAllowedNetwork:
		if a == nil || a.AllowedNetwork == nil || *a.AllowedNetwork != "public-and-private" && *a.AllowedNetwork != "private-only" {
			return nil, errInvalidField(whatInstancePolicy, "allowed_network", "public-and-private or private-only")
		}
		return &policyAttributes{AllowedNetwork: a.AllowedNetwork}, nil
	case ipolicyAllowedIP:
		if !enabled {
			return nil, only(empty)
		}
		if a == nil || len(a.AllowedIP) == 0 {
			return nil, errInvalidField(whatInstancePolicy, "allowed_ip", "a non-empty list of IPv4 or IPv6 CIDR ranges")
		}
		for _, cidr := range a.AllowedIP {
			if _, err := netip.ParsePrefix(cidr); err != nil {
				return nil, errInvalidField(whatInstancePolicy, "allowed_ip", "a non-empty list of IPv4 or IPv6 CIDR ranges")
			}
		}
		return &policyAttributes{AllowedIP: slices.Clone(a.AllowedIP)}, nil
	case ipolicyKeyAccess:
		if !enabled {
			return nil, only(empty)
		}
		if a == nil {
			a = &policyAttributes{}
		}
		if err := only(a.AllowedNetwork == nil && a.AllowedIP == nil && a.IntervalMonth == nil); err != nil {
			return nil, err
		}
		def := func(b *bool, v bool) *bool {
			if b == nil {
				return &v
			}
			return b
		}
		return &policyAttributes{
			CreateRootKey: def(a.CreateRootKey, true), CreateStandardKey: def(a.CreateStandardKey, true),
			ImportRootKey: def(a.ImportRootKey, true), ImportStandardKey: def(a.ImportStandardKey, true),
			EnforceToken: def(a.EnforceToken, false),
		}, nil
	}
	return nil, errInvalidField(whatInstancePolicy, "policy_type", "a known policy type")
}

// enabledPolicy returns the instance's policy of type t if it is enabled.
// The caller holds s.mu.
func (inst *instance) enabledPolicy(t string) *instancePolicy {
	if p := inst.policies[t]; p != nil && p.Enabled {
		return p
	}
	return nil
}

// checkCreateAccess enforces the keyCreateImportAccess policy on a key
// create: root or standard, generated or imported, with or without an
// import token. The caller holds s.mu.
func (inst *instance) checkCreateAccess(standard, imported, withToken bool) error {
	p := inst.enabledPolicy(ipolicyKeyAccess)
	if p == nil || p.Attributes == nil {
		return nil
	}
	a := p.Attributes
	var allowed bool
	var kind string
	switch {
	case !imported && !standard:
		allowed, kind = *a.CreateRootKey, "creating root keys"
	case !imported:
		allowed, kind = *a.CreateStandardKey, "creating standard keys"
	case !standard:
		allowed, kind = *a.ImportRootKey, "importing root keys"
	default:
		allowed, kind = *a.ImportStandardKey, "importing standard keys"
	}
	if allowed && imported && *a.EnforceToken && !withToken {
		allowed, kind = false, "importing keys without an import token"
	}
	if !allowed {
		return newAPIError(http.StatusConflict, whatCreate, "KEY_CREATE_IMPORT_ACCESS_ERR",
			"The instance's keyCreateImportAccess policy forbids "+kind, nil)
	}
	return nil
}

// allowsIP reports whether the instance's allowedIP policy, if enabled,
// lets a request from addr through. The caller holds s.mu.
func (inst *instance) allowsIP(addr netip.Addr) bool {
	p := inst.enabledPolicy(ipolicyAllowedIP)
	if p == nil || p.Attributes == nil {
		return true
	}
	for _, cidr := range p.Attributes.AllowedIP {
		if pr, err := netip.ParsePrefix(cidr); err == nil && pr.Contains(addr.Unmap()) {
			return true
		}
	}
	return false
}
