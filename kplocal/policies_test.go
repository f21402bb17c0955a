package kplocal

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// wirePolicies is a policy collection as a client reads it.
type wirePolicies struct {
	Metadata struct {
		CollectionType  string `json:"collectionType"`
		CollectionTotal int    `json:"collectionTotal"`
	} `json:"metadata"`
	Resources []struct {
		ID       string `json:"id"`
		CRN      string `json:"crn"`
		Type     string `json:"type"`
		Rotation *struct {
			Enabled       bool `json:"enabled"`
			IntervalMonth int  `json:"interval_month"`
		} `json:"rotation"`
		DualAuthDelete *struct {
			Enabled bool `json:"enabled"`
		} `json:"dualAuthDelete"`
		CreationDate   string `json:"creationDate"`
		LastUpdateDate string `json:"lastUpdateDate"`
	} `json:"resources"`
}

func (r *result) policies(t *testing.T) wirePolicies {
	t.Helper()
	var p wirePolicies
	r.decode(t, &p)
	if p.Metadata.CollectionType != policyType || p.Metadata.CollectionTotal != len(p.Resources) {
		t.Fatalf("malformed policy collection: %s", r.body)
	}
	return p
}

func policyPut(resources ...map[string]any) map[string]any {
	rs := make([]any, len(resources))
	for i, r := range resources {
		r["type"] = policyType
		rs[i] = r
	}
	return map[string]any{
		"metadata":  map[string]any{"collectionType": policyType, "collectionTotal": len(rs)},
		"resources": rs,
	}
}

