package shard

import (
	"errors"
	"math/bits"
	"sync/atomic"
)

// MaxID is the exclusive upper bound of ids: every id fits a JavaScript
// number (2^53) exactly.
const MaxID = 1 << 53

// MaxIDBlock is the largest id block IDs accepts.
const MaxIDBlock = 1 << 22

// ErrIDsExhausted is returned once ids would reach MaxID.
var ErrIDsExhausted = errors.New("shard: ids exhausted")

// IDs hands out unique ids starting at 1. A global atomic counter leases
// blocks of ids to shards; within its block a shard allocates with one
// atomic add, so producers on different shards never touch the same cache
// line. Ids are unique across all shards. They are increasing within a block
// but not globally, and a block abandoned in a race leaves a gap: ids may
// skip, never repeat.
type IDs struct {
	block uint64
	// offBits is how many low bits of a shard's state count ids taken
	// from its current block; the high bits hold the block number plus
	// one, which needs up to bits.Len64(MaxID/block+1) bits. The spare
	// bits above block absorb the increments of producers that race past
	// the end of a block before one of them installs the next: at least
	// 1023*block of them.
	offBits uint
	// rng is the range of block numbers shards lease from; pending, if
	// set, is the next one, which a shard installs when rng runs out.
	// Standalone there is one range whose end grows (SetLimit); in a
	// cluster, ranges come from a cluster-wide lease (SetNext) and need
	// not be contiguous.
	rng     atomic.Pointer[blockRange]
	pending atomic.Pointer[blockRange]
	taken   atomic.Uint64 // blocks leased to shards so far
	_       [cacheLine - 24]byte
	shards  []idShard
}

// blockRange is a range of block numbers: next is the next one to lease,
// and blocks below end may be leased (they are durably reserved).
type blockRange struct {
	next atomic.Uint64
	end  atomic.Uint64
}

func newRange(next, end uint64) *blockRange {
	r := new(blockRange)
	r.next.Store(next)
	r.end.Store(end)
	return r
}

type idShard struct {
	state atomic.Uint64 // (block number + 1) << offBits | ids taken
	_     [cacheLine - 8]byte
}

// NewIDs returns an allocator for n shards with blocks of block ids
// (1 <= block <= MaxIDBlock). The first id handed out is first (>= 1), rounded
// up to the start of a block.
func NewIDs(n int, block, first uint64) *IDs {
	if n < 1 || block < 1 || block > MaxIDBlock || first < 1 {
		panic("BUG: shard.NewIDs: invalid arguments")
	}
	a := &IDs{block: block, shards: make([]idShard, n)}
	a.offBits = uint(64 - bits.Len64(MaxID/block+1))
	a.rng.Store(newRange((first-1+block-1)/block, ^uint64(0)))
	return a
}

// ErrIDsUnavailable is returned when every durably reserved block is in use
// and the next reservation has not completed yet. The caller should answer
// 503 and let the client retry: handing out an unreserved id could repeat it
// after a crash.
var ErrIDsUnavailable = errors.New("shard: no reserved ids left")

// SetLimit allows blocks of the current range below limit (a block number)
// to be leased. Until it is called there is no limit.
func (a *IDs) SetLimit(limit uint64) { a.rng.Load().end.Store(limit) }

// NextBlock returns the number of the next block to be leased.
func (a *IDs) NextBlock() uint64 { return a.rng.Load().next.Load() }

// SetNext makes the blocks [start, end) the range shards go on with once
// the current one is used up; until then it is pending. start must be above
// every block of earlier ranges. It returns false, and changes nothing, if
// a pending range is already waiting.
func (a *IDs) SetNext(start, end uint64) bool {
	return a.pending.CompareAndSwap(nil, newRange(start, end))
}

// Pending reports whether a range set by SetNext is waiting.
func (a *IDs) Pending() bool { return a.pending.Load() != nil }

// Remaining returns how many blocks of the current range are left to lease.
func (a *IDs) Remaining() uint64 {
	r := a.rng.Load()
	next, end := r.next.Load(), r.end.Load()
	if next >= end {
		return 0
	}
	return end - next
}

// Taken returns how many blocks shards have leased since NewIDs.
func (a *IDs) Taken() uint64 { return a.taken.Load() }

// Block returns the size of an id block.
func (a *IDs) Block() uint64 { return a.block }

// Leased returns the upper bound (exclusive) of the ids leased so far.
func (a *IDs) Leased() uint64 { return a.NextBlock()*a.block + 1 }

// takeBlock leases the next block number, moving on to the pending range
// when the current one is used up.
func (a *IDs) takeBlock() (uint64, error) {
	for {
		r := a.rng.Load()
		nb := r.next.Load()
		if nb*a.block+1 >= MaxID {
			// Stop leasing, or the block number would eventually
			// overflow its bits in state.
			return 0, ErrIDsExhausted
		}
		if nb >= r.end.Load() {
			p := a.pending.Load()
			if p == nil {
				return 0, ErrIDsUnavailable
			}
			if a.rng.CompareAndSwap(r, p) {
				a.pending.CompareAndSwap(p, nil)
			}
			continue
		}
		if r.next.CompareAndSwap(nb, nb+1) {
			a.taken.Add(1)
			return nb, nil
		}
	}
}

// Next returns a new id for shard i. It is safe for concurrent use and takes
// no lock.
func (a *IDs) Next(i int) (uint64, error) {
	s := &a.shards[i]
	for {
		v := s.state.Add(1) - 1
		blk, off := v>>a.offBits, v&(1<<a.offBits-1)
		if blk != 0 && off < a.block {
			id := (blk-1)*a.block + off + 1
			if id >= MaxID {
				return 0, ErrIDsExhausted
			}
			return id, nil
		}
		// The block is used up (or none was leased yet): lease the next
		// one and install it, unless another producer already did.
		nb, err := a.takeBlock()
		if err != nil {
			s.clamp(blk, a)
			return 0, err
		}
		for {
			cur := s.state.Load()
			if cur>>a.offBits != blk {
				break // someone else installed a block; nb is skipped
			}
			if s.state.CompareAndSwap(cur, (nb+1)<<a.offBits|1) {
				id := nb*a.block + 1
				if id >= MaxID {
					return 0, ErrIDsExhausted
				}
				return id, nil
			}
		}
	}
}

// clamp undoes the increments of failed attempts on an exhausted block, so
// that callers refused for a long time (ids unavailable) cannot carry the
// offset into the block number's bits.
func (s *idShard) clamp(blk uint64, a *IDs) {
	for {
		cur := s.state.Load()
		if cur>>a.offBits != blk || cur&(1<<a.offBits-1) <= a.block {
			return
		}
		if s.state.CompareAndSwap(cur, blk<<a.offBits|a.block) {
			return
		}
	}
}
