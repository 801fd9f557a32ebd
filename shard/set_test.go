package shard

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var errTestFlush = errors.New("test sink: flush failed")

type sinkRec struct {
	shard int
	id    uint64
	body  []byte
}

// testSink records what a Set hands it. Appended records become visible in
// flushed only when Flush succeeds; Flush fails while fail is set. It
// reports concurrent calls for one shard and ids flushed twice.
type testSink struct {
	fail     atomic.Bool
	onAppend func(shard int, id uint64) // set before New; may block
	inCall   [1024]atomic.Int32

	mu            sync.Mutex
	pending       map[int][]sinkRec
	flushed       map[uint64]sinkRec
	order         map[int][]uint64 // flushed ids of each shard, in order
	flushes       int
	failedFlushes int
	problems      []string
}

func newTestSink() *testSink {
	return &testSink{
		pending: map[int][]sinkRec{},
		flushed: map[uint64]sinkRec{},
		order:   map[int][]uint64{},
	}
}

func (s *testSink) enter(shard int) {
	if s.inCall[shard].Add(1) != 1 {
		s.problem("concurrent Append/Flush calls for shard %d", shard)
	}
}

func (s *testSink) leave(shard int) { s.inCall[shard].Add(-1) }

func (s *testSink) problem(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.problems = append(s.problems, fmt.Sprintf(format, args...))
}

func (s *testSink) Append(shard int, id uint64, body []byte) {
	s.enter(shard)
	defer s.leave(shard)
	if s.onAppend != nil {
		s.onAppend(shard, id)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pending[shard] = append(s.pending[shard], sinkRec{shard, id, bytes.Clone(body)})
}

func (s *testSink) Flush(shard int) error {
	s.enter(shard)
	defer s.leave(shard)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail.Load() {
		// A failed batch is dropped, as the durable log drops it: the
		// Set never hands its records over again.
		s.failedFlushes++
		s.pending[shard] = nil
		return errTestFlush
	}
	s.flushes++
	for _, r := range s.pending[shard] {
		if _, dup := s.flushed[r.id]; dup {
			s.problems = append(s.problems, fmt.Sprintf("id %d flushed twice", r.id))
		}
		s.flushed[r.id] = r
		s.order[shard] = append(s.order[shard], r.id)
	}
	s.pending[shard] = nil
	return nil
}

func (s *testSink) get(id uint64) (sinkRec, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.flushed[id]
	return r, ok
}

func (s *testSink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.flushed)
}

func (s *testSink) counts() (flushes, failed int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.flushes, s.failedFlushes
}

// check reports the sink's problems and that it holds exactly want, each
// record from shard want[id].shard with body want[id].body.
func (s *testSink) check(t *testing.T, want map[uint64]sinkRec) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.problems {
		t.Error(p)
	}
	if len(s.flushed) != len(want) {
		t.Errorf("sink has %d flushed records, want %d", len(s.flushed), len(want))
	}
	bad := 0
	for id, w := range want {
		got, ok := s.flushed[id]
		if !ok || got.shard != w.shard || !bytes.Equal(got.body, w.body) {
			if bad++; bad <= 5 {
				t.Errorf("sink record %d = (%v, shard %d, %q), want (shard %d, %q)", id, ok, got.shard, got.body, w.shard, w.body)
			}
		}
	}
	if bad > 5 {
		t.Errorf("... %d bad records in all", bad)
	}
}

// setBody is the body of record i of producer g. Its bytes are all even:
// like zero bytes, they can never look like a committed ring header (bit 32
// of a word), so these tests do not depend on the ring zeroing drained
// bodies; TestRingDrainIgnoresStaleBytesAfterWrap covers that.
func setBody(g, i int) []byte {
	b := make([]byte, (g+i)%41)
	for j := range b {
		b[j] = byte(2 * (g*7 + i + j))
	}
	return b
}

func closeWithin(t *testing.T, s *Set) {
	t.Helper()
	ch := make(chan struct{})
	go func() { s.Close(); close(ch) }()
	if !done(ch, waitLong) {
		t.Fatal("Close did not return")
	}
}

func TestSetLen(t *testing.T) {
	f := func(shards int) {
		t.Helper()
		s := New(Config{Shards: shards})
		defer s.Close()
		want := max(shards, runtime.GOMAXPROCS(0))
		if s.Len() != want {
			t.Errorf("Shards %d: Len() = %d, want %d", shards, s.Len(), want)
		}
		var st Stats
		s.UpdateStats(&st)
		if st.Shards != want || len(st.RingUsed) != want {
			t.Errorf("Shards %d: Stats.Shards = %d, %d RingUsed, want %d", shards, st.Shards, len(st.RingUsed), want)
		}
		for i := range s.Len() {
			if s.Ring(i) == nil {
				t.Errorf("Ring(%d) = nil", i)
			}
		}
	}
	f(0)
	f(1)
	f(runtime.GOMAXPROCS(0))
	f(runtime.GOMAXPROCS(0) + 3)
	f(64)
}

