package kplocal

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestWrapUnwrap(t *testing.T) {
	h := newHarness(t, Config{})
	k := h.create("wrap-key", true)
	dek := b64n(32, 0x42)
	aad := []string{"volume-1", "tenant-a"}

	w := h.actionOK(k.ID, "wrap", map[string]any{"plaintext": dek, "aad": aad})
	if w.Plaintext != "" || w.Ciphertext == "" || w.KeyVersion == nil || w.KeyVersion.ID != k.KeyVersion.ID {
		t.Fatalf("wrap = %+v", w)
	}
	if raw := mustDecode(t, w.Ciphertext); bytes.Contains(raw, bytes.Repeat([]byte{0x42}, 8)) || strings.Contains(string(raw), dek) {
		t.Fatal("ciphertext contains the plaintext")
	}
	u := h.actionOK(k.ID, "unwrap", map[string]any{"ciphertext": w.Ciphertext, "aad": aad})
	if u.Plaintext != dek || u.KeyVersion.ID != k.KeyVersion.ID || u.Ciphertext != "" || u.RewrappedKeyVersion != nil {
		t.Fatalf("unwrap = %+v", u)
	}
	if w2 := h.actionOK(k.ID, "wrap", map[string]any{"plaintext": dek, "aad": aad}); w2.Ciphertext == w.Ciphertext {
		t.Fatal("two wraps of the same plaintext gave the same ciphertext")
	}

	// The AAD must be the same strings in the same order.
	for name, bad := range map[string][]string{
		"missing":   nil,
		"reordered": {"tenant-a", "volume-1"},
		"extra":     {"volume-1", "tenant-a", "x"},
		"changed":   {"volume-1", "tenant-b"},
		"joined":    {"volume-1tenant-a"},
	} {
		r := h.action(k.ID, "unwrap", map[string]any{"ciphertext": w.Ciphertext, "aad": bad})
		r.wantError(t, http.StatusBadRequest, "INVALID_FIELD_ERR").wantTarget(t, "field", "ciphertext")
		if strings.Contains(string(r.body), dek) {
			t.Fatalf("%s AAD: error body holds the DEK", name)
		}
	}

	// Without plaintext (no body, {} or null) wrap generates a 32-byte DEK.
	for _, body := range []any{nil, "{}", "null"} {
		g := h.actionOK(k.ID, "wrap", body)
		if len(mustDecode(t, g.Plaintext)) != 32 || g.Ciphertext == "" {
			t.Fatalf("wrap with body %v = %+v", body, g)
		}
		if got := h.actionOK(k.ID, "unwrap", map[string]any{"ciphertext": g.Ciphertext}); got.Plaintext != g.Plaintext {
			t.Fatal("generated DEK does not unwrap")
		}
	}
	if st := h.srv.Stats(); st.Wrap != 5 || st.Unwrap != 9 {
		t.Fatalf("stats = %+v, want 5 wraps and 9 unwraps", st)
	}
}

