package kplocal

import (
	"net/http"
	"time"
)

const (
	policyRotation = "rotation"
	policyDualAuth = "dualAuthDelete"
)

// rotationIn and dualAuthIn are policy settings in requests.
type (
	rotationIn struct {
		Enabled       *bool `json:"enabled"`
		IntervalMonth *int  `json:"interval_month"`
	}
	dualAuthIn struct {
		Enabled *bool `json:"enabled"`
	}
)

// policyView is the wire shape of a key policy.
type policyView struct {
	ID             string           `json:"id"`
	CRN            string           `json:"crn"`
	Type           string           `json:"type"`
	Rotation       *rotationSetting `json:"rotation,omitempty"`
	DualAuthDelete *dualAuthSetting `json:"dualAuthDelete,omitempty"`
	CreatedBy      string           `json:"createdBy"`
	CreationDate   *jsonTime        `json:"creationDate"`
	UpdatedBy      string           `json:"updatedBy"`
	LastUpdateDate *jsonTime        `json:"lastUpdateDate"`
}

type dualAuthSetting struct {
	Enabled bool `json:"enabled"`
}

// policyBody is the body of PUT /keys/{id}/policies.
type policyBody struct {
	Metadata  *metadataIn `json:"metadata"`
	Resources []struct {
		Type           string      `json:"type"`
		Rotation       *rotationIn `json:"rotation"`
		DualAuthDelete *dualAuthIn `json:"dualAuthDelete"`
	} `json:"resources"`
}

// applyRotation returns old updated with in. A new policy needs an
// interval and is enabled unless in says otherwise.
func (s *Server) applyRotation(what string, old *rotationPolicy, in *rotationIn, now time.Time) (*rotationPolicy, error) {
	p := rotationPolicy{ID: newUUID(), Enabled: true, Created: now}
	if old != nil {
		p = *old
	}
	switch {
	case in.IntervalMonth != nil && (*in.IntervalMonth < 1 || *in.IntervalMonth > 12),
		in.IntervalMonth == nil && old == nil:
		return nil, errInvalidField(what, "interval_month", "an integer between 1 and 12 (inclusive)")
	case in.IntervalMonth != nil:
		p.IntervalMonth = *in.IntervalMonth
	}
	if in.Enabled != nil {
		p.Enabled = *in.Enabled
	}
	p.Updated = now
	return &p, nil
}

// applyDualAuth returns old updated with in. Once enabled on a key, dual
// authorisation cannot be disabled.
func (s *Server) applyDualAuth(what string, old *dualAuthPolicy, in *dualAuthIn, now time.Time) (*dualAuthPolicy, error) {
	if in.Enabled == nil {
		return nil, errInvalidField(what, "enabled", "true or false")
	}
	if old != nil && old.Enabled && !*in.Enabled {
		return nil, errInvalidField(what, "enabled", "true: a key's dual authorization policy cannot be disabled once enabled")
	}
	p := dualAuthPolicy{ID: newUUID(), Created: now}
	if old != nil {
		p = *old
	}
	p.Enabled = *in.Enabled
	p.Updated = now
	return &p, nil
}

func (s *Server) rotationView(instanceID string, p *rotationPolicy) policyView {
	return policyView{
		ID: p.ID, CRN: s.crn(instanceID, "policy", p.ID), Type: policyType,
		Rotation:  &rotationSetting{Enabled: p.Enabled, IntervalMonth: p.IntervalMonth},
		CreatedBy: createdByID, CreationDate: jt(p.Created), UpdatedBy: createdByID, LastUpdateDate: jt(p.Updated),
	}
}

func (s *Server) dualAuthView(instanceID string, p *dualAuthPolicy) policyView {
	return policyView{
		ID: p.ID, CRN: s.crn(instanceID, "policy", p.ID), Type: policyType,
		DualAuthDelete: &dualAuthSetting{Enabled: p.Enabled},
		CreatedBy:      createdByID, CreationDate: jt(p.Created), UpdatedBy: createdByID, LastUpdateDate: jt(p.Updated),
	}
}

