package server

import (
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"

	"github.com/busyapi/busyapi/wal"
)

const pathMetrics = "/metrics"

// Routes, the path label of busyapi_http_requests_total: fixed names, never
// the raw path, so clients cannot grow the number of series.
const (
	routeUsages = iota
	routeBatch
	routeUsage
	routeExport
	routeRoot
	routeMetrics
	routeHealthz
	routeReadyz
	routeOther
	numRoutes
)

var routeNames = [numRoutes]string{
	routeUsages:  pathUsages,
	routeBatch:   pathBatch,
	routeUsage:   pathUsagePrefix + "{id}",
	routeExport:  pathExport,
	routeRoot:    "/",
	routeMetrics: pathMetrics,
	routeHealthz: pathHealthz,
	routeReadyz:  pathReadyz,
	routeOther:   "other",
}

// routeOf maps a request path to its route; Handler routes by it.
func routeOf(path []byte) int {
	switch {
	case string(path) == pathUsages:
		return routeUsages
	case string(path) == pathBatch:
		return routeBatch
	case string(path) == pathExport:
		return routeExport
	case len(path) > len(pathUsagePrefix) && string(path[:len(pathUsagePrefix)]) == pathUsagePrefix:
		return routeUsage
	case string(path) == "/":
		return routeRoot
	case string(path) == pathMetrics:
		return routeMetrics
	case string(path) == pathHealthz:
		return routeHealthz
	case string(path) == pathReadyz:
		return routeReadyz
	}
	return routeOther
}

// Status codes with their own status label; any other code of a route is
// counted as status="other".
var statusCodes = [...]int{200, 201, 204, 400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 431, 500, 503}

const (
	numStatus   = len(statusCodes) + 1
	statusOther = len(statusCodes)
)

// statusIndex returns the index of code in statusCodes, or statusOther.
func statusIndex(code int) int {
	for i, c := range statusCodes {
		if c == code {
			return i
		}
	}
	return statusOther
}

// routeStatuses are the (route, status) pairs whose counters exist from the
// start (at 0), besides each route's "other". Every route answers 204 to
// OPTIONS, and 413 from ErrorHandler (its headers were read). The other
// errors of ErrorHandler (400, 408, 431) come before the path is known and
// count as path="other".
//
// With tokens, the API's routes and /metrics answer 401 and 403 (unknown
// paths under /api/ too, as path="other"); a handler panic answers 500 on
// any route.
var routeStatuses = [numRoutes][]int{
	routeUsages:  {201, 204, 400, 401, 403, 405, 409, 413, 415, 422, 500, 503},
	routeBatch:   {201, 204, 400, 401, 403, 405, 409, 413, 415, 422, 500, 503},
	routeUsage:   {200, 204, 400, 401, 403, 404, 405, 413, 500},
	routeExport:  {200, 204, 400, 401, 403, 404, 405, 413, 500},
	routeRoot:    {200, 204, 405, 413, 500},
	routeMetrics: {200, 204, 401, 403, 405, 413, 500},
	routeHealthz: {200, 204, 405, 413, 500},
	routeReadyz:  {200, 204, 405, 413, 500, 503},
	routeOther:   {400, 401, 403, 404, 408, 413, 431, 500},
}

// reasonNames label busyapi_rejected_total, indexed by Reason*.
var reasonNames = [...]string{
	ReasonInvalid:   "invalid",
	ReasonTooLarge:  "too_large",
	ReasonMediaType: "media_type",
	ReasonFull:      "full",
	ReasonMethod:    "method",
	ReasonNotFound:  "not_found",
	ReasonProtocol:  "protocol",
	ReasonToken:     "unauthorized",
	ReasonForbidden: "forbidden",
}

// Fails to compile unless reasonNames has exactly numReasons names.
var _ = [1]struct{}{}[len(reasonNames)-numReasons]

// meters are a Server's metrics. Everything is in one metrics.Set per
// Server, so several Servers in a process do not collide.
type meters struct {
	set *metrics.Set
	// requests[route][statusIndex]; nil where the pair was not
	// pre-created (counted in [route][statusOther] instead).
	requests [numRoutes][numStatus]*metrics.Counter
	// Observed by the drainers once per fsync batch (fsync mode only).
	batchRecords *metrics.Histogram
	syncSeconds  *metrics.Histogram
	flushErrors  *metrics.Counter
}

func newMeters() *meters {
	m := &meters{set: metrics.NewSet()}
	for r, codes := range routeStatuses {
		for _, code := range codes {
			m.requests[r][statusIndex(code)] = m.set.NewCounter(requestsName(r, strconv.Itoa(code)))
		}
		m.requests[r][statusOther] = m.set.NewCounter(requestsName(r, "other"))
	}
	return m
}

func requestsName(route int, status string) string {
	return fmt.Sprintf(`busyapi_http_requests_total{path=%q,status=%q}`, routeNames[route], status)
}

