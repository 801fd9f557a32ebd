package shard

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Bounds are generous so that the tests pass under -race on a loaded 2-core
// machine: waitLong bounds something that must happen, waitShort is how long
// we watch for something that must not happen (yet).
const (
	waitLong  = 10 * time.Second
	waitShort = 50 * time.Millisecond
)

type rec struct {
	id   uint64
	body []byte
}

// drainAll drains r and returns copies of the records it passed to fn.
func drainAll(r *Ring) ([]rec, int, uint64) {
	var got []rec
	n, pos := r.Drain(func(id uint64, body []byte) {
		got = append(got, rec{id, bytes.Clone(body)})
	})
	return got, n, pos
}

// safeDrain is drainAll that turns a panic inside Drain into an error, so a
// corrupted ring fails one test instead of killing the test binary.
func safeDrain(r *Ring) (got []rec, n int, pos uint64, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("Drain panicked: %v", v)
		}
	}()
	got, n, pos = drainAll(r)
	return got, n, pos, nil
}

// fillBody returns a body of n bytes that differs per (id, n).
func fillBody(id uint64, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(id*131 + uint64(i)*7 + uint64(n))
	}
	return b
}

// done reports whether ch is closed within d.
func done(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

func waitAsync(r *Ring, pos uint64) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		r.Wait(pos)
		close(ch)
	}()
	return ch
}

func TestRingNewRingSize(t *testing.T) {
	f := func(size, want int) {
		t.Helper()
		r := NewRing(size)
		if r.Size() != want {
			t.Errorf("NewRing(%d).Size() = %d, want %d", size, r.Size(), want)
		}
		if len(r.buf) != want || len(r.words)*8 != want {
			t.Errorf("NewRing(%d): buf %d bytes, words %d, want %d bytes", size, len(r.buf), len(r.words), want)
		}
		if r.Used() != 0 {
			t.Errorf("NewRing(%d).Used() = %d, want 0", size, r.Used())
		}
	}
	f(0, 4096)
	f(1, 4096)
	f(4096, 4096)
	f(4097, 8192)
	f(5000, 8192)
	f(1<<20, 1<<20)
	f(1<<20+1, 2<<20)
}

// TestRingNewRingNegativeSize: NewRing(size) for size < 0 must return (like
// size 0, a 4 KiB ring) rather than loop forever. It runs in a child process
// so that a hang costs only the timeout.
func TestRingNewRingNegativeSize(t *testing.T) {
	if s := os.Getenv("SHARD_TEST_NEWRING_SIZE"); s != "" {
		size, _ := strconv.Atoi(s)
		fmt.Println("size", NewRing(size).Size())
		return
	}
	f := func(size int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestRingNewRingNegativeSize$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), "SHARD_TEST_NEWRING_SIZE="+strconv.Itoa(size))
		out, err := cmd.CombinedOutput()
		if ctx.Err() != nil {
			t.Errorf("NewRing(%d) did not return within 5s (the doubling loop never ends)", size)
			return
		}
		if err != nil || !bytes.Contains(out, []byte("size 4096\n")) {
			t.Errorf("NewRing(%d) in a child process: %v, output:\n%s\nwant a 4096-byte ring", size, err, out)
		}
	}
	f(-1)
	f(math.MinInt)
}

func TestRingRecordBytes(t *testing.T) {
	f := func(n int, want uint64) {
		t.Helper()
		if got := recordBytes(n); got != want {
			t.Errorf("recordBytes(%d) = %d, want %d", n, got, want)
		}
	}
	f(0, 16)
	f(1, 24)
	f(7, 24)
	f(8, 24)
	f(9, 32)
	f(16, 32)
	f(17, 40)
	f(2032, 2048)
}

func TestRingRoundTrip(t *testing.T) {
	f := func(lens ...int) {
		t.Helper()
		r := NewRing(1 << 16)
		var want []rec
		var pos uint64
		for i, n := range lens {
			id := uint64(i)*1000003 + 1
			body := fillBody(id, n)
			p, err := r.Put(id, body)
			if err != nil {
				t.Fatalf("lens %v: Put(len %d): %v", lens, n, err)
			}
			pos += recordBytes(n)
			if p != pos {
				t.Errorf("lens %v: Put(len %d) = pos %d, want %d", lens, n, p, pos)
			}
			// Put must not retain body.
			for j := range body {
				body[j] ^= 0xff
			}
			want = append(want, rec{id, fillBody(id, n)})
		}
		if r.Used() != int(pos) {
			t.Errorf("lens %v: Used() = %d before Drain, want %d", lens, r.Used(), pos)
		}
		got, n, dpos := drainAll(r)
		if n != len(lens) || len(got) != len(lens) {
			t.Fatalf("lens %v: Drain returned n=%d, fn called %d times, want %d", lens, n, len(got), len(lens))
		}
		if dpos != pos {
			t.Errorf("lens %v: Drain pos = %d, want %d", lens, dpos, pos)
		}
		for i := range want {
			if got[i].id != want[i].id || !bytes.Equal(got[i].body, want[i].body) {
				t.Errorf("lens %v: record %d = (%d, %x), want (%d, %x)", lens, i, got[i].id, got[i].body, want[i].id, want[i].body)
			}
		}
		if r.Used() != 0 {
			t.Errorf("lens %v: Used() = %d after Drain, want 0", lens, r.Used())
		}
		if got, n, p := drainAll(r); n != 0 || len(got) != 0 || p != pos {
			t.Errorf("lens %v: second Drain = (%d records, n %d, pos %d), want (0, 0, %d)", lens, len(got), n, p, pos)
		}
	}
	f()
	f(0)
	f(0, 0, 0)
	f(1)
	f(7, 8, 9)
	f(2032) // largest record of a 4 KiB ring fits a bigger one too
	var all []int
	for n := 0; n <= 40; n++ {
		f(n)
		f(n, 40-n, n)
		all = append(all, n)
	}
	f(all...)
}

