package loadgen

import (
	"bufio"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// base is the origin of mono; time.Since reads the monotonic clock.
var base = time.Now()

// mono is the time since base in ns, from the monotonic clock.
func mono() int64 { return int64(time.Since(base)) }

func sleep(d int64) { time.Sleep(time.Duration(d)) }

// runner is what the connections share: the schedule, the requests and the
// shards they count into.
type runner struct {
	cfg     *Config
	t       *target
	ring    *ring
	batch   bool
	usages  int // usages per request
	open    bool
	bufSize int // read buffer of each connection

	t0, measureStart, end, stopAt int64
	interval                      float64 // open loop: ns between one connection's requests

	halt   atomic.Bool
	winEnd atomic.Int64 // end of the measured window: end, or the moment of a halt

	shards []*shard

	errMu   sync.Mutex
	errMsgs [numErrKinds]string // the first error of each kind
}

// due is the due time of a connection's request i.
func (r *runner) due(phase int64, i int) int64 {
	return r.t0 + phase + int64(float64(i)*r.interval)
}

func (r *runner) noteErr(kind int, err error) {
	r.errMu.Lock()
	if r.errMsgs[kind] == "" {
		r.errMsgs[kind] = err.Error()
	}
	r.errMu.Unlock()
}

// conn is one connection and its goroutine's state.
type conn struct {
	r        *runner
	sh       *shard
	nc       net.Conn
	rr       respReader
	k        int // next request of the ring
	ids      idStore
	l        local
	phase    int64 // open loop: due time of the first request, after t0
	deadline int64 // when the connection's deadline was last moved

	released atomic.Uint64 // open loop: requests the pacer has released
	bell     chan struct{} // rung, capacity 1, after each release
}

func (k *conn) dial() error {
	nc, err := net.DialTimeout("tcp", k.r.t.addr, k.r.cfg.Timeout)
	if err != nil {
		return err
	}
	k.nc = nc
	if k.rr.br == nil {
		k.rr.br = bufio.NewReaderSize(nc, k.r.bufSize)
	} else {
		k.rr.br.Reset(nc)
	}
	k.deadline = 0
	return nil
}

func (k *conn) drop() {
	if k.nc != nil {
		k.nc.Close()
		k.nc = nil
	}
}

// refreshDeadline moves the connection's deadline to now + timeout, at most
// 8 times per timeout: an answer may take between 7/8 of the timeout and
// the timeout before it is an error.
func (k *conn) refreshDeadline(now int64) {
	t := int64(k.r.cfg.Timeout)
	if now-k.deadline > t/8 {
		_ = k.nc.SetDeadline(base.Add(time.Duration(now + t)))
		k.deadline = now
	}
}

// next returns the next m requests (m <= pipeline) as one slice.
func (k *conn) next(m int) []byte {
	b := k.r.ring.window(k.k, m)
	k.k += m
	if k.k >= k.r.ring.n {
		k.k -= k.r.ring.n
	}
	return b
}

// errKind classifies a connection error.
func errKind(err error, kind int) int {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return errTimeout
	case errors.Is(err, errProto):
		return errProtocol
	case errors.Is(err, errEOF):
		return errClosed
	}
	return kind
}

// fail counts a connection error that lost the answers of lost requests,
// and closes the connection.
func (k *conn) fail(l *local, err error, kind, lost int) {
	kind = errKind(err, kind)
	k.r.noteErr(kind, err)
	l.c.errors[kind]++
	l.c.lost += uint64(lost)
	k.drop()
}

// response counts one answer, read at done, lat after its due (open loop)
// or send (closed loop) time, and takes the ids out of a 2xx body.
func (k *conn) response(l *local, status int, body []byte, lat int64, measured bool, done int64) {
	r := k.r
	c := &l.c
	c.responses++
	inWin := done >= r.measureStart && done < r.winEnd.Load()
	if inWin {
		c.winResponses++
	}
	code := status
	if code < 100 || code > 599 {
		code = 0
	}
	l.codes = append(l.codes, uint16(code))
	l.lat = append(l.lat, lat)
	if measured {
		l.measured = append(l.measured, lat)
	}
	if status >= 200 && status <= 299 {
		c.ok++
		if inWin {
			c.winOK++
			c.winUsages += uint64(r.usages)
		}
		if scanIDs(body, r.batch, &k.ids) < r.usages {
			c.idsAbsent++
		}
	}
}

