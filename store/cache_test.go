package store

import (
	"bytes"
	"strings"
	"testing"
)

func TestCache(t *testing.T) {
	c := NewCache(32<<20, 2)
	f := func(id uint64, body string) {
		t.Helper()
		c.Append(int(id%2), id, []byte(body))
		got, ok := c.Get(nil, id)
		if !ok || string(got) != body {
			t.Fatalf("Get(%d) = %q, %v; want %q", id, got, ok, body)
		}
	}
	f(1, `{"patientId":1}`)
	f(2, ``+"{}")
	f(1<<52, `{"big":"`+strings.Repeat("x", 100<<10)+`"}`) // SetBig path
	if _, ok := c.Get(nil, 3); ok {
		t.Fatal("Get of a missing id succeeded")
	}
	// Get appends to dst.
	got, ok := c.Get([]byte("prefix:"), 1)
	if !ok || !bytes.Equal(got, []byte(`prefix:{"patientId":1}`)) {
		t.Fatalf("Get with dst = %q", got)
	}
	c.Fill(7, []byte("filled"))
	if got, ok := c.Get(nil, 7); !ok || string(got) != "filled" {
		t.Fatalf("Fill then Get = %q, %v", got, ok)
	}
	c.Del(7)
	c.Del(1 << 52)
	if _, ok := c.Get(nil, 7); ok {
		t.Fatal("Del did not remove a small value")
	}
	if _, ok := c.Get(nil, 1<<52); ok {
		t.Fatal("Del did not remove a big value")
	}
	var st CacheStats
	c.UpdateStats(&st)
	if st.Stored != 3 || st.Entries == 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestCacheEvicts fills a minimum-size cache far past its capacity: the
// oldest usages go, the newest stay, and evictions are counted.
func TestCacheEvicts(t *testing.T) {
	c := NewCache(32<<20, 1)
	body := []byte(strings.Repeat("u", 1000))
	const n = 100000 // about 100 MB into 32 MiB
	for id := uint64(1); id <= n; id++ {
		c.Append(0, id, body)
	}
	if _, ok := c.Get(nil, 1); ok {
		t.Fatal("the oldest usage survived 3x the capacity")
	}
	if got, ok := c.Get(nil, n); !ok || !bytes.Equal(got, body) {
		t.Fatal("the newest usage is missing")
	}
	var st CacheStats
	c.UpdateStats(&st)
	if st.Evicted == 0 || st.Evicted+st.Entries != n {
		t.Fatalf("evicted %d + held %d != stored %d", st.Evicted, st.Entries, n)
	}
}

// TestCacheHitsMisses: Hits and GetMisses count Get calls, although a
// missing usage costs fastcache two lookups (small key, then big key).
func TestCacheHitsMisses(t *testing.T) {
	c := NewCache(32<<20, 1)
	c.Append(0, 1, []byte(`{"patientId":1}`))
	c.Fill(2, []byte(`{"patientId":2}`))
	c.Append(0, 3, []byte(`{"big":"`+strings.Repeat("x", 100<<10)+`"}`))
	get := func(id uint64, want bool) {
		t.Helper()
		if _, ok := c.Get(nil, id); ok != want {
			t.Fatalf("Get(%d) found %v, want %v", id, ok, want)
		}
	}
	get(1, true)
	get(2, true)
	get(4, false)
	get(5, false)
	get(1, true)
	var st CacheStats
	c.UpdateStats(&st)
	if st.Hits != 3 || st.GetMisses != 2 {
		t.Fatalf("Hits %d, GetMisses %d; want 3 and 2 (fastcache: %d lookups, %d misses)", st.Hits, st.GetMisses, st.GetCalls, st.Misses)
	}
	get(3, true) // a big value: misses do not change
	c.UpdateStats(&st)
	if st.GetMisses != 2 || st.Hits < 4 {
		t.Fatalf("after a big hit: Hits %d, GetMisses %d; want at least 4 and 2", st.Hits, st.GetMisses)
	}
}
