package shard

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeCluster leases block ranges from one counter, with a gap after each,
// as a shared compare-and-set store would to several instances.
type fakeCluster struct {
	next   atomic.Uint64
	down   atomic.Bool
	mu     sync.Mutex
	ranges map[int][][2]uint64 // per instance: the ranges it leased
}

func (c *fakeCluster) leaser(inst int) func(n uint64) (uint64, error) {
	return func(n uint64) (uint64, error) {
		if c.down.Load() {
			return 0, errors.New("cluster unreachable")
		}
		start := c.next.Add(n+3) - n - 3 + 2 // two blocks skipped before, one after
		c.mu.Lock()
		c.ranges[inst] = append(c.ranges[inst], [2]uint64{start, start + n})
		c.mu.Unlock()
		return start, nil
	}
}

// Several Sets leasing from one cluster hand out unique ids, each from a
// range its own instance leased; while the cluster is unreachable and the
// ranges run out, Put answers ErrIDsUnavailable, and recovers after.
func TestSetClusterLease(t *testing.T) {
	c := &fakeCluster{ranges: map[int][][2]uint64{}}
	c.next.Store(10)
	const instances, block, window = 4, 8, 4
	var local [instances]atomic.Uint64
	sets := make([]*Set, instances)
	for i := range sets {
		sets[i] = New(Config{Shards: 2, IDBlock: block, LeaseWindow: window, FlushInterval: time.Millisecond,
			LeaseBlocks: c.leaser(i),
			LeaseIDs: func(upTo uint64) error {
				if upTo > local[i].Load() {
					local[i].Store(upTo)
				}
				return nil
			}})
		defer sets[i].Close()
	}
	var mu sync.Mutex
	owner := map[uint64]int{}
	var wg sync.WaitGroup
	for i, s := range sets {
		for g := range 3 {
			wg.Go(func() {
				for k := range 3000 {
					id, _, err := s.Put(uint64(g), []byte("x"))
					if errors.Is(err, ErrIDsUnavailable) || errors.Is(err, ErrFull) {
						time.Sleep(100 * time.Microsecond)
						continue
					}
					if err != nil {
						t.Errorf("Put: %v", err)
						return
					}
					if id >= local[i].Load() {
						t.Errorf("instance %d: id %d at or above its local lease %d", i, id, local[i].Load())
					}
					mu.Lock()
					if o, dup := owner[id]; dup {
						t.Errorf("id %d handed out by instances %d and %d", id, o, i)
					}
					owner[id] = i
					mu.Unlock()
					_ = k
				}
			})
		}
	}
	wg.Wait()
	c.mu.Lock()
	for id, i := range owner {
		blk := (id - 1) / block
		in := false
		for _, r := range c.ranges[i] {
			in = in || (blk >= r[0] && blk < r[1])
		}
		if !in {
			t.Fatalf("id %d (block %d) of instance %d is in none of its ranges %v", id, blk, i, c.ranges[i])
		}
	}
	c.mu.Unlock()
	if len(owner) < 1000 {
		t.Fatalf("only %d ids handed out", len(owner))
	}

	// Unreachable: the current and pending ranges run out, then 503.
	c.down.Store(true)
	s := sets[0]
	var err error
	for range 100000 {
		if _, _, err = s.Put(0, []byte("x")); errors.Is(err, ErrIDsUnavailable) {
			break
		}
	}
	if !errors.Is(err, ErrIDsUnavailable) {
		t.Fatalf("Put with the cluster down and ranges used up = %v, want ErrIDsUnavailable", err)
	}
	c.down.Store(false)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, _, err = s.Put(0, []byte("x")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Put after the cluster came back = %v", err)
		}
		time.Sleep(time.Millisecond)
	}
	var st Stats
	s.UpdateStats(&st)
	if st.LeaseRoundTrips < 2 {
		t.Fatalf("LeaseRoundTrips = %d", st.LeaseRoundTrips)
	}
}

// Until its first cluster lease, a Set hands out no id.
func TestSetClusterLeaseFirst(t *testing.T) {
	s := New(Config{Shards: 1, LeaseBlocks: func(uint64) (uint64, error) { return 0, errors.New("down") }})
	defer s.Close()
	if _, _, err := s.Put(0, []byte("x")); !errors.Is(err, ErrIDsUnavailable) {
		t.Fatalf("Put before any lease = %v, want ErrIDsUnavailable", err)
	}
}
