package loadgen

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// Progress is what Config.Progress is told once a second.
type Progress struct {
	Elapsed time.Duration // since the schedule started
	Total   time.Duration // warmup + duration
	Phase   string        // warmup, measure or drain
	Last    Second        // the last second
	Sent    uint64        // requests sent so far
	Answers uint64        // responses read so far
	Errors  uint64        // non-2xx answers and connection errors so far
}

// Run runs the load described by cfg and returns what it measured.
// Cancelling ctx stops the run early: requests in flight are still read,
// and the result says it was interrupted. An error means the run could
// not start: a bad Config, or no connection could be made.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	t, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	r := &runner{
		cfg:    &cfg,
		t:      t,
		ring:   newRing(t.host, t.path, cfg.Headers, cfg.Batch, cfg.Pipeline, cfg.Payload, cfg.Seed),
		batch:  cfg.Batch > 0,
		usages: max(cfg.Batch, 1),
		open:   cfg.Rate > 0,
	}
	if r.open {
		r.interval = float64(cfg.Connections) * 1e9 / cfg.Rate
	}
	nShards := min(cfg.Connections, 4*runtime.GOMAXPROCS(0))
	r.shards = make([]*shard, nShards)
	for i := range r.shards {
		r.shards[i] = newShard()
	}
	// The read buffer holds a whole pipelined round of answers, or a batch
	// answer of 20 bytes an id; larger answers are copied out of it.
	r.bufSize = min(max(4096, cfg.Pipeline*512, r.usages*20+1024), 1<<20)

	// Dial every connection first, a few at a time.
	conns := make([]*conn, cfg.Connections)
	order := rand.Perm(cfg.Connections)
	dialStart := time.Now()
	var established atomic.Int64
	var firstErr atomic.Value
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(cfg.DialConcurrency, cfg.Connections) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				k := &conn{
					r:    r,
					sh:   r.shards[i%nShards],
					k:    (i * 7919) % r.ring.n,
					l:    newLocal(cfg.Pipeline),
					bell: make(chan struct{}, 1),
				}
				k.phase = int64((float64(order[i]) + rand.Float64()) / float64(cfg.Connections) * r.interval)
				var err error
				for attempt := 0; attempt < 3; attempt++ {
					if err = k.dial(); err == nil {
						established.Add(1)
						break
					}
					time.Sleep(50 * time.Millisecond << attempt)
				}
				if err != nil {
					k.fail(&k.l, err, errDial, 0)
					firstErr.CompareAndSwap(nil, err)
				}
				conns[i] = k
			}
		}()
	}
	for i := range conns {
		work <- i
	}
	close(work)
	wg.Wait()
	dialTime := time.Since(dialStart)
	if established.Load() == 0 {
		return nil, fmt.Errorf("cannot connect to %s: %v", t.addr, firstErr.Load())
	}

	var w *waiter
	if r.open {
		if w, err = newWaiter(cfg.Pacer == "timerfd"); err != nil {
			return nil, err
		}
		defer w.close()
	}
	// Start the schedule once every goroutine has had time to park.
	r.t0 = mono() + int64(100*time.Millisecond)
	r.measureStart = r.t0 + int64(cfg.Warmup)
	r.end = r.measureStart + int64(cfg.Duration)
	r.stopAt = r.end
	if r.open {
		r.stopAt += int64(cfg.Drain)
	}
	r.winEnd.Store(r.end)

	finished := make(chan struct{})
	var bg sync.WaitGroup
	// Interruption: stop the schedule and the window now.
	bg.Add(1)
	go func() {
		defer bg.Done()
		select {
		case <-ctx.Done():
			r.winEnd.Store(min(r.end, max(mono(), r.measureStart)))
			r.halt.Store(true)
			for _, k := range conns {
				select {
				case k.bell <- struct{}{}:
				default:
				}
			}
		case <-finished:
		}
	}()
	// CPU use during the measured window.
	var cpuStart, cpuEnd cpuTimes
	bg.Add(1)
	go func() {
		defer bg.Done()
		if !sleepUntil(r.measureStart, finished) {
			return
		}
		cpuStart = readCPU(cfg.PID)
		sleepUntil(r.winEnd.Load(), finished)
		cpuEnd = readCPU(cfg.PID)
	}()
	// The per-second buckets and the progress.
	col := newCollector(r.shards, r.usages, r.t0)
	phase := func(now int64) string {
		switch {
		case now <= r.measureStart && cfg.Warmup > 0:
			return "warmup"
		case now <= r.winEnd.Load()+int64(50*time.Millisecond):
			return "measure"
		}
		return "drain"
	}
	tick := func(now int64) {
		s := col.tick(now, r.t0, phase(now))
		if cfg.Progress != nil {
			c := &col.last
			cfg.Progress(Progress{
				Elapsed: time.Duration(now - r.t0),
				Total:   cfg.Warmup + cfg.Duration,
				Phase:   s.Phase,
				Last:    s,
				Sent:    c.sent,
				Answers: c.responses,
				Errors:  c.bad(),
			})
		}
	}
	bg.Add(1)
	go func() {
		defer bg.Done()
		for n := int64(1); ; n++ {
			if !sleepUntil(r.t0+n*int64(time.Second), finished) {
				return
			}
			tick(mono())
		}
	}()

	for _, k := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch {
			case !r.open:
				k.runClosed()
			case cfg.Pipeline == 1:
				k.runOpen()
			default:
				k.runOpenPipelined()
			}
			k.drop()
		}()
	}
	if r.open {
		byPhase := slices.Clone(conns)
		slices.SortFunc(byPhase, func(a, b *conn) int { return cmp.Compare(a.phase, b.phase) })
		r.pace(byPhase, w)
	}
	wg.Wait()
	close(finished)
	bg.Wait()
	if now := mono(); now-col.lastT > int64(10*time.Millisecond) || len(col.series) == 0 {
		tick(now)
	}
	return r.result(conns, int(established.Load()), dialTime, cpuBetween(cpuStart, cpuEnd), col.series), nil
}

