package kptink

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/tink-crypto/tink-go/v2/aead"

	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/keyprotect"
	"github.com/kpcrypt/kpcrypt/kplocal"
)

func TestTinkEnvelopeThroughKeyProtect(t *testing.T) {
	srv, err := kplocal.Start(kplocal.Config{InstanceID: "a1b2c3d4-0000-4000-8000-00000000a1b2", APIKey: "tink-test"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	id, _ := srv.CreateKey("tink-kek", true)
	keyURI := URIPrefix + srv.KeyCRN(id)
	opener := &keyprotect.Opener{Config: keyprotect.Config{BaseURL: srv.BaseURL(), IAMURL: srv.BaseURL(), APIKey: "tink-test"}}

	client, err := NewClient(opener, URIPrefix)
	if err != nil {
		t.Fatal(err)
	}
	if !client.Supported(keyURI) || client.Supported("aws-kms://arn:x") || client.Supported(URIPrefix+"crn:bogus") {
		t.Fatal("Supported answers wrongly")
	}
	narrow, _ := NewClient(opener, keyURI)
	if narrow.Supported(URIPrefix + "crn:v1:bluemix:public:kms:us-south:a/x:i:key:other") {
		t.Fatal("a client for one key supports another")
	}
	if _, err := NewClient(opener, "gcp-kms://"); err == nil {
		t.Fatal("a foreign prefix was accepted")
	}

	kek, err := client.GetAEAD(keyURI)
	if err != nil {
		t.Fatal(err)
	}
	env := aead.NewKMSEnvelopeAEAD2(aead.AES256GCMKeyTemplate(), kek)
	pt, ad := []byte("a row of the pipeline"), []byte("table=events")
	ct, err := env.Encrypt(pt, ad)
	if err != nil {
		t.Fatal(err)
	}
	got, err := env.Decrypt(ct, ad)
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("envelope round trip: %v", err)
	}
	if _, err := env.Decrypt(ct, []byte("table=other")); err == nil {
		t.Fatal("decrypted with other associated data")
	}
	ct[len(ct)-1] ^= 1
	if _, err := env.Decrypt(ct, ad); err == nil {
		t.Fatal("decrypted a modified ciphertext")
	}
	if st := srv.Stats(); st.Wrap != 1 || st.Unwrap < 2 {
		t.Fatalf("Key Protect saw %d wraps and %d unwraps", st.Wrap, st.Unwrap)
	}

	// The context-aware envelope.
	ctx := context.Background()
	envCtx, err := aead.NewKMSEnvelopeAEADWithContext(aead.AES256GCMKeyTemplate(), kek.(*AEAD))
	if err != nil {
		t.Fatal(err)
	}
	ct, err = envCtx.EncryptWithContext(ctx, pt, ad)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := envCtx.DecryptWithContext(ctx, ct, ad); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("context envelope round trip: %v", err)
	}

	// The AEAD itself binds associated data, and errors keep their class.
	a := kek.(*AEAD)
	w, _ := a.Encrypt([]byte("key material"), []byte("ad"))
	if _, err := a.Decrypt(w, []byte("other")); !errors.Is(err, kms.ErrWrongKey) {
		t.Fatalf("AEAD with other associated data: %v", err)
	}
}
