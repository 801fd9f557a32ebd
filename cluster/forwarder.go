package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/busyapi/busyapi/wal"
)

// Errors the Forwarder reports (in Stats.Problem, and in the log) while it
// cannot forward.
var (
	// ErrNoStream: the stream is missing and Config.NoCreate forbids
	// creating it.
	ErrNoStream = errors.New("missing stream")
	// ErrStreamSubject: the stream does not take Config.Subject.
	ErrStreamSubject = errors.New("wrong stream subjects")
)

// Forwarder timing.
const (
	pollInterval = 5 * time.Millisecond   // how often an idle forwarder looks for new usages
	saveEvery    = 100 * time.Millisecond // least time between cursor writes while busy
	backoffMin   = 100 * time.Millisecond // first wait after a failure
	backoffMax   = 5 * time.Second        // longest wait between attempts
	warnEvery    = 10 * time.Second       // repeated failures are logged this often
	retryWaitMin = 100 * time.Millisecond // wait while disconnected
)

// Forwarder publishes every usage of a wal.Store to the stream, exactly
// once: see the package documentation. One goroutine does it all, off the
// ingest path: it keeps up to pipeline batches in flight, each with its own
// reply subject on which the stream's acks are counted, and moves the
// cursor past the oldest batch once all of its acks are in.
type Forwarder struct {
	store *wal.Store
	conn  *Conn
	cfg   Config
	log   *slog.Logger
	mark  *cursorFile

	// The loop's own state.
	pos       []uint64 // per shard: everything before is acknowledged by the stream
	dirty     bool     // pos moved since the last cursor write
	lastSave  time.Time
	streamOK  bool
	problemAt time.Time // when the current problem was last logged
	slots     []*slot   // pipeline of them
	inflight  []*slot   // published, oldest first

	saved    []atomic.Uint64 // per shard: the durable cursor (what retention keeps)
	fwd      []atomic.Uint64 // per shard: usages forwarded, counted like Store.Usages
	caughtUp atomic.Int64    // unix ns: every usage stored before was forwarded

	published  atomic.Uint64
	duplicates atomic.Uint64
	failures   atomic.Uint64
	problem    atomic.Pointer[string]
	started    atomic.Bool

	ctx       context.Context
	cancel    context.CancelFunc
	stop      chan struct{}
	exited    chan struct{}
	closeOnce sync.Once

	// Tuning, and a hook for tests: crashAfterAck, if set, is asked after
	// each batch is acknowledged and before the cursor moves; true makes
	// the loop stop as if the process died there.
	maxBatch      int
	js            jetstream.JetStream // for stream management (ensureStream)
	crashAfterAck func() bool
	crashed       bool // crashAfterAck said so: Close writes nothing
}

// slot is one batch in flight, with its own reply subject.
type slot struct {
	// Acks come back to inbox.<round> on the slot's own subscription; a
	// round is one batch, so a late ack of an earlier one is not counted.
	// This costs a fraction of JetStream's asynchronous publish (a future,
	// a map entry and a JSON decoding per message): on one core the
	// forwarder competes with the HTTP workers.
	inbox    string
	reply    atomic.Pointer[string] // inbox.<round> of the batch in flight
	round    uint64
	expected atomic.Int64 // acks the batch waits for
	done     atomic.Pointer[chan struct{}]
	acked    atomic.Uint64 // acks of the batch
	nacked   atomic.Uint64 // error answers of the batch
	dups     atomic.Uint64
	pubErr   atomic.Pointer[error]
	b        batch
	start    time.Time // when the batch was read
	sent     int       // messages handed to the client
	err      error     // why handing a message to the client failed
}

// batch is a batch of messages read from the log.
type batch struct {
	msgs     []*nats.Msg
	pool     []*nats.Msg // messages to reuse: PublishMsg copies them out
	ids      []uint64
	offs     []int
	data     []byte   // the messages' bodies, back to back
	next     []uint64 // per shard: the position after the batch
	count    []uint64 // per shard: usages in the batch
	buf      []byte   // ReadFrom's buffer
	complete bool     // the batch holds everything the log had when it was read
}

