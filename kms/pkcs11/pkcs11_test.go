//go:build cgo

package pkcs11_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	p11 "github.com/miekg/pkcs11"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/pkcs11"
	"github.com/kpcrypt/kpcrypt/kms/pkcs11/softhsmtest"
)

// newProvider returns a Provider closed when the test ends.
func newProvider(t *testing.T, cfg pkcs11.Config) *pkcs11.Provider {
	t.Helper()
	p := &pkcs11.Provider{Config: cfg}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Provider.Close: %v", err)
		}
	})
	return p
}

func generate(t *testing.T, p *pkcs11.Provider, uri string) *pkcs11.KEK {
	t.Helper()
	k, err := p.Generate(t.Context(), uri)
	if err != nil {
		t.Fatalf("Generate(%s): %v", uri, err)
	}
	return k
}

func open(t *testing.T, p *pkcs11.Provider, uri string) *pkcs11.KEK {
	t.Helper()
	k, err := p.OpenKEK(t.Context(), uri)
	if err != nil {
		t.Fatalf("OpenKEK(%s): %v", uri, err)
	}
	return k
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// wantErr checks that err is a *kms.Error matching class, whose message
// contains each of has and none of the PINs.
func wantErr(t *testing.T, err, class error, has ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one matching %v", class)
	}
	var ke *kms.Error
	if !errors.As(err, &ke) {
		t.Errorf("%T is not a *kms.Error: %v", err, err)
	}
	if class != nil && !errors.Is(err, class) {
		t.Errorf("error %q does not match %q", err, class)
	}
	for _, s := range has {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q lacks %q", err, s)
		}
	}
	for _, pin := range []string{softhsmtest.PIN, softhsmtest.SOPIN, wrongPIN} {
		if strings.Contains(err.Error(), pin) {
			t.Errorf("error %q contains a PIN", err)
		}
	}
}

const wrongPIN = "kp-wrong-1357"

