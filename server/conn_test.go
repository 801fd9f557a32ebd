package server

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
	"github.com/valyala/fastjson"
)

// startTCP serves s on a loopback port and returns its address.
func startTCP(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// dialTCP connects to addr, closed when the test ends, with a reader for
// the answers.
func dialTCP(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// rawExchange writes req on a new connection (from a goroutine, so a server
// that answers early does not deadlock us) and returns the parsed answer.
func rawExchange(t *testing.T, addr string, req []byte) (*fasthttp.Response, error) {
	t.Helper()
	resp, _, err := rawExchangeW(t, addr, req)
	return resp, err
}

func rawExchangeW(t *testing.T, addr string, req []byte) (*fasthttp.Response, error, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	// Write the whole request before reading, as curl and most clients do.
	// A server that refuses early and closes with unread data sends RST;
	// then the write fails and the answer is discarded unread.
	_, werr := c.Write(req)
	var resp fasthttp.Response
	err = resp.Read(bufio.NewReader(c))
	return &resp, werr, err
}

func postRequest(body string, extraHeaders string) []byte {
	return []byte("POST /api/usages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extraHeaders +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
}

func TestBadConnections(t *testing.T) {
	s := newTestServer(t, Config{ReadTimeout: 500 * time.Millisecond, IdleTimeout: 500 * time.Millisecond})
	addr := startTCP(t, s)

	f := func(name string, req []byte, status int) {
		t.Helper()
		resp, werr, err := rawExchangeW(t, addr, req)
		if werr != nil && status == 413 {
			t.Fatalf("%s: the client could not finish sending: %v", name, werr)
		}
		if err != nil {
			t.Fatalf("%s: no answer, want %d: %v", name, status, err)
		}
		if resp.StatusCode() != status {
			t.Fatalf("%s: status %d, want %d: %s", name, resp.StatusCode(), status, resp.Body())
		}
		if v, err := fastjson.ParseBytes(resp.Body()); err != nil || len(v.GetStringBytes("error")) == 0 {
			t.Fatalf("%s: answer is not a JSON error: %q", name, resp.Body())
		}
	}
	// A body over --max-body, announced and really sent (1 MiB): the client
	// must read the 413, not a connection reset.
	big := `{"patientId":1,"timestamp":"t","medication":"` + strings.Repeat("m", 16<<20) + `"}`
	f("huge body", postRequest(big, ""), 413)
	f("huge chunked body", []byte("POST /api/usages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"+
		fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(big), big)), 413)
	f("200 KB of headers", postRequest(sample, "X-Junk: "+strings.Repeat("j", 200<<10)+"\r\n"), 431)
	f("absurd Content-Length", []byte("POST /api/usages HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n"+sample), 400)
	f("negative Content-Length", []byte("POST /api/usages HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"+sample), 400)
	f("large Content-Length", []byte("POST /api/usages HTTP/1.1\r\nHost: x\r\nContent-Length: 9223372036854775807\r\n\r\n"+sample), 413)
	f("protocol garbage", []byte("\x00\x01\x02garbage\r\n\r\n"), 400)
	f("bad request line", []byte("GET\r\n\r\n"), 400)
	f("half-sent body", []byte("POST /api/usages HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n{\"patientId\":1"), 408)

	// An idle connection is closed after the timeouts.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("idle connection: %v (not closed by the server within 10s)", err)
	}
	c.Close()
	t.Logf("idle connection closed after %v", time.Since(start))

	// Half-sent headers are cut off too.
	c, err = net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("POST /api/usages HTTP/1.1\r\nHost: x\r\nContent-"))
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("half-sent headers: %v (not closed by the server within 10s)", err)
	}
	c.Close()

	if got := s.stored.Load(); got != 0 {
		t.Fatalf("bad requests stored %d usages", got)
	}
	// The server still works.
	resp, err := rawExchange(t, addr, postRequest(sample, ""))
	if err != nil || resp.StatusCode() != 201 {
		t.Fatalf("after bad input: %v %v", err, resp)
	}
}

