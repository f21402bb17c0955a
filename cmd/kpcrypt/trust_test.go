package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/keyprotect"
	"github.com/kpcrypt/kpcrypt/kms/local"
	"github.com/kpcrypt/kpcrypt/kplocal"
)

// These tests forge files whose headers name hosts, key files and modules,
// and check that nothing a header names is contacted or opened unless the
// user configured it.

// attackerListener stands for every host outside this machine: the
// commands under test run with HTTPS_PROXY pointing at it, so a request to
// any non-loopback host arrives here as a CONNECT (and no name is ever
// looked up). It counts connections and records what they asked for, and
// answers none.
type attackerListener struct {
	ln      net.Listener
	mu      sync.Mutex
	targets []string
	wg      sync.WaitGroup
}

func newAttackerListener(t *testing.T) *attackerListener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &attackerListener{ln: ln}
	a.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			line, _ := bufio.NewReader(c).ReadString('\n')
			a.mu.Lock()
			a.targets = append(a.targets, strings.TrimSpace(line))
			a.mu.Unlock()
			c.Close()
		}
	})
	t.Cleanup(func() { ln.Close(); a.wg.Wait() })
	return a
}

func (a *attackerListener) seen() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.targets...)
}

// env returns the environment of a command whose outside traffic goes to
// the listener, with the given variables added.
func (a *attackerListener) env(extra ...string) []string {
	proxy := "http://" + a.ln.Addr().String()
	return append(os.Environ(), append([]string{"HTTPS_PROXY=" + proxy, "HTTP_PROXY=" + proxy, "LC_ALL=C"}, extra...)...)
}

// namedKEK is a KEK that records another URI than its own in the files it
// wraps for: what a forger writes into a header.
type namedKEK struct {
	uri string
	kms.KEK
}

func (k namedKEK) URI() string { return k.uri }

// forge writes a file whose slots wrap the DEK with each KEK, recording
// their (forged) URIs.
func forge(t *testing.T, path string, pt []byte, keks ...kms.KEK) {
	t.Helper()
	ct, err := envelope.Seal(context.Background(), pt, keks...)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, ct, 0o644); err != nil {
		t.Fatal(err)
	}
}

const forgedInstance = "0e1d2c3b-4a59-4687-a5b4-c3d2e1f0a9b8"

// CRNs whose region or instance smuggle in a host (the format admits only
// printable ASCII in a URI, so Unicode tricks stop earlier). Before ParseCRN was
// strict, each sent the user's IAM token to evil.example or 127.0.0.1.
var injectedCRNs = []string{
	"crn:v1:bluemix:public:kms:evil.example#:a/acc:" + forgedInstance + ":key:k1",
	"crn:v1:bluemix:public:kms:evil.example?:a/acc:" + forgedInstance + ":key:k1",
	"crn:v1:bluemix:public:kms:x@evil.example#:a/acc:" + forgedInstance + ":key:k1",
	"crn:v1:bluemix:public:kms:EVIL.example#:a/acc:" + forgedInstance + ":key:k1",
	"crn:v1:bluemix:public:kms:%65vil.example%23:a/acc:" + forgedInstance + ":key:k1",
	"crn:v1:bluemix:public:kms:10.1.2.3#:a/acc:" + forgedInstance + ":key:k1",
	"crn:v1:bluemix:public:kms:[fe80::1]#:a/acc:" + forgedInstance + ":key:k1",
	"crn:v1:bluemix:public:hs-crypto:us-south:a/acc:evil.example#:key:k1",
}

