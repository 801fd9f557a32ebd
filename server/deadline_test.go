package server

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// stuckConn is a net.Conn whose Read and Write block until the matching
// deadline is moved into the past, then fail as a socket would; after
// feed, one Read returns data instead.
type stuckConn struct {
	net.Conn // nil: only the methods below are used
	readCut  chan struct{}
	writeCut chan struct{}
	data     chan []byte
}

func newStuckConn() *stuckConn {
	return &stuckConn{readCut: make(chan struct{}), writeCut: make(chan struct{}), data: make(chan []byte, 1)}
}

func (c *stuckConn) Read(p []byte) (int, error) {
	select {
	case b := <-c.data:
		return copy(p, b), nil
	case <-c.readCut:
		return 0, os.ErrDeadlineExceeded
	}
}

func (c *stuckConn) Write(p []byte) (int, error) {
	<-c.writeCut
	return 0, os.ErrDeadlineExceeded
}

func (c *stuckConn) Close() error { return nil }

func (c *stuckConn) SetDeadline(t time.Time) error {
	_ = c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

func (c *stuckConn) SetReadDeadline(t time.Time) error {
	if t.Before(time.Now()) {
		close(c.readCut)
	}
	return nil
}

func (c *stuckConn) SetWriteDeadline(t time.Time) error {
	if t.Before(time.Now()) {
		close(c.writeCut)
	}
	return nil
}

// blocked waits until c is blocked in a Read or Write and returns its due
// time.
func blocked(t *testing.T, c *lingerConn) int64 {
	t.Helper()
	for range 1000 {
		if d := c.due.Load(); d != 0 {
			return d
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("the connection never blocked")
	return 0
}

// TestReaper drives the reaper's clock and the connection's phases by hand:
// each timeout (the first request's read, a write, a request's read after a
// write, the idle wait for the next request) cuts the blocked call a tick
// after its time and not before.
func TestReaper(t *testing.T) {
	r := newReaper(100*time.Millisecond, 200*time.Millisecond, 400*time.Millisecond)
	if r.tick != int64(12500*time.Microsecond) {
		t.Fatalf("tick %v, want the shortest timeout / 8", time.Duration(r.tick))
	}
	sc := newStuckConn()
	c := &lingerConn{Conn: sc}
	r.add(c)
	t0 := r.now.Load()
	errs := make(chan error, 1)

	// cutAt checks that the call blocked with due time want is left alone
	// until a tick after it, then cut with a timeout error.
	cutAt := func(what string, want int64) {
		t.Helper()
		want &^= 1 // the low bit tells reads from writes
		if got := blocked(t, c) &^ 1; got != want {
			t.Fatalf("%s: due %v after the start, want %v", what, time.Duration(got-t0), time.Duration(want-t0))
		}
		r.sweep(want + r.tick - 1)
		select {
		case err := <-errs:
			t.Fatalf("%s: cut early: %v", what, err)
		case <-time.After(20 * time.Millisecond):
		}
		r.sweep(want + r.tick)
		select {
		case err := <-errs:
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("%s: %v, want a timeout", what, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: not cut", what)
		}
	}

	// The first request must start within ReadTimeout.
	go func() { _, err := c.Read(make([]byte, 8)); errs <- err }()
	cutAt("first read", t0+r.read)

	// A request arrives (fasthttp reports it active at t1); a write during
	// it (100 Continue, say) starts the write timeout but leaves the read
	// timeout running from the request's first byte.
	sc.readCut, sc.data = make(chan struct{}), make(chan []byte, 1)
	t1 := t0 + int64(time.Second)
	r.now.Store(t1)
	c.enter(phaseActive)
	sc.data <- []byte("POST")
	if n, err := c.Read(make([]byte, 8)); n != 4 || err != nil {
		t.Fatalf("read %d, %v", n, err)
	}
	r.now.Store(t1 + int64(50*time.Millisecond))
	go func() { _, err := c.Write([]byte("HTTP/1.1 100 Continue")); errs <- err }()
	cutAt("write", t1+int64(50*time.Millisecond)+r.write)
	sc.readCut = make(chan struct{})
	go func() { _, err := c.Read(make([]byte, 8)); errs <- err }()
	cutAt("body read after a write", t1+r.read)

	// After the answer (idle at t2), the next read waits for a new request:
	// idle timeout from t2.
	sc.readCut = make(chan struct{})
	t2 := t0 + 2*int64(time.Second)
	r.now.Store(t2)
	c.enter(phaseIdle)
	go func() { _, err := c.Read(make([]byte, 8)); errs <- err }()
	cutAt("idle read", t2+r.idle)

	// A Shutdown out of time cuts every connection at once.
	sc.readCut = make(chan struct{})
	sc.writeCut = make(chan struct{})
	go func() { _, err := c.Read(make([]byte, 8)); errs <- err }()
	blocked(t, c)
	r.cutAll()
	select {
	case err := <-errs:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("cutAll: %v, want a timeout", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cutAll did not cut")
	}

	if c.Close() != nil || c.Close() == nil {
		t.Fatal("Close: want nil, then an error")
	}
	for i := range r.shards {
		if len(r.shards[i].conns) != 0 {
			t.Fatal("a closed connection is still watched")
		}
	}
}
