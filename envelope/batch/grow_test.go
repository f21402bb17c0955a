package batch_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/envelope/batch"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/local"
)

// swapKEK runs swap before its first Wrap: in the middle of a rewrap.
type swapKEK struct {
	kms.KEK
	swap func()
}

func (k *swapKEK) Wrap(ctx context.Context, dek, aad []byte) (kms.WrappedKey, error) {
	if k.swap != nil {
		k.swap()
		k.swap = nil
	}
	return k.KEK.Wrap(ctx, dek, aad)
}

func localKEK(t *testing.T, name string) kms.KEK {
	t.Helper()
	k, err := local.Generate(filepath.Join(t.TempDir(), name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestGrowStaysInWalkedDirectory: a file found by a walk whose slots outgrow
// its table is rewritten whole within the walked directory. An attacker who
// can write the walked tree and swaps the file's directory for a link to
// elsewhere while the rewrap runs gets nothing written there: the rewrite
// fails, and the file (now outside) is as it was.
func TestGrowStaysInWalkedDirectory(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("symbolic links")
	}
	ctx := context.Background()
	base := t.TempDir()
	tree, outside := filepath.Join(base, "tree"), filepath.Join(base, "outside")
	if err := os.MkdirAll(filepath.Join(tree, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	a, b := localKEK(t, "a"), localKEK(t, "b")
	e := &envelope.Encrypter{KEKs: []kms.KEK{a}}
	pt := bytes.Repeat([]byte("small object "), 300)
	e.Seal(ctx, pt) // the next file's table holds its slot and no more
	ct, err := e.Seal(ctx, pt)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "d", "f.kpc"), ct, 0o600); err != nil {
		t.Fatal(err)
	}

	// Without an attack, the file grows in place in the tree.
	files, err := batch.Walk([]string{tree})
	if err != nil {
		t.Fatal(err)
	}
	res := batch.Rewrap(ctx, files, &batch.RewrapOptions{Options: envelope.RewrapOptions{Keyring: envelope.KEKs{a}, Add: []kms.KEK{b}}})
	files.Close()
	if res[0].Err != nil || !res[0].Rewrap.Rewritten {
		t.Fatalf("growing a walked file: %+v", res[0])
	}
	if got, err := envelope.Open(ctx, mustReadFile(t, filepath.Join(tree, "d", "f.kpc")), envelope.KEKs{b}); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("the grown file does not open under the added KEK: %v", err)
	}

	// Again, with the directory swapped for a link while the rewrap runs.
	if err := os.WriteFile(filepath.Join(tree, "d", "f.kpc"), ct, 0o600); err != nil {
		t.Fatal(err)
	}
	files, err = batch.Walk([]string{tree})
	if err != nil {
		t.Fatal(err)
	}
	defer files.Close()
	sb := &swapKEK{KEK: b, swap: func() {
		if err := os.Rename(filepath.Join(tree, "d"), filepath.Join(outside, "d")); err != nil {
			t.Error(err)
		}
		if err := os.Symlink(filepath.Join(outside, "d"), filepath.Join(tree, "d")); err != nil {
			t.Error(err)
		}
	}}
	res = batch.Rewrap(ctx, files, &batch.RewrapOptions{Options: envelope.RewrapOptions{Keyring: envelope.KEKs{a}, Add: []kms.KEK{sb}}})
	if res[0].Err == nil {
		t.Fatalf("the rewrite followed the link out of the walked tree: %+v", res[0].Rewrap)
	}
	t.Logf("refused: %v", res[0].Err)
	if !bytes.Equal(mustReadFile(t, filepath.Join(outside, "d", "f.kpc")), ct) {
		t.Fatal("the file moved out of the tree was rewritten")
	}
	if ents, _ := os.ReadDir(filepath.Join(outside, "d")); len(ents) != 1 {
		t.Fatalf("%d entries outside the tree, want the one file", len(ents))
	}
}

func mustReadFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
