package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/kpcrypt/kpcrypt/kplocal"
)

// One command with a Key Protect CRN and an HPCS CRN: each goes to its own
// instance's endpoint, the HPCS one found through its broker over TLS
// under a CA of its own, trusted through the trust configuration's
// ca_file (never process-wide settings).
func TestMixedKeyProtectAndHPCS(t *testing.T) {
	const apiKey = "mixed-test-key"
	const kpInst, hpInst = "7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d", "8b9c0d1e-2f3a-4b4c-9d5e-6f7a8b9c0d1e"
	dir, pt := setup(t, 100_000)
	caFile := filepath.Join(t.TempDir(), "hpcs-ca.pem")
	kp1, err := kplocal.Start(kplocal.Config{InstanceID: kpInst, APIKey: apiKey})
	if err != nil {
		t.Fatal(err)
	}
	defer kp1.Close()
	hp, err := kplocal.Start(kplocal.Config{InstanceID: hpInst, APIKey: apiKey, Service: kplocal.ServiceHPCS, TLS: true, CAFile: caFile})
	if err != nil {
		t.Fatal(err)
	}
	defer hp.Close()
	kpKey, _ := kp1.CreateKey("kp-root", true)
	hpKey, _ := hp.CreateKey("hpcs-root", true)
	kpCRN, hpCRN := kp1.KeyCRN(kpKey), hp.KeyCRN(hpKey)

	trustFile := writeTrust(t, fmt.Sprintf(`{"instances": [
	  {"service": "kms", "region": "us-south", "instance_id": %q, "endpoint": %q, "iam_endpoint": %q},
	  {"service": "hs-crypto", "region": "us-south", "instance_id": %q, "discover": true, "broker_endpoint": %q, "iam_endpoint": %q, "ca_file": %q}
	]}`, kpInst, kp1.BaseURL(), kp1.BaseURL(), hpInst, hp.BaseURL(), hp.BaseURL(), caFile))
	attacker := newAttackerListener(t)
	env := attacker.env("IBMCLOUD_API_KEY="+apiKey, "KPCRYPT_TRUST_FILE="+trustFile)
	run := func(args ...string) result {
		t.Helper()
		return kpEnv(t, dir, env, nil, args...)
	}
	run("encrypt", "--kek", kpCRN, "--kek", hpCRN, "-o", "f.kpc", "plain.bin").expect(t, 0)
	if kp1.Stats().Wrap != 1 || hp.Stats().Wrap != 1 || hp.Stats().Broker == 0 {
		t.Fatalf("wraps: Key Protect %d, HPCS %d, broker lookups %d", kp1.Stats().Wrap, hp.Stats().Wrap, hp.Stats().Broker)
	}
	r := run("decrypt", "f.kpc")
	r.expect(t, 0)
	if !bytes.Equal(r.stdout, pt) {
		t.Fatal("decrypt differs")
	}
	// Only the HPCS slot left: it opens through the discovered endpoint.
	run("rewrap", "--remove-kek", kpCRN, "f.kpc").expect(t, 0)
	r = run("decrypt", "f.kpc")
	r.expect(t, 0)
	if !bytes.Equal(r.stdout, pt) || hp.Stats().Unwrap == 0 {
		t.Fatal("decrypt through HPCS failed")
	}
	if got := attacker.seen(); len(got) != 0 {
		t.Fatalf("requests left for %q", got)
	}
	// Without the CA in the trust configuration, the HPCS server is not
	// trusted: nothing is sent to it.
	os.WriteFile(trustFile, []byte(fmt.Sprintf(`{"instances": [{"service": "hs-crypto", "region": "us-south", "instance_id": %q, "discover": true, "broker_endpoint": %q, "iam_endpoint": %q}]}`,
		hpInst, hp.BaseURL(), hp.BaseURL())), 0o600)
	before := hp.Stats().Unwrap
	run("decrypt", "-o", "out", "f.kpc").expect(t, 1, "certificate")
	if hp.Stats().Unwrap != before {
		t.Fatal("an unwrap reached a server whose certificate is not trusted")
	}
}
