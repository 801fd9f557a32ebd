package loadgen

import (
	"sync"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies are recorded in nanoseconds, 1 ns to 1 hour, with 3
// significant digits (HdrHistogram: any value is within 0.1% of what is
// recorded). Longer latencies are recorded as 1 hour.
const (
	histMax    = int64(time.Hour)
	histDigits = 3
)

func newHist() *hdr.Histogram { return hdr.New(1, histMax, histDigits) }

// Kinds of connection errors, indexes of counters.errors.
const (
	errDial = iota
	errWrite
	errRead
	errTimeout
	errClosed
	errProtocol
	numErrKinds
)

var errKindNames = [numErrKinds]string{"dial", "write", "read", "timeout", "closed", "protocol"}

// counters are a run's counts. Connections count into their own copy and
// add it to their shard's after each round of requests.
type counters struct {
	sent      uint64 // requests written, warmup included
	responses uint64 // responses read, warmup included
	ok        uint64 // 2xx responses, warmup included
	lost      uint64 // requests written or due that got no response because of a connection error

	winSent      uint64 // requests written during the measured window
	winResponses uint64 // responses read during the measured window, whenever sent
	winOK        uint64 // of those, 2xx
	winUsages    uint64 // usages in the 2xx answers read during the window

	measured uint64 // requests due (open loop) or sent (closed loop) in the measured window
	late     uint64 // open loop: measured requests sent after their due time because the connection was busy
	unsent   uint64 // open loop: measured requests not sent by the drain deadline

	idsAbsent uint64 // 2xx answers with fewer ids than usages sent

	errors [numErrKinds]uint64 // connection errors by kind
}

func (c *counters) add(o *counters) {
	c.sent += o.sent
	c.responses += o.responses
	c.ok += o.ok
	c.lost += o.lost
	c.winSent += o.winSent
	c.winResponses += o.winResponses
	c.winOK += o.winOK
	c.winUsages += o.winUsages
	c.measured += o.measured
	c.late += o.late
	c.unsent += o.unsent
	c.idsAbsent += o.idsAbsent
	for i := range c.errors {
		c.errors[i] += o.errors[i]
	}
}

func (c *counters) errorCount() (n uint64) {
	for _, e := range c.errors {
		n += e
	}
	return n
}

// bad counts the non-2xx answers and the connection errors.
func (c *counters) bad() uint64 { return c.responses - c.ok + c.errorCount() }

// local is what a connection has measured since it last flushed to its
// shard: at most one round of pipeline requests, so its slices, allocated
// with that capacity, never grow.
type local struct {
	lat      []int64  // latency of every response (for the per-second series)
	measured []int64  // latency of the measured requests' responses
	lag      []int64  // open loop: due time to write, requests sent while the connection was idle
	codes    []uint16 // status codes; 0 for codes outside 100-599
	c        counters
}

func newLocal(pipeline int) local {
	return local{
		lat:      make([]int64, 0, pipeline),
		measured: make([]int64, 0, pipeline),
		lag:      make([]int64, 0, pipeline),
		codes:    make([]uint16, 0, pipeline),
	}
}

// shard holds the counts and histograms of some connections, behind a
// mutex: a connection takes it once per round of requests, and the
// collector once a second.
type shard struct {
	mu       sync.Mutex
	interval *hdr.Histogram // every response since the last tick
	total    *hdr.Histogram // measured requests
	lag      *hdr.Histogram // generator lag
	max      int64          // exact maximum of total
	status   [600]uint64
	c        counters
	_        [64]byte // keep shards' hot fields on their own cache lines
}

func newShard() *shard {
	return &shard{interval: newHist(), total: newHist(), lag: newHist()}
}

func clampHist(v int64) int64 { return min(max(v, 1), histMax) }

func (s *shard) flush(l *local) {
	s.mu.Lock()
	for _, v := range l.lat {
		_ = s.interval.RecordValue(clampHist(v))
	}
	for _, v := range l.measured {
		_ = s.total.RecordValue(clampHist(v))
		s.max = max(s.max, v)
	}
	for _, v := range l.lag {
		_ = s.lag.RecordValue(clampHist(v))
	}
	for _, code := range l.codes {
		s.status[code]++
	}
	s.c.add(&l.c)
	s.mu.Unlock()
	l.lat, l.measured, l.lag, l.codes = l.lat[:0], l.measured[:0], l.lag[:0], l.codes[:0]
	l.c = counters{}
}

// Second is one per-second bucket of the run: what was sent, what was
// answered (by the time the answer was read) and its latency percentiles
// in milliseconds.
type Second struct {
	T         float64 `json:"t"`     // seconds since the schedule started, at the end of the bucket
	Phase     string  `json:"phase"` // warmup, measure or drain
	Sent      float64 `json:"sent_per_s"`
	Responses float64 `json:"responses_per_s"`
	OK        float64 `json:"ok_per_s"`
	Errors    float64 `json:"errors_per_s"` // non-2xx answers and connection errors
	Usages    float64 `json:"usages_per_s"`
	P50       float64 `json:"p50_ms"`
	P90       float64 `json:"p90_ms"`
	P99       float64 `json:"p99_ms"`
	P999      float64 `json:"p99_9_ms"`
	Max       float64 `json:"max_ms"`
}

// collector turns the shards into per-second buckets.
type collector struct {
	shards []*shard
	spare  *hdr.Histogram
	sec    *hdr.Histogram
	last   counters
	lastT  int64
	usages int
	series []Second
}

func newCollector(shards []*shard, usages int, t0 int64) *collector {
	return &collector{shards: shards, spare: newHist(), sec: newHist(), lastT: t0, usages: usages}
}

// tick closes the bucket that ends at now: swaps each shard's interval
// histogram out, merges it, and takes the counters' difference.
func (c *collector) tick(now, t0 int64, phase string) Second {
	var sum counters
	for _, s := range c.shards {
		s.mu.Lock()
		s.interval, c.spare = c.spare, s.interval
		sum.add(&s.c)
		s.mu.Unlock()
		c.sec.Merge(c.spare)
		c.spare.Reset()
	}
	secs := float64(now-c.lastT) / 1e9
	if secs <= 0 {
		secs = 1
	}
	per := func(a, b uint64) float64 { return float64(a-b) / secs }
	b := Second{
		T:         float64(now-t0) / 1e9,
		Phase:     phase,
		Sent:      per(sum.sent, c.last.sent),
		Responses: per(sum.responses, c.last.responses),
		OK:        per(sum.ok, c.last.ok),
		Errors:    per(sum.bad(), c.last.bad()),
		Usages:    per(sum.ok, c.last.ok) * float64(c.usages),
	}
	l := summarize(c.sec, 0)
	b.P50, b.P90, b.P99, b.P999, b.Max = l.P50, l.P90, l.P99, l.P999, l.Max
	c.sec.Reset()
	c.last, c.lastT = sum, now
	c.series = append(c.series, b)
	return b
}

func ms(ns int64) float64 { return float64(ns) / 1e6 }
