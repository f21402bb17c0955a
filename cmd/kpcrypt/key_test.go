package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpcrypt/kpcrypt/kplocal"
)

// testClock is a settable clock for an in-process kplocal, so that the
// service's time rules (one rotation an hour, no restore in the first 30 s)
// can be passed without waiting.
type testClock struct{ ns atomic.Int64 }

func (c *testClock) Now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *testClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// The key management commands against kplocal, run as a user would.
func TestKeyCommands(t *testing.T) {
	const instance, apiKey = "6e7f8091-a2b3-44c5-96d7-e8f90a1b2c3d", "key-cli-test-key"
	clk := &testClock{}
	clk.ns.Store(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC).UnixNano())
	srv, err := kplocal.Start(kplocal.Config{InstanceID: instance, APIKey: apiKey, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	dir := t.TempDir()
	env := append(os.Environ(), "IBMCLOUD_API_KEY="+apiKey, "IBMCLOUD_KP_ENDPOINT="+srv.BaseURL(), "IBMCLOUD_IAM_ENDPOINT="+srv.BaseURL())
	run := func(args ...string) result {
		t.Helper()
		return kpEnv(t, dir, env, nil, append([]string{"key"}, args...)...)
	}
	inst := "crn:v1:bluemix:public:kms:us-south:a/" + kplocal.DefaultAccount + ":" + instance + "::"

	r := run("create", "--instance", inst, "--name", "cli-root", "--alias", "cli-root-alias", "--json")
	r.expect(t, 0)
	var k struct {
		ID, CRN, Name, Type, State string
		KeyVersion                 string `json:"key_version"`
	}
	if err := json.Unmarshal(r.stdout, &k); err != nil || k.Name != "cli-root" || k.Type != "root" || k.State != "active" || k.CRN == "" {
		t.Fatalf("create --json: %v\n%s", err, r.stdout)
	}
	crn := k.CRN
	std := run("create", "--instance", inst, "--name", "cli-std", "--standard", "--json")
	std.expect(t, 0)
	var sk struct{ CRN string }
	json.Unmarshal(std.stdout, &sk)

	r = run("list", "--instance", inst)
	r.expect(t, 0)
	if !strings.Contains(string(r.stdout), "cli-root") || !strings.Contains(string(r.stdout), "cli-std") {
		t.Fatalf("list:\n%s", r.stdout)
	}
	run("list", "--instance", inst, "--count").expect(t, 0)
	if r := run("list", "--instance", inst, "--count"); strings.TrimSpace(string(r.stdout)) != "2" {
		t.Fatalf("list --count printed %q", r.stdout)
	}
	run("list", "--instance", inst, "--state", "bogus").expect(t, 2, "is not a key state")

	// A standard key's payload is printed only on request.
	r = run("show", sk.CRN)
	r.expect(t, 0)
	if !strings.Contains(string(r.stdout), "withheld") {
		t.Fatalf("show of a standard key:\n%s", r.stdout)
	}
	r = run("show", sk.CRN, "--show-payload", "--json")
	r.expect(t, 0)
	if !strings.Contains(string(r.stdout), `"payload": "`) {
		t.Fatalf("show --show-payload:\n%s", r.stdout)
	}

	// Rotate, versions, disable, enable.
	r = run("rotate", crn)
	r.expect(t, 0, "is now current")
	v2 := strings.TrimSpace(string(r.stdout))
	if v2 == "" || v2 == k.KeyVersion {
		t.Fatalf("rotate printed %q after %q", v2, k.KeyVersion)
	}
	r = run("versions", crn)
	r.expect(t, 0)
	if lines := strings.Count(string(r.stdout), "\n"); lines != 2 || !strings.HasPrefix(string(r.stdout), v2) {
		t.Fatalf("versions:\n%s", r.stdout)
	}
	run("disable", crn).expect(t, 0, "suspended")
	clk.Advance(time.Minute)
	run("enable", crn).expect(t, 0, "active")

	// Policies.
	run("policy", crn, "--rotation-months", "3", "--dual-auth-delete", "off").expect(t, 0)
	if r := run("policy", crn); !strings.Contains(string(r.stdout), "every 3 months") {
		t.Fatalf("policy:\n%s", r.stdout)
	}
	run("policy", crn, "--no-rotation").expect(t, 0)
	run("policy", crn, "--rotation-months", "13").expect(t, 2, "1 to 12")

	// Delete needs --yes; restore brings it back.
	run("delete", crn).expect(t, 2, "confirm with --yes")
	run("delete", crn, "--yes").expect(t, 0, "restorable")
	if r := run("show", crn, "--json"); !strings.Contains(string(r.stdout), "destroyed") {
		t.Fatalf("show after delete:\n%s%s", r.stdout, r.stderr)
	}
	clk.Advance(time.Minute)
	run("restore", crn).expect(t, 0, "active")

	// Secure import: generated material is escrowed first, exclusively.
	r = run("import", "--instance", inst, "--name", "byok", "--generate", "--escrow", "byok.key", "--json")
	r.expect(t, 0)
	esc, err := os.Stat(filepath.Join(dir, "byok.key"))
	if err != nil || esc.Size() != 32 || esc.Mode().Perm() != 0o600 {
		t.Fatalf("escrow file: %v %v", esc, err)
	}
	var ik struct {
		CRN      string
		Imported bool
	}
	if json.Unmarshal(r.stdout, &ik); !ik.Imported || ik.CRN == "" {
		t.Fatalf("import --json:\n%s", r.stdout)
	}
	run("import", "--instance", inst, "--name", "byok-again", "--generate", "--escrow", "byok.key").expect(t, 1, "never overwritten")
	run("import", "--instance", inst, "--name", "x", "--generate").expect(t, 2, "--escrow")
	// Material of one's own, then an encrypt under the imported key.
	run("import", "--instance", inst, "--name", "byok2", "--material", "byok.key").expect(t, 0)
	os.WriteFile(filepath.Join(dir, "plain"), []byte("imported"), 0o600)
	kpEnv(t, dir, env, nil, "encrypt", "--kek", ik.CRN, "-o", "p.kpc", "plain").expect(t, 0)
	if r := kpEnv(t, dir, env, nil, "decrypt", "p.kpc"); r.code != 0 || string(r.stdout) != "imported" {
		t.Fatalf("decrypt under the imported key: %d %s", r.code, r.stderr)
	}
	os.Chmod(filepath.Join(dir, "byok.key"), 0o644)
	run("import", "--instance", inst, "--name", "byok3", "--material", "byok.key").expect(t, 1, "chmod 600")

	// Usage.
	run("bogus").expect(t, 2, "unknown command")
	run("rotate").expect(t, 2, "give one KEY")
	run("create", "--instance", "crn:v1:bluemix:public:kms:evil.example#:a/x:"+instance+"::", "--name", "x").expect(t, 2)
	if r := kpEnv(t, dir, env, nil, "key", "-h"); r.code != 0 || !strings.Contains(string(r.stdout), "Commands:") {
		t.Fatalf("key -h: %d\n%s", r.code, r.stdout)
	}
}
