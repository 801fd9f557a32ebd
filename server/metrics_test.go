package server

import (
	"bufio"
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/busyapi/busyapi/wal"
)

// hostDo sends one request to addr through fasthttp's client.
func hostDo(t *testing.T, c *fasthttp.HostClient, method, uri, contentType, body string) *fasthttp.Response {
	t.Helper()
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	req.Header.SetMethod(method)
	req.SetRequestURI("http://" + c.Addr + uri)
	if contentType != "" {
		req.Header.SetContentType(contentType)
	}
	if body != "" {
		req.SetBodyString(body)
	}
	resp := new(fasthttp.Response)
	if err := c.DoTimeout(req, resp, 10*time.Second); err != nil {
		t.Fatalf("%s %s: %v", method, uri, err)
	}
	return resp
}

// scrape gets /metrics and parses it into series -> value. Every line must
// be a sample (no metadata by default): `name{labels} value`, each series
// once.
func scrape(t *testing.T, c *fasthttp.HostClient) map[string]float64 {
	t.Helper()
	resp := hostDo(t, c, "GET", "/metrics", "", "")
	if resp.StatusCode() != 200 {
		t.Fatalf("GET /metrics: status %d: %s", resp.StatusCode(), resp.Body())
	}
	if ct := string(resp.Header.ContentType()); ct != "text/plain; version=0.0.4; charset=utf-8" {
		t.Fatalf("GET /metrics: Content-Type %q", ct)
	}
	return parseMetrics(t, resp.Body())
}

