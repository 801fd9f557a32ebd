// Package shard owns the ingest hot path below HTTP: per-core lock-free rings
// that HTTP workers write usages into, the block-reserving id allocator, and
// the drainer goroutines that move committed records to a Sink in batches.
package shard

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Sink receives drained records. Shard i's drainer is the only goroutine that
// calls Append(i, ...) and Flush(i), so a sink may keep per-shard state
// without locks.
type Sink interface {
	// Append takes one record. body is valid only during the call.
	Append(shard int, id uint64, body []byte)
	// Flush ends a batch: after it returns, every record appended so far
	// must be visible to readers (and, for a durable sink, on disk).
	Flush(shard int) error
}

// Config configures a Set. The zero value works.
type Config struct {
	// Shards is the number of rings; 0 means GOMAXPROCS. It is raised to at
	// least GOMAXPROCS.
	Shards int
	// RingBytes is the capacity of each ring; 0 means 4 MiB.
	RingBytes int
	// IDBlock is how many ids a shard leases at a time; 0 means 4096.
	IDBlock uint64
	// FirstID is the lowest id to hand out; 0 means 1.
	FirstID uint64
	// FlushInterval bounds how long a committed record waits in a ring
	// before its drainer hands it to the sink; 0 means 10ms.
	FlushInterval time.Duration
	// Sink receives the records; nil discards them.
	Sink Sink
	// OnFlushError is called by a drainer when Sink.Flush fails and the
	// shard stops accepting records; may be nil.
	OnFlushError func(shard int, err error)
	// OnRecover is called when a failed shard accepts records again; may be
	// nil. Recovery is attempted every RecoverInterval (default 1s) if the
	// Sink has a method Recover(shard int) error.
	OnRecover       func(shard int)
	RecoverInterval time.Duration
	// Eager makes a drainer go on at once while records are waiting,
	// instead of sleeping FlushInterval between batches, and lets Wait
	// wake a sleeping drainer. Use it when workers wait for flushes (fsync
	// acknowledgement): batches then form while the previous one syncs.
	Eager bool
	// LeaseIDs, if set, durably reserves every id below upTo before any of
	// them is handed out. The Set calls it at start and in the background,
	// LeaseWindow blocks ahead, so Put never waits for it. While no
	// reserved id is left, Put returns ErrIDsUnavailable.
	LeaseIDs     func(upTo uint64) error
	LeaseWindow  uint64
	OnLeaseError func(err error)
	// LeaseBlocks, if set, reserves n blocks of ids cluster-wide and
	// returns the first block number: the ranges of all instances never
	// overlap. The Set then hands out ids only from ranges it leased so
	// (LeaseWindow blocks at a time, the next one fetched in the background
	// while half of the current is left), records each range's end with
	// LeaseIDs (if set) before using it, and until the first lease
	// succeeds, Put returns ErrIDsUnavailable. It is called by New and
	// then by one background goroutine, never concurrently.
	LeaseBlocks func(n uint64) (uint64, error)
}

// Grouper is implemented by sinks that keep the records of one PutBatch
// batch together: Group(shard, n) comes right before the batch's n records
// (its trailer included), in the same flush, and Meta takes the trailer
// (Batch.SetTrailer) in its place among them. Sinks that are not Groupers
// get the batch's usages alone.
type Grouper interface {
	Group(shard int, n int)
	Meta(shard int, body []byte)
}

// Recoverer is implemented by sinks that can leave a failed state.
type Recoverer interface {
	Recover(shard int) error
}

// ErrUnavailable is returned by Put while the shard's sink is failing.
var ErrUnavailable = errors.New("shard: store is failing; not accepting records")

