package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/busyapi/busyapi/wal"
)

// natsServer is a real single-node JetStream server on a loopback port,
// restartable on the same port and store directory.
type natsServer struct {
	t     testing.TB
	port  int
	store string
	srv   *server.Server
}

func startNATS(t testing.TB) *natsServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	n := &natsServer{t: t, port: port, store: t.TempDir()}
	n.start()
	t.Cleanup(n.stop)
	return n
}

func (n *natsServer) start() {
	n.t.Helper()
	opts := &server.Options{
		ServerName: "n1", Host: "127.0.0.1", Port: n.port,
		JetStream: true, StoreDir: n.store, NoLog: true, NoSigs: true,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		n.t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		n.t.Fatal("nats-server did not start")
	}
	n.srv = s
}

func (n *natsServer) stop() {
	if n.srv != nil {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
		n.srv = nil
	}
}

func (n *natsServer) url() string { return "nats://127.0.0.1:" + strconv.Itoa(n.port) }

// testLog returns a logger that writes to the test's log.
func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// openStore opens a log of two shards in dir.
func openStore(t *testing.T, dir string) *wal.Store {
	t.Helper()
	s, _, err := wal.Open(wal.Options{Dir: dir, Shards: 2, SegmentBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func usageBody(id uint64) string {
	return fmt.Sprintf(`{"patientId":"p%d","timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol","n":%d}`, id%97, id)
}

// wantMsg is the usage as GET /api/usages/{id} returns it.
func wantMsg(id uint64) string {
	return `{"id":` + strconv.FormatUint(id, 10) + `,` + usageBody(id)[1:]
}

// appendUsages stores ids from..to-1 as the drainers would, alternating the
// shards, in batches of 50 with a meta record (an idempotency answer) in
// some of them.
func appendUsages(t *testing.T, s *wal.Store, from, to uint64) {
	t.Helper()
	for id := from; id < to; id++ {
		sh := int(id % 2)
		s.Append(sh, id, []byte(usageBody(id)))
		if id%50 == 0 {
			s.Append(sh, 0, []byte(`{"meta":"an idempotency answer"}`))
			flushAll(t, s, 2)
		}
	}
	flushAll(t, s, 2)
}

// flushAll flushes shards 0..shards-1 of s.
func flushAll(tb testing.TB, s *wal.Store, shards int) {
	tb.Helper()
	for i := range shards {
		if err := s.Flush(i); err != nil {
			tb.Fatal(err)
		}
	}
}

func dial(t *testing.T, urls string, mod func(*Config)) *Conn {
	t.Helper()
	cfg := Config{URLs: urls}
	if mod != nil {
		mod(&cfg)
	}
	if err := cfg.SetDefaults(); err != nil {
		t.Fatal(err)
	}
	c, err := Dial(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func newForwarder(t *testing.T, s *wal.Store, dir string, c *Conn) *Forwarder {
	t.Helper()
	f, err := NewForwarder(s, dir, c, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func lagOf(f *Forwarder) Stats {
	var st Stats
	f.UpdateStats(&st)
	return st
}

// readStream returns every message of the stream: id (its Nats-Msg-Id)
// -> bodies.
func readStream(t *testing.T, url, stream string) map[uint64][]string {
	t.Helper()
	c := dial(t, url, nil)
	js, err := c.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	total := info.State.Msgs
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint64][]string{}
	for got := uint64(0); got < total; {
		batch, err := cons.Fetch(int(min(1000, total-got)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			id, err := strconv.ParseUint(m.Headers().Get(jetstream.MsgIDHeader), 10, 64)
			if err != nil {
				t.Fatalf("message without a numeric Nats-Msg-Id: %v %s", m.Headers(), m.Data())
			}
			out[id] = append(out[id], string(m.Data()))
			got++
		}
		if err := batch.Error(); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// checkStream checks that the stream holds ids from..to-1 exactly once,
// each as GET returns it, and nothing else.
func checkStream(t *testing.T, msgs map[uint64][]string, from, to uint64) {
	t.Helper()
	for id := from; id < to; id++ {
		bodies := msgs[id]
		if len(bodies) != 1 || bodies[0] != wantMsg(id) {
			t.Fatalf("usage %d in the stream %d times: %q", id, len(bodies), bodies)
		}
	}
	if len(msgs) != int(to-from) {
		for id := range msgs {
			if id < from || id >= to {
				t.Fatalf("unexpected message id %d in the stream: %q", id, msgs[id])
			}
		}
	}
}

// TestForwardExactlyOnceAcrossCrash: the forwarder dies after the stream
// acknowledged batches but before their cursor was written; a new one on the
// same log publishes that tail again, the stream drops it as duplicates,
// and every usage is in the stream exactly once, as GET returns it. Meta
// records are never published.
func TestForwardExactlyOnceAcrossCrash(t *testing.T) {
	ns := startNATS(t)
	dir := t.TempDir()
	s := openStore(t, dir)
	appendUsages(t, s, 1, 3001)
	c := dial(t, ns.url(), nil)

	f := newForwarder(t, s, dir, c)
	f.maxBatch = 100
	var batches atomic.Int32
	f.crashAfterAck = func() bool {
		// Let the first batch's cursor be written, then acknowledge
		// batches until the 12th and die before its cursor moves.
		if batches.Add(1) == 12 {
			f.crashed = true
			return true
		}
		time.Sleep(20 * time.Millisecond) // keep the cursor writes apart (every 100 ms at most)
		return false
	}
	f.Start()
	waitFor(t, 30*time.Second, "the crash", func() bool { return batches.Load() >= 12 })
	if err := f.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	first := lagOf(f)
	if first.Published != 1200 || first.Duplicates != 0 {
		t.Fatalf("before the crash: %+v, want 1200 published", first)
	}
	// What the cursor file says: only a prefix of what was acknowledged.
	_, saved, _, err := openCursor(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cursor written before the crash: %v", saved)

	// The restart: a new forwarder on the same log and cursor.
	appendUsages(t, s, 3001, 3501)
	f2 := newForwarder(t, s, dir, c)
	backlog := lagOf(f2).LagUsages
	if backlog < 3500-1200+100 {
		t.Fatalf("after the crash the lag is %d, want at least the %d never acknowledged and the batch acknowledged after the last cursor write", backlog, 3500-1200)
	}
	f2.Start()
	waitFor(t, 30*time.Second, "forward lag 0", func() bool { return lagOf(f2).LagUsages == 0 })
	if err := f2.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	second := lagOf(f2)
	// The tail published before the crash (acknowledged, or still in
	// flight) comes again and is dropped as duplicates.
	if second.Duplicates < 100 || second.Published != backlog {
		t.Fatalf("after the restart: %+v; want the %d usages after the cursor published, the acknowledged tail among them as duplicates", second, backlog)
	}
	t.Logf("re-published after the crash: %d, dropped by the stream as duplicates: %d", second.Published, second.Duplicates)
	checkStream(t, readStream(t, ns.url(), DefaultStream), 1, 3501)

	// The cursor is at the log's end: a third start publishes nothing.
	f3 := newForwarder(t, s, dir, c)
	if st := lagOf(f3); st.LagUsages != 0 {
		t.Fatalf("third start: lag %d", st.LagUsages)
	}
	f3.Close(context.Background())
}

// TestForwardBacklogDrains: while NATS is down ingest goes on, the lag
// grows and the forwarder says it is disconnected; once NATS is back, the
// backlog drains and every usage is in the stream exactly once.
func TestForwardBacklogDrains(t *testing.T) {
	ns := startNATS(t)
	dir := t.TempDir()
	s := openStore(t, dir)
	c := dial(t, ns.url(), nil)
	f := newForwarder(t, s, dir, c)
	f.Start()
	defer f.Close(context.Background())
	appendUsages(t, s, 1, 501)
	waitFor(t, 20*time.Second, "the first usages forwarded", func() bool { return lagOf(f).LagUsages == 0 })

	ns.stop()
	waitFor(t, 10*time.Second, "the disconnect", func() bool { return !lagOf(f).Connected })
	appendUsages(t, s, 501, 2501)
	time.Sleep(300 * time.Millisecond)
	st := lagOf(f)
	if st.LagUsages != 2000 || st.LagSeconds <= 0 || st.Connected {
		t.Fatalf("while NATS is down: %+v, want a lag of 2000 usages", st)
	}
	if f.Keep(0) >= s.End(0) || f.Keep(1) >= s.End(1) {
		t.Fatalf("retention may delete unforwarded usages: keep %d %d, ends %d %d", f.Keep(0), f.Keep(1), s.End(0), s.End(1))
	}

	ns.start()
	waitFor(t, 30*time.Second, "the backlog drained", func() bool { return lagOf(f).LagUsages == 0 })
	st = lagOf(f)
	if st.LagSeconds != 0 || !st.Connected || st.Published != 2500 {
		t.Fatalf("after NATS returned: %+v", st)
	}
	checkStream(t, readStream(t, ns.url(), DefaultStream), 1, 2501)
	waitFor(t, 5*time.Second, "the cursor written", func() bool { return f.Keep(0) == s.End(0) && f.Keep(1) == s.End(1) })
}

// TestForwardSkipsMetaRecords: meta records (id 0, idempotency answers)
// move the cursor but are never published.
func TestForwardSkipsMetaRecords(t *testing.T) {
	ns := startNATS(t)
	dir := t.TempDir()
	s := openStore(t, dir)
	for i := 0; i < 2; i++ {
		s.Append(i, 0, []byte(`{"meta":1}`))
		s.Append(i, 0, []byte(`{"meta":2}`))
		if err := s.Flush(i); err != nil {
			t.Fatal(err)
		}
	}
	c := dial(t, ns.url(), nil)
	f := newForwarder(t, s, dir, c)
	f.Start()
	defer f.Close(context.Background())
	waitFor(t, 20*time.Second, "the cursor past the meta records", func() bool { return f.Keep(0) == s.End(0) && f.Keep(1) == s.End(1) })
	appendUsages(t, s, 1, 3) // with a meta record each 50 usages: none here
	s.Append(1, 0, []byte(`{"meta":3}`))
	if err := s.Flush(1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "forward lag 0", func() bool { return lagOf(f).LagUsages == 0 && f.Keep(1) == s.End(1) })
	if st := lagOf(f); st.Published != 2 {
		t.Fatalf("published %d, want the 2 usages only", st.Published)
	}
	checkStream(t, readStream(t, ns.url(), DefaultStream), 1, 3)
}

// TestForwardNoCreate: with NoCreate and no stream, forwarding stops with
// a clear error naming the stream and the flag, publishes nothing, and
// goes on by itself once the stream is created.
func TestForwardNoCreate(t *testing.T) {
	ns := startNATS(t)
	dir := t.TempDir()
	s := openStore(t, dir)
	appendUsages(t, s, 1, 101)
	c := dial(t, ns.url(), func(c *Config) { c.NoCreate = true; c.Stream = "AUDIT"; c.Subject = "audit.usages" })
	f := newForwarder(t, s, dir, c)
	f.Start()
	defer f.Close(context.Background())
	waitFor(t, 10*time.Second, "the error", func() bool { return lagOf(f).Problem != "" })
	st := lagOf(f)
	if !strings.Contains(st.Problem, `missing stream: "AUDIT" does not exist`) || !strings.Contains(st.Problem, "--nats-no-create") ||
		st.Published != 0 || st.LagUsages != 100 {
		t.Fatalf("stats: %+v", st)
	}
	js, err := c.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "AUDIT", Subjects: []string{"audit.>"}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "forwarding once the stream exists", func() bool { return lagOf(f).LagUsages == 0 })
	if st := lagOf(f); st.Problem != "" || st.Published != 100 {
		t.Fatalf("stats: %+v", st)
	}
	checkStream(t, readStream(t, ns.url(), "AUDIT"), 1, 101)
}

// TestForwardWrongSubject: a stream that does not take the subject is
// reported, not published to blindly.
func TestForwardWrongSubject(t *testing.T) {
	ns := startNATS(t)
	dir := t.TempDir()
	s := openStore(t, dir)
	appendUsages(t, s, 1, 11)
	c := dial(t, ns.url(), nil)
	js, err := c.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: DefaultStream, Subjects: []string{"other.>"}}); err != nil {
		t.Fatal(err)
	}
	f := newForwarder(t, s, dir, c)
	f.Start()
	defer f.Close(context.Background())
	waitFor(t, 10*time.Second, "the error", func() bool { return lagOf(f).Problem != "" })
	if st := lagOf(f); !strings.Contains(st.Problem, "not \"busyapi.usages\"") || st.Published != 0 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestTakesSubject(t *testing.T) {
	for _, tt := range []struct {
		filters []string
		want    bool
	}{
		{[]string{"busyapi.usages"}, true},
		{[]string{"busyapi.*"}, true},
		{[]string{"busyapi.>"}, true},
		{[]string{">"}, true},
		{[]string{"*.usages"}, true},
		{[]string{"busyapi"}, false},
		{[]string{"busyapi.usages.x"}, false},
		{[]string{"busyapi.usages.>"}, false},
		{[]string{"*"}, false},
		{[]string{"other.>", "busyapi.usages"}, true},
		{nil, false},
	} {
		if got := takesSubject(tt.filters, "busyapi.usages"); got != tt.want {
			t.Errorf("takesSubject(%q) = %v, want %v", tt.filters, got, tt.want)
		}
	}
}

// TestCursorFile: the last complete write wins; a torn write of one slot
// leaves the other; a file with no valid slot is refused.
func TestCursorFile(t *testing.T) {
	dir := t.TempDir()
	c, pos, _, err := openCursor(dir)
	if err != nil || pos != nil {
		t.Fatalf("new cursor: %v %v", pos, err)
	}
	for i := uint64(1); i <= 5; i++ {
		if err := c.write([]uint64{i * 100, i * 1000, 7}, int64(i)); err != nil {
			t.Fatal(err)
		}
	}
	c.close()
	_, pos, at, err := openCursor(dir)
	if err != nil || fmt.Sprint(pos) != "[500 5000 7]" || at != 5 {
		t.Fatalf("reopened: %v %d %v", pos, at, err)
	}
	// Tear the last write (seq 5, slot 1): the one before comes back.
	path := filepath.Join(dir, CursorFile)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xff, 0xff}, cursorSlot+cursorHeader+3); err != nil {
		t.Fatal(err)
	}
	f.Close()
	c, pos, at, err = openCursor(dir)
	if err != nil || fmt.Sprint(pos) != "[400 4000 7]" || at != 4 {
		t.Fatalf("after a torn slot: %v %d %v", pos, at, err)
	}
	// The next write goes to the torn slot, not over the good one.
	if err := c.write([]uint64{600, 6000}, 6); err != nil {
		t.Fatal(err)
	}
	c.close()
	_, pos, _, err = openCursor(dir)
	if err != nil || fmt.Sprint(pos) != "[600 6000]" {
		t.Fatalf("after rewriting: %v %v", pos, err)
	}
	if err := os.WriteFile(path, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := openCursor(dir); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("garbage cursor file: %v", err)
	}
}
