package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/busyapi/busyapi/wal"
)

// logBuffer collects a server's log lines; safe for concurrent writes.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// jsonLines returns the JSON log records with message msg.
func (l *logBuffer) jsonLines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// TestHealthz: /healthz and /readyz answer 200 while all is well, and
// /readyz answers 503 with Retry-After and the reason while a shard cannot
// write its log, then 200 again once the disk works, while /healthz stays
// 200 throughout.
func TestHealthz(t *testing.T) {
	s := newTestServer(t, Config{DataDir: t.TempDir()})
	base := "http://" + startTCP(t, s)
	c := &http.Client{}
	for _, p := range []string{"/healthz", "/readyz"} {
		a := do(t, c, "GET", base+p, "", "")
		if a.status != 200 || a.body != `{"status":"ok"}` || a.header.Get("Content-Type") != "application/json" {
			t.Fatalf("GET %s: %d %q %q", p, a.status, a.header.Get("Content-Type"), a.body)
		}
		if a = do(t, c, "HEAD", base+p, "", ""); a.status != 200 {
			t.Fatalf("HEAD %s: %d", p, a.status)
		}
		if a = do(t, c, "POST", base+p, "", "{}"); a.status != 405 || a.header.Get("Allow") != "GET, HEAD, OPTIONS" {
			t.Fatalf("POST %s: %d %v", p, a.status, a.header)
		}
		a.jsonError(t)
	}

	var failing sync.Map
	failing.Store("on", true)
	wal.SetFaultHook(func(op, path string) error {
		if _, on := failing.Load("on"); on && op == "write" {
			return syscall.EIO
		}
		return nil
	})
	defer wal.SetFaultHook(nil)
	if a := do(t, c, "POST", base+"/api/usages", "", sample); a.status != 503 {
		t.Fatalf("POST on a failing disk: %d %s", a.status, a.body)
	}
	a := do(t, c, "GET", base+"/readyz", "", "")
	if a.status != 503 || a.header.Get("Retry-After") == "" || !strings.Contains(a.jsonError(t), "log cannot be written") {
		t.Fatalf("readyz with a failed shard: %d %v %s", a.status, a.header, a.body)
	}
	if a = do(t, c, "GET", base+"/healthz", "", ""); a.status != 200 {
		t.Fatalf("healthz with a failed shard: %d", a.status)
	}
	failing.Delete("on")
	deadline := time.Now().Add(10 * time.Second)
	for do(t, c, "GET", base+"/readyz", "", "").status != 200 {
		if time.Now().After(deadline) {
			t.Fatal("readyz still 503 10s after the disk works again")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if a := do(t, c, "POST", base+"/api/usages", "", sample); a.status != 201 {
		t.Fatalf("POST once ready again: %d %s", a.status, a.body)
	}
}

// TestReadyzDuringShutdown: a /readyz request served while Shutdown runs
// answers 503.
func TestReadyzDuringShutdown(t *testing.T) {
	s := newTestServer(t, Config{})
	entered, release := make(chan struct{}), make(chan struct{})
	s.testHook = func(ctx *fasthttp.RequestCtx) {
		if ctx.QueryArgs().Has("hold") {
			close(entered)
			<-release
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	got := make(chan answer, 1)
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String() + "/readyz?hold")
		if err != nil {
			t.Error(err)
			got <- answer{}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- answer{resp.StatusCode, resp.Header, string(b)}
	}()
	<-entered
	stopped := make(chan error, 1)
	go func() { stopped <- s.Shutdown(context.Background()) }()
	for !s.closed.Load() {
		time.Sleep(time.Millisecond)
	}
	close(release)
	a := <-got
	if a.status != 503 || a.header.Get("Retry-After") == "" || !strings.Contains(a.jsonError(t), "shutting down") {
		t.Fatalf("readyz during shutdown: %d %v %s", a.status, a.header, a.body)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}

// TestPanicRecovered: a panicking handler is answered 500 with a JSON
// error, counted, logged once with its stack, and the server (and the very
// connection) goes on serving.
func TestPanicRecovered(t *testing.T) {
	var logs logBuffer
	s := newTestServer(t, Config{AccessLogSample: 1, Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	s.testHook = func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) == "/api/usages/7" {
			ctx.Response.Header.Set("X-Half-Done", "1")
			ctx.SetBodyString("partial")
			panic("test panic in a handler")
		}
	}
	addr := startTCP(t, s)
	c, br := dialTCP(t, addr)
	exchange := func(req string) *fasthttp.Response {
		t.Helper()
		if _, err := c.Write([]byte(req)); err != nil {
			t.Fatal(err)
		}
		resp := new(fasthttp.Response)
		if err := resp.Read(br); err != nil {
			t.Fatal(err)
		}
		return resp
	}
	resp := exchange("GET /api/usages/7 HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode() != 500 || len(resp.Header.Peek("X-Half-Done")) != 0 {
		t.Fatalf("panicking handler: %d %s", resp.StatusCode(), resp.Header.String())
	}
	if msg := errorOf(t, resp); !strings.Contains(msg, "internal error") {
		t.Fatalf("error %q", msg)
	}
	// The same connection still works, and so does a new one.
	if resp = exchange(string(postRequest(sample, ""))); resp.StatusCode() != 201 {
		t.Fatalf("POST after a panic on the same connection: %d %s", resp.StatusCode(), resp.Body())
	}
	if resp, err := rawExchange(t, addr, []byte("GET /api/usages/7 HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil || resp.StatusCode() != 500 {
		t.Fatalf("second panic: %v %v", err, resp)
	}
	if resp, err := rawExchange(t, addr, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil || resp.StatusCode() != 200 {
		t.Fatalf("GET / after panics: %v %v", err, resp)
	}
	var st Stats
	s.UpdateStats(&st)
	if st.Panics != 2 {
		t.Fatalf("Stats.Panics = %d, want 2", st.Panics)
	}
	panics := logs.jsonLines(t, "handler panicked: answered 500, serving on")
	if len(panics) != 2 {
		t.Fatalf("%d panic log lines for 2 panics:\n%s", len(panics), logs.String())
	}
	stack, _ := panics[0]["stack"].(string)
	if panics[0]["panic"] != "test panic in a handler" || panics[0]["path"] != "/api/usages/7" ||
		!strings.Contains(stack, "TestPanicRecovered") {
		t.Fatalf("panic log line: %v", panics[0])
	}
	// The access log (every request here) shows the 500.
	n500 := 0
	for _, m := range logs.jsonLines(t, "request") {
		if m["path"] == "/api/usages/7" && m["status"] == float64(500) {
			n500++
		}
	}
	if n500 != 2 {
		t.Fatalf("access log has %d 500s for the 2 panics:\n%s", n500, logs.String())
	}
	// And /metrics counts them.
	var buf bytes.Buffer
	s.WriteMetrics(&buf)
	for _, want := range []string{"busyapi_panics_total 2\n", `busyapi_http_requests_total{path="/api/usages/{id}",status="500"} 2` + "\n"} {
		if !strings.Contains(buf.String(), want) {
			t.Fatalf("metrics lack %q:\n%s", want, buf.String())
		}
	}
}

// TestAccessLog: one request in N is logged, with method, path, status,
// duration and remote address; with sampling off nothing is.
func TestAccessLog(t *testing.T) {
	var logs, quiet logBuffer
	s := newTestServer(t, Config{AccessLogSample: 3, Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	off := newTestServer(t, Config{Logger: slog.New(slog.NewJSONHandler(&quiet, nil))})
	for _, srv := range []*Server{s, off} {
		addr := startTCP(t, srv)
		for i := 0; i < 9; i++ {
			if resp, err := rawExchange(t, addr, postRequest(sample, "")); err != nil || resp.StatusCode() != 201 {
				t.Fatalf("POST: %v %v", err, resp)
			}
		}
	}
	lines := logs.jsonLines(t, "request")
	if len(lines) != 3 {
		t.Fatalf("%d access log lines for 9 requests sampled one in 3:\n%s", len(lines), logs.String())
	}
	for _, m := range lines {
		remote, _ := m["remote"].(string)
		d, ok := m["duration"].(float64)
		if m["method"] != "POST" || m["path"] != "/api/usages" || m["status"] != float64(201) ||
			!ok || d <= 0 || !strings.HasPrefix(remote, "127.0.0.1:") {
			t.Fatalf("access log line %v", m)
		}
	}
	if n := len(quiet.jsonLines(t, "request")); n != 0 {
		t.Fatalf("%d access log lines with the access log off", n)
	}
	if _, err := New(Config{AccessLogSample: -1}); err == nil {
		t.Fatal("a negative AccessLogSample is accepted")
	}
}

// testCert returns a self-signed ECDSA certificate for 127.0.0.1 and
// localhost, and a pool that trusts it.
func testCert(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "busyapi test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// TestTLS serves HTTPS through the whole stack (TLS over the lingering,
// lazy-deadline connections): POST and GET work, plain HTTP does not, and
// a body over the limit still gets its 413 rather than a reset.
func TestTLS(t *testing.T) {
	cert, pool := testCert(t)
	s := newTestServer(t, Config{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
	addr := startTCP(t, s)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer c.CloseIdleConnections()
	a := do(t, c, "POST", "https://"+addr+"/api/usages", "", sample)
	if a.status != 201 {
		t.Fatalf("POST over TLS: %d %s", a.status, a.body)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		g := do(t, c, "GET", "https://"+addr+a.header.Get("Location"), "", "")
		if g.status == 200 && strings.Contains(g.body, "Albuterol") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET over TLS: %d %s", g.status, g.body)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The handshake offers HTTP/1.1 only, with TLS 1.2 at least.
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, NextProtos: []string{"h2", "http/1.1"}, MaxVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	if st := conn.ConnectionState(); st.NegotiatedProtocol != "http/1.1" || st.Version != tls.VersionTLS12 {
		t.Fatalf("negotiated %q, version %x", st.NegotiatedProtocol, st.Version)
	}
	conn.Close()
	old, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11})
	if err == nil {
		old.Close()
		t.Fatal("TLS 1.1 accepted")
	}
	if !strings.Contains(err.Error(), "protocol version") {
		t.Fatalf("TLS 1.1 refused for another reason: %v", err)
	}
	// Plain HTTP to the TLS port is not served.
	if resp, err := rawExchange(t, addr, postRequest(sample, "")); err == nil && resp.StatusCode() == 201 {
		t.Fatal("plain HTTP served on the TLS listener")
	}
	// A body over the limit, all written before reading: the 413 arrives.
	conn, err = tls.Dial("tcp", addr, &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	big := `{"patientId":1,"timestamp":"t","medication":"` + strings.Repeat("m", 1<<20) + `"}`
	if _, err := conn.Write(postRequest(big, "")); err != nil {
		t.Fatalf("writing the body: %v", err)
	}
	var resp fasthttp.Response
	if err := resp.Read(bufio.NewReader(conn)); err != nil || resp.StatusCode() != 413 {
		t.Fatalf("oversized body over TLS: %v %d", err, resp.StatusCode())
	}
	if _, err := New(Config{TLS: &tls.Config{}}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("TLS without a certificate: %v", err)
	}
}

// shortTempDir is a temporary directory with a short path: unix socket
// paths are limited to about 100 bytes.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "busyapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestListenUnix: a stale socket file is replaced, a live one or a file
// that is not a socket is refused and left alone, the server answers on
// the socket, and Shutdown removes it.
func TestListenUnix(t *testing.T) {
	dir := shortTempDir(t)
	path := filepath.Join(dir, "api.sock")
	// A stale socket: its server is gone without removing it.
	old, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	old.(*net.UnixListener).SetUnlinkOnClose(false)
	old.Close()
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != fs.ModeSocket {
		t.Fatalf("stale socket not there: %v", err)
	}
	s := newTestServer(t, Config{})
	ln, err := s.Listen("unix:" + path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	defer c.CloseIdleConnections()
	if a := do(t, c, "POST", "http://busyapi/api/usages", "", sample); a.status != 201 {
		t.Fatalf("POST over the unix socket: %d %s", a.status, a.body)
	}
	// A live socket is refused, and still works.
	other := newTestServer(t, Config{})
	if _, err := other.Listen("unix:" + path); err == nil || !strings.Contains(err.Error(), "another server is listening") {
		t.Fatalf("Listen on a live socket: %v", err)
	}
	if a := do(t, c, "GET", "http://busyapi/healthz", "", ""); a.status != 200 {
		t.Fatalf("the live server after a refused Listen: %d", a.status)
	}
	// Not a socket: refused, left alone.
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Listen("unix:" + file); err == nil || !strings.Contains(err.Error(), "not a unix socket") {
		t.Fatalf("Listen on a regular file: %v", err)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep me" {
		t.Fatalf("the regular file was touched: %v %q", err, b)
	}
	if _, err := other.Listen("unix:"); err == nil {
		t.Fatal("an empty unix path is accepted")
	}
	// Shutdown removes the socket file.
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket file left after Shutdown: %v", err)
	}
}
