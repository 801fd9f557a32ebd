package server

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/valyala/fastjson"

	"github.com/busyapi/busyapi/auth"
)

// testTokens writes a tokens file and loads it.
func testTokens(t testing.TB, text string) (*auth.Tokens, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	tok, err := auth.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	return tok, p
}

type answer struct {
	status int
	header http.Header
	body   string
}

// do sends one request with net/http, with a bearer token unless token is
// empty, and returns the answer.
func do(t *testing.T, c *http.Client, method, url, token, body string) answer {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{resp.StatusCode, resp.Header, string(b)}
}

func (a answer) jsonError(t *testing.T) string {
	t.Helper()
	if ct := a.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("error Content-Type %q: %s", ct, a.body)
	}
	msg := fastjson.GetString([]byte(a.body), "error")
	if msg == "" {
		t.Fatalf("not a JSON error: %q", a.body)
	}
	return msg
}

// TestTokens checks every scope through the real HTTP stack (loopback TCP):
// 401 with a Bearer challenge without a token or with an unknown one, 403
// for a token of the wrong scope, and the open endpoints.
func TestTokens(t *testing.T) {
	tokens, path := testTokens(t, "# test tokens\nwrite w-1\nread r-1\nwrite both\nread both\n")
	s := newTestServer(t, Config{DataDir: t.TempDir(), Tokens: tokens})
	base := "http://" + startTCP(t, s)
	c := &http.Client{}

	// Writes.
	a := do(t, c, "POST", base+"/api/usages", "", sample)
	if a.status != 401 || a.header.Get("WWW-Authenticate") != "Bearer" || !strings.Contains(a.jsonError(t), "write token") {
		t.Fatalf("POST without a token: %d %q %s", a.status, a.header.Get("WWW-Authenticate"), a.body)
	}
	a = do(t, c, "POST", base+"/api/usages", "nope", sample)
	if a.status != 401 || a.header.Get("WWW-Authenticate") != `Bearer error="invalid_token"` {
		t.Fatalf("POST with an unknown token: %d %q %s", a.status, a.header.Get("WWW-Authenticate"), a.body)
	}
	a.jsonError(t)
	a = do(t, c, "POST", base+"/api/usages", "r-1", sample)
	if a.status != 403 || !strings.Contains(a.header.Get("WWW-Authenticate"), `error="insufficient_scope"`) || !strings.Contains(a.jsonError(t), "write token") {
		t.Fatalf("POST with a read token: %d %q %s", a.status, a.header.Get("WWW-Authenticate"), a.body)
	}
	for _, tok := range []string{"w-1", "both"} {
		if a = do(t, c, "POST", base+"/api/usages", tok, sample); a.status != 201 {
			t.Fatalf("POST with token %s: %d %s", tok, a.status, a.body)
		}
	}
	loc := a.header.Get("Location")
	// Any POST under /api/ needs a write token, including routes other
	// branches add (/api/usages/batch) and unknown ones.
	for _, p := range []string{"/api/usages/batch", "/api/nothing"} {
		if a = do(t, c, "POST", base+p, "", sample); a.status != 401 {
			t.Fatalf("POST %s without a token: %d", p, a.status)
		}
		if a = do(t, c, "POST", base+p, "r-1", sample); a.status != 403 {
			t.Fatalf("POST %s with a read token: %d", p, a.status)
		}
		if a = do(t, c, "POST", base+p, "w-1", sample); a.status == 401 || a.status == 403 {
			t.Fatalf("POST %s with a write token: %d", p, a.status)
		}
	}

	// Reads.
	for _, p := range []string{loc, "/api/usages/export", "/metrics"} {
		for _, m := range []string{"GET", "HEAD"} {
			a = do(t, c, m, base+p, "", "")
			if a.status != 401 || a.header.Get("WWW-Authenticate") != "Bearer" {
				t.Fatalf("%s %s without a token: %d %q", m, p, a.status, a.header.Get("WWW-Authenticate"))
			}
			if a = do(t, c, m, base+p, "bad", ""); a.status != 401 || a.header.Get("WWW-Authenticate") != `Bearer error="invalid_token"` {
				t.Fatalf("%s %s with an unknown token: %d %q", m, p, a.status, a.header.Get("WWW-Authenticate"))
			}
			if a = do(t, c, m, base+p, "w-1", ""); a.status != 403 {
				t.Fatalf("%s %s with a write token: %d, want 403 (write does not imply read)", m, p, a.status)
			}
		}
	}
	if a = do(t, c, "GET", base+loc, "r-1", ""); a.status != 200 || !strings.Contains(a.body, `"patientId":100`) {
		t.Fatalf("GET %s with a read token: %d %s", loc, a.status, a.body)
	}
	if a = do(t, c, "HEAD", base+loc, "both", ""); a.status != 200 {
		t.Fatalf("HEAD %s: %d", loc, a.status)
	}
	if a = do(t, c, "GET", base+"/api/usages/export", "r-1", ""); a.status != 200 || a.header.Get("X-Export-Count") != "2" {
		t.Fatalf("export with a read token: %d %v %s", a.status, a.header, a.body)
	}
	if a = do(t, c, "GET", base+"/metrics", "r-1", ""); a.status == 401 || a.status == 403 {
		t.Fatalf("/metrics with a read token: %d", a.status)
	}
	if a = do(t, c, "GET", base+"/api/nothing", "", ""); a.status != 401 {
		t.Fatalf("GET of an unknown /api/ path without a token: %d, want 401", a.status)
	}

	// Open paths.
	for _, p := range []string{"/", "/healthz", "/readyz"} {
		if a = do(t, c, "GET", base+p, "", ""); a.status != 200 {
			t.Fatalf("GET %s without a token: %d %s", p, a.status, a.body)
		}
	}
	if a = do(t, c, "OPTIONS", base+"/api/usages", "", ""); a.status != 204 {
		t.Fatalf("OPTIONS without a token: %d", a.status)
	}
	// The scheme name is case-insensitive.
	req, _ := http.NewRequest("POST", base+"/api/usages", strings.NewReader(sample))
	req.Header.Set("Authorization", "bearer w-1")
	if resp, err := c.Do(req); err != nil || resp.StatusCode != 201 {
		t.Fatalf("lower-case bearer: %v %v", err, resp)
	} else {
		resp.Body.Close()
	}
	// Basic credentials are not a bearer token.
	req, _ = http.NewRequest("POST", base+"/api/usages", strings.NewReader(sample))
	req.SetBasicAuth("w-1", "w-1")
	if resp, err := c.Do(req); err != nil || resp.StatusCode != 401 {
		t.Fatalf("basic auth: %v %v", err, resp)
	} else {
		resp.Body.Close()
	}

	// A reload takes effect on the next request; a bad file keeps the old
	// tokens.
	if err := os.WriteFile(path, []byte("write w-2\nread r-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := tokens.Reload(); err != nil {
		t.Fatal(err)
	}
	if a = do(t, c, "POST", base+"/api/usages", "w-1", sample); a.status != 401 {
		t.Fatalf("revoked token: %d", a.status)
	}
	if a = do(t, c, "POST", base+"/api/usages", "w-2", sample); a.status != 201 {
		t.Fatalf("new token: %d", a.status)
	}
	if err := os.WriteFile(path, []byte("writ w-3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := tokens.Reload(); err == nil {
		t.Fatal("a bad tokens file reloaded")
	}
	if a = do(t, c, "POST", base+"/api/usages", "w-2", sample); a.status != 201 {
		t.Fatalf("token after a bad reload: %d", a.status)
	}

	var st Stats
	s.UpdateStats(&st)
	if st.Rejected[ReasonToken] == 0 || st.Rejected[ReasonForbidden] == 0 {
		t.Fatalf("401 and 403 not counted: %v", st.Rejected)
	}
	a = do(t, c, "GET", base+"/metrics", "r-1", "")
	for _, want := range []string{`busyapi_rejected_total{reason="unauthorized"} `, `busyapi_rejected_total{reason="forbidden"} `,
		`busyapi_http_requests_total{path="/api/usages",status="401"} `, `busyapi_http_requests_total{path="/metrics",status="403"} `} {
		if !strings.Contains(a.body, want) || strings.Contains(a.body, want+"0\n") {
			t.Fatalf("/metrics does not count %q:\n%s", want, a.body)
		}
	}
}

// TestNoTokens: without Config.Tokens nothing asks for a token.
func TestNoTokens(t *testing.T) {
	s := newTestServer(t, Config{})
	if resp := call(s, "POST", "/api/usages", "application/json", []byte(sample)); resp.StatusCode() != 201 {
		t.Fatalf("POST: %d", resp.StatusCode())
	}
	if resp := call(s, "GET", "/api/usages/export", "", nil); resp.StatusCode() == 401 {
		t.Fatal("export asks for a token")
	}
}
