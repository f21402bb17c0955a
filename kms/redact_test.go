package kms

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestRedactURI(t *testing.T) {
	for in, want := range map[string]string{
		"pkcs11:token=T;object=k?pin-value=1234":                      "pkcs11:token=T;object=k?pin-value=REDACTED",
		"pkcs11:token=T?module-path=/m.so&pin-value=1234&x=pin-value": "pkcs11:token=T?module-path=/m.so&pin-value=REDACTED&x=pin-value",
		"pkcs11:token=T;pin-value=1234;object=k":                      "pkcs11:token=T;pin-value=REDACTED;object=k",
		"pkcs11:pin-value=1234":                                       "pkcs11:pin-value=REDACTED",
		"pin-value=1234":                                              "pin-value=REDACTED",
		"PKCS11:token=T?PIN-VALUE=1234":                               "PKCS11:token=T?PIN-VALUE=REDACTED",
		"pkcs11:token=T?pin%2Dvalue=1234":                             "pkcs11:token=T?pin%2Dvalue=REDACTED",
		"pkcs11:token=T?%70in-value=1234":                             "pkcs11:token=T?%70in-value=REDACTED",
		"pkcs11:token=T?%2570%69N%2dVaLuE=1234":                       "pkcs11:token=T?%2570%69N%2dVaLuE=REDACTED",
		"pkcs11:token=T?pin-value%3D1234&x=1":                         "pkcs11:token=T?pin-value=REDACTED&x=1",
		"pkcs11:token=T? pin-value =1234":                             "pkcs11:token=T? pin-value =REDACTED",
		// In the query a value runs to the next '&'; in the path, to ';' or '?'.
		"pkcs11:x?pin-value=12;34?56&y=1":                "pkcs11:x?pin-value=REDACTED&y=1",
		"pkcs11:pin-value=12?module-path=/m":             "pkcs11:pin-value=REDACTED?module-path=/m",
		"pkcs11:x?a=1&pin-value=1&pin-value=2":           "pkcs11:x?a=1&pin-value=REDACTED&pin-value=REDACTED",
		"pkcs11:token=T;object=k?pin-source=/p":          "pkcs11:token=T;object=k?pin-source=/p",
		"local:/keys/pin-value=1/kek.json":               "local:/keys/pin-value=1/kek.json",
		"crn:v1:bluemix:public:kms:us-south:a/x:y:key:z": "crn:v1:bluemix:public:kms:us-south:a/x:y:key:z",
		"": "",
	} {
		if got := RedactURI(in); got != want {
			t.Errorf("RedactURI(%q) = %q, want %q", in, got, want)
		}
		if has := HasPINValue(in); has != (in != want) {
			t.Errorf("HasPINValue(%q) = %v", in, has)
		}
	}
}

func TestErrorRedactsPIN(t *testing.T) {
	for _, uri := range []string{
		"pkcs11:token=T;object=k?pin-value=hunter2",
		"PKCS11:token=T;object=k?pin%2Dvalue=hunter2",
		"pkcs11:token=T;PIN-VALUE=hunter2;object=k",
	} {
		err := &Error{Op: "open", URI: uri, Err: ErrNotFound}
		if msg := err.Error(); strings.Contains(msg, "hunter2") || !strings.Contains(msg, "token=T") {
			t.Errorf("Error() = %q", msg)
		}
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("%v does not match ErrNotFound", err)
		}
	}
	if msg := (&Error{Op: "open", Err: ErrInvalidURI}).Error(); msg != "open KEK: "+ErrInvalidURI.Error() {
		t.Errorf("Error() with no URI = %q", msg)
	}
}

