package main

// Benchmarks of the whole request path through fasthttp, with baselines
// measured in the same run: an empty fasthttp handler and net/http with
// encoding/json. Requests come from fake in-memory connections, so the
// numbers are the server's own cost without the kernel's TCP stack:
//
//	go test -run '^$' -bench . -benchmem
//	go test -run '^$' -bench 'Ring|IDs' -benchmem -cpu 1,2,4,8

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/busyapi/busyapi/server"
	"github.com/busyapi/busyapi/shard"
)

const benchBody = `{"patientId":100,"timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}`

var benchRequest = []byte("POST /api/usages HTTP/1.1\r\nHost: localhost:3000\r\nUser-Agent: bench\r\n" +
	"Content-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(benchBody)) + "\r\n\r\n" + benchBody)

// fakeConn feeds the same request to a server, depth requests per Read
// (1 = one request per round trip, 16 = 16-deep pipelining), for as long as
// next says so, and discards what the server writes.
type fakeConn struct {
	buf    []byte
	off    int
	next   func() bool
	closed chan struct{}
	once   sync.Once
}

func newFakeConn(depth int, next func() bool) *fakeConn {
	return &fakeConn{buf: bytes.Repeat(benchRequest, depth), off: len(benchRequest) * depth, next: next, closed: make(chan struct{})}
}

func (c *fakeConn) Read(p []byte) (int, error) {
	if c.off == len(c.buf) {
		if !c.next() {
			return 0, io.EOF
		}
		c.off = 0
	}
	n := copy(p, c.buf[c.off:])
	c.off += n
	return n, nil
}

func (c *fakeConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *fakeConn) Close() error                     { c.once.Do(func() { close(c.closed) }); return nil }
func (c *fakeConn) LocalAddr() net.Addr              { return fakeAddr }
func (c *fakeConn) RemoteAddr() net.Addr             { return fakeAddr }
func (c *fakeConn) SetDeadline(time.Time) error      { return nil }
func (c *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fakeConn) SetWriteDeadline(time.Time) error { return nil }

var fakeAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 3000}

// countNext returns a next func for n rounds.
func countNext(n int) func() bool {
	return func() bool { n--; return n >= 0 }
}

func newBenchServer(b *testing.B) *server.Server {
	return newBenchServerCfg(b, server.Config{})
}

func newBenchServerCfg(b *testing.B, cfg server.Config) *server.Server {
	b.Helper()
	// A ring large enough that the drainer, which wakes every 10 ms, never
	// lets it fill at benchmark speed: a 503 would make the numbers lie.
	cfg.RingBytes, cfg.CacheBytes = 64<<20, 64<<20
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := server.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	return s
}

func fastServer(h fasthttp.RequestHandler) *fasthttp.Server {
	return &fasthttp.Server{Handler: h, MaxRequestBodySize: 16 << 10, Name: "bench"}
}

func checkStored(b *testing.B, s *server.Server, want int) {
	b.Helper()
	var st server.Stats
	s.UpdateStats(&st)
	if st.Stored != uint64(want) {
		b.Fatalf("stored %d usages for %d requests: %+v", st.Stored, want, st.Rejected)
	}
}

func benchFast(b *testing.B, h fasthttp.RequestHandler, depth int, parallel bool) {
	srv := fastServer(h)
	b.ReportAllocs()
	b.SetBytes(int64(len(benchRequest)))
	b.ResetTimer()
	if !parallel {
		rounds := (b.N + depth - 1) / depth
		if err := srv.ServeConn(newFakeConn(depth, countNext(rounds))); err != nil {
			b.Fatal(err)
		}
		return
	}
	b.RunParallel(func(pb *testing.PB) {
		next := pb.Next
		if depth > 1 {
			// One pb.Next per request, depth requests per read.
			next = func() bool {
				for i := 0; i < depth; i++ {
					if !pb.Next() {
						return i > 0
					}
				}
				return true
			}
		}
		if err := srv.ServeConn(newFakeConn(depth, next)); err != nil {
			b.Error(err)
		}
	})
}

func emptyHandler(*fasthttp.RequestCtx) {}

// BenchmarkPostUsage is one keep-alive connection posting one usage per
// round trip through the full path: fasthttp parsing, fastjson validation,
// id reservation, the ring, the 201 answer. It must show 0 allocs/op.
func BenchmarkPostUsage(b *testing.B) {
	s := newBenchServer(b)
	benchFast(b, s.Handler, 1, false)
	b.StopTimer()
	checkStored(b, s, b.N)
}

