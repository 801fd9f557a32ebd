package loadgen

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"runtime"
	"slices"
	"strconv"
	"strings"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// MinRateFraction is the least fraction of the requested rate a run must
// achieve to pass.
const MinRateFraction = 0.97

// Result is what a run measured; its JSON form is what --json prints.
type Result struct {
	URL              string  `json:"url"`
	Mode             string  `json:"mode"` // open loop or closed loop
	Connections      int     `json:"connections"`
	Established      int     `json:"connections_established"`
	DialSeconds      float64 `json:"dial_seconds"`
	Pipeline         int     `json:"pipeline"`
	Batch            int     `json:"batch"`
	UsagesPerRequest int     `json:"usages_per_request"`
	WarmupSeconds    float64 `json:"warmup_seconds"`
	DurationSeconds  float64 `json:"duration_seconds"` // the measured window
	Interrupted      bool    `json:"interrupted,omitempty"`

	RequestedRate           float64 `json:"requested_rate"` // requests/s; 0 in closed loop
	RequestedUsersPerMinute float64 `json:"requested_users_per_minute,omitempty"`
	AchievedRate            float64 `json:"achieved_rate"`       // responses read per second during the window
	SentPerSecond           float64 `json:"sent_per_second"`     // requests written per second during the window
	RequestsPerSecond       float64 `json:"requests_per_second"` // 2xx answers per second during the window
	UsagesPerSecond         float64 `json:"usages_per_second"`   // usages in those answers per second

	Requests      Requests          `json:"requests"`
	Status        map[string]uint64 `json:"status"` // answers by status code, warmup included
	Errors        map[string]uint64 `json:"connection_errors"`
	ErrorMessages map[string]string `json:"connection_error_examples,omitempty"`

	Latency      LatencySummary  `json:"latency_ms"`
	GeneratorLag *LatencySummary `json:"generator_lag_ms,omitempty"`
	IDs          IDCheck         `json:"ids"`

	Server    *ServerStats   `json:"server,omitempty"`
	CPU       CPUUse         `json:"cpu_measured_window"`
	Generator GeneratorStats `json:"generator"`

	Series []Second `json:"seconds"`

	OK       bool     `json:"ok"`
	Failures []string `json:"failures,omitempty"`

	hist *hdr.Histogram // the measured latencies, for the report
}

// Requests counts the run's requests, warmup included unless said.
type Requests struct {
	Sent      uint64 `json:"sent"`
	Responses uint64 `json:"responses"`
	OK        uint64 `json:"ok"`
	Measured  uint64 `json:"measured"` // due (open loop) or sent (closed loop) during the measured window
	Answered  uint64 `json:"measured_answered"`
	Late      uint64 `json:"measured_sent_late,omitempty"`
	Unsent    uint64 `json:"measured_never_sent,omitempty"`
	Lost      uint64 `json:"lost"` // no answer because of a connection error
}

// LatencySummary is an HDR histogram's percentiles, in milliseconds.
type LatencySummary struct {
	From  string  `json:"from,omitempty"` // what latency is measured from
	Count int64   `json:"count"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p99_9"`
	Max   float64 `json:"max"`
}

// IDCheck is the check that every id the server returned is unique.
type IDCheck struct {
	Returned             uint64   `json:"returned"`
	Duplicates           int      `json:"duplicates"`
	Examples             []uint64 `json:"duplicate_examples,omitempty"`
	AnswersWithoutAllIDs uint64   `json:"answers_without_all_ids"` // 2xx answers with fewer ids than usages
}

// ServerStats are the server process's memory, with --pid.
type ServerStats struct {
	PID        int    `json:"pid"`
	PeakRSSKiB uint64 `json:"peak_rss_kib"`
	RSSKiB     uint64 `json:"rss_kib"`
	Error      string `json:"error,omitempty"`
}

// GeneratorStats is what the load generator itself used.
type GeneratorStats struct {
	CPUSeconds float64 `json:"cpu_seconds"`
	PeakRSSKiB uint64  `json:"peak_rss_kib"`
	GOMAXPROCS int     `json:"gomaxprocs"`
}

