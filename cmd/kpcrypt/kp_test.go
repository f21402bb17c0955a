package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kpcrypt/kpcrypt/kplocal"
)

// TestKeyProtect runs kpcrypt against a Key Protect server (kplocal) over
// HTTP, configured as a user would: through the environment.
func TestKeyProtect(t *testing.T) {
	const instance, apiKey = "7d0c3a52-1b9e-4c2e-8f1a-2f6b5c4d3e21", "cli-test-api-key"
	srv, err := kplocal.Start(kplocal.Config{InstanceID: instance, APIKey: apiKey})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	keyID, err := srv.CreateKey("cli-root", true)
	if err != nil {
		t.Fatal(err)
	}
	crn := srv.KeyCRN(keyID)
	env := append(os.Environ(),
		"IBMCLOUD_API_KEY="+apiKey,
		"IBMCLOUD_KP_ENDPOINT="+srv.BaseURL(),
		"IBMCLOUD_IAM_ENDPOINT="+srv.BaseURL())
	dir, pt := setup(t, 150_000)
	runEnv := func(env []string, args ...string) result {
		t.Helper()
		return kpEnv(t, dir, env, nil, args...)
	}

	runEnv(env, "encrypt", "--kek", crn, "--kek", "local:kek.json", "-o", "f.kpc", "plain.bin").expect(t, 0)
	r := runEnv(env, "inspect", "f.kpc")
	if !strings.Contains(string(r.stdout), crn) {
		t.Fatalf("inspect does not show the CRN:\n%s", r.stdout)
	}
	// The Key Protect slot opens with no --kek: its CRN and the environment
	// are enough (the local key file is moved away to prove it).
	os.Rename(filepath.Join(dir, "kek.json"), filepath.Join(dir, "away.json"))
	runEnv(env, "decrypt", "-o", "out", "f.kpc").expect(t, 0)
	if !bytes.Equal(readFile(t, filepath.Join(dir, "out")), pt) {
		t.Fatal("decrypted file differs")
	}
	runEnv(env, "decrypt", "--kek", crn, "-o", "out2", "f.kpc").expect(t, 0)
	if srv.Stats().Wrap != 1 || srv.Stats().Unwrap != 2 {
		t.Fatalf("server saw %d wraps and %d unwraps, want 1 and 2", srv.Stats().Wrap, srv.Stats().Unwrap)
	}

	// A wrong API key: one clear line, nothing written, no key in it.
	bad := append(os.Environ(), "IBMCLOUD_API_KEY=wrong-key", "IBMCLOUD_KP_ENDPOINT="+srv.BaseURL(), "IBMCLOUD_IAM_ENDPOINT="+srv.BaseURL())
	r = runEnv(bad, "decrypt", "-o", "out3", "f.kpc")
	r.expect(t, 1, "no KEK named by the file can open any of this file's 2 key slots", "IAM token")
	if strings.Contains(string(r.stderr), "wrong-key") {
		t.Fatal("the API key appears in the error")
	}
	mustNotExist(t, filepath.Join(dir, "out3"))
	// No API key at all.
	noKey := []string{"IBMCLOUD_KP_ENDPOINT=" + srv.BaseURL(), "PATH=" + os.Getenv("PATH")}
	runEnv(noKey, "encrypt", "--kek", crn, "-o", "g.kpc", "plain.bin").expect(t, 1, "IBMCLOUD_API_KEY")
	mustNotExist(t, filepath.Join(dir, "g.kpc"))
}
