package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