// initLog adds the metrics of the durable log (fsync batches, recovery).
func (m *meters) initLog(rec wal.Recovery) {
	m.batchRecords = m.set.NewHistogram("busyapi_fsync_batch_records")
	m.syncSeconds = m.set.NewHistogram("busyapi_fsync_duration_seconds")
	m.flushErrors = m.set.NewCounter("busyapi_log_flush_errors_total")
	m.set.NewGauge("busyapi_recovery_seconds", nil).Set(rec.Duration.Seconds())
	m.set.NewGauge("busyapi_recovered_records", nil).Set(float64(rec.Records))
}

// countRequest counts a finished request by route and status. It allocates
// nothing and takes no lock: an array lookup and an atomic add.
func (m *meters) countRequest(ctx *fasthttp.RequestCtx, route int) {
	m.countRoute(route, ctx.Response.StatusCode())
}

// countError counts a request answered by ErrorHandler. Only a body over
// the limit comes with its headers read; for the others fasthttp has reset
// the request, so they count as path="other".
func (m *meters) countError(ctx *fasthttp.RequestCtx, err error) {
	route := routeOther
	if errors.Is(err, fasthttp.ErrBodyTooLarge) {
		route = routeOf(ctx.Path())
	}
	m.countRoute(route, ctx.Response.StatusCode())
}

func (m *meters) countRoute(route, status int) {
	row := &m.requests[route]
	c := row[statusIndex(status)]
	if c == nil {
		c = row[statusOther]
	}
	c.Inc()
}

// WriteMetrics writes the server's metrics to w in the Prometheus text
// exposition format (version 0.0.4), followed by the process and Go
// runtime metrics, as GET /metrics serves them. Programs that embed a
// Server can serve it on their own metrics endpoint.
func (s *Server) WriteMetrics(w io.Writer) {
	s.meters.set.WritePrometheus(w)
	metrics.WriteProcessMetrics(w)
}

// writeStats writes the metrics read from Stats at each scrape.
func (s *Server) writeStats(w io.Writer) {
	var st Stats
	s.UpdateStats(&st)
	counter(w, "busyapi_usages_stored_total", st.Stored)
	counter(w, "busyapi_panics_total", st.Panics)
	counter(w, "busyapi_idempotent_replays_total", st.Replays)
	metrics.WriteMetadataIfNeeded(w, "busyapi_rejected_total", "counter")
	for i, n := range st.Rejected {
		fmt.Fprintf(w, "busyapi_rejected_total{reason=%q} %d\n", reasonNames[i], n)
	}
	counter(w, "busyapi_drained_records_total", st.Shard.Drained)
	counter(w, "busyapi_flush_batches_total", st.Shard.Batches)
	metrics.WriteMetadataIfNeeded(w, "busyapi_ring_used_bytes", "gauge")
	for i, n := range st.Shard.RingUsed {
		fmt.Fprintf(w, "busyapi_ring_used_bytes{shard=\"%d\"} %d\n", i, n)
	}
	metrics.WriteMetadataIfNeeded(w, "busyapi_ring_capacity_bytes", "gauge")
	for i := range st.Shard.RingUsed {
		fmt.Fprintf(w, "busyapi_ring_capacity_bytes{shard=\"%d\"} %d\n", i, st.Shard.RingBytes)
	}
	counter(w, "busyapi_id_blocks_leased_total", s.set.IDs().Taken())
	metrics.WriteGaugeUint64(w, "busyapi_ids_leased_bound", st.Shard.IDsLeased)
	counter(w, "busyapi_cache_hits_total", st.Cache.Hits)
	counter(w, "busyapi_cache_misses_total", st.Cache.GetMisses)
	if s.wal == nil {
		// Entries and evictions are counted from the drainers' puts; with
		// a log the cache is filled on reads instead, and fastcache does
		// not count evictions itself.
		metrics.WriteGaugeUint64(w, "busyapi_cache_entries", st.Cache.Entries)
		counter(w, "busyapi_cache_evictions_total", st.Cache.Evicted)
	}
	metrics.WriteGaugeUint64(w, "busyapi_cache_bytes", st.Cache.Bytes)
	metrics.WriteGaugeUint64(w, "busyapi_cache_max_bytes", st.Cache.MaxBytes)
	if s.wal != nil {
		var ws wal.Stats
		s.wal.UpdateStats(&ws)
		counter(w, "busyapi_log_written_bytes_total", ws.BytesWritten)
		metrics.WriteGaugeUint64(w, "busyapi_log_indexed_records", uint64(ws.Indexed))
		metrics.WriteGaugeUint64(w, "busyapi_log_failed_shards", uint64(ws.Failed))
	}
	if s.fwd != nil {
		writeClusterStats(w, &st)
	}
}

func counter(w io.Writer, name string, v uint64) { metrics.WriteCounterUint64(w, name, v) }

var strMetricsType = []byte("text/plain; version=0.0.4; charset=utf-8")

// serveMetrics serves GET and HEAD /metrics.
func (s *Server) serveMetrics(ctx *fasthttp.RequestCtx) {
	if !ctx.IsGet() && !ctx.IsHead() {
		s.methodNotAllowed(ctx, "GET, HEAD, OPTIONS", errMethodRoot)
		return
	}
	ctx.Response.Header.SetContentTypeBytes(strMetricsType)
	s.WriteMetrics(ctx.Response.BodyWriter())
}