// Set is a group of rings, one drainer goroutine per ring, and the id
// allocator shared by them.
type Set struct {
	rings    []*Ring
	slots    []slotTable // batches in flight, per shard
	grouper  Grouper     // the sink, if it keeps batches together
	ids      *IDs
	sink     Sink
	interval time.Duration
	onErr    func(int, error)

	drained []paddedCounter
	batches []paddedCounter
	closing atomic.Bool
	wake    chan struct{}
	wg      sync.WaitGroup

	eager      bool
	sleepers   []sleeper
	failed     []failFlag
	onRecover  func(int)
	recoverInt time.Duration

	lease        func(uint64) error
	leaseWindow  uint64
	onLeaseError func(error)
	leaseBlocks  func(uint64) (uint64, error)
	roundTrips   atomic.Uint64
	retryAt      time.Time // leaser-only: no cluster lease before this
	backoff      time.Duration
}

// sleeper holds the channel a sleeping drainer waits on; nil while awake.
type sleeper struct {
	ch atomic.Pointer[chan struct{}]
	_  [cacheLine - 8]byte
}

type failFlag struct {
	v atomic.Bool
	_ [cacheLine - 4]byte
}

type paddedCounter struct {
	n atomic.Uint64
	_ [cacheLine - 8]byte
}

type discard struct{}

func (discard) Append(int, uint64, []byte) {}
func (discard) Flush(int) error            { return nil }

// New starts a Set and its drainers. Call Close to stop them.
func New(cfg Config) *Set {
	n := cfg.Shards
	if p := runtime.GOMAXPROCS(0); n < p {
		n = p
	}
	if cfg.RingBytes <= 0 {
		cfg.RingBytes = 4 << 20
	}
	if cfg.IDBlock == 0 {
		cfg.IDBlock = 4096
	}
	if cfg.FirstID == 0 {
		cfg.FirstID = 1
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = 10 * time.Millisecond
	}
	if cfg.Sink == nil {
		cfg.Sink = discard{}
	}
	s := &Set{
		rings:    make([]*Ring, n),
		slots:    make([]slotTable, n),
		ids:      NewIDs(n, cfg.IDBlock, cfg.FirstID),
		sink:     cfg.Sink,
		interval: cfg.FlushInterval,
		onErr:    cfg.OnFlushError,
		drained:  make([]paddedCounter, n),
		batches:  make([]paddedCounter, n),
		wake:     make(chan struct{}),

		eager:        cfg.Eager,
		sleepers:     make([]sleeper, n),
		failed:       make([]failFlag, n),
		onRecover:    cfg.OnRecover,
		recoverInt:   cfg.RecoverInterval,
		lease:        cfg.LeaseIDs,
		leaseWindow:  cfg.LeaseWindow,
		onLeaseError: cfg.OnLeaseError,
		leaseBlocks:  cfg.LeaseBlocks,
	}
	s.grouper, _ = cfg.Sink.(Grouper)
	if s.recoverInt <= 0 {
		s.recoverInt = time.Second
	}
	if s.lease != nil || s.leaseBlocks != nil {
		if s.leaseWindow == 0 {
			// 1024 blocks of 4096 ids: seconds of headroom at any rate
			// one machine can take, so a leaser delayed by a busy
			// scheduler never leaves the hot path without ids.
			s.leaseWindow = max(1024, 16*uint64(n))
		}
		s.ids.SetLimit(s.ids.NextBlock())
		s.extendLease()
		s.wg.Add(1)
		go s.leaser()
	}
	for i := range s.rings {
		s.rings[i] = NewRing(cfg.RingBytes)
	}
	s.wg.Add(n)
	for i := range s.rings {
		go s.drainer(i)
	}
	return s
}

// Len returns the number of shards.
func (s *Set) Len() int { return len(s.rings) }

// Ticket identifies a stored record for Wait.
type Ticket struct {
	shard int
	pos   uint64
	seq   uint64
}

