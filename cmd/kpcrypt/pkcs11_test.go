//go:build cgo

package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kpcrypt/kpcrypt/kms/pkcs11"
	"github.com/kpcrypt/kpcrypt/kms/pkcs11/softhsmtest"
)

// noPIN fails if a command's output holds a PIN.
func noPIN(t *testing.T, r result, pins ...string) {
	t.Helper()
	for _, pin := range append(pins, softhsmtest.PIN, softhsmtest.SOPIN) {
		if bytes.Contains(r.stderr, []byte(pin)) || bytes.Contains(r.stdout, []byte(pin)) {
			t.Fatalf("output holds a PIN: %s", r.stderr)
		}
	}
}

// TestPKCS11 runs kpcrypt against a SoftHSM2 token, named on the command
// line as a user would: keygen, encrypt, decrypt, rotation and rewrap.
func TestPKCS11(t *testing.T) {
	tok := softhsmtest.New(t, "T")
	dir, pt := setup(t, 150_000)
	uri := tok.URI("kek")
	const id = "pkcs11:token=T;object=kek"

	r := kp(t, dir, nil, "keygen", "--pkcs11", uri)
	r.expect(t, 0, "created "+id+" (key version ", "wraps with CKM_AES_GCM")
	if got := strings.TrimSpace(string(r.stdout)); got != id {
		t.Fatalf("keygen --pkcs11 printed %q, want %q", got, id)
	}
	kp(t, dir, nil, "keygen", "--pkcs11", uri).expect(t, 1, "a key with this label exists")

	kp(t, dir, nil, "encrypt", "--kek", uri, "--kek", "local:kek.json", "-o", "f.kpc", "plain.bin").expect(t, 0)
	slots := slotsOf(t, dir, "f.kpc")
	v1 := slots[0][1]
	if len(slots) != 2 || slots[0][0] != id || len(v1) != 24 {
		t.Fatalf("slots %v, want %s first, with a version", slots, id)
	}
	ct := readFile(t, filepath.Join(dir, "f.kpc"))
	for _, s := range []string{tok.Module, tok.PINFile, "module-path", "pin-source"} {
		if bytes.Contains(ct, []byte(s)) {
			t.Fatalf("the file holds %q", s)
		}
	}

	kp(t, dir, nil, "decrypt", "--kek", uri, "-o", "out1", "f.kpc").expect(t, 0)
	if !bytes.Equal(readFile(t, filepath.Join(dir, "out1")), pt) {
		t.Fatal("decrypted file differs")
	}

	// Rotation: the file stays at v1 and still opens; rewrap moves it.
	r = kp(t, dir, nil, "keygen", "--rotate-pkcs11", uri)
	r.expect(t, 0, "rotated "+id+": key version ", "is now current (2 versions)")
	v2 := strings.TrimSpace(string(r.stdout))
	if len(v2) != 24 || v2 == v1 || v2 < v1 {
		t.Fatalf("rotation made version %q after %q", v2, v1)
	}
	kp(t, dir, nil, "decrypt", "--kek", uri, "-o", "out2", "f.kpc").expect(t, 0)
	if !bytes.Equal(readFile(t, filepath.Join(dir, "out2")), pt) {
		t.Fatal("decrypted file differs after rotation")
	}
	r = kp(t, dir, nil, "rewrap", "--kek", uri, "--kek", "local:kek.json", "f.kpc")
	r.expect(t, 0, "1 rewrapped, 0 already current, 0 failed")
	// The local slot was current already: only the pkcs11 slot moved.
	if want := "rewrapped f.kpc: " + id + " " + v1 + " → " + v2 + " (client-side)\n"; !strings.Contains(string(r.stdout), want) {
		t.Fatalf("rewrap printed %q, want %q", r.stdout, want)
	}
	if s := slotsOf(t, dir, "f.kpc"); s[0] != [2]string{id, v2} {
		t.Fatalf("after rewrap the slot is %v, want %s at %s", s[0], id, v2)
	}
	kp(t, dir, nil, "rewrap", "--kek", uri, "--kek", "local:kek.json", "f.kpc").expect(t, 0, "0 rewrapped, 1 already current")
	// With only the pkcs11 --kek, the local slot is not checked: exit 1.
	if r := kp(t, dir, nil, "rewrap", "--kek", uri, "f.kpc"); r.code != 1 || !strings.Contains(string(r.stderr), "slot 1 (local:kek.json) not checked") ||
		!strings.Contains(string(r.stderr), "0 rewrapped, 0 already current, 0 failed, 1 with slots not checked") {
		t.Fatalf("rewrap with a slot not checked: exit %d\n%s", r.code, r.stderr)
	}
	kp(t, dir, nil, "decrypt", "--kek", uri, "-o", "out3", "f.kpc").expect(t, 0)
	if !bytes.Equal(readFile(t, filepath.Join(dir, "out3")), pt) {
		t.Fatal("decrypted file differs after rewrap")
	}

	// Module and PIN from the environment; a file: pin-source.
	t.Setenv(pkcs11.EnvModule, tok.Module)
	t.Setenv(pkcs11.EnvPIN, softhsmtest.PIN)
	r = kp(t, dir, ct, "decrypt", "--kek", id)
	r.expect(t, 0)
	if !bytes.Equal(r.stdout, pt) {
		t.Fatal("decrypt with the module and PIN from the environment differs")
	}

	// A pkcs11: slot is never opened from the header, even with the module
	// and the PIN in the environment: without --kek only the local slot
	// can open the file, and with the local key away nothing can.
	os.Rename(filepath.Join(dir, "kek.json"), filepath.Join(dir, "away.json"))
	kp(t, dir, nil, "decrypt", "-o", "out0", "f.kpc").expect(t, 1, "no KEK named by the file can open any of this file's 2 key slots", id, "a file may not choose a PKCS#11 module")
	mustNotExist(t, filepath.Join(dir, "out0"))

	// Listed in the trust configuration with its module and PIN source,
	// the token opens without --kek, through the configured URI.
	t.Setenv(pkcs11.EnvModule, "")
	t.Setenv(pkcs11.EnvPIN, "")
	trustFile := writeTrust(t, fmt.Sprintf(`{"pkcs11_keys": [%q]}`, id+"?module-path="+tok.Module+"&pin-source="+tok.PINFile))
	r = kpEnv(t, dir, append(os.Environ(), "KPCRYPT_TRUST_FILE="+trustFile), nil, "decrypt", "f.kpc")
	r.expect(t, 0)
	if !bytes.Equal(r.stdout, pt) {
		t.Fatal("decrypt through the trust configuration differs")
	}

	t.Setenv(pkcs11.EnvPIN, "")
	kp(t, dir, nil, "decrypt", "--kek", id+"?pin-source=file://"+tok.PINFile, "-o", "out4", "f.kpc").expect(t, 0)
}

