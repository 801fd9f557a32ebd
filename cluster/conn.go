// Package cluster is busyapi's scale-out mode on NATS JetStream: the
// connection to the NATS servers and the Forwarder, which publishes every
// usage of the local log to a JetStream stream exactly once.
//
// The local log is the outbox. The Forwarder reads it from a durable cursor
// (one log position per shard, in the data directory), publishes in batches
// with asynchronous acks, and moves the cursor only past usages the stream
// has acknowledged. Each message carries the usage id as its Nats-Msg-Id, so
// the stream's duplicate window drops what a crash or a lost ack makes it
// publish again. Ingest never waits for NATS: while NATS is away the log
// buffers, and the backlog drains when it returns.
package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Defaults of Config.
const (
	DefaultStream          = "USAGES"
	DefaultSubject         = "busyapi.usages"
	DefaultIDBucket        = "busyapi_ids"
	DefaultDuplicateWindow = 2 * time.Minute
)

// Config configures scale-out mode. The zero value is off.
type Config struct {
	// URLs are the NATS servers, comma-separated (nats://host:4222,...).
	// Empty: scale-out mode is off.
	URLs string
	// CredsFile is a NATS credentials file (JWT and seed); optional.
	CredsFile string
	// Stream is the JetStream stream usages are published to; default
	// USAGES.
	Stream string
	// Subject is the subject usages are published on; default
	// busyapi.usages. The stream must take it.
	Subject string
	// Replicas of the stream when busyapi creates it; default 1.
	Replicas int
	// NoCreate: never create the stream; forwarding waits (and reports
	// why) until it exists.
	NoCreate bool
	// DuplicateWindow of the stream when busyapi creates it; default 2
	// minutes. A usage published again within it is dropped by the stream.
	DuplicateWindow time.Duration
	// IDBucket is the JetStream key-value bucket cluster-wide id blocks are
	// leased from; default busyapi_ids.
	IDBucket string
	// Name is the connection's name, shown by the NATS servers; default
	// "busyapi <hostname> <pid>".
	Name string
}

// Enabled reports whether scale-out mode is on.
func (c *Config) Enabled() bool { return strings.TrimSpace(c.URLs) != "" }