// NewForwarder returns a Forwarder of store's usages over conn, with its
// durable cursor in dir (the data directory). It reads the cursor and
// counts the usages after it (the backlog), so call it before the store
// takes writes. Start it with Start; Close stops it.
func NewForwarder(store *wal.Store, dir string, conn *Conn, log *slog.Logger) (*Forwarder, error) {
	if log == nil {
		log = slog.Default()
	}
	cfg := conn.Config()
	mark, pos, caughtUp, err := openCursor(dir)
	if err != nil {
		return nil, err
	}
	n := store.Logs()
	if len(pos) > n {
		log.Warn("the forward cursor has more shards than the log; ignoring the extra positions", "cursor_shards", len(pos), "logs", n)
		pos = pos[:n]
	}
	pos = append(pos, make([]uint64, n-len(pos))...)
	f := &Forwarder{
		store: store, conn: conn, cfg: cfg, log: log.With("component", "forward"), mark: mark,
		pos: pos, saved: make([]atomic.Uint64, n), fwd: make([]atomic.Uint64, n),
		stop: make(chan struct{}), exited: make(chan struct{}),
		maxBatch: maxBatch,
	}
	var backlog uint64
	var buf []byte
	for i := range n {
		usages := store.Usages(i)
		var behind uint64
		_, buf, err = store.ReadFrom(i, pos[i], buf, func(id uint64, _ []byte) bool {
			if id != 0 {
				behind++
			}
			return true
		})
		if err != nil {
			mark.close()
			return nil, fmt.Errorf("cannot read shard log %d from the forward cursor: %w", i, err)
		}
		f.fwd[i].Store(usages - min(behind, usages))
		f.saved[i].Store(pos[i])
		backlog += behind
	}
	if backlog == 0 || caughtUp == 0 {
		// Without a recorded time, the backlog's age is counted from now.
		caughtUp = time.Now().UnixNano()
	}
	f.caughtUp.Store(caughtUp)
	if f.js, err = conn.JetStream(); err != nil {
		mark.close()
		return nil, err
	}
	for range pipeline {
		sl := &slot{b: batch{next: make([]uint64, n), count: make([]uint64, n)}}
		sl.inbox = nats.NewInbox()
		_, err = conn.NC.Subscribe(sl.inbox+".*", sl.onAck)
		if err != nil {
			mark.close()
			return nil, err
		}
		f.slots = append(f.slots, sl)
	}
	f.log.Info("forwarding usages", "stream", cfg.Stream, "subject", cfg.Subject, "backlog", backlog,
		"cursor", wal.FormatCursor(pos))
	return f, nil
}

// Start starts forwarding in the background.
func (f *Forwarder) Start() {
	f.ctx, f.cancel = context.WithCancel(context.Background())
	f.started.Store(true)
	go f.run()
}

// Close stops the Forwarder. While ctx lasts and NATS is reachable, it
// first forwards what the log still holds (the usages of a shutdown's last
// batches); then it writes the cursor and closes it. Whatever is left is
// forwarded at the next start.
func (f *Forwarder) Close(ctx context.Context) error {
	var err error
	f.closeOnce.Do(func() {
		if f.started.Load() {
			close(f.stop)
			select {
			case <-f.exited:
			case <-ctx.Done():
				f.cancel()
				<-f.exited
			}
			f.cancel()
		}
		if f.dirty && !f.crashed {
			err = f.save(true)
		}
		if cerr := f.mark.close(); err == nil {
			err = cerr
		}
	})
	return err
}

// Keep returns the durable forward cursor's position in shard log i:
// retention must keep every segment that does not end at or before it.
func (f *Forwarder) Keep(i int) uint64 {
	if i >= len(f.saved) {
		return 0
	}
	return f.saved[i].Load()
}

