package kplocal

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestCreateKeys(t *testing.T) {
	h := newHarness(t, Config{})
	now := h.clock.Now().Format(time.RFC3339)

	root := h.create("root-key", true)
	want := fmt.Sprintf("crn:v1:bluemix:public:kms:us-south:a/%s:%s:key:%s", DefaultAccount, testInstance, root.ID)
	switch {
	case root.Type != keyType, !isUUID(root.ID), root.Name != "root-key", root.State != 1, root.Extractable,
		root.Imported, root.CRN != want, h.srv.KeyCRN(root.ID) != want, root.KeyRingID != "default",
		root.KeyVersion.ID != root.ID, root.KeyVersion.CreationDate != now, root.Deleted == nil, *root.Deleted,
		root.CreationDate != now, root.LastUpdateDate != "", root.LastRotateDate != "", root.Payload != "",
		root.AlgorithmType != "AES", root.AlgorithmBitSize != 256, root.DualAuthDelete.Enabled:
		t.Fatalf("root key = %+v", root)
	}

	std := h.create("standard-key", false)
	if !std.Extractable || std.Payload != "" {
		t.Fatalf("standard key without prefer = %+v", std)
	}
	r := h.request(http.MethodPost, "/keys", keyBody(map[string]any{"name": "std-repr", "extractable": true}),
		"prefer", "return=representation")
	if k := r.wantStatus(t, http.StatusCreated).key(t); len(mustDecode(t, k.Payload)) != 32 {
		t.Fatalf("standard key with return=representation: payload %q", k.Payload)
	}
	r = h.request(http.MethodPost, "/keys", keyBody(map[string]any{"name": "root-repr", "extractable": false}),
		"prefer", "return=representation")
	if k := r.wantStatus(t, http.StatusCreated).key(t); k.Payload != "" {
		t.Fatal("root key material returned on create")
	}

	imp := h.create("imported-root", true, "payload", b64n(16, 1))
	if !imp.Imported || imp.AlgorithmBitSize != 128 || imp.Extractable {
		t.Fatalf("imported root key = %+v", imp)
	}

	expiry := h.clock.Now().Add(48 * time.Hour).Format(time.RFC3339)
	h.request(http.MethodPost, "/key_rings/ring-a", nil).wantStatus(t, http.StatusCreated)
	full := h.request(http.MethodPost, "/keys", keyBody(map[string]any{
		"name": "full", "extractable": false, "description": "a described key",
		"aliases": []string{"full-alias", "other_alias"}, "Tags": []string{"t1", "t2"}, // Tags as the official client spells it
		"expirationDate": expiry,
	}), "x-kms-key-ring", "ring-a").wantStatus(t, http.StatusCreated).key(t)
	if full.Description != "a described key" || !slices.Equal(full.Aliases, []string{"full-alias", "other_alias"}) ||
		!slices.Equal(full.Tags, []string{"t1", "t2"}) || full.ExpirationDate != expiry || full.KeyRingID != "ring-a" {
		t.Fatalf("key with options = %+v", full)
	}
	if got := h.srv.Stats().Create; got != 6 {
		t.Fatalf("Stats().Create = %d, want 6", got)
	}
}

func mustDecode(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("%q is not base64: %v", s, err)
	}
	return b
}