func BenchmarkPostUsageParallel(b *testing.B) {
	s := newBenchServer(b)
	benchFast(b, s.Handler, 1, true)
	b.StopTimer()
	checkStored(b, s, b.N)
}

// BenchmarkPostUsagePipelined sends 16 requests per read, like wrk with
// 16-deep pipelining. b.N is rounded up to whole reads.
func BenchmarkPostUsagePipelined(b *testing.B) {
	s := newBenchServer(b)
	benchFast(b, s.Handler, 16, false)
	b.StopTimer()
	checkStored(b, s, (b.N+15)/16*16)
}

// BenchmarkPostUsageFsync is the default durable mode: each 201 waits for
// the fdatasync of its batch. Connections run in parallel (b.RunParallel
// with -cpu and SetParallelism), so batches form while one syncs. The
// worker's path allocates nothing; the drainer allocates one wake-up
// channel per batch, which shows in allocs/op when batches are small.
func BenchmarkPostUsageFsync(b *testing.B) {
	b.SetParallelism(64)
	s := newBenchServerCfg(b, server.Config{DataDir: b.TempDir()})
	benchFast(b, s.Handler, 1, true)
	b.StopTimer()
	checkStored(b, s, b.N)
}

// BenchmarkPostUsageMemoryLog is --ack memory with the log: 201 from the
// ring, the log written every flush interval.
func BenchmarkPostUsageMemoryLog(b *testing.B) {
	s := newBenchServerCfg(b, server.Config{DataDir: b.TempDir(), Ack: server.AckMemory})
	benchFast(b, s.Handler, 1, true)
	b.StopTimer()
	checkStored(b, s, b.N)
}

// BenchmarkGetUsageFromLog reads usages that are not in the cache: index
// lookup and a pread from the log. It reports the p50 and p99 latency.
func BenchmarkGetUsageFromLog(b *testing.B) {
	dir := b.TempDir()
	s := newBenchServerCfg(b, server.Config{DataDir: dir, Ack: server.AckMemory})
	var ctx fasthttp.RequestCtx
	var req fasthttp.Request
	req.Header.SetMethod("POST")
	req.SetRequestURI("/api/usages")
	req.SetBodyString(benchBody)
	ctx.Init(&req, nil, nil)
	const n = 200000
	var ids []uint64
	for len(ids) < n {
		ctx.Response.Reset()
		s.Handler(&ctx)
		if ctx.Response.StatusCode() == 201 {
			ids = append(ids, uint64(fastjsonInt(ctx.Response.Body())))
		}
	}
	if err := s.Shutdown(context.Background()); err != nil {
		b.Fatal(err)
	}
	// Reopen: the cache starts empty, so every GET misses it.
	s = newBenchServerCfg(b, server.Config{DataDir: dir, Ack: server.AckMemory})
	lat := make([]time.Duration, 0, b.N)
	var get fasthttp.Request
	get.Header.SetMethod("GET")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		get.SetRequestURI("/api/usages/" + strconv.FormatUint(ids[(i*7919)%n], 10))
		ctx.Init(&get, nil, nil)
		ctx.Response.Reset()
		start := time.Now()
		s.Handler(&ctx)
		lat = append(lat, time.Since(start))
		if ctx.Response.StatusCode() != 200 {
			b.Fatalf("GET: %d %s", ctx.Response.StatusCode(), ctx.Response.Body())
		}
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
}

func fastjsonInt(b []byte) int {
	n := 0
	for _, c := range b {
		if c >= '0' && c <= '9' {
			n = n*10 + int(c-'0')
		}
	}
	return n
}

func BenchmarkEmptyFastHTTP(b *testing.B)          { benchFast(b, emptyHandler, 1, false) }
func BenchmarkEmptyFastHTTPParallel(b *testing.B)  { benchFast(b, emptyHandler, 1, true) }
func BenchmarkEmptyFastHTTPPipelined(b *testing.B) { benchFast(b, emptyHandler, 16, false) }

// netHTTPBaseline is what a careful net/http + encoding/json version of the
// same endpoint looks like: same validation, an atomic id, the usage kept in
// memory, 201 {"id":N} with Location.
type netHTTPBaseline struct {
	next   atomic.Uint64
	mu     sync.Mutex
	usages map[uint64][]byte
}

type usageIn struct {
	PatientID  json.RawMessage `json:"patientId"`
	Timestamp  json.RawMessage `json:"timestamp"`
	Medication *string         `json:"medication"`
}

