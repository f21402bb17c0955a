package envelope

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/kpcrypt/kpcrypt/envelope/internal/format"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/stream"
)

// TestFileParallelPaths: Encrypt from a regular file and Decrypt from one,
// whose workers read with ReadAt, give what the sequential paths give: the
// same plaintext, and on every defect of the body the same error class;
// they start at the file's offset and leave it at the end.
func TestFileParallelPaths(t *testing.T) {
	ctx := context.Background()
	kek := newLocalKEK(t, "files")
	keyring := KEKs{kek}
	dir := t.TempDir()
	const cs = stream.MinChunkSize
	full := cs + stream.TagSize
	prefix := []byte("some bytes before")
	for _, size := range []int{0, 10, cs, 5*cs + 3, 16 * cs} {
		pt := testPlaintext(size)
		in := filepath.Join(dir, fmt.Sprintf("in-%d", size))
		if err := os.WriteFile(in, append(bytes.Clone(prefix), pt...), 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(in)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Seek(int64(len(prefix)), io.SeekStart); err != nil {
			t.Fatal(err)
		}
		var ct bytes.Buffer
		if err := (&Encrypter{KEKs: []kms.KEK{kek}, ChunkSize: cs, Workers: 3}).Encrypt(ctx, &ct, f); err != nil {
			t.Fatal(err)
		}
		if off, _ := f.Seek(0, io.SeekCurrent); off != int64(len(prefix)+size) {
			t.Errorf("size %d: the input's offset is %d after Encrypt, want its end", size, off)
		}
		f.Close()
		file := ct.Bytes()
		h, err := format.ReadHeader(bytes.NewReader(file))
		if err != nil {
			t.Fatal(err)
		}
		if h.Core.PlaintextSize != int64(size) {
			t.Fatalf("size %d recorded as %d", size, h.Core.PlaintextSize)
		}
		hs := int(h.Size())
		muts := map[string][]byte{"valid": file}
		for k := 0; k*full <= len(file)-hs+full; k++ {
			for _, d := range []int{-17, -1, 0, 1, 16} {
				if n := k*full + d; n >= 0 && hs+n <= len(file) {
					muts[fmt.Sprintf("cut body at %d", n)] = file[:hs+n]
				}
			}
		}
		for i := hs; i < len(file); i += max(1, (len(file)-hs)/7) {
			b := bytes.Clone(file)
			b[i] ^= 4
			muts[fmt.Sprintf("flip at %d", i)] = b
		}
		muts["trailing"] = append(bytes.Clone(file), 1, 2, 3)
		muts["cut in header"] = file[:hs-1]
		for name, b := range muts {
			var want bytes.Buffer
			wantErr := (&Decrypter{Keyring: keyring, Workers: 1}).Decrypt(ctx, &want, bytes.NewReader(b))
			p := filepath.Join(dir, "ct")
			if err := os.WriteFile(p, append(bytes.Clone(prefix), b...), 0o600); err != nil {
				t.Fatal(err)
			}
			for _, workers := range []int{1, 4} {
				f, err := os.Open(p)
				if err != nil {
					t.Fatal(err)
				}
				f.Seek(int64(len(prefix)), io.SeekStart)
				var got bytes.Buffer
				err = (&Decrypter{Keyring: keyring, Workers: workers}).Decrypt(ctx, &got, f)
				off, _ := f.Seek(0, io.SeekCurrent)
				f.Close()
				if !sameClass(err, wantErr) {
					t.Fatalf("size %d, %s, %d workers: Decrypt from a file: %v; from a reader: %v", size, name, workers, err, wantErr)
				}
				if err == nil && (!bytes.Equal(got.Bytes(), want.Bytes()) || !bytes.Equal(got.Bytes(), pt)) {
					t.Fatalf("size %d, %s: wrong plaintext", size, name)
				}
				if err == nil && off != int64(len(prefix)+len(b)) {
					t.Fatalf("size %d, %s: offset %d after Decrypt, want the end", size, name, off)
				}
				if err != nil && got.Len() > want.Len() {
					t.Fatalf("size %d, %s: more plaintext released than authenticated", size, name)
				}
			}
		}
	}
}
