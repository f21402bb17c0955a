package termsafe

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		"":                         "",
		"plain text, 100% ok ~\\":  "plain text, 100% ok ~\\",
		"Grüße, 日本語, ☃":            "Grüße, 日本語, ☃",
		"\x1b]52;c;aGk=\x07":       `\x1b]52;c;aGk=\x07`,
		"a\r\n  slot 1: x current": `a\x0d\x0a  slot 1: x current`,
		"tab\there":                `tab\x09here`,
		"del\x7f":                  `del\x7f`,
		"csi\u009b2J":              `csi\u009b2J`,
		"\u0085nel":                `\u0085nel`,
		"abc\u202edcba":            `abc\u202edcba`,
		"\u200e\u200f\u2066\u2069": `\u200e\u200f\u2066\u2069`,
		"bom\ufeff zwsp\u200b":     `bom\ufeff zwsp\u200b`,
		"ls\u2028ps\u2029":         `ls\u2028ps\u2029`,
		"tag\U000e0041":            `tag\U000e0041`,
		"bad\xff\xc3(":             `bad\xff\xc3(`,
		"replacement \ufffd stays": "replacement \ufffd stays",
		"\xed\xa0\x80 (surrogate)": `\xed\xa0\x80 (surrogate)`,
	} {
		if got := Escape(in); got != want {
			t.Errorf("Escape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestUnsafe(t *testing.T) {
	for _, r := range []rune{0, '\t', '\n', '\r', 0x1b, 0x7f, 0x80, 0x9b, 0x9f, 0xad, 0x200e, 0x202a, 0x202e, 0x2066, 0x2069, 0xfeff, 0x2028} {
		if !Unsafe(r) {
			t.Errorf("Unsafe(%U) = false", r)
		}
	}
	for _, r := range []rune{' ', 'a', '~', 0xa0, 'é', 0x4e2d, 0xfffd, 0x1f600} {
		if Unsafe(r) {
			t.Errorf("Unsafe(%U) = true", r)
		}
	}
}

func TestJSON(t *testing.T) {
	v := map[string]string{"k\u202e\x7f": "\x1b[2J\u009b\u0085\u2066x\U000e0041é<>", "bad": "\xff"}
	enc, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	out := JSON(enc)
	for _, r := range string(out) {
		if Unsafe(r) {
			t.Fatalf("JSON left %U in %s", r, out)
		}
	}
	if !utf8.Valid(out) || !strings.Contains(string(out), `\u202e`) || !strings.Contains(string(out), `\udb40\udc41`) {
		t.Fatalf("JSON = %s", out)
	}
	var back map[string]string
	if err := json.Unmarshal(out, &back); err != nil {
		t.Fatal(err)
	}
	var want map[string]string
	json.Unmarshal(enc, &want)
	if len(back) != len(want) || back["k\u202e\x7f"] != want["k\u202e\x7f"] || back["bad"] != want["bad"] {
		t.Fatalf("JSON changed the value: %q, want %q", back, want)
	}
	// Pretty-printed JSON keeps its white space.
	indented, _ := json.MarshalIndent(v, "", "\t")
	if got := JSON(indented); strings.Count(string(got), "\n") != strings.Count(string(indented), "\n") {
		t.Fatalf("JSON changed the layout: %s", got)
	}
}

// FuzzEscape checks that Escape's output is valid UTF-8 with no control or
// format character, that it leaves printable ASCII alone, and that it keeps
// every safe character.
func FuzzEscape(f *testing.F) {
	for _, s := range []string{"", "hello", "\x1b]52;c;SGVsbG8=\x07", "a\r\nb", "\u009b31m", "x\u202ey", "\xff\xfe", "é☃\U0001f600", "\u2066\u2069"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := Escape(s)
		if !utf8.ValidString(out) {
			t.Fatalf("Escape(%q) = %q: not valid UTF-8", s, out)
		}
		for _, r := range out {
			if Unsafe(r) || unicode.In(r, unicode.Cc, unicode.Cf) {
				t.Fatalf("Escape(%q) = %q holds %U", s, out, r)
			}
		}
		printableASCII := true
		for i := 0; i < len(s); i++ {
			if s[i] < 0x20 || s[i] > 0x7e {
				printableASCII = false
			}
		}
		if printableASCII && out != s {
			t.Fatalf("Escape(%q) = %q, want it unchanged", s, out)
		}
		// Every safe character is kept, in order.
		var kept []rune
		for i := 0; i < len(s); {
			r, n := utf8.DecodeRuneInString(s[i:])
			if !(r == utf8.RuneError && n == 1) && !Unsafe(r) {
				kept = append(kept, r)
			}
			i += n
		}
		rest := out
		for _, r := range kept {
			j := strings.IndexRune(rest, r)
			if j < 0 {
				t.Fatalf("Escape(%q) = %q lost %U", s, out, r)
			}
			rest = rest[j+utf8.RuneLen(r):]
		}
	})
}