// Stats are a Forwarder's figures.
type Stats struct {
	// LagUsages is how many usages of the log are not yet acknowledged by
	// the stream.
	LagUsages uint64
	// LagSeconds is 0 when LagUsages is, else the time since the
	// forwarder was last caught up: the oldest unforwarded usage is
	// younger.
	LagSeconds float64
	// Published counts usages the stream acknowledged, Duplicates those of
	// them it already had (published again after a crash or a lost ack).
	Published  uint64
	Duplicates uint64
	// PublishErrors counts messages whose publish or ack failed (each
	// retry again).
	PublishErrors uint64
	// Connected reports whether the NATS connection is up.
	Connected bool
	// Problem says why forwarding is stuck, or is "".
	Problem string
}

// UpdateStats fills st.
func (f *Forwarder) UpdateStats(st *Stats) {
	st.LagUsages = 0
	for i := range f.fwd {
		// Read the forwarded count first: the usages count only grows.
		done := f.fwd[i].Load()
		if u := f.store.Usages(i); u > done {
			st.LagUsages += u - done
		}
	}
	st.LagSeconds = 0
	if st.LagUsages > 0 {
		st.LagSeconds = max(0, time.Since(time.Unix(0, f.caughtUp.Load())).Seconds())
	}
	st.Published = f.published.Load()
	st.Duplicates = f.duplicates.Load()
	st.PublishErrors = f.failures.Load()
	st.Connected = f.conn.Connected()
	st.Problem = ""
	if p := f.problem.Load(); p != nil {
		st.Problem = *p
	}
}

func (f *Forwarder) stopping() bool {
	select {
	case <-f.stop:
		return true
	default:
		return false
	}
}

// sleep waits d, or less if the Forwarder is being stopped.
func (f *Forwarder) sleep(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-f.stop:
	case <-f.ctx.Done():
	}
}

// run is the forwarding loop: keep up to pipeline batches after the
// cursor in flight, and as the oldest one's acks are all in, move the
// cursor past it and now and then write it. A failed batch drops the ones
// in flight after it; they are read and published again.
func (f *Forwarder) run() {
	defer close(f.exited)
	wait := time.Duration(0)
	var stopping bool
	// fail reports err and reports whether to stop; if not, it backs off.
	fail := func(err error) bool {
		f.report(err)
		if stopping {
			return true
		}
		wait = min(max(2*wait, backoffMin), backoffMax)
		f.sleep(wait + rand.N(wait/4+1))
		return false
	}
	for {
		stopping = f.stopping()
		if f.ctx.Err() != nil {
			return
		}
		if len(f.inflight) == 0 {
			if !f.conn.Connected() {
				if stopping {
					return
				}
				f.sleep(retryWaitMin)
				continue
			}
			if !f.streamOK {
				if err := f.ensureStream(); err != nil {
					if fail(err) {
						return
					}
					continue
				}
				f.streamOK = true
			}
		}
		idle, err := f.fill()
		if err != nil && len(f.inflight) == 0 {
			if fail(err) {
				return
			}
			continue
		}
		if len(f.inflight) == 0 {
			if idle {
				if err := f.save(true); err != nil {
					f.report(err)
				}
			}
			if stopping {
				return
			}
			f.sleep(pollInterval)
			continue
		}
		sl := f.inflight[0]
		if err := f.complete(sl); err != nil {
			// Drop every batch in flight once its acks are in (or
			// timed out); they are read again from the cursor.
			for _, other := range f.inflight[1:] {
				f.complete(other)
			}
			f.inflight = f.inflight[:0]
			f.streamOK = false // look the stream up again: it may be gone
			if fail(err) {
				return
			}
			continue
		}
		f.inflight = append(f.inflight[:0], f.inflight[1:]...)
		if f.crashAfterAck != nil && f.crashAfterAck() {
			f.crashed = true
			return
		}
		wait = 0
		f.clearProblem()
		f.advance(&sl.b)
		if sl.b.complete {
			f.caughtUp.Store(sl.start.UnixNano())
		}
		if err := f.save(false); err != nil {
			f.report(err)
		}
	}
}

