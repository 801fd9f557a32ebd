package shard

import (
	"errors"
	"runtime"
	"sync/atomic"
	"unsafe"
)

// cacheLine pads hot atomics so that producers and the consumer of one ring,
// and neighbouring rings, do not share a cache line.
const cacheLine = 64

// Record framing inside a ring. Every record starts on an 8-byte boundary:
//
//	word 0: header = body length (low 32 bits) | flags
//	word 1: id
//	body, padded to a multiple of 8 bytes
//
// The header is written last with an atomic store; its commit flag is what
// the consumer waits for. The consumer zeroes all the space it drained (not
// only the headers: a later record may start where a body or id was) before
// it releases it, so a stale commit flag is never seen after the ring wraps.
const (
	hdrBytes   = 16
	flagCommit = 1 << 32
	flagPad    = 1 << 33
	flagRef    = 1 << 34 // no body; the id word is a Batch slot (putRef)
	lenMask    = 1<<32 - 1
)

// MaxRecord is the largest body a ring accepts, whatever its size.
const MaxRecord = 1<<31 - 1

// ErrFull is returned when a ring has no room for a record. The caller should
// answer 503 and let the client retry; nothing has been stored.
var ErrFull = errors.New("shard: ring is full")

// Ring is a bounded multi-producer, single-consumer queue of variable-length
// records in one pointer-free buffer, so the garbage collector never scans it
// and a stored record costs no heap object.
//
// Producers reserve space with a CAS on head, copy their record in and set the
// commit flag; they never take a lock or wait for the consumer. The one
// consumer (the shard's drainer) reads committed records in order and releases
// their space by advancing tail. When the consumer finds the ring empty past
// its first 256 KiB, it sends it back to the start (rewind), so that at a
// steady rate the records reuse memory that is still in the CPU's cache.
type Ring struct {
	head atomic.Uint64 // next byte position to reserve; producers CAS it
	_    [cacheLine - 8]byte

	tail atomic.Uint64 // everything below tail is free; consumer-owned
	// rewinding is set while the consumer rewinds the ring (rewind): a
	// producer that finds the ring full meanwhile tries again.
	rewinding atomic.Bool
	_         [cacheLine - 12]byte

	flushed atomic.Uint64 // the outcome of everything below flushed is known
	epoch   atomic.Pointer[epoch]
	_       [cacheLine - 16]byte

	// fails counts failed batches; failLog keeps the last failHistory of
	// them, so a waiter can tell whether its record's batch failed.
	fails   atomic.Uint64
	failLog [failHistory]struct{ start, end atomic.Uint64 }

	mask   uint64
	size   uint64
	window uint64 // rewind an empty ring once its tail is this far in
	words  []uint64
	buf    []byte // byte view of words

	full atomic.Uint64 // reservations refused because the ring was full
}

// NewRing returns a ring of size bytes, rounded up to a power of two of at
// least 4 KiB.
func NewRing(size int) *Ring {
	n := uint64(4096)
	for size > 0 && n < uint64(size) {
		n <<= 1
	}
	words := make([]uint64, n/8)
	r := &Ring{
		mask:   n - 1,
		size:   n,
		window: min(n/4, hotWindow),
		words:  words,
		buf:    unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), n),
	}
	r.epoch.Store(&epoch{cur: make(chan struct{}), next: make(chan struct{})})
	return r
}

// epoch is the batch being flushed: records ending at or below end wait on
// cur, closed when the batch is flushed; later ones wait on next, which
// becomes the next batch's cur. So a flush wakes only its own batch's
// waiters, not everyone waiting on the shard.
type epoch struct {
	end       uint64
	cur, next chan struct{}
	closed    bool // consumer-only
}

// BeginBatch announces that the records below end are being flushed, so
// their waiters can sleep on this batch alone. Only the consumer calls it.
func (r *Ring) BeginBatch(end uint64) {
	e := r.epoch.Load()
	if end <= e.end {
		return
	}
	r.epoch.Store(&epoch{end: end, cur: e.next, next: make(chan struct{})})
}

// Size returns the ring's capacity in bytes.
func (r *Ring) Size() int { return int(r.size) }

// recordBytes is the space a body of n bytes takes in the ring.
func recordBytes(n int) uint64 { return hdrBytes + (uint64(n)+7)&^7 }