// sleepUntil sleeps until the mono time t; false if stop was closed first.
func sleepUntil(t int64, stop <-chan struct{}) bool {
	d := t - mono()
	if d <= 0 {
		select {
		case <-stop:
			return false
		default:
			return true
		}
	}
	tm := time.NewTimer(time.Duration(d))
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-stop:
		return false
	}
}

// pace releases the connections' requests as they fall due, in due order;
// conns are sorted by phase. A released request waits in its connection's
// count until the connection may send it, so the pacer never waits for a
// connection: the schedule does not bend to the server.
func (r *runner) pace(conns []*conn, w *waiter) {
	const slice = int64(100 * time.Millisecond) // longest sleep between checks for a halt
	for i := 0; ; i++ {
		released := false
		for _, k := range conns {
			due := r.due(k.phase, i)
			if due >= r.end {
				break
			}
			for due-mono() > slice && !r.halt.Load() {
				w.wait(mono() + slice)
			}
			w.wait(due)
			if r.halt.Load() {
				return
			}
			k.released.Add(1)
			select {
			case k.bell <- struct{}{}:
			default:
			}
			released = true
		}
		if !released {
			return
		}
	}
}

// result sums up the run.
func (r *runner) result(conns []*conn, established int, dialTime time.Duration, cpu CPUUse, series []Second) *Result {
	cfg := r.cfg
	var c counters
	var status [600]uint64
	total, lag := newHist(), newHist()
	var maxLat int64
	for _, s := range r.shards {
		c.add(&s.c)
		for i, n := range s.status {
			status[i] += n
		}
		total.Merge(s.total)
		lag.Merge(s.lag)
		maxLat = max(maxLat, s.max)
	}
	window := time.Duration(r.winEnd.Load() - r.measureStart)
	res := &Result{
		URL:              "http://" + r.t.host + r.t.path,
		Mode:             "closed loop",
		Connections:      cfg.Connections,
		Established:      established,
		DialSeconds:      dialTime.Seconds(),
		Pipeline:         cfg.Pipeline,
		Batch:            cfg.Batch,
		UsagesPerRequest: r.usages,
		WarmupSeconds:    cfg.Warmup.Seconds(),
		DurationSeconds:  window.Seconds(),
		Interrupted:      r.halt.Load(),
		RequestedRate:    cfg.Rate,
		Requests: Requests{
			Sent:      c.sent,
			Responses: c.responses,
			OK:        c.ok,
			Measured:  c.measured,
			Answered:  uint64(total.TotalCount()), // every measured answer is in total
			Late:      c.late,
			Unsent:    c.unsent,
			Lost:      c.lost,
		},
		Status:  map[string]uint64{},
		Errors:  map[string]uint64{},
		Latency: summarize(total, maxLat),
		Series:  series,
		CPU:     cpu,
		hist:    total,
	}
	if r.open {
		res.Mode = "open loop"
		res.RequestedUsersPerMinute = cfg.Rate * 60 * float64(r.usages)
		res.Latency.From = "scheduled send time"
		g := summarize(lag, 0)
		res.GeneratorLag = &g
	} else {
		res.Latency.From = "send time"
	}
	if secs := window.Seconds(); secs > 0 {
		res.AchievedRate = float64(c.winResponses) / secs
		res.SentPerSecond = float64(c.winSent) / secs
		res.RequestsPerSecond = float64(c.winOK) / secs
		res.UsagesPerSecond = float64(c.winUsages) / secs
	}
	for code, n := range status {
		if n == 0 {
			continue
		}
		name := fmt.Sprint(code)
		if code == 0 {
			name = "other"
		}
		res.Status[name] = n
	}
	for kind, n := range c.errors {
		if n > 0 {
			res.Errors[errKindNames[kind]] = n
			if res.ErrorMessages == nil {
				res.ErrorMessages = map[string]string{}
			}
			res.ErrorMessages[errKindNames[kind]] = r.errMsgs[kind]
		}
	}

	var ids []uint64
	n := 0
	for _, k := range conns {
		n += k.ids.n
	}
	if n > 0 {
		ids = make([]uint64, 0, n)
	}
	for _, k := range conns {
		ids = k.ids.appendTo(ids)
		k.ids = idStore{}
	}
	res.IDs.Returned = uint64(len(ids))
	res.IDs.Duplicates, res.IDs.Examples = duplicates(ids)
	res.IDs.AnswersWithoutAllIDs = c.idsAbsent

	if cfg.PID > 0 {
		res.Server = &ServerStats{PID: cfg.PID}
		hwm, rss, err := readRSS(cfg.PID)
		if err != nil {
			res.Server.Error = err.Error()
		}
		res.Server.PeakRSSKiB, res.Server.RSSKiB = hwm, rss
	}
	res.Generator = generatorStats()
	res.evaluate()
	return res
}

func summarize(h *hdr.Histogram, exactMax int64) LatencySummary {
	s := LatencySummary{Count: h.TotalCount()}
	if s.Count == 0 {
		return s
	}
	s.Mean = h.Mean() / 1e6
	s.P50 = ms(h.ValueAtQuantile(50))
	s.P90 = ms(h.ValueAtQuantile(90))
	s.P99 = ms(h.ValueAtQuantile(99))
	s.P999 = ms(h.ValueAtQuantile(99.9))
	s.Max = ms(h.Max())
	if exactMax > 0 {
		s.Max = ms(exactMax)
	}
	return s
}
