package server

import (
	"bytes"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/busyapi/busyapi/shard"
)

const pathBatch = "/api/usages/batch"

// batchWait bounds how long a batch waits for room in its shard's queue
// before it is answered 503.
const batchWait = time.Second

var (
	strNDJSON  = []byte("application/x-ndjson")
	strNDJSON2 = []byte("application/ndjson")
	strJSONL   = []byte("application/jsonl")
)

var (
	errBatchMediaType = jsonError("unsupported Content-Type: send application/x-ndjson (one usage per line) or application/json (an array of usages)")
	errBatchEmpty     = jsonError("batch has no usages: send at least one")
	errBatchNotArray  = jsonError("request body must be a JSON array of usage objects (or send application/x-ndjson)")
	errBatchSyntax    = jsonError("request body is not a valid JSON array: separate the usages with commas and close it with ]")
	errBatchTrailing  = jsonError("request body has data after the JSON array: send exactly one array")
	errBatchTooMany   = jsonError("batch has too many usages: split it below the server's --max-batch-items limit")
	errBatchTooLarge  = jsonError("batch is too large: split it below the server's --max-batch-bytes limit (counted after decompression)")
	errMethodBatch    = jsonError("method not allowed: use POST to store a batch of usages")
)

// batchFormat is how a batch body lists its usages.
type batchFormat int

const (
	formatNDJSON batchFormat = iota
	formatArray
)

// batchFormatOf picks the format from the Content-Type, or from the body's
// first byte when there is none.
func batchFormatOf(ct, body []byte) (batchFormat, bool) {
	if len(ct) == 0 {
		if b := bytes.TrimLeft(body, " \t\r\n"); len(b) > 0 && b[0] == '[' {
			return formatArray, true
		}
		return formatNDJSON, true
	}
	if i := bytes.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = bytes.TrimSpace(ct)
	switch {
	case bytes.EqualFold(ct, strJSON):
		return formatArray, true
	case bytes.EqualFold(ct, strNDJSON), bytes.EqualFold(ct, strNDJSON2), bytes.EqualFold(ct, strJSONL):
		return formatNDJSON, true
	}
	return 0, false
}

var idsPool = sync.Pool{New: func() any { return new([]uint64) }}

// postBatch stores every usage of a batch, or none: POST /api/usages/batch.
func (s *Server) postBatch(ctx *fasthttp.RequestCtx) {
	body, release, status, msg := s.requestBody(ctx, s.cfg.MaxBatchBytes, errBatchTooLarge)
	if msg != nil {
		s.fail(ctx, status, reasonOf(status), msg)
		return
	}
	defer release()
	format, ok := batchFormatOf(ctx.Request.Header.ContentType(), body)
	if !ok {
		s.fail(ctx, fasthttp.StatusUnsupportedMediaType, ReasonMediaType, errBatchMediaType)
		return
	}
	b := shard.GetBatch()
	p := s.parsers.Get()
	status, index, msg := splitBatch(p, format, body, s.cfg.MaxBatchItems, b)
	s.parsers.Put(p)
	if msg != nil {
		b.Release()
		if index >= 0 {
			s.rejected[ReasonInvalid].Add(1)
			s.batchError(ctx, index, msg)
			return
		}
		s.fail(ctx, status, reasonOf(status), msg)
		return
	}
	var claim *idemClaim
	if key, present, ok := idemKey(&ctx.Request.Header); present {
		if claim = s.claimKey(ctx, routeBatch, body, key, ok); claim == nil {
			b.Release()
			return
		}
	}
	s.storeBatch(ctx, b, claim, routeBatch)
}

// claimKey claims the Idempotency-Key of a request (key and ok as idemKey
// returns them) for storing body: a malformed key answers 400, a key
// already answered or in flight gets that answer (or 409, 422), and nil is
// returned; otherwise the claim, under which the request is to be stored.
func (s *Server) claimKey(ctx *fasthttp.RequestCtx, route int, body, key []byte, ok bool) *idemClaim {
	if !ok {
		s.fail(ctx, fasthttp.StatusBadRequest, ReasonInvalid, errIdemKey)
		return nil
	}
	return s.idem.begin(s, ctx, key, route, body)
}

// storeBatch queues b and answers 201 with its ids, as route answers
// them, or the reason it could not. With a claim, the answer is also
// remembered for the claim's Idempotency-Key.
func (s *Server) storeBatch(ctx *fasthttp.RequestCtx, b *shard.Batch, claim *idemClaim, route int) {
	n := b.Len()
	var trailer []byte
	if claim != nil {
		b.SetTrailer(func(ids []uint64) []byte {
			trailer = claim.trailer(appendIDs(nil, route, ids))
			return trailer
		})
	}
	ip := idsPool.Get().(*[]uint64)
	defer idsPool.Put(ip)
	hint := ctx.ConnID()
	ids, ticket, err := s.set.PutBatch(hint, b, (*ip)[:0])
	// Batches are big and few: rather than refuse one because its shard
	// has too many queued, wait for the drainer, for up to a second, then
	// answer 503.
	if errors.Is(err, shard.ErrFull) {
		deadline := time.Now().Add(batchWait) // the clock only when full
		for errors.Is(err, shard.ErrFull) && time.Now().Before(deadline) {
			s.set.WaitRoom(hint)
			ids, ticket, err = s.set.PutBatch(hint, b, ids[:0])
		}
	}
	*ip = ids[:0]
	if err != nil {
		b.Release()
	} else if s.fsync || s.set.Backlogged(ticket) {
		err = s.set.Wait(ticket)
	}
	if err != nil {
		if claim != nil {
			claim.abandon()
		}
		s.putFailed(ctx, err)
		return
	}
	s.stored.Add(uint64(n))
	if claim != nil {
		claim.end(trailer)
	}
	if route == routeUsages {
		answerCreated(ctx, ids[0])
		return
	}
	ctx.SetStatusCode(fasthttp.StatusCreated)
	ctx.Response.Header.SetContentTypeBytes(strJSON)
	setBody(ctx, func(out []byte) []byte { return appendIDs(out, route, ids) })
}