// Put copies body into the ring as the record for id and returns the ring
// position just past it; pass that position to Wait to learn when the record
// has been flushed. Put is safe for concurrent use by any number of
// goroutines. It returns ErrFull without storing anything when there is no
// room. body is not retained.
func (r *Ring) Put(id uint64, body []byte) (uint64, error) {
	pos, _, err := r.put(id, body, 0)
	return pos, err
}

// putRef puts a record that carries no body, only ref, for the consumer of
// drainRefs. It is otherwise the same as Put.
func (r *Ring) putRef(ref uint64) (uint64, error) {
	pos, _, err := r.put(ref, nil, flagRef)
	return pos, err
}

// put is Put that also returns how many bytes the ring held with the
// record in it, as far as it saw: an upper bound, since the consumer may
// have freed some since.
func (r *Ring) put(id uint64, body []byte, flags uint64) (pos, used uint64, err error) {
	need := recordBytes(len(body))
	if len(body) > MaxRecord || need > r.size/2 {
		return 0, 0, ErrFull
	}
	for {
		// Load tail first: tail never passes head, so h-t cannot wrap.
		// If the ring looks full, tail is read again below: when it has
		// not moved, (h, t) was a true snapshot and the ring was full.
		t := r.tail.Load()
		h := r.head.Load()
		off := h & r.mask
		pad := uint64(0)
		if off+need > r.size {
			pad = r.size - off
		}
		if h+pad+need-t > r.size {
			if r.rewinding.Load() {
				// h may be past a rewind that has not moved tail yet.
				runtime.Gosched()
				continue
			}
			if r.tail.Load() != t {
				continue // the consumer freed space since we read tail
			}
			r.full.Add(1)
			return 0, 0, ErrFull
		}
		if !r.head.CompareAndSwap(h, h+pad+need) {
			continue
		}
		if pad > 0 {
			// The record would straddle the end of the buffer: fill the
			// rest with a padding record and start at offset 0.
			atomic.StoreUint64(&r.words[off/8], pad|flagCommit|flagPad)
			off = 0
		}
		w := off / 8
		r.words[w+1] = id
		copy(r.buf[off+hdrBytes:], body)
		atomic.StoreUint64(&r.words[w], uint64(len(body))|flagCommit|flags)
		return h + pad + need, h + pad + need - t, nil
	}
}

// Drain passes every committed record, in order, to fn and then releases
// their space. It stops at the first record that is reserved but not yet
// committed. body is valid only during the call to fn. Drain must only be
// called by the ring's single consumer. It returns the number of records and
// the position up to which the ring has been drained.
func (r *Ring) Drain(fn func(id uint64, body []byte)) (int, uint64) {
	return r.drainRefs(fn, nil)
}

// drainRefs is Drain that passes the records put by putRef to ref instead
// of fn; each counts as the number of records ref returns.
func (r *Ring) drainRefs(fn func(id uint64, body []byte), ref func(uint64) int) (int, uint64) {
	start := r.tail.Load()
	h := r.head.Load()
	t := start
	n := 0
	for t < h {
		off := t & r.mask
		w := off / 8
		hdr := atomic.LoadUint64(&r.words[w])
		if hdr&flagCommit == 0 {
			break
		}
		if hdr&flagPad != 0 {
			t += hdr & lenMask
			continue
		}
		l := hdr & lenMask
		if hdr&flagRef != 0 {
			n += ref(r.words[w+1])
			t += hdrBytes
			continue
		}
		fn(r.words[w+1], r.buf[off+hdrBytes:off+hdrBytes+l:off+hdrBytes+l])
		t += recordBytes(int(l))
		n++
	}
	// Zero all the released space, not just the headers: a later record
	// may start where a body was, and a producer that has reserved it but
	// not yet committed must leave a zero header there, not stale bytes.
	r.zero(start, t)
	r.tail.Store(t)
	return n, t
}

// hotWindow bounds how far into its buffer an empty ring goes on before
// rewind sends it back to the start, so that at a steady rate records keep
// reusing the same few hundred KiB, still in the CPU's cache, instead of
// walking through all of a ring of megabytes.
const hotWindow = 256 << 10

