package kplocal

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestStatePersistsAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "kplocal.json")
	aad := []string{"persisted"}

	h1 := newHarness(t, Config{StateFile: path})
	root := h1.create("persistent-root", true, "aliases", []string{"persistent"})
	std := h1.create("persistent-standard", false, "payload", b64("standard material"))
	disabled := h1.create("disabled", true)
	gone := h1.create("deleted", true)
	ct0 := h1.actionOK(root.ID, "wrap", map[string]any{"plaintext": b64n(32, 1), "aad": aad})
	h1.action(root.ID, "rotate", nil).wantStatus(t, http.StatusNoContent)
	ct1 := h1.actionOK(root.ID, "wrap", map[string]any{"plaintext": b64n(32, 2), "aad": aad})
	h1.request(http.MethodPut, "/keys/"+root.ID+"/policies",
		policyPut(map[string]any{"rotation": map[string]any{"interval_month": 4}})).wantStatus(t, http.StatusOK)
	h1.action(disabled.ID, "disable", nil).wantStatus(t, http.StatusNoContent)
	h1.request(http.MethodDelete, "/keys/"+gone.ID, nil).wantStatus(t, http.StatusNoContent)
	versionsBefore := h1.request(http.MethodGet, "/keys/"+root.ID+"/versions", nil).body
	if err := h1.srv.Close(); err != nil {
		t.Fatal(err)
	}

	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Fatalf("state file mode %v, want 0600", perm)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("state directory holds %d entries (temporary files left?)", len(entries))
	}

	h2 := newHarness(t, Config{StateFile: path})
	// A token issued before the restart is still good.
	h2.token = h1.token
	u := h2.actionOK("persistent", "unwrap", map[string]any{"ciphertext": ct0.Ciphertext, "aad": aad})
	if u.Plaintext != b64n(32, 1) || u.KeyVersion.ID != root.ID || u.RewrappedKeyVersion == nil || u.RewrappedKeyVersion.ID != ct1.KeyVersion.ID {
		t.Fatalf("unwrap of a pre-restart, pre-rotation ciphertext = %+v", u)
	}
	if u := h2.actionOK(root.ID, "unwrap", map[string]any{"ciphertext": ct1.Ciphertext, "aad": aad}); u.Plaintext != b64n(32, 2) || u.Ciphertext != "" {
		t.Fatalf("unwrap of a pre-restart current ciphertext = %+v", u)
	}
	if after := h2.request(http.MethodGet, "/keys/"+root.ID+"/versions", nil).body; string(after) != string(versionsBefore) {
		t.Fatalf("versions changed across restart:\n%s\n%s", versionsBefore, after)
	}
	if k := h2.request(http.MethodGet, "/keys/"+std.ID, nil).key(t); k.Payload != b64("standard material") {
		t.Fatal("standard key material lost")
	}
	if k := h2.request(http.MethodGet, "/keys/"+root.ID, nil).key(t); k.Rotation == nil || k.Rotation.IntervalMonth != 4 || k.LastRotateDate == "" {
		t.Fatalf("root key after restart = %+v", k)
	}
	if k := h2.request(http.MethodGet, "/keys/"+disabled.ID, nil).key(t); k.State != 2 {
		t.Fatalf("disabled key after restart: state %d", k.State)
	}
	if k := h2.request(http.MethodGet, "/keys/"+gone.ID, nil).key(t); k.State != 5 {
		t.Fatalf("deleted key after restart: state %d", k.State)
	}
	// Changes after the restart persist too.
	h2.action(root.ID, "rotate", nil).wantStatus(t, http.StatusNoContent)
	var st stateFile
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(st.Keys, func(k *key) bool { return k.ID == root.ID })
	if i < 0 || len(st.Keys) != 4 || len(st.Keys[i].Versions) != 3 || st.InstanceID != testInstance {
		t.Fatalf("state file after a rotation: %d keys, root index %d", len(st.Keys), i)
	}
}