func TestSetDefaults(t *testing.T) {
	s := New(Config{})
	if s.Len() != runtime.GOMAXPROCS(0) {
		t.Errorf("Len() = %d, want GOMAXPROCS %d", s.Len(), runtime.GOMAXPROCS(0))
	}
	if s.Ring(0).Size() != 4<<20 {
		t.Errorf("ring size %d, want 4 MiB", s.Ring(0).Size())
	}
	if s.IDs().Block() != 4096 {
		t.Errorf("id block %d, want 4096", s.IDs().Block())
	}
	id, tk, err := s.Put(0, []byte("x"))
	if err != nil || id != 1 {
		t.Fatalf("first Put = (%d, %v), want id 1", id, err)
	}
	ch := make(chan struct{})
	go func() { s.Wait(tk); close(ch) }()
	if !done(ch, waitLong) {
		t.Fatal("Wait with the default (discarding) sink did not return")
	}
	closeWithin(t, s)
	closeWithin(t, s) // Close twice is fine
	var st Stats
	s.UpdateStats(&st)
	if st.Drained != 1 || st.RingBytes != 4<<20 {
		t.Errorf("Stats = %+v, want 1 drained, 4 MiB rings", st)
	}
}

func TestSetPutRoutesByHint(t *testing.T) {
	f := func(shards int, hints ...uint64) {
		t.Helper()
		sink := newTestSink()
		s := New(Config{Shards: shards, Sink: sink, FlushInterval: time.Hour})
		want := map[uint64]sinkRec{}
		perShard := map[int][]uint64{}
		for i, hint := range hints {
			body := []byte(fmt.Sprintf("hint %d, record %d", hint, i))
			id, tk, err := s.Put(hint, body)
			if err != nil {
				t.Fatalf("Put(%d): %v", hint, err)
			}
			shard := int(hint % uint64(s.Len()))
			if tk.shard != shard {
				t.Errorf("Put(%d) went to shard %d, want %d of %d", hint, tk.shard, shard, s.Len())
			}
			if _, dup := want[id]; dup {
				t.Errorf("Put(%d) returned id %d twice", hint, id)
			}
			want[id] = sinkRec{shard, id, body}
			perShard[shard] = append(perShard[shard], id)
		}
		closeWithin(t, s)
		sink.check(t, want)
		for shard, ids := range perShard {
			if got := sink.order[shard]; fmt.Sprint(got) != fmt.Sprint(ids) {
				t.Errorf("shard %d flushed ids %v, want %v (Put order)", shard, got, ids)
			}
		}
	}
	f(1, 0, 1, 2, 3, 4)
	f(4, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)
	f(7, 3, 3, 3, 10, 17, 24, 0)
	f(5, math.MaxUint64, 1<<63, 1<<63+1, 12345678901234, math.MaxUint64-1)
}

func TestSetWait(t *testing.T) {
	f := func(shards, ringBytes, producers, each int, interval time.Duration) {
		t.Helper()
		sink := newTestSink()
		s := New(Config{Shards: shards, RingBytes: ringBytes, FlushInterval: interval, Sink: sink})
		want := make([]map[uint64]sinkRec, producers)
		var wg sync.WaitGroup
		for g := range producers {
			want[g] = map[uint64]sinkRec{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				deadline := time.Now().Add(waitLong)
				for i := 0; i < each; {
					body := setBody(g, i)
					id, tk, err := s.Put(uint64(g), body)
					if errors.Is(err, ErrFull) && time.Now().Before(deadline) {
						runtime.Gosched()
						continue
					}
					if err != nil {
						t.Errorf("producer %d: Put: %v", g, err)
						return
					}
					s.Wait(tk)
					got, ok := sink.get(id)
					if !ok || !bytes.Equal(got.body, body) || got.shard != tk.shard {
						t.Errorf("producer %d: Wait for id %d returned but the sink has (%v, %q from shard %d), want %q from shard %d", g, id, ok, got.body, got.shard, body, tk.shard)
						return
					}
					want[g][id] = got
					i++
				}
			}()
		}
		ch := make(chan struct{})
		go func() { wg.Wait(); close(ch) }()
		if !done(ch, 3*waitLong) {
			t.Fatal("producers still waiting")
		}
		closeWithin(t, s)
		all := map[uint64]sinkRec{}
		for g := range want {
			for id, r := range want[g] {
				all[id] = r
			}
		}
		if len(all) != producers*each {
			t.Errorf("%d distinct ids for %d records", len(all), producers*each)
		}
		sink.check(t, all)
	}
	f(1, 4096, 1, 200, time.Millisecond)
	f(2, 4096, 16, 100, time.Millisecond)
	f(4, 1<<16, 8, 100, 2*time.Millisecond)
}

