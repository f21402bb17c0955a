//go:build cgo

package pkcs11_test

import (
	"context"
	"fmt"
	"log"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/kms/pkcs11"
)

// A key in an HSM seals and opens objects: the module and the PIN come
// from the URI (or from KPCRYPT_PKCS11_MODULE and KPCRYPT_PKCS11_PIN), the
// key never leaves the token, and one Provider per process shares the
// token's sessions among its KEKs. (Not run: it needs a token; the package
// tests run the same calls against SoftHSM2.)
func Example() {
	ctx := context.Background()
	p := &pkcs11.Provider{Config: pkcs11.Config{Module: "/usr/lib/softhsm/libsofthsm2.so"}}
	defer p.Close()

	// The first time: an AES-256 key, not extractable, made in the token.
	uri := "pkcs11:token=prod;object=kek?pin-source=/run/secrets/hsm-pin"
	kek, err := p.Generate(ctx, uri)
	if err != nil {
		log.Fatal(err)
	}
	ct, err := envelope.Seal(ctx, []byte("a record"), kek)
	if err != nil {
		log.Fatal(err)
	}
	// Files record only pkcs11:token=prod;object=kek: opening them takes
	// the full URI again, from the caller, never from the file.
	pt, err := envelope.Open(ctx, ct, envelope.KEKs{kek})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s under %s\n", pt, kek.URI())
}