// setBody sets the response body to what fill appends, built in a pooled
// buffer (SetBody copies it).
func setBody(ctx *fasthttp.RequestCtx, fill func([]byte) []byte) {
	bp := bufPool.Get().(*[]byte)
	*bp = fill((*bp)[:0])
	ctx.Response.SetBody(*bp)
	bufPool.Put(bp)
}

// appendIDs appends the body of a 201: {"id":N} for one usage, or
// {"ids":[...]} for a batch.
func appendIDs(out []byte, route int, ids []uint64) []byte {
	if route == routeUsages {
		return appendID(out, ids[0])
	}
	out = append(out, `{"ids":[`...)
	for k, id := range ids {
		if k > 0 {
			out = append(out, ',')
		}
		out = strconv.AppendUint(out, id, 10)
	}
	return append(out, "]}"...)
}

// reasonOf maps a refusal's status to its Stats reason.
func reasonOf(status int) int {
	switch status {
	case fasthttp.StatusRequestEntityTooLarge:
		return ReasonTooLarge
	case fasthttp.StatusUnsupportedMediaType:
		return ReasonMediaType
	}
	return ReasonInvalid
}

// batchError answers 400 {"error":"item I: ...","index":I}.
func (s *Server) batchError(ctx *fasthttp.RequestCtx, index int, msg errBody) {
	ctx.SetStatusCode(fasthttp.StatusBadRequest)
	ctx.Response.Header.SetContentTypeBytes(strJSON)
	// msg is {"error":"..."}: splice the index in front of its text and
	// after it as a field.
	const prefix = `{"error":"`
	setBody(ctx, func(out []byte) []byte {
		out = append(out, prefix...)
		out = append(out, "usage "...)
		out = strconv.AppendInt(out, int64(index), 10)
		out = append(out, " of the batch (counting from 0): "...)
		out = append(out, msg[len(prefix):len(msg)-1]...)
		out = append(out, `,"index":`...)
		out = strconv.AppendInt(out, int64(index), 10)
		return append(out, '}')
	})
}

// splitBatch validates every usage of body and adds it to b. On the first
// problem it returns its status and message, and the index of the usage at
// fault, or -1 if the problem is not one usage's.
func splitBatch(p *usageParser, format batchFormat, body []byte, maxItems int, b *shard.Batch) (int, int, errBody) {
	add := func(item []byte) (int, int, errBody) {
		if b.Len() >= maxItems {
			return fasthttp.StatusRequestEntityTooLarge, -1, errBatchTooMany
		}
		v, bad := validateUsage(p, item)
		if bad != nil {
			return fasthttp.StatusBadRequest, b.Len(), bad
		}
		b.Add(v)
		return 0, 0, nil
	}
	if format == formatNDJSON {
		for len(body) > 0 {
			line := body
			rest := []byte(nil)
			if i := bytes.IndexByte(body, '\n'); i >= 0 {
				line, rest = body[:i], body[i+1:]
			}
			// A blank last line is allowed; a blank line inside is an
			// empty usage.
			if len(rest) == 0 && len(bytes.TrimSpace(line)) == 0 {
				break
			}
			if st, i, msg := add(line); msg != nil {
				return st, i, msg
			}
			body = rest
		}
	} else {
		body = bytes.TrimLeft(body, " \t\r\n")
		if len(body) == 0 || body[0] != '[' {
			return fasthttp.StatusBadRequest, -1, errBatchNotArray
		}
		body = bytes.TrimLeft(body[1:], " \t\r\n")
		if len(body) > 0 && body[0] == ']' {
			body = body[1:]
		} else {
			for {
				end := valueEnd(body)
				if st, i, msg := add(body[:end]); msg != nil {
					return st, i, msg
				}
				body = bytes.TrimLeft(body[end:], " \t\r\n")
				if len(body) == 0 {
					return fasthttp.StatusBadRequest, -1, errBatchSyntax
				}
				c := body[0]
				body = bytes.TrimLeft(body[1:], " \t\r\n")
				if c == ']' {
					break
				}
				if c != ',' {
					return fasthttp.StatusBadRequest, -1, errBatchSyntax
				}
			}
		}
		if len(bytes.TrimLeft(body, " \t\r\n")) > 0 {
			return fasthttp.StatusBadRequest, -1, errBatchTrailing
		}
	}
	if b.Len() == 0 {
		return fasthttp.StatusBadRequest, -1, errBatchEmpty
	}
	return 0, 0, nil
}

// valueEnd returns where the JSON value at the start of b ends: after the
// bracket matching its first one, skipping strings, or, for a scalar, at
// the next comma, bracket or white space. It only splits; each piece is
// validated strictly on its own, and the separators by the caller, so
// malformed input can split oddly but is never accepted.
func valueEnd(b []byte) int {
	depth := 0
	for i := 0; i < len(b); i++ {
		switch c := b[i]; c {
		case '"':
			for i++; i < len(b) && b[i] != '"'; i++ {
				if b[i] == '\\' {
					i++
				}
			}
			if depth == 0 {
				return min(i+1, len(b))
			}
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return i
			}
			depth--
			if depth == 0 {
				return i + 1
			}
		case ',', ' ', '\t', '\r', '\n':
			if depth == 0 {
				return i
			}
		}
	}
	return len(b)
}
