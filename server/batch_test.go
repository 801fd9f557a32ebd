package server

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"
)

// testClient keeps its connections alive between requests.
var testClient = &fasthttp.Client{MaxResponseBodySize: 64 << 20, ReadTimeout: 20 * time.Second}

// httpDo sends one request to addr through a real client and connection.
func httpDo(t *testing.T, addr, method, uri string, headers map[string]string, body []byte) *fasthttp.Response {
	t.Helper()
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	req.Header.SetMethod(method)
	req.SetRequestURI("http://" + addr + uri)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	if body != nil {
		req.SetBody(body)
	}
	resp := new(fasthttp.Response)
	if err := testClient.Do(req, resp); err != nil {
		t.Fatalf("%s %s: %v", method, uri, err)
	}
	return resp
}

func gz(t testing.TB, b []byte) []byte {
	var out bytes.Buffer
	w := gzip.NewWriter(&out)
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func batchIDs(t *testing.T, resp *fasthttp.Response) []uint64 {
	t.Helper()
	if resp.StatusCode() != 201 {
		t.Fatalf("status %d, want 201; body %s", resp.StatusCode(), resp.Body())
	}
	if ct := string(resp.Header.ContentType()); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
	v, err := fastjson.ParseBytes(resp.Body())
	if err != nil {
		t.Fatalf("body %s: %v", resp.Body(), err)
	}
	var ids []uint64
	for _, x := range v.GetArray("ids") {
		id, err := x.Uint64()
		if err != nil || id == 0 {
			t.Fatalf("bad id in %s", resp.Body())
		}
		ids = append(ids, id)
	}
	return ids
}

func usages(n, from int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf(`{"patientId":%d,"timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol","n":[%d,{"k":"\u00e9]"}]}`, from+i, i)
	}
	return out
}

func ndjson(items []string) []byte { return []byte(strings.Join(items, "\n") + "\n") }

func jsonArray(items []string) []byte { return []byte("[\n " + strings.Join(items, " ,\n") + "\n]") }