func TestForgedCRNsContactNoHost(t *testing.T) {
	dir, pt := setup(t, 5000)
	kek, err := local.OpenFile(filepath.Join(dir, "kek.json"))
	if err != nil {
		t.Fatal(err)
	}
	attacker := newAttackerListener(t)
	env := attacker.env("IBMCLOUD_API_KEY=the-users-api-key")
	for i, crn := range injectedCRNs {
		name := fmt.Sprintf("forged%d.kpc", i)
		forge(t, filepath.Join(dir, name), pt, namedKEK{crn, kek})
		r := kpEnv(t, dir, env, nil, "decrypt", "-o", "out", name)
		r.expect(t, 1, "not a Key Protect key CRN")
		mustNotExist(t, filepath.Join(dir, "out"))
		for _, args := range [][]string{
			{"inspect", "--current", name},
			{"scan", "--outdated", name},
			{"rewrap", "--dry-run", name},
			{"rewrap", name},
		} {
			r := kpEnv(t, dir, env, nil, args...)
			if r.code == 0 {
				t.Errorf("%s %s: exit 0 with a slot it could not check; stderr: %s", crn, args, r.stderr)
			}
			if strings.Contains(string(r.stdout), "current") && args[0] == "inspect" && !strings.Contains(string(r.stdout), "not checked") {
				t.Errorf("%s: inspect --current calls an unchecked slot current:\n%s", crn, r.stdout)
			}
		}
	}
	if got := attacker.seen(); len(got) != 0 {
		t.Fatalf("the forged CRNs reached %d hosts: %q", len(got), got)
	}
}

// A header naming an attacker's key file, or a FIFO, opens nothing: only
// --kek or the trust configuration chooses key files.
func TestForgedLocalSlots(t *testing.T) {
	dir, pt := setup(t, 5000)
	drop := t.TempDir()
	attackerKEK, err := local.Generate(filepath.Join(drop, "attacker.json"))
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("the attacker's plaintext")
	forge(t, filepath.Join(dir, "abs.kpc"), secret, attackerKEK)
	os.MkdirAll(filepath.Join(dir, "incoming"), 0o700)
	beside, err := local.Generate(filepath.Join(dir, "incoming", ".k.json"))
	if err != nil {
		t.Fatal(err)
	}
	forge(t, filepath.Join(dir, "rel.kpc"), secret, namedKEK{"local:incoming/.k.json", beside})
	fifo := filepath.Join(drop, "fifo.json")
	names := []string{"abs.kpc", "rel.kpc"}
	if mkfifo(t, fifo) {
		forge(t, filepath.Join(dir, "fifo.kpc"), secret, namedKEK{"local:" + fifo, attackerKEK})
		names = append(names, "fifo.kpc")
	}

	// A trust configuration that lists the user's own key only.
	trustFile := writeTrust(t, fmt.Sprintf(`{"local_keys": [%q]}`, filepath.Join(dir, "kek.json")))
	for _, env := range [][]string{nil, {"KPCRYPT_TRUST_FILE=" + trustFile}} {
		for _, name := range names {
			r := kpEnv(t, dir, append(os.Environ(), env...), nil, "decrypt", name)
			r.expect(t, 1, "a file may not choose a local key file")
			if bytes.Contains(r.stdout, secret) {
				t.Fatalf("%s decrypted under the attacker's key", name)
			}
		}
	}

	// The user's own file opens with no --kek once its key is listed, and
	// the message without it says what to do.
	kp(t, dir, nil, "encrypt", "--kek", "local:"+filepath.Join(dir, "kek.json"), "-o", "mine.kpc", "plain.bin").expect(t, 0)
	kp(t, dir, nil, "decrypt", "-o", "out", "mine.kpc").expect(t, 1, "give --kek local:PATH, or list the key file")
	r := kpEnv(t, dir, append(os.Environ(), "KPCRYPT_TRUST_FILE="+trustFile), nil, "decrypt", "mine.kpc")
	r.expect(t, 0)
	if !bytes.Equal(r.stdout, pt) {
		t.Fatal("the trusted file decrypted to something else")
	}
	// A trust file others may change decides nothing.
	os.Chmod(trustFile, 0o644)
	kpEnv(t, dir, append(os.Environ(), "KPCRYPT_TRUST_FILE="+trustFile), nil, "decrypt", "mine.kpc").expect(t, 1, "trust configuration")
}

