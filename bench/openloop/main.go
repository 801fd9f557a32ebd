// Command openloop is an open-loop HTTP/1.1 load generator for busyapi's
// "1M users per minute" target: 16,667 POST /api/usages per second spread
// over 10,000 keep-alive connections, reporting latency percentiles
// corrected for coordinated omission.
//
// Each connection is a goroutine with its own TCP connection and a fixed
// schedule: request i is due at start + phase + i*interval, where interval
// is connections/rate and the phases spread the connections evenly, in
// random order, over one interval. A pacer goroutine releases requests as
// they fall due (on a timerfd, for microsecond precision); a connection
// writes each released request, reads the response and records latency as
// the response time minus the due time, so a slow response delays the
// connection's next request (sent at once) without hiding that delay from
// the statistics.
//
// Requests due during -warmup are sent but not measured. The run fails
// (exit status 1) on any non-2xx response, connection error, timeout,
// unanswered request, duplicate id in the {"id":N} answers, or an achieved
// rate below 99% of the requested one.
package main

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type config struct {
	url         string
	path        string
	rate        float64
	connections int
	duration    time.Duration
	warmup      time.Duration
	timeout     time.Duration
	drain       time.Duration
	dialers     int
	pacer       string
	cpuProfile  string
	trace       string
	pid         int
	json        bool
}

func main() {
	var c config
	flag.StringVar(&c.url, "url", "http://127.0.0.1:3000", "base URL of the server (http only)")
	flag.StringVar(&c.path, "path", "/api/usages", "path to POST usages to")
	flag.Float64Var(&c.rate, "rate", 16667, "requests per second, over all connections")
	flag.IntVar(&c.connections, "connections", 10000, "keep-alive connections")
	flag.DurationVar(&c.duration, "duration", 30*time.Second, "measured duration, after the warmup")
	flag.DurationVar(&c.warmup, "warmup", 5*time.Second, "duration of load excluded from the statistics")
	flag.DurationVar(&c.timeout, "timeout", 10*time.Second, "longest wait for one response; longer ones are errors")
	flag.DurationVar(&c.drain, "drain", 10*time.Second, "after the schedule ends, how long connections that are behind keep sending; requests not sent by then count as unsent")
	flag.IntVar(&c.dialers, "dial-concurrency", 64, "connections dialled in parallel before the run")
	flag.StringVar(&c.pacer, "pacer", "timerfd", "how requests are released on time: timerfd (one pacer goroutine on a timerfd, microsecond precision, Linux), "+
		"sleep (one pacer goroutine on time.Sleep) or conn (each connection sleeps on its own Go timer); both sleep modes can be up to 1ms late")
	flag.IntVar(&c.pid, "pid", 0, "PID of the server, to report its peak (VmHWM) and current (VmRSS) RSS and its CPU use")
	flag.BoolVar(&c.json, "json", false, "print the report as JSON")
	flag.StringVar(&c.cpuProfile, "cpuprofile", "", "write a CPU profile of the load generator to this file")
	flag.StringVar(&c.trace, "trace", "", "write an execution trace of the load generator's measured window to this file")
	flag.Parse()
	if flag.NArg() > 0 {
		fatalf("unexpected argument %q", flag.Arg(0))
	}
	if c.rate <= 0 || c.connections <= 0 || c.duration <= 0 || c.warmup < 0 || c.timeout <= 0 || c.dialers <= 0 || c.drain < 0 {
		fatalf("-rate, -connections, -duration, -timeout and -dial-concurrency must be positive, -warmup and -drain not negative")
	}
	if c.pacer != "timerfd" && c.pacer != "sleep" && c.pacer != "conn" {
		fatalf("-pacer %q: want timerfd, sleep or conn", c.pacer)
	}
	r, err := run(c)
	if err != nil {
		fatalf("%v", err)
	}
	if c.json {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(r)
	} else {
		r.print()
	}
	if !r.OK {
		os.Exit(1)
	}
}

// sleep sleeps for d ns on a Go timer.
func sleep(d int64) { time.Sleep(time.Duration(d)) }

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "openloop: "+format+"\n", args...)
	os.Exit(2)
}

// base is the origin of mono; time.Since reads the monotonic clock.
var base = time.Now()

func mono() int64 { return int64(time.Since(base)) }

