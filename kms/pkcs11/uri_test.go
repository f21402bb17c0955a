//go:build cgo

package pkcs11

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/kpcrypt/kpcrypt/kms"
)

func TestParseURI(t *testing.T) {
	u, err := ParseURI("pkcs11:token=My%20Token;object=k%3Bx;id=%01%ff;serial=abc;slot-id=42;manufacturer=M;model=X;type=secret-key" +
		"?module-path=/usr/lib/a%20b.so&pin-source=file:///etc/pin")
	if err != nil {
		t.Fatal(err)
	}
	want := URI{Token: "My Token", Object: "k;x", ID: []byte{1, 0xff}, Serial: "abc", SlotID: 42, HasSlotID: true,
		Manufacturer: "M", Model: "X", ModulePath: "/usr/lib/a b.so", PINSource: "file:///etc/pin"}
	if u.Token != want.Token || u.Object != want.Object || !bytes.Equal(u.ID, want.ID) || u.Serial != want.Serial ||
		u.SlotID != want.SlotID || !u.HasSlotID || u.Manufacturer != want.Manufacturer || u.Model != want.Model ||
		u.ModulePath != want.ModulePath || u.PINSource != want.PINSource || u.PINValue != "" {
		t.Fatalf("ParseURI = %+v\nwant %+v", *u, want)
	}
	if u, err := ParseURI("pkcs11:object=k?pin-value=s%3Dcret"); err != nil || u.PINValue != "s=cret" {
		t.Fatalf("pin-value: %+v, %v", u, err)
	}
	if u, err := ParseURI("pkcs11:"); err != nil || u.Object != "" {
		t.Fatalf("empty path: %+v, %v", u, err)
	}
	for _, bad := range []string{
		"pkcs12:object=k", "object=k", "pkcs11:object", "pkcs11:=k", "pkcs11:object=k;;token=T",
		"pkcs11:object=k;id=", "pkcs11:object=k?pin-value=", "pkcs11:object=k?pin-source=",
		"pkcs11:object=k;slot-id=-1", "pkcs11:object=k;library-manufacturer=X",
	} {
		if _, err := ParseURI(bad); !errors.Is(err, kms.ErrInvalidURI) {
			t.Errorf("ParseURI(%q) = %v, want ErrInvalidURI", bad, err)
		}
	}
	// A malformed attribute next to a PIN does not echo the PIN.
	_, err = ParseURI("pkcs11:object=k?pin-value=hunter2&pin-value=hunter2")
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("error %v", err)
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"pkcs11:token=T;object=k?pin-value=1234":                      "pkcs11:token=T;object=k?pin-value=REDACTED",
		"pkcs11:token=T?module-path=/m.so&pin-value=1234&x=pin-value": "pkcs11:token=T?module-path=/m.so&pin-value=REDACTED&x=pin-value",
		"pkcs11:token=T;object=k?pin-source=/p":                       "pkcs11:token=T;object=k?pin-source=/p",
		"pkcs11:token=T;object=k":                                     "pkcs11:token=T;object=k",
		"PKCS11:token=T;object=k?PIN-VALUE=1234":                      "PKCS11:token=T;object=k?PIN-VALUE=REDACTED",
		"pkcs11:token=T;pin-value=1234;object=k":                      "pkcs11:token=T;pin-value=REDACTED;object=k",
		"pkcs11:token=T?pin%2Dvalue=1234":                             "pkcs11:token=T?pin%2Dvalue=REDACTED",
		"pkcs11:token=T?%70in-value=1234":                             "pkcs11:token=T?%70in-value=REDACTED",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestIdentityURI(t *testing.T) {
	if got := identityURI("My Token", "k;x=1", nil); got != "pkcs11:token=My%20Token;object=k%3Bx%3D1" {
		t.Fatalf("identityURI = %q", got)
	}
	if got := identityURI("T", "kek", []byte{0x01, 0xab}); got != "pkcs11:token=T;object=kek;id=%01%AB" {
		t.Fatalf("identityURI = %q", got)
	}
	// It parses back to the same token, object and id.
	u, err := ParseURI(identityURI("a%b/c", "é", []byte("\x00z")))
	if err != nil || u.Token != "a%b/c" || u.Object != "é" || !bytes.Equal(u.ID, []byte("\x00z")) {
		t.Fatalf("round trip: %+v, %v", u, err)
	}
}

func TestVersionOrder(t *testing.T) {
	gen := func(g uint64, tail byte) []byte {
		id, _ := newID(g)
		copy(id[8:], []byte{0, 0, 0, tail})
		return id
	}
	ids := [][]byte{gen(10, 0), gen(2, 9), {0xff, 0xff}, gen(2, 1), {0x01}, gen(1, 0xff)}
	slices.SortFunc(ids, compareIDs)
	want := [][]byte{{0x01}, {0xff, 0xff}, ids[2], ids[3], ids[4], ids[5]}
	if !bytes.Equal(ids[0], want[0]) || !bytes.Equal(ids[1], want[1]) ||
		generation(ids[2]) != 1 || generation(ids[3]) != 2 || ids[3][idLen-1] != 1 || generation(ids[4]) != 2 || generation(ids[5]) != 10 {
		t.Fatalf("order: %x", ids)
	}
	a, _ := newID(7)
	b, _ := newID(7)
	if bytes.Equal(a, b) || generation(a) != 7 || len(version(a)) != 24 {
		t.Fatalf("newID: %x %x", a, b)
	}
}

func TestParseWrapped(t *testing.T) {
	m, id, hdr, body, err := parseWrapped([]byte{1, 2, 0xaa, 0xbb, 9, 9})
	if err != nil || m != AESGCM || !bytes.Equal(id, []byte{0xaa, 0xbb}) || !bytes.Equal(hdr, []byte{1, 2, 0xaa, 0xbb}) || !bytes.Equal(body, []byte{9, 9}) {
		t.Fatalf("parseWrapped: %v %x %x %x %v", m, id, hdr, body, err)
	}
	for _, bad := range [][]byte{nil, {1, 1}, {0, 1, 1, 1}, {4, 1, 1, 1}, {1, 0, 1, 1}, {1, 3, 1, 1, 1}} {
		if _, _, _, _, err := parseWrapped(bad); !errors.Is(err, kms.ErrWrongKey) {
			t.Errorf("parseWrapped(%x) = %v, want ErrWrongKey", bad, err)
		}
	}
}

// TestParseURIErrorsHideInput checks that a parse error repeats no value of
// the URI, and no name that is not a plain one.
func TestParseURIErrorsHideInput(t *testing.T) {
	const v = "V4LUE"
	for _, bad := range []string{
		"pkcs11:object=k;slot-id=" + v,
		"pkcs11:object=k;type=" + v,
		"pkcs11:object=k?module-path=" + v,
		"pkcs11:object=k;" + v,
		"pkcs11:object=k?" + v + "\x1b[2J",
		"pkcs11:object=k?pin-value%3D" + v,
		"pkcs11:object=k?x%3D" + v + "=1",
		"pkcs11:object=k;x\x1b]52;c;" + v + "=1",
		"pkcs11:object=k?pin%2Dvalue=" + v,
		"pkcs11:object=k?PIN-VALUE=" + v,
		"pkcs11:object=k;pin-value=" + v,
		"pkcs11:object=k?pin-value=%zz" + v,
		"pkcs11:object=k?pin-value=" + v + "&pin-value=" + v,
		"pkcs11:object=k;" + strings.Repeat("a", 40) + v + "=1",
		"PKCS11:object=k?pin-value=" + v,
	} {
		_, err := ParseURI(bad)
		if !errors.Is(err, kms.ErrInvalidURI) {
			t.Fatalf("ParseURI(%q) = %v, want ErrInvalidURI", bad, err)
		}
		if msg := err.Error(); strings.Contains(msg, v) || strings.Contains(msg, "\x1b") {
			t.Errorf("ParseURI(%q): error %q repeats the input", bad, msg)
		}
	}
	_, err := ParseURI("pkcs11:object=k;bogus=1")
	if err == nil || !strings.Contains(err.Error(), `"bogus" is not supported`) {
		t.Fatalf("a plain attribute name is named: %v", err)
	}
}