func (h *netHTTPBaseline) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/api/usages" {
		http.Error(w, `{"error":"not found"}`, http.StatusNotFound)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 16<<10))
	if err != nil {
		http.Error(w, `{"error":"request body is too large"}`, http.StatusRequestEntityTooLarge)
		return
	}
	var u usageIn
	if err := json.Unmarshal(body, &u); err != nil || len(u.PatientID) == 0 || len(u.Timestamp) == 0 ||
		u.Medication == nil || *u.Medication == "" || len(*u.Medication) > 128 {
		http.Error(w, `{"error":"invalid usage"}`, http.StatusBadRequest)
		return
	}
	id := h.next.Add(1)
	h.mu.Lock()
	h.usages[id] = body
	h.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Location", "/api/usages/"+strconv.FormatUint(id, 10))
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(struct {
		ID uint64 `json:"id"`
	}{id})
}

// chanListener hands the fake connections to http.Server.
type chanListener struct {
	conns  chan net.Conn
	closed chan struct{}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}
func (l *chanListener) Close() error   { return nil }
func (l *chanListener) Addr() net.Addr { return fakeAddr }

func benchNetHTTP(b *testing.B, parallel bool) {
	h := &netHTTPBaseline{usages: make(map[uint64][]byte)}
	ln := &chanListener{conns: make(chan net.Conn), closed: make(chan struct{})}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(ln) }()
	defer func() {
		close(ln.closed)
		_ = srv.Close()
	}()
	b.ReportAllocs()
	b.SetBytes(int64(len(benchRequest)))
	b.ResetTimer()
	serve := func(next func() bool) {
		c := newFakeConn(1, next)
		ln.conns <- c
		<-c.closed
	}
	if parallel {
		b.RunParallel(func(pb *testing.PB) { serve(pb.Next) })
	} else {
		serve(countNext(b.N))
	}
	b.StopTimer()
	if got := int(h.next.Load()); got != b.N {
		b.Fatalf("stored %d usages for %d requests", got, b.N)
	}
}

func BenchmarkNetHTTPPostUsage(b *testing.B)         { benchNetHTTP(b, false) }
func BenchmarkNetHTTPPostUsageParallel(b *testing.B) { benchNetHTTP(b, true) }

// BenchmarkRingPut measures the lock-free ring alone: producers on every P
// put usages while one consumer drains. Run with -cpu 1,2,4,8.
func BenchmarkRingPut(b *testing.B) {
	r := shard.NewRing(4 << 20)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if n, _ := r.Drain(func(uint64, []byte) {}); n == 0 {
				runtime.Gosched()
			}
		}
	}()
	body := []byte(benchBody)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			for {
				_, err := r.Put(1, body)
				if err == nil {
					break
				}
				if !errors.Is(err, shard.ErrFull) {
					b.Error(err)
					return
				}
				runtime.Gosched()
			}
		}
	})
	b.StopTimer()
	close(stop)
	<-done
}

// BenchmarkIDsNext measures the id allocator: each goroutine allocates from
// its own shard, as HTTP workers do. Compare BenchmarkIDsGlobalAtomic, one
// shared counter, under -cpu 1,2,4,8.
func BenchmarkIDsNext(b *testing.B) {
	ids := shard.NewIDs(runtime.GOMAXPROCS(0), 4096, 1)
	var g atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := int(g.Add(1)-1) % runtime.GOMAXPROCS(0)
		for pb.Next() {
			if _, err := ids.Next(i); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkIDsGlobalAtomic(b *testing.B) {
	var next atomic.Uint64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			next.Add(1)
		}
	})
}

// TestBenchHarness makes sure the fake connections really deliver requests
// and that the net/http baseline accepts the same body: a benchmark that
// silently served errors would report nonsense.
func TestBenchHarness(t *testing.T) {
	var seen atomic.Int64
	srv := fastServer(func(ctx *fasthttp.RequestCtx) {
		if string(ctx.PostBody()) == benchBody {
			seen.Add(1)
		}
	})
	if err := srv.ServeConn(newFakeConn(16, countNext(2))); err != nil {
		t.Fatal(err)
	}
	if seen.Load() != 32 {
		t.Fatalf("handler saw %d requests, want 32", seen.Load())
	}
	h := &netHTTPBaseline{usages: make(map[uint64][]byte)}
	rec := &recorder{header: http.Header{}}
	req, _ := http.NewRequest("POST", "/api/usages", strings.NewReader(benchBody))
	h.ServeHTTP(rec, req)
	if rec.status != 201 || !strings.HasPrefix(rec.body.String(), `{"id":1}`) {
		t.Fatalf("baseline answered %d %q", rec.status, rec.body.String())
	}
}

type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(p []byte) (int, error) { return r.body.Write(p) }
func (r *recorder) WriteHeader(s int)           { r.status = s }