func TestRingEmptyBodyIsEmpty(t *testing.T) {
	f := func(body []byte) {
		t.Helper()
		r := NewRing(4096)
		if _, err := r.Put(42, body); err != nil {
			t.Fatalf("Put(%q): %v", body, err)
		}
		calls := 0
		r.Drain(func(id uint64, b []byte) {
			calls++
			if id != 42 || len(b) != 0 {
				t.Errorf("Drain got (%d, %q), want (42, empty)", id, b)
			}
		})
		if calls != 1 {
			t.Errorf("Drain called fn %d times, want 1", calls)
		}
	}
	f(nil)
	f([]byte{})
}

// TestRingWrapAround runs a ring through many laps with records of random
// sizes against a model of its positions: every Put must succeed or fail with
// ErrFull exactly when the model says so, return the position the model
// predicts (including padding at the end of the buffer), and every record
// must come out of Drain intact and in order.
func TestRingWrapAround(t *testing.T) {
	f := func(size int, maxBody int, laps int, seed uint64) {
		t.Helper()
		rnd := rand.New(rand.NewPCG(seed, 1))
		r := NewRing(size)
		sz := uint64(r.Size())
		var head, tail uint64 // the model
		var pending []rec
		var id uint64
		pads, fulls, drains := 0, 0, 0
		drain := func() {
			got, n, pos := drainAll(r)
			drains++
			if n != len(pending) || len(got) != len(pending) {
				t.Fatalf("size %d seed %d: Drain gave %d records (n=%d), want %d", size, seed, len(got), n, len(pending))
			}
			for i := range got {
				if got[i].id != pending[i].id || !bytes.Equal(got[i].body, pending[i].body) {
					t.Fatalf("size %d seed %d: record %d = (%d, len %d), want (%d, len %d)", size, seed, i, got[i].id, len(got[i].body), pending[i].id, len(pending[i].body))
				}
			}
			if pos != head {
				t.Fatalf("size %d seed %d: Drain pos %d, want %d", size, seed, pos, head)
			}
			tail = head
			pending = pending[:0]
		}
		for head < uint64(laps)*sz {
			n := rnd.IntN(maxBody + 1)
			need := recordBytes(n)
			off := head % sz
			pad := uint64(0)
			if off+need > sz {
				pad = sz - off
			}
			fits := head+pad+need-tail <= sz
			id++
			body := make([]byte, n)
			for i := range body {
				body[i] = byte(rnd.Uint32()) // any bytes, header look-alikes included
			}
			usedBefore := r.Used()
			pos, err := r.Put(id, body)
			switch {
			case fits && err != nil:
				t.Fatalf("size %d seed %d: Put(len %d) at head %d tail %d: %v, want success", size, seed, n, head, tail, err)
			case !fits && !errors.Is(err, ErrFull):
				t.Fatalf("size %d seed %d: Put(len %d) at head %d tail %d = (%d, %v), want ErrFull", size, seed, n, head, tail, pos, err)
			case !fits:
				fulls++
				if r.Used() != usedBefore || pos != 0 {
					t.Fatalf("size %d seed %d: refused Put changed Used %d -> %d (pos %d)", size, seed, usedBefore, r.Used(), pos)
				}
				drain()
				continue
			}
			if pad > 0 {
				pads++
			}
			head += pad + need
			if pos != head {
				t.Fatalf("size %d seed %d: Put(len %d) = pos %d, want %d (pad %d)", size, seed, n, pos, head, pad)
			}
			if r.Used() != int(head-tail) {
				t.Fatalf("size %d seed %d: Used() = %d, want %d", size, seed, r.Used(), head-tail)
			}
			pending = append(pending, rec{id, body})
			if rnd.IntN(150) == 0 {
				drain()
			}
		}
		drain()
		if r.Used() != 0 {
			t.Errorf("size %d seed %d: Used() = %d at the end, want 0", size, seed, r.Used())
		}
		if pads < laps/2 || fulls < laps/2 {
			t.Errorf("size %d seed %d: only %d pads and %d fulls (%d drains) in %d laps: test does not exercise wrap-around", size, seed, pads, fulls, drains, laps)
		}
		if got := r.full.Load(); got != uint64(fulls) {
			t.Errorf("size %d seed %d: full counter %d, want %d", size, seed, got, fulls)
		}
	}
	f(4096, 40, 200, 1)
	f(4096, 300, 200, 2)
	f(4096, 2032, 200, 3)
	f(8192, 1000, 100, 4)
	f(1<<16, 5000, 20, 5)
}

