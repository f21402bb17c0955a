package kms

import "strings"

// Redacted replaces a secret attribute's value in the URIs [RedactURI]
// returns.
const Redacted = "REDACTED"

// RedactURI returns uri with the value of every pin-value attribute replaced
// by [Redacted], so that the URI can be shown in an error or a log. It works
// on any string, malformed URIs included, and errs on the side of hiding:
//
//   - an attribute starts at the beginning of uri or after any ':', ';',
//     '?' or '&', in the path as in the query;
//   - its name is matched in any case, around spaces, and through any
//     percent-encoding, repeated or not ("PIN-VALUE", "pin%2Dvalue",
//     "%70in-value"); an attribute whose '=' is itself percent-encoded
//     ("pin-value%3D1234") is replaced whole;
//   - its value ends where RFC 7512 ends it: at the next '&' in the query
//     (after the first '?'), at the next ';' or '?' in the path.
//
// The name keeps its spelling: "PKCS11:x?PIN-VALUE=1234" becomes
// "PKCS11:x?PIN-VALUE=REDACTED". A string without a pin-value attribute is
// returned unchanged.
func RedactURI(uri string) string {
	s, _ := redactPIN(uri)
	return s
}

// HasPINValue reports whether uri holds a pin-value attribute, in any of the
// spellings [RedactURI] recognises. A program that takes secrets only from
// files or the environment refuses such a URI.
func HasPINValue(uri string) bool {
	_, found := redactPIN(uri)
	return found
}

// maxName bounds the attribute names redactPIN decodes, spaces and
// percent-encoding included, so that its work stays linear in the input.
const maxName = 256

// redactPIN does RedactURI's work and reports whether it found a pin-value
// attribute.
func redactPIN(s string) (string, bool) {
	const starts = ":;?&" // an attribute starts after one of these
	query := strings.IndexByte(s, '?')
	var b strings.Builder
	found := false
	done := 0 // s[:done] is written to b
	for i := 0; ; {
		// An attribute starts at i. Its value ends at the next '&' in the
		// query, at the next ';' or '?' in the path.
		ends := ";?"
		if query >= 0 && i > query {
			ends = "&"
		}
		head := s[i:min(i+maxName, len(s))]
		if j := strings.IndexAny(head, ends); j >= 0 {
			head = head[:j]
		}
		next := i
		var keep int // of s[i:], kept before the value
		match := false
		if eq := strings.IndexByte(head, '='); eq >= 0 && isPINValueName(head[:eq]) {
			keep, match = eq+1, true
		} else if isPINValueAttr(head) {
			match = true
		}
		if match {
			end := len(s)
			if j := strings.IndexAny(s[i:], ends); j >= 0 {
				end = i + j
			}
			b.WriteString(s[done : i+keep])
			if keep == 0 {
				b.WriteString("pin-value=")
			}
			b.WriteString(Redacted)
			found, done, next = true, end, end
		}
		j := strings.IndexAny(s[next:], starts)
		if j < 0 {
			break
		}
		i = next + j + 1
	}
	if !found {
		return s, false
	}
	b.WriteString(s[done:])
	return b.String(), true
}

// isPINValueName reports whether name, an attribute's name as written, is
// "pin-value".
func isPINValueName(name string) bool {
	return strings.EqualFold(strings.TrimSpace(unescapeAll(name)), "pin-value")
}

// isPINValueAttr reports whether head, the start of an attribute, is
// "pin-value=…" once its percent-encoding is undone: its '=' may be encoded
// too.
func isPINValueAttr(head string) bool {
	name, _, ok := strings.Cut(unescapeAll(head), "=")
	return ok && strings.EqualFold(strings.TrimSpace(name), "pin-value")
}

// unescapeAll undoes percent-encoding, leniently (a '%' not followed by two
// hex digits stays), until nothing is left to undo.
func unescapeAll(s string) string {
	for strings.IndexByte(s, '%') >= 0 {
		var b strings.Builder
		for i := 0; i < len(s); i++ {
			if s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
				b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
				i += 2
				continue
			}
			b.WriteByte(s[i])
		}
		if b.Len() == len(s) {
			break
		}
		s = b.String()
	}
	return s
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}