func TestResolverUnknownScheme(t *testing.T) {
	r := Resolver{"local": nil, "crn": func(context.Context, string) (KEK, error) { return nil, nil }}
	for uri, want := range map[string]string{
		"PKCS11:token=T?pin-value=hunter2":     `no backend for scheme "PKCS11"`,
		"bogus:\x1b]52;c;aGk=\x07/secret-path": `no backend for scheme "bogus"`,
		"x;pin-value=hunter2:y":                "does not start with a scheme",
		"/no/scheme/secret-path":               "does not start with a scheme",
		"local:/keys/k.json":                   `no backend for scheme "local"`,
	} {
		_, err := r.Open(context.Background(), uri)
		if !errors.Is(err, ErrInvalidURI) {
			t.Fatalf("Open(%q) = %v, want ErrInvalidURI", uri, err)
		}
		var ke *Error
		if !errors.As(err, &ke) || ke.Op != "open" {
			t.Fatalf("Open(%q) = %#v, want an *Error", uri, err)
		}
		msg := err.Error()
		for _, secret := range []string{"hunter2", "secret-path", "\x1b", "token=T"} {
			if strings.Contains(msg, secret) {
				t.Errorf("Open(%q) error %q repeats the URI", uri, msg)
			}
		}
		if !strings.Contains(msg, want) || !strings.Contains(msg, "known schemes: crn") {
			t.Errorf("Open(%q) error %q, want %q and the known schemes", uri, msg, want)
		}
	}
}

// FuzzRedactURI builds URIs holding a pin-value attribute, its name spelt
// in any case and percent-encoding, after any prefix, and checks that the
// PIN never survives RedactURI.
func FuzzRedactURI(f *testing.F) {
	f.Add("pkcs11:token=T;object=k", byte(2), uint64(0), byte(0), "1234", "&module-path=/m.so")
	f.Add("PKCS11:token=T", byte(1), uint64(0xffff_ffff), byte(0), "", "")
	f.Add("pkcs11:x?a=b", byte(3), uint64(0x2a2a_2a2a_2a2a), byte(1), ";?&x", "#frag")
	f.Add("", byte(0), uint64(0x5555_5555_5555), byte(2), "%41", "")
	f.Add("pkcs11:a?pin-value=z", byte(2), uint64(7), byte(3), "\x00", ";pin-value=x")
	f.Fuzz(func(t *testing.T, prefix string, sep byte, spelling uint64, flags byte, tail, suffix string) {
		const marker = "S3CRETPIN"
		name := spell("pin-value", spelling)
		if flags&1 != 0 {
			name = strings.ReplaceAll(name, "%", "%25") // encoded twice
		}
		if flags&4 != 0 {
			name = " " + name + " "
		}
		eq := "="
		if flags&2 != 0 {
			eq = "%3D"
		}
		seps := []string{"", ":", ";", "?", "&"}
		s := seps[int(sep)%len(seps)]
		if s == "" {
			prefix = "" // an attribute at the start
		}
		in := prefix + s + name + eq + marker + tail + suffix
		if strings.Count(in, marker) != 1 {
			t.Skip()
		}
		out := RedactURI(in)
		if strings.Contains(out, marker) {
			t.Fatalf("RedactURI(%q) = %q: the PIN survives", in, out)
		}
		if !HasPINValue(in) {
			t.Fatalf("HasPINValue(%q) = false", in)
		}
		if RedactURI(out) != out {
			t.Fatalf("RedactURI(%q) = %q, which redacts again to %q", in, out, RedactURI(out))
		}
	})
}

// spell writes name with each byte, chosen by two bits of how, in lower
// case, upper case, or percent-encoded with upper or lower hex digits.
func spell(name string, how uint64) string {
	var b strings.Builder
	const hex = "0123456789ABCDEF0123456789abcdef"
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch how >> (2 * i) & 3 {
		case 0:
			b.WriteByte(c)
		case 1:
			b.WriteString(strings.ToUpper(string(c)))
		case 2:
			b.WriteString("%" + string(hex[c>>4]) + string(hex[c&15]))
		case 3:
			b.WriteString("%" + string(hex[16+c>>4]) + string(hex[16+c&15]))
		}
	}
	return b.String()
}