// TestRingFull fills a ring with records of one size, checks that the next
// Put fails with ErrFull without storing anything, and that draining frees
// the space again.
func TestRingFull(t *testing.T) {
	f := func(bodyLen int) {
		t.Helper()
		r := NewRing(4096)
		need := int(recordBytes(bodyLen))
		stored := 0
		var id uint64
		for {
			id++
			if _, err := r.Put(id, fillBody(id, bodyLen)); err != nil {
				if !errors.Is(err, ErrFull) {
					t.Fatalf("len %d: Put: %v, want ErrFull", bodyLen, err)
				}
				break
			}
			stored++
		}
		if want := 4096 / need; stored != want {
			t.Errorf("len %d: stored %d records before ErrFull, want %d", bodyLen, stored, want)
		}
		used := r.Used()
		if used != stored*need {
			t.Errorf("len %d: Used() = %d, want %d", bodyLen, used, stored*need)
		}
		for range 3 {
			if pos, err := r.Put(999999, fillBody(999999, bodyLen)); !errors.Is(err, ErrFull) || pos != 0 {
				t.Errorf("len %d: Put into full ring = (%d, %v), want (0, ErrFull)", bodyLen, pos, err)
			}
		}
		if r.Used() != used {
			t.Errorf("len %d: Used() = %d after refused Puts, want %d", bodyLen, r.Used(), used)
		}
		if got := r.full.Load(); got != 4 {
			t.Errorf("len %d: full counter = %d, want 4", bodyLen, got)
		}
		got, n, _ := drainAll(r)
		if n != stored {
			t.Fatalf("len %d: drained %d, want %d", bodyLen, n, stored)
		}
		for i, g := range got {
			if g.id != uint64(i+1) || !bytes.Equal(g.body, fillBody(g.id, bodyLen)) {
				t.Errorf("len %d: record %d = id %d, want %d with its body", bodyLen, i, g.id, i+1)
			}
		}
		// The space is free again: the same amount fits once more.
		for i := range stored {
			if _, err := r.Put(uint64(i), fillBody(uint64(i), bodyLen)); err != nil {
				t.Fatalf("len %d: Put %d after Drain: %v", bodyLen, i, err)
			}
		}
		if _, err := r.Put(0, fillBody(0, bodyLen)); !errors.Is(err, ErrFull) {
			t.Errorf("len %d: Put after refilling: %v, want ErrFull", bodyLen, err)
		}
	}
	f(0)
	f(1)
	f(8)
	f(40)
	f(100)
	f(1000)
	f(2032)
}

// TestRingPartialFree: draining while the ring is full lets exactly as much
// in as was freed.
func TestRingPartialFree(t *testing.T) {
	r := NewRing(4096)
	for i := range 64 { // 64 * 64 bytes fill the ring
		if _, err := r.Put(uint64(i), make([]byte, 48)); err != nil {
			t.Fatalf("Put %d: %v", i, err)
		}
	}
	if _, err := r.Put(64, nil); !errors.Is(err, ErrFull) {
		t.Fatalf("Put into a full ring: %v, want ErrFull", err)
	}
	if _, n, _ := drainAll(r); n != 64 {
		t.Fatalf("drained %d, want 64", n)
	}
	// 4096 bytes free: one record of 2048 and 32 of 64 fit, then nothing.
	if _, err := r.Put(100, make([]byte, 2032)); err != nil {
		t.Fatalf("Put 2048-byte record: %v", err)
	}
	for i := range 32 {
		if _, err := r.Put(uint64(200+i), make([]byte, 48)); err != nil {
			t.Fatalf("Put %d: %v", i, err)
		}
	}
	if _, err := r.Put(300, nil); !errors.Is(err, ErrFull) {
		t.Fatalf("Put into a full ring: %v, want ErrFull", err)
	}
	if r.Used() != 4096 {
		t.Errorf("Used() = %d, want 4096", r.Used())
	}
}

func TestRingTooLarge(t *testing.T) {
	f := func(size, bodyLen int, wantErr error) {
		t.Helper()
		r := NewRing(size)
		_, err := r.Put(1, make([]byte, bodyLen))
		if !errors.Is(err, wantErr) {
			t.Errorf("ring %d, body %d: Put: %v, want %v", size, bodyLen, err, wantErr)
		}
		wantUsed := 0
		if wantErr == nil {
			wantUsed = int(recordBytes(bodyLen))
		}
		if r.Used() != wantUsed {
			t.Errorf("ring %d, body %d: Used() = %d, want %d", size, bodyLen, r.Used(), wantUsed)
		}
		got, _, _ := drainAll(r)
		if wantErr == nil && (len(got) != 1 || len(got[0].body) != bodyLen) {
			t.Errorf("ring %d, body %d: drained %d records, want the one put", size, bodyLen, len(got))
		}
		if wantErr != nil && len(got) != 0 {
			t.Errorf("ring %d, body %d: drained %d records, want none", size, bodyLen, len(got))
		}
	}
	f(4096, 2032, nil) // exactly half the ring
	f(4096, 2033, ErrFull)
	f(4096, 2040, ErrFull)
	f(4096, 4096, ErrFull)
	f(4096, 10000, ErrFull)
	f(1<<16, 1<<15-16, nil)
	f(1<<16, 1<<15-15, ErrFull)
}