func TestPolicies(t *testing.T) {
	h := newHarness(t, Config{})
	k := h.create("policy-key", true)
	std := h.create("policy-standard", false)
	path := "/keys/" + k.ID + "/policies"

	if p := h.request(http.MethodGet, path, nil).wantStatus(t, http.StatusOK).policies(t); len(p.Resources) != 0 {
		t.Fatalf("policies of a new key = %+v", p)
	}

	rot := map[string]any{"rotation": map[string]any{"enabled": true, "interval_month": 3}}
	p := h.request(http.MethodPut, path+"?policy=rotation", policyPut(rot)).wantStatus(t, http.StatusOK).policies(t)
	if len(p.Resources) != 1 || p.Resources[0].Rotation == nil || p.Resources[0].Rotation.IntervalMonth != 3 ||
		!p.Resources[0].Rotation.Enabled || p.Resources[0].Type != policyType ||
		!strings.HasSuffix(p.Resources[0].CRN, ":policy:"+p.Resources[0].ID) || p.Resources[0].CreationDate == "" {
		t.Fatalf("PUT rotation policy = %+v", p)
	}
	if got := h.request(http.MethodGet, "/keys/"+k.ID, nil).key(t); got.Rotation == nil || got.Rotation.IntervalMonth != 3 || got.LastUpdateDate == "" {
		t.Fatalf("key after policy PUT = %+v", got)
	}
	// Enabling or disabling alone keeps the interval.
	h.clock.Advance(time.Minute)
	p = h.request(http.MethodPut, path+"?policy=rotation", policyPut(map[string]any{"rotation": map[string]any{"enabled": false}})).
		wantStatus(t, http.StatusOK).policies(t)
	if r := p.Resources[0].Rotation; r.Enabled || r.IntervalMonth != 3 || p.Resources[0].LastUpdateDate == p.Resources[0].CreationDate {
		t.Fatalf("disabled rotation policy = %+v", p.Resources[0])
	}

	dual := map[string]any{"dualAuthDelete": map[string]any{"enabled": true}}
	h.request(http.MethodPut, path, policyPut(map[string]any{"rotation": map[string]any{"interval_month": 6}}, dual)).wantStatus(t, http.StatusOK)
	all := h.request(http.MethodGet, path, nil).policies(t)
	if len(all.Resources) != 2 || all.Resources[0].Rotation.IntervalMonth != 6 || !all.Resources[1].DualAuthDelete.Enabled {
		t.Fatalf("GET policies = %+v", all)
	}
	if only := h.request(http.MethodGet, path+"?policy=dualAuthDelete", nil).policies(t); len(only.Resources) != 1 || only.Resources[0].DualAuthDelete == nil {
		t.Fatalf("GET ?policy=dualAuthDelete = %+v", only)
	}
	if only := h.request(http.MethodGet, path+"?policy=rotation", nil).policies(t); len(only.Resources) != 1 || only.Resources[0].Rotation == nil {
		t.Fatalf("GET ?policy=rotation = %+v", only)
	}

	bad := []struct {
		name, query string
		body        any
		code        string
		target      string
	}{
		{"interval 0", "?policy=rotation", policyPut(map[string]any{"rotation": map[string]any{"interval_month": 0}}), "INVALID_FIELD_ERR", "interval_month"},
		{"interval -1", "", policyPut(map[string]any{"rotation": map[string]any{"interval_month": -1}}), "INVALID_FIELD_ERR", "interval_month"},
		{"interval 13", "", policyPut(map[string]any{"rotation": map[string]any{"interval_month": 13}}), "INVALID_FIELD_ERR", "interval_month"},
		{"mismatch", "?policy=rotation", policyPut(dual), "BODY_QUERY_PARAM_MISMATCH_ERR", ""},
		{"two with selector", "?policy=rotation", policyPut(rot, dual), "NUM_COLLECTION_RESOURCE_ERR", ""},
		{"total mismatch", "", map[string]any{"metadata": map[string]any{"collectionType": policyType, "collectionTotal": 3}, "resources": []any{rot}}, "COLLECTION_TOTAL_MISMATCH_ERR", ""},
		{"no metadata", "", map[string]any{"resources": []any{rot}}, "BAD_BODY_ERR", ""},
		{"empty policy", "", policyPut(map[string]any{}), "BAD_BODY_ERR", ""},
		{"no body", "", nil, "NO_BODY_ERR", ""},
		{"unknown selector", "?policy=bogus", policyPut(rot), "INVALID_QUERY_PARAM_ERR", ""},
		{"dual auth off", "", policyPut(map[string]any{"dualAuthDelete": map[string]any{"enabled": false}}), "INVALID_FIELD_ERR", "enabled"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			reason := h.request(http.MethodPut, path+tc.query, tc.body).wantError(t, http.StatusBadRequest, tc.code)
			if tc.target != "" {
				reason.wantTarget(t, "field", tc.target)
			}
		})
	}
	// Failed PUTs changed nothing.
	if after := h.request(http.MethodGet, path, nil).policies(t); after.Resources[0].Rotation.IntervalMonth != 6 || !after.Resources[1].DualAuthDelete.Enabled {
		t.Fatalf("policies changed by failed PUTs: %+v", after)
	}

	stdPath := "/keys/" + std.ID + "/policies"
	h.request(http.MethodPut, stdPath, policyPut(rot)).wantError(t, http.StatusBadRequest, "KEY_ROOT_REQ_ERR")
	h.request(http.MethodPut, stdPath, policyPut(dual)).wantStatus(t, http.StatusOK)
	h.request(http.MethodGet, "/keys/"+k.ID+"/policies?policy=x", nil).wantError(t, http.StatusBadRequest, "INVALID_QUERY_PARAM_ERR")
	h.request(http.MethodGet, "/keys/5e4d3c2b-0000-4000-8000-000000000000/policies", nil).wantError(t, http.StatusNotFound, "KEY_NOT_FOUND_ERR")
}

