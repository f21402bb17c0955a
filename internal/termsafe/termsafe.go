// Package termsafe makes text from outside the program (file headers, server
// replies, file names) safe to print on a terminal.
//
// A terminal acts on control characters: ESC and the C1 controls start
// sequences that move the cursor, rewrite lines, set the window title or
// write the clipboard (OSC 52), and CR or LF let one string print lines that
// look like the program's own. Unicode format characters such as the bidi
// overrides make text display in another order than it is stored. [Escape]
// turns every such character into a visible Go-style escape; [JSON] does the
// same inside encoded JSON.
package termsafe

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Unsafe reports whether Escape escapes r: a C0 control (TAB, LF and CR
// included), DEL, a C1 control, a format character (category Cf: the bidi
// marks, embeddings, overrides and isolates, zero-width characters, the byte
// order mark), a line or paragraph separator (U+2028, U+2029), a surrogate
// half or a value beyond [unicode.MaxRune]. Escape also escapes every byte
// that is not valid UTF-8.
func Unsafe(r rune) bool {
	switch {
	case r < 0x20, r == 0x7f, 0x80 <= r && r < 0xa0:
		return true
	case r < 0x80:
		return false
	case r == 0x2028, r == 0x2029, 0xd800 <= r && r < 0xe000, r > unicode.MaxRune:
		return true
	}
	return unicode.In(r, unicode.Cc, unicode.Cf)
}

// Escape returns s with every character [Unsafe] reports escaped as Go
// writes it in a string literal: a byte below U+0080 or a byte that is not
// valid UTF-8 as \xNN (\x1b, \x0a), others as \uNNNN (\u009b, \u202e) or
// \UNNNNNNNN. Everything else, printable non-ASCII letters included, is kept
// as it is, and a string with nothing to escape is returned unchanged.
//
// The result is one line of valid UTF-8 with no control or format character
// in it. It is meant for display, not for parsing back: a backslash is not
// escaped, so the text `\x1b` and an escaped ESC print the same.
func Escape(s string) string {
	i := unsafeIndex(s)
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	b.WriteString(s[:i])
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case !Unsafe(r):
			b.WriteString(s[i : i+n])
		case r < 0x80:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r <= 0xffff:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			fmt.Fprintf(&b, `\U%08x`, r)
		}
		i += n
	}
	return b.String()
}

// unsafeIndex returns the index of the first byte of s that Escape changes,
// or -1.
func unsafeIndex(s string) int {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == 0x7f {
				return i
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 || Unsafe(r) {
			return i
		}
		i += n
	}
	return -1
}

// JSON rewrites encoded JSON so that every character [Unsafe] reports, DEL,
// the C1 controls and the bidi controls among them, is a \u escape, as
// encoding/json already writes the C0 controls. The rewritten JSON decodes to
// the same value. JSON outside a string holds only ASCII and no control
// character but white space, which it keeps; invalid UTF-8 is replaced by
// \ufffd, as encoding/json does.
func JSON(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); {
		c := b[i]
		if c < utf8.RuneSelf && c != 0x7f {
			out = append(out, c)
			i++
			continue
		}
		r, n := utf8.DecodeRune(b[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			out = append(out, `\ufffd`...)
		case !Unsafe(r):
			out = append(out, b[i:i+n]...)
		case r <= 0xffff:
			out = fmt.Appendf(out, `\u%04x`, r)
		default:
			r1, r2 := surrogates(r)
			out = fmt.Appendf(out, `\u%04x\u%04x`, r1, r2)
		}
		i += n
	}
	return out
}

// surrogates returns the UTF-16 surrogate pair of r, above U+FFFF.
func surrogates(r rune) (rune, rune) {
	r -= 0x10000
	return 0xd800 + (r>>10)&0x3ff, 0xdc00 + r&0x3ff
}
