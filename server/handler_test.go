package server

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/busyapi/busyapi/shard"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"
)

const sample = `{"patientId":100,"timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}`

func newTestServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = time.Millisecond
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	return s
}

// call runs one request through s.Handler and returns the response.
func call(s *Server, method, uri, contentType string, body []byte) *fasthttp.Response {
	var ctx fasthttp.RequestCtx
	var req fasthttp.Request
	req.Header.SetMethod(method)
	req.SetRequestURI(uri)
	if contentType != "" {
		req.Header.SetContentType(contentType)
	}
	if body != nil {
		req.SetBody(body)
	}
	ctx.Init(&req, nil, nil)
	s.Handler(&ctx)
	resp := new(fasthttp.Response)
	ctx.Response.CopyTo(resp)
	return resp
}

func errorOf(t *testing.T, resp *fasthttp.Response) string {
	t.Helper()
	if ct := string(resp.Header.ContentType()); ct != "application/json" {
		t.Fatalf("error Content-Type = %q, want application/json; body %s", ct, resp.Body())
	}
	v, err := fastjson.ParseBytes(resp.Body())
	if err != nil {
		t.Fatalf("error body is not JSON: %v: %s", err, resp.Body())
	}
	msg := string(v.GetStringBytes("error"))
	if msg == "" {
		t.Fatalf("error body has no error message: %s", resp.Body())
	}
	return msg
}

// waitStored polls GET until the usage is readable (drainers flush within
// FlushInterval).
func waitStored(t *testing.T, s *Server, id uint64) *fasthttp.Response {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp := call(s, "GET", "/api/usages/"+strconv.FormatUint(id, 10), "", nil)
		if resp.StatusCode() == 200 || time.Now().After(deadline) {
			return resp
		}
		time.Sleep(time.Millisecond)
	}
}

func TestPostUsageAccepts(t *testing.T) {
	s := newTestServer(t, Config{})
	f := func(contentType, body string) {
		t.Helper()
		resp := call(s, "POST", "/api/usages", contentType, []byte(body))
		if resp.StatusCode() != 201 {
			t.Fatalf("POST %s: status %d, want 201; body %s", body, resp.StatusCode(), resp.Body())
		}
		if ct := string(resp.Header.ContentType()); ct != "application/json" {
			t.Fatalf("Content-Type %q", ct)
		}
		v, err := fastjson.ParseBytes(resp.Body())
		if err != nil {
			t.Fatalf("answer %s: %v", resp.Body(), err)
		}
		id := v.GetUint64("id")
		if id == 0 || id >= 1<<53 || v.GetObject().Len() != 1 {
			t.Fatalf("answer %s: want {\"id\":N} with 0 < N < 2^53", resp.Body())
		}
		if loc := string(resp.Header.Peek("Location")); loc != "/api/usages/"+strconv.FormatUint(id, 10) {
			t.Fatalf("Location %q for id %d", loc, id)
		}
		got := waitStored(t, s, id)
		if got.StatusCode() != 200 {
			t.Fatalf("GET %d: status %d", id, got.StatusCode())
		}
		want := `{"id":` + strconv.FormatUint(id, 10) + `,` + strings.TrimSpace(body)[1:]
		if string(got.Body()) != want {
			t.Fatalf("GET %d:\n got %s\nwant %s", id, got.Body(), want)
		}
		if fastjson.ValidateBytes(got.Body()) != nil {
			t.Fatalf("GET %d: not JSON: %s", id, got.Body())
		}
	}
	f("application/json", sample)
	f("", sample)
	f("application/json; charset=utf-8", sample)
	f("Application/JSON;charset=UTF-8", sample)
	f("application/json", `{"patientId":"100","timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}`)
	f("application/json", `{"patientId":-7,"timestamp":1478009511000,"medication":"Albuterol"}`)
	f("application/json", `{"patientId":1,"timestamp":1.5e12,"medication":"x"}`)
	f("application/json", "  \n"+sample+"\n\t ")
	f("application/json", `{"medication":"Albuterol","extra":{"a":[1,2,{"b":null}]},"patientId":"p","timestamp":"t","z":true}`)
	f("application/json", `{"patientId":"`+strings.Repeat("p", 64)+`","timestamp":"`+strings.Repeat("t", 64)+`","medication":"`+strings.Repeat("m", 128)+`"}`)
	f("application/json", `{"patientId":"\u00e9\"","timestamp":"Tue","medication":"Salbutamol \u2014 100µg"}`)
	f("application/json", `{"patient\u0049d":1,"timestamp":"t","medication":"m"}`)
	f("application/json", `{"patientId":0,"timestamp":-0.5e-3,"medication":"m","a":-0,"b":1E+2,"c":10.25,"d":false,"e":null}`)
	f("application/json", "{\"patientId\":1,\r\n\t\"timestamp\":\"t\",\"medication\":\"m\",\"x\":[1e5]}")
}

