//go:build !race

package server

import (
	"runtime"
	"testing"

	"github.com/valyala/fasthttp"
)

func newPostCtx(body string) *fasthttp.RequestCtx {
	var req fasthttp.Request
	req.Header.SetMethod("POST")
	req.SetRequestURI("/api/usages")
	req.Header.SetContentType("application/json")
	req.SetBodyString(body)
	ctx := new(fasthttp.RequestCtx)
	ctx.Init(&req, nil, nil)
	return ctx
}

// TestPostUsageNoAllocs guards the hot path: a full POST through the handler
// (parse, validate, reserve an id, copy into the ring, answer) allocates
// nothing.
func TestPostUsageNoAllocs(t *testing.T) {
	s := newTestServer(t, Config{})
	ctx := newPostCtx(sample)
	run := func() {
		ctx.Response.Reset()
		s.Handler(ctx)
		if ctx.Response.StatusCode() != 201 {
			t.Fatalf("status %d: %s", ctx.Response.StatusCode(), ctx.Response.Body())
		}
	}
	if n := testing.AllocsPerRun(5000, run); n != 0 {
		t.Fatalf("POST /api/usages allocates %v times per request, want 0", n)
	}
	// Rejections allocate nothing either, so garbage cannot make GC work.
	bad := newPostCtx(`{"patientId":true,"timestamp":"t","medication":"m"}`)
	if n := testing.AllocsPerRun(1000, func() {
		bad.Response.Reset()
		s.Handler(bad)
	}); n != 0 {
		t.Fatalf("a rejected POST allocates %v times per request, want 0", n)
	}
}

// TestPostUsageNoAllocsWithTokens: with bearer tokens configured, the
// authenticated POST and the 401 and 403 answers allocate nothing either.
func TestPostUsageNoAllocsWithTokens(t *testing.T) {
	tokens, _ := testTokens(t, "read r-1\nwrite w-1\nwrite w-2\nread r-2\n")
	s := newTestServer(t, Config{Tokens: tokens})
	for _, c := range []struct {
		header string
		status int
	}{
		{"Bearer w-2", 201},
		{"", 401},
		{"Bearer unknown-token", 401},
		{"Bearer r-1", 403},
	} {
		ctx := newPostCtx(sample)
		if c.header != "" {
			ctx.Request.Header.Set("Authorization", c.header)
		}
		if n := testing.AllocsPerRun(2000, func() {
			ctx.Response.Reset()
			s.Handler(ctx)
			if ctx.Response.StatusCode() != c.status {
				t.Fatalf("%q: status %d, want %d: %s", c.header, ctx.Response.StatusCode(), c.status, ctx.Response.Body())
			}
		}); n != 0 {
			t.Fatalf("POST with Authorization %q allocates %v times per request, want 0", c.header, n)
		}
	}
}

// BenchmarkPostUsageTokens is a POST through the handler with a write
// token checked against four tokens. It must show 0 allocs/op.
func BenchmarkPostUsageTokens(b *testing.B) {
	tokens, _ := testTokens(b, "read r-1\nwrite w-1\nwrite w-2\nread r-2\n")
	s := newTestServer(b, Config{Tokens: tokens, RingBytes: 64 << 20})
	ctx := newPostCtx(sample)
	ctx.Request.Header.Set("Authorization", "Bearer w-2")
	b.ReportAllocs()
	for b.Loop() {
		ctx.Response.Reset()
		s.Handler(ctx)
		if ctx.Response.StatusCode() != 201 {
			// The drainer runs every millisecond; give it a moment.
			runtime.Gosched()
		}
	}
}

// TestHeapObjectsFlat stores 1M usages and checks that the number of live
// heap objects does not grow with them: the rings and the store (fastcache's
// off-heap chunks) hold no per-usage pointers.
func TestHeapObjectsFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("stores 1M usages")
	}
	s := newTestServer(t, Config{CacheBytes: 256 << 20})
	ctx := newPostCtx(sample)
	post := func(n int) {
		for i := 0; i < n; i++ {
			ctx.Response.Reset()
			s.Handler(ctx)
			if ctx.Response.StatusCode() != 201 {
				// The drainer runs every millisecond; give it a moment.
				runtime.Gosched()
				i--
			}
		}
	}
	post(10000) // warm pools and caches
	heapObjects := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapObjects
	}
	before := heapObjects()
	const n = 1_000_000
	post(n)
	s.set.Close() // drain every ring into the store
	after := heapObjects()
	var st Stats
	s.UpdateStats(&st)
	t.Logf("stored %d usages: heap objects %d before, %d after; cache holds %d entries in %d bytes",
		st.Stored, before, after, st.Cache.Entries, st.Cache.Bytes)
	if st.Cache.Entries < n/2 {
		t.Fatalf("cache holds only %d of %d usages", st.Cache.Entries, n)
	}
	if after > before+n/100 {
		t.Fatalf("heap objects grew from %d to %d for %d usages", before, after, n)
	}
}