// fill reads and publishes batches until pipeline of them are in flight,
// the log has nothing more, or a publish fails. idle reports that nothing
// was in flight and nothing was to be read: the cursor then moved past
// any meta records, and every usage stored before the read is forwarded.
func (f *Forwarder) fill() (idle bool, err error) {
	for len(f.inflight) < len(f.slots) {
		sl := f.freeSlot()
		from := f.pos
		if n := len(f.inflight); n > 0 {
			from = f.inflight[n-1].b.next
		}
		sl.start = time.Now()
		if err := f.read(&sl.b, from); err != nil {
			return false, fmt.Errorf("cannot read the log: %w", err)
		}
		if len(sl.b.msgs) == 0 {
			if len(f.inflight) == 0 {
				f.advance(&sl.b)
				f.caughtUp.Store(sl.start.UnixNano())
				return true, nil
			}
			return false, nil
		}
		f.publish(sl)
		f.inflight = append(f.inflight, sl)
		if sl.err != nil {
			return false, sl.err
		}
	}
	return false, nil
}

// freeSlot returns a slot with no batch in flight.
func (f *Forwarder) freeSlot() *slot {
	for _, sl := range f.slots {
		busy := false
		for _, in := range f.inflight {
			busy = busy || in == sl
		}
		if !busy {
			return sl
		}
	}
	panic("BUG: cluster: no free slot")
}

// report records and logs why forwarding failed: a new problem at once, the
// same one again at most every warnEvery.
func (f *Forwarder) report(err error) {
	msg := err.Error()
	if p := f.problem.Load(); p == nil || *p != msg || time.Since(f.problemAt) >= warnEvery {
		f.log.Warn("cannot forward usages to NATS; they wait in the log and are retried", "err", msg)
		f.problemAt = time.Now()
	}
	f.problem.Store(&msg)
}

func (f *Forwarder) clearProblem() {
	if f.problem.Load() != nil {
		f.problem.Store(nil)
		f.log.Info("forwarding to NATS again")
	}
}

// ensureStream checks that the stream exists and takes the subject, and
// creates it if it is missing (unless NoCreate).
func (f *Forwarder) ensureStream() error {
	ctx, cancel := context.WithTimeout(f.ctx, apiTimeout)
	defer cancel()
	js := f.js
	st, err := js.Stream(ctx, f.cfg.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if f.cfg.NoCreate {
			return fmt.Errorf("%w: %q does not exist and --nats-no-create is set: create it with subject %q (e.g. nats stream add %s --subjects %s --dupe-window 2m), or start without --nats-no-create",
				ErrNoStream, f.cfg.Stream, f.cfg.Subject, f.cfg.Stream, f.cfg.Subject)
		}
		st, err = js.CreateStream(ctx, jetstream.StreamConfig{
			Name:       f.cfg.Stream,
			Subjects:   []string{f.cfg.Subject},
			Replicas:   f.cfg.Replicas,
			Duplicates: f.cfg.DuplicateWindow,
			Storage:    jetstream.FileStorage,
			Retention:  jetstream.LimitsPolicy,
		})
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			st, err = js.Stream(ctx, f.cfg.Stream) // another instance made it
		} else if err == nil {
			f.log.Info("created stream", "stream", f.cfg.Stream, "subject", f.cfg.Subject,
				"replicas", f.cfg.Replicas, "duplicate_window", f.cfg.DuplicateWindow.String())
		}
	}
	if err != nil {
		return fmt.Errorf("cannot look up or create stream %q: %w", f.cfg.Stream, err)
	}
	info := st.CachedInfo()
	if !takesSubject(info.Config.Subjects, f.cfg.Subject) {
		return fmt.Errorf("%w: %q takes %q, not %q: add %q to its subjects, or set --nats-subject to one of them",
			ErrStreamSubject, f.cfg.Stream, info.Config.Subjects, f.cfg.Subject, f.cfg.Subject)
	}
	return nil
}