// The body is the usage of busyapi's README; patientId has a fixed width of
// patientDigits so it can be rewritten in place.
const (
	bodyPrefix    = `{"patientId":`
	bodySuffix    = `,"timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}`
	patientDigits = 9
	patientBase   = 100_000_000 // patientIds lie in [patientBase, 10*patientBase)
)

// Kinds of errors, indexes of stats.errors.
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

type stats struct {
	sent      atomic.Uint64 // requests written, warmup included
	completed atomic.Uint64 // responses read, warmup included
	measured  atomic.Uint64 // requests due in the measured window
	answered  atomic.Uint64 // of those, responses read
	unsent    atomic.Uint64 // of those, not sent before the drain deadline
	inWindow  atomic.Uint64 // responses read during the measured window, whenever due
	late      atomic.Uint64 // measured requests sent after their due time because the previous response was late
	status    [600]atomic.Uint64
	errors    [numErrKinds]atomic.Uint64
	latency   hist // due time to response, measured window
	lag       hist // due time to write, for requests whose connection was idle when they fell due
}

type target struct {
	addr string // host:port to dial
	req  []byte // request with patientId patientBase
	pat  int    // offset of patientId's digits in req
}

func newTarget(rawURL, path string) (*target, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("-url %q: want http://HOST[:PORT]", rawURL)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	if !strings.HasPrefix(path, "/") {
		return nil, fmt.Errorf("-path %q must start with /", path)
	}
	body := bodyPrefix + strconv.Itoa(patientBase) + bodySuffix
	head := "POST " + strings.TrimSuffix(u.Path, "/") + path + " HTTP/1.1\r\n" +
		"Host: " + u.Host + "\r\n" +
		"User-Agent: openloop\r\n" +
		"Content-Type: application/json\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n"
	return &target{addr: addr, req: []byte(head + body), pat: len(head) + len(bodyPrefix)}, nil
}

// conn is one connection's state, owned by its goroutine.
type conn struct {
	t     *target
	st    *stats
	c     *config
	nc    net.Conn
	br    *bufio.Reader
	req   []byte
	ids   []uint64 // ids answered, for the duplicate check
	seq   uint64   // patientId sequence
	phase int64    // due time of the first request, after t0

	released atomic.Uint64 // requests the pacer has released
	bell     chan struct{} // rung, capacity 1, after each release
}

func (k *conn) dial() error {
	nc, err := net.DialTimeout("tcp", k.t.addr, k.c.timeout)
	if err != nil {
		return err
	}
	k.nc = nc
	if k.br == nil {
		k.br = bufio.NewReaderSize(nc, 1024)
	} else {
		k.br.Reset(nc)
	}
	return nil
}

func (k *conn) drop() {
	if k.nc != nil {
		k.nc.Close()
		k.nc = nil
	}
}

// setPatient writes v, which has patientDigits digits, into the request.
func (k *conn) setPatient(v uint64) {
	b := k.req[k.t.pat : k.t.pat+patientDigits]
	for i := patientDigits - 1; i >= 0; i-- {
		b[i] = byte('0' + v%10)
		v /= 10
	}
}

