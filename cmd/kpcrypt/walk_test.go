package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kpcrypt/kpcrypt/envelope/batch"
)

// walkTree makes, under dir, a tree "tree" with kpcrypt files tree/a.kpc
// and tree/sub/b.kpc, and outside it "outside" with a kpcrypt file b.kpc,
// all under the local KEK dir/kek.json, then rotates that KEK so that every
// file has something to rewrap. It returns the KEK's URI.
func walkTree(t *testing.T, dir string) string {
	t.Helper()
	uri := "local:" + filepath.Join(dir, "kek.json")
	os.MkdirAll(filepath.Join(dir, "tree", "sub"), 0o755)
	os.MkdirAll(filepath.Join(dir, "outside"), 0o755)
	for _, out := range []string{"tree/a.kpc", "tree/sub/b.kpc", "outside/b.kpc", "outside/c.kpc"} {
		kp(t, dir, nil, "encrypt", "--kek", uri, "-o", out, "plain.bin").expect(t, 0)
	}
	kp(t, dir, nil, "keygen", "--rotate", "kek.json").expect(t, 0)
	return uri
}

// rewrapInProcess runs "kpcrypt rewrap" in this process, with hook run
// between its walk and its rewraps.
func rewrapInProcess(t *testing.T, hook func(), args ...string) (code int, stdout, stderr string) {
	t.Helper()
	testHookAfterWalk = hook
	defer func() { testHookAfterWalk = nil }()
	var o, e bytes.Buffer
	code = run(context.Background(), append([]string{"rewrap"}, args...), strings.NewReader(""), &o, &e)
	return code, o.String(), e.String()
}

// TestRewrapWalkSymlinkSwap: a directory of the tree swapped for a symlink
// to a directory outside it, after the walk, does not lead rewrap out of
// the tree.
func TestRewrapWalkSymlinkSwap(t *testing.T) {
	dir, _ := setup(t, 10_000)
	uri := walkTree(t, dir)
	outside := filepath.Join(dir, "outside", "b.kpc")
	before := readFile(t, outside)
	tree := filepath.Join(dir, "tree")
	code, stdout, stderr := rewrapInProcess(t, func() {
		if err := os.Rename(filepath.Join(tree, "sub"), filepath.Join(dir, "sub.moved")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(dir, "outside"), filepath.Join(tree, "sub")); err != nil {
			t.Fatal(err)
		}
	}, "--kek", uri, tree)
	if code != 1 || !strings.Contains(stderr, filepath.Join(tree, "sub", "b.kpc")+": ") || !strings.Contains(stderr, "1 rewrapped, 0 already current, 1 failed") {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	if !bytes.Equal(readFile(t, outside), before) {
		t.Fatal("rewrap modified a file outside the tree")
	}
}

// TestRewrapWalkFileSwap: a file of the tree replaced by another file after
// the walk is reported as failed and left untouched.
func TestRewrapWalkFileSwap(t *testing.T) {
	dir, _ := setup(t, 10_000)
	uri := walkTree(t, dir)
	tree := filepath.Join(dir, "tree")
	a := filepath.Join(tree, "a.kpc")
	var swapped []byte
	code, stdout, stderr := rewrapInProcess(t, func() {
		// Another kpcrypt file, under the same KEK, in a's place.
		swapped = readFile(t, filepath.Join(dir, "outside", "c.kpc"))
		if err := os.WriteFile(a+".new", swapped, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(a+".new", a); err != nil {
			t.Fatal(err)
		}
	}, "--kek", uri, tree)
	if code != 1 || !strings.Contains(stderr, a+": changed during the walk") || !strings.Contains(stderr, "1 rewrapped, 0 already current, 1 failed") {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	if !bytes.Equal(readFile(t, a), swapped) {
		t.Fatal("rewrap wrote the file swapped in after the walk")
	}
}

// TestWalkSkipsTemporaryFiles: rewrap and scan pass over the temporary
// files of atomic writers, whatever they hold.
func TestWalkSkipsTemporaryFiles(t *testing.T) {
	dir, _ := setup(t, 10_000)
	uri := walkTree(t, dir)
	tmp := filepath.Join(dir, "tree", ".x.kpc.kpcrypt-tmp-0123456789abcdef")
	os.WriteFile(tmp, readFile(t, filepath.Join(dir, "outside", "c.kpc")), 0o600)
	before := readFile(t, tmp)
	if r := kp(t, dir, nil, "scan", "--outdated", "--kek", uri, "tree"); r.code != 1 || !strings.Contains(string(r.stderr), "2 of 2 files have slots") {
		t.Fatalf("scan: exit %d\n%s", r.code, r.stderr)
	}
	r := kp(t, dir, nil, "rewrap", "--kek", uri, "tree")
	r.expect(t, 0, "2 rewrapped, 0 already current, 0 failed")
	if strings.Contains(string(r.stderr), "skipped") || !bytes.Equal(readFile(t, tmp), before) {
		t.Fatalf("rewrap touched or counted a temporary file: %s", r.stderr)
	}
}

// TestCollectFilesError: a walk that fails returns the error and closes
// what it opened.
func TestCollectFilesError(t *testing.T) {
	dir := t.TempDir()
	if _, err := batch.Walk([]string{dir, filepath.Join(dir, "missing")}); err == nil {
		t.Fatal("no error for a missing path")
	}
}