func TestWrapUnwrap(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mechs []pkcs11.Mechanism
		want  pkcs11.Mechanism
	}{
		{"default prefers GCM", nil, pkcs11.AESGCM},
		{"key wrap with padding", []pkcs11.Mechanism{pkcs11.AESKeyWrapPad}, pkcs11.AESKeyWrapPad},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			tok := softhsmtest.New(t, "T")
			p := newProvider(t, pkcs11.Config{Mechanisms: tc.mechs})
			kek := generate(t, p, tok.URI("kek"))
			other := generate(t, p, tok.URI("other"))
			if m, err := kek.Mechanism(); err != nil || m != tc.want {
				t.Fatalf("Mechanism() = %v, %v; want %v", m, err, tc.want)
			}
			if kek.URI() != "pkcs11:token=T;object=kek" {
				t.Fatalf("URI() = %q", kek.URI())
			}
			dek, aad := randBytes(32), []byte("slot aad")
			w, err := kek.Wrap(ctx, dek, aad)
			if err != nil {
				t.Fatal(err)
			}
			if w.Ciphertext[0] != byte(tc.want) {
				t.Fatalf("wrapped DEK starts with %#x, want the mechanism byte %#x", w.Ciphertext[0], byte(tc.want))
			}
			if bytes.Contains(w.Ciphertext, dek[:16]) {
				t.Fatal("the wrapped DEK contains the DEK")
			}
			cur, err := kek.CurrentVersion(ctx)
			if err != nil || w.KeyVersion != cur || len(cur) != 24 {
				t.Fatalf("wrapped under %q, current version %q (%v)", w.KeyVersion, cur, err)
			}
			res, err := kek.Unwrap(ctx, w.Ciphertext, aad)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(res.DEK, dek) || res.KeyVersion != w.KeyVersion {
				t.Fatalf("Unwrap = %x (version %q), want %x (version %q)", res.DEK, res.KeyVersion, dek, w.KeyVersion)
			}
			// Any length of DEK and no associated data.
			for _, n := range []int{1, 16, 33, 64} {
				d := randBytes(n)
				w2, err := kek.Wrap(ctx, d, nil)
				if err != nil {
					t.Fatal(err)
				}
				if r, err := kek.Unwrap(ctx, w2.Ciphertext, nil); err != nil || !bytes.Equal(r.DEK, d) {
					t.Fatalf("%d-byte DEK: %x, %v", n, r.DEK, err)
				}
				_, err = kek.Unwrap(ctx, w2.Ciphertext, []byte{0})
				wantErr(t, err, kms.ErrWrongKey)
			}

			_, err = kek.Unwrap(ctx, w.Ciphertext, []byte("slot aaD"))
			wantErr(t, err, kms.ErrWrongKey)
			_, err = kek.Unwrap(ctx, w.Ciphertext, nil)
			wantErr(t, err, kms.ErrWrongKey)
			_, err = other.Unwrap(ctx, w.Ciphertext, aad)
			wantErr(t, err, kms.ErrWrongKey, "not a version of this KEK")
			// Every byte authenticated: the header (mechanism, version) and the body.
			for _, i := range []int{1, 2, 13, 14, len(w.Ciphertext) / 2, len(w.Ciphertext) - 1} {
				bad := bytes.Clone(w.Ciphertext)
				bad[i] ^= 0x01
				_, err := kek.Unwrap(ctx, bad, aad)
				wantErr(t, err, kms.ErrWrongKey)
			}
			for _, bad := range [][]byte{nil, {1}, w.Ciphertext[:14], w.Ciphertext[:len(w.Ciphertext)-1], append([]byte{9}, w.Ciphertext[1:]...)} {
				_, err := kek.Unwrap(ctx, bad, aad)
				wantErr(t, err, kms.ErrWrongKey)
			}

			// Another key under the same CKA_ID: the token's decryption fails.
			pa := generate(t, p, strings.Replace(tok.URI("pa"), "?", ";id=%01%02?", 1))
			pb := generate(t, p, strings.Replace(tok.URI("pb"), "?", ";id=%01%02?", 1))
			if pa.URI() != "pkcs11:token=T;object=pa;id=%01%02" {
				t.Fatalf("pinned URI() = %q", pa.URI())
			}
			wa, err := pa.Wrap(ctx, dek, aad)
			if err != nil || wa.KeyVersion != "0102" {
				t.Fatalf("pinned Wrap: version %q, %v", wa.KeyVersion, err)
			}
			_, err = pb.Unwrap(ctx, wa.Ciphertext, aad)
			wantErr(t, err, kms.ErrWrongKey, tc.want.String())
			if r, err := pa.Unwrap(ctx, wa.Ciphertext, aad); err != nil || !bytes.Equal(r.DEK, dek) {
				t.Fatalf("pinned Unwrap: %v", err)
			}
			_, err = pa.Unwrap(ctx, w.Ciphertext, aad)
			wantErr(t, err, kms.ErrWrongKey, "pinned")
		})
	}
}

// GCM wraps with a fresh IV each time; key wrap is deterministic, and
// binds the associated data all the same.
func TestWrapsDiffer(t *testing.T) {
	ctx := t.Context()
	tok := softhsmtest.New(t, "T")
	p := newProvider(t, pkcs11.Config{})
	kek := generate(t, p, tok.URI("kek"))
	dek := randBytes(32)
	w1, _ := kek.Wrap(ctx, dek, nil)
	w2, _ := kek.Wrap(ctx, dek, nil)
	if bytes.Equal(w1.Ciphertext, w2.Ciphertext) || bytes.Equal(w1.Ciphertext[14:26], w2.Ciphertext[14:26]) {
		t.Fatal("two GCM wraps of one DEK share their IV")
	}
}