// TestSetCloseDrainsAll: records put just before Close all reach the sink,
// with drainers that would otherwise sleep for an hour or that keep up.
func TestSetCloseDrainsAll(t *testing.T) {
	f := func(shards, ringBytes, producers, each int, interval time.Duration) {
		t.Helper()
		sink := newTestSink()
		s := New(Config{Shards: shards, RingBytes: ringBytes, FlushInterval: interval, Sink: sink})
		want := map[uint64]sinkRec{}
		ids := make([][]uint64, producers)
		var mu sync.Mutex
		var wg sync.WaitGroup
		for g := range producers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				mine := map[uint64]sinkRec{}
				deadline := time.Now().Add(waitLong)
				for i := 0; i < each; {
					body := setBody(g, i)
					id, tk, err := s.Put(uint64(g), body)
					if errors.Is(err, ErrFull) && time.Now().Before(deadline) {
						runtime.Gosched()
						continue
					}
					if err != nil {
						t.Errorf("producer %d: Put %d: %v", g, i, err)
						return
					}
					mine[id] = sinkRec{tk.shard, id, body}
					ids[g] = append(ids[g], id)
					i++
				}
				mu.Lock()
				for id, r := range mine {
					want[id] = r
				}
				mu.Unlock()
			}()
		}
		wg.Wait()
		closeWithin(t, s)
		sink.check(t, want)
		// One producer's records (one hint, so one shard) are flushed in
		// the order it put them.
		for g := range producers {
			pos := map[uint64]int{}
			for i, id := range sink.order[g%s.Len()] {
				pos[id] = i
			}
			for i := 1; i < len(ids[g]); i++ {
				if pos[ids[g][i-1]] >= pos[ids[g][i]] {
					t.Errorf("producer %d: id %d flushed after id %d, put before it", g, ids[g][i-1], ids[g][i])
					break
				}
			}
		}
		var st Stats
		s.UpdateStats(&st)
		if st.Drained != uint64(len(want)) {
			t.Errorf("Stats.Drained = %d, want %d", st.Drained, len(want))
		}
		for i, u := range st.RingUsed {
			if u != 0 {
				t.Errorf("ring %d still holds %d bytes after Close", i, u)
			}
		}
	}
	f(4, 1<<20, 8, 5000, time.Hour)
	f(1, 1<<20, 1, 10000, time.Hour)
	f(2, 4096, 8, 2000, time.Millisecond) // rings fill up and wrap
	f(3, 1<<16, 6, 3000, 50*time.Microsecond)
}

// TestSetFlushInterval: without Close, a record reaches the sink and its
// Wait returns within a few flush intervals.
func TestSetFlushInterval(t *testing.T) {
	f := func(interval time.Duration) {
		t.Helper()
		sink := newTestSink()
		s := New(Config{Shards: 1, FlushInterval: interval, Sink: sink})
		defer s.Close()
		limit := 10 * interval
		for i := range 3 {
			time.Sleep(interval / 3) // let the drainer go back to sleep
			start := time.Now()
			id, tk, err := s.Put(0, []byte("one record"))
			if err != nil {
				t.Fatal(err)
			}
			for {
				if _, ok := sink.get(id); ok {
					break
				}
				if time.Since(start) > limit {
					t.Fatalf("interval %v: record %d not in the sink after %v", interval, i, time.Since(start))
				}
				time.Sleep(time.Millisecond)
			}
			ch := make(chan struct{})
			go func() { s.Wait(tk); close(ch) }()
			if !done(ch, limit) {
				t.Fatalf("interval %v: Wait for record %d did not return within %v", interval, i, limit)
			}
		}
	}
	f(50 * time.Millisecond)
	f(200 * time.Millisecond)
}

