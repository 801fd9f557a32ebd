package server

import (
	"io"
	"net"
	"sync/atomic"
	"time"
)

// Lingering close. When the server refuses a request before reading its body
// (413 on Content-Length, say), the client is still sending. Closing a TCP
// socket with unread data makes the kernel send RST, and the client may then
// lose our answer from its receive buffer and see only "connection reset".
// So for connections closed after an error, shut down our write side first,
// and read and discard what the client still sends for a short while before
// closing, as Apache's and nginx's lingering_close do. Discarding up to
// lingerBytes lets a client that writes its whole body before reading (curl
// does) finish writing and then read the answer; measured: a 16 MiB body
// against a 16 KiB limit gets "connection reset by peer" on write without it.
const (
	lingerTimeout = 5 * time.Second
	lingerBytes   = 64 << 20
)

type lingerListener struct {
	net.Listener
	reaper *reaper
}

func (l lingerListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	lc := &lingerConn{Conn: c}
	l.reaper.add(lc)
	return lc, nil
}

// lingerConn is every accepted connection: lingering close after errors
// (this file) and the reaper's timeouts (deadline.go).
type lingerConn struct {
	net.Conn
	linger atomic.Bool
	closed atomic.Bool

	// The reaper's: the time the blocked Read (even) or Write (odd) must
	// end by, unix nanoseconds, 0 when not blocked.
	due    atomic.Int64
	reaper *reaper
	shard  uint8
	// The connection's phase (set by fasthttp's ConnState hook: a request
	// is active from its first byte until its answer is written, then the
	// connection is idle), when the phase began, and when its first write
	// began; unix nanoseconds on the reaper's clock.
	phase         atomic.Uint32
	start, wstart atomic.Int64
}

// Phases, and a bit set once the phase has written.
const (
	phaseActive = iota // from accept, or a request's first byte: ReadTimeout
	phaseIdle          // waiting for the next request: IdleTimeout
	phaseWrote  = 4
)

// lingerConnOf returns the *lingerConn under c (also under TLS), or nil.
func lingerConnOf(c net.Conn) *lingerConn {
	if lc, ok := c.(*lingerConn); ok {
		return lc // the usual case, and cheaper to test than an interface
	}
	if tc, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = tc.NetConn() // *tls.Conn over our *lingerConn
	}
	lc, _ := c.(*lingerConn)
	return lc
}

func lingerOnClose(c net.Conn) {
	if lc := lingerConnOf(c); lc != nil {
		lc.linger.Store(true)
	}
}

type closeWriter interface{ CloseWrite() error }

func (c *lingerConn) Close() error {
	if c.closed.Swap(true) {
		return net.ErrClosed
	}
	c.reaper.remove(c)
	if !c.linger.Load() {
		return c.Conn.Close()
	}
	cw, ok := c.Conn.(closeWriter)
	if !ok {
		return c.Conn.Close()
	}
	// Linger in the background: the worker goroutine is not held, and the
	// number of lingering connections is bounded by the connection limit.
	go func() {
		_ = cw.CloseWrite()
		_ = c.Conn.SetReadDeadline(time.Now().Add(lingerTimeout)) // the real one: no re-arming
		_, _ = io.CopyN(io.Discard, c.Conn, lingerBytes)
		_ = c.Conn.Close()
	}()
	return nil
}
