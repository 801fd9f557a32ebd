package server

import (
	"errors"
	"os"
	"sync/atomic"
	"time"
)

// Lazy deadlines. fasthttp moves a connection's read deadline twice and its
// write deadline once per request; each move re-arms a runtime timer, which
// cost an empty handler 11% of its plain and 42% of its pipelined throughput
// here (bench/compare.sh, empty against empty -timeouts). A lazyDeadline
// keeps the deadline fasthttp wants and moves the real one only when it must
// come earlier. When the real one fires before the wanted one, Read or Write
// re-arms it and carries on, so timeouts still fire exactly when fasthttp
// asked, and an active connection re-arms about once per timeout period.
type lazyDeadline struct {
	want  atomic.Int64 // unix nanoseconds fasthttp wants; 0 = none
	armed atomic.Int64 // unix nanoseconds set on the socket; 0 = none
}

// set records t and reports whether the socket's deadline must be moved to
// it now.
func (d *lazyDeadline) set(t time.Time) bool {
	if t.IsZero() {
		d.want.Store(0)
		return d.armed.Swap(0) != 0
	}
	w := t.UnixNano()
	d.want.Store(w)
	if a := d.armed.Load(); a != 0 && a <= w {
		return false // fires no later than wanted; Read/Write re-arm if early
	}
	d.armed.Store(w)
	return true
}

// rearm decides what to do after the socket's deadline fired: it returns the
// deadline to set and true if the wanted deadline is still ahead (or there
// is none any more), false if the timeout is real.
func (d *lazyDeadline) rearm() (time.Time, bool) {
	w := d.want.Load()
	if w == 0 {
		d.armed.Store(0)
		return time.Time{}, true
	}
	if w <= time.Now().UnixNano() {
		return time.Time{}, false
	}
	d.armed.Store(w)
	return time.Unix(0, w), true
}

func (c *lingerConn) SetReadDeadline(t time.Time) error {
	if c.rd.set(t) {
		return c.Conn.SetReadDeadline(t)
	}
	return nil
}

func (c *lingerConn) SetWriteDeadline(t time.Time) error {
	if c.wd.set(t) {
		return c.Conn.SetWriteDeadline(t)
	}
	return nil
}

func (c *lingerConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

func (c *lingerConn) Read(p []byte) (int, error) {
	for {
		n, err := c.Conn.Read(p)
		if n > 0 || err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			return n, err
		}
		t, again := c.rd.rearm()
		if !again {
			return n, err
		}
		if err := c.Conn.SetReadDeadline(t); err != nil {
			return 0, err
		}
	}
}

func (c *lingerConn) Write(p []byte) (int, error) {
	done := 0
	for {
		n, err := c.Conn.Write(p[done:])
		done += n
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			return done, err
		}
		t, again := c.wd.rearm()
		if !again {
			return done, err
		}
		if err := c.Conn.SetWriteDeadline(t); err != nil {
			return done, err
		}
	}
}
