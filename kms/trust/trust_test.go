package trust

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/keyprotect"
)

const (
	inst  = "5c1b7e0a-3f2d-4e6b-9a8c-0d1e2f3a4b5c"
	inst2 = "6d2c8f1b-4a3e-4f7c-8b9d-1e2f3a4b5c6d"
	key1  = "12e8c9c2-a162-472d-b7d6-8b9a86b815a6"
	key2  = "23f9dad3-b273-483e-88e7-9cab97c926b7"
)

func crn(svc, region, instance, key string) string {
	return "crn:v1:bluemix:public:" + svc + ":" + region + ":a/acc:" + instance + ":key:" + key
}

const example = `{
  "instances": [
    {"service": "kms", "region": "us-south", "instance_id": "` + inst + `", "key_ids": ["` + key1 + `"],
     "endpoint": "http://127.0.0.1:8080", "iam_endpoint": "http://127.0.0.1:8081"},
    {"service": "hs-crypto", "region": "eu-de", "instance_id": "` + inst2 + `"}
  ],
  "local_keys": ["/keys/kek.json"],
  "pkcs11_keys": ["pkcs11:token=tok;object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/run/pin"]
}`

func TestPolicy(t *testing.T) {
	c, err := Parse([]byte(example))
	if err != nil {
		t.Fatal(err)
	}
	p := &Policy{Config: c, KPEndpoint: "http://127.0.0.1:9999"}
	for _, tc := range []struct {
		uri, want string
		err       error
	}{
		{crn("kms", "us-south", inst, key1), crn("kms", "us-south", inst, key1), nil},
		{crn("kms", "us-south", inst, key2), "", kms.ErrUntrusted},       // key not listed
		{crn("kms", "eu-de", inst, key1), "", kms.ErrUntrusted},          // other region
		{crn("hs-crypto", "us-south", inst, key1), "", kms.ErrUntrusted}, // other service
		{crn("hs-crypto", "eu-de", inst2, key2), crn("hs-crypto", "eu-de", inst2, key2), nil},
		{crn("kms", "evil.example#", inst, key1), "", kms.ErrInvalidURI},
		{"local:/keys/kek.json", "local:/keys/kek.json", nil},
		{"local:/keys/../keys/kek.json", "local:/keys/kek.json", nil},
		{"local:/srv/drop/attacker.json", "", kms.ErrUntrusted},
		{"local:incoming/.k.json", "", kms.ErrUntrusted},
		{"local:kek.json", "", kms.ErrUntrusted},
		{"pkcs11:token=tok;object=kek", "pkcs11:token=tok;object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/run/pin", nil},
		{"pkcs11:token=tok;object=kek?module-path=/tmp/evil.so", "pkcs11:token=tok;object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/run/pin", nil},
		{"pkcs11:token=tok;object=other", "", kms.ErrUntrusted},
		{"gopher:x", "", kms.ErrUntrusted},
	} {
		got, err := p.Discover(tc.uri)
		if got != tc.want || !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
			t.Errorf("Discover(%q) = %q, %v; want %q, %v", tc.uri, got, err, tc.want, tc.err)
		}
		if err != nil && strings.Contains(err.Error(), "evil") {
			t.Errorf("Discover's error repeats the URI: %v", err)
		}
	}

	route := func(uri string) keyprotect.Route {
		c, err := keyprotect.ParseCRN(uri)
		if err != nil {
			t.Fatal(err)
		}
		r, err := p.Route(c)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := route(crn("kms", "us-south", inst, key1)); r.BaseURL != "http://127.0.0.1:8080" || r.IAMURL != "http://127.0.0.1:8081" {
		t.Errorf("listed instance routed to %+v", r)
	}
	if r := route(crn("hs-crypto", "eu-de", inst2, key1)); r.BaseURL != "http://127.0.0.1:9999" {
		t.Errorf("listed instance without endpoint routed to %+v, want the user's KPEndpoint", r)
	}

	// No configuration: any strictly valid CRN, nothing else.
	none := &Policy{}
	if _, err := none.Discover(crn("kms", "us-south", inst, key2)); err != nil {
		t.Errorf("no configuration refused a valid CRN: %v", err)
	}
	if r := route(crn("kms", "us-south", inst, key2)); r.BaseURL == "" {
		t.Errorf("KPEndpoint ignored")
	}
	if r, _ := none.Route(keyprotect.CRN{}); r.BaseURL != "" {
		t.Errorf("no configuration routes to %q, want the published endpoint", r.BaseURL)
	}
	for _, u := range []string{"local:/keys/kek.json", "pkcs11:token=tok;object=kek"} {
		if _, err := none.Discover(u); !errors.Is(err, kms.ErrUntrusted) {
			t.Errorf("no configuration: Discover(%q) = %v, want ErrUntrusted", u, err)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	for name, bad := range map[string]string{
		"unknown field":          `{"instance": []}`,
		"trailing data":          `{} {}`,
		"bad service":            `{"instances":[{"service":"cos","region":"us-south","instance_id":"` + inst + `"}]}`,
		"bad region":             `{"instances":[{"service":"kms","region":"evil.example#","instance_id":"` + inst + `"}]}`,
		"bad instance":           `{"instances":[{"service":"kms","region":"us-south","instance_id":"x"}]}`,
		"http endpoint":          `{"instances":[{"service":"kms","region":"us-south","instance_id":"` + inst + `","endpoint":"http://evil.example"}]}`,
		"endpoint userinfo":      `{"instances":[{"service":"kms","region":"us-south","instance_id":"` + inst + `","endpoint":"https://u@evil.example"}]}`,
		"relative key":           `{"local_keys":["kek.json"]}`,
		"pin-value":              `{"pkcs11_keys":["pkcs11:token=t;object=o?PIN%2Dvalue=1234"]}`,
		"pkcs11 no object":       `{"pkcs11_keys":["pkcs11:token=t"]}`,
		"pkcs11 relative module": `{"pkcs11_keys":["pkcs11:token=t;object=o?module-path=lib.so"]}`,
		"pkcs11 duplicate":       `{"pkcs11_keys":["pkcs11:token=t;object=o;object=p"]}`,
		"not json":               `instances: []`,
	} {
		if _, err := Parse([]byte(bad)); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: Parse = %v, want ErrInvalidConfig", name, err)
		} else if strings.Contains(err.Error(), "1234") {
			t.Errorf("%s: the error echoes a PIN: %v", name, err)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"XDG_CONFIG_HOME": dir}
	getenv := func(k string) string { return env[k] }
	// No default file: no configuration, no error.
	if c, path, err := Load(getenv); c != nil || path != "" || err != nil {
		t.Fatalf("Load with no file = %v, %q, %v", c, path, err)
	}
	def := filepath.Join(dir, "kpcrypt", "trust.json")
	if err := os.MkdirAll(filepath.Dir(def), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(def, []byte(example), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, path, err := Load(getenv); err != nil || path != def || len(c.Instances) != 2 {
		t.Fatalf("Load of the default file = %v, %q, %v", c, path, err)
	}
	// A group-writable or group-readable file decides nothing.
	if err := os.Chmod(def, 0o660); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Load(getenv); err == nil {
		t.Fatal("a group-writable trust file was accepted")
	}
	// A named file must exist.
	env[EnvFile] = filepath.Join(dir, "missing.json")
	if _, _, err := Load(getenv); err == nil {
		t.Fatal("a missing KPCRYPT_TRUST_FILE was ignored")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(example))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"local_keys":["/a"],"pkcs11_keys":["pkcs11:token=a;object=b"]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("error %v is not ErrInvalidConfig", err)
			}
			return
		}
		// Whatever parses routes only to base URLs the client accepts, and
		// lists only absolute key paths.
		for _, in := range c.Instances {
			for _, e := range []string{in.Endpoint, in.IAMEndpoint} {
				if e != "" && keyprotect.CheckBaseURL(e) != nil {
					t.Fatalf("accepted endpoint %q", e)
				}
			}
		}
		for _, p := range c.LocalKeys {
			if !filepath.IsAbs(p) {
				t.Fatalf("accepted relative key path %q", p)
			}
		}
		p := &Policy{Config: c}
		for _, u := range c.PKCS11Keys {
			if kms.HasPINValue(u) {
				t.Fatalf("accepted a pin-value")
			}
			if _, err := p.Discover(u); err != nil {
				t.Fatalf("a listed PKCS#11 URI is refused: %v", err)
			}
		}
	})
}

