package auth

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t testing.TB, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadAndCheck(t *testing.T) {
	p := writeFile(t, "# comment\n\n  write w-token-1  \r\nread r.token~2==\n\twrite both\nread both\nwrite s3cr3t!:x\n# end")
	tok, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		token string
		want  Scope
	}{
		{"w-token-1", Write},
		{"r.token~2==", Read},
		{"both", Read | Write},
		{"s3cr3t!:x", Write},
		{"", 0},
		{"w-token", 0},
		{"w-token-1x", 0},
		{"W-TOKEN-1", 0},
		{"# comment", 0},
		{"write", 0},
	} {
		if got := tok.Check([]byte(c.token)); got != c.want {
			t.Errorf("Check(%q) = %v, want %v", c.token, got, c.want)
		}
	}
	if r, w := tok.Count(); r != 2 || w != 3 {
		t.Errorf("Count = %d read, %d write; want 2, 3", r, w)
	}
	if !(Read | Write).Has(Read) || Write.Has(Read) || Scope(0).Has(Write) {
		t.Error("Has")
	}
}

func TestLoadErrors(t *testing.T) {
	for _, c := range []struct{ text, want string }{
		{"write a\nadmin b\n", "line 2: unknown scope \"admin\""},
		{"write a b\n", "line 1: want \"write <token>\" or \"read <token>\""},
		{"# x\n\nwrite\n", "line 3:"},
		{"read a\nread t\u00e9\n", "line 2: the token has characters"},
		{"read a\x01b\n", "line 1: the token has characters"},
		{"Write a\n", "line 1: unknown scope \"Write\""},
		{"# only comments\n\n", "no tokens"},
		{"", "no tokens"},
	} {
		_, err := Load(writeFile(t, c.text))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Load(%q) = %v, want an error containing %q", c.text, err, c.want)
		}
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("Load of a missing file: %v", err)
	}
}

// TestReload: a good file replaces the tokens, a bad one keeps the old.
func TestReload(t *testing.T) {
	p := writeFile(t, "write old\n")
	tok, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("write new\nread reader\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := tok.Reload(); err != nil {
		t.Fatal(err)
	}
	if tok.Check([]byte("old")) != 0 || tok.Check([]byte("new")) != Write || tok.Check([]byte("reader")) != Read {
		t.Fatal("reload did not replace the tokens")
	}
	if err := os.WriteFile(p, []byte("write fine\nbogus line here\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := tok.Reload(); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("reload of a bad file: %v", err)
	}
	if tok.Check([]byte("new")) != Write || tok.Check([]byte("fine")) != 0 {
		t.Fatal("a bad reload changed the tokens")
	}
	os.Remove(p)
	if err := tok.Reload(); err == nil || tok.Check([]byte("new")) != Write {
		t.Fatalf("reload of a missing file: %v", err)
	}
}

func TestBearer(t *testing.T) {
	for _, c := range []struct {
		h, tok string
		ok     bool
	}{
		{"Bearer abc", "abc", true},
		{"bearer abc", "abc", true},
		{"BEARER   abc  ", "abc", true},
		{"Bearer ", "", true},
		{"Bearer", "", false},
		{"Basic YWJj", "", false},
		{"", "", false},
		{"Bearerabc", "", false},
	} {
		tok, ok := Bearer([]byte(c.h))
		if string(tok) != c.tok || ok != c.ok {
			t.Errorf("Bearer(%q) = %q, %v; want %q, %v", c.h, tok, ok, c.tok, c.ok)
		}
	}
}

func TestCheckNoAllocs(t *testing.T) {
	tok, err := Load(writeFile(t, "write a\nread b\nwrite c\n"))
	if err != nil {
		t.Fatal(err)
	}
	h := []byte("Bearer c")
	if n := testing.AllocsPerRun(1000, func() {
		b, _ := Bearer(h)
		if tok.Check(b) != Write {
			t.Fatal("Check")
		}
	}); n != 0 {
		t.Fatalf("Bearer+Check allocate %v times", n)
	}
}

func BenchmarkCheck(b *testing.B) {
	tok, err := Load(writeFile(b, "write a\nread b\nwrite c\nread d\n"))
	if err != nil {
		b.Fatal(err)
	}
	token := []byte("d")
	b.ReportAllocs()
	for b.Loop() {
		tok.Check(token)
	}
}
