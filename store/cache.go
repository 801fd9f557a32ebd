// Package store keeps stored usages readable by id.
package store

import (
	"encoding/binary"
	"sync/atomic"

	"github.com/VictoriaMetrics/fastcache"
)

// bigValue is the size from which a value goes through fastcache's
// SetBig/GetBig: fastcache silently drops Set entries of 64 KiB or more.
const bigValue = 60 << 10

// Cache is a bounded in-memory store of usages keyed by id, backed by
// fastcache: its 64 KiB chunks are allocated off the Go heap, so stored
// usages add no heap objects and no GC work. When it is full, the oldest
// usages are evicted.
//
// Put for shard i must only be called by shard i's drainer; Get is safe for
// concurrent use by any goroutine.
type Cache struct {
	c      *fastcache.Cache
	shards []cacheShard
}

type cacheShard struct {
	puts atomic.Uint64
	big  atomic.Uint64
	_    [48]byte
}

// NewCache returns a cache of about maxBytes (at least 32 MiB, fastcache's
// minimum) for n shards.
func NewCache(maxBytes, n int) *Cache {
	return &Cache{c: fastcache.New(maxBytes), shards: make([]cacheShard, n)}
}

func key(k *[9]byte, kind byte, id uint64) []byte {
	k[0] = kind
	binary.BigEndian.PutUint64(k[1:], id)
	return k[:]
}

// Append stores body under id. It implements shard.Sink.
func (c *Cache) Append(shard int, id uint64, body []byte) {
	var k [9]byte
	if len(body) >= bigValue {
		c.c.SetBig(key(&k, 'b', id), body)
		c.shards[shard].big.Add(1)
	} else {
		c.c.Set(key(&k, 's', id), body)
	}
	c.shards[shard].puts.Add(1)
}

// Fill caches a usage read from elsewhere (the log), so the next read of it
// is a cache hit. Safe for concurrent use by any goroutine.
func (c *Cache) Fill(id uint64, body []byte) {
	var k [9]byte
	if len(body) >= bigValue {
		c.c.SetBig(key(&k, 'b', id), body)
	} else {
		c.c.Set(key(&k, 's', id), body)
	}
}

// Flush implements shard.Sink; fastcache makes a Set visible at once.
func (c *Cache) Flush(int) error { return nil }

// Get appends the usage stored under id to dst. It reports false when the id
// was never stored or has been evicted.
func (c *Cache) Get(dst []byte, id uint64) ([]byte, bool) {
	var k [9]byte
	if v, ok := c.c.HasGet(dst, key(&k, 's', id)); ok {
		return v, true
	}
	v := c.c.GetBig(dst, key(&k, 'b', id))
	return v, len(v) > len(dst)
}

// CacheStats are counters of a Cache.
type CacheStats struct {
	Stored    uint64 // usages put
	Entries   uint64 // usages currently held
	Evicted   uint64 // usages put but no longer held
	Bytes     uint64 // bytes held
	MaxBytes  uint64
	GetCalls  uint64 // fastcache lookups (a Get is one or more)
	Misses    uint64 // fastcache lookups that found nothing
	Collision uint64
	// Hits and GetMisses count Get calls that found, and did not find,
	// their usage. Hits is exact while usages are below 60 KiB; a hit of
	// a larger one counts once per 64 KiB chunk, plus one.
	Hits      uint64
	GetMisses uint64
}

// UpdateStats fills st.
func (c *Cache) UpdateStats(st *CacheStats) {
	var fs fastcache.Stats
	c.c.UpdateStats(&fs)
	var puts, big uint64
	for i := range c.shards {
		puts += c.shards[i].puts.Load()
		big += c.shards[i].big.Load()
	}
	st.Stored = puts
	// A big value occupies several entries (one per 64 KiB chunk plus its
	// index); count small values only for eviction accounting.
	held := fs.EntriesCount
	if held > puts-big {
		held = puts - big
	}
	st.Entries = held
	st.Evicted = puts - big - held
	st.Bytes = fs.BytesSize
	st.MaxBytes = fs.MaxBytesSize
	st.GetCalls = fs.GetCalls
	st.Misses = fs.Misses
	st.Collision = fs.Collisions
	// A Get that misses looks up the small key, then the big one's
	// metavalue, or its first missing chunk: two fastcache misses, one of
	// them the small key's, which also precedes each GetBig call.
	// The counters are read one after another while Gets go on, so
	// clamp instead of wrapping around.
	st.GetMisses = sub(fs.Misses, fs.GetBigCalls)
	st.Hits = sub(fs.GetCalls, fs.Misses)
}

// sub returns a-b, or 0 if b > a.
func sub(a, b uint64) uint64 {
	if b > a {
		return 0
	}
	return a - b
}

// Reset drops everything.
func (c *Cache) Reset() { c.c.Reset() }

// Del removes id, for a usage whose write failed after it was cached.
func (c *Cache) Del(id uint64) {
	var k [9]byte
	c.c.Del(key(&k, 's', id))
	c.c.Del(key(&k, 'b', id))
}
