package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/internal/termsafe"
	"github.com/kpcrypt/kpcrypt/kms"
)

// Text a hostile file or server could carry: an OSC 52 clipboard write, a
// CR and LF that start a fake line, a C1 CSI, a bidi override, DEL.
const (
	osc52    = "\x1b]52;c;cHduZWQ=\x07"
	fakeLine = "  slot 1:  local:kek.json (key version 1, current)"
	hostile  = osc52 + "x\r\n" + fakeLine + "\nverified: yes\u009b2J\u202eevil\x7f"
)

// fakeKEK records any URI and version in a file's slot; its wrapped DEK is
// random, since inspect never unwraps it.
type fakeKEK struct{ uri, version string }

func (k fakeKEK) URI() string { return k.uri }
func (k fakeKEK) Wrap(context.Context, []byte, []byte) (kms.WrappedKey, error) {
	w := make([]byte, 60)
	rand.Read(w)
	return kms.WrappedKey{Ciphertext: w, KeyVersion: k.version}, nil
}
func (k fakeKEK) Unwrap(context.Context, []byte, []byte) (kms.UnwrapResult, error) {
	return kms.UnwrapResult{}, kms.ErrWrongKey
}

// rawControls returns the runes of out a terminal would act on, but the LF
// that ends lines and the TAB that separates scan's columns, and U+FFFD if
// out is not valid UTF-8. (The hostile text holds no TAB.)
func rawControls(out []byte) []rune {
	var bad []rune
	if !utf8.Valid(out) {
		bad = append(bad, utf8.RuneError)
	}
	for _, r := range string(out) {
		if r != '\n' && r != '\t' && termsafe.Unsafe(r) {
			bad = append(bad, r)
		}
	}
	return bad
}

// noRaw fails if a command printed a control character, or a line that the
// input forged.
func noRaw(t *testing.T, r result) {
	t.Helper()
	for name, out := range map[string][]byte{"stdout": r.stdout, "stderr": r.stderr} {
		if bad := rawControls(out); len(bad) > 0 {
			t.Errorf("%s holds raw controls %q:\n%q", name, bad, out)
		}
		for line := range strings.Lines(string(out)) {
			if strings.HasPrefix(line, "  slot 1:") || strings.HasPrefix(line, "verified") {
				t.Errorf("%s holds a forged line %q", name, line)
			}
		}
	}
}