// The file header records the KEK's identity, never the module or the PIN,
// and the file opens through the envelope library.
func TestEnvelopeFile(t *testing.T) {
	ctx := t.Context()
	tok := softhsmtest.New(t, "T")
	p := newProvider(t, pkcs11.Config{})
	generate(t, p, tok.URI("kek"))
	withPIN := "pkcs11:token=T;object=kek?module-path=" + tok.Module + "&pin-value=" + softhsmtest.PIN
	kek := open(t, p, withPIN)
	if kek.URI() != "pkcs11:token=T;object=kek" {
		t.Fatalf("URI() = %q", kek.URI())
	}
	pt := randBytes(100_000)
	ct, err := envelope.Seal(ctx, pt, kek)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{softhsmtest.PIN, tok.Module, "pin-", "module-path", tok.PINFile} {
		if bytes.Contains(ct, []byte(secret)) {
			t.Fatalf("the file contains %q", secret)
		}
	}
	h, err := envelope.Inspect(bytes.NewReader(ct))
	if err != nil {
		t.Fatal(err)
	}
	v, _ := kek.CurrentVersion(ctx)
	if len(h.Slots) != 1 || h.Slots[0].KEK != "pkcs11:token=T;object=kek" || h.Slots[0].KeyVersion != v {
		t.Fatalf("slots %+v, want pkcs11:token=T;object=kek at version %s", h.Slots, v)
	}
	// Opened by another URI spelling (pin-source): the same identity.
	kek2 := open(t, p, tok.URI("kek"))
	got, err := envelope.Open(ctx, ct, envelope.KEKs{kek2})
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("envelope.Open: %v", err)
	}
	// Another KEK of the token does not open it.
	other := generate(t, p, tok.URI("other"))
	_, err = envelope.Open(ctx, ct, envelope.KEKs{other})
	if !errors.Is(err, kms.ErrWrongKey) {
		t.Fatalf("another KEK: %v", err)
	}
}

func TestRotation(t *testing.T) {
	ctx := t.Context()
	tok := softhsmtest.New(t, "T")
	p := newProvider(t, pkcs11.Config{})
	kek := generate(t, p, tok.URI("kek"))
	v1, err := kek.CurrentVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "f.kpc")
	pt := randBytes(10_000)
	ct, err := envelope.Seal(ctx, pt, kek)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, ct, 0o600); err != nil {
		t.Fatal(err)
	}

	// Another KEK value on the same key sees the rotation: nothing is cached.
	same := open(t, p, tok.URI("kek"))
	v2, err := kek.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v3, err := same.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	vs, err := kek.Versions(ctx)
	if err != nil || !slices.Equal(vs, []string{v1, v2, v3}) {
		t.Fatalf("Versions = %v, %v; want %v", vs, err, []string{v1, v2, v3})
	}
	for _, k := range []*pkcs11.KEK{kek, same} {
		if cur, err := k.CurrentVersion(ctx); err != nil || cur != v3 {
			t.Fatalf("CurrentVersion = %q, %v; want %q", cur, err, v3)
		}
	}
	if w, err := kek.Wrap(ctx, randBytes(32), nil); err != nil || w.KeyVersion != v3 {
		t.Fatalf("Wrap after rotation: version %q, %v; want %q", w.KeyVersion, err, v3)
	}

	// The old file still opens, under its version.
	r, err := envelope.NewReader(ctx, bytes.NewReader(ct), envelope.KEKs{kek})
	if err != nil {
		t.Fatal(err)
	}
	if r.Slot().KeyVersion != v1 {
		t.Fatalf("old file opened under %q, want %q", r.Slot().KeyVersion, v1)
	}
	r.Close()

	res, err := envelope.RewrapPath(ctx, path, &envelope.RewrapOptions{Keyring: envelope.KEKs{kek}})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Changed || len(res.Slots) != 1 || res.Slots[0].Action != "rewrapped" || res.Slots[0].OldVersion != v1 || res.Slots[0].NewVersion != v3 {
		t.Fatalf("rewrap: %+v", res.Slots)
	}
	f, _ := os.Open(path)
	h, err := envelope.Inspect(f)
	f.Close()
	if err != nil || h.Slots[0].KeyVersion != v3 {
		t.Fatalf("after rewrap the slot is at %+v (%v), want %s", h.Slots, err, v3)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if pt2, err := envelope.Open(ctx, got, envelope.KEKs{kek}); err != nil || !bytes.Equal(pt2, pt) {
		t.Fatalf("rewrapped file: %v", err)
	}
	// Rewrapping again changes nothing.
	if res, err := envelope.RewrapPath(ctx, path, &envelope.RewrapOptions{Keyring: envelope.KEKs{kek}}); err != nil || res.Changed {
		t.Fatalf("second rewrap: %+v, %v", res, err)
	}

	// The order survives a new Provider (a new process).
	p.Close()
	p2 := newProvider(t, pkcs11.Config{})
	k2 := open(t, p2, tok.URI("kek"))
	if vs2, err := k2.Versions(ctx); err != nil || !slices.Equal(vs2, vs) {
		t.Fatalf("Versions in a new Provider = %v, %v; want %v", vs2, err, vs)
	}
	// A minimum version retires the older ones.
	d := &envelope.Decrypter{Keyring: envelope.KEKs{k2}, MinKeyVersions: map[string]string{k2.URI(): v2}}
	if _, err := d.Open(ctx, ct); !errors.Is(err, envelope.ErrKeyVersionRetired) {
		t.Fatalf("a slot at %s under minimum %s: %v", v1, v2, err)
	}
}

