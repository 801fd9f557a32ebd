package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// syncBuffer collects a process's output; safe to read while it runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type opsProc struct {
	cmd  *exec.Cmd
	logs *syncBuffer
	done chan error // Wait's result
}

// startProc starts bin with args and waits until GET probe answers through
// client.
func startProc(t *testing.T, bin string, client *http.Client, probe string, args ...string) *opsProc {
	t.Helper()
	p := &opsProc{cmd: exec.Command(bin, args...), logs: new(syncBuffer), done: make(chan error, 1)}
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, err := client.Get(probe); err == nil {
			resp.Body.Close()
			return p
		}
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("server exited at start: %v\n%s", err, p.logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("server did not start:\n%s", p.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop sends SIGTERM and checks the exit status is 0.
func (p *opsProc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, p.logs)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no exit 30s after SIGTERM:\n%s", p.logs)
	}
}

// waitLog waits until a log line contains every string of want.
func (p *opsProc) waitLog(t *testing.T, want ...string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, line := range strings.Split(p.logs.String(), "\n") {
			ok := true
			for _, w := range want {
				ok = ok && strings.Contains(line, w)
			}
			if ok {
				return line
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q:\n%s", want, p.logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// request sends one request and returns the status, a header and the body.
func request(t *testing.T, c *http.Client, method, url, token, body string) (int, http.Header, string) {
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
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

const opsUsage = `{"patientId":"100","timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}`

// TestOpsProcess runs the real binary (built once) for the operational
// features: bearer tokens reloaded on SIGHUP, TLS, unix sockets.
func TestOpsProcess(t *testing.T) {
	bin := buildBinary(t)
	t.Run("TokensSIGHUP", func(t *testing.T) { testTokensSIGHUP(t, bin) })
	t.Run("TLS", func(t *testing.T) { testTLSProcess(t, bin) })
	t.Run("UnixSocket", func(t *testing.T) { testUnixSocket(t, bin) })
}

// testTokensSIGHUP: tokens of each scope, then a SIGHUP with a changed file
// swaps them, and a SIGHUP with a bad file keeps them and logs why. Logs
// are JSON.
func testTokensSIGHUP(t *testing.T, bin string) {
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte("# ingest\nwrite w-1\n\n# export\nread r-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	base := "http://" + addr
	c := &http.Client{Timeout: 10 * time.Second}
	p := startProc(t, bin, c, base+"/healthz", "--addr", addr, "--data-dir", t.TempDir(),
		"--tokens", tokens, "--log-format", "json")
	post := func(token string) int {
		status, _, _ := request(t, c, "POST", base+"/api/usages", token, opsUsage)
		return status
	}
	status, h, body := request(t, c, "POST", base+"/api/usages", "", opsUsage)
	if status != 401 || h.Get("WWW-Authenticate") != "Bearer" || !strings.Contains(body, `"error"`) {
		t.Fatalf("POST without a token: %d %v %s", status, h, body)
	}
	if status, h, _ = request(t, c, "POST", base+"/api/usages", "w-2", opsUsage); status != 401 || h.Get("WWW-Authenticate") != `Bearer error="invalid_token"` {
		t.Fatalf("POST with an unknown token: %d %v", status, h)
	}
	if s := post("r-1"); s != 403 {
		t.Fatalf("POST with a read token: %d", s)
	}
	status, h, _ = request(t, c, "POST", base+"/api/usages", "w-1", opsUsage)
	if status != 201 {
		t.Fatalf("POST with a write token: %d", status)
	}
	loc := h.Get("Location")
	if status, _, _ = request(t, c, "GET", base+loc, "w-1", ""); status != 403 {
		t.Fatalf("GET with a write token: %d", status)
	}
	if status, _, body = request(t, c, "GET", base+loc, "r-1", ""); status != 200 || !strings.Contains(body, "Albuterol") {
		t.Fatalf("GET with a read token: %d %s", status, body)
	}
	if status, _, _ = request(t, c, "GET", base+"/readyz", "", ""); status != 200 {
		t.Fatalf("readyz: %d", status)
	}

	// A new file on SIGHUP: w-2 replaces w-1.
	if err := os.WriteFile(tokens, []byte("write w-2\nread r-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.waitLog(t, `"SIGHUP: reloaded tokens"`, `"write_tokens":1`)
	if s := post("w-2"); s != 201 {
		t.Fatalf("new token after SIGHUP: %d", s)
	}
	if s := post("w-1"); s != 401 {
		t.Fatalf("removed token after SIGHUP: %d", s)
	}

	// A bad file on SIGHUP: the tokens stay, the error is logged.
	if err := os.WriteFile(tokens, []byte("write w-3\nwrite\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	line := p.waitLog(t, "cannot reload tokens")
	if !strings.Contains(line, `"level":"ERROR"`) || !strings.Contains(line, "line 2") {
		t.Fatalf("bad reload log line: %s", line)
	}
	if s := post("w-2"); s != 201 {
		t.Fatalf("token after a bad reload: %d", s)
	}
	if s := post("w-3"); s != 401 {
		t.Fatalf("token of a bad file: %d", s)
	}
	p.stop(t)
	for _, l := range strings.Split(strings.TrimSpace(p.logs.String()), "\n") {
		if !json.Valid([]byte(l)) {
			t.Fatalf("--log-format json wrote a non-JSON line: %q", l)
		}
	}
}

// writeCert writes a self-signed ECDSA certificate for 127.0.0.1 and its
// key as PEM files and returns their paths and a pool trusting it.
func writeCert(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "busyapi test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// testTLSProcess: --tls-cert and --tls-key serve HTTPS.
func testTLSProcess(t *testing.T, bin string) {
	certFile, keyFile, pool := writeCert(t)
	addr := freeAddr(t)
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer c.CloseIdleConnections()
	p := startProc(t, bin, c, "https://"+addr+"/healthz", "--addr", addr, "--data-dir", t.TempDir(),
		"--tls-cert", certFile, "--tls-key", keyFile)
	status, h, _ := request(t, c, "POST", "https://"+addr+"/api/usages", "", opsUsage)
	if status != 201 {
		t.Fatalf("POST over TLS: %d", status)
	}
	if status, _, body := request(t, c, "GET", "https://"+addr+h.Get("Location"), "", ""); status != 200 || !strings.Contains(body, "Albuterol") {
		t.Fatalf("GET over TLS: %d %s", status, body)
	}
	if _, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/healthz"); err == nil {
		t.Fatal("plain HTTP answered on the TLS port")
	}
	p.waitLog(t, "busyapi listening", "tls=true")
	p.stop(t)
}

// testUnixSocket: --addr unix:PATH replaces a stale socket, refuses a live
// one (exit 1, the live server unharmed) and a path that is not a socket,
// and removes its socket on SIGTERM.
func testUnixSocket(t *testing.T, bin string) {
	dir, err := os.MkdirTemp("", "busyapi") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "api.sock")
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close() // the file stays, nobody listens: as after kill -9
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer c.CloseIdleConnections()
	p := startProc(t, bin, c, "http://busyapi/healthz", "--addr", "unix:"+sock, "--data-dir", filepath.Join(dir, "data"))
	p.waitLog(t, "removed a stale unix socket")
	if status, _, body := request(t, c, "POST", "http://busyapi/api/usages", "", opsUsage); status != 201 {
		t.Fatalf("POST over the unix socket: %d %s", status, body)
	}

	// A second server on the live socket refuses to start.
	out, err := exec.Command(bin, "--addr", "unix:"+sock, "--data-dir", filepath.Join(dir, "data2")).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 || !bytes.Contains(out, []byte("another server is listening on unix socket")) {
		t.Fatalf("second server on a live socket: %v\n%s", err, out)
	}
	if status, _, _ := request(t, c, "GET", "http://busyapi/readyz", "", ""); status != 200 {
		t.Fatalf("the live server after the refused start: %d", status)
	}

	// A path that is not a socket is refused and left alone.
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(bin, "--addr", "unix:"+file, "--data-dir", filepath.Join(dir, "data3")).CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte("is not a unix socket")) {
		t.Fatalf("unix socket over a regular file: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Fatalf("the regular file was changed: %q", b)
	}

	p.stop(t)
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket left after SIGTERM: %v", err)
	}
}

// TestStartErrors: bad operational flags stop the start with a clear
// message, before anything is opened.
func TestStartErrors(t *testing.T) {
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("write ok\n# fine\nadmin nope\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, _ := writeCert(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--tokens", tokens}, "line 3: unknown scope \"admin\""},
		{[]string{"--tokens", filepath.Join(dir, "missing")}, "cannot read the tokens file"},
		{[]string{"--tls-cert", certFile}, "--tls-cert and --tls-key go together"},
		{[]string{"--tls-key", keyFile}, "--tls-cert and --tls-key go together"},
		{[]string{"--tls-cert", keyFile, "--tls-key", keyFile}, "cannot load --tls-cert"},
		{[]string{"--log-format", "xml"}, "unknown --log-format"},
		{[]string{"--access-log-sample", "-2"}, "negative"},
	} {
		args := append([]string{"--addr", "127.0.0.1:0", "--data-dir", filepath.Join(dir, "data")}, c.args...)
		err := run(args)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("run %q: %v, want an error with %q", c.args, err, c.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); err == nil {
		t.Error("a refused start created the data directory")
	}
}