// takesSubject reports whether one of the stream subjects (which may have
// wildcards) matches the literal subject.
func takesSubject(filters []string, subject string) bool {
	toks := strings.Split(subject, ".")
	for _, flt := range filters {
		ft := strings.Split(flt, ".")
		match := true
		for i, t := range ft {
			if t == ">" {
				match = i < len(toks)
				break
			}
			if i >= len(toks) || (t != "*" && t != toks[i]) {
				match = false
				break
			}
			if i == len(ft)-1 && len(ft) != len(toks) {
				match = false
			}
		}
		if match {
			return true
		}
	}
	return false
}

// read fills b with up to maxBatch usages (and maxBatchBytes) after the
// positions from, spread fairly over the shards, each as GET /api/usages/{id}
// returns it. Meta records (id 0) are passed over.
func (f *Forwarder) read(b *batch, from []uint64) error {
	copy(b.next, from)
	clear(b.count)
	b.ids, b.data = b.ids[:0], b.data[:0]
	offs := b.offs[:0] // start of each body in data; slices are taken at the end
	bytesFull := false
	n := len(b.next)
	left := f.maxBatch
	for pass := 0; pass < 2 && left > 0 && !bytesFull; pass++ {
		for i := 0; i < n && left > 0 && !bytesFull; i++ {
			quota := left
			if pass == 0 {
				quota = min((f.maxBatch+n-1)/n, left)
			}
			taken := 0
			pos, buf, err := f.store.ReadFrom(i, b.next[i], b.buf, func(id uint64, body []byte) bool {
				if id == 0 {
					return true // a meta record (an idempotency answer): never forwarded
				}
				if taken == quota {
					return false
				}
				if len(b.data) >= maxBatchBytes {
					bytesFull = true
					return false
				}
				offs = append(offs, len(b.data))
				b.data = strconv.AppendUint(append(b.data, `{"id":`...), id, 10)
				b.data = append(b.data, ',')
				if len(body) > 0 {
					b.data = append(b.data, body[1:]...)
				}
				b.ids = append(b.ids, id)
				taken++
				return true
			})
			b.buf = buf
			if err != nil {
				return fmt.Errorf("shard %d at position %d: %w", i, b.next[i], err)
			}
			b.next[i] = pos
			b.count[i] += uint64(taken)
			left -= taken
		}
	}
	b.offs = offs
	// With room left in the batch, every shard was read to its end.
	b.complete = left > 0 && !bytesFull
	for j, id := range b.ids {
		end := len(b.data)
		if j+1 < len(offs) {
			end = offs[j+1]
		}
		if j == len(b.pool) {
			// Only the id header: ensureStream has checked that the
			// stream takes the subject (streams' subjects never overlap),
			// and a Nats-Expected-Stream header costs the server about 7%
			// of the forwarding rate (BenchmarkForward).
			b.pool = append(b.pool, &nats.Msg{Subject: f.cfg.Subject, Header: nats.Header{
				jetstream.MsgIDHeader: make([]string, 1),
			}})
		}
		m := b.pool[j]
		m.Data = b.data[offs[j]:end:end]
		m.Header[jetstream.MsgIDHeader][0] = strconv.FormatUint(id, 10)
	}
	b.msgs = b.pool[:len(b.ids)]
	return nil
}

var (
	ackPrefix = []byte(`{"stream":`)
	ackDup    = []byte(`"duplicate"`) // present only when true; the server writes `"duplicate": true`
)

