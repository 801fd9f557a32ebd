package server

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"
)

func postKey(t *testing.T, addr, uri, key, ct, body string) *fasthttp.Response {
	t.Helper()
	h := map[string]string{"Content-Type": ct}
	if key != "" {
		h["Idempotency-Key"] = key
	}
	return httpDo(t, addr, "POST", uri, h, []byte(body))
}

func TestIdempotentRetry(t *testing.T) {
	forEachAck(t, func(t *testing.T, s *Server, addr string) {
		first := postKey(t, addr, "/api/usages", `"k-1"`, "application/json", sample)
		if first.StatusCode() != 201 {
			t.Fatalf("first: %d %s", first.StatusCode(), first.Body())
		}
		for _, key := range []string{`"k-1"`, `k-1`, ` "k-1" `} {
			again := postKey(t, addr, "/api/usages", key, "application/json", sample+"\n")
			if again.StatusCode() != 201 || string(again.Body()) != string(first.Body()) ||
				string(again.Header.Peek("Location")) != string(first.Header.Peek("Location")) ||
				string(again.Header.Peek("Idempotent-Replayed")) != "true" {
				t.Fatalf("retry with %s: %d %s Location %q, want %s Location %q", key, again.StatusCode(), again.Body(),
					again.Header.Peek("Location"), first.Body(), first.Header.Peek("Location"))
			}
		}
		other := postKey(t, addr, "/api/usages", "k-1", "application/json", strings.Replace(sample, "100", "101", 1))
		if other.StatusCode() != 422 || !strings.Contains(errorOf(t, other), "different request body") {
			t.Fatalf("same key, other body: %d %s", other.StatusCode(), other.Body())
		}
		// The key is per route: the same key on the batch endpoint is
		// another request.
		items := usages(3, 1)
		b1 := postKey(t, addr, "/api/usages/batch", "k-1", "application/x-ndjson", string(ndjson(items)))
		if b1.StatusCode() != 422 {
			t.Fatalf("key of a single POST reused for a batch: %d %s", b1.StatusCode(), b1.Body())
		}
		b1 = postKey(t, addr, "/api/usages/batch", "b-1", "application/x-ndjson", string(ndjson(items)))
		ids := batchIDs(t, b1)
		b2 := postKey(t, addr, "/api/usages/batch", "b-1", "application/x-ndjson", string(ndjson(items)))
		if got := batchIDs(t, b2); len(got) != 3 || got[0] != ids[0] || got[2] != ids[2] {
			t.Fatalf("batch retry ids %v, want %v", got, ids)
		}
		if n := s.stored.Load(); n != 4 {
			t.Fatalf("stored %d usages, want 4 (one usage and one batch of 3)", n)
		}
		if n := s.replays.Load(); n != 4 {
			t.Fatalf("replays %d, want 4", n)
		}
		var buf bytes.Buffer
		s.WriteMetrics(&buf)
		if !strings.Contains(buf.String(), "busyapi_idempotent_replays_total 4\n") {
			t.Fatalf("metrics do not count 4 replays:\n%s", buf.String())
		}
		// Without a key, the same body is a new usage.
		if r := postKey(t, addr, "/api/usages", "", "application/json", sample); r.StatusCode() != 201 || string(r.Body()) == string(first.Body()) {
			t.Fatalf("no key: %d %s", r.StatusCode(), r.Body())
		}
	})
}

func TestIdempotencyKeyRejects(t *testing.T) {
	s := newTestServer(t, Config{})
	addr := startTCP(t, s)
	for _, key := range []string{`""`, strings.Repeat("x", 256), "ключ", `"a"b"`} {
		r := postKey(t, addr, "/api/usages", key, "application/json", sample)
		if r.StatusCode() != 400 || !strings.Contains(errorOf(t, r), "Idempotency-Key") {
			t.Fatalf("key %q: %d %s", key, r.StatusCode(), r.Body())
		}
	}
	// An invalid body with a key is refused and not remembered: the key
	// can then be used with a valid body.
	if r := postKey(t, addr, "/api/usages", "k", "application/json", `{"patientId":1}`); r.StatusCode() != 400 {
		t.Fatalf("bad body: %d", r.StatusCode())
	}
	if r := postKey(t, addr, "/api/usages", "k", "application/json", sample); r.StatusCode() != 201 {
		t.Fatalf("good body after a bad one: %d %s", r.StatusCode(), r.Body())
	}
	if n := s.stored.Load(); n != 1 {
		t.Fatalf("stored %d", n)
	}
	// Header names are case-insensitive.
	var bodies []string
	for range 2 {
		r, err := rawExchange(t, addr, postRequest(sample, "idempotency-KEY: lower\r\n"))
		if err != nil || r.StatusCode() != 201 {
			t.Fatalf("lower-case header name: %v %v", r, err)
		}
		bodies = append(bodies, string(r.Body()))
	}
	if bodies[0] != bodies[1] || s.stored.Load() != 2 {
		t.Fatalf("lower-case header name: %v, stored %d", bodies, s.stored.Load())
	}
}