func TestRingUsed(t *testing.T) {
	r := NewRing(4096)
	check := func(want int) {
		t.Helper()
		if got := r.Used(); got != want {
			t.Errorf("Used() = %d, want %d", got, want)
		}
	}
	check(0)
	r.Put(1, nil)
	check(16)
	r.Put(2, make([]byte, 1))
	check(40)
	r.Put(3, make([]byte, 2000)) // 2016 bytes
	check(2056)
	drainAll(r)
	check(0)
	// head at 2056: 2032 + 16 = 2048 bytes do not fit before the end, so
	// the record is preceded by 2040 bytes of padding.
	pos, err := r.Put(4, make([]byte, 2032))
	if err != nil {
		t.Fatal(err)
	}
	if pos != 4096+2048 {
		t.Errorf("Put after padding = pos %d, want %d", pos, 4096+2048)
	}
	check(2040 + 2048)
	got, n, dpos := drainAll(r)
	if n != 1 || len(got) != 1 || got[0].id != 4 || dpos != pos {
		t.Errorf("Drain = %d records (n %d, pos %d), want record 4 at pos %d; padding must not be passed to fn", len(got), n, dpos, pos)
	}
	check(0)
}

func TestRingFlushedAndIsFlushed(t *testing.T) {
	r := NewRing(4096)
	f := func(pos uint64, want bool) {
		t.Helper()
		if got := r.IsFlushed(pos); got != want {
			t.Errorf("IsFlushed(%d) = %v, want %v (flushed %d)", pos, got, want, r.flushed.Load())
		}
	}
	f(0, true)
	f(1, false)
	r.Flushed(100)
	f(0, true)
	f(99, true)
	f(100, true)
	f(101, false)
	r.Flushed(50) // never goes backwards
	f(100, true)
	r.Flushed(1 << 40)
	f(1<<40, true)
	f(1<<40+1, false)
}

func TestRingWaitAlreadyFlushed(t *testing.T) {
	f := func(flushed, pos uint64) {
		t.Helper()
		r := NewRing(4096)
		if flushed > 0 {
			r.Flushed(flushed)
		}
		if !done(waitAsync(r, pos), waitLong) {
			t.Errorf("Wait(%d) with flushed %d did not return", pos, flushed)
		}
	}
	f(0, 0)
	f(16, 0)
	f(16, 16)
	f(16, 8)
	f(1<<30, 12345)
}

func TestRingWaitBlocksUntilFlushed(t *testing.T) {
	r := NewRing(4096)
	pos, err := r.Put(1, []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	w := waitAsync(r, pos)
	if done(w, waitShort) {
		t.Fatal("Wait returned before anything was flushed")
	}
	drainAll(r)
	if done(w, waitShort) {
		t.Fatal("Wait returned after Drain but before Flushed")
	}
	r.Flushed(pos - 1)
	if done(w, waitShort) {
		t.Fatal("Wait returned after Flushed(pos-1)")
	}
	r.Flushed(pos)
	if !done(w, waitLong) {
		t.Fatal("Wait did not return after Flushed(pos)")
	}
}

// TestRingWaitManyWaiters: one Flushed releases every waiter at or below its
// position together, and only those.
func TestRingWaitManyWaiters(t *testing.T) {
	r := NewRing(4096)
	const n = 100
	var released [n + 1]atomic.Bool
	var wg sync.WaitGroup
	for p := 1; p <= n; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.Wait(uint64(p))
			released[p].Store(true)
		}()
	}
	count := func() (low, high int) {
		for p := 1; p <= n; p++ {
			if released[p].Load() {
				if p <= n/2 {
					low++
				} else {
					high++
				}
			}
		}
		return low, high
	}
	time.Sleep(waitShort)
	if low, high := count(); low+high != 0 {
		t.Fatalf("%d waiters returned before any Flushed", low+high)
	}
	r.Flushed(n / 2)
	deadline := time.Now().Add(waitLong)
	for {
		low, high := count()
		if high != 0 {
			t.Fatalf("%d waiters above %d returned after Flushed(%d)", high, n/2, n/2)
		}
		if low == n/2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d waiters released by Flushed(%d)", low, n/2, n/2)
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(waitShort)
	if _, high := count(); high != 0 {
		t.Fatalf("%d waiters above %d returned after Flushed(%d)", high, n/2, n/2)
	}
	r.Flushed(n)
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	if !done(ch, waitLong) {
		low, high := count()
		t.Fatalf("only %d of %d waiters released by Flushed(%d)", low+high, n, n)
	}
}

// TestRingWaitRacesFlushed: waiters that start while the consumer keeps
// flushing must all return (no lost wake-up between Wait's check and its
// sleep).
func TestRingWaitRacesFlushed(t *testing.T) {
	r := NewRing(4096)
	const last = 20000
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := uint64(g + 1); p <= last; p += 97 {
				r.Wait(p)
				if !r.IsFlushed(p) {
					t.Errorf("Wait(%d) returned but IsFlushed is false", p)
					return
				}
			}
		}()
	}
	go func() {
		for p := uint64(1); p <= last; p++ {
			r.Flushed(p)
			if p%64 == 0 {
				runtime.Gosched()
			}
		}
	}()
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	if !done(ch, waitLong) {
		t.Fatal("waiters still blocked after everything was flushed")
	}
}

