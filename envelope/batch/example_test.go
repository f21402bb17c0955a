package batch_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/envelope/batch"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/local"
)

// A rotation job: after the KEK is rotated, scan a tree for outdated
// slots, rewrap it four files at once, and scan again.
func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "batch-example")
	defer os.RemoveAll(dir)
	kek, err := local.Generate(filepath.Join(dir, "kek.json"))
	if err != nil {
		panic(err)
	}
	data := filepath.Join(dir, "data")
	os.Mkdir(data, 0o755)
	e := &envelope.Encrypter{KEKs: []kms.KEK{kek}, Reuse: &envelope.DataKeyReuse{MaxStreams: 100, MaxAge: time.Hour}}
	for i := range 3 {
		ct, _ := e.Seal(ctx, fmt.Appendf(nil, "object %d", i))
		f, _ := batch.CreateAtomic(filepath.Join(data, fmt.Sprintf("obj-%d.kpc", i)), 0o600, false)
		f.Write(ct)
		if err := f.Commit(); err != nil {
			panic(err)
		}
	}
	kek.Rotate(ctx)

	files, err := batch.Walk([]string{data})
	if err != nil {
		panic(err)
	}
	defer files.Close()
	outdated := func() (n int) {
		for _, r := range batch.Scan(ctx, files, &batch.ScanOptions{Versions: batch.NewVersions(envelope.KEKs{kek})}) {
			if r.Outdated() || !r.Complete() {
				n++
			}
		}
		return n
	}
	fmt.Println("outdated before:", outdated())
	for _, r := range batch.Rewrap(ctx, files, &batch.RewrapOptions{
		Options: envelope.RewrapOptions{Keyring: envelope.KEKs{kek}}, Jobs: 4, FileTimeout: time.Minute}) {
		fmt.Println(filepath.Base(r.Path), r.Status, r.Err)
	}
	fmt.Println("outdated after:", outdated())
	// Output:
	// outdated before: 3
	// obj-0.kpc rewrapped <nil>
	// obj-1.kpc rewrapped <nil>
	// obj-2.kpc rewrapped <nil>
	// outdated after: 0
}