func TestWrapUnwrapValidation(t *testing.T) {
	h := newHarness(t, Config{})
	k := h.create("validate-key", true)
	other := h.create("other-key", true)
	std := h.create("standard", false)
	ct := h.actionOK(k.ID, "wrap", map[string]any{"plaintext": b64("dek")}).Ciphertext

	// Tamper with the sealed bytes inside the ciphertext document.
	var doc map[string]string
	if err := json.Unmarshal(mustDecode(t, ct), &doc); err != nil {
		t.Fatal(err)
	}
	sealed := mustDecode(t, doc["ciphertext"])
	sealed[0] ^= 1
	doc["ciphertext"] = base64.StdEncoding.EncodeToString(sealed)
	tamperedDoc, _ := json.Marshal(doc)
	tampered := base64.StdEncoding.EncodeToString(tamperedDoc)

	cases := []struct {
		name, action string
		body         any
		status       int
		code, target string
	}{
		{"plaintext not base64", "wrap", map[string]any{"plaintext": "not base64!"}, 400, "INVALID_FIELD_ERR", "plaintext"},
		{"plaintext too long", "wrap", map[string]any{"plaintext": b64n(3075, 1)}, 400, "INVALID_FIELD_ERR", "plaintext"},
		{"too many AAD", "wrap", map[string]any{"aad": slices.Repeat([]string{"a"}, 127)}, 400, "INVALID_FIELD_ERR", "aad"},
		{"long AAD", "wrap", map[string]any{"aad": []string{strings.Repeat("a", 256)}}, 400, "INVALID_FIELD_ERR", "aad"},
		{"malformed JSON", "wrap", `{"plaintext":`, 400, "BAD_BODY_ERR", ""},
		{"misspelt AAD field", "wrap", map[string]any{"additionalAuthData": []string{"x"}}, 400, "BAD_BODY_ERR", ""},
		{"AAD not a list", "unwrap", map[string]any{"ciphertext": "x", "aad": "x"}, 400, "BAD_BODY_ERR", ""},
		{"unwrap without body", "unwrap", nil, 400, "NO_BODY_ERR", ""},
		{"rewrap without body", "rewrap", nil, 400, "NO_BODY_ERR", ""},
		{"unwrap null body", "unwrap", "null", 400, "NO_BODY_ERR", ""},
		{"unwrap without ciphertext", "unwrap", "{}", 400, "INVALID_FIELD_ERR", "ciphertext"},
		{"ciphertext not base64", "unwrap", map[string]any{"ciphertext": "%%%"}, 400, "INVALID_FIELD_ERR", "ciphertext"},
		{"ciphertext not a wrapped key", "unwrap", map[string]any{"ciphertext": b64(`{"hello":"world"}`)}, 400, "INVALID_FIELD_ERR", "ciphertext"},
		{"truncated ciphertext", "unwrap", map[string]any{"ciphertext": ct[:len(ct)/2]}, 400, "INVALID_FIELD_ERR", "ciphertext"},
		{"tampered ciphertext", "unwrap", map[string]any{"ciphertext": tampered}, 400, "INVALID_FIELD_ERR", "ciphertext"},
		{"tampered rewrap", "rewrap", map[string]any{"ciphertext": tampered}, 400, "INVALID_FIELD_ERR", "ciphertext"},
		{"standard key wrap", "wrap", nil, 400, "KEY_ROOT_REQ_ERR", ""},
		{"unknown key", "wrap", nil, 404, "KEY_NOT_FOUND_ERR", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := k.ID
			switch {
			case strings.HasPrefix(tc.name, "standard"):
				id = std.ID
			case strings.HasPrefix(tc.name, "unknown"):
				id = "5e4d3c2b-0000-4000-8000-000000000000"
			}
			reason := h.action(id, tc.action, tc.body).wantError(t, tc.status, tc.code)
			if tc.target != "" {
				reason.wantTarget(t, "field", tc.target)
			}
		})
	}
	// A ciphertext of another root key: 422.
	h.action(other.ID, "unwrap", map[string]any{"ciphertext": ct}).wantError(t, http.StatusUnprocessableEntity, "UNPROCESSABLE_CIPHERTEXT_ERR")
	h.action(other.ID, "rewrap", map[string]any{"ciphertext": ct}).wantError(t, http.StatusUnprocessableEntity, "UNPROCESSABLE_CIPHERTEXT_ERR")
	for _, action := range []string{"unwrap", "rewrap", "rotate", "disable", "enable"} {
		h.action(std.ID, action, map[string]any{"ciphertext": ct}).wantError(t, http.StatusBadRequest, "KEY_ROOT_REQ_ERR")
	}
	// The original ciphertext still works.
	if got := h.actionOK(k.ID, "unwrap", map[string]any{"ciphertext": ct}); got.Plaintext != b64("dek") {
		t.Fatal("unwrap failed after the validation cases")
	}
}