func generatorStats() GeneratorStats {
	g := GeneratorStats{GOMAXPROCS: runtime.GOMAXPROCS(0)}
	g.CPUSeconds, g.PeakRSSKiB = selfUsage()
	return g
}

// DuplicateMessage is how a repeated id is reported.
func DuplicateMessage(n int) string {
	return fmt.Sprintf("server answered the same id twice: %d", n)
}

// evaluate sets OK and Failures by the exit status rules: the achieved rate
// is at least 97% of the requested one; every request was answered, 2xx;
// no id repeated.
func (r *Result) evaluate() {
	r.Failures = nil
	fail := func(format string, args ...any) { r.Failures = append(r.Failures, fmt.Sprintf(format, args...)) }
	if r.Interrupted {
		fail("interrupted")
	}
	if r.RequestedRate > 0 && r.AchievedRate < MinRateFraction*r.RequestedRate {
		fail("achieved rate %s req/s is below %.0f%% of the requested %s req/s",
			num(r.AchievedRate), 100*MinRateFraction, num(r.RequestedRate))
	}
	var non2xx uint64
	for code, n := range r.Status {
		if c, err := strconv.Atoi(code); err != nil || c < 200 || c > 299 {
			non2xx += n
		}
	}
	if non2xx > 0 {
		fail("%s answers were not 2xx", num(float64(non2xx)))
	}
	var errs uint64
	for _, n := range r.Errors {
		errs += n
	}
	if errs > 0 {
		fail("%s connection errors (%s)", num(float64(errs)), formatCounts(r.Errors))
	}
	q := r.Requests
	if q.Lost > 0 {
		fail("%s requests got no answer (connection errors)", num(float64(q.Lost)))
	}
	if q.Unsent > 0 {
		fail("%s requests never sent: the server fell too far behind", num(float64(q.Unsent)))
	}
	if q.Answered < q.Measured && q.Lost == 0 && q.Unsent == 0 {
		fail("%s of %s measured requests unanswered", num(float64(q.Measured-q.Answered)), num(float64(q.Measured)))
	}
	if r.IDs.Duplicates > 0 {
		fail("%s", DuplicateMessage(r.IDs.Duplicates))
	}
	r.OK = len(r.Failures) == 0
}

