package server

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Timeouts without moving deadlines. With ReadTimeout, WriteTimeout and
// IdleTimeout set, fasthttp reads the clock three times per request and
// moves the connection's read deadline twice and its write deadline once,
// each move re-arming a runtime timer; even moved lazily (only when they
// must come earlier), that cost busyapi 3-7% of its plain and 12-15% of its
// pipelined throughput here (wrk, 64 connections, --ack memory, fasthttp
// with and without its timeouts). So fasthttp runs without timeouts, and
// busyapi enforces them itself:
//
//   - every accepted connection records, in one atomic word, the time by
//     which the Read or Write it is blocked in must end (0 while it is not
//     blocked), taken from a clock the reaper advances;
//   - a reaper goroutine looks at every connection every tick and cuts the
//     ones past that time by moving the socket's read or write deadline
//     into the past, so the blocked call returns a timeout error, as with
//     fasthttp's own timeouts (and gets the same 408 or close).
//
// What the time is: from a connection's accept to its first request's first
// byte, and from a request's first byte until it is read, ReadTimeout; from
// the end of an answer to the next request's first byte, IdleTimeout (the
// phases come from fasthttp's ConnState hook, so writes that are not
// answers, such as 100 Continue or TLS handshake and key-update messages,
// restart nothing); the writes of a phase must end within WriteTimeout of
// its first. Timeouts fire between the configured time and two ticks later
// (tick = the shortest timeout / 8, between 5 ms and 250 ms); never early.
type reaper struct {
	read, write, idle, tick int64 // nanoseconds
	now                     atomic.Int64
	shards                  [reaperShards]connShard
	next                    atomic.Uint32
}

const reaperShards = 16

type connShard struct {
	mu    sync.Mutex
	conns map[*lingerConn]struct{}
}

func newReaper(read, write, idle time.Duration) *reaper {
	r := &reaper{read: int64(read), write: int64(write), idle: int64(idle)}
	r.tick = min(read, write, idle).Nanoseconds() / 8
	r.tick = max(int64(5*time.Millisecond), min(r.tick, int64(250*time.Millisecond)))
	r.now.Store(time.Now().UnixNano())
	for i := range r.shards {
		r.shards[i].conns = make(map[*lingerConn]struct{})
	}
	return r
}

// add registers a new connection.
func (r *reaper) add(c *lingerConn) {
	c.reaper = r
	c.shard = uint8(r.next.Add(1) % reaperShards)
	c.start.Store(r.now.Load())
	sh := &r.shards[c.shard]
	sh.mu.Lock()
	sh.conns[c] = struct{}{}
	sh.mu.Unlock()
}

// remove forgets a closed connection.
func (r *reaper) remove(c *lingerConn) {
	sh := &r.shards[c.shard]
	sh.mu.Lock()
	delete(sh.conns, c)
	sh.mu.Unlock()
}

// run cuts overdue connections every tick until stop is closed.
func (r *reaper) run(stop <-chan struct{}) {
	t := time.NewTicker(time.Duration(r.tick))
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		r.sweep(time.Now().UnixNano())
	}
}

// sweep advances the clock to now and cuts every connection blocked past
// its time (by a tick: the time was taken from a clock up to a tick behind).
func (r *reaper) sweep(now int64) {
	r.now.Store(now)
	r.each(func(c *lingerConn) {
		due := c.due.Load()
		if due == 0 || now < due&^1+r.tick || !c.due.CompareAndSwap(due, 0) {
			return
		}
		if due&1 != 0 {
			_ = c.Conn.SetWriteDeadline(pastDeadline)
		} else {
			_ = c.Conn.SetReadDeadline(pastDeadline)
		}
	})
}

// pastDeadline is a deadline that has passed: set on a socket, it ends the
// blocked call with a timeout.
var pastDeadline = time.Unix(1, 0)

// each calls fn for every watched connection, under its shard's lock.
func (r *reaper) each(fn func(*lingerConn)) {
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		for c := range sh.conns {
			fn(c)
		}
		sh.mu.Unlock()
	}
}

// enter starts a phase: fasthttp's ConnState hook calls it when a request's
// first byte arrives (phaseActive) and when its answer is written
// (phaseIdle).
func (c *lingerConn) enter(phase uint32) {
	// A store is a locked instruction on amd64 and a load is not: skip
	// the stores that would not change a word. The clock moves once a
	// tick, so most requests start in the tick of the previous one.
	if now := c.reaper.now.Load(); c.start.Load() != now {
		c.start.Store(now)
	}
	if c.phase.Load() != phase {
		c.phase.Store(phase)
	}
}

// cutAll cuts every connection at once (a Shutdown that ran out of time).
func (r *reaper) cutAll() {
	r.each(func(c *lingerConn) { _ = c.Conn.SetDeadline(pastDeadline) })
}

// Read is net.Conn's, under the reaper's read and idle timeouts.
func (c *lingerConn) Read(p []byte) (int, error) {
	r := c.reaper
	limit := r.read
	if c.phase.Load()&^phaseWrote == phaseIdle {
		limit = r.idle
	}
	due := (c.start.Load() + limit) &^ 1 // even: a read
	c.due.Store(due)
	n, err := c.Conn.Read(p)
	c.due.Store(0)
	return n, err
}

// Write is net.Conn's, under the reaper's write timeout.
func (c *lingerConn) Write(p []byte) (int, error) {
	r := c.reaper
	if ph := c.phase.Load(); ph&phaseWrote == 0 {
		// The phase's first write: its write timeout runs from here.
		if now := r.now.Load(); c.wstart.Load() != now {
			c.wstart.Store(now)
		}
		c.phase.Store(ph | phaseWrote)
	}
	due := (c.wstart.Load() + r.write) | 1 // odd: a write
	c.due.Store(due)
	n, err := c.Conn.Write(p)
	c.due.Store(0)
	return n, err
}

var _ net.Conn = (*lingerConn)(nil)