func TestPKCS11Errors(t *testing.T) {
	tok := softhsmtest.New(t, "T")
	dir, _ := setup(t, 1000)
	uri := tok.URI("kek")
	kp(t, dir, nil, "keygen", "--pkcs11", uri).expect(t, 0)
	kp(t, dir, nil, "encrypt", "--kek", uri, "-o", "f.kpc", "plain.bin").expect(t, 0)
	q := "?module-path=" + tok.Module + "&pin-source=" + tok.PINFile

	// A wrong PIN: one line naming the cause, no PIN in it.
	const wrong = "kp-wrong-1357"
	os.WriteFile(filepath.Join(dir, "bad-pin"), []byte(wrong+"\n"), 0o600)
	bad := "pkcs11:token=T;object=kek?module-path=" + tok.Module + "&pin-source=bad-pin"
	r := kp(t, dir, nil, "decrypt", "--kek", bad, "-o", "out", "f.kpc")
	r.expect(t, 1, "permission denied", "wrong PIN", "CKR_PIN_INCORRECT")
	noPIN(t, r, wrong)
	mustNotExist(t, filepath.Join(dir, "out"))
	r = kp(t, dir, nil, "keygen", "--rotate-pkcs11", bad)
	r.expect(t, 1, "wrong PIN")
	noPIN(t, r, wrong)

	// No PIN on the command line.
	r = kp(t, dir, nil, "encrypt", "--kek", "pkcs11:token=T;object=kek?module-path="+tok.Module+"&pin-value="+wrong, "-o", "g.kpc", "plain.bin")
	r.expect(t, 1, "pin-value=REDACTED", "use pin-source=FILE or set "+pkcs11.EnvPIN)
	noPIN(t, r, wrong)
	mustNotExist(t, filepath.Join(dir, "g.kpc"))
	r = kp(t, dir, nil, "keygen", "--pkcs11", "pkcs11:token=T;object=new?module-path="+tok.Module+"&pin-value="+wrong)
	r.expect(t, 1, "pin-value=REDACTED")
	noPIN(t, r, wrong)

	kp(t, dir, nil, "encrypt", "--kek", "pkcs11:token=Nope;object=kek"+q, "-o", "g.kpc", "plain.bin").
		expect(t, 1, "KEK not found", `no token matches token="Nope"`)
	kp(t, dir, nil, "encrypt", "--kek", "pkcs11:token=T;object=nokey"+q, "-o", "g.kpc", "plain.bin").
		expect(t, 1, "KEK not found", `no AES key labelled "nokey" in token "T"`)
	kp(t, dir, nil, "keygen", "--rotate-pkcs11", "pkcs11:token=T;object=nokey"+q).expect(t, 1, "KEK not found")
	kp(t, dir, nil, "encrypt", "--kek", "pkcs11:token=T;object=kek?module-path=/nonexistent/lib.so", "-o", "g.kpc", "plain.bin").
		expect(t, 1, "cannot load PKCS#11 module /nonexistent/lib.so")
	kp(t, dir, nil, "encrypt", "--kek", "pkcs11:token=T;object=kek;bogus=1"+q, "-o", "g.kpc", "plain.bin").
		expect(t, 1, "invalid KEK URI", `"bogus" is not supported`)
	mustNotExist(t, filepath.Join(dir, "g.kpc"))

	// Another KEK of the token does not open the file.
	kp(t, dir, nil, "keygen", "--pkcs11", tok.URI("other")).expect(t, 0)
	kp(t, dir, nil, "decrypt", "--kek", tok.URI("other"), "-o", "out", "f.kpc").
		expect(t, 1, "no --kek can open any of this file's 1 key slot", "wrong key")
	mustNotExist(t, filepath.Join(dir, "out"))

	kp(t, dir, nil, "keygen", "--pkcs11", uri, "-o", "x.json").expect(t, 2, "either -o PATH or --rotate PATH")
}