// Keys made by other tools, with any CKA_ID, are versions older than those
// kpcrypt makes; a KEK pinned by id= does not rotate.
func TestForeignAndPinnedVersions(t *testing.T) {
	ctx := t.Context()
	tok := softhsmtest.New(t, "T")
	p := newProvider(t, pkcs11.Config{})
	pinned := generate(t, p, strings.Replace(tok.URI("legacy"), "?", ";id=%FF%FF?", 1))
	if _, err := pinned.Rotate(ctx); err == nil || !strings.Contains(err.Error(), "pinned") {
		t.Fatalf("Rotate of a pinned KEK: %v", err)
	}
	kek := open(t, p, tok.URI("legacy"))
	v, err := kek.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v2, err := kek.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(v, "0000000000000001") || !strings.HasPrefix(v2, "0000000000000002") {
		t.Fatalf("rotations made versions %s, %s: want generations 1 and 2", v, v2)
	}
	vs, err := kek.Versions(ctx)
	if err != nil || !slices.Equal(vs, []string{"ffff", v, v2}) {
		t.Fatalf("Versions = %v, %v; want [ffff %s %s]", vs, err, v, v2)
	}
	if vs, _ := pinned.Versions(ctx); !slices.Equal(vs, []string{"ffff"}) {
		t.Fatalf("pinned Versions = %v", vs)
	}
	_, err = p.Generate(ctx, tok.URI("legacy"))
	wantErr(t, err, pkcs11.ErrKeyExists, "3 key version(s)")
}

func TestWrongPIN(t *testing.T) {
	ctx := t.Context()
	tok := softhsmtest.New(t, "T")
	p0 := newProvider(t, pkcs11.Config{})
	generate(t, p0, tok.URI("kek"))
	// While another Provider of the process is logged in, the token would
	// take any PIN: the second Provider refuses to open rather than not
	// check it.
	_, err := newProvider(t, pkcs11.Config{}).OpenKEK(ctx, tok.URI("kek"))
	wantErr(t, err, kms.ErrPermissionDenied, "PIN given cannot be checked", "one Provider per process")
	p0.Close()

	badFile := filepath.Join(t.TempDir(), "bad-pin")
	os.WriteFile(badFile, []byte(wrongPIN+"\n"), 0o600)
	base := "pkcs11:token=T;object=kek?module-path=" + tok.Module
	for _, uri := range []string{base + "&pin-value=" + wrongPIN, base + "&pin-source=" + badFile, base + "&pin-source=file://" + badFile} {
		p := newProvider(t, pkcs11.Config{})
		_, err := p.OpenKEK(ctx, uri)
		wantErr(t, err, kms.ErrPermissionDenied, "wrong PIN", "CKR_PIN_INCORRECT", `token "T"`)
		// The right PIN then works in the same Provider.
		k := open(t, p, tok.URI("kek"))
		if _, err := k.Wrap(ctx, randBytes(32), nil); err != nil {
			t.Fatal(err)
		}
		// Once logged in, a token accepts no other PIN, though the token
		// itself would not check it.
		_, err = p.OpenKEK(ctx, uri)
		wantErr(t, err, kms.ErrPermissionDenied, "another PIN")
		_, err = p.OpenKEK(ctx, base)
		wantErr(t, err, kms.ErrPermissionDenied, "another PIN")
		p.Close()
	}

	p := newProvider(t, pkcs11.Config{})
	_, err = p.OpenKEK(ctx, base)
	wantErr(t, err, kms.ErrPermissionDenied, "needs a PIN", pkcs11.EnvPIN)
	// The configured PIN serves URIs without one.
	p.Config.PIN = softhsmtest.PIN
	open(t, p, base)

	loose := filepath.Join(t.TempDir(), "loose-pin")
	os.WriteFile(loose, []byte(softhsmtest.PIN), 0o644)
	_, err = newProvider(t, pkcs11.Config{}).OpenKEK(ctx, base+"&pin-source="+loose)
	wantErr(t, err, nil, "chmod 600")
	_, err = newProvider(t, pkcs11.Config{}).OpenKEK(ctx, base+"&pin-source="+loose+".missing")
	wantErr(t, err, nil, "pin-source")
}