// run sends the connection's requests due in [t0, end): request i is due
// at t0 + phase + i*interval. If paced it waits until the pacer has
// released request i, else it sleeps on its own Go timer.
// A connection that is behind stops at stopAt; the measured requests it has
// not sent by then are counted as unsent.
func (k *conn) run(t0, measureStart, end, stopAt int64, interval float64, paced bool) {
	var lastDone int64 // when the previous response arrived
	for i := 0; ; i++ {
		due := t0 + k.phase + int64(float64(i)*interval)
		if due >= end {
			return
		}
		if mono() >= stopAt {
			for ; due < end; due = t0 + k.phase + int64(float64(i)*interval) {
				if due >= measureStart {
					k.st.measured.Add(1)
					k.st.unsent.Add(1)
				}
				i++
			}
			return
		}
		if paced {
			for k.released.Load() <= uint64(i) {
				<-k.bell
			}
		} else if now := mono(); due > now {
			time.Sleep(time.Duration(due - now))
		}
		measured := due >= measureStart
		if measured {
			k.st.measured.Add(1)
		}
		if k.nc == nil {
			if err := k.dial(); err != nil {
				k.st.errors[errDial].Add(1)
				lastDone = mono()
				continue
			}
		}
		sent := mono()
		if measured {
			if lastDone <= due {
				// The connection was idle when the request fell due, so
				// any delay until now is the load generator's own.
				k.st.lag.record(time.Duration(sent - due))
			} else {
				k.st.late.Add(1)
			}
		}
		k.seq++
		k.setPatient(patientBase + k.seq%(9*patientBase))
		_ = k.nc.SetDeadline(base.Add(time.Duration(sent) + k.c.timeout))
		if _, err := k.nc.Write(k.req); err != nil {
			k.fail(err, errWrite)
			lastDone = mono()
			continue
		}
		k.st.sent.Add(1)
		status, keepAlive, err := k.readResponse()
		done := mono()
		lastDone = done
		if done >= measureStart && done < end {
			k.st.inWindow.Add(1)
		}
		if err != nil {
			k.fail(err, errRead)
			continue
		}
		k.st.completed.Add(1)
		if status < len(k.st.status) {
			k.st.status[status].Add(1)
		} else {
			k.st.status[0].Add(1)
		}
		if measured {
			k.st.answered.Add(1)
			k.st.latency.record(time.Duration(done - due))
		}
		if !keepAlive {
			k.drop()
		}
	}
}

// pace releases the connections' requests as they fall due, in due order.
// conns must be sorted by phase. A released request waits in its
// connection's count until the connection is free, so the pacer never
// waits for a connection: the schedule does not bend to the server.
func pace(conns []*conn, t0, end int64, interval float64, w *waiter) {
	for i := 0; ; i++ {
		released := false
		for _, k := range conns {
			due := t0 + k.phase + int64(float64(i)*interval)
			if due >= end {
				break
			}
			w.wait(due)
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

func (k *conn) fail(err error, kind int) {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		kind = errTimeout
	case errors.Is(err, errProto):
		kind = errProtocol
	case errors.Is(err, errEOF):
		kind = errClosed
	}
	k.st.errors[kind].Add(1)
	k.drop()
}

var (
	errProto = errors.New("malformed response")
	errEOF   = errors.New("connection closed by server")

	hdrContentLength    = []byte("content-length:")
	hdrConnection       = []byte("connection:")
	hdrTransferEncoding = []byte("transfer-encoding:")
	strClose            = []byte("close")
	strID               = []byte(`"id":`)
)

// readResponse reads one response: status line, headers and a
// Content-Length body. It records the body's {"id":N} for 2xx answers. It
// does not allocate.
func (k *conn) readResponse() (status int, keepAlive bool, err error) {
	line, err := k.br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, io.EOF) {
			return 0, false, errEOF
		}
		return 0, false, err
	}
	// HTTP/1.1 201 Created
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return 0, false, errProto
	}
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return 0, false, errProto
		}
		status = status*10 + int(c-'0')
	}
	keepAlive = line[7] == '1'
	length := -1
	for {
		line, err = k.br.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				return 0, false, errEOF
			}
			return 0, false, err
		}
		if len(line) <= 2 { // \r\n
			break
		}
		switch {
		case hasPrefixFold(line, hdrContentLength):
			n, ok := parseUint(bytes.TrimSpace(line[len(hdrContentLength):]))
			if !ok {
				return 0, false, errProto
			}
			length = int(n)
		case hasPrefixFold(line, hdrConnection):
			if bytes.Contains(bytes.ToLower(line), strClose) {
				keepAlive = false
			}
		case hasPrefixFold(line, hdrTransferEncoding):
			return 0, false, errProto // busyapi never chunks; neither do we
		}
	}
	if length < 0 {
		if status == 204 || status == 304 || status < 200 {
			return status, keepAlive, nil
		}
		return 0, false, errProto
	}
	if length <= k.br.Size() {
		body, err := k.br.Peek(length)
		if err != nil {
			return 0, false, err
		}
		if status >= 200 && status < 300 {
			if i := bytes.Index(body, strID); i >= 0 {
				j := i + len(strID)
				e := j
				for e < len(body) && body[e] >= '0' && body[e] <= '9' {
					e++
				}
				if id, ok := parseUint(body[j:e]); ok {
					k.ids = append(k.ids, id)
				}
			}
		}
	}
	if _, err := k.br.Discard(length); err != nil {
		return 0, false, err
	}
	return status, keepAlive, nil
}