// TestRingDrainStopsAtUncommitted reserves space the way Put does (CAS on
// head) without committing, as a producer preempted in the middle of Put
// would: Drain must stop there, and deliver the later, committed record only
// after the earlier one is committed.
func TestRingDrainStopsAtUncommitted(t *testing.T) {
	r := NewRing(4096)
	if _, err := r.Put(1, []byte("first")); err != nil {
		t.Fatal(err)
	}
	h := r.head.Load()
	need := recordBytes(3)
	r.head.Store(h + need) // reserved, not committed
	pos3, err := r.Put(3, []byte("third"))
	if err != nil {
		t.Fatal(err)
	}
	got, n, pos := drainAll(r)
	if n != 1 || len(got) != 1 || got[0].id != 1 || pos != h {
		t.Fatalf("Drain = %v (n %d, pos %d), want only record 1 and pos %d", got, n, pos, h)
	}
	if r.Used() != int(pos3-h) {
		t.Errorf("Used() = %d, want %d", r.Used(), pos3-h)
	}
	// Commit the reserved record exactly as Put does.
	w := (h & r.mask) / 8
	r.words[w+1] = 2
	copy(r.buf[(h&r.mask)+hdrBytes:], "two")
	atomic.StoreUint64(&r.words[w], 3|flagCommit)
	got, n, pos = drainAll(r)
	if n != 2 || len(got) != 2 || got[0].id != 2 || string(got[0].body) != "two" || got[1].id != 3 || string(got[1].body) != "third" || pos != pos3 {
		t.Fatalf("Drain = %v (n %d, pos %d), want records 2 and 3 and pos %d", got, n, pos, pos3)
	}
}

// TestRingDrainIgnoresStaleBytesAfterWrap: after a lap, the buffer still
// holds the bytes of drained records. A producer that has reserved space but
// not yet written its header (which happens whenever the consumer catches up
// with a producer mid-Put) must not make Drain read those stale bytes as a
// record. The test fills a lap with records of body, then at every 8-byte
// offset of the next lap reserves a record like Put does, before committing
// it, and checks that Drain sees nothing.
func TestRingDrainIgnoresStaleBytesAfterWrap(t *testing.T) {
	f := func(name string, body []byte) {
		t.Helper()
		r := NewRing(4096)
		size := uint64(r.Size())
		// Two sweeps, the second shifted by 8 bytes, visit every offset.
		for shift := range 2 {
			for start := r.head.Load(); r.head.Load() < start+2*size; {
				if _, err := r.Put(7, body); err != nil {
					drainAll(r)
				}
			}
			drainAll(r)
			if shift == 1 {
				r.Put(8, []byte{1})
				drainAll(r)
			}
			for step := 0; step < int(size/16); step++ {
				h := r.head.Load()
				if (h&r.mask)+16 > size {
					r.Put(8, nil) // pads to the next lap
					drainAll(r)
					continue
				}
				r.head.Store(h + 16) // reserved by a producer that has not written yet
				stale := atomic.LoadUint64(&r.words[(h&r.mask)/8])
				got, n, pos, err := safeDrain(r)
				if err != nil || n != 0 || len(got) != 0 || pos != h {
					t.Errorf("%s: Drain with an uncommitted record at offset %d = (%d records, n %d, pos %d, err %v), want nothing at pos %d: stale bytes %#016x read as a header",
						name, h&r.mask, len(got), n, pos, err, h, stale)
					return
				}
				w := (h & r.mask) / 8
				r.words[w+1] = 9
				atomic.StoreUint64(&r.words[w], flagCommit)
				got, n, pos = drainAll(r)
				if n != 1 || got[0].id != 9 || len(got[0].body) != 0 || pos != h+16 {
					t.Fatalf("%s: Drain after commit = %v (n %d, pos %d), want record 9 at pos %d", name, got, n, pos, h+16)
				}
			}
		}
	}
	f("zeros", make([]byte, 100))
	f("json", []byte(`{"user":"alice","event":"click","ts":1700000000,"tags":["a","b"]}`))
	f("0xff", bytes.Repeat([]byte{0xff}, 200))
	f("fake header", binary.LittleEndian.AppendUint64(nil, 8|flagCommit))
}

// testBody is the body producer p sends as its record seq: p and seq, then a
// filler of varying length (up to maxFill) that depends on both.
func testBody(buf []byte, p, seq, maxFill int) []byte {
	buf = binary.LittleEndian.AppendUint32(buf[:0], uint32(p))
	buf = binary.LittleEndian.AppendUint32(buf, uint32(seq))
	n := (seq*7 + p*3) % (maxFill + 1)
	for i := range n {
		buf = append(buf, byte(p*31+seq+i))
	}
	return buf
}

