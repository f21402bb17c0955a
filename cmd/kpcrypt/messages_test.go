package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kpcrypt/kpcrypt/kms/keyprotect"
	"github.com/kpcrypt/kpcrypt/kplocal"
)

// Each message names the cause and the fix in the user's terms: no
// temporary file names, no package prefixes, no repetition.
func TestMessages(t *testing.T) {
	dir, _ := setup(t, 100_000)
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "-o", "f.kpc", "plain.bin").expect(t, 0)
	full := readFile(t, filepath.Join(dir, "f.kpc"))
	os.WriteFile(filepath.Join(dir, "half.kpc"), full[:len(full)/2], 0o644)

	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"encrypt", "--kek", "local:kek.json", "-o", "nodir/x.kpc", "plain.bin"}, 1, "kpcrypt: cannot create nodir/x.kpc: the directory nodir does not exist\n"},
		{[]string{"encrypt", "--kek", "local:kek.json", "-o", "sub", "plain.bin"}, 1, "kpcrypt: sub is a directory: name a file in it\n"},
		{[]string{"decrypt", "--kek", "local:kek.json", "-o", "out", "half.kpc"}, 1, "kpcrypt: half.kpc: truncated: the file is"},
		{[]string{"keygen", "-o", "kek.json"}, 1, "kpcrypt: kek.json exists: keygen never overwrites a key file"},
		{[]string{"decrypt", "--kek", "local:kek.json", "plain.bin"}, 1, "kpcrypt: plain.bin: invalid envelope header"},
		{[]string{"encrypt", "--kek", "kek.json", "plain.bin"}, 2, "--kek kek.json names no kind of KEK (for a key file, --kek local:kek.json): give local:PATH"},
		{[]string{"decrpyt"}, 2, `unknown command "decrpyt"; did you mean "decrypt"?`},
		{[]string{"encrypt", "--kel", "x"}, 2, "encrypt: unknown flag --kel; did you mean --kek?\nkpcrypt: run \"kpcrypt encrypt -h\" for usage\n"},
	} {
		r := kp(t, dir, nil, c.args...)
		if r.code != c.code || !strings.Contains(string(r.stderr), c.want) {
			t.Errorf("kpcrypt %q: exit %d, stderr %q; want exit %d and %q", c.args, r.code, r.stderr, c.code, c.want)
		}
		for _, leak := range []string{"kpcrypt-tmp", ".tmp-", "envelope: ", "stream: "} {
			if strings.Contains(string(r.stderr), leak) {
				t.Errorf("kpcrypt %q: stderr holds %q: %s", c.args, leak, r.stderr)
			}
		}
	}
	// Two slots refused for the same reason: the reason is said once.
	kp(t, dir, nil, "keygen", "-o", "kek2.json").expect(t, 0)
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "--kek", "local:kek2.json", "-o", "two.kpc", "plain.bin").expect(t, 0)
	r := kp(t, dir, nil, "decrypt", "-o", "out", "two.kpc")
	if n := strings.Count(string(r.stderr), "a file may not choose a local key file"); r.code != 1 || n != 1 {
		t.Errorf("the same cause appears %d times: %s", n, r.stderr)
	}
	if r := kp(t, dir, nil, "help", "decrypt"); r.code != 0 || !strings.HasPrefix(string(r.stdout), "Usage: kpcrypt decrypt") {
		t.Errorf("help decrypt: %d %q", r.code, r.stdout)
	}
	for _, v := range [][]string{{"--version"}, {"version"}} {
		if r := kp(t, dir, nil, v...); r.code != 0 || !strings.HasPrefix(string(r.stdout), "kpcrypt ") {
			t.Errorf("%v: %d %q", v, r.code, r.stdout)
		}
	}
	if r := kp(t, dir, nil, "encrypt", "-h"); !strings.Contains(string(r.stdout), "  --kek URI") || strings.Contains(string(r.stdout), "  -kek") {
		t.Errorf("encrypt -h does not spell flags --kek:\n%s", r.stdout)
	}
}

// A disabled Key Protect key is said to be disabled, and the CRN appears
// once in the message, not once per layer.
func TestKeyProtectMessages(t *testing.T) {
	const instance, apiKey = "9c0d1e2f-3a4b-4c5d-8e6f-7a8b9c0d1e2f", "messages-test-key"
	srv, err := kplocal.Start(kplocal.Config{InstanceID: instance, APIKey: apiKey})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	id, _ := srv.CreateKey("root", true)
	crn := srv.KeyCRN(id)
	dir, _ := setup(t, 1000)
	env := append(os.Environ(), "IBMCLOUD_API_KEY="+apiKey, "IBMCLOUD_KP_ENDPOINT="+srv.BaseURL(), "IBMCLOUD_IAM_ENDPOINT="+srv.BaseURL())
	kpEnv(t, dir, env, nil, "encrypt", "--kek", crn, "--kek", "local:kek.json", "-o", "f.kpc", "plain.bin").expect(t, 0)
	c, err := keyprotect.New(keyprotect.Config{BaseURL: srv.BaseURL(), IAMURL: srv.BaseURL(), APIKey: apiKey, InstanceID: instance})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Disable(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	r := kpEnv(t, dir, env, nil, "decrypt", "--kek", crn, "-o", "out", "f.kpc")
	r.expect(t, 1, "disabled")
	if n := strings.Count(string(r.stderr), crn); n > 1 {
		t.Fatalf("the CRN appears %d times: %s", n, r.stderr)
	}
}
