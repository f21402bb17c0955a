package keyprotect_test

import (
	"context"
	"fmt"
	"log"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/keyprotect"
	"github.com/kpcrypt/kpcrypt/kplocal"
)

// Example seals and opens an object under a Key Protect root key. A local
// Key Protect (kplocal) stands in for the service: in production, Config
// names the region's endpoint and an IBM Cloud API key (see
// keyprotect.Config), and the CRN is the root key's.
func Example() {
	ctx := context.Background()
	srv, err := kplocal.Start(kplocal.Config{InstanceID: "0d5a5c1e-2a5d-4a47-9b3c-6a1f8e4b2c11", APIKey: "example-api-key"})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	keyID, err := srv.CreateKey("pipeline-root-key", true)
	if err != nil {
		log.Fatal(err)
	}

	opener := &keyprotect.Opener{Config: keyprotect.Config{
		BaseURL: srv.BaseURL(), // in production: https://<region>.kms.cloud.ibm.com
		IAMURL:  srv.BaseURL(), // in production: https://iam.cloud.ibm.com
		APIKey:  "example-api-key",
	}}
	kek, err := opener.Open(ctx, srv.KeyCRN(keyID))
	if err != nil {
		log.Fatal(err)
	}

	// Many objects share one wrapped data key (one wrap call), and a
	// reader's cache unwraps it once.
	enc := &envelope.Encrypter{KEKs: []kms.KEK{kek}, Reuse: &envelope.DataKeyReuse{MaxStreams: 100}}
	dec := &envelope.Decrypter{Keyring: envelope.KEKs{kek}, Cache: envelope.NewDataKeyCache(0, 0)}
	for i := range 3 {
		obj, err := enc.Seal(ctx, fmt.Appendf(nil, "record %d", i))
		if err != nil {
			log.Fatal(err)
		}
		pt, err := dec.Open(ctx, obj)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s: %d bytes sealed\n", pt, len(obj))
	}
	st := srv.Stats()
	fmt.Println("wrap calls:", st.Wrap, "unwrap calls:", st.Unwrap)
	// Output:
	// record 0: 1238 bytes sealed
	// record 1: 1238 bytes sealed
	// record 2: 1238 bytes sealed
	// wrap calls: 1 unwrap calls: 1
}