// hostileFile writes a file whose context holds hostile text. (Slot URIs
// and key versions are printable ASCII by the format.)
func hostileFile(t *testing.T, path string) {
	t.Helper()
	e := &envelope.Encrypter{
		KEKs:    []kms.KEK{fakeKEK{uri: "local:k.json", version: "v1"}},
		Context: map[string]string{"tenant": hostile, "key" + hostile: "v"},
	}
	ct, err := e.Seal(context.Background(), []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, ct, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestInspectHostileHeader(t *testing.T) {
	dir := t.TempDir()
	hostileFile(t, filepath.Join(dir, "f.kpc"))
	r := kp(t, dir, nil, "inspect", "f.kpc")
	r.expect(t, 0)
	noRaw(t, r)
	out := string(r.stdout)
	for _, want := range []string{`\x1b]52;c;cHduZWQ=\x07`, `\x0d\x0a  slot 1:`, `\u009b2J`, `\u202eevil\x7f`,
		"authenticated:   no (inspect reads the header without a key; decrypt authenticates it)"} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(strings.ReplaceAll(out, "verified: yes", ""), "verified") {
		t.Errorf("inspect says verified:\n%s", out)
	}

	r = kp(t, dir, nil, "inspect", "--json", "f.kpc")
	r.expect(t, 0)
	noRaw(t, r)
	var h struct {
		Authenticated *bool             `json:"authenticated"`
		Context       map[string]string `json:"context"`
		Slots         []struct {
			KEK        string `json:"kek"`
			KeyVersion string `json:"key_version"`
		} `json:"slots"`
	}
	if err := json.Unmarshal(r.stdout, &h); err != nil {
		t.Fatalf("inspect --json: %v\n%s", err, r.stdout)
	}
	if h.Authenticated == nil || *h.Authenticated || h.Context["tenant"] != hostile || h.Context["key"+hostile] != "v" ||
		len(h.Slots) != 1 || h.Slots[0].KEK != "local:k.json" || h.Slots[0].KeyVersion != "v1" {
		t.Fatalf("inspect --json does not give the header back: %+v", h)
	}
}

// TestHostileNamesAndErrors checks file names found in a directory and
// errors about hostile slots: scan, rewrap and decrypt escape them.
func TestHostileNamesAndErrors(t *testing.T) {
	dir, _ := setup(t, 1000)
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	name := filepath.Join("d", "a"+osc52+"\r"+fakeLine+"\u202e.kpc")
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "-o", name, "plain.bin").expect(t, 0)
	hostileFile(t, filepath.Join(dir, "d", "hostile.kpc"))
	kp(t, dir, nil, "keygen", "--rotate", "kek.json").expect(t, 0)

	r := kp(t, dir, nil, "scan", "--outdated", "--kek", "local:kek.json", "d")
	noRaw(t, r)
	if !bytes.Contains(r.stdout, []byte(`a\x1b]52;c;cHduZWQ=\x07\x0d`)) {
		t.Fatalf("scan does not list the file, escaped:\n%s", r.stdout)
	}
	r = kp(t, dir, nil, "rewrap", "--dry-run", "--kek", "local:kek.json", "d")
	noRaw(t, r)
	if !bytes.Contains(r.stdout, []byte(`would rewrap d/a\x1b]52;c;cHduZWQ=\x07`)) {
		t.Fatalf("rewrap does not list the file, escaped:\n%s\n%s", r.stdout, r.stderr)
	}
	// A key file's name in an error.
	r = kp(t, dir, nil, "decrypt", "--kek", "local:missing"+hostile, filepath.Join("d", "hostile.kpc"))
	r.expect(t, 1, `missing\x1b]52;c;cHduZWQ=\x07x\x0d\x0a  slot 1:`)
	noRaw(t, r)
}

// TestServerErrorEscaped runs kpcrypt against a server posing as Key
// Protect that answers with an errorMsg full of escape sequences.
func TestServerErrorEscaped(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/identity/token" {
			json.NewEncoder(w).Encode(map[string]any{"access_token": "t", "token_type": "Bearer", "expires_in": 3600})
			return
		}
		w.WriteHeader(http.StatusBadRequest)
		json.NewEncoder(w).Encode(map[string]any{"resources": []any{map[string]any{"errorMsg": "\x1b[2J" + hostile}}})
	}))
	defer srv.Close()
	dir, _ := setup(t, 100)
	env := append(os.Environ(), "IBMCLOUD_API_KEY=k", "IBMCLOUD_KP_ENDPOINT="+srv.URL, "IBMCLOUD_IAM_ENDPOINT="+srv.URL)
	crn := "crn:v1:bluemix:public:kms:us-south:a/0123456789abcdef:7d0c3a52-1b9e-4c2e-8f1a-2f6b5c4d3e21:key:1f3e5d7c-9b8a-4c6d-8e7f-0a1b2c3d4e5f"
	r := kpEnv(t, dir, env, nil, "encrypt", "--kek", crn, "-o", "f.kpc", "plain.bin")
	r.expect(t, 1, `400 Bad Request: \x1b[2J\x1b]52;c;`)
	noRaw(t, r)
	mustNotExist(t, filepath.Join(dir, "f.kpc"))
}