func TestPostUsageRejects(t *testing.T) {
	s := newTestServer(t, Config{})
	f := func(contentType, body string, status int, wantInMsg string) {
		t.Helper()
		before := s.stored.Load()
		resp := call(s, "POST", "/api/usages", contentType, []byte(body))
		if resp.StatusCode() != status {
			t.Fatalf("POST %q: status %d, want %d; body %s", body, resp.StatusCode(), status, resp.Body())
		}
		msg := errorOf(t, resp)
		if !strings.Contains(msg, wantInMsg) {
			t.Fatalf("POST %q: error %q does not mention %q", body, msg, wantInMsg)
		}
		if s.stored.Load() != before {
			t.Fatalf("POST %q: a rejected usage was stored", body)
		}
	}
	// Malformed, not an object, trailing data, bad UTF-8.
	f("application/json", ``, 400, "empty")
	f("application/json", `   `, 400, "empty")
	f("application/json", `{`, 400, "not valid JSON")
	f("application/json", `{"patientId":1,"timestamp":"t","medication":"m"`, 400, "not valid JSON")
	f("application/json", `{"patientId":1,"timestamp":"t","medication":"m",}`, 400, "not valid JSON")
	f("application/json", `{patientId:1}`, 400, "not valid JSON")
	f("application/json", `{"patientId":1,"timestamp":"t","medication":"bad \x escape"}`, 400, "not valid JSON")
	f("application/json", "{\"patientId\":1,\"timestamp\":\"t\",\"medication\":\"raw \x01 control\"}", 400, "not valid JSON")
	f("application/json", `{"patientId":01,"timestamp":"t","medication":"m"}`, 400, "not valid JSON")
	// What fastjson's parser takes and JSON does not.
	for _, n := range []string{"NaN", "nan", "Inf", "-inf", "+1", "1.", ".5", "-", "1e", "1e+", "0x1", "--1", "1.5.5", "1e5e5"} {
		f("application/json", `{"patientId":1,"timestamp":`+n+`,"medication":"m"}`, 400, "not valid JSON")
		f("application/json", `{"patientId":1,"timestamp":"t","medication":"m","x":`+n+`}`, 400, "not valid JSON")
		f("application/json", `{"patientId":1,"timestamp":"t","medication":"m","x":[{"y":`+n+`}]}`, 400, "not valid JSON")
	}
	f("application/json", "{\"patientId\":1,\"timestamp\":\"tab\there\",\"medication\":\"m\"}", 400, "not valid JSON")
	f("application/json", "{\"patientId\":1,\"timestamp\":\"t\",\"medication\":\"m\",\"k\x1f\":1}", 400, "not valid JSON")
	f("application/json", `{"patientId":1,"timestamp":"t","medication":"m","x":"\q"}`, 400, "not valid JSON")
	f("application/json", `{"patientId":"\u12","timestamp":"t","medication":"m"}`, 400, "not valid JSON")
	f("application/json", `{"patientId":true,"timestamp":"t","medication":"m","x":"\q"}`, 400, "not valid JSON")
	f("application/json", `[`+sample+`]`, 400, "must be a JSON object")
	f("application/json", `"hello"`, 400, "must be a JSON object")
	f("application/json", `42`, 400, "must be a JSON object")
	f("application/json", `null`, 400, "must be a JSON object")
	f("application/json", sample+`{}`, 400, "after the JSON object")
	f("application/json", sample+` x`, 400, "after the JSON object")
	f("application/json", sample+sample, 400, "after the JSON object")
	f("application/json", "{\"patientId\":1,\"timestamp\":\"t\",\"medication\":\"\xff\xfe\"}", 400, "UTF-8")
	f("application/json", "{\"patientId\":1,\"timestamp\":\"t\",\"medication\":\"\xed\xa0\x80\"}", 400, "UTF-8")
	f("application/json", strings.Repeat("[", 1000)+strings.Repeat("]", 1000), 400, "")
	// Missing fields.
	f("application/json", `{}`, 400, "patientId")
	f("application/json", `{"timestamp":"t","medication":"m"}`, 400, "patientId")
	f("application/json", `{"patientId":1,"medication":"m"}`, 400, "timestamp")
	f("application/json", `{"patientId":1,"timestamp":"t"}`, 400, "medication")
	// Wrong types and bounds.
	f("application/json", `{"patientId":1.5,"timestamp":"t","medication":"m"}`, 400, "patientId")
	f("application/json", `{"patientId":1e3,"timestamp":"t","medication":"m"}`, 400, "patientId")
	f("application/json", `{"patientId":99999999999999999999,"timestamp":"t","medication":"m"}`, 400, "patientId")
	f("application/json", `{"patientId":"","timestamp":"t","medication":"m"}`, 400, "patientId")
	f("application/json", `{"patientId":"`+strings.Repeat("p", 65)+`","timestamp":"t","medication":"m"}`, 400, "patientId")
	f("application/json", `{"patientId":null,"timestamp":"t","medication":"m"}`, 400, "patientId")
	f("application/json", `{"patientId":true,"timestamp":"t","medication":"m"}`, 400, "patientId")
	f("application/json", `{"patientId":[1],"timestamp":"t","medication":"m"}`, 400, "patientId")
	f("application/json", `{"patientId":{},"timestamp":"t","medication":"m"}`, 400, "patientId")
	f("application/json", `{"patientId":1,"timestamp":"","medication":"m"}`, 400, "timestamp")
	f("application/json", `{"patientId":1,"timestamp":"`+strings.Repeat("t", 65)+`","medication":"m"}`, 400, "timestamp")
	f("application/json", `{"patientId":1,"timestamp":null,"medication":"m"}`, 400, "timestamp")
	f("application/json", `{"patientId":1,"timestamp":false,"medication":"m"}`, 400, "timestamp")
	f("application/json", `{"patientId":1,"timestamp":{},"medication":"m"}`, 400, "timestamp")
	f("application/json", `{"patientId":1,"timestamp":"t","medication":""}`, 400, "medication")
	f("application/json", `{"patientId":1,"timestamp":"t","medication":"`+strings.Repeat("m", 129)+`"}`, 400, "medication")
	f("application/json", `{"patientId":1,"timestamp":"t","medication":5}`, 400, "medication")
	f("application/json", `{"patientId":1,"timestamp":"t","medication":null}`, 400, "medication")
	f("application/json", `{"patientId":1,"timestamp":"t","medication":["m"]}`, 400, "medication")
	// Duplicates and a client-chosen id.
	f("application/json", `{"patientId":1,"patientId":2,"timestamp":"t","medication":"m"}`, 400, "patientId")
	f("application/json", `{"patientId":1,"timestamp":"t","timestamp":"u","medication":"m"}`, 400, "timestamp")
	f("application/json", `{"patientId":1,"timestamp":"t","medication":"m","medication":"n"}`, 400, "medication")
	f("application/json", `{"id":5,"patientId":1,"timestamp":"t","medication":"m"}`, 400, "id")
	// Media types and encodings.
	f("text/plain", sample, 415, "Content-Type")
	f("application/x-www-form-urlencoded", sample, 415, "Content-Type")
	f("application/jsonx", sample, 415, "Content-Type")
	f("multipart/form-data; boundary=x", sample, 415, "Content-Type")
}