// TestConcurrentPosts posts from many goroutines over an in-memory listener:
// every id is unique and every usage reads back unchanged. Run with -race.
func TestConcurrentPosts(t *testing.T) {
	s := newTestServer(t, Config{IDBlock: 64})
	ln := fasthttputil.NewInmemoryListener()
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	client := &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }, MaxConnsPerHost: 64}

	const workers, perWorker = 16, 300
	type stored struct {
		id   uint64
		body string
	}
	results := make([][]stored, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			for i := 0; i < perWorker; i++ {
				body := fmt.Sprintf(`{"patientId":"w%d-%d","timestamp":%d,"medication":"Albuterol","seq":[%d,%d]}`, w, i, 1478009511000+i, w, i)
				req.Reset()
				req.Header.SetMethod("POST")
				req.SetRequestURI("http://busyapi/api/usages")
				req.Header.SetContentType("application/json")
				req.SetBodyString(body)
				if err := client.Do(req, resp); err != nil {
					t.Errorf("POST: %v", err)
					return
				}
				if resp.StatusCode() != 201 {
					t.Errorf("POST: status %d: %s", resp.StatusCode(), resp.Body())
					return
				}
				id := fastjson.GetInt(resp.Body(), "id")
				results[w] = append(results[w], stored{uint64(id), body})
			}
		}(w)
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	seen := make(map[uint64]bool, workers*perWorker)
	for _, rs := range results {
		for _, r := range rs {
			if r.id == 0 || seen[r.id] {
				t.Fatalf("id %d handed out twice (or zero)", r.id)
			}
			seen[r.id] = true
			resp := call(s, "GET", "/api/usages/"+strconv.FormatUint(r.id, 10), "", nil)
			want := `{"id":` + strconv.FormatUint(r.id, 10) + `,` + r.body[1:]
			if resp.StatusCode() != 200 || string(resp.Body()) != want {
				t.Fatalf("GET %d: %d %s, want %s", r.id, resp.StatusCode(), resp.Body(), want)
			}
		}
	}
	if len(seen) != workers*perWorker {
		t.Fatalf("%d ids for %d usages", len(seen), workers*perWorker)
	}
}

// TestShutdownDrains checks that Shutdown lets an in-flight request finish
// and stores everything acknowledged before it returns.
func TestShutdownDrains(t *testing.T) {
	s := newTestServer(t, Config{FlushInterval: time.Hour})
	addr := startTCP(t, s)
	var ids []uint64
	for i := 0; i < 100; i++ {
		resp, err := rawExchange(t, addr, postRequest(sample, ""))
		if err != nil || resp.StatusCode() != 201 {
			t.Fatalf("POST: %v %v", err, resp)
		}
		ids = append(ids, uint64(fastjson.GetInt(resp.Body(), "id")))
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("shutdown took %v", d)
	}
	for _, id := range ids {
		if resp := call(s, "GET", "/api/usages/"+strconv.FormatUint(id, 10), "", nil); resp.StatusCode() != 200 {
			t.Fatalf("usage %d lost in shutdown", id)
		}
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Fatal("still accepting connections after Shutdown")
	}
}

