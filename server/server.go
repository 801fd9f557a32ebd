// Package server is busyapi's HTTP layer: routing, validation, responses and
// errors for the busyapi-compatible usage API, on fasthttp.
//
// A Server can run on its own (Serve, Shutdown) or be embedded in another
// program that serves its Handler and ErrorHandler with its own
// fasthttp.Server.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/busyapi/busyapi/auth"
	"github.com/busyapi/busyapi/cluster"
	"github.com/busyapi/busyapi/shard"
	"github.com/busyapi/busyapi/store"
	"github.com/busyapi/busyapi/wal"
)

// Ack modes: when a POST is answered 201.
const (
	// AckFsync answers only after the usage's bytes are fsynced in the log
	// (group commit: one fdatasync per shard batch). The default with a
	// DataDir.
	AckFsync = "fsync"
	// AckMemory answers as soon as the usage is in its shard's ring. A GET
	// finds it, and the log has it, within FlushInterval (10 ms by
	// default); a crash can lose that window. Without a DataDir it is the
	// only mode.
	AckMemory = "memory"
)

// Config configures a Server. The zero value works; every field has a
// default, applied in New.
type Config struct {
	// MaxBodyBytes is the largest accepted request body; larger ones are
	// answered 413. Default 16 KiB.
	MaxBodyBytes int
	// MaxBatchItems bounds the usages of one POST /api/usages/batch; more
	// are answered 413. Default 10,000.
	MaxBatchItems int
	// MaxBatchBytes bounds a batch body, after decompression; larger ones
	// are answered 413. Default 4 MiB.
	MaxBatchBytes int
	// IdempotencyWindow is how long an Idempotency-Key is remembered.
	// Default 24 h.
	IdempotencyWindow time.Duration
	// IdempotencyBytes bounds the memory of remembered keys and answers;
	// the oldest are forgotten first. Default 32 MiB (fastcache's minimum).
	IdempotencyBytes int
	// Shards is the number of rings; default (and minimum) GOMAXPROCS.
	Shards int
	// RingBytes is the capacity of each shard's ring. When a ring is full,
	// POSTs are answered 503 with Retry-After. Default 4 MiB.
	RingBytes int
	// IDBlock is how many ids a shard reserves at a time. Default 4096.
	IDBlock uint64
	// CacheBytes bounds the in-memory store of usages read by GET; the
	// oldest usages are evicted when it is full. Default 64 MiB; fastcache's
	// minimum is 32 MiB.
	CacheBytes int
	// Ack says when a POST is answered: AckFsync (the default with a
	// DataDir) or AckMemory (the only mode without one). With AckFsync
	// where wal.AsyncSync is false (not Linux, or no AIO), run at least two
	// Ps (GOMAXPROCS >= 2), as the busyapi command does: a drainer in
	// fdatasync then holds its P, and with one P the network is not polled
	// meanwhile (4.4k instead of 85k POST/s measured on one core).
	Ack string
	// DataDir holds the durable log. Empty means no log: usages live only
	// in the cache, as in an embedded test server.
	DataDir string
	// SegmentBytes rolls log segments at this size. Default 64 MiB.
	SegmentBytes int64
	// Retention deletes whole log segments older than this; 0 keeps
	// everything. Segments an export consumer has not acknowledged are
	// kept.
	Retention time.Duration
	// Repair moves damaged log segments aside at start, keeping their valid
	// prefix, instead of refusing to start.
	Repair bool
	// FlushInterval bounds how long a usage waits in a ring before the
	// drainer stores it. Default 10 ms.
	FlushInterval time.Duration
	// ReadTimeout bounds reading one whole request, headers and body, so
	// half-sent requests cannot hold a connection. Default 10 s.
	ReadTimeout time.Duration
	// WriteTimeout bounds writing one response. Default 10 s.
	WriteTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle for longer. Default 60 s.
	IdleTimeout time.Duration
	// MaxConns bounds concurrent connections. Default 262144.
	MaxConns int
	// Logger receives the server's events; default slog.Default().
	Logger *slog.Logger
	// Tokens, when set, requires a bearer token (Authorization: Bearer
	// <token>) on the API: a write token for POSTs under /api/, a read
	// token for GET and HEAD under /api/ and of /metrics. /, /healthz and
	// /readyz stay open. Nil: no authentication. Reload the tokens with
	// Tokens.Reload while serving; requests see the new ones at once.
	Tokens *auth.Tokens
	// TLS, when set, makes Serve answer HTTPS only, with this configuration
	// (its certificates or GetCertificate). Serve defaults NextProtos to
	// http/1.1 and MinVersion to TLS 1.2.
	TLS *tls.Config
	// AccessLogSample logs one request in AccessLogSample (method, path,
	// status, duration, remote address) at info level: 1 logs every
	// request, 0 (the default) none.
	AccessLogSample int
	// NATS turns on scale-out mode when its URLs are set: every usage of
	// the log is forwarded to a JetStream stream exactly once (package
	// cluster). Needs a DataDir.
	NATS cluster.Config

	// wrapSink, if set (by tests), wraps the sink the drainers write to.
	wrapSink func(shard.Sink) shard.Sink
}

