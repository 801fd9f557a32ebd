package shard

import (
	"sync"
	"sync/atomic"
)

// Batch is a group of records stored all or nothing. PutBatch gives every
// record an id and puts one small reference into the ring instead of the
// records themselves, so a batch may be larger than a ring; the drainer
// hands all of its records to the sink between the same two Flush calls, so
// they are flushed, or fail, together.
//
// Get a Batch from GetBatch, Add the records and pass it to PutBatch, which
// takes it over on success. On failure the caller still owns it and should
// Release it.
type Batch struct {
	data []byte
	ends []int // ends[k] is where record k ends in data
	ids  []uint64

	// trailer, if set, makes the body of one more record, handed to a
	// Grouper sink's Meta after the batch's records in the same flush: for
	// example what an idempotency key answered, kept with the records.
	trailer     func(ids []uint64) []byte
	trailerBody []byte
}

var batchPool = sync.Pool{New: func() any { return new(Batch) }}

// GetBatch returns an empty Batch, reusing a released one if it can.
func GetBatch() *Batch { return batchPool.Get().(*Batch) }

// Release empties b and returns it for reuse. b must not be used after.
func (b *Batch) Release() {
	b.data, b.ends, b.ids = b.data[:0], b.ends[:0], b.ids[:0]
	b.trailer, b.trailerBody = nil, nil
	batchPool.Put(b)
}

// Add appends a copy of body as the next record.
func (b *Batch) Add(body []byte) {
	b.data = append(b.data, body...)
	b.ends = append(b.ends, len(b.data))
}

// SetTrailer makes PutBatch call fn with the batch's ids and queue what it
// returns after the batch's records: it reaches a Grouper sink's Meta in
// the same flush as they do, so it is durable exactly when they are.
func (b *Batch) SetTrailer(fn func(ids []uint64) []byte) { b.trailer = fn }

// Len returns the number of records.
func (b *Batch) Len() int { return len(b.ends) }

// Record returns record k's body.
func (b *Batch) Record(k int) []byte {
	start := 0
	if k > 0 {
		start = b.ends[k-1]
	}
	return b.data[start:b.ends[k]:b.ends[k]]
}

// batchSlots is how many batches one shard holds between PutBatch and its
// drainer; PutBatch answers ErrFull beyond that.
const batchSlots = 64

// slotTable holds a shard's batches in flight. A producer claims a free
// slot with a CAS; the drainer empties it.
type slotTable struct {
	slot  [batchSlots]atomic.Pointer[Batch]
	next  atomic.Uint32 // where the next claim starts looking
	inUse atomic.Int32
}

// release empties slot i, which a producer claimed but did not queue.
func (t *slotTable) release(i uint64) {
	t.slot[i].Store(nil)
	t.inUse.Add(-1)
}

func (t *slotTable) claim(b *Batch) (uint64, bool) {
	start := t.next.Add(1)
	for k := range uint32(batchSlots) {
		i := (start + k) % batchSlots
		if t.slot[i].CompareAndSwap(nil, b) {
			t.inUse.Add(1)
			return uint64(i), true
		}
	}
	return 0, false
}

// PutBatch gives each record of b an id, appends the ids to ids in record
// order, and queues b on the shard picked by hint, as Put does for one
// record. Nothing is queued unless everything is: on error the ids are
// burnt (ids may skip, never repeat) and the caller keeps b. On success the
// Set owns b and releases it once drained. Wait(t) waits for the whole
// batch. PutBatch is safe for concurrent use; it takes no lock.
func (s *Set) PutBatch(hint uint64, b *Batch, ids []uint64) ([]uint64, Ticket, error) {
	i := int(hint % uint64(len(s.rings)))
	if s.failed[i].v.Load() {
		return ids, Ticket{}, ErrUnavailable
	}
	// The slot first: a batch refused for room (and retried) takes no ids.
	slot, ok := s.slots[i].claim(b)
	if !ok {
		s.rings[i].full.Add(1)
		return ids, Ticket{}, ErrFull
	}
	b.ids = b.ids[:0]
	for range b.ends {
		id, err := s.ids.Next(i)
		if err != nil {
			s.slots[i].release(slot)
			return ids, Ticket{}, err
		}
		b.ids = append(b.ids, id)
	}
	if b.trailer != nil {
		b.trailerBody = b.trailer(b.ids)
	}
	ids = append(ids, b.ids...) // b is not ours once the ref is in the ring
	r := s.rings[i]
	seq := r.FailSeq()
	pos, err := r.putRef(slot)
	if err != nil {
		s.slots[i].release(slot)
		return ids[:len(ids)-len(b.ids)], Ticket{}, err
	}
	// A batch is worth a drain of its own: wake the drainer rather than
	// hold its records (and a slot) for up to FlushInterval.
	s.poke(i)
	return ids, Ticket{shard: i, pos: pos, seq: seq}, nil
}

// WaitRoom waits until everything queued on the shard picked by hint so
// far has been drained, so that a PutBatch refused with ErrFull may be
// tried again. It takes no lock.
func (s *Set) WaitRoom(hint uint64) {
	i := int(hint % uint64(len(s.rings)))
	r := s.rings[i]
	pos := r.head.Load()
	s.poke(i)
	r.Wait(pos)
}

// Backlogged reports whether the shard of t holds more than half the
// batches it can. A producer that need not wait for t (memory
// acknowledgement) should then Wait anyway, so that a steady stream of
// batches slows to the drainer's pace instead of being refused.
func (s *Set) Backlogged(t Ticket) bool {
	return s.slots[t.shard].inUse.Load() > batchSlots/2
}

// drainBatch hands the records of the batch in slot to the sink and
// releases it; it returns how many records that was. Only shard i's drainer
// calls it.
func (s *Set) drainBatch(i int, slot uint64) int {
	b := s.slots[i].slot[slot].Load()
	s.slots[i].release(slot)
	n := len(b.ids)
	g := s.grouper
	if g != nil && (n > 1 || b.trailerBody != nil) {
		k := n
		if b.trailerBody != nil {
			k++
		}
		g.Group(i, k)
	}
	for k, id := range b.ids {
		s.sink.Append(i, id, b.Record(k))
	}
	if g != nil && b.trailerBody != nil {
		g.Meta(i, b.trailerBody)
	}
	b.Release()
	return n
}