func parseMetrics(t *testing.T, text []byte) map[string]float64 {
	t.Helper()
	m := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i <= 0 {
			t.Fatalf("metrics line %q: no value", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		name := line[:i]
		if _, dup := m[name]; dup {
			t.Fatalf("series %s appears twice", name)
		}
		m[name] = v
	}
	return m
}

// checkMetrics compares the wanted series with the scraped ones.
func checkMetrics(t *testing.T, got map[string]float64, want map[string]float64) {
	t.Helper()
	for name, w := range want {
		g, ok := got[name]
		if !ok {
			t.Errorf("series %s missing", name)
		} else if g != w {
			t.Errorf("%s = %v, want %v", name, g, w)
		}
	}
}

func requests(path, status string) string {
	return `busyapi_http_requests_total{path="` + path + `",status="` + status + `"}`
}

func rejected(reason string) string { return `busyapi_rejected_total{reason="` + reason + `"}` }

// TestMetrics drives a server (no log) through real HTTP and checks the
// exact counts that /metrics reports.
func TestMetrics(t *testing.T) {
	s := newTestServer(t, Config{MaxBodyBytes: 1024})
	addr := startTCP(t, s)
	c := &fasthttp.HostClient{Addr: addr}

	var ids []uint64
	for i := 0; i < 3; i++ {
		resp := hostDo(t, c, "POST", "/api/usages", "application/json", usageBody(i))
		if resp.StatusCode() != 201 {
			t.Fatalf("POST: status %d: %s", resp.StatusCode(), resp.Body())
		}
		id, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(string(resp.Body()), `{"id":`), "}"), 10, 64)
		ids = append(ids, id)
	}
	for _, body := range []string{`{"patientId":1`, `[]`} {
		if resp := hostDo(t, c, "POST", "/api/usages", "application/json", body); resp.StatusCode() != 400 {
			t.Fatalf("POST %s: status %d, want 400", body, resp.StatusCode())
		}
	}
	if resp := hostDo(t, c, "POST", "/api/usages", "text/plain", sample); resp.StatusCode() != 415 {
		t.Fatalf("POST text/plain: status %d, want 415", resp.StatusCode())
	}
	resp, err := rawExchange(t, addr, postRequest(`{"medication":"`+strings.Repeat("m", 2000)+`"}`, ""))
	if err != nil || resp.StatusCode() != 413 {
		t.Fatalf("POST of 2 KB: %v, %v; want 413", err, resp)
	}

	// Wait, without GETs (they would count), until the drainers have put
	// the three usages in the cache.
	for deadline := time.Now().Add(5 * time.Second); ; {
		var st Stats
		s.UpdateStats(&st)
		if st.Shard.Drained == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("drained %d usages of 3", st.Shard.Drained)
		}
		time.Sleep(time.Millisecond)
	}
	if resp := hostDo(t, c, "GET", "/api/usages/"+strconv.FormatUint(ids[0], 10), "", ""); resp.StatusCode() != 200 {
		t.Fatalf("GET %d: status %d", ids[0], resp.StatusCode())
	}
	for uri, status := range map[string]int{"/api/usages/999999": 404, "/api/usages/abc": 400, "/nope/123": 404} {
		if resp := hostDo(t, c, "GET", uri, "", ""); resp.StatusCode() != status {
			t.Fatalf("GET %s: status %d, want %d", uri, resp.StatusCode(), status)
		}
	}
	resp = hostDo(t, c, "DELETE", "/metrics", "", "")
	if resp.StatusCode() != 405 || string(resp.Header.Peek("Allow")) != "GET, HEAD, OPTIONS" {
		t.Fatalf("DELETE /metrics: status %d, Allow %q", resp.StatusCode(), resp.Header.Peek("Allow"))
	}
	if resp := hostDo(t, c, "OPTIONS", "/metrics", "", ""); resp.StatusCode() != 204 {
		t.Fatalf("OPTIONS /metrics: status %d", resp.StatusCode())
	}

	m := scrape(t, c)
	checkMetrics(t, m, map[string]float64{
		"busyapi_usages_stored_total":            3,
		requests("/api/usages", "201"):           3,
		requests("/api/usages", "400"):           2,
		requests("/api/usages", "415"):           1,
		requests("/api/usages", "413"):           1,
		requests("/api/usages", "503"):           0, // pre-created
		requests("/api/usages", "other"):         0,
		requests("/api/usages/{id}", "200"):      1,
		requests("/api/usages/{id}", "404"):      1,
		requests("/api/usages/{id}", "400"):      1,
		requests("other", "404"):                 1,
		requests("/metrics", "405"):              1,
		requests("/metrics", "204"):              1,
		requests("/metrics", "200"):              0, // counted once answered
		rejected("invalid"):                      3,
		rejected("too_large"):                    1,
		rejected("media_type"):                   1,
		rejected("full"):                         0,
		rejected("method"):                       1,
		rejected("not_found"):                    2,
		rejected("protocol"):                     0,
		"busyapi_cache_hits_total":               1,
		"busyapi_cache_misses_total":             1,
		"busyapi_cache_evictions_total":          0,
		"busyapi_drained_records_total":          3,
		`busyapi_ring_used_bytes{shard="0"}`:     0,
		`busyapi_ring_capacity_bytes{shard="0"}`: float64(s.Config().RingBytes),
		"busyapi_id_blocks_leased_total":         m["busyapi_id_blocks_leased_total"],
	})
	if m["busyapi_id_blocks_leased_total"] < 1 {
		t.Errorf("busyapi_id_blocks_leased_total = %v, want at least 1", m["busyapi_id_blocks_leased_total"])
	}
	for i := 0; i < s.Config().Shards; i++ {
		if _, ok := m[`busyapi_ring_used_bytes{shard="`+strconv.Itoa(i)+`"}`]; !ok {
			t.Errorf("no ring gauge for shard %d", i)
		}
	}
	if _, ok := m["process_resident_memory_bytes"]; !ok {
		t.Error("process metrics missing")
	}
	for name := range m {
		if strings.Contains(name, "999999") || strings.Contains(name, "nope") {
			t.Errorf("series %s carries a raw path", name)
		}
		if strings.Contains(name, "fsync") || strings.Contains(name, "recovery") {
			t.Errorf("series %s without a log", name)
		}
	}

	// HEAD answers the headers only; both scrapes are counted afterwards.
	resp = hostDo(t, c, "HEAD", "/metrics", "", "")
	if resp.StatusCode() != 200 || len(resp.Body()) != 0 ||
		string(resp.Header.ContentType()) != "text/plain; version=0.0.4; charset=utf-8" {
		t.Fatalf("HEAD /metrics: status %d, Content-Type %q, %d body bytes",
			resp.StatusCode(), resp.Header.ContentType(), len(resp.Body()))
	}
	checkMetrics(t, scrape(t, c), map[string]float64{requests("/metrics", "200"): 2})

	// Another Server in the same process has its own metrics.
	var buf bytes.Buffer
	newTestServer(t, Config{}).WriteMetrics(&buf)
	checkMetrics(t, parseMetrics(t, buf.Bytes()), map[string]float64{
		"busyapi_usages_stored_total":  0,
		requests("/api/usages", "201"): 0,
	})
}