// 32 concurrent requests with one key store exactly one usage; every 201
// carries its id, and the others are 409.
func TestIdempotencyConcurrent(t *testing.T) {
	s := newTestServer(t, Config{DataDir: t.TempDir()})
	addr := startTCP(t, s)
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	bodies := map[string]int{}
	for range 32 {
		wg.Go(func() {
			r := postKey(t, addr, "/api/usages", "same", "application/json", sample)
			mu.Lock()
			defer mu.Unlock()
			statuses[r.StatusCode()]++
			if r.StatusCode() == 201 {
				bodies[string(r.Body())]++
			} else if r.StatusCode() != 409 || string(r.Header.Peek("Retry-After")) == "" {
				t.Errorf("status %d %s", r.StatusCode(), r.Body())
			}
		})
	}
	wg.Wait()
	t.Logf("statuses %v", statuses)
	if len(bodies) != 1 || statuses[201] == 0 {
		t.Fatalf("201 bodies %v, want one id", bodies)
	}
	if n := s.stored.Load(); n != 1 {
		t.Fatalf("stored %d usages, want 1", n)
	}
	// Once answered, the key replays the id to everyone.
	r := postKey(t, addr, "/api/usages", "same", "application/json", sample)
	if _, ok := bodies[string(r.Body())]; !ok || r.StatusCode() != 201 {
		t.Fatalf("after: %d %s", r.StatusCode(), r.Body())
	}
}

func TestIdempotencyWindow(t *testing.T) {
	s := newTestServer(t, Config{IdempotencyWindow: 50 * time.Millisecond})
	addr := startTCP(t, s)
	a := postKey(t, addr, "/api/usages", "w", "application/json", sample)
	time.Sleep(80 * time.Millisecond)
	b := postKey(t, addr, "/api/usages", "w", "application/json", sample)
	if a.StatusCode() != 201 || b.StatusCode() != 201 || string(a.Body()) == string(b.Body()) {
		t.Fatalf("after the window: %s then %s, want two new ids", a.Body(), b.Body())
	}
	if v, _ := fastjson.ParseBytes(b.Body()); v.GetUint64("id") == 0 {
		t.Fatalf("bad body %s", b.Body())
	}
}

// Keys survive a restart: they are rebuilt from the trailers in the log,
// and a retry after the restart replays the answer without storing again.
// The trailers never show in the export.
func TestIdempotencyAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	var answers []string
	items := usages(5, 1)
	for round := range 2 {
		s := newDurable(t, dir, Config{})
		ln := startTCP(t, s)
		single := postKey(t, ln, "/api/usages", "one", "application/json", sample)
		batch := postKey(t, ln, "/api/usages/batch", "many", "application/x-ndjson", string(ndjson(items)))
		if single.StatusCode() != 201 || batch.StatusCode() != 201 {
			t.Fatalf("round %d: %d %s, %d %s", round, single.StatusCode(), single.Body(), batch.StatusCode(), batch.Body())
		}
		got := []string{string(single.Body()), string(batch.Body())}
		if round == 0 {
			answers = got
			if s.replays.Load() != 0 {
				t.Fatal("replays before any retry")
			}
		} else {
			if got[0] != answers[0] || got[1] != answers[1] {
				t.Fatalf("after a restart: %v, want %v", got, answers)
			}
			if s.stored.Load() != 0 || s.replays.Load() != 2 {
				t.Fatalf("after a restart: stored %d, replays %d; want 0, 2", s.stored.Load(), s.replays.Load())
			}
			r := httpDo(t, ln, "GET", "/api/usages/export?limit=100", nil, nil)
			if n := string(r.Header.Peek("X-Export-Count")); n != "6" {
				t.Fatalf("export count %s, want 6: %s", n, r.Body())
			}
		}
		if err := s.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}