// TestSetUpdateStats stalls shard 0's drainer inside Append, fills its ring,
// and checks the counters and gauges before and after Close.
func TestSetUpdateStats(t *testing.T) {
	sink := newTestSink()
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	sink.onAppend = func(shard int, _ uint64) {
		if shard == 0 {
			once.Do(func() { close(entered); <-release })
		}
	}
	s := New(Config{Shards: 1, RingBytes: 4096, FlushInterval: time.Millisecond, Sink: sink})
	n := s.Len()
	want := map[uint64]sinkRec{}
	put := func(body []byte) error {
		id, _, err := s.Put(0, body)
		if err == nil {
			want[id] = sinkRec{0, id, body}
		}
		return err
	}
	if err := put(make([]byte, 48)); err != nil {
		t.Fatal(err)
	}
	if !done(entered, waitLong) {
		t.Fatal("the drainer did not pick up the record")
	}
	// The drainer is stuck in Append: 63 more 64-byte records fill the
	// 4 KiB ring, then every Put is refused.
	for i := range 63 {
		if err := put(make([]byte, 48)); err != nil {
			t.Fatalf("Put %d: %v", i, err)
		}
	}
	for range 5 {
		if err := put(nil); !errors.Is(err, ErrFull) {
			t.Fatalf("Put into a full ring: %v, want ErrFull", err)
		}
	}
	var st Stats
	s.UpdateStats(&st)
	if st.Shards != n || st.RingBytes != 4096 || st.Full != 5 || st.Drained != 0 || len(st.RingUsed) != n || st.RingUsed[0] != 4096 {
		t.Errorf("stalled: Stats = %+v, want %d shards, 4096-byte rings, 5 full, 0 drained, ring 0 full", st, n)
	}
	for i := 1; i < len(st.RingUsed); i++ {
		if st.RingUsed[i] != 0 {
			t.Errorf("stalled: ring %d uses %d bytes, want 0", i, st.RingUsed[i])
		}
	}
	if st.IDsLeased < 64+1 {
		t.Errorf("stalled: IDsLeased = %d after 64 ids", st.IDsLeased)
	}
	close(release)
	closeWithin(t, s)
	sink.check(t, want)
	st = Stats{RingUsed: st.RingUsed}
	s.UpdateStats(&st)
	if st.Full != 5 || st.Drained != 64 || len(st.RingUsed) != n || st.RingUsed[0] != 0 {
		t.Errorf("closed: Stats = %+v, want 5 full, 64 drained, %d empty rings", st, n)
	}
	// Counters add up, gauges are overwritten.
	s.UpdateStats(&st)
	if st.Full != 10 || st.Drained != 128 || len(st.RingUsed) != n || st.Shards != n {
		t.Errorf("second UpdateStats: Stats = %+v, want 10 full, 128 drained, %d rings", st, n)
	}
}

// recoverSink is a testSink that can leave its failed state: Recover
// succeeds once the test stops the failures.
type recoverSink struct{ *testSink }

func (s recoverSink) Recover(int) error {
	if s.fail.Load() {
		return errTestFlush
	}
	return nil
}

