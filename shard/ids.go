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
	blocks  atomic.Uint64 // number of the next block to lease, from 0
	limit   atomic.Uint64 // blocks below limit may be leased (durably reserved)
	_       [cacheLine - 16]byte
	shards  []idShard
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
	a.blocks.Store((first - 1 + block - 1) / block)
	a.limit.Store(^uint64(0))
	return a
}

// ErrIDsUnavailable is returned when every durably reserved block is in use
// and the next reservation has not completed yet. The caller should answer
// 503 and let the client retry: handing out an unreserved id could repeat it
// after a crash.
var ErrIDsUnavailable = errors.New("shard: no reserved ids left")

// SetLimit allows blocks below limit (a block number) to be leased. Until it
// is called there is no limit.
func (a *IDs) SetLimit(limit uint64) { a.limit.Store(limit) }

// Limit returns the block limit.
func (a *IDs) Limit() uint64 { return a.limit.Load() }

// NextBlock returns the number of the next block to be leased.
func (a *IDs) NextBlock() uint64 { return a.blocks.Load() }

// Block returns the size of an id block.
func (a *IDs) Block() uint64 { return a.block }

// Leased returns the upper bound (exclusive) of the ids leased so far.
func (a *IDs) Leased() uint64 { return a.blocks.Load()*a.block + 1 }

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
		var nb uint64
		for {
			nb = a.blocks.Load()
			var err error
			if nb*a.block+1 >= MaxID {
				// Stop leasing, or the block number would eventually
				// overflow its bits in state.
				err = ErrIDsExhausted
			} else if nb >= a.limit.Load() {
				err = ErrIDsUnavailable
			}
			if err != nil {
				s.clamp(blk, a)
				return 0, err
			}
			if a.blocks.CompareAndSwap(nb, nb+1) {
				break
			}
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
