package kplocal

import (
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestKeyRings(t *testing.T) {
	h := newHarness(t, Config{TokenTTL: 48 * time.Hour})
	h.request(http.MethodPost, "/key_rings/ring-one", nil).wantStatus(t, http.StatusCreated)
	if r := h.request(http.MethodPost, "/key_rings/ring-two", nil); r.status != http.StatusCreated || len(r.body) != 0 {
		t.Fatalf("create key ring: %d %q, want 201 with an empty body", r.status, r.body)
	}
	h.request(http.MethodPost, "/key_rings/ring-one", nil).wantError(t, http.StatusConflict, "")
	h.request(http.MethodPost, "/key_rings/x", nil).wantError(t, http.StatusBadRequest, "INVALID_FIELD_ERR")

	var list struct {
		Metadata struct {
			CollectionTotal int  `json:"collectionTotal"`
			TotalCount      *int `json:"totalCount"`
		} `json:"metadata"`
		Resources []struct {
			ID           string `json:"id"`
			CreationDate string `json:"creationDate"`
			CreatedBy    string `json:"createdBy"`
		} `json:"resources"`
	}
	h.request(http.MethodGet, "/key_rings?totalCount=true", nil).wantStatus(t, http.StatusOK).decode(t, &list)
	var ids []string
	for _, r := range list.Resources {
		ids = append(ids, r.ID)
	}
	if !slices.Equal(ids, []string{"default", "ring-one", "ring-two"}) || list.Metadata.TotalCount == nil || *list.Metadata.TotalCount != 3 ||
		list.Resources[1].CreationDate != h.clock.Now().Format(time.RFC3339) || list.Resources[1].CreatedBy == "" {
		t.Fatalf("key rings = %+v", list)
	}

	// Keys in a ring; an unknown ring is refused.
	k := h.request(http.MethodPost, "/keys", keyBody(map[string]any{"name": "ringed", "extractable": false}), "x-kms-key-ring", "ring-one").
		wantStatus(t, http.StatusCreated).key(t)
	if k.KeyRingID != "ring-one" {
		t.Fatalf("key ring of the key = %q", k.KeyRingID)
	}
	h.request(http.MethodPost, "/keys", keyBody(map[string]any{"name": "lost", "extractable": false}), "x-kms-key-ring", "no-such-ring").
		wantError(t, http.StatusNotFound, "")
	h.request(http.MethodGet, "/keys/"+k.ID, nil, "x-kms-key-ring", "ring-two").wantError(t, http.StatusNotFound, "KEY_NOT_FOUND_ERR")
	h.request(http.MethodGet, "/keys/"+k.ID, nil, "x-kms-key-ring", "ring-one").wantStatus(t, http.StatusOK)

	// A ring with a key cannot be deleted; with a destroyed key only with force.
	h.request(http.MethodDelete, "/key_rings/ring-one", nil).wantError(t, http.StatusConflict, "KEY_RING_NOT_EMPTY_ERR")
	h.request(http.MethodDelete, "/key_rings/ring-one?force=true", nil).wantError(t, http.StatusConflict, "KEY_RING_NOT_EMPTY_ERR")
	h.request(http.MethodDelete, "/keys/"+k.ID, nil).wantStatus(t, http.StatusNoContent)
	h.request(http.MethodDelete, "/key_rings/ring-one", nil).wantError(t, http.StatusConflict, "KEY_RING_NOT_EMPTY_ERR")
	h.request(http.MethodDelete, "/key_rings/ring-one?force=true", nil).wantStatus(t, http.StatusNoContent)
	if got := h.request(http.MethodGet, "/keys/"+k.ID, nil).key(t); got.KeyRingID != "default" {
		t.Fatalf("destroyed key moved to %q, want default", got.KeyRingID)
	}
	h.request(http.MethodDelete, "/key_rings/ring-two", nil).wantStatus(t, http.StatusNoContent)
	h.request(http.MethodDelete, "/key_rings/ring-two", nil).wantError(t, http.StatusNotFound, "")
	h.request(http.MethodDelete, "/key_rings/default", nil).wantError(t, http.StatusBadRequest, "INVALID_FIELD_ERR")
}

type instancePolicies struct {
	Resources []struct {
		PolicyType string `json:"policy_type"`
		PolicyData struct {
			Enabled    bool           `json:"enabled"`
			Attributes map[string]any `json:"attributes"`
		} `json:"policy_data"`
		CreatedBy    string `json:"createdBy"`
		CreationDate string `json:"creationDate"`
		UpdatedBy    string `json:"updatedBy"`
		LastUpdated  string `json:"lastUpdated"`
	} `json:"resources"`
}

func instancePolicyPut(resources ...map[string]any) map[string]any {
	return map[string]any{
		"metadata":  map[string]any{"collectionType": policyType, "collectionTotal": len(resources)},
		"resources": resources,
	}
}

func TestInstancePolicies(t *testing.T) {
	h := newHarness(t, Config{})
	var got instancePolicies
	h.request(http.MethodGet, "/instance/policies", nil).wantStatus(t, http.StatusOK).decode(t, &got)
	if len(got.Resources) != 0 {
		t.Fatalf("policies of a new instance = %+v", got)
	}
	rotation := map[string]any{"policy_type": "rotation", "policy_data": map[string]any{"enabled": true, "attributes": map[string]any{"interval_month": 3}}}
	h.request(http.MethodPut, "/instance/policies?policy=rotation", instancePolicyPut(rotation)).wantStatus(t, http.StatusNoContent)
	h.request(http.MethodPut, "/instance/policies", instancePolicyPut(
		map[string]any{"policy_type": "allowedNetwork", "policy_data": map[string]any{"enabled": true, "attributes": map[string]any{"allowed_network": "public-and-private"}}},
		map[string]any{"policy_type": "metrics", "policy_data": map[string]any{"enabled": true}},
		map[string]any{"policy_type": "dualAuthDelete", "policy_data": map[string]any{"enabled": false}},
	)).wantStatus(t, http.StatusNoContent)
	h.request(http.MethodGet, "/instance/policies", nil).wantStatus(t, http.StatusOK).decode(t, &got)
	var types []string
	for _, p := range got.Resources {
		types = append(types, p.PolicyType)
	}
	if !slices.Equal(types, []string{"dualAuthDelete", "rotation", "allowedNetwork", "metrics"}) ||
		got.Resources[1].PolicyData.Attributes["interval_month"] != 3.0 || got.Resources[1].CreatedBy == "" || got.Resources[1].LastUpdated == "" {
		t.Fatalf("instance policies = %+v", got)
	}
	var one instancePolicies
	h.request(http.MethodGet, "/instance/policies?policy=allowedNetwork", nil).wantStatus(t, http.StatusOK).decode(t, &one)
	if len(one.Resources) != 1 || one.Resources[0].PolicyData.Attributes["allowed_network"] != "public-and-private" {
		t.Fatalf("allowedNetwork = %+v", one)
	}

	// Validation.
	h.request(http.MethodPut, "/instance/policies?policy=metrics", instancePolicyPut(rotation)).
		wantError(t, http.StatusBadRequest, "BODY_QUERY_PARAM_MISMATCH_ERR")
	h.request(http.MethodPut, "/instance/policies?policy=rotation", instancePolicyPut(rotation, rotation)).
		wantError(t, http.StatusBadRequest, "NUM_COLLECTION_RESOURCE_ERR")
	bad := instancePolicyPut(rotation)
	bad["metadata"] = map[string]any{"collectionType": policyType, "collectionTotal": 2}
	h.request(http.MethodPut, "/instance/policies", bad).wantError(t, http.StatusBadRequest, "COLLECTION_TOTAL_MISMATCH_ERR")
	h.request(http.MethodPut, "/instance/policies", instancePolicyPut(map[string]any{"policy_type": "rotation", "unknown": 1})).
		wantError(t, http.StatusBadRequest, "BAD_BODY_ERR")
	h.request(http.MethodPut, "/instance/policies", instancePolicyPut(map[string]any{"policy_type": "rotation",
		"policy_data": map[string]any{"enabled": true, "attributes": map[string]any{"interval_month": 13}}})).
		wantError(t, http.StatusBadRequest, "INVALID_FIELD_ERR").wantTarget(t, "field", "interval_month")
	h.request(http.MethodPut, "/instance/policies", instancePolicyPut(map[string]any{"policy_type": "allowedIP",
		"policy_data": map[string]any{"enabled": true, "attributes": map[string]any{"allowed_ip": []string{"not-a-cidr"}}}})).
		wantError(t, http.StatusBadRequest, "INVALID_FIELD_ERR").wantTarget(t, "field", "allowed_ip")
	h.request(http.MethodGet, "/instance/policies?policy=nope", nil).wantError(t, http.StatusBadRequest, "INVALID_QUERY_PARAM_ERR")
}

func TestInstancePoliciesApplyToNewKeys(t *testing.T) {
	h := newHarness(t, Config{})
	before := h.create("before", true)
	h.request(http.MethodPut, "/instance/policies", instancePolicyPut(
		map[string]any{"policy_type": "rotation", "policy_data": map[string]any{"enabled": true, "attributes": map[string]any{"interval_month": 2}}},
		map[string]any{"policy_type": "dualAuthDelete", "policy_data": map[string]any{"enabled": true}},
	)).wantStatus(t, http.StatusNoContent)
	after := h.create("after", true)
	if before.Rotation != nil || before.DualAuthDelete.Enabled {
		t.Fatalf("a key created before the policies = %+v", before)
	}
	if after.Rotation == nil || after.Rotation.IntervalMonth != 2 || !after.DualAuthDelete.Enabled {
		t.Fatalf("a key created after the policies = %+v", after)
	}
	if std := h.create("standard", false); std.Rotation != nil {
		t.Fatalf("a standard key got a rotation policy: %+v", std)
	}
	over := h.request(http.MethodPost, "/keys_with_policy_overrides", keyBody(map[string]any{
		"name": "override", "extractable": false, "rotation": map[string]any{"enabled": true, "interval_month": 7},
	})).wantStatus(t, http.StatusCreated).key(t)
	if over.Rotation == nil || over.Rotation.IntervalMonth != 7 {
		t.Fatalf("keys_with_policy_overrides = %+v", over)
	}
}

func TestKeyCreateImportAccess(t *testing.T) {
	h := newHarness(t, Config{})
	h.request(http.MethodPut, "/instance/policies?policy=keyCreateImportAccess", instancePolicyPut(map[string]any{
		"policy_type": "keyCreateImportAccess",
		"policy_data": map[string]any{"enabled": true, "attributes": map[string]any{"create_standard_key": false, "enforce_token": true}},
	})).wantStatus(t, http.StatusNoContent)
	h.create("root-ok", true)
	h.request(http.MethodPost, "/keys", keyBody(map[string]any{"name": "std", "extractable": true})).
		wantError(t, http.StatusConflict, "KEY_CREATE_IMPORT_ACCESS_ERR")
	h.request(http.MethodPost, "/keys", keyBody(map[string]any{"name": "imp", "extractable": false, "payload": b64n(32, 1)})).
		wantError(t, http.StatusConflict, "KEY_CREATE_IMPORT_ACCESS_ERR")
	var got instancePolicies
	h.request(http.MethodGet, "/instance/policies?policy=keyCreateImportAccess", nil).decode(t, &got)
	if a := got.Resources[0].PolicyData.Attributes; a["create_root_key"] != true || a["create_standard_key"] != false || a["enforce_token"] != true {
		t.Fatalf("attributes = %v", a)
	}
}

func TestAllowedIPPolicy(t *testing.T) {
	h := newHarness(t, Config{})
	h.request(http.MethodPut, "/instance/policies", instancePolicyPut(map[string]any{"policy_type": "allowedIP",
		"policy_data": map[string]any{"enabled": true, "attributes": map[string]any{"allowed_ip": []string{"127.0.0.0/8"}}}})).
		wantStatus(t, http.StatusNoContent)
	h.request(http.MethodGet, "/keys", nil).wantStatus(t, http.StatusOK)
	h.request(http.MethodPut, "/instance/policies", instancePolicyPut(map[string]any{"policy_type": "allowedIP",
		"policy_data": map[string]any{"enabled": true, "attributes": map[string]any{"allowed_ip": []string{"10.0.0.0/8"}}}})).
		wantStatus(t, http.StatusNoContent)
	r := h.request(http.MethodGet, "/keys", nil)
	r.wantError(t, http.StatusUnauthorized, "")
	if !strings.Contains(string(r.body), "The user does not have access to the specified resource") {
		t.Fatalf("body %s", r.body)
	}
}

func TestAccounts(t *testing.T) {
	const other = "7c0ffee0-0000-4000-8000-000000000002"
	h := newHarness(t, Config{Accounts: []Account{
		{APIKey: "key-b", AccountID: "accountb", Instances: []string{other}},
	}})
	mine := h.create("in-primary", true)
	b := *h
	b.token = h.fetchToken("key-b")
	// Instance B through key B; its CRNs name account B.
	theirs := b.request(http.MethodPost, "/keys", keyBody(map[string]any{"name": "in-b", "extractable": false}), "bluemix-instance", other).
		wantStatus(t, http.StatusCreated).key(t)
	if !strings.Contains(theirs.CRN, ":a/accountb:"+other+":key:") || h.srv.KeyCRN(theirs.ID) != theirs.CRN {
		t.Fatalf("CRN = %s", theirs.CRN)
	}
	// Instances are isolated, and a token grants only its API key's instances.
	b.request(http.MethodGet, "/keys/"+mine.ID, nil, "bluemix-instance", other).wantError(t, http.StatusNotFound, "KEY_NOT_FOUND_ERR")
	for _, r := range []*result{
		b.request(http.MethodGet, "/keys", nil),                                 // key B on the primary instance
		h.request(http.MethodGet, "/keys", nil, "bluemix-instance", other),      // primary key on instance B
		h.request(http.MethodGet, "/keys", nil, "bluemix-instance", testAPIKey), // an unknown instance
	} {
		r.wantError(t, http.StatusUnauthorized, "")
		if !strings.Contains(string(r.body), "Unauthorized: The user does not have access to the specified resource") {
			t.Fatalf("401 body %s", r.body)
		}
	}
	// Aliases are per instance.
	h.request(http.MethodPost, "/keys/"+mine.ID+"/aliases/shared-alias", nil).wantStatus(t, http.StatusCreated)
	b.request(http.MethodPost, "/keys/"+theirs.ID+"/aliases/shared-alias", nil, "bluemix-instance", other).wantStatus(t, http.StatusCreated)

	for _, bad := range [][]Account{
		{{APIKey: testAPIKey, Instances: []string{other}}},
		{{APIKey: "x", Instances: nil}},
		{{APIKey: "", Instances: []string{other}}},
		{{APIKey: "y", AccountID: "accountc", Instances: []string{testInstance}}},
	} {
		if _, err := New(Config{InstanceID: testInstance, APIKey: testAPIKey, Accounts: bad}); !errors.Is(err, ErrBadAccounts) {
			t.Errorf("accounts %+v: err = %v, want ErrBadAccounts", bad, err)
		}
	}
}

func TestFidelityDetails(t *testing.T) {
	h := newHarness(t, Config{})
	// An ID that is neither a UUID nor an alias is malformed; an unknown alias is not found.
	h.request(http.MethodGet, "/keys/not%20an%20alias!", nil).wantError(t, http.StatusBadRequest, "INVALID_QUERY_PARAM_ERR")
	h.request(http.MethodGet, "/keys/x", nil).wantError(t, http.StatusBadRequest, "INVALID_QUERY_PARAM_ERR")
	h.request(http.MethodGet, "/keys/no-such-alias", nil).wantError(t, http.StatusNotFound, "KEY_NOT_FOUND_ERR")

	// HEAD carries a Content-Type.
	if r := h.request(http.MethodHead, "/keys", nil).wantStatus(t, http.StatusOK); !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
		t.Fatalf("HEAD Content-Type = %q", r.header.Get("Content-Type"))
	}

	// nonactiveStateReason on keys that are not active.
	k := h.create("states", true)
	if strings.Contains(string(h.request(http.MethodGet, "/keys/"+k.ID, nil).body), "nonactiveStateReason") {
		t.Fatal("an active key has a nonactiveStateReason")
	}
	h.action(k.ID, "disable", nil).wantStatus(t, http.StatusNoContent)
	var reason struct {
		Resources []struct {
			NonactiveStateReason *int `json:"nonactiveStateReason"`
		} `json:"resources"`
	}
	h.request(http.MethodGet, "/keys/"+k.ID, nil).decode(t, &reason)
	if r := reason.Resources[0].NonactiveStateReason; r == nil || *r != 2 {
		t.Fatalf("nonactiveStateReason of a suspended key = %v", r)
	}

	// PUT policies with Prefer: return=minimal → 204 without a body.
	r := h.request(http.MethodPut, "/keys/"+k.ID+"/policies", policyPut(map[string]any{"rotation": map[string]any{"interval_month": 2}}),
		"prefer", "return=minimal")
	if r.status != http.StatusNoContent || len(r.body) != 0 {
		t.Fatalf("PUT policies, minimal: %d %q", r.status, r.body)
	}

	// restoreAllowed is false in the 30 s after deletion, by the server's clock.
	d := h.create("deleted", true)
	h.request(http.MethodDelete, "/keys/"+d.ID, nil).wantStatus(t, http.StatusNoContent)
	if got := h.request(http.MethodGet, "/keys/"+d.ID, nil).key(t); got.RestoreAllowed == nil || *got.RestoreAllowed {
		t.Fatalf("restoreAllowed right after deletion = %v", got.RestoreAllowed)
	}
	h.clock.Advance(30 * time.Second)
	if got := h.request(http.MethodGet, "/keys/"+d.ID, nil).key(t); got.RestoreAllowed == nil || !*got.RestoreAllowed {
		t.Fatalf("restoreAllowed 30 s after deletion = %v", got.RestoreAllowed)
	}
}