func TestNotFound(t *testing.T) {
	ctx := t.Context()
	tok := softhsmtest.New(t, "T")
	tok.AddToken(t, "U")
	p := newProvider(t, pkcs11.Config{})
	generate(t, p, tok.URI("kek"))
	q := "?module-path=" + tok.Module + "&pin-source=" + tok.PINFile

	_, err := p.OpenKEK(ctx, "pkcs11:token=Nope;object=kek"+q)
	wantErr(t, err, kms.ErrNotFound, `no token matches token="Nope"`, `"T"`, `"U"`)
	_, err = p.OpenKEK(ctx, "pkcs11:token=T;object=nokey"+q)
	wantErr(t, err, kms.ErrNotFound, `no AES key labelled "nokey" in token "T"`)
	_, err = p.OpenKEK(ctx, "pkcs11:token=U;object=kek"+q)
	wantErr(t, err, kms.ErrNotFound, `in token "U"`)
	_, err = p.OpenKEK(ctx, "pkcs11:token=T;object=kek;id=%99"+q)
	wantErr(t, err, kms.ErrNotFound, "CKA_ID 99")
	_, err = p.OpenKEK(ctx, "pkcs11:object=kek"+q)
	wantErr(t, err, nil, "2 tokens match")
	// The token need not be named by its label: the identity still is.
	k := open(t, p, "pkcs11:object=kek;token=T;type=secret-key"+q)
	if k.URI() != "pkcs11:token=T;object=kek" {
		t.Fatalf("URI() = %q", k.URI())
	}

	_, err = p.OpenKEK(ctx, "pkcs11:token=T;object=kek?module-path=/nonexistent/libnope.so&pin-source="+tok.PINFile)
	wantErr(t, err, nil, "cannot load PKCS#11 module /nonexistent/libnope.so: no such file")
	_, err = p.OpenKEK(ctx, "pkcs11:token=T;object=kek?module-path="+tok.PINFile+"&pin-source="+tok.PINFile)
	wantErr(t, err, nil, "cannot load PKCS#11 module", "not a shared library")
	_, err = (&pkcs11.Provider{Config: pkcs11.Config{Module: "relative/lib.so"}}).OpenKEK(ctx, "pkcs11:token=T;object=kek")
	wantErr(t, err, nil, "not an absolute path")
}

func TestInvalidURIs(t *testing.T) {
	p := newProvider(t, pkcs11.Config{})
	for _, uri := range []string{
		"pkcs11:token=T",                               // no object
		"pkcs11:token=T;object=k;object=j",             // repeated
		"pkcs11:token=T;object=k;x-vendor=1",           // unknown
		"pkcs11:token=T;object=k;type=private",         // not a secret key
		"pkcs11:token=T;object=k;slot-id=one",          // not a number
		"pkcs11:token=T;object=k%zz",                   // bad escape
		"pkcs11:token=T;object=k?module-path=lib.so",   // relative module
		"pkcs11:token=T;object=k?module-name=softhsm2", // unsupported
		"pkcs11:token=T;object=k?pin-source=/f&pin-value=" + wrongPIN,
		"pkcs11:token=T;object=k?pin-value=" + wrongPIN + "&pin-value=" + wrongPIN,
		"pkcs11:token=T;noequals",
	} {
		_, err := p.OpenKEK(t.Context(), uri)
		wantErr(t, err, kms.ErrInvalidURI)
	}
}