func (c *Config) setDefaults() error {
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = 16 << 10
	}
	if c.MaxBatchItems <= 0 {
		c.MaxBatchItems = 10000
	}
	if c.MaxBatchBytes <= 0 {
		c.MaxBatchBytes = 4 << 20
	}
	if c.IdempotencyWindow <= 0 {
		c.IdempotencyWindow = 24 * time.Hour
	}
	if c.IdempotencyBytes <= 0 {
		c.IdempotencyBytes = 32 << 20
	}
	if c.Shards < runtime.GOMAXPROCS(0) {
		c.Shards = runtime.GOMAXPROCS(0)
	}
	if c.RingBytes <= 0 {
		c.RingBytes = 4 << 20
	}
	if c.RingBytes < 2*(c.MaxBodyBytes+64) {
		return fmt.Errorf("ring of %d bytes cannot hold two bodies of %d bytes: increase --ring-bytes", c.RingBytes, c.MaxBodyBytes)
	}
	if c.IDBlock == 0 {
		c.IDBlock = 4096
	}
	if c.IDBlock > shard.MaxIDBlock {
		return fmt.Errorf("id block %d is above the maximum %d: lower --id-block", c.IDBlock, shard.MaxIDBlock)
	}
	if c.CacheBytes <= 0 {
		c.CacheBytes = 64 << 20
	}
	if c.Ack == "" {
		c.Ack = AckMemory
		if c.DataDir != "" {
			c.Ack = AckFsync
		}
	}
	switch {
	case c.Ack != AckMemory && c.Ack != AckFsync:
		return fmt.Errorf("unknown ack mode %q: use %q or %q", c.Ack, AckFsync, AckMemory)
	case c.Ack == AckFsync && c.DataDir == "":
		return fmt.Errorf("ack mode %q needs a data directory: set --data-dir", AckFsync)
	}
	if c.SegmentBytes <= 0 {
		c.SegmentBytes = 64 << 20
	}
	if c.SegmentBytes < int64(2*c.MaxBodyBytes+64) {
		return fmt.Errorf("segments of %d bytes cannot hold a %d-byte usage: increase --segment-bytes", c.SegmentBytes, c.MaxBodyBytes)
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = 10 * time.Millisecond
	}
	if c.ReadTimeout <= 0 {
		c.ReadTimeout = 10 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 60 * time.Second
	}
	if c.MaxConns <= 0 {
		c.MaxConns = 256 * 1024
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.AccessLogSample < 0 {
		return fmt.Errorf("access log sample %d is negative: use 0 (off), 1 (every request) or N (one in N)", c.AccessLogSample)
	}
	if c.NATS.Enabled() {
		if c.DataDir == "" {
			return errors.New("scale-out mode (--nats) forwards the durable log: set --data-dir")
		}
		if err := c.NATS.SetDefaults(); err != nil {
			return err
		}
	}
	if c.TLS != nil {
		t := c.TLS.Clone()
		if len(t.NextProtos) == 0 {
			t.NextProtos = []string{"http/1.1"}
		}
		if t.MinVersion == 0 {
			t.MinVersion = tls.VersionTLS12
		}
		if len(t.Certificates) == 0 && t.GetCertificate == nil && t.GetConfigForClient == nil {
			return errors.New("TLS configuration has no certificate: set Certificates or GetCertificate")
		}
		c.TLS = t
	}
	return nil
}

// Server serves the usage API.
type Server struct {
	cfg     Config
	log     *slog.Logger
	set     *shard.Set
	cache   *store.Cache
	http    *fasthttp.Server
	parsers usageParsers
	wal     *wal.Store // nil without a DataDir
	fsync   bool
	stop    chan struct{}
	bg      sync.WaitGroup

	reaper *reaper // the connections' timeouts
	meters *meters

	idem     *idempotency
	replays  atomic.Uint64 // requests answered from the idempotency cache
	stored   atomic.Uint64
	rejected [numReasons]atomic.Uint64
	panics   atomic.Uint64
	requests atomic.Uint64 // for access log sampling only
	closed   atomic.Bool
	ready    atomic.Bool // the log is recovered and the shards run

	// Scale-out mode (cluster.go); nil otherwise.
	nats *cluster.Conn
	fwd  *cluster.Forwarder

	// testHook, when set (by tests only), runs first in every request.
	testHook func(*fasthttp.RequestCtx)
}