func hasPrefixFold(s, lowerPrefix []byte) bool {
	if len(s) < len(lowerPrefix) {
		return false
	}
	for i, c := range lowerPrefix {
		b := s[i]
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if b != c {
			return false
		}
	}
	return true
}

func parseUint(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

// report is the outcome of a run; its JSON form is what -json prints.
type report struct {
	URL              string            `json:"url"`
	Connections      int               `json:"connections"`
	Established      int               `json:"connections_established"`
	DialSeconds      float64           `json:"dial_seconds"`
	RequestedRate    float64           `json:"requested_rate"`
	AchievedRate     float64           `json:"achieved_rate"`
	RunSeconds       float64           `json:"run_seconds"`
	WarmupSeconds    float64           `json:"warmup_seconds"`
	DurationSeconds  float64           `json:"duration_seconds"`
	Sent             uint64            `json:"requests_sent"`
	Completed        uint64            `json:"responses"`
	Measured         uint64            `json:"measured_requests"`
	Answered         uint64            `json:"measured_responses"`
	Unsent           uint64            `json:"measured_unsent"`
	Late             uint64            `json:"measured_sent_late"`
	Status           map[string]uint64 `json:"status"`
	Errors           map[string]uint64 `json:"errors"`
	IDs              int               `json:"ids"`
	DuplicateIDs     int               `json:"duplicate_ids"`
	LatencyMs        latencies         `json:"latency_ms"`
	GeneratorLagMs   latencies         `json:"generator_lag_ms"`
	ServerPID        int               `json:"server_pid,omitempty"`
	ServerPeakRSSKiB uint64            `json:"server_peak_rss_kib,omitempty"`
	ServerRSSKiB     uint64            `json:"server_rss_kib,omitempty"`
	ServerRSSError   string            `json:"server_rss_error,omitempty"`
	CPU              cpuUse            `json:"cpu_measured_window"`
	LoadCPUSeconds   float64           `json:"loadgen_cpu_seconds"`
	LoadPeakRSSKiB   uint64            `json:"loadgen_peak_rss_kib"`
	GOMAXPROCS       int               `json:"loadgen_gomaxprocs"`
	OK               bool              `json:"ok"`
	Failures         []string          `json:"failures,omitempty"`
}

type latencies struct {
	Count uint64  `json:"count"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p99_9"`
	Max   float64 `json:"max"`
}

func summarize(h *hist) latencies {
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	return latencies{
		Count: h.count(),
		Mean:  ms(h.mean()),
		P50:   ms(h.quantile(0.50)),
		P90:   ms(h.quantile(0.90)),
		P99:   ms(h.quantile(0.99)),
		P999:  ms(h.quantile(0.999)),
		Max:   ms(h.maximum()),
	}
}

func run(c config) (*report, error) {
	t, err := newTarget(c.url, c.path)
	if err != nil {
		return nil, err
	}
	// The heap is small (the connections' buffers); collect less often.
	debug.SetGCPercent(400)
	st := &stats{}
	interval := float64(c.connections) * 1e9 / c.rate // ns between a connection's requests
	perConn := int(float64(c.warmup+c.duration)/interval) + 2

	// Dial every connection first, a few at a time.
	conns := make([]*conn, c.connections)
	order := rand.Perm(c.connections)
	dialStart := time.Now()
	var established atomic.Int64
	var firstErr atomic.Value
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(c.dialers, c.connections) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				k := &conn{t: t, st: st, c: &c, req: slices.Clone(t.req), ids: make([]uint64, 0, perConn), bell: make(chan struct{}, 1)}
				k.seq = uint64(i) * 1_000_003
				k.phase = int64((float64(order[i]) + rand.Float64()) / float64(c.connections) * interval)
				var err error
				for attempt := 0; attempt < 3; attempt++ {
					if err = k.dial(); err == nil {
						established.Add(1)
						break
					}
					time.Sleep(100 * time.Millisecond << attempt)
				}
				if err != nil {
					st.errors[errDial].Add(1)
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

	fmt.Fprintf(os.Stderr, "openloop: %d of %d connections to %s in %.2fs; sending %.0f req/s for %v + %v warmup\n",
		established.Load(), c.connections, t.addr, dialTime.Seconds(), c.rate, c.duration, c.warmup)
	var w *waiter
	switch c.pacer {
	case "timerfd", "sleep":
		if w, err = newWaiter(c.pacer == "timerfd"); err != nil {
			return nil, err
		}
		defer w.close()
	}
	// Start the schedule once every goroutine has had time to park.
	t0 := mono() + int64(200*time.Millisecond)
	measureStart := t0 + int64(c.warmup)
	end := measureStart + int64(c.duration)
	if c.cpuProfile != "" {
		f, err := os.Create(c.cpuProfile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
		defer pprof.StopCPUProfile()
	}
	var cpuStart, cpuEnd cpuTimes
	wg.Add(1)
	go func() {
		defer wg.Done()
		time.Sleep(time.Duration(measureStart - mono()))
		cpuStart = readCPU(c.pid)
		time.Sleep(time.Duration(end - mono()))
		cpuEnd = readCPU(c.pid)
	}()
	if c.trace != "" {
		f, err := os.Create(c.trace)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		wg.Add(1)
		go func() { // trace the first two seconds of the measured window
			defer wg.Done()
			time.Sleep(time.Duration(measureStart - mono()))
			if trace.Start(f) == nil {
				time.Sleep(min(2*time.Second, c.duration))
				trace.Stop()
			}
		}()
	}
	for _, k := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k.run(t0, measureStart, end, end+int64(c.drain), interval, w != nil)
			k.drop()
		}()
	}
	if w != nil {
		byPhase := slices.Clone(conns)
		slices.SortFunc(byPhase, func(a, b *conn) int { return cmp.Compare(a.phase, b.phase) })
		pace(byPhase, t0, end, interval, w)
	}
	wg.Wait()
	cpu := cpuBetween(cpuStart, cpuEnd)
	runTime := time.Since(dialStart)

	r := &report{
		URL:             c.url + c.path,
		Connections:     c.connections,
		Established:     int(established.Load()),
		DialSeconds:     dialTime.Seconds(),
		RequestedRate:   c.rate,
		WarmupSeconds:   c.warmup.Seconds(),
		DurationSeconds: c.duration.Seconds(),
		Sent:            st.sent.Load(),
		Completed:       st.completed.Load(),
		Measured:        st.measured.Load(),
		Answered:        st.answered.Load(),
		Late:            st.late.Load(),
		Unsent:          st.unsent.Load(),
		RunSeconds:      runTime.Seconds(),
		Status:          map[string]uint64{},
		Errors:          map[string]uint64{},
		LatencyMs:       summarize(&st.latency),
		GeneratorLagMs:  summarize(&st.lag),
		GOMAXPROCS:      runtime.GOMAXPROCS(0),
		CPU:             cpu,
	}
	r.AchievedRate = float64(st.inWindow.Load()) / c.duration.Seconds()
	fail := func(format string, args ...any) { r.Failures = append(r.Failures, fmt.Sprintf(format, args...)) }
	var bad uint64
	for code := range st.status {
		if n := st.status[code].Load(); n > 0 {
			name := strconv.Itoa(code)
			if code == 0 {
				name = "other"
			}
			r.Status[name] = n
			if code < 200 || code > 299 {
				bad += n
			}
		}
	}
	if bad > 0 {
		fail("%d non-2xx responses", bad)
	}
	var errs uint64
	for kind := range st.errors {
		if n := st.errors[kind].Load(); n > 0 {
			r.Errors[errKindNames[kind]] = n
			errs += n
		}
	}
	if errs > 0 {
		fail("%d errors", errs)
	}
	if r.Answered < r.Measured {
		fail("%d of %d measured requests unanswered (%d never sent: the server fell too far behind)",
			r.Measured-r.Answered, r.Measured, r.Unsent)
	}
	// A server that keeps up answers about as many requests per second
	// during the window as are due; boundary effects are a few ms of load.
	if r.AchievedRate < 0.99*c.rate {
		fail("achieved rate %.0f req/s is below 99%% of the requested %.0f req/s", r.AchievedRate, c.rate)
	}

	// Every id must be unique.
	var all []uint64
	for _, k := range conns {
		all = append(all, k.ids...)
	}
	slices.Sort(all)
	for i := 1; i < len(all); i++ {
		if all[i] == all[i-1] {
			r.DuplicateIDs++
		}
	}
	r.IDs = len(all)
	if r.DuplicateIDs > 0 {
		fail("%d duplicate ids", r.DuplicateIDs)
	}

	if c.pid > 0 {
		r.ServerPID = c.pid
		hwm, rss, err := readRSS(c.pid)
		if err != nil {
			r.ServerRSSError = err.Error()
		}
		r.ServerPeakRSSKiB, r.ServerRSSKiB = hwm, rss
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		r.LoadCPUSeconds = float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
		r.LoadPeakRSSKiB = uint64(ru.Maxrss)
	}
	r.OK = len(r.Failures) == 0
	return r, nil
}

// readRSS reads VmHWM (peak resident set) and VmRSS, in KiB, of a process.
func readRSS(pid int) (hwm, rss uint64, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		name, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(val)
		if len(f) == 0 {
			continue
		}
		n, _ := strconv.ParseUint(f[0], 10, 64)
		switch name {
		case "VmHWM":
			hwm = n
		case "VmRSS":
			rss = n
		}
	}
	return hwm, rss, nil
}