func policyCollection(views []policyView) collection[policyView] {
	if views == nil {
		views = []policyView{}
	}
	return collection[policyView]{
		Metadata:  collectionMetadata{CollectionType: policyType, CollectionTotal: len(views)},
		Resources: views,
	}
}

// policyParam reads the optional ?policy= selector.
func policyParam(c *call, what string) (string, error) {
	switch p := c.r.URL.Query().Get("policy"); p {
	case "", policyRotation, policyDualAuth:
		return p, nil
	}
	return "", errInvalidQuery(what, "policy", "rotation or dualAuthDelete")
}

// getPolicies serves GET /keys/{id}/policies[?policy=…].
func (s *Server) getPolicies(c *call) (reply, error) {
	which, err := policyParam(c, whatPolicyGt)
	if err != nil {
		return reply{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.lookup(c)
	if err != nil {
		return reply{}, err
	}
	var views []policyView
	if k.Rotation != nil && which != policyDualAuth {
		views = append(views, s.rotationView(k.Instance, k.Rotation))
	}
	if k.DualAuth != nil && which != policyRotation {
		views = append(views, s.dualAuthView(k.Instance, k.DualAuth))
	}
	return reply{status: http.StatusOK, body: policyCollection(views)}, nil
}

// putPolicies serves PUT /keys/{id}/policies[?policy=…].
func (s *Server) putPolicies(c *call) (reply, error) {
	which, err := policyParam(c, whatPolicy)
	if err != nil {
		return reply{}, err
	}
	var body policyBody
	present, err := decodeBody(c, whatPolicy, &body)
	if err != nil {
		return reply{}, err
	}
	if !present {
		return reply{}, errNoBody(whatPolicy)
	}
	if err := checkMetadata(whatPolicy, body.Metadata, len(body.Resources)); err != nil {
		return reply{}, err
	}
	if n := len(body.Resources); n == 0 || n > 2 || which != "" && n != 1 {
		return reply{}, newAPIError(http.StatusBadRequest, whatPolicy, "NUM_COLLECTION_RESOURCE_ERR",
			"The number of resources in the collection is not valid for this request", nil)
	}
	for _, r := range body.Resources {
		if r.Rotation == nil && r.DualAuthDelete == nil {
			return reply{}, errBadBody(whatPolicy, "a policy resource must set rotation or dualAuthDelete")
		}
		if which == policyRotation && r.DualAuthDelete != nil || which == policyDualAuth && r.Rotation != nil {
			return reply{}, newAPIError(http.StatusBadRequest, whatPolicy, "BODY_QUERY_PARAM_MISMATCH_ERR",
				"The policy in the body does not match the policy query parameter", nil)
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.lookup(c)
	if err != nil {
		return reply{}, err
	}
	if k.Deleted != nil {
		return reply{}, errKeyDeleted(whatPolicy)
	}
	var views []policyView
	err = s.update(k, func(k *key) error {
		views = views[:0]
		for _, r := range body.Resources {
			if r.Rotation != nil {
				if k.Standard {
					return errRootRequired(whatPolicy, "Rotation policy cannot be set on a standard key")
				}
				p, err := s.applyRotation(whatPolicy, k.Rotation, r.Rotation, c.now)
				if err != nil {
					return err
				}
				k.Rotation = p
				views = append(views, s.rotationView(k.Instance, p))
			}
			if r.DualAuthDelete != nil {
				p, err := s.applyDualAuth(whatPolicy, k.DualAuth, r.DualAuthDelete, c.now)
				if err != nil {
					return err
				}
				k.DualAuth = p
				views = append(views, s.dualAuthView(k.Instance, p))
			}
		}
		k.touch(c.now)
		return nil
	})
	if err != nil {
		return reply{}, err
	}
	if preferMinimal(c.r) {
		return reply{status: http.StatusNoContent}, nil
	}
	return reply{status: http.StatusOK, body: policyCollection(views)}, nil
}