func TestRouting(t *testing.T) {
	s := newTestServer(t, Config{})
	f := func(method, uri string, status int, allow string) {
		t.Helper()
		resp := call(s, method, uri, "", nil)
		if resp.StatusCode() != status {
			t.Fatalf("%s %s: status %d, want %d; body %s", method, uri, resp.StatusCode(), status, resp.Body())
		}
		if got := string(resp.Header.Peek("Allow")); got != allow {
			t.Fatalf("%s %s: Allow %q, want %q", method, uri, got, allow)
		}
		if status >= 400 {
			errorOf(t, resp)
		}
	}
	f("GET", "/", 200, "")
	f("HEAD", "/", 200, "")
	f("POST", "/", 405, "GET, HEAD, OPTIONS")
	f("GET", "/api/usages", 405, "POST, OPTIONS")
	f("PUT", "/api/usages", 405, "POST, OPTIONS")
	f("DELETE", "/api/usages", 405, "POST, OPTIONS")
	f("OPTIONS", "/api/usages", 204, "POST, OPTIONS")
	f("POST", "/api/usages/1", 405, "GET, HEAD, OPTIONS")
	f("DELETE", "/api/usages/1", 405, "GET, HEAD, OPTIONS")
	f("GET", "/api/usages/1", 404, "")
	f("GET", "/api/usages/0", 404, "")
	f("GET", "/api/usages/99999999999999999999999", 404, "")
	f("GET", "/api/usages/abc", 400, "")
	f("GET", "/api/usages/-1", 400, "")
	f("GET", "/api/usages/1.0", 400, "")
	f("GET", "/api/usages/1x", 400, "")
	f("GET", "/api/usages/", 404, "")
	f("GET", "/nope", 404, "")
	f("GET", "/api", 404, "")
	f("POST", "/api/usage", 404, "")
	// URIs that need parsing: a query, escapes, dot segments.
	f("GET", "/api/usages?x=1", 405, "POST, OPTIONS")
	f("GET", "/api/%75sages", 405, "POST, OPTIONS")
	f("GET", "/api/x/../usages", 405, "POST, OPTIONS")
	f("GET", "/api/usages/7?x=1", 404, "")

	resp := call(s, "GET", "/", "", nil)
	if !bytes.Contains(resp.Body(), []byte("busyapi")) {
		t.Fatalf("GET / body %q does not say busyapi is running", resp.Body())
	}
}