// A token that lacks a mechanism: the KEK falls back to the next one, and
// says which one it lacks when a DEK needs it.
func TestMechanisms(t *testing.T) {
	ctx := t.Context()
	tok := softhsmtest.New(t, "T")
	p := newProvider(t, pkcs11.Config{})
	kek := generate(t, p, tok.URI("kek"))
	dek, aad := randBytes(32), []byte("aad")
	gcm, err := kek.Wrap(ctx, dek, aad)
	if err != nil || gcm.Ciphertext[0] != byte(pkcs11.AESGCM) {
		t.Fatalf("Wrap: %v", err)
	}
	p.Close()
	// SoftHSM2 has no CKM_AES_KEY_WRAP_KWP (PKCS#11 3.0).
	kwp := newProvider(t, pkcs11.Config{Mechanisms: []pkcs11.Mechanism{pkcs11.AESKeyWrapKWP}})
	_, err = kwp.OpenKEK(ctx, tok.URI("kek"))
	wantErr(t, err, pkcs11.ErrMechanismUnsupported, "CKM_AES_KEY_WRAP_KWP")
	kwp.Close()

	tok.SetMechanisms(t, "CKM_AES_KEY_GEN,CKM_AES_KEY_WRAP_PAD")
	p = newProvider(t, pkcs11.Config{})
	kek = open(t, p, tok.URI("kek"))
	if m, err := kek.Mechanism(); err != nil || m != pkcs11.AESKeyWrapPad {
		t.Fatalf("Mechanism() = %v, %v; want the fallback CKM_AES_KEY_WRAP_PAD", m, err)
	}
	w, err := kek.Wrap(ctx, dek, aad)
	if err != nil || w.Ciphertext[0] != byte(pkcs11.AESKeyWrapPad) {
		t.Fatalf("Wrap: %v", err)
	}
	if r, err := kek.Unwrap(ctx, w.Ciphertext, aad); err != nil || !bytes.Equal(r.DEK, dek) {
		t.Fatalf("Unwrap: %v", err)
	}
	_, err = kek.Unwrap(ctx, gcm.Ciphertext, aad)
	wantErr(t, err, pkcs11.ErrMechanismUnsupported, "CKM_AES_GCM", `token "T"`)
	p.Close()

	tok.SetMechanisms(t, "CKM_AES_KEY_GEN,CKM_AES_CBC")
	_, err = newProvider(t, pkcs11.Config{}).OpenKEK(ctx, tok.URI("kek"))
	wantErr(t, err, pkcs11.ErrMechanismUnsupported, "CKM_AES_GCM", "CKM_AES_KEY_WRAP_PAD")
}

