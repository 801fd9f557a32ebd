// Package loadgen is busyapi's load generator, behind `busyapi bench`: it
// POSTs usages to any busyapi-compatible server over keep-alive HTTP/1.1
// connections and reports throughput, status codes, connection errors,
// latency percentiles from an HDR histogram and whether any id was answered
// twice.
//
// Without a rate it runs closed loop: each connection sends its next
// request (or pipelined round of requests) as soon as the previous one is
// answered, at the server's maximum throughput. With a rate it runs open
// loop: each connection has a fixed schedule, request i being due at
// start + phase + i*connections/rate, the phases spreading the connections
// evenly over one interval. A pacer releases requests as they fall due, and
// a connection sends a released request as soon as it may (at once if it is
// idle, or, pipelined, if fewer than the pipeline depth are in flight).
// Latency is measured from the due time, not from the send time, so a
// server that stalls is charged for every request that fell due during the
// stall (coordinated omission is corrected).
//
// Requests are formatted before the run (realistic, varied usages or the
// lines of a payload file) and written as raw bytes; responses are read
// with a minimal HTTP/1.1 parser. Sending and reading allocate nothing.
package loadgen

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// Config is what a run does.
type Config struct {
	// URL is the server's base URL: http://HOST[:PORT][/PREFIX]. Requests
	// go to PREFIX/api/usages, or PREFIX/api/usages/batch with Batch > 0.
	URL string
	// Rate is the requests per second to send, open loop; 0 runs closed
	// loop at the server's pace.
	Rate float64
	// Connections is the number of keep-alive connections.
	Connections int
	// Duration is the measured time; Warmup the time before it whose
	// requests are sent but not measured.
	Duration, Warmup time.Duration
	// Pipeline is the most requests in flight on one connection
	// (HTTP/1.1 pipelining); 1 waits for each answer.
	Pipeline int
	// Batch > 0 posts Batch usages per request, as NDJSON, to
	// /api/usages/batch; 0 posts one usage per request to /api/usages.
	Batch int
	// Payload, if set, are the usages to send (JSON objects, cycled);
	// otherwise usages are generated from Seed.
	Payload [][]byte
	Seed    uint64
	// Headers are extra request header lines ("Name: value"), e.g. an
	// Authorization header for a server that wants a token.
	Headers []string
	// Timeout is the longest wait for an answer; longer is an error.
	Timeout time.Duration
	// Drain is how long, after the schedule ends, open-loop connections
	// that fell behind may still send what was due.
	Drain time.Duration
	// DialConcurrency is how many connections are dialled at once before
	// the run.
	DialConcurrency int
	// Pacer is how the open-loop pacer sleeps: "timerfd" (Linux,
	// microsecond precision) or "sleep" (time.Sleep).
	Pacer string
	// PID, if set, is the server's process: its peak RSS and CPU use are
	// reported.
	PID int
	// Progress, if set, is called once a second with the last second's
	// numbers.
	Progress func(Progress)
}

// DefaultConfig returns the defaults of `busyapi bench`.
func DefaultConfig() Config {
	return Config{
		URL:             "http://127.0.0.1:3000",
		Connections:     64,
		Duration:        10 * time.Second,
		Warmup:          time.Second,
		Pipeline:        1,
		Seed:            1,
		Timeout:         10 * time.Second,
		Drain:           10 * time.Second,
		DialConcurrency: 64,
		Pacer:           "timerfd",
	}
}

// target is where the requests go.
type target struct {
	addr string // host:port to dial
	host string // Host header
	path string
}

func (c *Config) validate() (*target, error) {
	switch {
	case c.Rate < 0:
		return nil, errors.New("the rate must not be negative (0 runs closed loop)")
	case c.Connections <= 0:
		return nil, errors.New("connections must be at least 1")
	case c.Duration <= 0:
		return nil, errors.New("the duration must be positive")
	case c.Warmup < 0 || c.Drain < 0:
		return nil, errors.New("warmup and drain must not be negative")
	case c.Pipeline < 1:
		return nil, errors.New("the pipeline depth must be at least 1")
	case c.Batch < 0:
		return nil, errors.New("the batch size must not be negative (0 posts single usages)")
	case c.Timeout <= 0:
		return nil, errors.New("the timeout must be positive")
	case c.DialConcurrency <= 0:
		return nil, errors.New("dial concurrency must be at least 1")
	case c.Pacer != "timerfd" && c.Pacer != "sleep":
		return nil, fmt.Errorf("pacer %q: use timerfd or sleep", c.Pacer)
	}
	for _, h := range c.Headers {
		name, _, ok := strings.Cut(h, ":")
		if !ok || strings.TrimSpace(name) == "" || strings.ContainsAny(h, "\r\n") || strings.ContainsAny(name, " \t") {
			return nil, fmt.Errorf("header %q: use \"Name: value\" on one line", h)
		}
		switch strings.ToLower(name) {
		case "host", "content-length", "transfer-encoding", "connection":
			return nil, fmt.Errorf("header %q: the generator sets %s itself", h, name)
		}
	}
	u, err := url.Parse(c.URL)
	if err != nil {
		return nil, fmt.Errorf("url %q: %w", c.URL, err)
	}
	if u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("url %q: use http://HOST[:PORT] (https is not supported)", c.URL)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("url %q: give only the scheme, host, port and an optional path prefix", c.URL)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	path := strings.TrimSuffix(u.EscapedPath(), "/") + "/api/usages"
	if c.Batch > 0 {
		path += "/batch"
	}
	return &target{addr: addr, host: u.Host, path: path}, nil
}