func (r *report) print() {
	w := os.Stdout
	fmt.Fprintf(w, "target            %s\n", r.URL)
	fmt.Fprintf(w, "connections       %d established of %d, dialled in %.2fs\n", r.Established, r.Connections, r.DialSeconds)
	fmt.Fprintf(w, "rate              requested %.0f req/s, achieved %.0f req/s (responses during the %.0fs window after %.0fs warmup)\n",
		r.RequestedRate, r.AchievedRate, r.DurationSeconds, r.WarmupSeconds)
	fmt.Fprintf(w, "requests          %d sent, %d responses; measured %d due, %d answered, %d sent late, %d never sent\n",
		r.Sent, r.Completed, r.Measured, r.Answered, r.Late, r.Unsent)
	fmt.Fprintf(w, "status            %s\n", formatCounts(r.Status))
	fmt.Fprintf(w, "errors            %s\n", formatCounts(r.Errors))
	fmt.Fprintf(w, "ids               %d, %d duplicates\n", r.IDs, r.DuplicateIDs)
	l := r.LatencyMs
	fmt.Fprintf(w, "latency (ms)      p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f  (n=%d, from due time)\n",
		l.P50, l.P90, l.P99, l.P999, l.Max, l.Mean, l.Count)
	g := r.GeneratorLagMs
	fmt.Fprintf(w, "generator lag(ms) p50 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  (n=%d, due time to write on idle connections)\n",
		g.P50, g.P99, g.P999, g.Max, g.Count)
	if r.ServerPID > 0 {
		if r.ServerRSSError != "" {
			fmt.Fprintf(w, "server rss        pid %d: %s\n", r.ServerPID, r.ServerRSSError)
		} else {
			fmt.Fprintf(w, "server rss        pid %d: peak (VmHWM) %.1f MiB, now (VmRSS) %.1f MiB\n",
				r.ServerPID, float64(r.ServerPeakRSSKiB)/1024, float64(r.ServerRSSKiB)/1024)
		}
	}
	fmt.Fprintf(w, "load generator    %.1fs CPU over %.1fs, peak RSS %.1f MiB, GOMAXPROCS %d\n",
		r.LoadCPUSeconds, r.RunSeconds, float64(r.LoadPeakRSSKiB)/1024, r.GOMAXPROCS)
	u := r.CPU
	if u.known {
		server := ""
		if r.ServerPID > 0 {
			server = fmt.Sprintf("server %.0f%%, ", u.Server)
		}
		fmt.Fprintf(w, "cpu (measured)    %sload generator %.0f%%, other processes %.0f%%, steal %.0f%% (of one core, over %.1fs)\n",
			server, u.Load, u.Others, u.Steal, u.Seconds)
		if u.Others > 10 || u.Steal > 10 {
			fmt.Fprintln(w, "warning           other processes or the hypervisor took CPU during the run: latencies are suspect")
		}
	}
	if r.OK {
		fmt.Fprintln(w, "result            OK")
	} else {
		fmt.Fprintf(w, "result            FAILED: %s\n", strings.Join(r.Failures, "; "))
	}
}

func formatCounts(m map[string]uint64) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString("  ")
		}
		fmt.Fprintf(&b, "%s: %d", k, m[k])
	}
	return b.String()
}