func TestPolicyOverrides(t *testing.T) {
	h := newHarness(t, Config{})
	body := keyBody(map[string]any{
		"name": "with-overrides", "extractable": false,
		"rotation":       map[string]any{"enabled": true, "interval_month": 2},
		"dualAuthDelete": map[string]any{"enabled": true},
	})
	k := h.request(http.MethodPost, "/keys_with_policy_overrides", body).wantStatus(t, http.StatusCreated).key(t)
	if k.Rotation == nil || k.Rotation.IntervalMonth != 2 || !k.DualAuthDelete.Enabled {
		t.Fatalf("key with overrides = %+v", k)
	}
	if p := h.request(http.MethodGet, "/keys/"+k.ID+"/policies", nil).policies(t); len(p.Resources) != 2 {
		t.Fatalf("policies of a key created with overrides = %+v", p)
	}
	stdBody := keyBody(map[string]any{"name": "std-overrides", "extractable": true, "rotation": map[string]any{"interval_month": 2}})
	h.request(http.MethodPost, "/keys_with_policy_overrides", stdBody).wantError(t, http.StatusBadRequest, "KEY_ROOT_REQ_ERR")
	badBody := keyBody(map[string]any{"name": "bad-overrides", "extractable": false, "rotation": map[string]any{"enabled": true}})
	h.request(http.MethodPost, "/keys_with_policy_overrides", badBody).wantError(t, http.StatusBadRequest, "INVALID_FIELD_ERR").
		wantTarget(t, "field", "interval_month")
}

func TestDualAuthDelete(t *testing.T) {
	const secondKey = "second-user-api-key"
	h := newHarness(t, Config{TokenTTL: 30 * 24 * time.Hour,
		Accounts: []Account{{APIKey: secondKey, Instances: []string{testInstance}}}})
	second := *h // another caller of the same instance
	second.token = h.fetchToken(secondKey)
	k := h.create("dual", true)
	plain := h.create("plain", true)
	h.action(plain.ID, "setKeyForDeletion", "null").wantError(t, http.StatusConflict, "NOT_DUAL_AUTH_ERR")
	h.action(plain.ID, "unsetKeyForDeletion", "null").wantError(t, http.StatusConflict, "NOT_DUAL_AUTH_ERR")

	h.request(http.MethodPut, "/keys/"+k.ID+"/policies?policy=dualAuthDelete",
		policyPut(map[string]any{"dualAuthDelete": map[string]any{"enabled": true}})).wantStatus(t, http.StatusOK)
	h.request(http.MethodDelete, "/keys/"+k.ID, nil).wantError(t, http.StatusConflict, "AUTHORIZATIONS_NOT_MET")

	h.action(k.ID, "setKeyForDeletion", "null").wantStatus(t, http.StatusNoContent)
	got := h.request(http.MethodGet, "/keys/"+k.ID, nil).key(t)
	wantExp := h.clock.Now().Add(7 * 24 * time.Hour).Format(time.RFC3339)
	if !got.DualAuthDelete.Enabled || got.DualAuthDelete.KeySetForDeletion == nil || !*got.DualAuthDelete.KeySetForDeletion ||
		got.DualAuthDelete.AuthExpiration != wantExp {
		t.Fatalf("dualAuthDelete after authorization = %+v, want expiration %s", got.DualAuthDelete, wantExp)
	}
	h.action(k.ID, "unsetKeyForDeletion", nil).wantStatus(t, http.StatusNoContent)
	h.request(http.MethodDelete, "/keys/"+k.ID, nil).wantError(t, http.StatusConflict, "AUTHORIZATIONS_NOT_MET")

	// An authorisation lasts seven days.
	h.action(k.ID, "setKeyForDeletion", nil).wantStatus(t, http.StatusNoContent)
	h.clock.Advance(7 * 24 * time.Hour)
	if got := h.request(http.MethodGet, "/keys/"+k.ID, nil).key(t); got.DualAuthDelete.KeySetForDeletion != nil {
		t.Fatalf("authorization still shown after 7 days: %+v", got.DualAuthDelete)
	}
	h.request(http.MethodDelete, "/keys/"+k.ID, nil).wantError(t, http.StatusConflict, "AUTHORIZATIONS_NOT_MET")
	h.action(k.ID, "setKeyForDeletion", nil).wantStatus(t, http.StatusNoContent)
	// The caller who authorised the deletion cannot also perform it.
	h.request(http.MethodDelete, "/keys/"+k.ID, nil).wantError(t, http.StatusConflict, "AUTHORIZATIONS_NOT_MET")
	second.request(http.MethodDelete, "/keys/"+k.ID, nil).wantStatus(t, http.StatusNoContent)
	if st := h.srv.Stats(); st.SetKeyForDeletion != 4 || st.UnsetKeyForDeletion != 2 {
		t.Fatalf("stats = %+v", st)
	}
}