// TestPINValueRefused checks that every flag taking a URI refuses pin-value
// in each spelling, and that the PIN is never printed.
func TestPINValueRefused(t *testing.T) {
	dir, _ := setup(t, 100)
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "-o", "f.kpc", "plain.bin").expect(t, 0)
	const pin = "PIN-4921-xyz"
	uris := []string{
		"pkcs11:token=T;object=k?pin-value=" + pin,
		"PKCS11:token=T;object=k?pin-value=" + pin,
		"pkcs11:token=T;object=k?module-path=/m.so&pin%2Dvalue=" + pin,
		"pkcs11:token=T;object=k?%70in-value=" + pin,
		"pkcs11:token=T;object=k?PIN-VALUE=" + pin,
		"pkcs11:token=T;pin-value=" + pin + ";object=k",
		"pkcs11:token=T;object=k?pin-value%3D" + pin,
	}
	for _, uri := range uris {
		for _, args := range [][]string{
			{"encrypt", "--kek", uri, "-o", "g.kpc", "plain.bin"},
			{"decrypt", "--kek", uri, "-o", "out", "f.kpc"},
			{"inspect", "--current", "--kek", uri, "f.kpc"},
			{"inspect", "--kek", uri, "f.kpc"},
			{"rewrap", "--kek", uri, "f.kpc"},
			{"rewrap", "--to-kek", uri, "f.kpc"},
			{"rewrap", "--add-kek", uri, "f.kpc"},
			{"rewrap", "--remove-kek", uri, "f.kpc"},
			{"scan", "--outdated", "--kek", uri, "f.kpc"},
			{"keygen", "--pkcs11", uri},
			{"keygen", "--rotate-pkcs11", uri},
		} {
			r := kp(t, dir, nil, args...)
			if r.code != 1 || !bytes.Contains(r.stderr, []byte("takes no pin-value on the command line")) {
				t.Errorf("kpcrypt %q: exit %d, stderr %s; want a refusal", args, r.code, r.stderr)
			}
			if bytes.Contains(r.stdout, []byte(pin)) || bytes.Contains(r.stderr, []byte(pin)) {
				t.Errorf("kpcrypt %q printed the PIN: %s", args, r.stderr)
			}
		}
	}
	mustNotExist(t, filepath.Join(dir, "g.kpc"))
	mustNotExist(t, filepath.Join(dir, "out"))
	// The file is untouched: its one slot is still there.
	if s := slotsOf(t, dir, "f.kpc"); len(s) != 1 || s[0][0] != "local:kek.json" {
		t.Fatalf("slots after refusals: %v", s)
	}
	// A PIN in a mistyped operand is not echoed either.
	r := kp(t, dir, nil, "keygen", "-o", "x.json", "pkcs11:token=T?pin-value="+pin)
	if r.code != 2 || bytes.Contains(r.stderr, []byte(pin)) {
		t.Fatalf("keygen with a stray operand: exit %d, %s", r.code, r.stderr)
	}
}

func TestSafeText(t *testing.T) {
	for in, want := range map[string]string{
		"open with KEK pkcs11:x?pin-value=REDACTED: invalid": "open with KEK pkcs11:x?pin-value=REDACTED: invalid",
		`unexpected argument "pkcs11:x?PIN-VALUE=1234"`:      `unexpected argument "pkcs11:x?PIN-VALUE=REDACTED`,
		"open pkcs11:x?pin%2Dvalue=12.34: no such file":      "open pkcs11:x?pin%2Dvalue=REDACTED: no such file",
		"server says \x1b[2J\r\nkpcrypt: all good\u202e":     `server says \x1b[2J\x0d\x0akpcrypt: all good\u202e`,
	} {
		if got := safeText(in); got != want {
			t.Errorf("safeText(%q) = %q, want %q", in, got, want)
		}
	}
}

// A PIN with spaces in it is redacted whole.
func TestPINWithSpacesRedacted(t *testing.T) {
	dir := t.TempDir()
	r := kp(t, dir, nil, "keygen", "--pkcs11", "pkcs11:token=T;object=k?pin-value=correct horse battery")
	if r.code == 0 || bytes.Contains(r.stderr, []byte("horse")) || bytes.Contains(r.stderr, []byte("battery")) || bytes.Contains(r.stderr, []byte("correct")) {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}
