package shard

import (
	"errors"
	"slices"
	"sync"
	"testing"
)

func TestIDsStartsAtOne(t *testing.T) {
	f := func(n int, block uint64, shard int) {
		t.Helper()
		a := NewIDs(n, block, 1)
		if got := a.Leased(); got != 1 {
			t.Errorf("NewIDs(%d, %d, 1).Leased() = %d before any Next, want 1", n, block, got)
		}
		id, err := a.Next(shard)
		if err != nil || id != 1 {
			t.Errorf("NewIDs(%d, %d, 1).Next(%d) = (%d, %v), want (1, nil)", n, block, shard, id, err)
		}
		if a.Block() != block {
			t.Errorf("Block() = %d, want %d", a.Block(), block)
		}
	}
	f(1, 1, 0)
	f(1, 7, 0)
	f(4, 4096, 0)
	f(4, 4096, 3)
	f(64, MaxIDBlock, 63)
}

// TestIDsFirst: the first id is first rounded up to the start of a block
// (1, block+1, 2*block+1, ...), and Leased grows by a block per lease.
func TestIDsFirst(t *testing.T) {
	f := func(block, first, want uint64) {
		t.Helper()
		a := NewIDs(2, block, first)
		if got := a.Leased(); got != want {
			t.Errorf("NewIDs(2, %d, %d).Leased() = %d before any Next, want %d", block, first, got, want)
		}
		id, err := a.Next(1)
		if err != nil || id != want {
			t.Errorf("NewIDs(2, %d, %d).Next(1) = (%d, %v), want (%d, nil)", block, first, id, err, want)
		}
		if got := a.Leased(); got != want+block {
			t.Errorf("NewIDs(2, %d, %d).Leased() = %d after one lease, want %d", block, first, got, want+block)
		}
		id, err = a.Next(0)
		if err != nil || id != want+block {
			t.Errorf("NewIDs(2, %d, %d): second shard's first id = (%d, %v), want (%d, nil)", block, first, id, err, want+block)
		}
	}
	f(1, 1, 1)
	f(1, 2, 2)
	f(1, 12345, 12345)
	f(4, 1, 1)
	f(4, 2, 5)
	f(4, 4, 5)
	f(4, 5, 5)
	f(4, 6, 9)
	f(7, 8, 8)
	f(7, 9, 15)
	f(4096, 1000, 4097)
	f(4096, 4097, 4097)
	f(4096, 4098, 8193)
	f(MaxIDBlock, 2, MaxIDBlock+1)
}

// TestIDsSequential: without concurrency, a shard hands out the ids of its
// block in order and leases the next free block when it runs out.
func TestIDsSequential(t *testing.T) {
	f := func(n int, block uint64, shards []int, want []uint64) {
		t.Helper()
		a := NewIDs(n, block, 1)
		var got []uint64
		for _, i := range shards {
			id, err := a.Next(i)
			if err != nil {
				t.Fatalf("Next(%d): %v", i, err)
			}
			got = append(got, id)
		}
		if !slices.Equal(got, want) {
			t.Errorf("NewIDs(%d, %d, 1) Next(%v) = %v, want %v", n, block, shards, got, want)
		}
	}
	f(1, 1, []int{0, 0, 0, 0}, []uint64{1, 2, 3, 4})
	f(1, 3, []int{0, 0, 0, 0, 0, 0, 0}, []uint64{1, 2, 3, 4, 5, 6, 7})
	f(2, 1, []int{0, 1, 0, 1}, []uint64{1, 2, 3, 4})
	f(2, 4, []int{0, 1, 0, 1, 1, 1, 1, 0}, []uint64{1, 5, 2, 6, 7, 8, 9, 3})
	f(3, 2, []int{2, 2, 2, 0, 1, 2, 0, 0}, []uint64{1, 2, 3, 5, 7, 4, 6, 9})
}

