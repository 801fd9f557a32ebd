package server

import (
	"errors"
	"strconv"

	"github.com/valyala/fasthttp"

	"github.com/busyapi/busyapi/wal"
)

// Export limits.
const (
	exportDefaultLimit = 1000
	exportMaxLimit     = 10000
)

var (
	errNoLog       = jsonError("export needs the durable log: start the server with --data-dir")
	errCursor      = jsonError("invalid cursor: pass the X-Next-Cursor value of the previous export, or none to start")
	errLimit       = jsonError("invalid limit: use an integer from 1 to 10000")
	errExportRead  = jsonError("the export could not be read from the log; retry")
	strNextCursor  = "X-Next-Cursor"
	strExportCount = "X-Export-Count"
)

// export serves GET /api/usages/export?cursor=C&limit=N: up to N stored
// usages after cursor C, as NDJSON (one usage per line, as GET
// /api/usages/{id} returns it), with the cursor to pass next in the
// X-Next-Cursor header and the number of lines in X-Export-Count. An empty
// page (count 0) means the consumer has caught up; ask again later with the
// same cursor. Every stored usage appears exactly once across the pages of a
// cursor chain, in log order per shard, also across restarts.
//
// Coming back with a cursor acknowledges everything before it: retention
// then may delete it. Only flushed usages are exported (in fsync mode, only
// durable ones).
//
// A cursor that no export returned (unparsable, with more positions than
// shard logs, or with a position past a shard log's end or inside a record)
// is answered 400 and acknowledges nothing. A position that recovery cut off
// or retention removed resumes at the next usage stored.
func (s *Server) export(ctx *fasthttp.RequestCtx) {
	if s.wal == nil {
		s.fail(ctx, fasthttp.StatusNotFound, ReasonNotFound, errNoLog)
		return
	}
	args := ctx.QueryArgs()
	cursor, err := wal.ParseCursor(string(args.Peek("cursor")))
	if err != nil {
		s.fail(ctx, fasthttp.StatusBadRequest, ReasonInvalid, errCursor)
		return
	}
	limit := exportDefaultLimit
	if l := args.Peek("limit"); len(l) > 0 {
		n, err := strconv.Atoi(string(l))
		if err != nil || n < 1 || n > exportMaxLimit {
			s.fail(ctx, fasthttp.StatusBadRequest, ReasonInvalid, errLimit)
			return
		}
		limit = n
	}
	out := ctx.Response.BodyWriter()
	var line []byte
	count := 0
	next, err := s.wal.Export(cursor, limit, func(id uint64, body []byte) {
		line = strconv.AppendUint(append(line[:0], `{"id":`...), id, 10)
		line = append(line, ',')
		line = append(line, body[1:]...)
		line = append(line, '\n')
		out.Write(line)
		count++
	})
	if err != nil {
		ctx.Response.ResetBody()
		if errors.Is(err, wal.ErrBadCursor) {
			s.fail(ctx, fasthttp.StatusBadRequest, ReasonInvalid, errCursor)
			return
		}
		s.log.Error("export failed", "err", err)
		s.fail(ctx, fasthttp.StatusInternalServerError, ReasonNotFound, errExportRead)
		return
	}
	if cursor != nil {
		// Acknowledge only a cursor that read back cleanly.
		if err := s.wal.AckExport(cursor); err != nil {
			s.log.Error("cannot record the export cursor", "err", err)
		}
	}
	ctx.Response.Header.SetContentType("application/x-ndjson")
	ctx.Response.Header.Set(strNextCursor, wal.FormatCursor(next))
	ctx.Response.Header.Set(strExportCount, strconv.Itoa(count))
}
