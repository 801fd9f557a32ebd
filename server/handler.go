package server

import (
	"bytes"
	"errors"
	"net"
	"strconv"
	"sync"

	"github.com/valyala/fasthttp"

	"github.com/busyapi/busyapi/shard"
	"github.com/busyapi/busyapi/wal"
)

const (
	pathUsages      = "/api/usages"
	pathUsagePrefix = "/api/usages/"
	pathExport      = "/api/usages/export"
)

// Reasons a request is refused, for Stats.Rejected.
const (
	ReasonInvalid   = iota // 400: bad JSON or fields
	ReasonTooLarge         // 413
	ReasonMediaType        // 415
	ReasonFull             // 503: ring full or ids exhausted
	ReasonMethod           // 405
	ReasonNotFound         // 404
	ReasonProtocol         // 400/408/431 from the HTTP parser
	ReasonToken            // 401: no bearer token, or an unknown one
	ReasonForbidden        // 403: a token without the scope needed
	numReasons
)

var (
	strJSON       = []byte("application/json")
	strRetryAfter = []byte("Retry-After")
	strLocation   = []byte("Location")
	strIdentity   = []byte("identity")
	strOne        = []byte("1")
	strWelcome    = []byte("busyapi is running: POST usages to /api/usages, GET them from /api/usages/{id}\n")
)

var (
	errNotFound      = jsonError("no such path: the API is POST /api/usages and GET /api/usages/{id}")
	errUsageNotFound = jsonError("no usage with this id: it was never stored, or it was evicted from the cache")
	errBadID         = jsonError("usage id must be a positive decimal integer, as returned in {\"id\":N}")
	errMethodUsages  = jsonError("method not allowed: use POST to store a usage")
	errMethodUsage   = jsonError("method not allowed: use GET to read a usage")
	errMethodRoot    = jsonError("method not allowed: use GET")
	errMediaType     = jsonError("unsupported Content-Type: send application/json")
	errEncoding      = jsonError("unsupported Content-Encoding: send gzip or an uncompressed body")
	errFull          = jsonError("server is busy: the ingest ring is full; retry after the Retry-After delay")
	errExhausted     = jsonError("server has run out of ids: no usage can be stored")
	errNoIDs         = jsonError("server is busy reserving ids: retry after the Retry-After delay")
	errStorage       = jsonError("the log cannot be written (disk full or failing): the usage was not stored; retry after the Retry-After delay")
	errReadLog       = jsonError("the usage could not be read from the log")
	errTooLarge      = jsonError("request body is too large: lower it below the server's --max-body limit")
	errHeaderLarge   = jsonError("request headers are too large: send less than 4 KiB of headers")
	errTimeout       = jsonError("request timed out: send the whole request within the server's read timeout")
	errMalformed     = jsonError("malformed HTTP request: send a valid HTTP/1.1 request")
)

// Handler is the fasthttp.RequestHandler of the API. It is safe for
// concurrent use. POST /api/usages allocates nothing, takes no lock, sends on
// no channel and logs nothing. A panic is answered 500 (recover.go).
func (s *Server) Handler(ctx *fasthttp.RequestCtx) {
	path := ctx.Path()
	route := routeOf(path)
	defer s.meters.countRequest(ctx, route) // runs last: counts the 500 of a recovered panic
	sampled := s.sample()
	if sampled {
		// The access log's duration starts here: the server reads the
		// clock only for requests that ask (LazyRequestTime).
		ctx.Time()
	}
	defer s.after(ctx, sampled)
	if s.testHook != nil {
		s.testHook(ctx)
	}
	if !s.authorize(ctx, path) {
		return
	}
	switch route {
	case routeUsages:
		if ctx.IsPost() {
			s.postUsage(ctx)
			return
		}
		s.methodNotAllowed(ctx, "POST, OPTIONS", errMethodUsages)
	case routeBatch:
		if ctx.IsPost() {
			s.postBatch(ctx)
			return
		}
		s.methodNotAllowed(ctx, "POST, OPTIONS", errMethodBatch)
	case routeExport:
		if ctx.IsGet() || ctx.IsHead() {
			s.export(ctx)
			return
		}
		s.methodNotAllowed(ctx, "GET, HEAD, OPTIONS", errMethodUsage)
	case routeUsage:
		if ctx.IsGet() || ctx.IsHead() {
			s.getUsage(ctx, path[len(pathUsagePrefix):])
			return
		}
		s.methodNotAllowed(ctx, "GET, HEAD, OPTIONS", errMethodUsage)
	case routeRoot:
		if ctx.IsGet() || ctx.IsHead() {
			ctx.SetContentType("text/plain; charset=utf-8")
			ctx.SetBody(strWelcome)
			return
		}
		s.methodNotAllowed(ctx, "GET, HEAD, OPTIONS", errMethodRoot)
	case routeMetrics:
		s.serveMetrics(ctx)
	case routeHealthz:
		s.healthz(ctx)
	case routeReadyz:
		s.readyz(ctx)
	default:
		s.fail(ctx, fasthttp.StatusNotFound, ReasonNotFound, errNotFound)
	}
}