// rewind moves an empty ring whose tail is at least r.window bytes into the
// buffer back to offset 0: it reserves the rest of the buffer, which no
// record uses and is zero, and releases it at once, and marks it flushed.
// Producers that see the new head before the new tail retry (rewinding). It
// does nothing if a producer has reserved space since the last drain. Only
// the consumer calls it.
func (r *Ring) rewind() {
	t := r.tail.Load()
	off := t & r.mask
	if off < r.window || r.head.Load() != t {
		return
	}
	next := t + r.size - off
	r.rewinding.Store(true)
	ok := r.head.CompareAndSwap(t, next)
	if ok {
		if rewindHook != nil {
			rewindHook()
		}
		r.tail.Store(next)
	}
	r.rewinding.Store(false)
	if ok && r.flushed.Load() == t {
		// No record lies in the skipped space: its outcome is known.
		// Without this the next drain would flush an empty batch, and
		// a waiter on the new head (WaitRoom) would wait for it.
		r.Flushed(next)
	}
}

// rewindHook, if set (by tests), runs in the middle of a rewind: after head
// has moved and before tail has.
var rewindHook func()

// zero clears the ring bytes at positions [from, to), to-from <= size.
func (r *Ring) zero(from, to uint64) {
	for from < to {
		off := from & r.mask
		n := min(to-from, r.size-off)
		clear(r.words[off/8 : (off+n)/8])
		from += n
	}
}

// behind reports whether a ring holding used bytes is more than a quarter
// full: its drainer should go on at once rather than sleep.
func (r *Ring) behind(used uint64) bool { return used > r.size/4 }

// Used returns the bytes reserved but not yet drained.
func (r *Ring) Used() int {
	t := r.tail.Load() // first: tail never passes head
	return int(r.head.Load() - t)
}

// Flushed marks every record below pos as flushed and wakes the goroutines
// waiting in Wait for them. Only the consumer calls it.
func (r *Ring) Flushed(pos uint64) {
	if pos <= r.flushed.Load() {
		return
	}
	r.BeginBatch(pos)
	r.flushed.Store(pos)
	if e := r.epoch.Load(); !e.closed {
		e.closed = true
		close(e.cur)
	}
}

// Wait blocks until the record ending at pos (as returned by Put) has been
// flushed. It takes no lock: waiters sleep on their batch's channel, which
// the consumer closes after the flush, so one close releases every waiter of
// the batch together.
func (r *Ring) Wait(pos uint64) {
	for r.flushed.Load() < pos {
		e := r.epoch.Load()
		if r.flushed.Load() >= pos {
			return
		}
		if pos <= e.end {
			<-e.cur
		} else {
			<-e.next
		}
	}
}

// IsFlushed reports whether the record ending at pos has been flushed.
func (r *Ring) IsFlushed(pos uint64) bool { return r.flushed.Load() >= pos }

// failHistory is how many failed batches a waiter can look back on; a waiter
// that slept through that many failures or more counts its record as failed.
const failHistory = 64

// ErrFlushFailed is returned by Outcome for a record whose batch could not be
// flushed. The record is not stored and must not be acknowledged.
var ErrFlushFailed = errors.New("shard: flushing the record failed")

// FailSeq returns the failure sequence to pass to Outcome; read it before
// Put.
func (r *Ring) FailSeq() uint64 { return r.fails.Load() }

// Fail marks the records ending in (start, end] as failed and then as done,
// waking their waiters. Only the consumer calls it.
func (r *Ring) Fail(start, end uint64) {
	k := r.fails.Load()
	e := &r.failLog[k%failHistory]
	e.start.Store(start)
	e.end.Store(end)
	r.fails.Store(k + 1)
	r.Flushed(end)
}

// Outcome waits until the record ending at pos is done and reports whether
// it was flushed (nil) or its batch failed (ErrFlushFailed). seq is FailSeq
// as read before the record's Put.
//
// Failure k is written to slot k%failHistory before it is counted, so once
// failHistory failures have been counted since seq, the slot of failure seq
// may already be in the middle of being overwritten by the next one: the
// history is then no longer trusted, before or after reading it, and the
// record counts as failed.
func (r *Ring) Outcome(pos, seq uint64) error {
	r.Wait(pos)
	n := r.fails.Load()
	if n-seq >= failHistory {
		return ErrFlushFailed
	}
	for k := seq; k < n; k++ {
		e := &r.failLog[k%failHistory]
		if pos > e.start.Load() && pos <= e.end.Load() {
			return ErrFlushFailed
		}
	}
	if r.fails.Load()-seq >= failHistory {
		return ErrFlushFailed // a slot we read may have been overwritten meanwhile
	}
	return nil
}
