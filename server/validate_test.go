package server

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/valyala/fastjson"
)

func TestJSONNumber(t *testing.T) {
	for _, n := range []string{"0", "-0", "7", "-12", "10.25", "0.5", "1e5", "1E+2", "-0.5e-3", "123456789012345678901234567890"} {
		if !jsonNumber([]byte(n)) {
			t.Errorf("jsonNumber(%q) = false, want true", n)
		}
	}
	for _, n := range []string{"", "-", "+1", "01", "-01", "1.", ".5", "1e", "1e+", "1e5e5", "1.5.5", "NaN", "nan", "Inf", "-inf", "0x1", "--1", "1 ", " 1"} {
		if jsonNumber([]byte(n)) {
			t.Errorf("jsonNumber(%q) = true, want false", n)
		}
	}
}

// FuzzJSONNumber checks jsonNumber against encoding/json.
func FuzzJSONNumber(f *testing.F) {
	for _, seed := range []string{"0", "-0.5e-3", "01", "1.", "NaN", "1e+", "+1"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var n json.Number
		want := json.Unmarshal([]byte(s), &n) == nil && string(n) == s
		if got := jsonNumber([]byte(s)); got != want {
			t.Fatalf("jsonNumber(%q) = %v, encoding/json says %v", s, got, want)
		}
	})
}

// TestScanText checks the word-at-a-time scan against a byte loop, with
// each special byte at every position of inputs up to 40 bytes long.
func TestScanText(t *testing.T) {
	slow := func(b []byte) (plain, ascii bool) {
		plain, ascii = true, true
		for _, c := range b {
			plain = plain && c >= 0x20 && c != '\\'
			ascii = ascii && c < 0x80
		}
		return plain, ascii
	}
	specials := []byte{0x00, 0x01, '\t', '\n', 0x1f, '\\'}
	others := []byte{' ', '"', 'a', 0x7f, 0x80, 0xc3, 0xff, 0x5b, 0x5d, 0x21}
	for n := 0; n <= 40; n++ {
		for _, o := range others {
			b := []byte(strings.Repeat(string(o), n))
			if plain, ascii := scanText(b); !plain || ascii != (o < 0x80 || n == 0) {
				t.Fatalf("scanText(%q) = %v, %v", b, plain, ascii)
			}
			for i := 0; i < n; i++ {
				for _, c := range append(specials, others...) {
					b2 := append([]byte(nil), b...)
					b2[i] = c
					plain, ascii := scanText(b2)
					if wantPlain, wantASCII := slow(b2); plain != wantPlain || ascii != wantASCII {
						t.Fatalf("scanText(%q) = %v, %v, want %v, %v", b2, plain, ascii, wantPlain, wantASCII)
					}
				}
			}
		}
	}
}

func TestShortInt(t *testing.T) {
	for n, want := range map[string]bool{
		"0": true, "-7": true, "123456789012345678": true, "-123456789012345678": true,
		"1234567890123456789": false, "1.5": false, "1e3": false,
	} {
		if got := shortInt([]byte(n)); got != want {
			t.Errorf("shortInt(%q) = %v, want %v", n, got, want)
		}
	}
}

// FuzzValidateUsageStrict checks the fast path against fastjson's
// validator: validateUsage calls a body a syntax error exactly when the
// validator refuses it, or when it nests deeper than fastjson's parser goes
// (fastjson.MaxDepth; its validator has no limit).
func FuzzValidateUsageStrict(f *testing.F) {
	for _, seed := range []string{
		sample,
		`{"patientId":1,"timestamp":NaN,"medication":"m"}`,
		`{"patientId":1,"timestamp":"t","medication":"m","x":[01]}`,
		`{"patientId":1,"timestamp":"t","medication":"m","x":-}`,
		"{\"patientId\":1,\"timestamp\":\"a\tb\",\"medication\":\"m\"}",
		`{"patientId":"\u00e9","timestamp":"t","medication":"\x"}`,
		`{"patientId":1,"timestamp":1.5e+3,"medication":"m","n":null,"t":true}`,
		`{"patientId":1,"timestamp":"t","medication":"m","x":` + strings.Repeat("[", 301) + strings.Repeat("]", 301) + `}`,
	} {
		f.Add([]byte(seed))
	}
	var p usageParser
	var deep fastjson.Parser
	f.Fuzz(func(t *testing.T, body []byte) {
		_, bad := validateUsage(&p, body)
		syntax := string(bad) == string(errSyntax) || string(bad) == string(errTrailing)
		b := bytes.TrimSpace(body)
		if len(b) == 0 || !utf8.Valid(b) {
			return
		}
		refused := fastjson.ValidateBytes(b) != nil
		if _, err := deep.ParseBytes(b); err != nil && strings.Contains(err.Error(), "too big depth") {
			refused = true
		}
		if refused != syntax {
			t.Fatalf("validateUsage(%q) = %s; fastjson's validator refuses it: %v", body, bad, refused)
		}
	})
}