// TestMetricsFsync checks the log's metrics in fsync mode: batch size and
// fdatasync latency histograms, bytes written, cache misses served from the
// log, and the recovery gauges after a restart.
func TestMetricsFsync(t *testing.T) {
	dir := t.TempDir()
	s := newDurable(t, dir, Config{})
	addr := startTCP(t, s)
	c := &fasthttp.HostClient{Addr: addr}
	const n = 5
	var ids []uint64
	written := 0
	for i := 0; i < n; i++ {
		resp := hostDo(t, c, "POST", "/api/usages", "application/json", usageBody(i))
		if resp.StatusCode() != 201 {
			t.Fatalf("POST: status %d: %s", resp.StatusCode(), resp.Body())
		}
		id, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(string(resp.Body()), `{"id":`), "}"), 10, 64)
		ids = append(ids, id)
		written += wal.RecordSize(len(usageBody(i)))
	}
	// The first GET misses the cache and reads the log; the second hits.
	for i := 0; i < 2; i++ {
		if resp := hostDo(t, c, "GET", "/api/usages/"+strconv.FormatUint(ids[0], 10), "", ""); resp.StatusCode() != 200 {
			t.Fatalf("GET %d: status %d", ids[0], resp.StatusCode())
		}
	}
	m := scrape(t, c)
	checkMetrics(t, m, map[string]float64{
		"busyapi_usages_stored_total":          n,
		requests("/api/usages", "201"):         n,
		requests("/api/usages/{id}", "200"):    2,
		"busyapi_cache_hits_total":             1,
		"busyapi_cache_misses_total":           1,
		"busyapi_log_written_bytes_total":      float64(written),
		"busyapi_log_indexed_records":          n,
		"busyapi_log_failed_shards":            0,
		"busyapi_log_flush_errors_total":       0,
		"busyapi_recovered_records":            0,
		"busyapi_fsync_batch_records_sum":      n, // every 201 waited for its batch's fsync
		"busyapi_fsync_duration_seconds_count": m["busyapi_fsync_batch_records_count"],
	})
	if b := m["busyapi_fsync_batch_records_count"]; b < 1 || b > n {
		t.Errorf("busyapi_fsync_batch_records_count = %v, want 1 to %d", b, n)
	}
	if d := m["busyapi_fsync_duration_seconds_sum"]; d <= 0 {
		t.Errorf("busyapi_fsync_duration_seconds_sum = %v, want > 0", d)
	}
	if _, ok := m["busyapi_recovery_seconds"]; !ok {
		t.Error("busyapi_recovery_seconds missing")
	}
	buckets := 0
	for name := range m {
		if strings.HasPrefix(name, "busyapi_fsync_duration_seconds_bucket{vmrange=") {
			buckets++
		}
	}
	if buckets == 0 {
		t.Error("no busyapi_fsync_duration_seconds buckets")
	}
	if _, ok := m["busyapi_cache_evictions_total"]; ok {
		t.Error("busyapi_cache_evictions_total with a log (the cache is filled on reads, evictions are not counted)")
	}

	// After a restart the recovery gauges report what was found.
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	s2 := newDurable(t, dir, Config{})
	defer s2.Shutdown(context.Background())
	var buf bytes.Buffer
	s2.WriteMetrics(&buf)
	m = parseMetrics(t, buf.Bytes())
	checkMetrics(t, m, map[string]float64{
		"busyapi_recovered_records":       n,
		"busyapi_usages_stored_total":     0,
		"busyapi_log_written_bytes_total": 0,
	})
	if r, ok := m["busyapi_recovery_seconds"]; !ok || r <= 0 {
		t.Errorf("busyapi_recovery_seconds = %v (present %v), want > 0", r, ok)
	}
}

// TestRouteOf: the path label follows Handler's routing, and raw paths
// never become labels.
func TestRouteOf(t *testing.T) {
	for path, want := range map[string]string{
		"/api/usages":        "/api/usages",
		"/api/usages/1":      "/api/usages/{id}",
		"/api/usages/abc":    "/api/usages/{id}",
		"/api/usages/export": "/api/usages/export",
		"/api/usages/batch":  "/api/usages/batch",
		"/api/usages/":       "other",
		"/api/usage":         "other",
		"/":                  "/",
		"/metrics":           "/metrics",
		"/healthz":           "/healthz",
		"/readyz":            "/readyz",
		"/api/":              "other",
		"/metrics/":          "other",
		"/nope":              "other",
	} {
		if got := routeNames[routeOf([]byte(path))]; got != want {
			t.Errorf("routeOf(%q) = %q, want %q", path, got, want)
		}
	}
	m := newMeters()
	m.countRoute(routeUsages, 201)
	m.countRoute(routeUsages, 418) // unexpected: the route's "other"
	m.countRoute(routeRoot, 503)   // not pre-created for "/": "other" too
	var buf bytes.Buffer
	m.set.WritePrometheus(&buf)
	checkMetrics(t, parseMetrics(t, buf.Bytes()), map[string]float64{
		requests("/api/usages", "201"):   1,
		requests("/api/usages", "other"): 1,
		requests("/", "other"):           1,
	})
}
