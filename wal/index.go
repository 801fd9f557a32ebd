package wal

import (
	"sync"
	"sync/atomic"
)

// chunkIDs is how many consecutive ids share one index chunk.
const chunkIDs = 4096

// Index maps ids to their shard and position: 8 bytes per id in dense,
// pointer-free chunks of 4096 ids, allocated only for id ranges that hold
// usages. Set is for drainers, Get for any goroutine; both are safe for
// concurrent use.
type Index struct {
	mu     sync.RWMutex
	chunks map[uint64]*[chunkIDs]atomic.Uint64
	n      atomic.Int64
}

// NewIndex returns an empty index.
func NewIndex() *Index {
	return &Index{chunks: make(map[uint64]*[chunkIDs]atomic.Uint64)}
}

const posBits = 48 // positions up to 256 TiB per shard; the shard in the high bits

// maxPos bounds the positions the index can hold.
const maxPos = 1<<posBits - 1

// Set records that id is at pos in shard's log.
func (x *Index) Set(id uint64, shard int, pos uint64) {
	x.SetMany(shard, []uint64{id, pos})
}

// SetMany records, for each pair (id, pos) of pairs, that id is at pos in
// shard's log, as Set does, under one read lock: a drainer indexes a whole
// batch at once.
func (x *Index) SetMany(shard int, pairs []uint64) {
	var (
		c     *[chunkIDs]atomic.Uint64
		k     = ^uint64(0)
		added int64
	)
	x.mu.RLock()
	for i := 0; i+1 < len(pairs); i += 2 {
		id := pairs[i]
		if ck := (id - 1) / chunkIDs; ck != k {
			k = ck
			if c = x.chunks[k]; c == nil {
				x.mu.RUnlock()
				c = x.newChunk(k)
				x.mu.RLock()
			}
		}
		if c[(id-1)%chunkIDs].Swap(uint64(shard)<<posBits|(pairs[i+1]+1)) == 0 {
			added++
		}
	}
	x.mu.RUnlock()
	x.n.Add(added)
}

// newChunk returns chunk k, adding it if it is missing.
func (x *Index) newChunk(k uint64) *[chunkIDs]atomic.Uint64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	c := x.chunks[k]
	if c == nil {
		c = new([chunkIDs]atomic.Uint64)
		x.chunks[k] = c
	}
	return c
}

// Get returns the shard and position of id.
func (x *Index) Get(id uint64) (int, uint64, bool) {
	if id == 0 {
		return 0, 0, false
	}
	x.mu.RLock()
	c := x.chunks[(id-1)/chunkIDs]
	x.mu.RUnlock()
	if c == nil {
		return 0, 0, false
	}
	v := c[(id-1)%chunkIDs].Load()
	if v == 0 {
		return 0, 0, false
	}
	return int(v >> posBits), v&(1<<posBits-1) - 1, true
}

// Delete forgets id.
func (x *Index) Delete(id uint64) {
	x.mu.RLock()
	c := x.chunks[(id-1)/chunkIDs]
	x.mu.RUnlock()
	if c != nil && c[(id-1)%chunkIDs].Swap(0) != 0 {
		x.n.Add(-1)
	}
}

// Len returns the number of ids indexed.
func (x *Index) Len() int { return int(x.n.Load()) }

// Bytes returns the memory the index holds.
func (x *Index) Bytes() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.chunks) * chunkIDs * 8
}