// New returns a Server with its shards and drainers running. Call Shutdown
// to stop them, even if Serve is never called.
func New(cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, fsync: cfg.Ack == AckFsync, stop: make(chan struct{}), meters: newMeters()}
	s.idem = newIdempotency(cfg.IdempotencyBytes, cfg.IdempotencyWindow)
	s.cache = store.NewCache(cfg.CacheBytes, cfg.Shards)
	scfg := shard.Config{
		Shards:        cfg.Shards,
		RingBytes:     cfg.RingBytes,
		IDBlock:       cfg.IDBlock,
		FlushInterval: cfg.FlushInterval,
		Sink:          s.cache,
		Eager:         s.fsync,
		OnFlushError: func(i int, err error) {
			s.log.Error("log write failed: shard refuses writes until it recovers", "shard", i, "err", err)
		},
		OnRecover:    func(i int) { s.log.Info("log writable again", "shard", i) },
		OnLeaseError: func(err error) { s.log.Error("cannot lease ids", "err", err) },
	}
	if cfg.DataDir != "" {
		w, rec, err := wal.Open(wal.Options{
			Dir: cfg.DataDir, Shards: cfg.Shards, SegmentBytes: cfg.SegmentBytes,
			Sync: s.fsync, Repair: cfg.Repair, Logger: s.log,
			// Idempotency answers, logged as batch trailers.
			OnMeta: func(body []byte) { s.idem.remember(body) },
		})
		if err != nil {
			return nil, err
		}
		s.wal = w
		first := rec.LeaseBound
		if rec.MaxID+1 > first {
			first = rec.MaxID + 1
		}
		if first == 0 {
			first = 1
		}
		scfg.FirstID = first
		s.meters.initLog(rec)
		scfg.Sink = newDurableSink(w, s.cache, s.meters, s.fsync)
		scfg.LeaseIDs = w.Lease().Extend
		s.log.Info("recovered log", "dir", cfg.DataDir, "took", rec.Duration.String(),
			"records", rec.Records, "bytes", rec.Bytes, "segments", rec.Segments, "shards", rec.Shards,
			"truncated_bytes", rec.TruncatedBytes, "repaired_segments", rec.Repaired,
			"dropped_records", rec.DroppedRecords, "dropped_bytes", rec.DroppedBytes,
			"max_id", rec.MaxID, "lease_bound", rec.LeaseBound, "next_id_from", first)
		if rec.Repaired > 0 {
			s.log.Warn("damaged segments were moved aside", "segments", rec.Repaired, "dropped_records", rec.DroppedRecords)
		}
	}
	if cfg.NATS.Enabled() {
		if err := s.startCluster(&scfg); err != nil {
			_ = s.wal.Close()
			return nil, err
		}
	}
	if cfg.wrapSink != nil {
		scfg.Sink = cfg.wrapSink(scfg.Sink)
	}
	s.set = shard.New(scfg)
	s.startForwarding()
	s.meters.set.RegisterMetricsWriter(s.writeStats)
	if s.wal != nil && cfg.Retention > 0 {
		s.bg.Add(1)
		go s.retention()
	}
	// The connections' timeouts, with a clock that starts now, after the
	// log's recovery.
	s.reaper = newReaper(cfg.ReadTimeout, cfg.WriteTimeout, cfg.IdleTimeout)
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		s.reaper.run(s.stop)
	}()
	s.http = &fasthttp.Server{
		Handler:            s.Handler,
		ErrorHandler:       s.ErrorHandler,
		Name:               "busyapi",
		MaxRequestBodySize: cfg.MaxBodyBytes,
		HeaderReceived:     s.headerReceived,
		// No ReadTimeout, WriteTimeout or IdleTimeout: the reaper enforces
		// them (deadline.go), with the phases ConnState reports.
		ConnState:                    connState,
		Concurrency:                  cfg.MaxConns,
		DisablePreParseMultipartForm: true,
		// No clock read per request: only a sampled access log line
		// needs the request's time (Handler).
		LazyRequestTime: true,
		CloseOnShutdown: true,
		Logger:          fasthttpLogger{s.log},
	}
	s.ready.Store(true)
	return s, nil
}

