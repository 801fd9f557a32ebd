package loadgen

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"math/rand/v2"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

func TestReadResponse(t *testing.T) {
	big := strings.Repeat("x", 10000)
	stream := "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{\"id\":7}" +
		"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n" +
		"HTTP/1.1 400 Bad Request\r\nCONTENT-LENGTH: 5\r\nConnection: keep-alive\r\n\r\nerror" +
		"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\n{\"id\r\n5\r\n\":42}\r\n0\r\nTrailer: x\r\n\r\n" +
		"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n" + big +
		"HTTP/1.1 204 No Content\r\n\r\n" +
		"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok" +
		"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
	want := []struct {
		status    int
		keepAlive bool
		body      string
	}{
		{201, true, `{"id":7}`},
		{200, true, ""},
		{400, true, "error"},
		{201, true, `{"id":42}`},
		{200, true, big},
		{204, true, ""},
		{200, false, "ok"},
		{503, false, ""},
	}
	// One byte at a time as well as all at once.
	for _, r := range []func() *bufio.Reader{
		func() *bufio.Reader { return bufio.NewReaderSize(strings.NewReader(stream), 4096) },
		func() *bufio.Reader {
			return bufio.NewReaderSize(iotest.OneByteReader(strings.NewReader(stream)), 4096)
		},
	} {
		rr := respReader{br: r()}
		for i, w := range want {
			status, keepAlive, body, err := rr.read()
			if err != nil || status != w.status || keepAlive != w.keepAlive || string(body) != w.body {
				t.Fatalf("response %d: %d %v %.40q %v; want %d %v %.40q", i, status, keepAlive, body, err, w.status, w.keepAlive, w.body)
			}
		}
		if _, _, _, err := rr.read(); err != errEOF {
			t.Errorf("after the last response: %v, want errEOF", err)
		}
	}
	for _, bad := range []string{
		"HTTP/2 200\r\n\r\n",
		"HTTP/1.1 2x1 Created\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
	} {
		rr := respReader{br: bufio.NewReaderSize(strings.NewReader(bad), 4096)}
		if _, _, _, err := rr.read(); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestReadResponseNoAllocs: reading an answer and taking its id out
// allocate nothing.
func TestReadResponseNoAllocs(t *testing.T) {
	resp := []byte("HTTP/1.1 201 Created\r\nServer: busyapi\r\nDate: Thu, 27 Nov 2026 08:00:00 GMT\r\nContent-Type: application/json\r\nContent-Length: 13\r\nLocation: /api/usages/123456\r\n\r\n{\"id\":123456}")
	src := bytes.NewReader(nil)
	rr := respReader{br: bufio.NewReaderSize(src, 4096)}
	var ids idStore
	ids.add(0)
	n := testing.AllocsPerRun(1000, func() {
		src.Reset(resp)
		rr.br.Reset(src)
		status, _, body, err := rr.read()
		if err != nil || status != 201 {
			t.Fatal(status, err)
		}
		if scanIDs(body, false, &ids) != 1 {
			t.Fatal("no id")
		}
		ids.cur = ids.cur[:1]
	})
	if n != 0 {
		t.Errorf("%.1f allocations per answer", n)
	}
}

func TestScanIDs(t *testing.T) {
	for _, tc := range []struct {
		body  string
		batch bool
		want  []uint64
	}{
		{`{"id":1}`, false, []uint64{1}},
		{`{ "id" : 9007199254740991 }`, false, []uint64{9007199254740991}},
		{`{"patientId":5,"id":3}`, false, []uint64{3}},
		{`{"ids":[4,5,6]}`, false, nil},
		{`{"ids":[4, 5 ,6]}`, true, []uint64{4, 5, 6}},
		{`{"ids":[]}`, true, nil},
		{`{"error":"x"}`, false, nil},
		{`{"id":-1}`, false, nil},
		{``, true, nil},
	} {
		var s idStore
		n := scanIDs([]byte(tc.body), tc.batch, &s)
		got := s.appendTo(nil)
		if n != len(tc.want) || !slices.Equal(got, tc.want) {
			t.Errorf("%s: %d %v, want %v", tc.body, n, got, tc.want)
		}
	}
	// String ids are hashed: equal strings collide, different ones not.
	var s idStore
	scanIDs([]byte(`{"ids":["a1","b2","a1"]}`), true, &s)
	got := s.appendTo(nil)
	if len(got) != 3 || got[0] != got[2] || got[0] == got[1] {
		t.Errorf("string ids %v", got)
	}
}

func TestDuplicates(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		n    int
		span uint64
	}{{0, 1}, {1, 1}, {1000, 1 << 62}, {100000, 1 << 20}, {100000, 1 << 40}, {50000, 100}} {
		var s idStore
		var ref []uint64
		for range tc.n {
			v := r.Uint64N(tc.span)
			s.add(v)
			ref = append(ref, v)
		}
		if s.n != tc.n {
			t.Fatalf("stored %d of %d", s.n, tc.n)
		}
		ids := s.appendTo(nil)
		dups, ex := duplicates(ids)
		slices.Sort(ref)
		if !slices.Equal(ids, ref) {
			t.Fatalf("n=%d span=%d: radix sort differs from slices.Sort", tc.n, tc.span)
		}
		want := len(ref) - len(slices.Compact(slices.Clone(ref)))
		if dups != want {
			t.Errorf("n=%d span=%d: %d duplicates, want %d", tc.n, tc.span, dups, want)
		}
		if (want > 0) != (len(ex) > 0) || len(ex) > 5 {
			t.Errorf("examples %v", ex)
		}
	}
}

// jsDate is JavaScript's Date.prototype.toString format.
var jsDate = regexp.MustCompile(`^(Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d\d \d{4} \d\d:\d\d:\d\d GMT[+-]\d{4} \([A-Za-z ]+\)$`)

// TestGeneratedUsages: every generated usage passes busyapi's rules
// (patientId an integer or a string of at most 64 bytes, timestamp a
// string of at most 64 bytes, medication a string of at most 128) and they
// vary.
func TestGeneratedUsages(t *testing.T) {
	g := newUsageGen(7)
	patients, meds, stamps := map[string]bool{}, map[string]bool{}, map[string]bool{}
	kinds := map[string]int{}
	for range 5000 {
		b := g.appendUsage(nil)
		var u map[string]any
		if err := json.Unmarshal(b, &u); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if len(u) != 3 {
			t.Fatalf("%s: want patientId, timestamp and medication", b)
		}
		switch p := u["patientId"].(type) {
		case float64:
			kinds["number"]++
			patients[strconv.FormatFloat(p, 'f', -1, 64)] = true
		case string:
			kinds["string"]++
			if p == "" || len(p) > 64 {
				t.Fatalf("%s: bad patientId", b)
			}
			patients[p] = true
		default:
			t.Fatalf("%s: bad patientId", b)
		}
		ts, _ := u["timestamp"].(string)
		if len(ts) > 64 || !jsDate.MatchString(ts) {
			t.Fatalf("%s: timestamp %q is not Date.toString() in 64 bytes", b, ts)
		}
		stamps[ts] = true
		m, _ := u["medication"].(string)
		if m == "" || len(m) > 128 {
			t.Fatalf("%s: bad medication", b)
		}
		meds[m] = true
	}
	if len(patients) < 4000 || len(stamps) < 4900 || len(meds) < 10 || kinds["number"] < 1000 || kinds["string"] < 1000 {
		t.Errorf("not varied: %d patients, %d timestamps, %d medications, kinds %v", len(patients), len(stamps), len(meds), kinds)
	}
	// The timestamp is a real moment: parse it back.
	ts := string(newUsageGen(1).appendTimestamp(nil))
	if _, err := time.Parse("Mon Jan 02 2006 15:04:05 GMT-0700", ts[:strings.Index(ts, " (")]); err != nil {
		t.Errorf("%q: %v", ts, err)
	}
}

// TestRing: any window of up to pipeline requests is one slice of whole,
// well-formed requests.
func TestRing(t *testing.T) {
	for _, tc := range []struct {
		batch, pipeline int
		lines           [][]byte
	}{
		{0, 1, nil},
		{0, 16, nil},
		{10, 4, nil},
		{3, 2, [][]byte{[]byte(`{"a":1}`), []byte(`{"a":2}`)}},
		{0, 3, [][]byte{[]byte(`{"a":1}`)}},
	} {
		r := newRing("h:1", "/p", []string{"Authorization: Bearer x"}, tc.batch, tc.pipeline, tc.lines, 1)
		per := max(tc.batch, 1)
		for k := 0; k < r.n; k++ {
			w := r.window(k, tc.pipeline)
			br := bufio.NewReader(bytes.NewReader(w))
			for range tc.pipeline {
				line, _ := br.ReadString('\n')
				if line != "POST /p HTTP/1.1\r\n" {
					t.Fatalf("request line %q", line)
				}
				length, headers := -1, 0
				for {
					h, _ := br.ReadString('\n')
					if h == "\r\n" {
						break
					}
					if v, ok := strings.CutPrefix(h, "Content-Length: "); ok {
						length, _ = strconv.Atoi(strings.TrimSpace(v))
					}
					headers++
				}
				if headers != 5 { // Host, User-Agent, Authorization, Content-Type, Content-Length
					t.Fatalf("%d header lines", headers)
				}
				body := make([]byte, length)
				if n, _ := io.ReadFull(br, body); n != length {
					t.Fatalf("body %d of %d bytes", n, length)
				}
				if tc.batch > 0 {
					if c := bytes.Count(body, []byte("\n")); c != per || body[len(body)-1] != '\n' {
						t.Fatalf("batch body of %d lines, want %d", c, per)
					}
				} else if !json.Valid(body) {
					t.Fatalf("body %q", body)
				}
			}
			if br.Buffered() != 0 {
				t.Fatalf("window %d has %d extra bytes", k, br.Buffered())
			}
		}
	}
}

func TestParsePayload(t *testing.T) {
	lines, err := parsePayload(strings.NewReader("{\"a\":1}\n\n  {\"b\":2}  \r\n"), "f")
	if err != nil || len(lines) != 2 || string(lines[1]) != `{"b":2}` {
		t.Errorf("%q %v", lines, err)
	}
	for _, bad := range []string{"", "\n\n", "[1]\n", "{\"a\":\n1}\n"} {
		if _, err := parsePayload(strings.NewReader(bad), "f"); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestProgressViews(t *testing.T) {
	p := Progress{Elapsed: 3 * time.Second, Total: 10 * time.Second, Phase: "measure", Errors: 2,
		Last: Second{Responses: 16667, Sent: 16667, P99: 1.234}}
	var b bytes.Buffer
	bar := NewBar(&b, 10000)
	bar.Update(p)
	if s := b.String(); !strings.Contains(s, "16,667 req/s") || !strings.Contains(s, "2 errors") || !strings.Contains(s, "p99 1.23 ms") {
		t.Errorf("bar: %q", s)
	}
	bar.Finish()
	b.Reset()
	NewLines(&b).Update(p)
	if s := b.String(); s != "bench   3.0s/10s  measure 16,667 req/s  2 errors  p99 1.23 ms  (16,667 sent/s)\n" {
		t.Errorf("lines: %q", s)
	}
}

func TestNum(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 16666.7: "16,667", 1234567: "1,234,567", -1500: "-1,500"} {
		if got := num(v); got != want {
			t.Errorf("num(%v) = %q, want %q", v, got, want)
		}
	}
}