// Put reserves an id and copies body into the ring of the shard picked by
// hint (for example a connection id, so one connection's records stay in
// order and producers rarely share a ring). It never blocks: it returns
// ErrFull when the ring has no room, or ErrIDsExhausted. A Put that leaves
// the ring more than a quarter full wakes its drainer, and one that leaves
// it more than half full also yields the processor (runtime.Gosched). body
// is not retained. Put is safe for concurrent use.
func (s *Set) Put(hint uint64, body []byte) (uint64, Ticket, error) {
	i := int(hint % uint64(len(s.rings)))
	if s.failed[i].v.Load() {
		return 0, Ticket{}, ErrUnavailable
	}
	id, err := s.ids.Next(i)
	if err != nil {
		return 0, Ticket{}, err
	}
	r := s.rings[i]
	seq := r.FailSeq()
	pos, used, err := r.put(id, body, 0)
	if err != nil {
		return 0, Ticket{}, err
	}
	if r.behind(used) {
		// The ring is filling up faster than its drainer, asleep for
		// the rest of its FlushInterval, would empty it: wake it now.
		// Past half full, yield too, so that it gets a CPU before
		// producers that never block (or a busy machine) fill the ring
		// and get ErrFull.
		s.poke(i)
		if used > r.size/2 {
			runtime.Gosched()
		}
	}
	return id, Ticket{shard: i, pos: pos, seq: seq}, nil
}

// Wait blocks until the record of t has been flushed to the sink and
// returns nil, or ErrFlushFailed if its batch failed. It takes no lock: it
// waits on the shard's durable watermark, waking the drainer if it sleeps.
func (s *Set) Wait(t Ticket) error {
	r := s.rings[t.shard]
	if !r.IsFlushed(t.pos) {
		s.poke(t.shard)
	}
	return r.Outcome(t.pos, t.seq)
}

// poke wakes shard i's drainer if it is sleeping. Only the caller that
// swaps the sleeper's channel out closes it, so it is closed once.
func (s *Set) poke(i int) {
	sl := &s.sleepers[i]
	if ch := sl.ch.Load(); ch != nil && sl.ch.CompareAndSwap(ch, nil) {
		close(*ch)
	}
}

// Failed reports whether shard i refuses records because its sink failed.
func (s *Set) Failed(i int) bool { return s.failed[i].v.Load() }

func (s *Set) extendLease() {
	if s.leaseBlocks != nil {
		s.extendClusterLease()
		return
	}
	if !s.leaseDue() {
		return
	}
	upTo := s.ids.NextBlock() + s.leaseWindow
	if err := s.lease(upTo*s.ids.Block() + 1); err != nil {
		if s.onLeaseError != nil {
			s.onLeaseError(err)
		}
		return
	}
	s.ids.SetLimit(upTo)
}

// leaseDue reports whether at most half a lease window of blocks is left
// in the range ids are handed out from: time to lease the next.
func (s *Set) leaseDue() bool { return s.ids.Remaining() <= s.leaseWindow/2 }

// extendClusterLease leases the next range of blocks cluster-wide once
// half of the current one is used, and queues it; a failed round trip is
// retried with backoff (10 ms doubling to 2 s), not every tick.
func (s *Set) extendClusterLease() {
	if s.ids.Pending() || !s.leaseDue() || time.Now().Before(s.retryAt) {
		return
	}
	s.roundTrips.Add(1)
	start, err := s.leaseBlocks(s.leaseWindow)
	end := start + s.leaseWindow
	if err == nil && s.lease != nil {
		// Keep the local durable lease too: the range's end is on disk
		// before any of its ids is handed out.
		err = s.lease(end*s.ids.Block() + 1)
	}
	if err != nil {
		s.backoff = min(max(2*s.backoff, 10*time.Millisecond), 2*time.Second)
		s.retryAt = time.Now().Add(s.backoff)
		if s.onLeaseError != nil {
			s.onLeaseError(err)
		}
		return
	}
	s.backoff, s.retryAt = 0, time.Time{}
	s.ids.SetNext(start, end)
}

func (s *Set) leaser() {
	defer s.wg.Done()
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-s.wake:
			return
		case <-t.C:
			s.extendLease()
		}
	}
}

// Ring returns shard i's ring.
func (s *Set) Ring(i int) *Ring { return s.rings[i] }

// IDs returns the id allocator.
func (s *Set) IDs() *IDs { return s.ids }

