package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

const (
	instance = "c0ffee00-1234-4abc-8def-0123456789ab"
	apiKey   = "command-test-key"
)

// buildCommand builds kplocal into a temporary directory.
func buildCommand(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not found:", err)
	}
	bin := filepath.Join(t.TempDir(), "kplocal")
	out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// lockedBuffer is a bytes.Buffer safe for the command's stderr copier.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// process is a running kplocal command.
type process struct {
	cmd    *exec.Cmd
	base   string
	stderr *lockedBuffer
}

// startCommand runs the binary with KPLOCAL_API_KEY set and reads the base
// URL from its first line.
func startCommand(t *testing.T, bin string, args ...string) *process {
	t.Helper()
	return startCommandEnv(t, bin, nil, args...)
}

// startCommandEnv is startCommand with more environment variables.
func startCommandEnv(t *testing.T, bin string, env []string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(append(os.Environ(), "KPLOCAL_API_KEY="+apiKey), env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, stderr: &lockedBuffer{}}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the first line: %v; stderr:\n%s", err, p.stderr)
	}
	p.base = strings.TrimSpace(line)
	if u, err := url.Parse(p.base); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Port() == "" || u.Port() == "0" || u.Hostname() != "127.0.0.1" {
		t.Fatalf("first line %q is not a base URL", line)
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	return p
}

// stop sends sig and checks that the command exits with status 0.
func (p *process) stop(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("exit after %v: %v; stderr:\n%s", sig, err, p.stderr)
	}
}

// call sends an authenticated request and decodes a JSON answer into out.
func (p *process) call(t *testing.T, token, method, path string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		data, _ := json.Marshal(body)
		rd = bytes.NewReader(data)
	}
	req, _ := http.NewRequest(method, p.base+"/api/v2"+path, rd)
	req.Header.Set("authorization", "Bearer "+token)
	req.Header.Set("bluemix-instance", instance)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatalf("%s %s: %d, decoding: %v", method, path, resp.StatusCode, err)
		}
	}
	return resp.StatusCode
}

func (p *process) token(t *testing.T) string {
	t.Helper()
	resp, err := http.PostForm(p.base+"/identity/token", url.Values{
		"grant_type": {"urn:ibm:params:oauth:grant-type:apikey"}, "apikey": {apiKey},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("token: %d, %v", resp.StatusCode, err)
	}
	return tok.AccessToken
}

func TestCommand(t *testing.T) {
	bin := buildCommand(t)
	state := filepath.Join(t.TempDir(), "state.json")
	args := []string{"--listen", "127.0.0.1:0", "--instance", instance, "--state", state, "--verbose"}

	p := startCommand(t, bin, args...)
	tok := p.token(t)
	var created struct {
		Resources []struct{ ID string }
	}
	body := map[string]any{
		"metadata":  map[string]any{"collectionType": "application/vnd.ibm.kms.key+json", "collectionTotal": 1},
		"resources": []any{map[string]any{"type": "application/vnd.ibm.kms.key+json", "name": "cmd-root", "extractable": false}},
	}
	if st := p.call(t, tok, http.MethodPost, "/keys", body, &created); st != http.StatusCreated || len(created.Resources) != 1 {
		t.Fatalf("create: %d %+v", st, created)
	}
	id := created.Resources[0].ID
	var wrapped struct{ Plaintext, Ciphertext string }
	if st := p.call(t, tok, http.MethodPost, "/keys/"+id+"/actions/wrap", nil, &wrapped); st != http.StatusOK || wrapped.Plaintext == "" {
		t.Fatalf("wrap: %d %+v", st, wrapped)
	}
	// The command enforces one rotation per hour by default.
	if st := p.call(t, tok, http.MethodPost, "/keys/"+id+"/actions/rotate", nil, nil); st != http.StatusNoContent {
		t.Fatalf("first rotate: %d", st)
	}
	var rotErr struct {
		Resources []struct{ Reasons []struct{ Code string } }
	}
	if st := p.call(t, tok, http.MethodPost, "/keys/"+id+"/actions/rotate", nil, &rotErr); st != http.StatusConflict ||
		rotErr.Resources[0].Reasons[0].Code != "KEY_ROTATION_NOT_PERMITTED" {
		t.Fatalf("second rotate: %d %+v", st, rotErr)
	}
	p.stop(t, syscall.SIGTERM)
	logs := p.stderr.String()
	if !strings.Contains(logs, "op=wrap") || strings.Contains(logs, wrapped.Plaintext) || strings.Contains(logs, apiKey) {
		t.Fatalf("stderr should log operations but no secrets:\n%s", logs)
	}

	// Restart on the same state: the key and its versions survive.
	p = startCommand(t, bin, args...)
	var unwrapped struct{ Plaintext, Ciphertext string }
	if st := p.call(t, tok, http.MethodPost, "/keys/"+id+"/actions/unwrap", map[string]string{"ciphertext": wrapped.Ciphertext}, &unwrapped); st != http.StatusOK ||
		unwrapped.Plaintext != wrapped.Plaintext || unwrapped.Ciphertext == "" {
		t.Fatalf("unwrap after restart: %d %+v", st, unwrapped)
	}
	p.stop(t, os.Interrupt)
}

func TestRootKeyFlag(t *testing.T) {
	bin := buildCommand(t)
	cmd := exec.Command(bin, "--instance", instance, "--root-key", "demo-a", "--root-key", "demo-b")
	cmd.Env = append(os.Environ(), "KPLOCAL_API_KEY="+apiKey)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	r := bufio.NewReader(stdout)
	var lines []string
	for range 3 {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, strings.TrimSpace(line))
	}
	p := &process{cmd: cmd, base: lines[0]}
	tok := p.token(t)
	for _, crn := range lines[1:] {
		parts := strings.Split(crn, ":")
		if len(parts) != 10 || parts[7] != instance || parts[8] != "key" {
			t.Fatalf("line %q is not a key CRN of the instance", crn)
		}
		var got struct {
			Resources []struct {
				Name        string `json:"name"`
				Extractable bool   `json:"extractable"`
			} `json:"resources"`
		}
		if code := p.call(t, tok, http.MethodGet, "/keys/"+parts[9], nil, &got); code != http.StatusOK || len(got.Resources) != 1 || got.Resources[0].Extractable {
			t.Fatalf("key %s: %d %+v", parts[9], code, got)
		}
	}
}