// WriteJSON writes the result as indented JSON.
func (r *Result) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes the summary for people.
func (r *Result) WriteText(w io.Writer) {
	p := func(label, format string, args ...any) {
		fmt.Fprintf(w, "%-13s %s\n", label, fmt.Sprintf(format, args...))
	}
	shape := fmt.Sprintf("%d connections", r.Connections)
	if r.Established != r.Connections {
		shape = fmt.Sprintf("%d of %d connections", r.Established, r.Connections)
	}
	if r.Pipeline > 1 {
		shape += fmt.Sprintf(", pipeline %d", r.Pipeline)
	}
	if r.Batch > 0 {
		shape += fmt.Sprintf(", batches of %d usages", r.Batch)
	}
	p("target", "POST %s", r.URL)
	p("load", "%s, %s, %.1fs measured after %.1fs warmup%s", r.Mode, shape, r.DurationSeconds, r.WarmupSeconds,
		map[bool]string{true: " (interrupted)"}[r.Interrupted])
	if r.RequestedRate > 0 {
		users := ""
		if r.RequestedUsersPerMinute > 0 {
			users = fmt.Sprintf(" (%s users/min)", num(r.RequestedUsersPerMinute))
		}
		p("rate", "requested %s req/s%s, achieved %s req/s (%.1f%%)", num(r.RequestedRate), users, num(r.AchievedRate),
			100*r.AchievedRate/r.RequestedRate)
	} else {
		p("rate", "achieved %s req/s (closed loop: as fast as the server answers)", num(r.AchievedRate))
	}
	p("throughput", "%s requests/s and %s usages/s answered 2xx; %s requests/s sent",
		num(r.RequestsPerSecond), num(r.UsagesPerSecond), num(r.SentPerSecond))
	q := r.Requests
	line := fmt.Sprintf("%s sent, %s answered, %s lost", num(float64(q.Sent)), num(float64(q.Responses)), num(float64(q.Lost)))
	if r.Mode == "open loop" {
		line += fmt.Sprintf("; measured: %s due, %s answered, %s sent late, %s never sent",
			num(float64(q.Measured)), num(float64(q.Answered)), num(float64(q.Late)), num(float64(q.Unsent)))
	}
	p("requests", "%s", line)
	p("status", "%s", formatCounts(r.Status))
	errs := formatCounts(r.Errors)
	for _, k := range slices.Sorted(maps.Keys(r.ErrorMessages)) {
		errs += fmt.Sprintf("\n%-13s   %s: %s", "", k, r.ErrorMessages[k])
	}
	p("conn errors", "%s", errs)
	l := r.Latency
	p("latency", "p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  (ms, n=%s, from the %s; HDR histogram)",
		msStr(l.P50), msStr(l.P90), msStr(l.P99), msStr(l.P999), msStr(l.Max), num(float64(l.Count)), l.From)
	if g := r.GeneratorLag; g != nil && g.Count > 0 {
		p("gen lag", "p50 %s  p99 %s  p99.9 %s  max %s  (ms, due time to write on idle connections: the generator's own delay)",
			msStr(g.P50), msStr(g.P99), msStr(g.P999), msStr(g.Max))
	}
	switch id := r.IDs; {
	case id.Duplicates > 0:
		ex := make([]string, len(id.Examples))
		for i, v := range id.Examples {
			ex[i] = strconv.FormatUint(v, 10)
		}
		p("ids", "%s (%s ids returned; e.g. %s)", DuplicateMessage(id.Duplicates), num(float64(id.Returned)), strings.Join(ex, ", "))
	case id.Returned == 0:
		p("ids", "none returned (the answers carry no {\"id\":N} or {\"ids\":[...]})")
	default:
		extra := ""
		if id.AnswersWithoutAllIDs > 0 {
			extra = fmt.Sprintf("; %s 2xx answers had fewer ids than usages", num(float64(id.AnswersWithoutAllIDs)))
		}
		p("ids", "%s returned, all unique%s", num(float64(id.Returned)), extra)
	}
	if s := r.Server; s != nil {
		if s.Error != "" {
			p("server", "pid %d: %s", s.PID, s.Error)
		} else {
			p("server", "pid %d: peak RSS %.1f MiB, RSS now %.1f MiB", s.PID, float64(s.PeakRSSKiB)/1024, float64(s.RSSKiB)/1024)
		}
	}
	if u := r.CPU; u.known {
		server := ""
		if r.Server != nil {
			server = fmt.Sprintf("server %.0f%%, ", u.Server)
		}
		p("cpu", "%sgenerator %.0f%%, other processes %.0f%%, steal %.0f%% (of one core, measured window)",
			server, u.Load, u.Others, u.Steal)
	}
	g := r.Generator
	p("generator", "%.1fs CPU, peak RSS %.1f MiB, GOMAXPROCS %d", g.CPUSeconds, float64(g.PeakRSSKiB)/1024, g.GOMAXPROCS)
	if r.OK {
		p("result", "PASS")
	} else {
		p("result", "FAIL: %s", strings.Join(r.Failures, "; "))
	}
}

func formatCounts(m map[string]uint64) string {
	if len(m) == 0 {
		return "none"
	}
	var b strings.Builder
	for i, k := range slices.Sorted(maps.Keys(m)) {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s: %s", k, num(float64(m[k])))
	}
	return b.String()
}

// num formats a count or rate with thousands separators, no decimals.
func num(v float64) string {
	s := strconv.FormatFloat(v, 'f', 0, 64)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// msStr formats milliseconds with three significant digits.
func msStr(v float64) string {
	switch {
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case v >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
	return strconv.FormatFloat(v, 'f', 3, 64)
}