// gatedSink holds its drainer in its first Append until open is closed.
type gatedSink struct {
	shard.Sink
	open chan struct{}
}

func (g gatedSink) Append(i int, id uint64, body []byte) {
	<-g.open
	g.Sink.Append(i, id, body)
}

func TestRingFullAnswers503(t *testing.T) {
	// A tiny ring and a drainer held in its sink: the ring fills. (A Put
	// into a filling ring wakes its drainer, so a long FlushInterval
	// alone no longer keeps it away.)
	gate := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(gate) }) }
	s := newTestServer(t, Config{RingBytes: 64 << 10, MaxBodyBytes: 1024, FlushInterval: time.Hour, Shards: 1,
		wrapSink: func(k shard.Sink) shard.Sink { return gatedSink{k, gate} }})
	t.Cleanup(release) // after newTestServer's: cleanups run last first
	var full *fasthttp.Response
	var ids []uint64
	for i := 0; i < 10000; i++ {
		resp := call(s, "POST", "/api/usages", "application/json", []byte(sample))
		if resp.StatusCode() == 503 {
			full = resp
			break
		}
		if resp.StatusCode() != 201 {
			t.Fatalf("status %d", resp.StatusCode())
		}
		ids = append(ids, fastjson.MustParseBytes(resp.Body()).GetUint64("id"))
	}
	if full == nil {
		t.Fatal("ring never filled")
	}
	if string(full.Header.Peek("Retry-After")) == "" {
		t.Fatal("503 without Retry-After")
	}
	errorOf(t, full)
	if got := s.stored.Load(); got != uint64(len(ids)) {
		t.Fatalf("stored %d, answered 201 %d times", got, len(ids))
	}
	var st Stats
	s.UpdateStats(&st)
	if st.Shard.Full == 0 || st.Rejected[ReasonFull] == 0 {
		t.Fatalf("full rejections not counted: %+v", st.Rejected)
	}
	// Shutdown drains the ring; every acknowledged usage is then readable.
	release()
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if resp := call(s, "GET", "/api/usages/"+strconv.FormatUint(id, 10), "", nil); resp.StatusCode() != 200 {
			t.Fatalf("usage %d answered 201 is not readable after shutdown: %d", id, resp.StatusCode())
		}
	}
}

func TestConfigErrors(t *testing.T) {
	f := func(cfg Config) {
		t.Helper()
		if s, err := New(cfg); err == nil {
			_ = s.Shutdown(context.Background())
			t.Fatalf("New(%+v) succeeded, want an error", cfg)
		}
	}
	f(Config{Ack: "sometimes"})
	f(Config{IDBlock: 1 << 30})
	f(Config{RingBytes: 8 << 10, MaxBodyBytes: 16 << 10})
}

func TestParseID(t *testing.T) {
	f := func(in string, want uint64, ok bool) {
		t.Helper()
		got, gotOK := parseID([]byte(in))
		if got != want || gotOK != ok {
			t.Fatalf("parseID(%q) = %d, %v; want %d, %v", in, got, gotOK, want, ok)
		}
	}
	f("1", 1, true)
	f("0", 0, true)
	f("9007199254740991", 9007199254740991, true)
	f("", 0, false)
	f("a", 0, false)
	f("+1", 0, false)
	f("1 ", 0, false)
	if n, ok := parseID([]byte("99999999999999999999999999")); !ok || n < 1<<53 {
		t.Fatalf("huge id parsed as %d, %v", n, ok)
	}
}