func (s *Server) postUsage(ctx *fasthttp.RequestCtx) {
	h := &ctx.Request.Header
	if ct := h.ContentType(); len(ct) > 0 && !isJSONMediaType(ct) {
		s.fail(ctx, fasthttp.StatusUnsupportedMediaType, ReasonMediaType, errMediaType)
		return
	}
	body := ctx.PostBody()
	if len(h.ContentEncoding()) > 0 {
		b, release, status, msg := s.requestBody(ctx, s.cfg.MaxBodyBytes, errTooLarge)
		if msg != nil {
			s.fail(ctx, status, reasonOf(status), msg)
			return
		}
		defer release()
		body = b
	}
	p := s.parsers.Get()
	body, bad := validateUsage(p, body)
	s.parsers.Put(p)
	if bad != nil {
		s.fail(ctx, fasthttp.StatusBadRequest, ReasonInvalid, bad)
		return
	}
	if key, present, ok := idemKey(h); present {
		if claim := s.claimKey(ctx, routeUsages, body, key, ok); claim != nil {
			b := shard.GetBatch()
			b.Add(body)
			s.storeBatch(ctx, b, claim, routeUsages)
		}
		return
	}
	id, ticket, err := s.set.Put(ctx.ConnID(), body)
	if err == nil && s.fsync {
		// Group commit: wait, without a lock, for the drainer's fdatasync
		// of the batch that holds this usage.
		err = s.set.Wait(ticket)
	}
	if err != nil {
		s.putFailed(ctx, err)
		return
	}
	s.stored.Add(1)
	answerCreated(ctx, id)
}

// answerCreated answers 201 {"id":N} with Location: /api/usages/N. It
// allocates nothing.
func answerCreated(ctx *fasthttp.RequestCtx, id uint64) {
	// One buffer, the id formatted once: {"id":N}, then /api/usages/N
	// from its digits.
	var a [64]byte
	body := appendID(a[:0], id)
	n := body[len(idPrefix) : len(body)-1]
	loc := append(append(body[len(body):], pathUsagePrefix...), n...)
	ctx.Response.Header.SetCanonical(strLocation, loc)
	ctx.SetStatusCode(fasthttp.StatusCreated)
	ctx.Response.Header.SetContentTypeBytes(strJSON)
	ctx.Response.SetBody(body)
}

const idPrefix = `{"id":`

// appendID appends {"id":N}.
func appendID(out []byte, id uint64) []byte {
	out = append(out, idPrefix...)
	out = strconv.AppendUint(out, id, 10)
	return append(out, '}')
}

func (s *Server) putFailed(ctx *fasthttp.RequestCtx, err error) {
	msg := errExhausted
	switch {
	case errors.Is(err, shard.ErrFull):
		msg = errFull
	case errors.Is(err, shard.ErrIDsUnavailable):
		msg = errNoIDs
	case errors.Is(err, shard.ErrUnavailable), errors.Is(err, shard.ErrFlushFailed):
		msg = errStorage
	}
	if !errors.Is(err, shard.ErrIDsExhausted) {
		ctx.Response.Header.SetBytesKV(strRetryAfter, strOne)
	}
	s.fail(ctx, fasthttp.StatusServiceUnavailable, ReasonFull, msg)
}

// isJSONMediaType reports whether ct is application/json, in any case, with
// or without parameters such as charset=utf-8.
func isJSONMediaType(ct []byte) bool {
	if i := bytes.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return bytes.EqualFold(bytes.TrimSpace(ct), strJSON)
}

