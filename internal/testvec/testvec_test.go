package testvec

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestRoundTripAndErrors(t *testing.T) {
	f := &File{Name: "v", Fields: Pairs("expect", "success", "comment", "a: colon"), Body: []byte("body\n\nwith blank lines")}
	got, err := Parse("v", f.Marshal())
	if err != nil || len(got.Fields) != 2 || got.Fields[1].Value != "a: colon" || !bytes.Equal(got.Body, f.Body) {
		t.Fatalf("round trip: %v %+v", err, got)
	}
	if _, err := Parse("v", []byte("expect: x\nno end")); err == nil {
		t.Fatal("unterminated preamble accepted")
	}
	if _, err := Parse("v", []byte("no colon\n\n")); err == nil {
		t.Fatal("a line without ': ' accepted")
	}
	dir := t.TempDir()
	if _, err := ReadDir(dir); err == nil {
		t.Fatal("an empty directory gave no error")
	}
	os.WriteFile(filepath.Join(dir, "b.vec"), f.Marshal(), 0o644)
	os.WriteFile(filepath.Join(dir, "a.vec"), f.Marshal(), 0o644)
	os.WriteFile(filepath.Join(dir, "c.txt"), []byte("ignored"), 0o644)
	fs, err := ReadDir(dir)
	if err != nil || len(fs) != 2 || fs[0].Name != "a" || fs[1].Name != "b" {
		t.Fatalf("ReadDir: %v %d", err, len(fs))
	}
}