// env is a fake environment for run.
func env(vars ...string) func(string) string {
	return func(name string) string {
		for i := 0; i+1 < len(vars); i += 2 {
			if vars[i] == name {
				return vars[i+1]
			}
		}
		return ""
	}
}

func TestRunUsageErrors(t *testing.T) {
	withKey := env("KPLOCAL_API_KEY", apiKey)
	for _, tc := range []struct {
		args   []string
		getenv func(string) string
		want   int
	}{
		{[]string{"--instance", instance}, env(), 2},
		{[]string{}, withKey, 2},
		{[]string{"--api-key", apiKey, "--instance", instance}, env(), 2}, // no such flag: secrets never come from flags
		{[]string{"--bogus"}, withKey, 2},
		{[]string{"--instance", instance, "extra"}, withKey, 2},
		{[]string{"--instance", instance, "--fault-rate", "2"}, withKey, 1},
		{[]string{"--instance", instance, "--listen", "256.0.0.1:0"}, withKey, 1},
		{[]string{"--instance", instance, "--service", "nope"}, withKey, 1},
		{[]string{"--instance", instance, "--ca-out", "x.pem"}, withKey, 1}, // needs --tls
		{[]string{"--instance", instance}, env("KPLOCAL_API_KEY", apiKey, "KPLOCAL_API_KEYS_FILE", "/nonexistent/keys.json"), 1},
	} {
		var stdout, stderr bytes.Buffer
		if got := run(tc.args, tc.getenv, &stdout, &stderr); got != tc.want || stdout.Len() != 0 || stderr.Len() == 0 {
			t.Errorf("run(%q) = %d, stdout %q, stderr %q; want %d, nothing on stdout, a message", tc.args, got, stdout.String(), stderr.String(), tc.want)
		}
	}
}

func TestRunMissingAPIKeyMessage(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if got := run([]string{"--instance", instance}, env(), &stdout, &stderr); got != 2 {
		t.Fatalf("run = %d, want 2", got)
	}
	// Only what is missing and how to set it; no list of every flag.
	if msg := stderr.String(); msg != "kplocal: missing the API key: set the environment variable KPLOCAL_API_KEY\n" {
		t.Fatalf("stderr = %q", msg)
	}
}

func TestRunAPIKeyFromEnvironment(t *testing.T) {
	var stdout, stderr bytes.Buffer
	// A fault rate out of range fails after the flags check: proof the key was taken.
	if got := run([]string{"--instance", instance, "--fault-rate", "2"}, env("KPLOCAL_API_KEY", apiKey), &stdout, &stderr); got != 1 ||
		!strings.Contains(stderr.String(), "fault rate") {
		t.Fatalf("run = %d, stderr %q", got, stderr.String())
	}
}

func TestCommandAccountsFileTLSAndHPCS(t *testing.T) {
	bin := buildCommand(t)
	dir := t.TempDir()
	const other = "c0ffee00-1234-4abc-8def-000000000002"
	keys := filepath.Join(dir, "keys.json")
	if err := os.WriteFile(keys, []byte(`{"accounts":[{"apiKey":"second-key","instances":["`+other+`"]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, "ca.pem")
	p := startCommandEnv(t, bin, []string{"KPLOCAL_API_KEYS_FILE=" + keys},
		"--instance", instance, "--service", "hs-crypto", "--tls", "--ca-out", ca)
	pemData, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) || !strings.HasPrefix(p.base, "https://") {
		t.Fatalf("base %s, CA %q", p.base, pemData)
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := c.PostForm(p.base+"/identity/token", url.Values{
		"grant_type": {"urn:ibm:params:oauth:grant-type:apikey"}, "apikey": {"second-key"},
	})
	if err != nil {
		t.Fatal(err)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	err = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("token of the second key: %d, %v", resp.StatusCode, err)
	}
	req, _ := http.NewRequest(http.MethodGet, p.base+"/crypto_v2/instances/"+other, nil)
	req.Header.Set("authorization", "Bearer "+tok.AccessToken)
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var broker struct{ KMS struct{ Public string } }
	err = json.NewDecoder(resp.Body).Decode(&broker)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || "https://"+broker.KMS.Public != p.base {
		t.Fatalf("broker: %d %+v %v", resp.StatusCode, broker, err)
	}
	p.stop(t, syscall.SIGTERM)
}