// headerReceived lets batch bodies be larger than single usages.
func (s *Server) headerReceived(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
	if isBatchURI(h.RequestURI()) {
		return fasthttp.RequestConfig{MaxRequestBodySize: s.cfg.MaxBatchBytes}
	}
	return fasthttp.RequestConfig{}
}

// isBatchURI reports whether a request-target is the batch path, with or
// without a query.
func isBatchURI(uri []byte) bool {
	return len(uri) >= len(pathBatch) && string(uri[:len(pathBatch)]) == pathBatch &&
		(len(uri) == len(pathBatch) || uri[len(pathBatch)] == '?')
}

// Config returns the configuration in effect, with defaults applied.
func (s *Server) Config() Config { return s.cfg }

// Serve accepts connections on ln until Shutdown, over TLS with
// Config.TLS. It returns nil after Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	var l net.Listener = lingerListener{Listener: ln, reaper: s.reaper}
	if s.cfg.TLS != nil {
		// TLS over the lingerConn: tls.Conn reads, writes and closes
		// through it, under the reaper's timeouts (lingerConnOf finds it).
		l = tls.NewListener(l, s.cfg.TLS)
	}
	err := s.http.Serve(l)
	if s.closed.Load() {
		return nil
	}
	return err
}

// Shutdown stops accepting connections, lets in-flight requests finish,
// drains every ring into the store and stops the drainers. After it returns,
// every usage answered 201 is readable by GET. If ctx ends first, Shutdown
// still drains the rings but returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.closed.Swap(true) {
		return errors.New("server: already shut down")
	}
	err := s.http.ShutdownWithContext(ctx)
	if err != nil {
		// Out of time with requests still open: cut them now, since the
		// reaper stops with the rest.
		s.reaper.cutAll()
	}
	close(s.stop)
	s.bg.Wait()
	s.set.Close()
	if cerr := s.stopCluster(ctx); cerr != nil && err == nil {
		err = cerr
	}
	if s.wal != nil {
		if cerr := s.wal.Close(); cerr != nil {
			s.log.Error("cannot close the log", "err", cerr)
			if err == nil {
				err = cerr
			}
		}
	}
	return err
}

// retention deletes old segments every minute.
func (s *Server) retention() {
	defer s.bg.Done()
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		n, err := s.wal.ApplyRetention(s.cfg.Retention, s.forwardKeep())
		if err != nil {
			s.log.Error("retention failed", "err", err)
		} else if n > 0 {
			s.log.Info("retention deleted segments", "segments", n)
		}
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

// Stats are the server's counters; fill them with UpdateStats.
type Stats struct {
	Stored   uint64             // usages answered 201
	Replays  uint64             // requests answered again for their Idempotency-Key
	Rejected [numReasons]uint64 // requests refused, by reason
	Panics   uint64             // handler panics, answered 500
	Shard    shard.Stats
	Cache    store.CacheStats
	// Scale-out mode only: forwarding to the stream. (The round trips of
	// the cluster id source are Shard.LeaseRoundTrips.)
	Forward cluster.Stats
}

// UpdateStats fills st.
func (s *Server) UpdateStats(st *Stats) {
	st.Stored = s.stored.Load()
	st.Panics = s.panics.Load()
	st.Replays = s.replays.Load()
	for i := range s.rejected {
		st.Rejected[i] = s.rejected[i].Load()
	}
	st.Shard = shard.Stats{RingUsed: st.Shard.RingUsed}
	s.set.UpdateStats(&st.Shard)
	s.cache.UpdateStats(&st.Cache)
	if s.fwd != nil {
		s.fwd.UpdateStats(&st.Forward)
	}
}

// fasthttpLogger sends fasthttp's own messages (connection errors and the
// like, one per bad connection) to debug level, so garbage from clients
// cannot flood the log.
type fasthttpLogger struct{ l *slog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	if f.l.Enabled(context.Background(), slog.LevelDebug) {
		f.l.Debug(fmt.Sprintf(format, args...), "component", "fasthttp")
	}
}

// connState moves a connection's timeout phase with fasthttp's view of it.
func connState(c net.Conn, st fasthttp.ConnState) {
	phase := uint32(phaseActive)
	switch st {
	case fasthttp.StateActive:
	case fasthttp.StateIdle:
		phase = phaseIdle
	default:
		return
	}
	if lc := lingerConnOf(c); lc != nil {
		lc.enter(phase)
	}
}