// writeTrust writes a trust configuration, mode 0600, and returns its path.
func writeTrust(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "trust.json")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// An attacker rewrites a genuine file's slot table (the spare copy, with a
// higher sequence number) so that it lists a slot naming their host before
// the genuine slot. The host is never contacted; with the user's key the
// genuine slot still opens, and without it decrypt fails.
func TestRewrittenSlotTable(t *testing.T) {
	dir, pt := setup(t, 70_000)
	kek, err := local.OpenFile(filepath.Join(dir, "kek.json"))
	if err != nil {
		t.Fatal(err)
	}
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "-o", "f.kpc", "plain.bin").expect(t, 0)
	evil := namedKEK{injectedCRNs[0], kek}
	f, err := os.OpenFile(filepath.Join(dir, "f.kpc"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	res, err := envelope.Rewrap(context.Background(), f, &envelope.RewrapOptions{
		Keyring: envelope.KEKs{kek}, To: []kms.KEK{evil, kek},
	})
	f.Close()
	if err != nil || !res.Changed {
		t.Fatalf("forging the slot table: %v", err)
	}
	r := kp(t, dir, nil, "inspect", "f.kpc")
	if !strings.Contains(string(r.stdout), "key slots:       2") {
		t.Fatalf("the forged table is not in force:\n%s", r.stdout)
	}

	attacker := newAttackerListener(t)
	env := attacker.env("IBMCLOUD_API_KEY=the-users-api-key")
	r = kpEnv(t, dir, env, nil, "decrypt", "--kek", "local:kek.json", "f.kpc")
	r.expect(t, 0)
	if !bytes.Equal(r.stdout, pt) {
		t.Fatal("decrypt with the user's key gave other bytes")
	}
	kpEnv(t, dir, env, nil, "decrypt", "-o", "out", "f.kpc").expect(t, 1)
	mustNotExist(t, filepath.Join(dir, "out"))
	if got := attacker.seen(); len(got) != 0 {
		t.Fatalf("decrypt contacted %q", got)
	}
}

// A planted file once poisoned the client cache of a whole rewrap: every
// genuine file of the same instance went to the attacker's host, which
// received each wrapped DEK with a valid token and wrote its own
// ciphertext into the files' only slots. Now the planted file's slot is
// never opened, the genuine files are rewrapped at the real server, and
// they still decrypt.
func TestRewrapCachePoisoning(t *testing.T) {
	const instance, apiKey = "3b4c5d6e-7f80-4192-a3b4-c5d6e7f8091a", "poison-test-key"
	srv, err := kplocal.Start(kplocal.Config{InstanceID: instance, APIKey: apiKey})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	id, _ := srv.CreateKey("poison-root", true)
	crn := srv.KeyCRN(id)
	attacker := newAttackerListener(t)
	env := attacker.env("IBMCLOUD_API_KEY="+apiKey, "IBMCLOUD_KP_ENDPOINT="+srv.BaseURL(), "IBMCLOUD_IAM_ENDPOINT="+srv.BaseURL())
	dir, pt := setup(t, 20_000)
	kek, _ := local.OpenFile(filepath.Join(dir, "kek.json"))
	os.MkdirAll(filepath.Join(dir, "d"), 0o755)
	// The planted file sorts first, so it is opened first.
	planted := "crn:v1:bluemix:public:kms:evil.example#:a/" + "0000000000000000000000000000c0de:" + instance + ":key:" + id
	forge(t, filepath.Join(dir, "d", "0-planted.kpc"), []byte("planted"), namedKEK{planted, kek})
	for _, name := range []string{"a.kpc", "b.kpc", "c.kpc"} {
		kpEnv(t, dir, env, nil, "encrypt", "--kek", crn, "-o", "d/"+name, "plain.bin").expect(t, 0)
	}
	opener := &keyprotect.Opener{Config: keyprotect.Config{BaseURL: srv.BaseURL(), IAMURL: srv.BaseURL(), APIKey: apiKey}}
	k, err := opener.Open(context.Background(), crn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.(kms.Rotator).Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	r := kpEnv(t, dir, env, nil, "rewrap", "d")
	if r.code != 1 || !strings.Contains(string(r.stderr), "3 rewrapped, 0 already current, 0 failed, 1 with slots not checked") {
		t.Fatalf("rewrap: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if got := attacker.seen(); len(got) != 0 {
		t.Fatalf("the rewrap contacted %q", got)
	}
	for _, name := range []string{"a.kpc", "b.kpc", "c.kpc"} {
		r := kpEnv(t, dir, env, nil, "decrypt", "d/"+name)
		r.expect(t, 0)
		if !bytes.Equal(r.stdout, pt) {
			t.Fatalf("%s no longer decrypts to its plaintext", name)
		}
	}
	if st := srv.Stats(); st.Rewrap != 3 {
		t.Fatalf("the server rewrapped %d DEKs, want 3", st.Rewrap)
	}
}

// A CRN whose instance the trust configuration does not list is refused
// before any request, even when it is well formed and would go to an IBM
// host.
func TestTrustConfigurationInstances(t *testing.T) {
	const instance, apiKey = "4c5d6e7f-8091-42a3-b4c5-d6e7f8091a2b", "trust-instances-key"
	srv, err := kplocal.Start(kplocal.Config{InstanceID: instance, APIKey: apiKey})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	id, _ := srv.CreateKey("root", true)
	crn := srv.KeyCRN(id)
	dir, pt := setup(t, 3000)
	kek, _ := local.OpenFile(filepath.Join(dir, "kek.json"))
	attacker := newAttackerListener(t)
	trustFile := writeTrust(t, fmt.Sprintf(`{"instances": [{"service": "kms", "region": "us-south", "instance_id": %q, "endpoint": %q, "iam_endpoint": %q}]}`,
		instance, srv.BaseURL(), srv.BaseURL()))
	// No IBMCLOUD_KP_ENDPOINT: the trust configuration routes the instance.
	env := attacker.env("IBMCLOUD_API_KEY="+apiKey, "KPCRYPT_TRUST_FILE="+trustFile)
	kpEnv(t, dir, env, nil, "encrypt", "--kek", crn, "-o", "good.kpc", "plain.bin").expect(t, 0)
	r := kpEnv(t, dir, env, nil, "decrypt", "good.kpc")
	r.expect(t, 0)
	if !bytes.Equal(r.stdout, pt) {
		t.Fatal("decrypt gave other bytes")
	}
	other := "crn:v1:bluemix:public:kms:us-south:a/acc:" + forgedInstance + ":key:" + id
	forge(t, filepath.Join(dir, "other.kpc"), pt, namedKEK{other, kek})
	kpEnv(t, dir, env, nil, "decrypt", "-o", "out", "other.kpc").expect(t, 1, "not listed in the trust configuration")
	if got := attacker.seen(); len(got) != 0 {
		t.Fatalf("contacted %q", got)
	}
	// Without a configuration the same CRN is allowed, and goes to IBM's
	// published host only (here: the listener, through the proxy).
	kpEnv(t, dir, attacker.env("IBMCLOUD_API_KEY="+apiKey, "KPCRYPT_KMS_TIMEOUT=5s"), nil, "decrypt", "-o", "out", "other.kpc").expect(t, 1)
	for _, target := range attacker.seen() {
		if !strings.HasPrefix(target, "CONNECT iam.cloud.ibm.com:443 ") && !strings.HasPrefix(target, "CONNECT us-south.kms.cloud.ibm.com:443 ") {
			t.Fatalf("without a configuration, a request went to %q", target)
		}
	}
	if len(attacker.seen()) == 0 {
		t.Fatal("no request at all: the test proves nothing")
	}
}

// The per-file deadline bounds what a dead host costs.
func TestKMSTimeoutFlag(t *testing.T) {
	dir, _ := setup(t, 10)
	kp(t, dir, nil, "decrypt", "--kms-timeout", "0s", "x").expect(t, 2, "--kms-timeout must be positive")
	kp(t, dir, nil, "scan", "--outdated", "--kms-timeout", "-1s", "x").expect(t, 2, "--kms-timeout must be positive")
}