// onAck counts one answer of the stream to a message of the batch in
// flight: a PubAck (JSON starting with "stream"), or anything else (an
// error, a no-responders status) as a failure.
func (sl *slot) onAck(m *nats.Msg) {
	if r := sl.reply.Load(); r == nil || m.Subject != *r {
		return // a late answer to an earlier batch
	}
	if bytes.HasPrefix(m.Data, ackPrefix) {
		sl.acked.Add(1)
		if bytes.Contains(m.Data, ackDup) {
			sl.dups.Add(1)
		}
	} else {
		sl.nacked.Add(1)
		err := fmt.Errorf("stream answered %q (status %q)", m.Data, m.Header.Get("Status"))
		sl.pubErr.CompareAndSwap(nil, &err)
	}
	sl.checkDone()
}

// checkDone closes the batch's done channel once every expected answer
// is in.
func (sl *slot) checkDone() {
	if int64(sl.acked.Load()+sl.nacked.Load()) >= sl.expected.Load() {
		if d := sl.done.Swap(nil); d != nil {
			close(*d)
		}
	}
}

// publish hands sl's messages to the connection, each with the batch's
// reply subject; it stops at the first that fails (sl.err).
func (f *Forwarder) publish(sl *slot) {
	sl.acked.Store(0)
	sl.nacked.Store(0)
	sl.dups.Store(0)
	sl.pubErr.Store(nil)
	sl.sent, sl.err = 0, nil
	sl.round++
	reply := sl.inbox + "." + strconv.FormatUint(sl.round, 10)
	done := make(chan struct{})
	sl.expected.Store(int64(len(sl.b.msgs)))
	sl.done.Store(&done)
	sl.reply.Store(&reply)
	for _, m := range sl.b.msgs {
		m.Reply = reply
		if err := f.conn.NC.PublishMsg(m); err != nil {
			sl.err = fmt.Errorf("publishing to stream %q: %w", f.cfg.Stream, err)
			break
		}
		sl.sent++
	}
	if sl.sent < len(sl.b.msgs) {
		sl.expected.Store(int64(sl.sent))
		sl.checkDone()
	}
}

// complete waits until every message of sl's batch is acknowledged, or has
// failed or timed out, and counts them. It fails unless the stream
// acknowledged all of them.
func (f *Forwarder) complete(sl *slot) error {
	if d := sl.done.Load(); d != nil {
		t := time.NewTimer(ackTimeout)
		select {
		case <-*d:
		case <-t.C:
		case <-f.ctx.Done():
			t.Stop()
			sl.reply.Store(nil)
			f.failures.Add(uint64(sl.sent))
			return f.ctx.Err()
		}
		t.Stop()
	}
	sl.reply.Store(nil) // answers still to come are not this batch's any more
	acked := sl.acked.Load()
	f.published.Add(acked)
	f.duplicates.Add(sl.dups.Load())
	failed := uint64(sl.sent) - min(acked, uint64(sl.sent))
	if sl.err != nil {
		failed++
	}
	f.failures.Add(failed)
	if failed == 0 {
		return nil
	}
	if sl.err != nil {
		return sl.err
	}
	err := errors.New("no ack")
	if p := sl.pubErr.Load(); p != nil {
		err = *p
	}
	return fmt.Errorf("publishing to stream %q: %d of %d messages not acknowledged: %w", f.cfg.Stream, failed, len(sl.b.msgs), err)
}

// advance moves the cursor past b, every message of which is acknowledged.
func (f *Forwarder) advance(b *batch) {
	for i, p := range b.next {
		if p != f.pos[i] {
			f.pos[i] = p
			f.dirty = true
		}
		if b.count[i] > 0 {
			f.fwd[i].Add(b.count[i])
		}
	}
}

// save writes the cursor if it moved: at once when idle, else at most every
// saveEvery (a crash publishes the unsaved part again, which the stream's
// duplicate window drops).
func (f *Forwarder) save(idle bool) error {
	if !f.dirty || (!idle && time.Since(f.lastSave) < saveEvery) {
		return nil
	}
	if err := f.mark.write(f.pos, f.caughtUp.Load()); err != nil {
		return err
	}
	f.dirty = false
	f.lastSave = time.Now()
	for i, p := range f.pos {
		f.saved[i].Store(p)
	}
	return nil
}