// TestIDsLargeIDs: a single shard hands out consecutive ids wherever the
// id space starts, in particular past block number 2^32 (ids from 2^32 with
// blocks of 1, from 2^44 with the default blocks of 4096).
func TestIDsLargeIDs(t *testing.T) {
	f := func(block, first uint64, count int) {
		t.Helper()
		a := NewIDs(2, block, first)
		for i := range count {
			id, err := a.Next(1)
			if want := first + uint64(i); err != nil || id != want {
				t.Errorf("NewIDs(2, %d, %d): id %d = (%d, %v), want (%d, nil)", block, first, i, id, err, want)
				return
			}
		}
		if l := a.Leased(); l <= first+uint64(count)-1 {
			t.Errorf("NewIDs(2, %d, %d): Leased() = %d after %d ids", block, first, l, count)
		}
	}
	f(1, 1<<31, 10)
	f(1, 1<<32-3, 10)
	f(7, 7*(1<<32-3)+1, 50)
	f(4096, 4096*(1<<32-2)+1, 3*4096)
	f(4096, 1<<50+1, 3*4096)
	f(MaxIDBlock, MaxID-3*MaxIDBlock+1, 10)
	f(MaxIDBlock, MaxID-2*MaxIDBlock+1, MaxIDBlock+5)
}

// TestIDsConcurrentUnique: many goroutines per shard, all ids distinct,
// within [1, MaxID) and below Leased.
func TestIDsConcurrentUnique(t *testing.T) {
	f := func(shards, perShard, each int, block uint64) {
		t.Helper()
		a := NewIDs(shards, block, 1)
		got := make([][]uint64, shards*perShard)
		var wg sync.WaitGroup
		for g := range got {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ids := make([]uint64, 0, each)
				for range each {
					id, err := a.Next(g % shards)
					if err != nil {
						t.Errorf("Next: %v", err)
						return
					}
					ids = append(ids, id)
				}
				got[g] = ids
			}()
		}
		wg.Wait()
		all := slices.Concat(got...)
		if len(all) != shards*perShard*each {
			t.Fatalf("block %d: got %d ids, want %d", block, len(all), shards*perShard*each)
		}
		slices.Sort(all)
		for i := 1; i < len(all); i++ {
			if all[i] == all[i-1] {
				t.Fatalf("block %d: id %d handed out twice", block, all[i])
			}
		}
		if all[0] < 1 || all[len(all)-1] >= MaxID {
			t.Errorf("block %d: ids range over [%d, %d], want within [1, %d)", block, all[0], all[len(all)-1], uint64(MaxID))
		}
		if l := a.Leased(); all[len(all)-1] >= l {
			t.Errorf("block %d: id %d handed out but Leased() = %d", block, all[len(all)-1], l)
		}
	}
	f(4, 4, 50000, 1)
	f(4, 4, 50000, 7)
	f(4, 4, 50000, 4096)
	f(1, 8, 20000, 3)
	f(16, 1, 20000, 1)
}

