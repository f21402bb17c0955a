//go:build cgo

// Package softhsmtest makes SoftHSM2 tokens in temporary directories for
// tests of PKCS#11 KEKs: a real token, no mock.
//
// [New] writes a softhsm2.conf whose token directory is the test's
// temporary directory, points SOFTHSM2_CONF at it (t.Setenv: the test must
// not be parallel), and initialises a token through the module. It skips
// the test when no PKCS#11 module is found ([pkcs11.FindModule]), unless
// KPCRYPT_TEST_REQUIRE_PKCS11=1, as CI sets, makes that a failure. A
// KPCRYPT_PKCS11_MODULE that names no file is a failure too.
//
// SoftHSM2 reads its configuration and finds its tokens when it is
// initialised: make the tokens, and change the configuration, while no
// Provider of the test process has the module open.
package softhsmtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	p11 "github.com/miekg/pkcs11"

	"github.com/kpcrypt/kpcrypt/kms/pkcs11"
)

// EnvRequire, set to 1, makes New fail rather than skip when no PKCS#11
// module is found.
const EnvRequire = "KPCRYPT_TEST_REQUIRE_PKCS11"

// The PINs of the tokens New makes. They are distinctive, so that a test
// can check that no error message holds them.
const (
	PIN   = "kp-user-8642"
	SOPIN = "kp-so-9753"
)

// Token is a SoftHSM2 token directory and its first token.
type Token struct {
	// Module is the path of the SoftHSM2 module.
	Module string
	// Dir is the token directory; Conf the softhsm2.conf naming it.
	Dir, Conf string
	// Label is the label of the token New made.
	Label string
	// PINFile holds PIN, mode 0600.
	PINFile string
}

// New makes a token labelled label in a new token directory.
func New(t testing.TB, label string) *Token {
	t.Helper()
	configured := os.Getenv(pkcs11.EnvModule)
	mod, err := pkcs11.FindModule(configured)
	if err == nil {
		if _, serr := os.Stat(mod); serr != nil {
			err = serr
		}
	}
	if err != nil && configured != "" {
		t.Fatalf("%s=%s: %v", pkcs11.EnvModule, configured, err)
	}
	if err != nil {
		if os.Getenv(EnvRequire) == "1" {
			t.Fatalf("no PKCS#11 module, and %s=1: %v", EnvRequire, err)
		}
		t.Skipf("skipping: no PKCS#11 module to test with (install softhsm2, or set %s): %v", pkcs11.EnvModule, err)
	}
	dir := t.TempDir()
	tk := &Token{
		Module:  mod,
		Dir:     filepath.Join(dir, "tokens"),
		Conf:    filepath.Join(dir, "softhsm2.conf"),
		Label:   label,
		PINFile: filepath.Join(dir, "pin"),
	}
	if err := os.Mkdir(tk.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tk.PINFile, []byte(PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tk.SetMechanisms(t, "ALL")
	t.Setenv("SOFTHSM2_CONF", tk.Conf)
	tk.AddToken(t, label)
	return tk
}

// SetMechanisms rewrites the configuration so that the tokens offer only
// the mechanisms listed (SoftHSM2's slots.mechanisms: a comma-separated
// list of CKM_ names, or ALL). It takes effect when the module is next
// initialised.
func (tk *Token) SetMechanisms(t testing.TB, list string) {
	t.Helper()
	conf := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\nslots.mechanisms = %s\n", tk.Dir, list)
	if err := os.WriteFile(tk.Conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
}

// AddToken initialises another token, labelled label, with the same PINs,
// through the module (C_InitToken, then C_InitPIN as the security officer).
func (tk *Token) AddToken(t testing.TB, label string) {
	t.Helper()
	c := p11.New(tk.Module)
	if c == nil {
		t.Fatalf("cannot load PKCS#11 module %s", tk.Module)
	}
	defer c.Destroy()
	if err := c.Initialize(); err != nil {
		t.Fatalf("initialising %s (make tokens before opening a Provider): %v", tk.Module, err)
	}
	defer c.Finalize()
	slots, err := c.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	free, found := uint(0), false
	for _, s := range slots {
		if ti, err := c.GetTokenInfo(s); err == nil && ti.Flags&p11.CKF_TOKEN_INITIALIZED == 0 {
			free, found = s, true
			break
		}
	}
	if !found {
		t.Fatal("SoftHSM2 has no free slot")
	}
	if err := c.InitToken(free, SOPIN, label); err != nil {
		t.Fatalf("C_InitToken: %v", err)
	}
	s, err := c.OpenSession(free, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		t.Fatalf("C_OpenSession: %v", err)
	}
	defer c.CloseSession(s)
	if err := c.Login(s, p11.CKU_SO, SOPIN); err != nil {
		t.Fatalf("C_Login as SO: %v", err)
	}
	if err := c.InitPIN(s, PIN); err != nil {
		t.Fatalf("C_InitPIN: %v", err)
	}
	if err := c.Logout(s); err != nil {
		t.Fatalf("C_Logout: %v", err)
	}
}

// URI returns the URI of the key labelled object in the token, with the
// module's path and the PIN file.
func (tk *Token) URI(object string) string {
	return "pkcs11:token=" + esc(tk.Label) + ";object=" + esc(object) +
		"?module-path=" + esc(tk.Module) + "&pin-source=" + esc(tk.PINFile)
}

func esc(s string) string {
	return strings.NewReplacer("%", "%25", " ", "%20", ";", "%3B", "?", "%3F", "&", "%26", "=", "%3D").Replace(s)
}