// TestRingConcurrentProducers: many producers put records while one consumer
// drains. Every record arrives exactly once with its exact body, and one
// producer's records arrive in the order it put them.
func TestRingConcurrentProducers(t *testing.T) {
	f := func(ringSize, producers, perProducer, maxFill int) {
		t.Helper()
		r := NewRing(ringSize)
		var stop atomic.Bool
		var wg sync.WaitGroup
		for p := range producers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 0, 8+maxFill)
				for seq := 0; seq < perProducer && !stop.Load(); {
					_, err := r.Put(uint64(p)<<32|uint64(seq), testBody(buf, p, seq, maxFill))
					switch {
					case err == nil:
						seq++
					case errors.Is(err, ErrFull):
						runtime.Gosched()
					default:
						t.Errorf("producer %d: Put: %v", p, err)
						return
					}
				}
			}()
		}
		next := make([]int, producers)
		received, total := 0, producers*perProducer
		var want []byte
		consume := func() (err error) {
			defer func() {
				if v := recover(); v != nil {
					err = fmt.Errorf("Drain panicked: %v", v)
				}
			}()
			_, pos := r.Drain(func(id uint64, body []byte) {
				if err != nil {
					return
				}
				p, seq := int(id>>32), int(id&(1<<32-1))
				if p >= producers || seq != next[p] {
					err = fmt.Errorf("got record (producer %d, seq %d) after %d records, want a known producer's next seq (%v)", p, seq, received, next[min(p, producers-1)])
					return
				}
				want = testBody(want, p, seq, maxFill)
				if !bytes.Equal(body, want) {
					err = fmt.Errorf("record (producer %d, seq %d): body %x, want %x", p, seq, body, want)
					return
				}
				next[p]++
				received++
			})
			if h := r.head.Load(); err == nil && pos > h {
				err = fmt.Errorf("Drain returned pos %d beyond head %d after %d records", pos, h, received)
			}
			return err
		}
		deadline := time.Now().Add(waitLong)
		for received < total {
			if err := consume(); err != nil {
				t.Errorf("ring %d, %d producers: %v", ringSize, producers, err)
				break
			}
			r.rewind()
			if time.Now().After(deadline) {
				t.Errorf("ring %d, %d producers: timed out with %d of %d records received (%v)", ringSize, producers, received, total, next)
				break
			}
			runtime.Gosched()
		}
		stop.Store(true)
		wg.Wait()
		if !t.Failed() {
			if r.Used() != 0 {
				t.Errorf("ring %d: Used() = %d after all records were drained", ringSize, r.Used())
			}
			if got, _, _ := drainAll(r); len(got) != 0 {
				t.Errorf("ring %d: %d records after all were received", ringSize, len(got))
			}
		}
	}
	f(1<<16, 8, 20000, 40)
	f(4096, 8, 5000, 200)
	f(4096, 3, 10000, 0)
}

// TestRingConcurrentWait: producers put and wait for their record to be
// flushed; when Wait returns, the consumer has already seen the record.
func TestRingConcurrentWait(t *testing.T) {
	r := NewRing(4096)
	const producers, perProducer = 8, 2000
	var seen sync.Map
	var stop atomic.Bool
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := 0; seq < perProducer && !stop.Load(); {
				id := uint64(p)<<32 | uint64(seq)
				// Zero bodies and ids below 2^32 can never look like a
				// committed header, whatever the ring's stale contents.
				pos, err := r.Put(uint64(p*perProducer+seq), make([]byte, seq%24))
				if errors.Is(err, ErrFull) {
					runtime.Gosched()
					continue
				}
				if err != nil {
					t.Errorf("Put: %v", err)
					return
				}
				r.Wait(pos)
				if _, ok := seen.Load(uint64(p*perProducer + seq)); !ok {
					t.Errorf("Wait(%d) for record %x returned before the consumer saw it", pos, id)
				}
				seq++
			}
		}()
	}
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	deadline := time.Now().Add(waitLong)
	for !done(ch, 0) {
		_, pos := r.Drain(func(id uint64, _ []byte) { seen.Store(id, true) })
		r.Flushed(pos)
		r.rewind()
		if time.Now().After(deadline) {
			stop.Store(true)
			t.Fatal("producers still waiting")
		}
		runtime.Gosched()
	}
}

// TestRingNoSpuriousFull: each producer has at most one record in the ring
// at a time, so the ring (4 KiB) is never more than a quarter full and Put
// must never return ErrFull. Put reads head and then tail; if the consumer
// drains past the head a producer read before the producer reads tail,
// head+need-tail wraps around and Put wrongly reports ErrFull. This needs a
// producer to be preempted between the two loads, so the test can only catch
// it now and then.
func TestRingNoSpuriousFull(t *testing.T) {
	r := NewRing(4096)
	const producers, perProducer = 8, 3000
	var fulls atomic.Int64
	ch := waitingProducers(r, producers, perProducer, &fulls, func(p, seq int) (uint64, []byte) {
		return uint64(p), make([]byte, (p+seq)%41)
	})
	deadline := time.Now().Add(waitLong)
	for !done(ch, 0) {
		if u := r.Used(); u > r.Size()/4 {
			t.Errorf("Used() = %d with at most %d records of at most 112 bytes", u, producers)
		}
		_, pos := r.Drain(func(uint64, []byte) {})
		r.Flushed(pos)
		r.rewind()
		if time.Now().After(deadline) {
			t.Fatal("producers still waiting")
		}
		runtime.Gosched()
	}
	if n := fulls.Load(); n != 0 {
		t.Errorf("Put returned ErrFull %d times although the ring was never more than a quarter full", n)
	}
}