// Many goroutines wrap and unwrap on one KEK, through fewer sessions than
// goroutines, while it rotates.
func TestConcurrent(t *testing.T) {
	ctx := t.Context()
	tok := softhsmtest.New(t, "T")
	p := newProvider(t, pkcs11.Config{MaxSessions: 3})
	kek := generate(t, p, tok.URI("kek"))
	const workers, rounds = 12, 8
	var wg sync.WaitGroup
	errs := make(chan error, workers+1)
	for g := range workers {
		wg.Go(func() {
			for i := range rounds {
				dek, aad := randBytes(32), fmt.Appendf(nil, "%d/%d", g, i)
				w, err := kek.Wrap(ctx, dek, aad)
				if err != nil {
					errs <- err
					return
				}
				r, err := kek.Unwrap(ctx, w.Ciphertext, aad)
				if err != nil || !bytes.Equal(r.DEK, dek) || r.KeyVersion != w.KeyVersion {
					errs <- fmt.Errorf("round %d/%d: %v", g, i, err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range 3 {
			if _, err := kek.Rotate(ctx); err != nil {
				errs <- err
				return
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if vs, _ := kek.Versions(ctx); len(vs) != 4 {
		t.Fatalf("%d versions after 3 rotations", len(vs))
	}
}

func TestClose(t *testing.T) {
	ctx := t.Context()
	tok := softhsmtest.New(t, "T")
	p := newProvider(t, pkcs11.Config{})
	a := generate(t, p, tok.URI("a"))
	b := generate(t, p, tok.URI("b"))
	w, err := a.Wrap(ctx, randBytes(32), nil)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	a.Close()
	_, err = a.Wrap(ctx, randBytes(32), nil)
	wantErr(t, err, pkcs11.ErrClosed)
	// b shares the token: it still works.
	if _, err := b.Wrap(ctx, randBytes(32), nil); err != nil {
		t.Fatal(err)
	}
	b.Close()
	// Every KEK closed: the module was finalised; it opens again.
	a = open(t, p, tok.URI("a"))
	if _, err := a.Unwrap(ctx, w.Ciphertext, nil); err != nil {
		t.Fatal(err)
	}
	p.Close()
	_, err = a.Wrap(ctx, randBytes(32), nil)
	wantErr(t, err, pkcs11.ErrClosed)
	_, err = p.OpenKEK(ctx, tok.URI("a"))
	wantErr(t, err, pkcs11.ErrClosed)

	// A cancelled context stops an operation before it starts.
	p2 := newProvider(t, pkcs11.Config{})
	k := open(t, p2, tok.URI("a"))
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := k.Wrap(cctx, randBytes(32), nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wrap with a cancelled context: %v", err)
	}
}

// The keys kpcrypt makes never leave the token.
func TestKeyAttributes(t *testing.T) {
	tok := softhsmtest.New(t, "T")
	p := newProvider(t, pkcs11.Config{})
	generate(t, p, tok.URI("kek"))
	p.Close()

	c := p11.New(tok.Module)
	defer c.Destroy()
	if err := c.Initialize(); err != nil {
		t.Fatal(err)
	}
	defer c.Finalize()
	slots, _ := c.GetSlotList(true)
	var s p11.SessionHandle
	for _, slot := range slots {
		if ti, _ := c.GetTokenInfo(slot); ti.Label == "T" {
			s, _ = c.OpenSession(slot, p11.CKF_SERIAL_SESSION)
		}
	}
	if err := c.Login(s, p11.CKU_USER, softhsmtest.PIN); err != nil {
		t.Fatal(err)
	}
	c.FindObjectsInit(s, []*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, "kek")})
	hs, _, _ := c.FindObjects(s, 10)
	c.FindObjectsFinal(s)
	if len(hs) != 1 {
		t.Fatalf("%d objects labelled kek", len(hs))
	}
	want := map[uint]bool{p11.CKA_TOKEN: true, p11.CKA_SENSITIVE: true, p11.CKA_EXTRACTABLE: false, p11.CKA_PRIVATE: true,
		p11.CKA_ENCRYPT: true, p11.CKA_DECRYPT: true, p11.CKA_WRAP: true, p11.CKA_UNWRAP: true, p11.CKA_SIGN: false}
	for typ, v := range want {
		attrs, err := c.GetAttributeValue(s, hs[0], []*p11.Attribute{p11.NewAttribute(typ, nil)})
		if err != nil || len(attrs[0].Value) != 1 || (attrs[0].Value[0] == 1) != v {
			t.Errorf("attribute %#x = %v (%v), want %v", typ, attrs, err, v)
		}
	}
	attrs, err := c.GetAttributeValue(s, hs[0], []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE_LEN, nil), p11.NewAttribute(p11.CKA_KEY_TYPE, nil)})
	if err != nil || len(attrs) != 2 || attrs[0].Value[0] != 32 || attrs[1].Value[0] != byte(p11.CKK_AES) {
		t.Errorf("key type and length: %v, %v", attrs, err)
	}
	if _, err := c.GetAttributeValue(s, hs[0], []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)}); err == nil {
		t.Error("the key's value can be read")
	}
}
