package shard

import (
	"errors"
	"sync"
	"testing"
	"time"
)

func batchOf(g, n int) *Batch {
	b := GetBatch()
	for i := range n {
		b.Add(setBody(g, i))
	}
	return b
}

// Batches and single records from many goroutines all reach the sink once,
// with the ids PutBatch returned, in record order, even when one batch is
// larger than a ring.
func TestSetPutBatch(t *testing.T) {
	sink := newTestSink()
	s := New(Config{Shards: 2, RingBytes: 4096, FlushInterval: time.Millisecond, Sink: sink, Eager: true})
	const producers, rounds = 8, 50
	var mu sync.Mutex
	want := map[uint64]sinkRec{}
	var wg sync.WaitGroup
	for g := range producers {
		wg.Go(func() {
			var ids []uint64
			for round := range rounds {
				n := 1 + (g*rounds+round)%300 // up to ~6 KiB: more than a ring
				b := batchOf(g, n)
				var tk Ticket
				var err error
				for {
					ids, tk, err = s.PutBatch(uint64(g), b, ids[:0])
					if !errors.Is(err, ErrFull) {
						break
					}
					time.Sleep(time.Millisecond)
				}
				if err != nil {
					t.Errorf("PutBatch: %v", err)
					return
				}
				if len(ids) != n {
					t.Errorf("PutBatch returned %d ids for %d records", len(ids), n)
					return
				}
				if err := s.Wait(tk); err != nil {
					t.Errorf("Wait: %v", err)
				}
				mu.Lock()
				for k, id := range ids {
					want[id] = sinkRec{g % 2, id, setBody(g, k)}
				}
				mu.Unlock()
				// Single records in between share the ring.
				id, tk1, err := s.Put(uint64(g), setBody(g, round))
				if err == nil {
					err = s.Wait(tk1)
				}
				if err != nil && !errors.Is(err, ErrFull) {
					t.Errorf("Put: %v", err)
				}
				if err == nil {
					mu.Lock()
					want[id] = sinkRec{g % 2, id, setBody(g, round)}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	closeWithin(t, s)
	sink.check(t, want)
	var st Stats
	s.UpdateStats(&st)
	if st.Drained != uint64(len(want)) {
		t.Errorf("Stats.Drained = %d, want %d", st.Drained, len(want))
	}
}

// A batch whose flush fails fails as a whole: Wait reports it and none of
// its records is visible.
func TestSetPutBatchFlushFails(t *testing.T) {
	sink := newTestSink()
	sink.fail.Store(true)
	s := New(Config{Shards: 1, FlushInterval: time.Millisecond, Sink: sink, Eager: true})
	defer closeWithin(t, s)
	b := batchOf(1, 100)
	ids, tk, err := s.PutBatch(0, b, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Wait(tk); !errors.Is(err, ErrFlushFailed) {
		t.Fatalf("Wait = %v, want ErrFlushFailed", err)
	}
	if sink.count() != 0 {
		t.Fatalf("%d records of a failed batch are visible", sink.count())
	}
	if len(ids) != 100 {
		t.Fatalf("got %d ids", len(ids))
	}
}

// When every batch slot of a shard is taken, PutBatch answers ErrFull,
// queues nothing and leaves the batch to the caller.
func TestSetPutBatchSlotsFull(t *testing.T) {
	sink := newTestSink()
	block := make(chan struct{})
	sink.onAppend = func(int, uint64) { <-block }
	s := New(Config{Shards: 1, FlushInterval: time.Millisecond, Sink: sink})
	var tickets []Ticket
	var err error
	var tk Ticket
	for range batchSlots + 2 {
		b := batchOf(2, 1)
		_, tk, err = s.PutBatch(0, b, nil)
		if err != nil {
			b.Release()
			break
		}
		tickets = append(tickets, tk)
	}
	if !errors.Is(err, ErrFull) {
		t.Fatalf("PutBatch with every slot taken = %v, want ErrFull", err)
	}
	// One batch may already be with the (blocked) drainer.
	if n := len(tickets); n < batchSlots || n > batchSlots+1 {
		t.Fatalf("%d batches accepted before ErrFull, want %d or %d", n, batchSlots, batchSlots+1)
	}
	close(block)
	for _, tk := range tickets {
		if err := s.Wait(tk); err != nil {
			t.Fatal(err)
		}
	}
	closeWithin(t, s)
	if sink.count() != len(tickets) {
		t.Fatalf("sink has %d records, want %d", sink.count(), len(tickets))
	}
}