func TestStateFileErrors(t *testing.T) {
	dir := t.TempDir()
	cfg := func(path string) Config { return Config{InstanceID: testInstance, APIKey: testAPIKey, StateFile: path} }

	corrupt := filepath.Join(dir, "corrupt.json")
	if err := os.WriteFile(corrupt, []byte(`{"format":1,`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(cfg(corrupt)); err == nil {
		t.Fatal("New accepted a corrupt state file")
	}

	other := filepath.Join(dir, "other.json")
	if _, err := New(Config{InstanceID: "aaaaaaaa-0000-4000-8000-000000000000", StateFile: other}); err != nil {
		t.Fatal(err)
	}
	if _, err := New(cfg(other)); err == nil {
		t.Fatal("New accepted another instance's state file")
	}

	if _, err := New(cfg(filepath.Join(dir, "missing", "state.json"))); err == nil {
		t.Fatal("New accepted a state file in a missing directory")
	}
}

func TestFailedPersistLeavesStateUnchanged(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, Config{StateFile: filepath.Join(dir, "state.json")})
	k := h.create("before", true)
	if err := os.RemoveAll(dir); err != nil { // every later write fails
		t.Fatal(err)
	}
	r := h.request(http.MethodPost, "/keys", keyBody(map[string]any{"name": "after", "extractable": false}))
	r.wantError(t, http.StatusInternalServerError, "")
	h.action(k.ID, "rotate", nil).wantError(t, http.StatusInternalServerError, "")
	h.request(http.MethodDelete, "/keys/"+k.ID, nil).wantError(t, http.StatusInternalServerError, "")

	ks := h.request(http.MethodGet, "/keys", nil).keys(t)
	if len(ks) != 1 || ks[0].ID != k.ID || ks[0].KeyVersion.ID != k.ID || ks[0].State != 1 {
		t.Fatalf("keys after failed writes = %+v", ks)
	}
}

func TestStatePersistsRingsPoliciesAndInstances(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kplocal.json")
	const other = "7c0ffee0-0000-4000-8000-000000000003"
	cfg := Config{StateFile: path, Accounts: []Account{{APIKey: "key-b", Instances: []string{other}}}}
	h1 := newHarness(t, cfg)
	h1.request(http.MethodPost, "/key_rings/kept-ring", nil).wantStatus(t, http.StatusCreated)
	h1.request(http.MethodPut, "/instance/policies?policy=metrics", instancePolicyPut(
		map[string]any{"policy_type": "metrics", "policy_data": map[string]any{"enabled": true}})).wantStatus(t, http.StatusNoContent)
	b := *h1
	b.token = h1.fetchToken("key-b")
	kb := b.request(http.MethodPost, "/keys", keyBody(map[string]any{"name": "in-b", "extractable": false}), "bluemix-instance", other).
		wantStatus(t, http.StatusCreated).key(t)
	if err := h1.srv.Close(); err != nil {
		t.Fatal(err)
	}

	h2 := newHarness(t, cfg)
	var rings struct{ Resources []struct{ ID string } }
	h2.request(http.MethodGet, "/key_rings", nil).wantStatus(t, http.StatusOK).decode(t, &rings)
	if len(rings.Resources) != 2 || rings.Resources[1].ID != "kept-ring" {
		t.Fatalf("rings after restart = %+v", rings)
	}
	var pol instancePolicies
	h2.request(http.MethodGet, "/instance/policies", nil).decode(t, &pol)
	if len(pol.Resources) != 1 || pol.Resources[0].PolicyType != "metrics" {
		t.Fatalf("instance policies after restart = %+v", pol)
	}
	b2 := *h2
	b2.token = h2.fetchToken("key-b")
	b2.request(http.MethodGet, "/keys/"+kb.ID, nil, "bluemix-instance", other).wantStatus(t, http.StatusOK)
	h2.request(http.MethodGet, "/keys/"+kb.ID, nil).wantError(t, http.StatusNotFound, "KEY_NOT_FOUND_ERR")
}