// waitingProducers starts producers goroutines that each put perProducer
// records, record(p, seq) for producer p, and wait for each record's flush
// before the next; a Put refused is counted in fulls and tried again. The
// channel returned is closed when all of them are done.
func waitingProducers(r *Ring, producers, perProducer int, fulls *atomic.Int64, record func(p, seq int) (uint64, []byte)) <-chan struct{} {
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := 0; seq < perProducer; {
				pos, err := r.Put(record(p, seq))
				if err != nil {
					fulls.Add(1)
					runtime.Gosched()
					continue
				}
				r.Wait(pos)
				seq++
			}
		}()
	}
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	return ch
}

// TestRingOutcome: a waiter learns whether its record's batch failed from the
// failure history, and counts its record as failed whenever that history
// may have been overwritten since it read FailSeq.
func TestRingOutcome(t *testing.T) {
	const pos = 100 // the waiter's record ends here; its batch is (64, 100]
	tests := []struct {
		name string
		// setup records failures after the waiter read FailSeq 0 and
		// flushes the ring past pos.
		setup func(r *Ring)
		want  error
	}{
		{"batch flushed, no failures", func(r *Ring) { r.Flushed(pos) }, nil},
		{"own batch failed", func(r *Ring) { r.Fail(64, pos) }, ErrFlushFailed},
		{"a later batch failed", func(r *Ring) { r.Flushed(pos); r.Fail(pos, 200) }, nil},
		{"an earlier batch failed", func(r *Ring) { r.Fail(0, 64); r.Flushed(pos) }, nil},
		{"own batch failed, history full", func(r *Ring) {
			r.Fail(64, pos)
			for k := uint64(1); k < failHistory; k++ {
				r.Fail(pos+k-1, pos+k)
			}
		}, ErrFlushFailed},
		{"own batch failed, history overwritten", func(r *Ring) {
			r.Fail(64, pos)
			for k := uint64(1); k <= failHistory; k++ {
				r.Fail(pos+k-1, pos+k)
			}
		}, ErrFlushFailed},
		{
			// The consumer is in the middle of recording failure number
			// failHistory: it has overwritten the slot of failure 0 (the
			// waiter's) but not yet counted it. The waiter must not
			// mistake the overwritten slot for "not failed".
			"own batch failed, its slot being overwritten", func(r *Ring) {
				r.Fail(64, pos)
				for k := uint64(1); k < failHistory; k++ {
					r.Fail(pos+k-1, pos+k)
				}
				e := &r.failLog[failHistory%failHistory]
				e.start.Store(pos + failHistory - 1)
				e.end.Store(pos + failHistory)
			}, ErrFlushFailed,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewRing(4096)
			seq := r.FailSeq()
			tt.setup(r)
			if got := r.Outcome(pos, seq); !errors.Is(got, tt.want) || (tt.want == nil && got != nil) {
				t.Fatalf("Outcome = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestRingRewind: once drained past its window (a quarter of a 4 KiB ring),
// an empty ring starts again at offset 0; a ring with a record in it, or
// not yet past its window, stays where it is; records keep their order and
// bodies across rewinds.
func TestRingRewind(t *testing.T) {
	r := NewRing(4096)
	if r.window != 1024 {
		t.Fatalf("window of a 4 KiB ring = %d, want 1024", r.window)
	}
	if w := NewRing(64 << 20).window; w != hotWindow {
		t.Fatalf("window of a 64 MiB ring = %d, want %d", w, hotWindow)
	}
	put := func(id uint64, n int) uint64 {
		t.Helper()
		pos, err := r.Put(id, fillBody(id, n))
		if err != nil {
			t.Fatalf("Put(%d): %v", id, err)
		}
		return pos
	}
	check := func(ids ...uint64) {
		t.Helper()
		got, _, _ := drainAll(r)
		if len(got) != len(ids) {
			t.Fatalf("drained %d records, want %d", len(got), len(ids))
		}
		for i, g := range got {
			if g.id != ids[i] || !bytes.Equal(g.body, fillBody(ids[i], 48)) {
				t.Fatalf("record %d: id %d body %x, want id %d body %x", i, g.id, g.body, ids[i], fillBody(ids[i], 48))
			}
		}
	}
	// 15 records of 48 bytes take 64 bytes each: 960, below the window.
	for id := range uint64(15) {
		put(id, 48)
	}
	check(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14)
	r.rewind()
	if tail := r.tail.Load(); tail != 960 {
		t.Fatalf("rewind below the window moved tail to %d, want 960", tail)
	}
	put(15, 48) // 1024: at the window, but not drained
	r.rewind()
	if tail, head := r.tail.Load(), r.head.Load(); tail != 960 || head != 1024 {
		t.Fatalf("rewind of a ring holding a record: tail %d head %d, want 960 and 1024", tail, head)
	}
	check(15)
	r.Flushed(1024)
	r.rewind()
	if tail, head := r.tail.Load(), r.head.Load(); tail != 4096 || head != 4096 {
		t.Fatalf("rewind of an empty ring at 1024: tail %d head %d, want both 4096", tail, head)
	}
	// The skipped space holds no record: it counts as flushed, and a
	// waiter on the new head returns at once.
	if !r.IsFlushed(4096) {
		t.Fatalf("after the rewind, flushed is %d, want 4096", r.flushed.Load())
	}
	if !done(waitAsync(r, 4096), waitLong) {
		t.Fatal("Wait on the rewound head did not return")
	}
	// The next record starts at offset 0 and reads back.
	if pos := put(16, 48); pos != 4096+64 {
		t.Fatalf("first record after the rewind ends at %d, want %d", pos, 4096+64)
	}
	check(16)
	if r.Used() != 0 {
		t.Fatalf("Used() = %d after draining everything", r.Used())
	}
}

// TestRingRewindHalfDone: a producer that reads the head a rewind has moved
// before the rewind moves tail too must not report the ring full: it waits
// for the rewind and then stores its record.
func TestRingRewindHalfDone(t *testing.T) {
	r := NewRing(4096)
	for id := range uint64(16) {
		if _, err := r.Put(id, make([]byte, 48)); err != nil {
			t.Fatal(err)
		}
	}
	drainAll(r)
	// In the middle of the rewind, the rest of the buffer (3072 bytes) is
	// reserved and tail not yet moved. A record of 1500 bytes does not fit
	// beside that reservation, but does once it is released.
	type result struct {
		pos uint64
		err error
	}
	ch := make(chan result, 1)
	rewindHook = func() {
		if h := r.head.Load(); h != 1024+3072 {
			t.Errorf("head %d in the middle of the rewind, want %d", h, 1024+3072)
		}
		go func() {
			pos, err := r.Put(99, fillBody(99, 1500))
			ch <- result{pos, err}
		}()
		select {
		case res := <-ch:
			t.Errorf("Put during a rewind returned (%d, %v) before the rewind finished", res.pos, res.err)
		case <-time.After(waitShort):
		}
	}
	defer func() { rewindHook = nil }()
	r.rewind()
	if t.Failed() {
		t.FailNow()
	}
	select {
	case res := <-ch:
		if res.err != nil {
			t.Fatalf("Put after the rewind: %v", res.err)
		}
		if want := 4096 + recordBytes(1500); res.pos != want {
			t.Fatalf("Put after the rewind ends at %d, want %d", res.pos, want)
		}
	case <-time.After(waitLong):
		t.Fatal("Put still waiting after the rewind finished")
	}
	got, _, _ := drainAll(r)
	if len(got) != 1 || got[0].id != 99 || !bytes.Equal(got[0].body, fillBody(99, 1500)) {
		t.Fatalf("drained %v, want record 99", got)
	}
}

// TestRingRewindStress: two producers put into a 4 KiB ring, each waiting
// for its record's flush before the next: one with bodies of up to 1,990
// bytes, the other up to 24. A record and the padding in front of it take
// less than twice the record, so at most 4,094 bytes are ever in use and
// Put must never report the ring full. The consumer drains, checks order
// and bodies, and rewinds; a hook yields in the middle of every rewind, so
// producers see its half-done state, where a record larger than what lies
// below the rewind point does not fit beside the skipped space.
func TestRingRewindStress(t *testing.T) {
	f := func(procs int) {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
		var rewinds atomic.Int64
		rewindHook = func() { rewinds.Add(1); runtime.Gosched() }
		defer func() { rewindHook = nil }()
		r := NewRing(4096)
		const producers, perProducer = 2, 3000
		maxBody := [producers]int{1990, 24}
		rngs := [producers]*rand.Rand{rand.New(rand.NewPCG(0, 1)), rand.New(rand.NewPCG(1, 1))}
		var fulls atomic.Int64
		ch := waitingProducers(r, producers, perProducer, &fulls, func(p, seq int) (uint64, []byte) {
			id := uint64(p)<<32 | uint64(seq)
			return id, fillBody(id, rngs[p].IntN(maxBody[p]+1))
		})
		next := make([]int, producers)
		var bad error
		deadline := time.Now().Add(waitLong)
		for !done(ch, 0) {
			_, pos := r.Drain(func(id uint64, body []byte) {
				p, seq := int(id>>32), int(id&(1<<32-1))
				switch {
				case bad != nil:
				case p >= producers || seq != next[p]:
					bad = fmt.Errorf("got record (producer %d, seq %d), want a known producer's next", p, seq)
				case len(body) > maxBody[p] || !bytes.Equal(body, fillBody(id, len(body))):
					bad = fmt.Errorf("record (producer %d, seq %d): wrong body of %d bytes", p, seq, len(body))
				default:
					next[p]++
				}
			})
			r.Flushed(pos)
			r.rewind()
			if bad != nil || time.Now().After(deadline) {
				break
			}
			runtime.Gosched()
		}
		if bad != nil {
			t.Fatalf("GOMAXPROCS %d: %v", procs, bad)
		}
		if !done(ch, waitLong) {
			t.Fatalf("GOMAXPROCS %d: producers still waiting (%v of %d each)", procs, next, perProducer)
		}
		if n := fulls.Load(); n != 0 {
			t.Errorf("GOMAXPROCS %d: Put returned ErrFull %d times, with at most 4,094 of 4,096 bytes in use", procs, n)
		}
		if rewinds.Load() == 0 {
			t.Errorf("GOMAXPROCS %d: the ring never rewound", procs)
		}
		t.Logf("GOMAXPROCS %d: %d rewinds", procs, rewinds.Load())
	}
	f(1)
	f(2)
}
