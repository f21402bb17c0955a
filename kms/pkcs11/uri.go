package pkcs11

import (
	"encoding/hex"
	"fmt"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kpcrypt/kpcrypt/kms"
)

// Scheme is the URI scheme of PKCS#11 KEKs.
const Scheme = "pkcs11"

// URI is a parsed PKCS#11 URI (RFC 7512) naming a KEK: the path attributes
// select a token and a key object in it, the query attributes say how to
// reach it (the module to load, the PIN). Only the path attributes are
// identity; see [KEK.URI].
type URI struct {
	// Token is the token label ("token").
	Token string
	// Manufacturer and Model match the token's manufacturer ID and model
	// ("manufacturer", "model").
	Manufacturer, Model string
	// Serial is the token's serial number ("serial").
	Serial string
	// SlotID is the slot's ID ("slot-id"), valid when HasSlotID is set.
	SlotID    uint
	HasSlotID bool
	// Object is the key's label, CKA_LABEL ("object"). Every version of a
	// KEK has this label.
	Object string
	// ID is a CKA_ID ("id"); when set, the KEK is that one key object: a
	// single version, which does not rotate.
	ID []byte

	// ModulePath is the absolute path of the PKCS#11 module to load
	// ("module-path" query attribute).
	ModulePath string
	// PINSource is a file holding the user PIN ("pin-source": a path or a
	// file: URI).
	PINSource string
	// PINValue is the user PIN itself ("pin-value"). It is never shown: not
	// in errors, not in any URI the package returns.
	PINValue string
}

// ParseURI parses a PKCS#11 URI of RFC 7512's form:
//
//	pkcs11:token=TOKEN;object=LABEL[;id=%01%02][;serial=S][;slot-id=N]
//	      [?module-path=/path/to/module.so][&pin-source=FILE | &pin-value=PIN]
//
// Values are percent-decoded. Attributes kpcrypt does not implement, and
// repeated ones, are refused rather than ignored, since ignoring one could
// select another key than the one meant. An error says what is wrong
// without repeating the input: no value, so no PIN, and an attribute's name
// only when it is a plain one. Errors match [kms.ErrInvalidURI].
func ParseURI(s string) (*URI, error) {
	bad := func(format string, args ...any) (*URI, error) {
		return nil, fmt.Errorf("%w: %s", kms.ErrInvalidURI, fmt.Sprintf(format, args...))
	}
	rest, ok := strings.CutPrefix(s, Scheme+":")
	if !ok {
		return bad("a PKCS#11 URI starts with %q", Scheme+":")
	}
	path, query, _ := strings.Cut(rest, "?")
	u := &URI{}
	seen := map[string]bool{}
	attr := func(part, sep string, n int) (name, value string, err error) {
		where := "path"
		if sep == "?" {
			where = "query"
		}
		name, raw, ok := strings.Cut(part, "=")
		if !ok || name == "" {
			return "", "", fmt.Errorf("%w: %s attribute %d is not name=value", kms.ErrInvalidURI, where, n)
		}
		if seen[sep+name] {
			return "", "", fmt.Errorf("%w: %s attribute %s given twice", kms.ErrInvalidURI, where, showName(name))
		}
		seen[sep+name] = true
		v, err := url.PathUnescape(raw)
		if err != nil {
			return "", "", fmt.Errorf("%w: %s attribute %s has a malformed percent-encoding", kms.ErrInvalidURI, where, showName(name))
		}
		return name, v, nil
	}
	if path != "" {
		n := 0
		for part := range strings.SplitSeq(path, ";") {
			n++
			name, v, err := attr(part, ";", n)
			if err != nil {
				return nil, err
			}
			switch name {
			case "token":
				u.Token = v
			case "manufacturer":
				u.Manufacturer = v
			case "model":
				u.Model = v
			case "serial":
				u.Serial = v
			case "slot-id":
				n, err := strconv.ParseUint(v, 10, 0)
				if err != nil {
					return bad("slot-id is not a decimal number")
				}
				u.SlotID, u.HasSlotID = uint(n), true
			case "object":
				u.Object = v
			case "id":
				if v == "" {
					return bad("id is empty")
				}
				if len(v) > 255 {
					return bad("id is over 255 bytes")
				}
				u.ID = []byte(v)
			case "type":
				if v != "secret-key" {
					return bad("type is not secret-key: a KEK is a secret key")
				}
			default:
				return bad("path attribute %s is not supported (token, manufacturer, model, serial, slot-id, object, id, type are)", showName(name))
			}
		}
	}
	if query != "" {
		n := 0
		for part := range strings.SplitSeq(query, "&") {
			n++
			name, v, err := attr(part, "?", n)
			if err != nil {
				return nil, err
			}
			switch name {
			case "module-path":
				if !filepath.IsAbs(v) {
					return bad("module-path is not an absolute path")
				}
				u.ModulePath = v
			case "pin-source":
				if v == "" {
					return bad("pin-source is empty")
				}
				u.PINSource = v
			case "pin-value":
				if v == "" {
					return bad("pin-value is empty")
				}
				u.PINValue = v
			default:
				return bad("query attribute %s is not supported (module-path, pin-source, pin-value are)", showName(name))
			}
		}
	}
	if u.PINSource != "" && u.PINValue != "" {
		return bad("give pin-source or pin-value, not both")
	}
	return u, nil
}

// Redact returns a URI with the value of any pin-value attribute replaced
// by "REDACTED", for error messages: it is [kms.RedactURI], which finds the
// attribute in the path or the query, in any case and percent-encoding of
// its name. It works on malformed URIs too.
func Redact(s string) string { return kms.RedactURI(s) }

// showName returns an attribute's name quoted for an error message, if it
// is a plain name (up to 32 letters, digits, '-', '_' or '.'), as every
// attribute of RFC 7512 is. Another name, one that could hide a value
// behind a percent-encoded '=', is described, not shown.
func showName(name string) string {
	if len(name) > 32 {
		return "(a name over 32 bytes)"
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return "(a name with other characters than letters, digits, '-', '_' and '.')"
		}
	}
	return strconv.Quote(name)
}

// identityURI is the URI a KEK records in file headers: the token's label,
// the key's label and, for a KEK pinned to one key object, its CKA_ID.
func identityURI(token, object string, id []byte) string {
	s := Scheme + ":token=" + escape(token) + ";object=" + escape(object)
	if id != nil {
		s += ";id=" + escapeAll(id)
	}
	return s
}

// escape percent-encodes every byte but RFC 3986's unreserved characters,
// so that one label has one spelling.
func escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// escapeAll percent-encodes every byte, the usual spelling of a CKA_ID.
func escapeAll(id []byte) string {
	var b strings.Builder
	for _, c := range id {
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// version is a key version's name: its CKA_ID in lowercase hex.
func version(id []byte) string { return hex.EncodeToString(id) }