// TestIDsExhausted: ids stop with ErrIDsExhausted just below MaxID, and keep
// failing after that.
func TestIDsExhausted(t *testing.T) {
	f := func(n int, block, first, wantFirst uint64) {
		t.Helper()
		a := NewIDs(n, block, first)
		var got []uint64
		var err error
		for len(got) <= MaxIDBlock+1 {
			var id uint64
			id, err = a.Next(n - 1)
			if err != nil {
				break
			}
			got = append(got, id)
		}
		if !errors.Is(err, ErrIDsExhausted) {
			t.Fatalf("NewIDs(%d, %d, %d): after %d ids Next returned %v, want ErrIDsExhausted", n, block, first, len(got), err)
		}
		want := 0
		if wantFirst < MaxID {
			want = int(MaxID - wantFirst)
		}
		if len(got) != want {
			t.Errorf("NewIDs(%d, %d, %d): %d ids before ErrIDsExhausted, want %d", n, block, first, len(got), want)
		}
		for i, id := range got {
			if id != wantFirst+uint64(i) {
				t.Fatalf("NewIDs(%d, %d, %d): id %d = %d, want %d", n, block, first, i, id, wantFirst+uint64(i))
			}
		}
		for i := range 2*block + 3 {
			for s := range n {
				if id, err := a.Next(s); !errors.Is(err, ErrIDsExhausted) || id != 0 {
					t.Fatalf("NewIDs(%d, %d, %d): call %d on shard %d after exhaustion = (%d, %v), want (0, ErrIDsExhausted)", n, block, first, i, s, id, err)
				}
			}
		}
	}
	f(1, 1, MaxID-1, MaxID-1)
	f(1, 1, MaxID-5, MaxID-5)
	f(1, 4, MaxID-8, MaxID-7)
	f(3, 4, MaxID-8, MaxID-7)
	f(1, 4096, MaxID-5000, MaxID-4095)
	f(2, 7, MaxID-100, MaxID-100+6) // blocks start at 7k+1; MaxID-94 is one
	f(1, 1, MaxID, MaxID)           // no id at all
	f(1, 4096, MaxID+5, MaxID+4097) // first beyond MaxID: nothing
}

// TestIDsExhaustedConcurrent: racing to the end of the id space still hands
// out each id at most once and none at or above MaxID.
func TestIDsExhaustedConcurrent(t *testing.T) {
	f := func(shards, perShard int, block, first uint64) {
		t.Helper()
		a := NewIDs(shards, block, first)
		got := make([][]uint64, shards*perShard)
		var wg sync.WaitGroup
		for g := range got {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					id, err := a.Next(g % shards)
					if errors.Is(err, ErrIDsExhausted) {
						return
					}
					if err != nil {
						t.Errorf("Next: %v", err)
						return
					}
					got[g] = append(got[g], id)
				}
			}()
		}
		wg.Wait()
		all := slices.Concat(got...)
		slices.Sort(all)
		if len(all) == 0 {
			t.Fatalf("block %d, first %d: no ids at all", block, first)
		}
		for i := 1; i < len(all); i++ {
			if all[i] == all[i-1] {
				t.Fatalf("block %d: id %d handed out twice", block, all[i])
			}
		}
		if all[0] < first || all[len(all)-1] >= MaxID {
			t.Errorf("block %d: ids range over [%d, %d], want within [%d, %d)", block, all[0], all[len(all)-1], first, uint64(MaxID))
		}
	}
	f(4, 4, 1, MaxID-20000)
	f(4, 4, 7, MaxID-20000)
	f(4, 4, 4096, MaxID-100000)
}

func TestIDsNewIDsPanics(t *testing.T) {
	f := func(n int, block, first uint64) {
		t.Helper()
		defer func() {
			if recover() == nil {
				t.Errorf("NewIDs(%d, %d, %d) did not panic", n, block, first)
			}
		}()
		NewIDs(n, block, first)
	}
	f(0, 1, 1)
	f(-1, 1, 1)
	f(1, 0, 1)
	f(1, MaxIDBlock+1, 1)
	f(1, 1<<40, 1)
	f(1, 1, 0)
}

func TestIDsLeased(t *testing.T) {
	a := NewIDs(3, 10, 1)
	if a.Leased() != 1 {
		t.Fatalf("Leased() = %d before any Next, want 1", a.Leased())
	}
	var maxID uint64
	for i := range 100 {
		id, err := a.Next(i % 3)
		if err != nil {
			t.Fatal(err)
		}
		maxID = max(maxID, id)
		if l := a.Leased(); id >= l {
			t.Fatalf("id %d handed out but Leased() = %d", id, l)
		}
	}
	// 100 ids round robin over 3 shards of 10-id blocks: 4 blocks each,
	// nothing skipped; shard 2 leased the last block (111-120) and took 3.
	if l := a.Leased(); l != 121 || maxID != 113 {
		t.Errorf("Leased() = %d, max id %d, want 121 and 113", l, maxID)
	}
}
