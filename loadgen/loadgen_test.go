package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// testConfig is a short run against url. Open-loop runs that must pass
// need a warmup longer than the answers take: the achieved rate counts the
// answers read during the measured window, and without a warmup the last
// requests' answers fall after it with none before it to make up.
func testConfig(url string) Config {
	c := DefaultConfig()
	c.URL = url
	c.Connections = 4
	c.Duration = 300 * time.Millisecond
	c.Warmup = 0
	c.Timeout = 5 * time.Second
	c.Drain = 2 * time.Second
	return c
}

func run(t *testing.T, cfg Config) *Result {
	t.Helper()
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func summary(r *Result) string {
	var b bytes.Buffer
	r.WriteText(&b)
	return b.String()
}

// mainRun runs `busyapi bench` with args and returns its exit status,
// stdout and stderr.
func mainRun(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := Main(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestOpenLoopKeepsRate: 2,000 req/s over 50 connections against a server
// that takes 20 ms per answer. Each connection has a request due every
// 25 ms, so the open loop must deliver the rate with latencies of about
// 20 ms.
func TestOpenLoopKeepsRate(t *testing.T) {
	srv := newTestServer(t, func(s *testServer) { s.delay = 20 * time.Millisecond })
	cfg := testConfig(srv.url())
	cfg.Rate, cfg.Connections = 2000, 50
	cfg.Warmup, cfg.Duration = 250*time.Millisecond, 1500*time.Millisecond
	res := run(t, cfg)
	if !res.OK {
		t.Fatalf("run failed:\n%s", summary(res))
	}
	if res.AchievedRate < 0.97*cfg.Rate || res.AchievedRate > 1.03*cfg.Rate {
		t.Errorf("achieved %.0f req/s, want 2,000 ±3%%", res.AchievedRate)
	}
	if res.SentPerSecond < 0.97*cfg.Rate || res.SentPerSecond > 1.03*cfg.Rate {
		t.Errorf("sent %.0f req/s, want 2,000 ±3%%", res.SentPerSecond)
	}
	if want := uint64(cfg.Rate * cfg.Duration.Seconds()); res.Requests.Measured < want-5 || res.Requests.Measured > want+5 {
		t.Errorf("%d requests due in the window, want %d", res.Requests.Measured, want)
	}
	// The server cannot answer faster than 20 ms; how much slower depends
	// on how busy the machine is (go test runs packages in parallel).
	if res.Latency.P50 < 20 || res.Latency.P50 > 500 {
		t.Errorf("p50 %.2f ms, want 20 ms or a little more (the server takes 20 ms)", res.Latency.P50)
	}
	if res.IDs.Returned != res.Requests.OK || res.IDs.Duplicates != 0 {
		t.Errorf("ids %+v for %d answers", res.IDs, res.Requests.OK)
	}
}

// TestCoordinatedOmission: a server that stalls for 1 s once. Open loop,
// the requests that fell due during the stall count their wait from
// their due time: 40% of the run, so p99 shows the stall. Closed loop, only
// the 10 requests in flight wait, of thousands, and p99 hides it: that is
// the coordinated omission the open loop corrects.
func TestCoordinatedOmission(t *testing.T) {
	srv := newTestServer(t, func(s *testServer) {
		s.delay = time.Millisecond
		s.stallAfter, s.stallFor = 300, time.Second
	})
	cfg := testConfig(srv.url())
	cfg.Rate, cfg.Connections, cfg.Duration, cfg.Warmup = 500, 20, 2500*time.Millisecond, 200*time.Millisecond
	res := run(t, cfg)
	if !res.OK {
		t.Fatalf("run failed:\n%s", summary(res))
	}
	if res.Latency.P99 < 500 || res.Latency.Max < 900 {
		t.Errorf("open loop: p99 %.1f ms, max %.1f ms; want the 1 s stall to show (p99 >= 500 ms, max >= 900 ms)\n%s",
			res.Latency.P99, res.Latency.Max, summary(res))
	}
	if res.Requests.Late == 0 {
		t.Errorf("no request counted as sent late")
	}

	srv = newTestServer(t, func(s *testServer) {
		s.delay = 2 * time.Millisecond
		s.stallAfter, s.stallFor = 300, time.Second
	})
	cfg = testConfig(srv.url())
	cfg.Connections, cfg.Duration = 10, 2*time.Second
	closed := run(t, cfg)
	if closed.Latency.Max < 900 {
		t.Errorf("closed loop: max %.1f ms, want the stall (>= 900 ms)", closed.Latency.Max)
	}
	if closed.Latency.P99 >= 500 {
		t.Errorf("closed loop: p99 %.1f ms; expected it to hide the stall (< 500 ms)\n%s", closed.Latency.P99, summary(closed))
	}
}

// TestDuplicateIDs: a server that answers the same ids again fails the
// run, and says so plainly; single and batch.
func TestDuplicateIDs(t *testing.T) {
	srv := newTestServer(t, func(s *testServer) {
		s.ids = func(s *testServer, usages int) []uint64 {
			ids := make([]uint64, usages)
			for i := range ids {
				ids[i] = s.nextID.Add(1)%7 + 1
			}
			return ids
		}
	})
	code, out, _ := mainRun("--url", srv.url(), "--connections", "2", "--duration", "200ms", "--warmup", "0s", "--progress", "off")
	if code != ExitFail {
		t.Errorf("exit status %d, want %d", code, ExitFail)
	}
	if !regexp.MustCompile(`server answered the same id twice: [1-9]`).MatchString(out) {
		t.Errorf("output does not say the server repeated ids:\n%s", out)
	}

	cfg := testConfig(srv.url())
	cfg.Batch = 5
	res := run(t, cfg)
	if res.OK || res.IDs.Duplicates == 0 || uint64(res.IDs.Duplicates) != res.IDs.Returned-7 {
		t.Errorf("batch: ok %v, %d duplicates of %d ids, want %d", res.OK, res.IDs.Duplicates, res.IDs.Returned, res.IDs.Returned-7)
	}
	if !strings.Contains(strings.Join(res.Failures, "; "), DuplicateMessage(res.IDs.Duplicates)) {
		t.Errorf("failures %q", res.Failures)
	}
}

// TestReport: --report writes one self-contained HTML file with the four
// charts as inline SVG, and --charts the same charts as SVG files; progress
// lines go to stderr when it is not a terminal.
func TestReport(t *testing.T) {
	srv := newTestServer(t, nil)
	file := filepath.Join(t.TempDir(), "report.html")
	chartDir := filepath.Join(t.TempDir(), "charts")
	code, out, errOut := mainRun("--url", srv.url(), "--rate", "300", "--connections", "8", "--duration", "1s",
		"--warmup", "200ms", "--report", file, "--charts", chartDir)
	if code != ExitPass {
		t.Fatalf("exit status %d\n%s\n%s", code, out, errOut)
	}
	if !regexp.MustCompile(`(?m)^bench +1\.0s/1s .*req/s .*errors .*p99 `).MatchString(errOut) {
		t.Errorf("no progress line on stderr:\n%s", errOut)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	html := string(b)
	if n := strings.Count(html, "<svg"); n != 4 {
		t.Errorf("%d <svg> elements, want 4 charts", n)
	}
	for _, title := range []string{"Throughput per second", "Latency percentiles per second", "Latency by percentile", "Latency distribution"} {
		if !strings.Contains(html, title) {
			t.Errorf("no chart titled %q", title)
		}
	}
	// Self-contained: no scripts, no stylesheets or images to fetch; the
	// only URL is the target's, as text.
	for _, bad := range []string{"<script", "<link", "<img", "src=", "href=", "url(", "@import", "xlink:href"} {
		if strings.Contains(html, bad) {
			t.Errorf("report contains %q", bad)
		}
	}
	for _, u := range regexp.MustCompile(`https?://[^\s"<]*`).FindAllString(html, -1) {
		if !strings.HasPrefix(u, srv.url()) {
			t.Errorf("report names another URL: %s", u)
		}
	}
	if !strings.Contains(html, "PASS") || !strings.HasPrefix(html, "<!DOCTYPE html>") {
		t.Errorf("report lacks its verdict or doctype")
	}
	// --charts: the same charts as SVG files.
	for _, name := range []string{"throughput.svg", "latency.svg", "percentiles.svg", "distribution.svg"} {
		b, err := os.ReadFile(filepath.Join(chartDir, name))
		if err != nil || !bytes.HasPrefix(b, []byte(`<svg xmlns="http://www.w3.org/2000/svg"`)) {
			t.Errorf("%s: %v %.60q", name, err, b)
		}
	}
}

// TestExitStatus: 0 when every check passes, 1 when one fails or the run
// cannot start, 2 on bad flags.
func TestExitStatus(t *testing.T) {
	ok := newTestServer(t, nil)
	failing := newTestServer(t, func(s *testServer) { s.status = 500 })
	slow := newTestServer(t, func(s *testServer) { s.delay = 20 * time.Millisecond })
	closing := newTestServer(t, func(s *testServer) { s.closeAfter = 3 })
	short := []string{"--duration", "300ms", "--warmup", "0s", "--progress", "off", "--connections", "2"}
	down := "http://" + func() string { // a port nobody listens on
		s := newTestServer(t, nil)
		s.close()
		return s.ln.Addr().String()
	}()
	for _, tc := range []struct {
		name string
		args []string
		code int
		says string
	}{
		{"pass", append([]string{"--url", ok.url()}, short...), ExitPass, "PASS"},
		{"open loop pass", append([]string{"--url", ok.url(), "--rate", "200"}, append(short, "--warmup", "200ms")...), ExitPass, "PASS"},
		{"non-2xx", append([]string{"--url", failing.url()}, short...), ExitFail, "answers were not 2xx"},
		// One connection, 20 ms an answer: 50 req/s at most, not 200.
		{"rate not achieved", append([]string{"--url", slow.url(), "--rate", "200", "--drain", "0s"}, append(short, "--connections", "1")...),
			ExitFail, "below 97% of the requested 200 req/s"},
		{"connection errors", append([]string{"--url", closing.url()}, short...), ExitFail, "connection errors"},
		{"cannot connect", append([]string{"--url", down}, short...), ExitFail, "cannot connect"},
		{"help", []string{"--help"}, ExitPass, "usage: busyapi bench"},
		{"no connections", []string{"--connections", "0"}, ExitUsage, "connections must be at least 1"},
		{"negative rate", []string{"--rate", "-1"}, ExitUsage, "must not be negative"},
		{"rate and users", []string{"--rate", "10", "--users-per-minute", "600"}, ExitUsage, "not both"},
		{"https", []string{"--url", "https://127.0.0.1:1"}, ExitUsage, "https is not supported"},
		{"argument", []string{"extra"}, ExitUsage, "unexpected argument"},
		{"bad progress", append([]string{"--url", ok.url(), "--progress", "sometimes"}, short[:4]...), ExitUsage, "--progress"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := mainRun(tc.args...)
			if code != tc.code {
				t.Errorf("exit status %d, want %d\n%s\n%s", code, tc.code, out, errOut)
			}
			if !strings.Contains(out+errOut, tc.says) {
				t.Errorf("output does not say %q:\n%s\n%s", tc.says, out, errOut)
			}
		})
	}
}

// TestUsersPerMinute: --users-per-minute N is N/60 usages a second, in
// requests of --batch B usages.
func TestUsersPerMinute(t *testing.T) {
	srv := newTestServer(t, nil)
	code, out, errOut := mainRun("--url", srv.url(), "--users-per-minute", "60000", "--batch", "4", "--connections", "5",
		"--duration", "400ms", "--warmup", "200ms", "--progress", "off", "--json")
	if code != ExitPass {
		t.Fatalf("exit status %d\n%s\n%s", code, out, errOut)
	}
	var res Result
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	if res.RequestedRate != 250 || res.RequestedUsersPerMinute != 60000 {
		t.Errorf("requested %v req/s, %v users/min; want 250 and 60,000", res.RequestedRate, res.RequestedUsersPerMinute)
	}
	if res.UsagesPerSecond < 0.97*1000 || res.UsagesPerSecond > 1.03*1000 {
		t.Errorf("%.0f usages/s, want 1,000", res.UsagesPerSecond)
	}
}

// TestBatch: --batch posts NDJSON to /api/usages/batch, counts the
// usages and checks every id of {"ids":[...]}.
func TestBatch(t *testing.T) {
	srv := newTestServer(t, nil)
	cfg := testConfig(srv.url())
	cfg.Batch = 25
	res := run(t, cfg)
	if !res.OK {
		t.Fatalf("run failed:\n%s", summary(res))
	}
	seen := srv.seen()
	if len(seen) != 1 || seen["POST /api/usages/batch application/x-ndjson"] == 0 {
		t.Errorf("server saw %v", seen)
	}
	if got, want := uint64(srv.usages.Load()), 25*uint64(srv.requests.Load()); got != want {
		t.Errorf("server got %d usages in %d requests", got, srv.requests.Load())
	}
	if res.IDs.Returned != 25*res.Requests.OK || res.IDs.Duplicates != 0 || res.IDs.AnswersWithoutAllIDs != 0 {
		t.Errorf("ids %+v for %d answers of 25 usages", res.IDs, res.Requests.OK)
	}
	if res.UsagesPerSecond != 25*res.RequestsPerSecond || res.UsagesPerSecond == 0 {
		t.Errorf("%.0f usages/s for %.0f requests/s", res.UsagesPerSecond, res.RequestsPerSecond)
	}
	if res.UsagesPerRequest != 25 || !strings.Contains(summary(res), "batches of 25 usages") {
		t.Errorf("summary does not tell the batch size:\n%s", summary(res))
	}
}

// TestPipelining: closed loop, each round of --pipeline requests leaves in
// one write; open loop, requests overlap on one connection, so a server
// that takes 20 ms an answer serves 150 req/s on it.
func TestPipelining(t *testing.T) {
	srv := newTestServer(t, nil)
	cfg := testConfig(srv.url())
	cfg.Pipeline, cfg.Connections = 8, 2
	res := run(t, cfg)
	if !res.OK || res.Requests.Responses != res.Requests.Sent || res.Requests.Sent%8 != 0 {
		t.Fatalf("run failed or answers missing:\n%s", summary(res))
	}
	if b := srv.maxBurst.Load(); b < 2 {
		t.Errorf("server never read more than %d request at once: not pipelined", b)
	}

	slow := newTestServer(t, func(s *testServer) { s.delay = 20 * time.Millisecond })
	cfg = testConfig(slow.url())
	cfg.Rate, cfg.Connections, cfg.Pipeline, cfg.Duration, cfg.Warmup = 150, 1, 8, time.Second, 200*time.Millisecond
	res = run(t, cfg)
	if !res.OK {
		t.Fatalf("open loop, pipelined: run failed:\n%s", summary(res))
	}
	if res.Latency.P50 < 20 || res.Latency.P50 > 500 {
		t.Errorf("p50 %.1f ms, want 20 ms or a little more", res.Latency.P50)
	}
}

// TestPayloadFile: --payload cycles the file's usages.
func TestPayloadFile(t *testing.T) {
	srv := newTestServer(t, nil)
	file := filepath.Join(t.TempDir(), "usages.ndjson")
	data := `{"patientId":"100","timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}

{"patientId":101,"timestamp":1478009511000,"medication":"Fluticasone"}
`
	if err := os.WriteFile(file, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := mainRun("--url", srv.url(), "--payload", file, "--duration", "200ms", "--warmup", "0s", "--progress", "off")
	if code != ExitPass {
		t.Fatalf("exit status %d\n%s\n%s", code, out, errOut)
	}
	bad := filepath.Join(t.TempDir(), "bad.ndjson")
	if err := os.WriteFile(bad, []byte("{\"patientId\":1}\nnot json\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := mainRun("--payload", bad); code != ExitUsage || !strings.Contains(errOut, "bad.ndjson:2") {
		t.Errorf("bad payload: exit status %d, %s", code, errOut)
	}
}

// TestInterrupt: cancelling the context ends the run early, reported as
// interrupted (a failure).
func TestInterrupt(t *testing.T) {
	srv := newTestServer(t, nil)
	cfg := testConfig(srv.url())
	cfg.Rate, cfg.Duration = 100, time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("interrupted run took %v", took)
	}
	if !res.Interrupted || res.OK || res.DurationSeconds > 1 {
		t.Errorf("interrupted %v, ok %v, window %.1fs", res.Interrupted, res.OK, res.DurationSeconds)
	}
	if res.AchievedRate < 50 || res.AchievedRate > 150 {
		t.Errorf("achieved %.0f req/s over the shortened window, want about 100", res.AchievedRate)
	}
}

// TestHeader: --header adds a request header, for servers that want a
// token; a malformed one is a usage error.
func TestHeader(t *testing.T) {
	srv := newTestServer(t, nil)
	code, out, errOut := mainRun("--url", srv.url(), "--header", "Authorization: Bearer s3cret", "--duration", "100ms",
		"--warmup", "0s", "--progress", "off")
	if code != ExitPass || srv.auth.Load() != "Bearer s3cret" {
		t.Errorf("exit status %d, server saw Authorization %v\n%s\n%s", code, srv.auth.Load(), out, errOut)
	}
	for _, bad := range []string{"NoColon", "Host: x", "Bad Name: x"} {
		if code, _, errOut := mainRun("--header", bad); code != ExitUsage || !strings.Contains(errOut, "header") {
			t.Errorf("--header %q: exit status %d: %s", bad, code, errOut)
		}
	}
}