// bufPool holds scratch buffers of the request path: log reads, inflated
// bodies, built responses.
var bufPool = sync.Pool{New: func() any { return new([]byte) }}

func (s *Server) getUsage(ctx *fasthttp.RequestCtx, idText []byte) {
	id, ok := parseID(idText)
	if !ok {
		s.fail(ctx, fasthttp.StatusBadRequest, ReasonInvalid, errBadID)
		return
	}
	if id == 0 || id >= shard.MaxID {
		s.fail(ctx, fasthttp.StatusNotFound, ReasonNotFound, errUsageNotFound)
		return
	}
	bp := bufPool.Get().(*[]byte)
	v, found := s.cache.Get((*bp)[:0], id)
	if !found && s.wal != nil {
		var err error
		v, err = s.wal.Get((*bp)[:0], id)
		if err != nil && !errors.Is(err, wal.ErrNotStored) {
			bufPool.Put(bp)
			s.log.Error("cannot read a usage from the log", "id", id, "err", err)
			s.fail(ctx, fasthttp.StatusInternalServerError, ReasonNotFound, errReadLog)
			return
		}
		found = err == nil
		if found {
			s.cache.Fill(id, v)
		}
	}
	if !found || len(v) < 2 {
		bufPool.Put(bp)
		s.fail(ctx, fasthttp.StatusNotFound, ReasonNotFound, errUsageNotFound)
		return
	}
	// The stored body is the object as posted; add the id as its first field.
	ctx.Response.Header.SetContentTypeBytes(strJSON)
	out := ctx.Response.BodyWriter()
	var a [32]byte
	out.Write(strconv.AppendUint(append(a[:0], `{"id":`...), id, 10))
	out.Write([]byte{','})
	out.Write(v[1:])
	*bp = v[:0]
	bufPool.Put(bp)
}

// parseID parses a decimal id. It reports false for anything but digits;
// a number too large for uint64 parses as MaxID, which is never stored.
func parseID(b []byte) (uint64, bool) {
	if len(b) == 0 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		if n < shard.MaxID {
			n = n*10 + uint64(c-'0')
		}
	}
	return n, true
}

func (s *Server) methodNotAllowed(ctx *fasthttp.RequestCtx, allow string, msg errBody) {
	ctx.Response.Header.Set("Allow", allow)
	if ctx.IsOptions() {
		ctx.SetStatusCode(fasthttp.StatusNoContent)
		return
	}
	s.fail(ctx, fasthttp.StatusMethodNotAllowed, ReasonMethod, msg)
}

func (s *Server) fail(ctx *fasthttp.RequestCtx, status, reason int, msg errBody) {
	s.rejected[reason].Add(1)
	ctx.SetStatusCode(status)
	ctx.Response.Header.SetContentTypeBytes(strJSON)
	ctx.Response.SetBody(msg)
}

// ErrorHandler answers requests that fasthttp refuses before the Handler
// runs, with a JSON error and the right status: 413 for a body over
// MaxBodyBytes (fasthttp's default says 400), 431 for oversized headers, 408
// for a timeout and 400 for anything unparsable. The connection is then
// closed gracefully, so the client reads the answer instead of a reset.
// Embedders serving Handler with their own fasthttp.Server should set this
// as its ErrorHandler.
func (s *Server) ErrorHandler(ctx *fasthttp.RequestCtx, err error) {
	defer s.meters.countError(ctx, err)
	var small *fasthttp.ErrSmallBuffer
	var netErr net.Error
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		msg := errTooLarge
		if isBatchURI(ctx.Request.Header.RequestURI()) {
			msg = errBatchTooLarge
		}
		s.fail(ctx, fasthttp.StatusRequestEntityTooLarge, ReasonTooLarge, msg)
	case errors.As(err, &small):
		s.fail(ctx, fasthttp.StatusRequestHeaderFieldsTooLarge, ReasonProtocol, errHeaderLarge)
	case errors.As(err, &netErr) && netErr.Timeout():
		s.fail(ctx, fasthttp.StatusRequestTimeout, ReasonProtocol, errTimeout)
	default:
		s.fail(ctx, fasthttp.StatusBadRequest, ReasonProtocol, errMalformed)
	}
	lingerOnClose(ctx.Conn())
}
