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
	// Written by the connection's goroutine (and by a TLS close_notify on
	// Close): what the next read waits for (connState) and when the request
	// and its answer began, unix nanoseconds on the reaper's clock.
	state         atomic.Uint32
	start, wstart atomic.Int64
}

// connState bits.
const (
	stateFirst    = 1 << iota // no request yet: the first gets ReadTimeout
	stateAwaiting             // the next read waits for a new request
	stateWriting              // an answer is being written
)

func lingerOnClose(c net.Conn) {
	if tc, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = tc.NetConn() // *tls.Conn over our *lingerConn
	}
	if lc, ok := c.(*lingerConn); ok {
		lc.linger.Store(true)
	}
}

type closeWriter interface{ CloseWrite() error }

func (c *lingerConn) Close() error {
	if c.closed.Swap(true) {
		return net.ErrClosed
	}
	if c.reaper != nil {
		c.reaper.remove(c)
	}
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
