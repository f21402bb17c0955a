package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/keyprotect"
	"github.com/kpcrypt/kpcrypt/kms/local"
	"github.com/kpcrypt/kpcrypt/kplocal"
)

func TestRewrapCommand(t *testing.T) {
	ctx := context.Background()
	const instance, apiKey = "5a1e2d3c-4b5a-4c6d-8e7f-9a0b1c2d3e4f", "rewrap-cli-key"
	srv, err := kplocal.Start(kplocal.Config{InstanceID: instance, APIKey: apiKey})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	id, _ := srv.CreateKey("rewrap-cli-root", true)
	crn := srv.KeyCRN(id)
	opener := &keyprotect.Opener{Config: keyprotect.Config{BaseURL: srv.BaseURL(), IAMURL: srv.BaseURL(), APIKey: apiKey}}
	k, err := opener.Open(ctx, crn)
	if err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "IBMCLOUD_API_KEY="+apiKey, "IBMCLOUD_KP_ENDPOINT="+srv.BaseURL(), "IBMCLOUD_IAM_ENDPOINT="+srv.BaseURL())
	dir, pt := setup(t, 70_000)
	kpc := func(args ...string) result {
		t.Helper()
		return kpEnv(t, dir, env, nil, args...)
	}
	os.MkdirAll(filepath.Join(dir, "d", "sub"), 0o755)
	kpc("encrypt", "--kek", crn, "-o", "d/a.kpc", "plain.bin").expect(t, 0)
	kpc("encrypt", "--kek", crn, "-o", "d/sub/b.kpc", "plain.bin").expect(t, 0)
	os.WriteFile(filepath.Join(dir, "d", "notes.txt"), []byte("not encrypted"), 0o644)
	bodyOf := func(p string) []byte {
		b := readFile(t, filepath.Join(dir, p))
		return b[4222:] // core 126 + 2 × 2048
	}
	bodyA := bodyOf("d/a.kpc")

	v1, _ := k.(kms.VersionReporter).CurrentVersion(ctx)
	k.(kms.Rotator).Rotate(ctx)
	v3, _ := k.(kms.Rotator).Rotate(ctx)

	r := kpc("scan", "--outdated", "d")
	if r.code != 1 || !strings.Contains(string(r.stderr), "2 of 2 files have slots not under their KEK's current version") {
		t.Fatalf("scan --outdated: exit %d, want 1\n%s", r.code, r.stderr)
	}
	if !strings.Contains(string(r.stdout), "d/a.kpc\tslot 0\t"+crn+"\tkey version "+v1) || !strings.Contains(string(r.stdout), "d/sub/b.kpc") {
		t.Fatalf("scan --outdated:\n%s", r.stdout)
	}
	if r := kpc("scan", "--below-version", v3, "--kek", crn, "d"); r.code != 1 || !strings.Contains(string(r.stderr), "2 of 2 files have slots under a key version older than "+v3) {
		t.Fatalf("scan --below-version: exit %d, want 1\n%s", r.code, r.stderr)
	}
	kpc("scan", "--below-version", v1, "--kek", crn, "d").expect(t, 0, "0 of 2 files")
	kpc("scan", "--below-version", "2", "--kek", crn, "d").expect(t, 2, "is not a key version")
	kpc("scan", "d").expect(t, 2)

	r = kpc("inspect", "--current", "d/a.kpc")
	r.expect(t, 0)
	if !strings.Contains(string(r.stdout), "outdated: the current version is "+v3) {
		t.Fatalf("inspect --current:\n%s", r.stdout)
	}

	before := readFile(t, filepath.Join(dir, "d/a.kpc"))
	r = kpc("rewrap", "--dry-run", "d")
	r.expect(t, 0, "2 would rewrap, 0 already current, 0 failed, 1 skipped (not kpcrypt files)")
	if !bytes.Equal(before, readFile(t, filepath.Join(dir, "d/a.kpc"))) {
		t.Fatal("--dry-run wrote a file")
	}
	st := srv.Stats()
	r = kpc("rewrap", "d")
	r.expect(t, 0, "2 rewrapped, 0 already current, 0 failed, 1 skipped")
	if !strings.Contains(string(r.stdout), v1+" → "+v3+" (server-side)") {
		t.Fatalf("rewrap output:\n%s", r.stdout)
	}
	if got := srv.Stats(); got.Rewrap-st.Rewrap != 2 || got.Unwrap != st.Unwrap || got.Wrap != st.Wrap {
		t.Fatalf("rewrap made %d rewraps, %d unwraps, %d wraps", got.Rewrap-st.Rewrap, got.Unwrap-st.Unwrap, got.Wrap-st.Wrap)
	}
	if !bytes.Equal(bodyOf("d/a.kpc"), bodyA) {
		t.Fatal("rewrap changed the body")
	}
	var h struct {
		Slots []struct {
			KeyVersion string `json:"key_version"`
			Current    *bool  `json:"current"`
		} `json:"slots"`
	}
	json.Unmarshal(kpc("inspect", "--json", "--current", "d/sub/b.kpc").stdout, &h)
	if len(h.Slots) != 1 || h.Slots[0].KeyVersion != v3 || h.Slots[0].Current == nil || !*h.Slots[0].Current {
		t.Fatalf("inspect --json --current after rewrap: %+v", h)
	}
	r = kpc("decrypt", "d/sub/b.kpc")
	r.expect(t, 0)
	if !bytes.Equal(r.stdout, pt) {
		t.Fatal("rewrapped file decrypts to something else")
	}
	// Resumable and idempotent: nothing left to do.
	st = srv.Stats()
	kpc("rewrap", "d").expect(t, 0, "0 rewrapped, 2 already current, 0 failed")
	if got := srv.Stats(); got.Rewrap != st.Rewrap || got.Wrap != st.Wrap {
		t.Fatal("rewrapping current files made KMS write calls")
	}

	// Migrate one file to the local KEK, add and remove slots.
	kpc("rewrap", "--to-kek", "local:kek.json", "d/a.kpc").expect(t, 0, "1 rewrapped")
	r = kpc("inspect", "d/a.kpc")
	if !strings.Contains(string(r.stdout), "key slots:       1") || !strings.Contains(string(r.stdout), "local:kek.json") || strings.Contains(string(r.stdout), crn) {
		t.Fatalf("after migration:\n%s", r.stdout)
	}
	kpc("rewrap", "--kek", "local:kek.json", "--add-kek", crn, "d/a.kpc").expect(t, 0, "1 rewrapped")
	kpc("rewrap", "--remove-kek", "local:kek.json", "d/a.kpc").expect(t, 0, "1 rewrapped")
	r = kpc("rewrap", "--remove-kek", crn, "d/a.kpc")
	if r.code != 1 || !strings.Contains(string(r.stderr), "at least one") || !strings.Contains(string(r.stderr), "0 rewrapped, 0 already current, 1 failed") {
		t.Fatalf("removing the last slot: %d\n%s", r.code, r.stderr)
	}
	r = kpc("decrypt", "d/a.kpc")
	r.expect(t, 0)
	if !bytes.Equal(r.stdout, pt) {
		t.Fatal("file differs after migrations")
	}
	// A file named on the command line that is not a kpcrypt file fails.
	r = kpc("rewrap", "d/notes.txt")
	if r.code != 1 || !strings.Contains(string(r.stderr), "d/notes.txt: invalid envelope header: magic") {
		t.Fatalf("rewrap of a plain file: %d\n%s", r.code, r.stderr)
	}
	kpc("rewrap", "--to-kek", crn, "--add-kek", crn, "d").expect(t, 2)
}