func TestCreateKeyValidation(t *testing.T) {
	h := newHarness(t, Config{})
	h.create("taken", true, "aliases", []string{"taken-alias"})
	res := func(kv ...any) map[string]any {
		m := map[string]any{"name": "valid-name", "extractable": false}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	notBase64 := "c2VjcmV0LWtleS1tYXRlcmlhbA$$"
	cases := []struct {
		name   string
		body   any
		code   string
		target string
	}{
		{"no body", nil, "NO_BODY_ERR", ""},
		{"null body", "null", "NO_BODY_ERR", ""},
		{"malformed JSON", `{"metadata":`, "BAD_BODY_ERR", ""},
		{"no metadata", map[string]any{"resources": []any{res()}}, "BAD_BODY_ERR", ""},
		{"total mismatch", map[string]any{"metadata": map[string]any{"collectionType": keyType, "collectionTotal": 2}, "resources": []any{res()}}, "COLLECTION_TOTAL_MISMATCH_ERR", ""},
		{"two keys", map[string]any{"metadata": map[string]any{"collectionType": keyType, "collectionTotal": 2}, "resources": []any{res(), res()}}, "BAD_BODY_ERR", ""},
		{"wrong type", keyBody(res("type", "application/json")), "INVALID_FIELD_ERR", "type"},
		{"short name", keyBody(res("name", "x")), "INVALID_FIELD_ERR", "name"},
		{"long name", keyBody(res("name", strings.Repeat("n", 91))), "INVALID_FIELD_ERR", "name"},
		{"short description", keyBody(res("description", "d")), "INVALID_FIELD_ERR", "description"},
		{"payload not base64", keyBody(res("payload", notBase64)), "INVALID_FIELD_ERR", "payload"},
		{"root payload size", keyBody(res("payload", b64n(20, 1))), "INVALID_FIELD_ERR", "payload"},
		{"standard payload size", keyBody(res("extractable", true, "payload", b64n(7501, 1))), "INVALID_FIELD_ERR", "payload"},
		{"reserved alias", keyBody(res("aliases", []string{"keys"})), "INVALID_FIELD_ERR", "aliases"},
		{"UUID alias", keyBody(res("aliases", []string{"3f9a4c2e-5b1d-4e8f-9a7c-1d2e3f4a5b6d"})), "INVALID_FIELD_ERR", "aliases"},
		{"alias characters", keyBody(res("aliases", []string{"bad alias"})), "INVALID_FIELD_ERR", "aliases"},
		{"six aliases", keyBody(res("aliases", []string{"a1", "a2", "a3", "a4", "a5", "a6"})), "INVALID_FIELD_ERR", "aliases"},
		{"repeated alias", keyBody(res("aliases", []string{"a1", "a1"})), "INVALID_FIELD_ERR", "aliases"},
		{"alias in use", keyBody(res("aliases", []string{"taken-alias"})), "INVALID_FIELD_ERR", "aliases"},
		{"bad tag", keyBody(res("tags", []string{"a:b"})), "INVALID_FIELD_ERR", "tags"},
		{"past expiration", keyBody(res("expirationDate", "2001-01-01T00:00:00Z")), "INVALID_FIELD_ERR", "expirationDate"},
		{"bad expiration", keyBody(res("expirationDate", "tomorrow")), "INVALID_FIELD_ERR", "expirationDate"},
		{"secure import", keyBody(res("payload", b64n(32, 1), "encryptedNonce", "abc", "iv", "def")), "INVALID_FIELD_ERR", "encryptedNonce"},
		{"wrong JSON type", keyBody(res("name", 42)), "BAD_BODY_ERR", ""},
		{"oversized body", keyBody(res("description", strings.Repeat("d", MaxBodyBytes))), "BAD_BODY_ERR", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := h.request(http.MethodPost, "/keys", tc.body)
			reason := r.wantError(t, http.StatusBadRequest, tc.code)
			if tc.target != "" {
				reason.wantTarget(t, "field", tc.target)
			}
			if strings.Contains(string(r.body), "$$") {
				t.Fatalf("error body echoes the request: %s", r.body)
			}
		})
	}
	if n := len(h.request(http.MethodGet, "/keys", nil).keys(t)); n != 1 {
		t.Fatalf("%d keys after failed creates, want 1", n)
	}
}

