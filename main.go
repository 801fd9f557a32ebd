// Command busyapi is an HTTP ingest server for usage events, compatible with
// the original busyapi Express sample: POST /api/usages answers 201 {"id":N}.
//
// `busyapi bench` is its load generator (package loadgen): it drives any
// busyapi-compatible server and reports what it measured.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/busyapi/busyapi/auth"
	"github.com/busyapi/busyapi/cluster"
	"github.com/busyapi/busyapi/loadgen"
	"github.com/busyapi/busyapi/server"
	"github.com/busyapi/busyapi/wal"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "bench" {
		os.Exit(loadgen.Main(os.Args[2:], os.Stdout, os.Stderr))
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "busyapi:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("busyapi", flag.ContinueOnError)
	var cfg server.Config
	cfg.MaxBodyBytes = 16 << 10
	cfg.RingBytes = 4 << 20
	cfg.CacheBytes = 64 << 20
	addr := fs.String("addr", "", "listen address HOST:PORT, or unix:/path/to.sock (default :3000, or :$PORT)")
	fs.Var((*byteSize)(&cfg.MaxBodyBytes), "max-body", "largest request body; larger ones get 413 (e.g. 16KiB)")
	cfg.MaxBatchBytes = 4 << 20
	fs.IntVar(&cfg.MaxBatchItems, "max-batch-items", 10000, "most usages in one POST /api/usages/batch; more get 413")
	fs.Var((*byteSize)(&cfg.MaxBatchBytes), "max-batch-bytes", "largest batch body after decompression; larger ones get 413 (e.g. 4MiB)")
	fs.DurationVar(&cfg.IdempotencyWindow, "idempotency-window", 24*time.Hour, "how long an Idempotency-Key is remembered (kept in memory, rebuilt from the log on start)")
	fs.Var((*byteSize)(&cfg.RingBytes), "ring-bytes", "capacity of each shard's ring; a full ring answers 503 (e.g. 4MiB)")
	fs.IntVar(&cfg.Shards, "shards", 0, "number of shards (default and minimum GOMAXPROCS)")
	fs.Uint64Var(&cfg.IDBlock, "id-block", 4096, "ids a shard reserves at a time")
	fs.Var((*byteSize)(&cfg.CacheBytes), "cache-bytes", "size of the in-memory usage store; oldest usages are evicted (e.g. 64MiB)")
	fs.StringVar(&cfg.Ack, "ack", server.AckFsync, "when to answer 201: fsync (once the usage is fsynced in the log) or memory (once it is in the ring)")
	fs.DurationVar(&cfg.FlushInterval, "flush-interval", 10*time.Millisecond, "with --ack memory, longest a usage waits before it is written to the log")
	fs.StringVar(&cfg.DataDir, "data-dir", "data", "directory of the durable log (created if missing, locked while in use)")
	var segBytes int = 64 << 20
	fs.Var((*byteSize)(&segBytes), "segment-bytes", "roll log segment files at this size (e.g. 64MiB)")
	fs.DurationVar(&cfg.Retention, "retention", 0, "delete whole log segments older than this (0 keeps everything); unexported segments are kept")
	fs.BoolVar(&cfg.Repair, "repair", false, "move damaged log segments aside at start, keeping their valid prefix, instead of refusing to start")
	fs.DurationVar(&cfg.ReadTimeout, "read-timeout", 10*time.Second, "time allowed to read one whole request")
	fs.DurationVar(&cfg.WriteTimeout, "write-timeout", 10*time.Second, "time allowed to write one response")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", 60*time.Second, "keep-alive connections idle for longer are closed")
	fs.IntVar(&cfg.MaxConns, "max-conns", 256*1024, "most concurrent connections")
	shutdownTimeout := fs.Duration("shutdown-timeout", 10*time.Second, "how long shutdown waits for in-flight requests")
	pprofAddr := fs.String("pprof-addr", "", "serve Go's /debug/pprof on this address (e.g. 127.0.0.1:6060); off by default")
	tokensFile := fs.String("tokens", "", "file of bearer tokens, one \"write <token>\" or \"read <token>\" a line; re-read on SIGHUP (default: no authentication)")
	tlsCert := fs.String("tls-cert", "", "PEM certificate (chain) file: serve HTTPS (needs --tls-key)")
	tlsKey := fs.String("tls-key", "", "PEM private key file of --tls-cert")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	fs.IntVar(&cfg.AccessLogSample, "access-log-sample", 0, "log one request in N (method, path, status, duration, remote address): 0 = off, 1 = every request")
	fs.StringVar(&cfg.NATS.URLs, "nats", "", "scale-out mode: NATS server URLs, comma-separated (e.g. nats://10.0.0.1:4222,nats://10.0.0.2:4222); every usage is forwarded to a JetStream stream")
	fs.StringVar(&cfg.NATS.CredsFile, "nats-creds", "", "NATS credentials file (JWT and seed); optional")
	fs.StringVar(&cfg.NATS.Stream, "nats-stream", cluster.DefaultStream, "JetStream stream the usages are forwarded to")
	fs.StringVar(&cfg.NATS.Subject, "nats-subject", cluster.DefaultSubject, "subject the usages are published on (the stream must take it)")
	fs.IntVar(&cfg.NATS.Replicas, "nats-replicas", 1, "replicas of the stream when busyapi creates it (1 to 5)")
	fs.BoolVar(&cfg.NATS.NoCreate, "nats-no-create", false, "never create the stream: forwarding waits, and says why, until it exists")
	fs.StringVar(&cfg.NATS.IDBucket, "nats-id-bucket", cluster.DefaultIDBucket, "JetStream key-value bucket cluster-wide id blocks are leased from")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var log *slog.Logger
	switch *logFormat {
	case "text":
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	case "json":
		log = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	default:
		return fmt.Errorf("unknown --log-format %q: use text or json", *logFormat)
	}
	cfg.Logger = log
	if cfg.AccessLogSample < 0 {
		return fmt.Errorf("--access-log-sample %d is negative: use 0 (off), 1 (every request) or N (one in N)", cfg.AccessLogSample)
	}
	if (*tlsCert == "") != (*tlsKey == "") {
		return errors.New("--tls-cert and --tls-key go together: set both to serve HTTPS, or neither")
	}
	if *tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
		if err != nil {
			return fmt.Errorf("cannot load --tls-cert and --tls-key: %w", err)
		}
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	if *tokensFile != "" {
		t, err := auth.Load(*tokensFile)
		if err != nil {
			return err
		}
		cfg.Tokens = t
		r, w := t.Count()
		log.Info("bearer tokens required", "file", t.Path(), "write_tokens", w, "read_tokens", r)
	}
	cfg.SegmentBytes = int64(segBytes)
	if cfg.Ack == server.AckFsync && cfg.DataDir != "" && !wal.AsyncSync() {
		// Without Linux AIO a drainer in fdatasync holds its P until
		// sysmon takes it back, and with one P nothing polls the network
		// meanwhile: measured on one core at 1,000 connections, 4.4k req/s
		// with GOMAXPROCS=1 and 85k with 2. So run two Ps per CPU then.
		if n := runtime.NumCPU(); runtime.GOMAXPROCS(0) < 2*n && os.Getenv("GOMAXPROCS") == "" {
			runtime.GOMAXPROCS(2 * n)
		}
	}
	if *pprofAddr != "" {
		go func() {
			log.Info("pprof listening", "addr", *pprofAddr)
			if err := http.ListenAndServe(*pprofAddr, nil); err != nil {
				log.Error("pprof", "err", err)
			}
		}()
	}

	listen := *addr
	if listen == "" {
		port := os.Getenv("PORT")
		if port == "" {
			port = "3000"
		}
		listen = ":" + port
	}
	// Take SIGHUP (a reload) from now on: its default action would kill the
	// process during recovery. It is handled once the server runs.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP)
	defer signal.Stop(sig)
	srv, err := server.New(cfg)
	if err != nil {
		return err
	}
	ln, err := srv.Listen(listen)
	if err != nil {
		_ = srv.Shutdown(context.Background())
		return err
	}
	c := srv.Config()
	log.Info("busyapi listening", "addr", ln.Addr().String(), "tls", c.TLS != nil, "auth", c.Tokens != nil, "shards", c.Shards,
		"ring_bytes", c.RingBytes, "cache_bytes", c.CacheBytes, "ack", c.Ack, "max_body", c.MaxBodyBytes,
		"data_dir", c.DataDir, "nats", c.NATS.Enabled())

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	for stop := false; !stop; {
		select {
		case err := <-errc:
			_ = srv.Shutdown(context.Background())
			return fmt.Errorf("serve: %w", err)
		case s := <-sig:
			if s == syscall.SIGHUP {
				reload(log, cfg.Tokens)
				continue
			}
			log.Info("shutting down", "signal", s.String())
			stop = true
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *shutdownTimeout)
	defer cancel()
	start := time.Now()
	err = srv.Shutdown(ctx)
	var st server.Stats
	srv.UpdateStats(&st)
	log.Info("stopped", "stored", st.Stored, "drained", st.Shard.Drained, "batches", st.Shard.Batches,
		"took", time.Since(start).String())
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

// reload re-reads the tokens file on SIGHUP. A bad file keeps the tokens in
// effect.
func reload(log *slog.Logger, tokens *auth.Tokens) {
	if tokens == nil {
		log.Info("SIGHUP: nothing to reload (no --tokens)")
		return
	}
	if err := tokens.Reload(); err != nil {
		log.Error("SIGHUP: cannot reload tokens: keeping the previous ones", "err", err)
		return
	}
	r, w := tokens.Count()
	log.Info("SIGHUP: reloaded tokens", "file", tokens.Path(), "write_tokens", w, "read_tokens", r)
}

// byteSize is a flag.Value for sizes such as 16384, 16KiB, 4MiB or 1GB.
type byteSize int

func (b *byteSize) String() string { return strconv.Itoa(int(*b)) }

func (b *byteSize) Set(s string) error {
	units := []struct {
		suffix string
		mult   int64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
		{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000},
		{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1},
	}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n <= 0 || n > (1<<40)/mult {
		return fmt.Errorf("invalid size %q: use a positive number of bytes, optionally with KiB, MiB or GiB", s)
	}
	*b = byteSize(n * mult)
	return nil
}