// TestRewrapGrowsSmallFile: adding a KEK to a small file whose slot table
// has no room for it (as envelope.Seal writes them) rewrites the file whole,
// found by a directory walk or named, and says so.
func TestRewrapGrowsSmallFile(t *testing.T) {
	ctx := context.Background()
	dir, pt := setup(t, 3000)
	kek, err := local.Open(ctx, "local:"+filepath.Join(dir, "kek.json"))
	if err != nil {
		t.Fatal(err)
	}
	kp(t, dir, nil, "keygen", "-o", "kek2.json").expect(t, 0)
	kp(t, dir, nil, "keygen", "-o", "kek3.json").expect(t, 0)
	e := &envelope.Encrypter{KEKs: []kms.KEK{kek}}
	os.MkdirAll(filepath.Join(dir, "d"), 0o755)
	for _, name := range []string{"d/a.kpc", "named.kpc"} {
		e.Seal(ctx, pt) // the second file's table is sized to the first's slots
		ct, err := e.Seal(ctx, pt)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), ct, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, target := range []string{"d", "named.kpc"} {
		r := kp(t, dir, nil, "rewrap", "--kek", "local:kek.json", "--add-kek", "local:kek2.json", "--add-kek", "local:kek3.json", target)
		r.expect(t, 0, "1 rewrapped")
		if !strings.Contains(string(r.stdout), "rewritten whole with a larger slot table") {
			t.Fatalf("rewrap %s:\n%s", target, r.stdout)
		}
	}
	for _, name := range []string{"d/a.kpc", "named.kpc"} {
		kp(t, dir, nil, "decrypt", "--kek", "local:kek3.json", "-o", name+".out", name).expect(t, 0)
		if !bytes.Equal(readFile(t, filepath.Join(dir, name+".out")), pt) {
			t.Fatalf("%s decrypts wrong", name)
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "d")); len(entries) != 2 {
		t.Fatalf("d holds %d entries, want a.kpc and its output", len(entries))
	}
}
