package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/local"
)

// scan's exit status tells a cron or CI job what it found: 0 all current,
// 1 outdated, 2 usage, 3 incomplete.
func TestScanExitCodes(t *testing.T) {
	dir, _ := setup(t, 3000)
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	for _, name := range []string{"d/a.kpc", "d/b.kpc"} {
		kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "-o", name, "plain.bin").expect(t, 0)
	}
	r := kp(t, dir, nil, "keygen", "--rotate", "kek.json")
	r.expect(t, 0)
	v2 := strings.TrimSpace(string(r.stdout))
	h := slotsOf(t, dir, "d/a.kpc")
	v1 := h[0][1]

	code := func(args ...string) result {
		t.Helper()
		return kp(t, dir, nil, args...)
	}
	if r := code("scan", "--outdated", "--kek", "local:kek.json", "d"); r.code != 1 || !strings.Contains(string(r.stderr), "2 of 2 files") {
		t.Fatalf("outdated files: exit %d, want 1\n%s", r.code, r.stderr)
	}
	if r := code("scan", "--below-version", v2, "--kek", "local:kek.json", "d"); r.code != 1 {
		t.Fatalf("--below-version with hits: exit %d, want 1\n%s", r.code, r.stderr)
	}
	code("scan", "--below-version", v1, "--kek", "local:kek.json", "d").expect(t, 0, "0 of 2 files")
	// Versions no KEK has, and a --below-version without its KEK.
	code("scan", "--below-version", "nonsense", "--kek", "local:kek.json", "d").expect(t, 2, `"nonsense" is not a key version of local:kek.json`)
	code("scan", "--below-version", "12345", "--kek", "local:kek.json", "d").expect(t, 2, "is not a key version")
	code("scan", "--below-version", v1, "d").expect(t, 2, "give it with --kek")
	// Slots that cannot be checked: 3, whatever else was found.
	if r := code("scan", "--outdated", "d"); r.code != 3 || !strings.Contains(string(r.stderr), "not checked") {
		t.Fatalf("unchecked slots: exit %d, want 3\n%s", r.code, r.stderr)
	}
	if r := code("inspect", "--current", "d/a.kpc"); r.code != 3 || !strings.Contains(string(r.stdout), "not checked") {
		t.Fatalf("inspect --current with an unchecked slot: exit %d, want 3\n%s%s", r.code, r.stdout, r.stderr)
	}
	code("rewrap", "--kek", "local:kek.json", "d").expect(t, 0)
	code("scan", "--outdated", "--kek", "local:kek.json", "d").expect(t, 0, "0 of 2 files")
	if r := code("scan", "-h"); r.code != 0 || !strings.Contains(string(r.stdout), "3  something could not be checked") {
		t.Fatalf("scan -h does not document the exit codes:\n%s", r.stdout)
	}

	// A --remove-kek that matches nothing is an error, not "already current".
	if r := code("rewrap", "--remove-kek", "local:nothere.json", "d/a.kpc"); r.code != 1 || !strings.Contains(string(r.stderr), "holds no slot of local:nothere.json") {
		t.Fatalf("--remove-kek of a missing slot on a named file: exit %d\n%s", r.code, r.stderr)
	}
	if r := code("rewrap", "--remove-kek", "local:nothere.json", "d"); r.code != 1 || !strings.Contains(string(r.stderr), "no file holds a slot of this KEK") {
		t.Fatalf("--remove-kek of a missing slot in a walk: exit %d\n%s", r.code, r.stderr)
	}
}

// versionKEK records another key version than its own in the slots it
// wraps: what a forger writes into a header.
type versionKEK struct {
	kms.KEK
	version string
}

func (k versionKEK) Wrap(ctx context.Context, dek, aad []byte) (kms.WrappedKey, error) {
	w, err := k.KEK.Wrap(ctx, dek, aad)
	w.KeyVersion = k.version
	return w, err
}

// A slot's key version is not authenticated until its slot is unwrapped:
// one that is none of its KEK's versions is reported as not checked, never
// as old or new; and slots that were only kept are "unchanged", never
// "current".
func TestScanUnknownVersionsAndUnchanged(t *testing.T) {
	dir, pt := setup(t, 1000)
	kek, err := local.OpenFile(filepath.Join(dir, "kek.json"))
	if err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	forge(t, filepath.Join(dir, "d", "forged.kpc"), pt, versionKEK{kek, "999"})
	vs, _ := kek.Versions(context.Background())
	r := kp(t, dir, nil, "scan", "--below-version", vs[0], "--kek", kek.URI(), "d")
	if r.code != 3 || !strings.Contains(string(r.stderr), "not one of KEK") {
		t.Fatalf("a forged version: exit %d\n%s", r.code, r.stderr)
	}
	// A temporary file is passed over, and said so.
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "-o", "d/ok.kpc", "plain.bin").expect(t, 0)
	os.WriteFile(filepath.Join(dir, "d", ".x.kpc.kpcrypt-tmp-0123456789abcdef"), []byte("KPCF"), 0o600)
	if r := kp(t, dir, nil, "scan", "--outdated", "--kek", "local:kek.json", "d/ok.kpc", "d"); !strings.Contains(string(r.stderr), "1 temporary files passed over") {
		t.Fatalf("scan does not say it passed over a temporary file:\n%s", r.stderr)
	}
	// --add-kek of a KEK the file has: nothing changes, and nothing is
	// called current.
	r = kp(t, dir, nil, "rewrap", "--kek", "local:kek.json", "--add-kek", "local:kek.json", "d/ok.kpc")
	if r.code != 0 || !strings.Contains(string(r.stdout), "unchanged d/ok.kpc") || strings.Contains(string(r.stdout), "current") {
		t.Fatalf("rewrap --add-kek of a present KEK: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
