package envelope

import (
	"context"
	"testing"

	"github.com/kpcrypt/kpcrypt/kms"
)

// BenchmarkSealOpen measures Seal and Open in memory with a local KEK
// (its wrap and unwrap included), at 16 MiB and at 4 KiB; compare the
// 16 MiB rows with stream's BenchmarkInMemory16MiB raw-* rows.
//
//	go test -run x -bench SealOpen -count 3 ./envelope/
func BenchmarkSealOpen(b *testing.B) {
	ctx := context.Background()
	kek := newLocalKEK(b, "bench")
	e := &Encrypter{KEKs: []kms.KEK{kek}}
	d := &Decrypter{Keyring: KEKs{kek}}
	for _, c := range []struct {
		name string
		size int
	}{{"16MiB", 16 << 20}, {"4KiB", 4 << 10}} {
		pt := testPlaintext(c.size)
		ct, err := e.Seal(ctx, pt)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("Seal/"+c.name, func(b *testing.B) {
			b.SetBytes(int64(c.size))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := e.Seal(ctx, pt); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("Open/"+c.name, func(b *testing.B) {
			b.SetBytes(int64(c.size))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := d.Open(ctx, ct); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
