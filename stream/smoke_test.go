package stream

import (
	"bytes"
	"crypto/rand"
	"io"
	"testing"
)

func TestSmoke(t *testing.T) {
	dek := make([]byte, 32)
	rand.Read(dek)
	for _, workers := range []int{1, 2, 4} {
		for _, n := range []int{0, 1, 4095, 4096, 4097, 3*4096 + 5, 1 << 20} {
			pt := make([]byte, n)
			rand.Read(pt)
			var buf bytes.Buffer
			w, err := NewEncryptWriter(&buf, dek, &Options{ChunkSize: 4096, Workers: workers})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(pt); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			ct := buf.Bytes()
			r, err := NewDecryptReader(bytes.NewReader(ct), dek, &Options{Workers: workers})
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("w=%d n=%d: err=%v eq=%v", workers, n, err, bytes.Equal(got, pt))
			}
			ra, err := NewDecryptReaderAt(bytes.NewReader(ct), int64(len(ct)), dek)
			if err != nil {
				t.Fatal(err)
			}
			got2 := make([]byte, n)
			if k, err := ra.ReadAt(got2, 0); k != n || (err != nil && err != io.EOF) || !bytes.Equal(got2, pt) {
				t.Fatalf("readat w=%d n=%d: %d %v", workers, n, k, err)
			}
		}
	}
}