// TestSetFlushError: a failed Flush fails its batch (Wait reports
// ErrFlushFailed, the record is never acknowledged), the shard refuses new
// records (ErrUnavailable), OnFlushError is called once, and the shard
// accepts records again once the sink's Recover succeeds.
func TestSetFlushError(t *testing.T) {
	sink := recoverSink{newTestSink()}
	sink.fail.Store(true)
	var calls, recovered atomic.Int64
	s := New(Config{Shards: 1, FlushInterval: 2 * time.Millisecond, Sink: sink, RecoverInterval: 5 * time.Millisecond,
		OnFlushError: func(shard int, err error) {
			if shard == 0 && errors.Is(err, errTestFlush) {
				calls.Add(1)
			}
		},
		OnRecover: func(int) { recovered.Add(1) },
	})
	defer s.Close()
	id, tk, err := s.Put(0, []byte("fails"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Wait(tk); !errors.Is(err, ErrFlushFailed) {
		t.Fatalf("Wait = %v, want ErrFlushFailed", err)
	}
	if _, ok := sink.get(id); ok {
		t.Fatal("a failed record is visible in the sink")
	}
	if !s.Failed(0) || calls.Load() != 1 {
		t.Fatalf("Failed = %v, OnFlushError calls %d; want true, 1", s.Failed(0), calls.Load())
	}
	if _, _, err := s.Put(0, []byte("refused")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Put while failed = %v, want ErrUnavailable", err)
	}
	sink.fail.Store(false)
	deadline := time.Now().Add(waitLong)
	for s.Failed(0) {
		if time.Now().After(deadline) {
			t.Fatal("shard did not recover")
		}
		time.Sleep(time.Millisecond)
	}
	if recovered.Load() != 1 {
		t.Fatalf("OnRecover called %d times", recovered.Load())
	}
	id2, tk2, err := s.Put(0, []byte("works"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Wait(tk2); err != nil {
		t.Fatalf("Wait after recovery = %v", err)
	}
	sink.check(t, map[uint64]sinkRec{id2: {0, id2, []byte("works")}})
}

func TestSetPutErrors(t *testing.T) {
	check := func(s *Set, hint uint64, bodyLen int, wantID uint64, wantErr error) {
		t.Helper()
		id, tk, err := s.Put(hint, make([]byte, bodyLen))
		if id != wantID || !errors.Is(err, wantErr) {
			t.Errorf("Put(%d, %d bytes) = (%d, %v), want (%d, %v)", hint, bodyLen, id, err, wantID, wantErr)
		}
		if err != nil && tk != (Ticket{}) {
			t.Errorf("Put(%d, %d bytes) failed with ticket %+v, want the zero Ticket", hint, bodyLen, tk)
		}
	}

	sink := newTestSink()
	s := New(Config{RingBytes: 4096, Sink: sink})
	check(s, 0, 2033, 0, ErrFull) // more than half the ring
	check(s, 1, 1<<20, 0, ErrFull)
	closeWithin(t, s)
	sink.check(t, map[uint64]sinkRec{})

	sink = newTestSink()
	s = New(Config{IDBlock: 1, FirstID: MaxID - 2, Sink: sink})
	check(s, 0, 10, MaxID-2, nil)
	check(s, 0, 11, MaxID-1, nil)
	check(s, 0, 10, 0, ErrIDsExhausted)
	check(s, 1, 10, 0, ErrIDsExhausted)
	check(s, 0, 0, 0, ErrIDsExhausted)
	closeWithin(t, s)
	sink.check(t, map[uint64]sinkRec{
		MaxID - 2: {0, MaxID - 2, make([]byte, 10)},
		MaxID - 1: {0, MaxID - 1, make([]byte, 11)},
	})
}

// TestSetOneDrainerPerShard: many producers on every shard; the sink checks
// that Append and Flush of one shard are never called concurrently, and
// every record arrives once.
func TestSetOneDrainerPerShard(t *testing.T) {
	sink := newTestSink()
	s := New(Config{Shards: 3, RingBytes: 1 << 14, FlushInterval: 100 * time.Microsecond, Sink: sink})
	const producers, each = 12, 1000
	var mu sync.Mutex
	want := map[uint64]sinkRec{}
	var wg sync.WaitGroup
	for g := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			deadline := time.Now().Add(waitLong)
			for i := 0; i < each; {
				body := setBody(g, i)
				id, tk, err := s.Put(uint64(g*7+i), body) // spread over shards
				if errors.Is(err, ErrFull) && time.Now().Before(deadline) {
					runtime.Gosched()
					continue
				}
				if err != nil {
					t.Errorf("Put: %v", err)
					return
				}
				mu.Lock()
				want[id] = sinkRec{tk.shard, id, body}
				mu.Unlock()
				i++
			}
		}()
	}
	wg.Wait()
	closeWithin(t, s)
	sink.check(t, want)
}

// TestSetFillingRingWakesDrainer: a drainer asleep for an hour-long
// FlushInterval is woken by the Put that leaves its ring more than a
// quarter full, and drains it; the records before that wait.
func TestSetFillingRingWakesDrainer(t *testing.T) {
	sink := newTestSink()
	s := New(Config{Shards: 1, RingBytes: 64 << 10, FlushInterval: time.Hour, Sink: sink})
	defer s.Close()
	r := s.Ring(0)
	time.Sleep(waitShort) // let the drainer go to sleep
	body := make([]byte, 1000)
	// 16 records of 1016 bytes fill 16,256 of the 65,536 bytes: not more
	// than a quarter. The 17th is.
	quarter := r.Size() / 4 / int(recordBytes(len(body)))
	var ids []uint64
	for range quarter + 1 {
		id, _, err := s.Put(0, body)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	deadline := time.Now().Add(waitLong)
	for _, id := range ids {
		for {
			if _, ok := sink.get(id); ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("record %d of %d not flushed %v after the ring passed a quarter full", id, len(ids), waitLong)
			}
			time.Sleep(time.Millisecond)
		}
	}
	// The same, one record short: nothing is flushed.
	ids = ids[:0]
	for range quarter {
		id, _, err := s.Put(0, body)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	time.Sleep(waitShort)
	if _, ok := sink.get(ids[0]); ok {
		t.Fatalf("record %d flushed with the ring at most a quarter full, before the interval", ids[0])
	}
}