func TestListAndCount(t *testing.T) {
	h := newHarness(t, Config{})
	var ids []string
	for i, root := range []bool{true, false, true, false, true} {
		ids = append(ids, h.create("list-key-"+strconv.Itoa(i), root, "aliases", []string{"alias-" + strconv.Itoa(i)}).ID)
		h.clock.Advance(time.Minute)
	}
	deleted := ids[4]
	h.request(http.MethodDelete, "/keys/"+deleted, nil).wantStatus(t, http.StatusNoContent)
	live := slices.Sorted(slices.Values(ids[:4]))

	idsOf := func(ks []wireKey) []string {
		var out []string
		for _, k := range ks {
			out = append(out, k.ID)
			if k.Payload != "" {
				t.Fatalf("list returned payload of %s", k.ID)
			}
		}
		return out
	}
	list := func(query string) []string {
		t.Helper()
		return idsOf(h.request(http.MethodGet, "/keys?"+query, nil).wantStatus(t, http.StatusOK).keys(t))
	}
	count := func(query string) int {
		t.Helper()
		r := h.request(http.MethodHead, "/keys?"+query, nil).wantStatus(t, http.StatusOK)
		n, err := strconv.Atoi(r.header.Get("Key-Total"))
		if err != nil || len(r.body) != 0 {
			t.Fatalf("HEAD: Key-Total %q, body %q", r.header.Get("Key-Total"), r.body)
		}
		return n
	}

	if got := list(""); !slices.Equal(got, live) {
		t.Fatalf("list = %v, want %v (sorted by id, deleted excluded)", got, live)
	}
	if got := list("limit=2&offset=1"); !slices.Equal(got, live[1:3]) {
		t.Fatalf("limit=2&offset=1 = %v, want %v", got, live[1:3])
	}
	if r := h.request(http.MethodGet, "/keys?offset=10", nil).wantStatus(t, http.StatusOK); !strings.Contains(string(r.body), `"resources":[]`) {
		t.Fatalf("empty page body %s", r.body)
	}
	for _, q := range []string{"limit=0", "limit=5001", "limit=x", "offset=-1"} {
		param, _, _ := strings.Cut(q, "=")
		h.request(http.MethodGet, "/keys?"+q, nil).wantError(t, http.StatusBadRequest, "INVALID_QUERY_PARAM_ERR").wantTarget(t, "query_param", param)
	}
	if got := list("extractable=true"); !slices.Equal(got, slices.Sorted(slices.Values([]string{ids[1], ids[3]}))) {
		t.Fatalf("extractable=true = %v", got)
	}
	if got := list("state=5"); !slices.Equal(got, []string{deleted}) {
		t.Fatalf("state=5 = %v", got)
	}
	if got := list("search=LIST-KEY-2,"); !slices.Equal(got, []string{ids[2]}) { // trailing comma as the Go client sends it
		t.Fatalf("search = %v", got)
	}
	if got := list("search=" + url.QueryEscape("alias:exact:alias-1")); !slices.Equal(got, []string{ids[1]}) {
		t.Fatalf("exact alias search = %v", got)
	}
	if got := list("search=" + url.QueryEscape("not:name:list-key-0")); len(got) != 3 || slices.Contains(got, ids[0]) {
		t.Fatalf("not search = %v", got)
	}
	if got := list("sort=-creationDate"); !slices.Equal(got, []string{ids[3], ids[2], ids[1], ids[0]}) {
		t.Fatalf("sort=-creationDate = %v", got)
	}
	roots := slices.Sorted(slices.Values([]string{ids[0], ids[2]}))
	standards := slices.Sorted(slices.Values([]string{ids[1], ids[3]}))
	slices.Reverse(roots)
	slices.Reverse(standards)
	if got := list("sort=extractable,-id"); !slices.Equal(got, append(roots, standards...)) {
		t.Fatalf("sort=extractable,-id = %v, want %v", got, append(roots, standards...))
	}
	cutoff := h.clock.Now().Add(-4*time.Minute - time.Second).Format(time.RFC3339)
	if got := list("filter=" + url.QueryEscape(`creationDate=gt:"`+cutoff+`" extractable=false`)); !slices.Equal(got, []string{ids[2]}) {
		t.Fatalf("filter = %v, want [%s]", got, ids[2])
	}
	h.request(http.MethodGet, "/keys?sort=name", nil).wantError(t, http.StatusBadRequest, "INVALID_QUERY_PARAM_ERR")
	h.request(http.MethodGet, "/keys?filter=bogus", nil).wantError(t, http.StatusBadRequest, "INVALID_QUERY_PARAM_ERR")
	h.request(http.MethodGet, "/keys?state=4", nil).wantError(t, http.StatusBadRequest, "INVALID_QUERY_PARAM_ERR")

	if n := count(""); n != 4 {
		t.Fatalf("Key-Total = %d, want 4", n)
	}
	if n := count("extractable=false"); n != 2 {
		t.Fatalf("Key-Total extractable=false = %d, want 2", n)
	}
	if n := count("state=1,5"); n != 5 {
		t.Fatalf("Key-Total state=1,5 = %d, want 5", n)
	}

	// The field spelt as the official Go client sends it.
	h.request(http.MethodPost, "/key_rings/ring-b", nil).wantStatus(t, http.StatusCreated)
	moved := h.request(http.MethodPatch, "/keys/"+ids[0], map[string]string{"KeyRingID": "ring-b"})
	if k := moved.wantStatus(t, http.StatusOK).key(t); k.KeyRingID != "ring-b" {
		t.Fatalf("PATCH key ring = %+v", k)
	}
	if got := idsOf(h.request(http.MethodGet, "/keys", nil, "x-kms-key-ring", "ring-b").keys(t)); !slices.Equal(got, []string{ids[0]}) {
		t.Fatalf("list in ring-b = %v", got)
	}
	if st := h.srv.Stats(); st.List == 0 || st.Count != 3 || st.SetKeyRing != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestGetKey(t *testing.T) {
	h := newHarness(t, Config{})
	std := h.create("std", false, "payload", b64("standard key material"), "aliases", []string{"std-alias"})
	root := h.create("root", true)

	if k := h.request(http.MethodGet, "/keys/"+std.ID, nil).wantStatus(t, http.StatusOK).key(t); k.Payload != b64("standard key material") {
		t.Fatalf("GET standard key payload %q", k.Payload)
	}
	if k := h.request(http.MethodGet, "/keys/std-alias", nil).wantStatus(t, http.StatusOK).key(t); k.ID != std.ID || k.Payload == "" {
		t.Fatalf("GET by alias = %+v", k)
	}
	if k := h.request(http.MethodGet, "/keys/"+std.ID+"/metadata", nil).wantStatus(t, http.StatusOK).key(t); k.Payload != "" || k.ID != std.ID {
		t.Fatalf("metadata = %+v", k)
	}
	if k := h.request(http.MethodGet, "/keys/"+root.ID, nil).wantStatus(t, http.StatusOK).key(t); k.Payload != "" {
		t.Fatal("root key material returned")
	}
	h.request(http.MethodGet, "/keys/2d1b3c4e-0000-4000-8000-000000000000", nil).wantError(t, http.StatusNotFound, "KEY_NOT_FOUND_ERR")
	h.request(http.MethodGet, "/keys/no-such-alias", nil).wantError(t, http.StatusNotFound, "KEY_NOT_FOUND_ERR")
	h.request(http.MethodGet, "/keys/"+root.ID, nil, "x-kms-key-ring", "other-ring").wantError(t, http.StatusNotFound, "KEY_NOT_FOUND_ERR")
	h.request(http.MethodGet, "/keys/"+root.ID, nil, "x-kms-key-ring", "default").wantStatus(t, http.StatusOK)
	if st := h.srv.Stats(); st.Get != 7 || st.Metadata != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestCreateKeyHelper(t *testing.T) {
	h := newHarness(t, Config{Region: "eu-de", Account: "acc123"})
	id, err := h.srv.CreateKey("direct-root", true)
	if err != nil {
		t.Fatal(err)
	}
	k := h.request(http.MethodGet, "/keys/"+id, nil).wantStatus(t, http.StatusOK).key(t)
	if k.Extractable || k.CRN != "crn:v1:bluemix:public:kms:eu-de:a/acc123:"+testInstance+":key:"+id {
		t.Fatalf("key created directly = %+v", k)
	}
	h.actionOK(id, "wrap", nil)
	sid, err := h.srv.CreateKey("direct-standard", false)
	if err != nil {
		t.Fatal(err)
	}
	if k := h.request(http.MethodGet, "/keys/"+sid, nil).key(t); !k.Extractable || len(mustDecode(t, k.Payload)) != 32 {
		t.Fatalf("standard key created directly = %+v", k)
	}
	if _, err := h.srv.CreateKey("x", true); err == nil {
		t.Fatal("CreateKey accepted a one-character name")
	}
	if cfg := h.srv.Config(); cfg.InstanceID != testInstance || cfg.TokenTTL != DefaultTokenTTL || cfg.MinRotationInterval != 0 {
		t.Fatalf("Config() = %+v", cfg)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, cfg := range []Config{
		{FaultRate: 1.5},
		{FaultRate: -0.1},
		{Latency: -time.Second},
		{TokenTTL: time.Millisecond},
		{MinRotationInterval: -time.Hour},
		{InstanceID: "a:b"},
		{Region: "us south"},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg := s.Config(); !isUUID(cfg.InstanceID) || cfg.APIKey == "" || cfg.Region != DefaultRegion || cfg.Account != DefaultAccount {
		t.Fatalf("defaults = %+v", cfg)
	}
}

func TestDeleteRestorePurge(t *testing.T) {
	h := newHarness(t, Config{TokenTTL: 365 * 24 * time.Hour})
	a := h.create("to-delete", true)
	ct := h.actionOK(a.ID, "wrap", map[string]any{"plaintext": b64n(32, 6)}).Ciphertext

	h.request(http.MethodDelete, "/keys/"+a.ID, nil).wantStatus(t, http.StatusNoContent)
	k := h.request(http.MethodGet, "/keys/"+a.ID, nil).wantStatus(t, http.StatusOK).key(t)
	if k.State != 5 || !*k.Deleted || k.DeletionDate == "" || k.RestoreAllowed == nil || *k.RestoreAllowed ||
		k.PurgeAllowed == nil || *k.PurgeAllowed || k.PurgeAllowedFrom == "" || k.PurgeScheduledOn == "" || k.RestoreExpiration == "" {
		t.Fatalf("deleted key = %+v", k)
	}
	h.request(http.MethodDelete, "/keys/"+a.ID, nil).wantError(t, http.StatusGone, "KEY_DELETED_ERR")

	h.request(http.MethodPost, "/keys/"+a.ID+"/restore", nil).wantError(t, http.StatusConflict, "REQ_TOO_EARLY_ERR")
	h.clock.Advance(30 * time.Second)
	if k := h.request(http.MethodPost, "/keys/"+a.ID+"/restore", nil).wantStatus(t, http.StatusCreated).key(t); k.State != 1 || *k.Deleted {
		t.Fatalf("restored key = %+v", k)
	}
	if got := h.actionOK(a.ID, "unwrap", map[string]any{"ciphertext": ct}); got.Plaintext != b64n(32, 6) {
		t.Fatal("restored key does not unwrap its old ciphertext")
	}
	h.request(http.MethodPost, "/keys/"+a.ID+"/restore", nil).wantError(t, http.StatusConflict, "KEY_ACTION_INVALID_STATE_ERR")
	h.request(http.MethodDelete, "/keys/"+a.ID+"/purge", nil).wantError(t, http.StatusConflict, "KEY_ACTION_INVALID_STATE_ERR")

	r := h.request(http.MethodDelete, "/keys/"+a.ID, nil, "prefer", "return=representation")
	if k := r.wantStatus(t, http.StatusOK).key(t); k.State != 5 || !*k.Deleted {
		t.Fatalf("delete with return=representation = %+v", k)
	}
	h.request(http.MethodDelete, "/keys/"+a.ID+"/purge", nil).wantError(t, http.StatusConflict, "REQ_TOO_EARLY_ERR")
	h.clock.Advance(4 * time.Hour)
	h.request(http.MethodDelete, "/keys/"+a.ID+"/purge", nil).wantStatus(t, http.StatusNoContent)
	h.request(http.MethodGet, "/keys/"+a.ID, nil).wantError(t, http.StatusNotFound, "KEY_NOT_FOUND_ERR")
	h.request(http.MethodDelete, "/keys/"+a.ID+"/purge", nil).wantError(t, http.StatusNotFound, "KEY_NOT_FOUND_ERR")

	// Restore through the legacy action form; the 30-day window; auto-purge after 90 days.
	b := h.create("restore-legacy", false)
	h.request(http.MethodDelete, "/keys/"+b.ID, nil).wantStatus(t, http.StatusNoContent)
	h.clock.Advance(time.Minute)
	h.request(http.MethodPost, "/keys/"+b.ID+"?action=restore", nil).wantStatus(t, http.StatusCreated)
	h.request(http.MethodDelete, "/keys/"+b.ID, nil).wantStatus(t, http.StatusNoContent)
	h.clock.Advance(30 * 24 * time.Hour)
	h.request(http.MethodPost, "/keys/"+b.ID+"/restore", nil).wantError(t, http.StatusBadRequest, "KEY_RESTORE_EXPIRED")
	h.clock.Advance(60 * 24 * time.Hour)
	h.request(http.MethodGet, "/keys/"+b.ID, nil).wantError(t, http.StatusNotFound, "KEY_NOT_FOUND_ERR")
	if n := len(h.request(http.MethodGet, "/keys?state=5", nil).keys(t)); n != 0 {
		t.Fatalf("%d deleted keys listed after 90 days", n)
	}
	if st := h.srv.Stats(); st.Delete != 5 || st.Restore != 5 || st.Purge != 4 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestAliases(t *testing.T) {
	h := newHarness(t, Config{})
	k := h.create("aliased", true)
	other := h.create("other", true)

	var out struct {
		Metadata  struct{ CollectionTotal int }
		Resources []struct{ KeyID, Alias, CreationDate string }
	}
	h.request(http.MethodPost, "/keys/"+k.ID+"/aliases/first-alias", nil).wantStatus(t, http.StatusCreated).decode(t, &out)
	if out.Metadata.CollectionTotal != 1 || len(out.Resources) != 1 || out.Resources[0].KeyID != k.ID || out.Resources[0].Alias != "first-alias" {
		t.Fatalf("create alias = %+v", out)
	}
	w := h.actionOK("first-alias", "wrap", nil)
	if got := h.actionOK(k.ID, "unwrap", map[string]any{"ciphertext": w.Ciphertext}); got.Plaintext != w.Plaintext {
		t.Fatal("wrap by alias and unwrap by ID disagree")
	}
	h.request(http.MethodPost, "/keys/"+other.ID+"/aliases/first-alias", nil).wantError(t, http.StatusBadRequest, "INVALID_FIELD_ERR")
	h.request(http.MethodPost, "/keys/"+k.ID+"/aliases/versions", nil).wantError(t, http.StatusBadRequest, "INVALID_FIELD_ERR")
	for i := 2; i <= 5; i++ {
		h.request(http.MethodPost, fmt.Sprintf("/keys/%s/aliases/alias-%d", k.ID, i), nil).wantStatus(t, http.StatusCreated)
	}
	h.request(http.MethodPost, "/keys/"+k.ID+"/aliases/alias-6", nil).wantError(t, http.StatusBadRequest, "INVALID_FIELD_ERR")

	h.request(http.MethodDelete, "/keys/"+k.ID+"/aliases/first-alias", nil).wantStatus(t, http.StatusNoContent)
	h.request(http.MethodGet, "/keys/first-alias", nil).wantError(t, http.StatusNotFound, "KEY_NOT_FOUND_ERR")
	h.request(http.MethodDelete, "/keys/"+k.ID+"/aliases/first-alias", nil).wantError(t, http.StatusNotFound, "")
	h.request(http.MethodPost, "/keys/"+other.ID+"/aliases/first-alias", nil).wantStatus(t, http.StatusCreated)
	if got := h.request(http.MethodGet, "/keys/first-alias", nil).key(t); got.ID != other.ID {
		t.Fatalf("alias moved to %s, want %s", got.ID, other.ID)
	}
}