func (k *conn) sent(l *local, n int, at int64) {
	l.c.sent += uint64(n)
	if at >= k.r.measureStart && at < k.r.winEnd.Load() {
		l.c.winSent += uint64(n)
	}
}

// runClosed sends rounds of pipeline requests, each as soon as the previous
// round is answered, until the end of the run. Latency is measured from
// the round's write.
func (k *conn) runClosed() {
	r := k.r
	p := r.cfg.Pipeline
	l := &k.l
	defer k.sh.flush(l)
	if d := r.t0 - mono(); d > 0 {
		sleep(d)
	}
	for {
		now := mono()
		if now >= r.end || r.halt.Load() {
			return
		}
		if k.nc == nil {
			if err := k.dial(); err != nil {
				k.fail(l, err, errDial, 0)
				k.sh.flush(l)
				time.Sleep(100 * time.Millisecond) // do not spin on a server that is down
				continue
			}
		}
		k.refreshDeadline(now)
		measured := now >= r.measureStart
		if measured {
			l.c.measured += uint64(p)
		}
		if _, err := k.nc.Write(k.next(p)); err != nil {
			k.fail(l, err, errWrite, p)
			k.sh.flush(l)
			continue
		}
		k.sent(l, p, now)
		for j := 0; j < p; j++ {
			status, keepAlive, body, err := k.rr.read()
			done := mono()
			if err != nil {
				k.fail(l, err, errRead, p-j)
				break
			}
			k.response(l, status, body, done-now, measured, done)
			if !keepAlive {
				if j < p-1 { // the server closed with requests unanswered
					k.fail(l, errEOF, errClosed, p-1-j)
				}
				k.drop()
				break
			}
		}
		k.sh.flush(l)
	}
}

// wait blocks until the pacer has released request i; false if the run
// was halted.
func (k *conn) wait(i int) bool {
	for k.released.Load() <= uint64(i) {
		if k.r.halt.Load() {
			return false
		}
		<-k.bell
	}
	return !k.r.halt.Load()
}

// unsent counts the measured requests from i on that will not be sent:
// the drain deadline passed.
func (k *conn) unsent(l *local, i int) {
	r := k.r
	for due := r.due(k.phase, i); due < r.end; due = r.due(k.phase, i) {
		if due >= r.measureStart {
			l.c.measured++
			l.c.unsent++
		}
		i++
	}
}

// await returns the due time of request i once the pacer has released it;
// false when the connection is done: the schedule ended, the drain deadline
// passed (the requests left are counted as unsent) or the run was halted.
func (k *conn) await(i int) (int64, bool) {
	r := k.r
	due := r.due(k.phase, i)
	if due >= r.end {
		return 0, false
	}
	if mono() >= r.stopAt {
		k.unsent(&k.l, i)
		return 0, false
	}
	if !k.wait(i) {
		return 0, false
	}
	return due, true
}

// runOpen sends the connection's requests on its schedule, one at a time:
// request i when it is released and the answer to i-1 is in. Latency is
// measured from the due time.
func (k *conn) runOpen() {
	r := k.r
	l := &k.l
	defer k.sh.flush(l)
	var lastDone int64 // when the previous answer came
	for i := 0; ; i++ {
		due, ok := k.await(i)
		if !ok {
			return
		}
		measured := due >= r.measureStart
		if measured {
			l.c.measured++
		}
		if k.nc == nil {
			if err := k.dial(); err != nil {
				k.fail(l, err, errDial, 1)
				k.sh.flush(l)
				lastDone = mono()
				continue
			}
		}
		sent := mono()
		if measured {
			if lastDone <= due {
				// The connection was idle when the request fell due, so
				// any delay until now is the generator's own.
				l.lag = append(l.lag, sent-due)
			} else {
				l.c.late++
			}
		}
		k.refreshDeadline(sent)
		if _, err := k.nc.Write(k.next(1)); err != nil {
			k.fail(l, err, errWrite, 1)
			k.sh.flush(l)
			lastDone = mono()
			continue
		}
		k.sent(l, 1, sent)
		status, keepAlive, body, err := k.rr.read()
		done := mono()
		lastDone = done
		if err != nil {
			k.fail(l, err, errRead, 1)
		} else {
			k.response(l, status, body, done-due, measured, done)
			if !keepAlive {
				k.drop()
			}
		}
		k.sh.flush(l)
	}
}