func TestLegacyActionForm(t *testing.T) {
	h := newHarness(t, Config{})
	k := h.create("legacy-key", true)
	aad := []string{"ctx"}
	legacy := func(action string, body any) *result {
		return h.request(http.MethodPost, "/keys/"+k.ID+"?action="+action, body)
	}
	var w actionResult
	legacy("wrap", map[string]any{"plaintext": b64n(16, 9), "aad": aad}).wantStatus(t, http.StatusOK).decode(t, &w)
	// Each form unwraps the other's ciphertext.
	if u := h.actionOK(k.ID, "unwrap", map[string]any{"ciphertext": w.Ciphertext, "aad": aad}); u.Plaintext != b64n(16, 9) {
		t.Fatal("current form does not unwrap a legacy-form ciphertext")
	}
	w2 := h.actionOK(k.ID, "wrap", map[string]any{"plaintext": b64n(16, 9), "aad": aad})
	var u actionResult
	legacy("unwrap", map[string]any{"ciphertext": w2.Ciphertext, "aad": aad}).wantStatus(t, http.StatusOK).decode(t, &u)
	if u.Plaintext != b64n(16, 9) || u.KeyVersion.ID != w2.KeyVersion.ID {
		t.Fatalf("legacy unwrap = %+v", u)
	}
	legacy("unwrap", map[string]any{"ciphertext": w2.Ciphertext}).wantError(t, http.StatusBadRequest, "INVALID_FIELD_ERR")

	legacy("rotate", nil).wantStatus(t, http.StatusNoContent)
	var rw actionResult
	legacy("rewrap", map[string]any{"ciphertext": w.Ciphertext, "aad": aad}).wantStatus(t, http.StatusOK).decode(t, &rw)
	if rw.RewrappedKeyVersion == nil || rw.RewrappedKeyVersion.ID == k.KeyVersion.ID || rw.Plaintext != "" {
		t.Fatalf("legacy rewrap = %+v", rw)
	}
	legacy("disable", nil).wantStatus(t, http.StatusNoContent)
	h.clock.Advance(time.Minute)
	legacy("enable", "null").wantStatus(t, http.StatusNoContent)
	legacy("explode", nil).wantError(t, http.StatusBadRequest, "INVALID_QUERY_PARAM_ERR").wantTarget(t, "query_param", "action")
	legacy("", nil).wantError(t, http.StatusBadRequest, "INVALID_QUERY_PARAM_ERR")
	legacy("sync", nil).wantError(t, http.StatusBadRequest, "INVALID_QUERY_PARAM_ERR")
	h.action(k.ID, "explode", nil).wantError(t, http.StatusNotFound, "")
	h.action(k.ID, "sync", nil).wantStatus(t, http.StatusNoContent)
	if st := h.srv.Stats(); st.Wrap != 2 || st.Unwrap != 3 || st.Rotate != 1 || st.Rewrap != 1 || st.Disable != 1 || st.Enable != 1 || st.Sync != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestRotation(t *testing.T) {
	h := newHarness(t, Config{})
	k := h.create("rotating", true)
	aad := []string{"file-7"}

	var cts []string // one ciphertext per version
	var versions []string
	for i := range 4 {
		w := h.actionOK(k.ID, "wrap", map[string]any{"plaintext": b64n(32, byte(i)), "aad": aad})
		cts = append(cts, w.Ciphertext)
		versions = append(versions, w.KeyVersion.ID)
		h.action(k.ID, "rotate", nil).wantStatus(t, http.StatusNoContent)
	}
	got := h.request(http.MethodGet, "/keys/"+k.ID, nil).key(t)
	current := got.KeyVersion.ID
	if slices.Contains(versions, current) || got.LastRotateDate == "" || got.LastUpdateDate == "" || versions[0] != k.ID {
		t.Fatalf("after 4 rotations: key %+v, earlier versions %v", got, versions)
	}

	var vl struct {
		Metadata struct {
			CollectionType  string
			CollectionTotal int
			TotalCount      *int
		}
		Resources []struct{ ID, CreationDate string }
	}
	h.request(http.MethodGet, "/keys/"+k.ID+"/versions", nil).wantStatus(t, http.StatusOK).decode(t, &vl)
	var listed []string
	for _, v := range vl.Resources {
		listed = append(listed, v.ID)
	}
	older := slices.Clone(versions)
	slices.Reverse(older)
	wantOrder := append([]string{current}, older...)
	if !slices.Equal(listed, wantOrder) || vl.Metadata.CollectionTotal != 5 || vl.Metadata.TotalCount != nil ||
		vl.Metadata.CollectionType != keyVersionType {
		t.Fatalf("versions = %+v, want order %v", vl, wantOrder)
	}

	// Every old ciphertext unwraps, with the DEK rewrapped under the current version.
	for i, ct := range cts {
		u := h.actionOK(k.ID, "unwrap", map[string]any{"ciphertext": ct, "aad": aad})
		if u.Plaintext != b64n(32, byte(i)) || u.KeyVersion.ID != versions[i] || u.Ciphertext == "" ||
			u.RewrappedKeyVersion == nil || u.RewrappedKeyVersion.ID != current {
			t.Fatalf("unwrap of version %d ciphertext = %+v", i, u)
		}
		again := h.actionOK(k.ID, "unwrap", map[string]any{"ciphertext": u.Ciphertext, "aad": aad})
		if again.Plaintext != b64n(32, byte(i)) || again.Ciphertext != "" || again.RewrappedKeyVersion != nil || again.KeyVersion.ID != current {
			t.Fatalf("unwrap of the rewrapped ciphertext = %+v", again)
		}
		h.action(k.ID, "unwrap", map[string]any{"ciphertext": u.Ciphertext}).wantError(t, http.StatusBadRequest, "INVALID_FIELD_ERR")

		rw := h.actionOK(k.ID, "rewrap", map[string]any{"ciphertext": ct, "aad": aad})
		if rw.Plaintext != "" || rw.Ciphertext == ct || rw.KeyVersion.ID != versions[i] || rw.RewrappedKeyVersion.ID != current {
			t.Fatalf("rewrap = %+v", rw)
		}
		// Rewrap keeps the AAD binding.
		h.action(k.ID, "unwrap", map[string]any{"ciphertext": rw.Ciphertext}).wantError(t, http.StatusBadRequest, "INVALID_FIELD_ERR")
		if u := h.actionOK(k.ID, "unwrap", map[string]any{"ciphertext": rw.Ciphertext, "aad": aad}); u.Plaintext != b64n(32, byte(i)) {
			t.Fatal("rewrapped ciphertext does not unwrap")
		}
	}
	// Rewrap of a current ciphertext: a fresh ciphertext, same version both sides.
	cur := h.actionOK(k.ID, "wrap", map[string]any{"plaintext": b64("x"), "aad": aad})
	rw := h.actionOK(k.ID, "rewrap", map[string]any{"ciphertext": cur.Ciphertext, "aad": aad})
	if rw.Ciphertext == cur.Ciphertext || rw.KeyVersion.ID != current || rw.RewrappedKeyVersion.ID != current {
		t.Fatalf("rewrap of a current ciphertext = %+v", rw)
	}

	var page struct {
		Metadata struct {
			CollectionTotal int
			TotalCount      *int
		}
		Resources []struct{ ID string }
	}
	h.request(http.MethodGet, "/keys/"+k.ID+"/versions?limit=2&offset=1&totalCount=true", nil).wantStatus(t, http.StatusOK).decode(t, &page)
	if len(page.Resources) != 2 || page.Resources[0].ID != versions[3] || page.Metadata.CollectionTotal != 2 ||
		page.Metadata.TotalCount == nil || *page.Metadata.TotalCount != 5 {
		t.Fatalf("versions page = %+v", page)
	}
	h.request(http.MethodGet, "/keys/"+k.ID+"/versions?limit=0", nil).wantError(t, http.StatusBadRequest, "INVALID_QUERY_PARAM_ERR")
	h.request(http.MethodGet, "/keys/"+k.ID+"/versions?limit=5001", nil).wantError(t, http.StatusBadRequest, "INVALID_QUERY_PARAM_ERR")

	std := h.create("std-versions", false)
	h.request(http.MethodGet, "/keys/"+std.ID+"/versions", nil).decode(t, &vl)
	if len(vl.Resources) != 1 || vl.Resources[0].ID != std.ID {
		t.Fatalf("standard key versions = %+v", vl)
	}
}

func TestRotationInterval(t *testing.T) {
	h := newHarness(t, Config{MinRotationInterval: DefaultMinRotationInterval, TokenTTL: 24 * time.Hour})
	k := h.create("hourly", true)
	h.action(k.ID, "rotate", nil).wantStatus(t, http.StatusNoContent) // the first rotation right after creation is allowed
	r := h.action(k.ID, "rotate", nil)
	r.wantError(t, http.StatusConflict, "KEY_ROTATION_NOT_PERMITTED")
	if !strings.Contains(string(r.body), "Only one 'rotate' action per hour is permitted") {
		t.Fatalf("rotation error body %s", r.body)
	}
	h.clock.Advance(59 * time.Minute)
	h.action(k.ID, "rotate", nil).wantError(t, http.StatusConflict, "KEY_ROTATION_NOT_PERMITTED")
	h.clock.Advance(time.Minute)
	h.action(k.ID, "rotate", "{}").wantStatus(t, http.StatusNoContent)

	// Rotation limits are per key.
	other := h.create("other", true)
	h.action(other.ID, "rotate", "null").wantStatus(t, http.StatusNoContent)

	// The zero Config has no limit.
	free := newHarness(t, Config{})
	fk := free.create("free", true)
	for range 3 {
		free.action(fk.ID, "rotate", nil).wantStatus(t, http.StatusNoContent)
	}
}

func TestImportedRootKeyRotation(t *testing.T) {
	h := newHarness(t, Config{})
	imp := h.create("imported", true, "payload", b64n(24, 1))
	gen := h.create("generated", true)
	ct := h.actionOK(imp.ID, "wrap", map[string]any{"plaintext": b64("secret dek")}).Ciphertext

	h.action(imp.ID, "rotate", nil).wantError(t, http.StatusBadRequest, "KEY_PAYLOAD_REQ_ERR").wantTarget(t, "field", "payload")
	h.action(imp.ID, "rotate", map[string]any{"payload": b64n(20, 2)}).wantError(t, http.StatusBadRequest, "INVALID_FIELD_ERR")
	h.action(gen.ID, "rotate", map[string]any{"payload": b64n(32, 2)}).
		wantError(t, http.StatusBadRequest, "INVALID_QUERY_PARAM_ERR").wantTarget(t, "query_param", "payload")
	h.action(imp.ID, "rotate", map[string]any{"payload": b64n(32, 3)}).wantStatus(t, http.StatusNoContent)
	h.action(imp.ID, "rotate", map[string]any{"payload": b64n(32, 4), "encryptedNonce": "n", "iv": "i"}).
		wantError(t, http.StatusBadRequest, "INVALID_FIELD_ERR")

	u := h.actionOK(imp.ID, "unwrap", map[string]any{"ciphertext": ct})
	if u.Plaintext != b64("secret dek") || u.RewrappedKeyVersion == nil {
		t.Fatalf("unwrap after rotating an imported key = %+v", u)
	}
	if k := h.request(http.MethodGet, "/keys/"+imp.ID, nil).key(t); k.AlgorithmBitSize != 256 {
		t.Fatalf("bit size after rotation with 32 bytes = %d", k.AlgorithmBitSize)
	}
}

// TestStateMatrix follows §5.9 of the wire reference.
func TestStateMatrix(t *testing.T) {
	h := newHarness(t, Config{TokenTTL: 365 * 24 * time.Hour})
	expiry := h.clock.Now().Add(time.Hour).Format(time.RFC3339)
	k := h.create("matrix", true)
	exp := h.create("expiring", true, "expirationDate", expiry)
	ct := h.actionOK(k.ID, "wrap", nil).Ciphertext
	expCT := h.actionOK(exp.ID, "wrap", nil).Ciphertext
	unwrapBody := map[string]any{"ciphertext": ct}

	// Suspended (2): wrap, unwrap, rewrap, rotate, disable 409; enable after 30 s.
	h.action(k.ID, "disable", "null").wantStatus(t, http.StatusNoContent)
	if st := h.request(http.MethodGet, "/keys/"+k.ID, nil).key(t).State; st != 2 {
		t.Fatalf("state after disable = %d", st)
	}
	for _, a := range []string{"wrap", "unwrap", "rewrap", "rotate", "disable"} {
		h.action(k.ID, a, unwrapBody).wantError(t, http.StatusConflict, "KEY_ACTION_INVALID_STATE_ERR")
	}
	h.request(http.MethodGet, "/keys/"+k.ID+"/versions", nil).wantError(t, http.StatusConflict, "KEY_ACTION_INVALID_STATE_ERR")
	h.request(http.MethodGet, "/keys/"+k.ID+"/versions?allKeyStates=true", nil).wantStatus(t, http.StatusOK)
	h.action(k.ID, "enable", nil).wantError(t, http.StatusConflict, "REQ_TOO_EARLY_ERR")
	h.clock.Advance(30 * time.Second)
	h.action(k.ID, "enable", nil).wantStatus(t, http.StatusNoContent)
	h.action(k.ID, "enable", nil).wantError(t, http.StatusConflict, "KEY_ACTION_INVALID_STATE_ERR")
	h.actionOK(k.ID, "unwrap", unwrapBody)

	// Deactivated (3), past the expiration date: wrap, disable, enable 409; unwrap, rewrap, rotate fine.
	h.clock.Advance(time.Hour)
	if st := h.request(http.MethodGet, "/keys/"+exp.ID, nil).key(t).State; st != 3 {
		t.Fatalf("state after expiry = %d", st)
	}
	h.action(exp.ID, "wrap", nil).wantError(t, http.StatusConflict, "KEY_ACTION_INVALID_STATE_ERR")
	h.action(exp.ID, "disable", nil).wantError(t, http.StatusConflict, "KEY_ACTION_INVALID_STATE_ERR")
	h.action(exp.ID, "enable", nil).wantError(t, http.StatusConflict, "KEY_ACTION_INVALID_STATE_ERR")
	h.actionOK(exp.ID, "unwrap", map[string]any{"ciphertext": expCT})
	h.action(exp.ID, "rotate", nil).wantStatus(t, http.StatusNoContent)
	if rw := h.actionOK(exp.ID, "rewrap", map[string]any{"ciphertext": expCT}); rw.RewrappedKeyVersion == nil {
		t.Fatal("rewrap on an expired key")
	}
	if st := h.request(http.MethodGet, "/keys/"+exp.ID, nil).key(t).State; st != 3 {
		t.Fatalf("rotation re-activated an expired key: state %d", st)
	}
	h.request(http.MethodGet, "/keys/"+exp.ID+"/versions", nil).wantError(t, http.StatusConflict, "KEY_ACTION_INVALID_STATE_ERR")
	if ks := h.request(http.MethodGet, "/keys?state=3", nil).keys(t); len(ks) != 1 || ks[0].ID != exp.ID {
		t.Fatalf("state=3 list = %+v", ks)
	}

	// Destroyed (5): every action 410; get still works.
	h.request(http.MethodDelete, "/keys/"+k.ID, nil).wantStatus(t, http.StatusNoContent)
	for _, a := range []string{"wrap", "unwrap", "rewrap", "rotate", "disable", "enable", "setKeyForDeletion", "sync"} {
		h.action(k.ID, a, unwrapBody).wantError(t, http.StatusGone, "KEY_DELETED_ERR")
	}
	h.request(http.MethodGet, "/keys/"+k.ID+"/versions", nil).wantError(t, http.StatusGone, "KEY_DELETED_ERR")
	h.request(http.MethodGet, "/keys/"+k.ID, nil).wantStatus(t, http.StatusOK)
	h.request(http.MethodGet, "/keys/"+k.ID+"/metadata", nil).wantStatus(t, http.StatusOK)
}