// SetDefaults fills in defaults and checks c.
func (c *Config) SetDefaults() error {
	if c.Stream == "" {
		c.Stream = DefaultStream
	}
	if c.Subject == "" {
		c.Subject = DefaultSubject
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.DuplicateWindow <= 0 {
		c.DuplicateWindow = DefaultDuplicateWindow
	}
	if c.IDBucket == "" {
		c.IDBucket = DefaultIDBucket
	}
	if c.Name == "" {
		host, _ := os.Hostname()
		c.Name = fmt.Sprintf("busyapi %s %d", host, os.Getpid())
	}
	switch {
	case c.Replicas < 1 || c.Replicas > 5:
		return fmt.Errorf("--nats-replicas %d: use 1 to 5 (JetStream's limit)", c.Replicas)
	case strings.ContainsAny(c.Stream, " \t\r\n.*>/\\"):
		return fmt.Errorf("--nats-stream %q: a stream name has no spaces, dots, wildcards or slashes", c.Stream)
	case strings.ContainsAny(c.Subject, " \t\r\n*>") || strings.HasPrefix(c.Subject, ".") ||
		strings.HasSuffix(c.Subject, ".") || strings.Contains(c.Subject, ".."):
		return fmt.Errorf("--nats-subject %q: use a literal subject such as busyapi.usages (no wildcards or empty tokens)", c.Subject)
	case strings.ContainsAny(c.IDBucket, " \t\r\n.*>/\\"):
		return fmt.Errorf("--nats-id-bucket %q: a bucket name has no spaces, dots, wildcards or slashes", c.IDBucket)
	}
	if c.CredsFile != "" {
		if _, err := os.ReadFile(c.CredsFile); err != nil {
			return fmt.Errorf("cannot read --nats-creds: %w", err)
		}
	}
	return nil
}

// Conn is an instance's connection to NATS. It reconnects forever, with
// backoff, and never blocks its users while NATS is away: publishes fail at
// once instead of being buffered (the log is the buffer).
type Conn struct {
	NC  *nats.Conn
	cfg Config
	log *slog.Logger
}

// Connection timeouts.
const (
	dialTimeout     = 2 * time.Second
	pingInterval    = 5 * time.Second // with 3 outstanding: a dead server is noticed within 15 s
	reconnectMin    = 100 * time.Millisecond
	reconnectMax    = 2 * time.Second
	apiTimeout      = 5 * time.Second // JetStream API requests (stream lookup and creation)
	ackTimeout      = 5 * time.Second // one published message's ack
	maxBatch        = 4096            // usages in one batch
	maxBatchBytes   = 2 << 20         // bodies of one batch
	pipeline        = 4               // batches in flight: at most 16384 usages waiting for their acks
	flusherTimeout  = 5 * time.Second
	maxReconnectExp = 5 // reconnectMin << 5 > reconnectMax
)

// Dial connects to cfg.URLs (cfg with defaults applied). It does not wait
// for a server: if none answers, the connection keeps trying in the
// background, forever, with exponential backoff (100 ms to 2 s, jittered).
func Dial(cfg Config, log *slog.Logger) (*Conn, error) {
	if log == nil {
		log = slog.Default()
	}
	c := &Conn{cfg: cfg, log: log}
	var urls []string
	for _, u := range strings.Split(cfg.URLs, ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, u)
		}
	}
	if len(urls) == 0 {
		return nil, errors.New("--nats: give at least one NATS URL, e.g. nats://127.0.0.1:4222")
	}
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.Timeout(dialTimeout),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.CustomReconnectDelay(reconnectDelay),
		nats.ReconnectBufSize(-1), // fail publishes while disconnected: the log buffers
		nats.PingInterval(pingInterval),
		nats.MaxPingsOutstanding(3),
		nats.FlusherTimeout(flusherTimeout),
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.Info("connected to NATS", "url", nc.ConnectedUrlRedacted(), "server", nc.ConnectedServerName())
		}),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if err != nil {
				log.Warn("disconnected from NATS: reconnecting; usages wait in the log", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("reconnected to NATS", "url", nc.ConnectedUrlRedacted(), "server", nc.ConnectedServerName())
		}),
		nats.ReconnectErrHandler(func(nc *nats.Conn, err error) {
			log.Debug("NATS reconnect attempt failed", "err", err)
		}),
		nats.ErrorHandler(func(nc *nats.Conn, sub *nats.Subscription, err error) {
			log.Warn("NATS error", "err", err)
		}),
	}
	if cfg.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	nc, err := nats.Connect(strings.Join(urls, ","), opts...)
	if err != nil {
		return nil, fmt.Errorf("cannot set up the NATS connection: %w", err)
	}
	c.NC = nc
	return c, nil
}

// reconnectDelay is the wait before reconnect attempt n (after trying every
// server once): 100 ms doubling up to 2 s, plus up to a quarter of jitter so
// that instances restarted together do not reconnect in step.
func reconnectDelay(attempts int) time.Duration {
	d := reconnectMax
	if attempts < maxReconnectExp {
		d = min(reconnectMin<<attempts, reconnectMax)
	}
	return d + rand.N(d/4+1)
}

// Connected reports whether the connection is up.
func (c *Conn) Connected() bool { return c.NC.IsConnected() }

// JetStream returns a JetStream context on the connection, with busyapi's
// timeouts.
func (c *Conn) JetStream() (jetstream.JetStream, error) {
	return jetstream.New(c.NC, jetstream.WithDefaultTimeout(apiTimeout))
}

// Config returns the configuration the connection was made with.
func (c *Conn) Config() Config { return c.cfg }

// Close closes the connection.
func (c *Conn) Close() { c.NC.Close() }
