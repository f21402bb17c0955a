package kplocal

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzAPI sends arbitrary paths and bodies, with a valid token, to every
// method: the server must answer, never panic, and never fail internally.
func FuzzAPI(f *testing.F) {
	s, err := New(Config{InstanceID: testInstance, APIKey: testAPIKey})
	if err != nil {
		f.Fatal(err)
	}
	root, err := s.CreateKey("fuzz-root", true)
	if err != nil {
		f.Fatal(err)
	}
	std, err := s.CreateKey("fuzz-standard", false)
	if err != nil {
		f.Fatal(err)
	}
	token, _ := s.issueToken(s.principals[0], s.now())
	k := s.keys[root]
	ct, err := seal(root, k.current(), []byte("0123456789abcdef0123456789abcdef"), []string{"a"})
	if err != nil {
		f.Fatal(err)
	}

	seeds := []struct {
		method uint8
		path   string
		body   string
	}{
		{1, "/keys/" + root + "/actions/wrap", `{"plaintext":"AAAA","aad":["a"]}`},
		{1, "/keys/" + root + "/actions/unwrap", `{"ciphertext":"` + ct + `","aad":["a"]}`},
		{1, "/keys/" + root + "/actions/rewrap", `{"ciphertext":"` + ct + `"}`},
		{1, "/keys/" + root + "?action=rotate", `{"payload":"AAAA"}`},
		{1, "/keys/" + std + "/actions/wrap", `null`},
		{1, "/keys", `{"metadata":{"collectionType":"application/vnd.ibm.kms.key+json","collectionTotal":1},"resources":[{"type":"application/vnd.ibm.kms.key+json","name":"nn","payload":"AAAAAAAAAAAAAAAAAAAAAA==","extractable":false}]}`},
		{2, "/keys/" + root + "/policies?policy=rotation", `{"metadata":{"collectionTotal":1},"resources":[{"rotation":{"interval_month":2}}]}`},
		{0, "/keys?limit=3&offset=1&sort=-state&filter=creationDate%3Dgt%3A%222020-01-01T00%3A00%3A00Z%22&search=not%3Aa", ``},
		{3, "/keys/" + root, ``},
		{4, "/keys/" + std, `{"keyRingID":"r1"}`},
	}
	for _, sd := range seeds {
		f.Add(sd.method, sd.path, sd.body)
	}
	methods := []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodHead}
	f.Fuzz(func(t *testing.T, m uint8, path, body string) {
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \r\n\t#") {
			return
		}
		req, err := http.NewRequest(methods[int(m)%len(methods)], "http://kplocal/api/v2"+path, strings.NewReader(body))
		if err != nil {
			return
		}
		req.Header.Set("authorization", "Bearer "+token)
		req.Header.Set("bluemix-instance", testInstance)
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		if rec.Code >= 500 || rec.Code < 200 {
			t.Fatalf("%s %s %q: status %d %s", req.Method, path, body, rec.Code, rec.Body)
		}
	})
}
