package server

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/valyala/fasthttp"
)

var errPanic = jsonError("internal error: the server failed on this request and logged why; nothing was stored. Retry, and report it if it persists")

// after is deferred by Handler for every request. It recovers a panic of
// the handler (fasthttp does not: a panic would kill the process), and
// writes the access log line of a sampled request. Deferring it costs no
// allocation (an open-coded defer).
func (s *Server) after(ctx *fasthttp.RequestCtx, sampled bool) {
	if v := recover(); v != nil {
		s.recovered(ctx, v)
	}
	if sampled {
		s.accessLog(ctx)
	}
}

// recovered answers 500 for a request whose handler panicked with v, counts
// it in Stats.Panics and logs it once with the stack.
func (s *Server) recovered(ctx *fasthttp.RequestCtx, v any) {
	s.panics.Add(1)
	s.log.Error("handler panicked: answered 500, serving on",
		"panic", fmt.Sprint(v), "method", string(ctx.Method()), "path", string(ctx.Path()),
		"stack", string(debug.Stack()))
	ctx.Response.Reset() // whatever the handler had set
	ctx.SetStatusCode(fasthttp.StatusInternalServerError)
	ctx.Response.Header.SetContentTypeBytes(strJSON)
	ctx.Response.SetBody(errPanic)
}

// sample reports whether this request is one the access log samples: one in
// Config.AccessLogSample, picked with an atomic counter. With the access log
// off it only reads a field.
func (s *Server) sample() bool {
	n := s.cfg.AccessLogSample
	if n <= 0 {
		return false
	}
	return n == 1 || s.requests.Add(1)%uint64(n) == 0
}

func (s *Server) accessLog(ctx *fasthttp.RequestCtx) {
	s.log.LogAttrs(context.Background(), slog.LevelInfo, "request",
		slog.String("method", string(ctx.Method())),
		slog.String("path", string(ctx.Path())),
		slog.Int("status", ctx.Response.StatusCode()),
		slog.Duration("duration", time.Since(ctx.Time())),
		slog.String("remote", ctx.RemoteAddr().String()))
}