// session is one TCP connection of runOpenPipelined and its reader.
type session struct {
	window chan int64    // due times of the requests in flight, oldest first
	done   chan struct{} // closed when the reader stops
	killed atomic.Bool   // the writer closed the connection: the reader's error is not the server's
}

// runOpenPipelined sends the connection's requests on its schedule with
// up to pipeline of them in flight: a writer (this goroutine) sends each
// request when it is released and the window has room, and a reader
// goroutine per TCP connection reads the answers in order.
func (k *conn) runOpenPipelined() {
	r := k.r
	p := r.cfg.Pipeline
	l := &k.l // the writer's counts; the reader has its own
	defer k.sh.flush(l)
	var s *session
	// endSession stops the current connection's reader, at once (kill)
	// or once it has read the answers in flight, and counts the requests
	// left unanswered as lost.
	endSession := func(kill bool) {
		if s == nil {
			return
		}
		if kill {
			s.killed.Store(true)
			k.drop()
		} else {
			close(s.window)
		}
		<-s.done
		l.c.lost += uint64(len(s.window))
		k.drop()
		s = nil
	}
	defer func() { endSession(false) }()
	for i := 0; ; {
		due, ok := k.await(i)
		if !ok {
			return
		}
		if s != nil {
			select {
			case <-s.done: // the reader hit an error and closed the connection
				endSession(true)
			default:
			}
		}
		if s == nil {
			if err := k.dial(); err != nil {
				if due >= r.measureStart {
					l.c.measured++
				}
				k.fail(l, err, errDial, 1)
				k.sh.flush(l)
				i++
				continue
			}
			s = &session{window: make(chan int64, p), done: make(chan struct{})}
			go k.read(k.nc, s)
		}
		// Send request i, and with it every later one already released,
		// as far as the window has room.
		idle := len(s.window) < p
		select {
		case s.window <- due:
		case <-s.done:
			endSession(true)
			continue
		}
		m := 1
		for m < p && uint64(i+m) < k.released.Load() && len(s.window) < p {
			d := r.due(k.phase, i+m)
			if d >= r.end {
				break
			}
			s.window <- d
			m++
			if d >= r.measureStart {
				// Released while request i waited: sent late.
				l.c.measured++
				l.c.late++
			}
		}
		sent := mono()
		if due >= r.measureStart {
			l.c.measured++
			if idle {
				// The window had room when the request fell due, so any
				// delay until now is the generator's own.
				l.lag = append(l.lag, sent-due)
			} else {
				l.c.late++
			}
		}
		k.refreshDeadline(sent)
		if _, err := k.nc.Write(k.next(m)); err != nil {
			s.killed.Store(true)
			k.fail(l, err, errWrite, 0)
			endSession(true)
		} else {
			k.sent(l, m, sent)
		}
		k.sh.flush(l)
		i += m
	}
}

// read is the reader of one TCP connection of runOpenPipelined: it takes
// the due time of the oldest request in flight, reads its answer and
// counts it, until the window is closed, or an error (then it closes nc).
func (k *conn) read(nc net.Conn, s *session) {
	defer close(s.done)
	l := newLocal(1)
	defer k.sh.flush(&l)
	r := k.r
	for due := range s.window {
		status, keepAlive, body, err := k.rr.read()
		now := mono()
		if err != nil {
			if !s.killed.Load() {
				kind := errKind(err, errRead)
				r.noteErr(kind, err)
				l.c.errors[kind]++
			}
			l.c.lost++
			nc.Close()
			return
		}
		k.response(&l, status, body, now-due, due >= r.measureStart, now)
		k.sh.flush(&l)
		if !keepAlive {
			nc.Close()
			return
		}
	}
}