// The configuration fails closed wherever one may exist unseen.
func TestLoadFailsClosed(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }
	cfgDir := filepath.Join(home, ".config", "kpcrypt")
	os.MkdirAll(cfgDir, 0o700)
	def := filepath.Join(cfgDir, "trust.json")

	// A relative XDG_CONFIG_HOME is ignored: the file under HOME is read.
	os.WriteFile(def, []byte(`{"instances": []}`), 0o600)
	env["XDG_CONFIG_HOME"] = "relative/dir"
	if c, path, err := Load(getenv); err != nil || path != def || c == nil {
		t.Fatalf("relative XDG_CONFIG_HOME: %v %q %v", c, path, err)
	}
	delete(env, "XDG_CONFIG_HOME")
	// An empty instances list trusts no CRN (absent would trust any).
	c, _, _ := Load(getenv)
	if _, err := (&Policy{Config: c}).Discover(crn("kms", "us-south", inst, key1)); !errors.Is(err, kms.ErrUntrusted) {
		t.Fatalf("\"instances\": [] trusted a CRN: %v", err)
	}
	// A default file that is a link leading nowhere.
	os.Remove(def)
	os.Symlink("/nonexistent/secret/trust.json", def)
	if _, _, err := Load(getenv); err == nil || !strings.Contains(err.Error(), "leads nowhere") {
		t.Fatalf("dangling default link: %v", err)
	}
	os.Remove(def)
	// A directory others may write.
	os.WriteFile(def, []byte(`{}`), 0o600)
	os.Chmod(cfgDir, 0o777)
	if _, _, err := Load(getenv); err == nil || !strings.Contains(err.Error(), "may be written by group or others") {
		t.Fatalf("group-writable directory: %v", err)
	}
	os.Chmod(cfgDir, 0o700)
	// No home at all: unknown, so closed; none says there is none.
	t.Setenv("HOME", "")
	if _, _, err := Load(getenv); !errors.Is(err, ErrNoLocation) {
		t.Fatalf("no home: %v", err)
	}
	env[EnvFile] = NoFile
	if c, _, err := Load(getenv); c != nil || err != nil {
		t.Fatalf("KPCRYPT_TRUST_FILE=none: %v %v", c, err)
	}
}

func TestParseStrict(t *testing.T) {
	for name, bad := range map[string]string{
		"duplicate":    `{"local_keys": ["/a"], "local_keys": ["/b"]}`,
		"case variant": `{"instances": [], "Instances": [{"service":"kms","region":"us-south","instance_id":"` + inst + `"}]}`,
		"nested dup":   `{"instances": [{"service":"kms","region":"us-south","Region":"eu-de","instance_id":"` + inst + `"}]}`,
		"null":         `null`,
		"array":        `[]`,
	} {
		if _, err := Parse([]byte(bad)); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: Parse = %v", name, err)
		}
	}
}