// checkUsages reads every id back and compares it with the item posted.
func checkUsages(t *testing.T, addr string, ids []uint64, items []string) {
	t.Helper()
	if len(ids) != len(items) {
		t.Fatalf("%d ids for %d usages", len(ids), len(items))
	}
	for k, id := range ids {
		var resp *fasthttp.Response
		deadline := time.Now().Add(5 * time.Second)
		for {
			resp = httpDo(t, addr, "GET", "/api/usages/"+strconv.FormatUint(id, 10), nil, nil)
			if resp.StatusCode() != 404 || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		want := `{"id":` + strconv.FormatUint(id, 10) + "," + items[k][1:]
		if resp.StatusCode() != 200 || string(resp.Body()) != want {
			t.Fatalf("GET %d = %d %s, want %s", id, resp.StatusCode(), resp.Body(), want)
		}
	}
}

// forEachAck runs f against a server on loopback in each ack mode: memory
// without a log, and fsync with one.
func forEachAck(t *testing.T, f func(t *testing.T, s *Server, addr string)) {
	for _, mode := range []string{AckMemory, AckFsync} {
		t.Run(mode, func(t *testing.T) {
			cfg := Config{Ack: mode}
			if mode == AckFsync {
				cfg.DataDir = t.TempDir()
			}
			s := newTestServer(t, cfg)
			f(t, s, startTCP(t, s))
		})
	}
}

func TestBatchStores(t *testing.T) {
	forEachAck(t, func(t *testing.T, s *Server, addr string) {
		seen := map[uint64]bool{}
		post := func(ct string, body []byte, items []string, extra map[string]string) {
			t.Helper()
			h := map[string]string{}
			if ct != "" {
				h["Content-Type"] = ct
			}
			for k, v := range extra {
				h[k] = v
			}
			var resp *fasthttp.Response
			if ct == "" {
				// fasthttp's client would add a Content-Type.
				var err error
				resp, err = rawExchange(t, addr, []byte(fmt.Sprintf("POST /api/usages/batch HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(body), body)))
				if err != nil {
					t.Fatal(err)
				}
			} else {
				resp = httpDo(t, addr, "POST", "/api/usages/batch", h, body)
			}
			ids := batchIDs(t, resp)
			for _, id := range ids {
				if seen[id] {
					t.Fatalf("id %d answered twice", id)
				}
				seen[id] = true
			}
			checkUsages(t, addr, ids, items)
		}
		items := usages(3, 1)
		post("application/x-ndjson", ndjson(items), items, nil)
		post("application/x-ndjson", []byte(strings.Join(items, "\r\n")), items, nil) // no blank last line
		post("application/json; charset=utf-8", jsonArray(items), items, nil)
		post("", jsonArray(items), items, nil)
		post("", ndjson(items), items, nil)
		big := usages(10000, 100)
		post("application/x-ndjson", gz(t, ndjson(big)), big, map[string]string{"Content-Encoding": "gzip"})
		post("application/json", gz(t, jsonArray(items)), items, map[string]string{"Content-Encoding": "gzip"})
		if got := s.stored.Load(); got != uint64(len(seen)) {
			t.Fatalf("stored %d, want %d", got, len(seen))
		}
	})
}

func TestBatchRejects(t *testing.T) {
	s := newTestServer(t, Config{MaxBatchItems: 5, MaxBatchBytes: 4096})
	addr := startTCP(t, s)
	good := usages(3, 1)
	bad := func(i int, item string) []string {
		items := append([]string(nil), good...)
		items[i] = item
		return items
	}
	f := func(name, ct string, body []byte, status, index int, want string) {
		t.Helper()
		resp := httpDo(t, addr, "POST", "/api/usages/batch", map[string]string{"Content-Type": ct}, body)
		if resp.StatusCode() != status {
			t.Fatalf("%s: status %d, want %d; body %s", name, resp.StatusCode(), status, resp.Body())
		}
		msg := errorOf(t, resp)
		if !strings.Contains(msg, want) {
			t.Fatalf("%s: error %q does not mention %q", name, msg, want)
		}
		v, _ := fastjson.ParseBytes(resp.Body())
		got := -1
		if v.Exists("index") {
			got = v.GetInt("index")
		}
		if got != index {
			t.Fatalf("%s: index %d, want %d; body %s", name, got, index, resp.Body())
		}
	}
	nd, arr := "application/x-ndjson", "application/json"
	f("ndjson bad field", nd, ndjson(bad(2, `{"patientId":1,"timestamp":"x"}`)), 400, 2, "medication")
	f("array bad field", arr, jsonArray(bad(1, `{"patientId":true,"timestamp":"x","medication":"y"}`)), 400, 1, "patientId")
	f("ndjson malformed", nd, ndjson(bad(0, `{"patientId":1,`)), 400, 0, "not valid JSON")
	f("array malformed item", arr, jsonArray(bad(2, `{"patientId":1,"timestamp":"x","medication":"y"`)), 400, 2, "")
	f("ndjson not object", nd, ndjson(bad(1, `[1]`)), 400, 1, "object")
	f("array not object", arr, jsonArray(bad(1, `"x"`)), 400, 1, "object")
	f("ndjson blank line inside", nd, []byte(good[0]+"\n\n"+good[1]), 400, 1, "empty")
	f("bad utf-8", nd, ndjson(bad(1, "{\"patientId\":1,\"timestamp\":\"\xff\",\"medication\":\"y\"}")), 400, 1, "UTF-8")
	f("empty ndjson", nd, []byte("\n"), 400, -1, "no usages")
	f("empty array", arr, []byte(" [ ] "), 400, -1, "no usages")
	f("not an array", arr, []byte(good[0]), 400, -1, "array")
	f("array missing comma", arr, []byte("["+good[0]+" "+good[1]+"]"), 400, -1, "")
	f("array unclosed", arr, []byte("["+good[0]+","+good[1]), 400, -1, "")
	f("array trailing data", arr, []byte("["+good[0]+"] x"), 400, -1, "after the JSON array")
	f("array trailing comma", arr, []byte("["+good[0]+",]"), 400, 1, "")
	f("too many items", nd, ndjson(usages(6, 1)), 413, -1, "--max-batch-items")
	f("too many bytes", nd, ndjson(usages(50, 1)), 413, -1, "--max-batch-bytes")
	f("media type", "text/plain", ndjson(good), 415, -1, "Content-Type")
	resp := httpDo(t, addr, "GET", "/api/usages/batch", nil, nil)
	if resp.StatusCode() != 405 || string(resp.Header.Peek("Allow")) != "POST, OPTIONS" {
		t.Fatalf("GET batch: %d, Allow %q", resp.StatusCode(), resp.Header.Peek("Allow"))
	}
	if n := s.stored.Load(); n != 0 {
		t.Fatalf("refused batches stored %d usages", n)
	}
	// Nothing of a refused batch is readable either.
	for id := uint64(1); id < 100; id++ {
		if r := httpDo(t, addr, "GET", "/api/usages/"+strconv.FormatUint(id, 10), nil, nil); r.StatusCode() != 404 {
			t.Fatalf("usage %d of a refused batch is readable: %s", id, r.Body())
		}
	}
}

// gzipBomb returns about 1 GiB of zeros as 16 concatenated gzip members of
// 64 MiB each, about 1 MiB in all.
func gzipBomb(t testing.TB) []byte {
	var member bytes.Buffer
	w, _ := gzip.NewWriterLevel(&member, gzip.BestCompression)
	zeros := make([]byte, 1<<20)
	for range 64 {
		if _, err := w.Write(zeros); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return bytes.Repeat(member.Bytes(), 16)
}

func TestGzip(t *testing.T) {
	s := newTestServer(t, Config{})
	addr := startTCP(t, s)
	gzh := map[string]string{"Content-Type": "application/json", "Content-Encoding": "gzip"}
	resp := httpDo(t, addr, "POST", "/api/usages", gzh, gz(t, []byte(sample)))
	if resp.StatusCode() != 201 {
		t.Fatalf("gzip POST: %d %s", resp.StatusCode(), resp.Body())
	}
	v, _ := fastjson.ParseBytes(resp.Body())
	checkUsages(t, addr, []uint64{v.GetUint64("id")}, []string{sample})

	bomb := gzipBomb(t)
	t.Logf("bomb: %d bytes of gzip for 1 GiB", len(bomb))
	f := func(name, uri string, headers map[string]string, body []byte, status int, want string) {
		t.Helper()
		resp := httpDo(t, addr, "POST", uri, headers, body)
		if resp.StatusCode() != status {
			t.Fatalf("%s %s: status %d, want %d; body %s", name, uri, resp.StatusCode(), status, resp.Body())
		}
		if msg := errorOf(t, resp); !strings.Contains(msg, want) {
			t.Fatalf("%s: error %q does not mention %q", name, msg, want)
		}
	}
	for _, uri := range []string{"/api/usages", "/api/usages/batch"} {
		broken := gz(t, []byte(sample))
		broken[len(broken)/2] ^= 0xff
		f("broken gzip", uri, gzh, broken, 400, "gzip")
		f("truncated gzip", uri, gzh, gz(t, []byte(sample))[:20], 400, "gzip")
		f("not gzip", uri, gzh, []byte(sample), 400, "gzip")
		for _, enc := range []string{"br", "deflate", "zstd", "gzip, br"} {
			f("encoding "+enc, uri, map[string]string{"Content-Type": "application/json", "Content-Encoding": enc}, []byte(sample), 415, "Content-Encoding")
		}
	}
	// The bomb fits the batch's 4 MiB body limit, so it is read and then
	// refused while inflating; the single endpoint refuses it by its
	// compressed size already.
	start := time.Now()
	f("gzip bomb", "/api/usages/batch", gzh, bomb, 413, "--max-batch-bytes")
	f("gzip bomb", "/api/usages", gzh, bomb, 413, "--max-body")
	f("small gzip bomb", "/api/usages", gzh, gz(t, make([]byte, 1<<20)), 413, "--max-body")
	t.Logf("bombs refused in %v", time.Since(start))
	if n := s.stored.Load(); n != 1 {
		t.Fatalf("stored %d usages, want 1", n)
	}
}

// gunzip never produces more than limit+1 bytes, however much the stream
// holds.
func TestGunzipLimit(t *testing.T) {
	bomb := gzipBomb(t)
	for _, limit := range []int{0, 1, 1000, 4 << 20} {
		out, err := gunzip(nil, bomb, limit)
		if err != errInflateLimit || len(out) > limit+1 {
			t.Fatalf("limit %d: %d bytes, %v", limit, len(out), err)
		}
	}
	out, err := gunzip(nil, gz(t, []byte(sample)), len(sample))
	if err != nil || string(out) != sample {
		t.Fatalf("exact limit: %q, %v", out, err)
	}
}

// Batches and single usages posted at once from many connections get
// distinct ids and all read back.
func TestBatchConcurrent(t *testing.T) {
	s := newTestServer(t, Config{Shards: 4})
	addr := startTCP(t, s)
	var mu sync.Mutex
	seen := map[uint64]string{}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for r := range 10 {
				items := usages(1+(g*10+r)%50, g*100000+r*1000)
				resp := httpDo(t, addr, "POST", "/api/usages/batch", map[string]string{"Content-Type": "application/x-ndjson"}, ndjson(items))
				ids := batchIDs(t, resp)
				mu.Lock()
				for k, id := range ids {
					if _, dup := seen[id]; dup {
						t.Errorf("id %d answered twice", id)
					}
					seen[id] = items[k]
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	ids := make([]uint64, 0, len(seen))
	items := make([]string, 0, len(seen))
	for id, it := range seen {
		ids = append(ids, id)
		items = append(items, it)
	}
	checkUsages(t, addr, ids, items)
}