func (s *Set) drainer(i int) {
	defer s.wg.Done()
	r := s.rings[i]
	t := time.NewTimer(s.interval)
	defer t.Stop()
	appendFn := func(id uint64, body []byte) { s.sink.Append(i, id, body) }
	refFn := func(slot uint64) int { return s.drainBatch(i, slot) }
	rec, _ := s.sink.(Recoverer)
	var lastTry time.Time
	for {
		start := r.tail.Load()
		n, pos := r.drainRefs(appendFn, refFn)
		if pos > r.flushed.Load() {
			r.BeginBatch(pos)
			if err := s.sink.Flush(i); err != nil {
				// Mark the shard failed, and report it, before
				// releasing the batch's waiters: once a worker answers
				// 503, the shard is seen as failed (Failed, /readyz)
				// and the failure has been reported.
				if !s.failed[i].v.Swap(true) {
					lastTry = time.Now()
					if s.onErr != nil {
						s.onErr(i, err)
					}
				}
				r.Fail(start, pos)
			} else {
				r.Flushed(pos)
			}
			s.drained[i].n.Add(uint64(n))
			s.batches[i].n.Add(1)
		}
		if s.failed[i].v.Load() && rec != nil && time.Since(lastTry) >= s.recoverInt {
			lastTry = time.Now()
			if rec.Recover(i) == nil {
				s.failed[i].v.Store(false)
				if s.onRecover != nil {
					s.onRecover(i)
				}
			}
		}
		r.rewind()
		if s.closing.Load() {
			if r.Used() == 0 {
				return
			}
			// A producer may still be finishing a record it reserved.
			runtime.Gosched()
			continue
		}
		used := uint64(r.Used())
		if r.behind(used) || (s.eager && used > 0) {
			// Falling behind, or workers are waiting: go on at once. If
			// nothing moved, a producer is between reserving and
			// committing; let it run (with one P it could not otherwise).
			if pos == start {
				runtime.Gosched()
			}
			continue
		}
		ch := make(chan struct{})
		sl := &s.sleepers[i]
		sl.ch.Store(&ch)
		if s.eager && r.Used() > 0 && sl.ch.CompareAndSwap(&ch, nil) {
			continue // a record came in while we got ready to sleep
		}
		// Otherwise sleep FlushInterval; a poke (a waiting worker in eager
		// mode, a batch in any mode) cuts it short.
		t.Reset(s.interval)
		select {
		case <-t.C:
		case <-ch:
		case <-s.wake:
		}
		sl.ch.CompareAndSwap(&ch, nil)
	}
}

// Close drains every ring into the sink and stops the drainers. The caller
// must make sure no Put is in progress or will start.
func (s *Set) Close() {
	if s.closing.Swap(true) {
		return
	}
	close(s.wake)
	s.wg.Wait()
}

// Stats are counters of a Set; fill them with UpdateStats.
type Stats struct {
	Shards    int
	Drained   uint64 // records handed to the sink
	Batches   uint64 // Sink.Flush calls (fsync batches in fsync mode)
	Full      uint64 // Puts refused because a ring was full
	RingUsed  []int  // bytes waiting in each ring
	RingBytes int    // capacity of each ring
	IDsLeased uint64 // exclusive upper bound of leased ids
	// LeaseRoundTrips counts cluster-wide lease calls (Config.LeaseBlocks).
	LeaseRoundTrips uint64
}

// UpdateStats adds the Set's counters to st and overwrites its gauges.
func (s *Set) UpdateStats(st *Stats) {
	st.Shards = len(s.rings)
	st.RingBytes = s.rings[0].Size()
	st.RingUsed = st.RingUsed[:0]
	for i, r := range s.rings {
		st.Drained += s.drained[i].n.Load()
		st.Batches += s.batches[i].n.Load()
		st.Full += r.full.Load()
		st.RingUsed = append(st.RingUsed, r.Used())
	}
	st.IDsLeased = s.ids.Leased()
	st.LeaseRoundTrips += s.roundTrips.Load()
}
