package server

import "github.com/valyala/fasthttp"

const (
	pathHealthz = "/healthz"
	pathReadyz  = "/readyz"
)

var (
	strStatusOK         = []byte(`{"status":"ok"}`)
	errMethodHealth     = jsonError("method not allowed: use GET or HEAD")
	errNotReadyStarting = jsonError("not ready: the log is being recovered; retry after the Retry-After delay")
	errNotReadyShutdown = jsonError("not ready: the server is shutting down; send requests to another instance")
	errNotReadyIDs      = jsonError("not ready: no ids are reserved (in scale-out mode, the cluster-wide id lease has not succeeded yet: is NATS reachable?); retry after the Retry-After delay")
	errNotReadyLog      = jsonError("not ready: the log cannot be written (disk full or failing) on at least one shard; the server retries every second and is ready again once the disk is")
)

// healthz answers GET /healthz: 200 {"status":"ok"} while the process
// serves HTTP at all (liveness).
func (s *Server) healthz(ctx *fasthttp.RequestCtx) {
	if !ctx.IsGet() && !ctx.IsHead() {
		s.methodNotAllowed(ctx, "GET, HEAD, OPTIONS", errMethodHealth)
		return
	}
	ctx.Response.Header.SetContentTypeBytes(strJSON)
	ctx.Response.SetBody(strStatusOK)
}

// readyz answers GET /readyz: 200 {"status":"ok"} when the server can store
// usages (the log is recovered and every shard can write it; in scale-out
// mode the body adds the forward lag, which never makes it unready), else 503 with
// Retry-After and a JSON error saying why (readiness: take the instance out
// of a load balancer meanwhile). During Shutdown it answers 503.
func (s *Server) readyz(ctx *fasthttp.RequestCtx) {
	if !ctx.IsGet() && !ctx.IsHead() {
		s.methodNotAllowed(ctx, "GET, HEAD, OPTIONS", errMethodHealth)
		return
	}
	if msg := s.notReady(); msg != nil {
		ctx.Response.Header.SetBytesKV(strRetryAfter, strOne)
		ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
		ctx.Response.Header.SetContentTypeBytes(strJSON)
		ctx.Response.SetBody(msg)
		return
	}
	ctx.Response.Header.SetContentTypeBytes(strJSON)
	s.readyBody(ctx)
}

// notReady returns why the server cannot take usages now, or nil.
func (s *Server) notReady() errBody {
	switch {
	case s.closed.Load():
		return errNotReadyShutdown
	case !s.ready.Load():
		return errNotReadyStarting
	}
	for i := range s.set.Len() {
		if s.set.Failed(i) {
			return errNotReadyLog
		}
	}
	if ids := s.set.IDs(); ids.Remaining() == 0 && !ids.Pending() {
		// In scale-out mode before the first cluster lease, or with the
		// leased ranges used up while NATS is away: POSTs get 503.
		return errNotReadyIDs
	}
	return nil
}