// TestBusyConnectionTimeouts: the reaper (deadline.go) times requests, not
// connections, so check that a busy keep-alive connection outlives many read
// timeouts, that the idle timeout still closes it once it goes quiet, and
// that a slow body still gets 408 after activity.
func TestBusyConnectionTimeouts(t *testing.T) {
	s := newTestServer(t, Config{ReadTimeout: 300 * time.Millisecond, IdleTimeout: 600 * time.Millisecond})
	addr := startTCP(t, s)
	c, br := dialTCP(t, addr)
	start := time.Now()
	var quiet time.Time // when the last answer came
	for time.Since(start) < 1500*time.Millisecond {
		if _, err := c.Write(postRequest(sample, "")); err != nil {
			t.Fatal(err)
		}
		var resp fasthttp.Response
		if err := resp.Read(br); err != nil || resp.StatusCode() != 201 {
			t.Fatalf("after %v of activity: %v %d", time.Since(start), err, resp.StatusCode())
		}
		quiet = time.Now()
		time.Sleep(100 * time.Millisecond)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(br); err != nil {
		t.Fatalf("idle connection not closed: %v", err)
	}
	if d := time.Since(quiet); d < 550*time.Millisecond || d > 3*time.Second {
		t.Fatalf("idle connection closed %v after the last answer, want about the 600ms idle timeout", d)
	}

	// A body that stops arriving gets 408 at the read timeout, also on a
	// connection that has served requests before.
	c2, br2 := dialTCP(t, addr)
	c2.Write(postRequest(sample, ""))
	var first fasthttp.Response
	if err := first.Read(br2); err != nil || first.StatusCode() != 201 {
		t.Fatalf("first request: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	c2.Write([]byte("POST /api/usages HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"patientId\""))
	expect408(t, c2, br2, "half-sent body after activity")
}

// expect408 reads the next answer on c and fails unless it is a 408 that
// came within 2 s, about the tests' 300 ms read timeout.
func expect408(t *testing.T, c net.Conn, br *bufio.Reader, what string) {
	t.Helper()
	start := time.Now()
	var resp fasthttp.Response
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := resp.Read(br); err != nil || resp.StatusCode() != 408 {
		t.Fatalf("%s: %v %d, want 408", what, err, resp.StatusCode())
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("%s: 408 after %v, want about the 300 ms read timeout", what, d)
	}
}

// TestTimeoutPhases: the read timeout runs per request phase as fasthttp
// reports it, not per write: a Serve started long after New does not cut
// the first request (the reaper's clock starts with Serve), and a body sent
// after a 100 Continue still gets 408 at the read timeout.
func TestTimeoutPhases(t *testing.T) {
	s := newTestServer(t, Config{ReadTimeout: 300 * time.Millisecond, IdleTimeout: 3 * time.Second})
	time.Sleep(500 * time.Millisecond) // as a long recovery would
	addr := startTCP(t, s)

	c, br := dialTCP(t, addr)
	time.Sleep(100 * time.Millisecond)
	if _, err := c.Write(postRequest(sample, "")); err != nil {
		t.Fatal(err)
	}
	var resp fasthttp.Response
	if err := resp.Read(br); err != nil || resp.StatusCode() != 201 {
		t.Fatalf("first request 100 ms after connecting: %v %d", err, resp.StatusCode())
	}

	// 100 Continue is a write in the middle of a request: the body is still
	// due within the read timeout of the request's first byte.
	c2, br2 := dialTCP(t, addr)
	c2.Write([]byte("POST /api/usages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: " +
		strconv.Itoa(len(sample)) + "\r\n\r\n"))
	line, err := br2.ReadString('\n')
	if err != nil || !strings.Contains(line, "100") {
		t.Fatalf("no 100 Continue: %q %v", line, err)
	}
	_, _ = br2.ReadString('\n') // the blank line after it
	expect408(t, c2, br2, "body never sent after 100 Continue")
}

// TestShutdownOutOfTimeCutsConnections: a Shutdown that runs out of time
// cuts the requests still open, though the reaper stops with it. (Not
// startTCP: its cleanup shuts down again and checks Serve's error.)
func TestShutdownOutOfTimeCutsConnections(t *testing.T) {
	s := newTestServer(t, Config{ReadTimeout: 10 * time.Second})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(ln) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Half a request: the server waits for the rest, for up to 10 s.
	c.Write([]byte("POST /api/usages HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"))
	time.Sleep(100 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); err == nil {
		t.Fatal("Shutdown with a request open returned nil before its deadline")
	}
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("the open request was not cut after Shutdown ran out of time: %v", err)
	}
}
