package server

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"hash/maphash"
	"strconv"
	"sync"
	"time"

	"github.com/VictoriaMetrics/fastcache"
	"github.com/valyala/fasthttp"
)

// Idempotent retries, after the IETF Idempotency-Key header draft. A POST
// with the header is answered once; a retry with the same key and the same
// body gets the same answer (the same ids) without storing anything again.
//
// The answers are kept in a fastcache, bounded in memory and forgetting the
// oldest first, for the idempotency window. fastcache has no atomic
// check-and-set, so a key's check and its claim happen under one of a set
// of striped locks, and a key being answered is marked in flight there:
// a concurrent request with it gets 409. The lock is never held while a
// request is stored. Requests without the header take none of this.
//
// Each answer is also written to the log, as a trailer record in the same
// flush as the usages it answered (shard.Batch.SetTrailer), so it is
// durable exactly when they are, and the keys are rebuilt from the log on
// start.

const (
	idemHeader  = "Idempotency-Key"
	maxIdemKey  = 255
	idemStripes = 256
)

var (
	strIdemHeader   = []byte(idemHeader)
	strIdemReplayed = []byte("Idempotent-Replayed")
	strTrue         = []byte("true")
)

var (
	errIdemKey      = jsonError("Idempotency-Key must be 1 to 255 printable ASCII characters, optionally in double quotes")
	errIdemMismatch = jsonError("Idempotency-Key was already used with a different request body: use a new key for a new request")
	errIdemInFlight = jsonError("a request with this Idempotency-Key is still being processed: retry after the Retry-After delay")
)

// idemEntry layout, as stored in the cache (keyed by the key) and in the
// log's trailer records (which also carry the key):
//
//	version  1 byte (1)
//	created  8 bytes, unix nanoseconds, little endian
//	digest   32 bytes, SHA-256 of the route and the decoded body
//	status   2 bytes
//	keyLen   2 bytes (trailer only; 0 in the cache)
//	key      keyLen bytes
//	response the rest
const (
	idemVersion   = 1
	offCreated    = 1
	offDigest     = offCreated + 8
	offStatus     = offDigest + sha256.Size
	offKeyLen     = offStatus + 2
	idemHeaderLen = offKeyLen + 2
)

type idemStripe struct {
	mu       sync.Mutex
	inFlight map[string]struct{}
}

// idempotency remembers the answers of requests that carried a key.
type idempotency struct {
	cache   *fastcache.Cache
	window  time.Duration
	seed    maphash.Seed
	stripes [idemStripes]idemStripe
}

func newIdempotency(cacheBytes int, window time.Duration) *idempotency {
	m := &idempotency{cache: fastcache.New(cacheBytes), window: window, seed: maphash.MakeSeed()}
	for i := range m.stripes {
		m.stripes[i].inFlight = map[string]struct{}{}
	}
	return m
}

// idemKey returns the request's key, unquoted, whether there is one, and
// whether it is well formed.
func idemKey(h *fasthttp.RequestHeader) (key []byte, present, ok bool) {
	v := h.PeekCanonical(strIdemHeader) // parsed names are canonical: no copy, no normalizing
	if v == nil {
		return nil, false, true
	}
	v = bytes.TrimSpace(v)
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	if len(v) == 0 || len(v) > maxIdemKey {
		return nil, true, false
	}
	for _, c := range v {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return nil, true, false
		}
	}
	return v, true, true
}

func idemDigest(route int, body []byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte{byte(route)})
	h.Write(body)
	var d [sha256.Size]byte
	h.Sum(d[:0])
	return d
}

// idemClaim is a key being answered by this request.
type idemClaim struct {
	m      *idempotency
	key    []byte // a copy: the request's header buffer is reused
	digest [sha256.Size]byte
}

// begin looks key up. If it was answered within the window, it writes that
// answer again (or 422 if the body differs) and returns nil. If another
// request holds it, it answers 409 and returns nil. Otherwise it claims the
// key, and the caller must end or abandon the claim.
func (m *idempotency) begin(s *Server, ctx *fasthttp.RequestCtx, key []byte, route int, body []byte) *idemClaim {
	c := &idemClaim{m: m, key: bytes.Clone(key), digest: idemDigest(route, body)}
	st := m.stripe(c.key)
	st.mu.Lock()
	v := m.get(c.key)
	if v == nil {
		if _, busy := st.inFlight[string(c.key)]; !busy {
			st.inFlight[string(c.key)] = struct{}{}
			st.mu.Unlock()
			return c
		}
	}
	st.mu.Unlock()
	switch {
	case v == nil:
		ctx.Response.Header.SetBytesKV(strRetryAfter, strOne)
		s.fail(ctx, fasthttp.StatusConflict, ReasonInvalid, errIdemInFlight)
	case !bytes.Equal(v[offDigest:offStatus], c.digest[:]):
		s.fail(ctx, fasthttp.StatusUnprocessableEntity, ReasonInvalid, errIdemMismatch)
	default:
		s.replays.Add(1)
		status := int(binary.LittleEndian.Uint16(v[offStatus:]))
		resp := v[idemHeaderLen:]
		ctx.SetStatusCode(status)
		ctx.Response.Header.SetContentTypeBytes(strJSON)
		ctx.Response.Header.SetBytesKV(strIdemReplayed, strTrue)
		if status == fasthttp.StatusCreated && route == routeUsages {
			if id, ok := parseIDResponse(resp); ok {
				ctx.Response.Header.SetBytesKV(strLocation, strconv.AppendUint([]byte(pathUsagePrefix), id, 10))
			}
		}
		ctx.Response.SetBody(resp)
	}
	return nil
}

// trailer returns the log record that remembers the answer resp (status
// 201) to this claim.
func (c *idemClaim) trailer(resp []byte) []byte {
	out := make([]byte, idemHeaderLen, idemHeaderLen+len(c.key)+len(resp))
	out[0] = idemVersion
	binary.LittleEndian.PutUint64(out[offCreated:], uint64(time.Now().UnixNano()))
	copy(out[offDigest:], c.digest[:])
	binary.LittleEndian.PutUint16(out[offStatus:], fasthttp.StatusCreated)
	binary.LittleEndian.PutUint16(out[offKeyLen:], uint16(len(c.key)))
	out = append(out, c.key...)
	return append(out, resp...)
}

// end remembers the answer recorded in trailer (made by c.trailer) and
// releases the claim.
func (c *idemClaim) end(trailer []byte) {
	c.m.remember(trailer)
	c.abandon()
}

// abandon releases the claim without remembering an answer: the request
// stored nothing, and a retry may try again.
func (c *idemClaim) abandon() {
	st := c.m.stripe(c.key)
	st.mu.Lock()
	delete(st.inFlight, string(c.key))
	st.mu.Unlock()
}

// remember caches the answer in a trailer record, unless it is malformed
// or older than the window. The caller of end holds the key's claim; a
// trailer rebuilt from the log at start needs no claim.
func (m *idempotency) remember(trailer []byte) bool {
	if len(trailer) < idemHeaderLen || trailer[0] != idemVersion {
		return false
	}
	keyLen := int(binary.LittleEndian.Uint16(trailer[offKeyLen:]))
	if len(trailer) < idemHeaderLen+keyLen || keyLen == 0 {
		return false
	}
	if m.expired(trailer) {
		return false
	}
	key := trailer[idemHeaderLen : idemHeaderLen+keyLen]
	v := make([]byte, 0, len(trailer)-keyLen)
	v = append(v, trailer[:idemHeaderLen]...)
	binary.LittleEndian.PutUint16(v[offKeyLen:], 0)
	v = append(v, trailer[idemHeaderLen+keyLen:]...)
	m.cache.SetBig(key, v)
	return true
}

// get returns the cached answer for key, or nil if there is none within
// the window.
func (m *idempotency) get(key []byte) []byte {
	v := m.cache.GetBig(nil, key)
	if len(v) < idemHeaderLen || v[0] != idemVersion {
		return nil
	}
	if m.expired(v) {
		return nil
	}
	return v
}

// expired reports whether an entry (or trailer) is older than the window.
func (m *idempotency) expired(entry []byte) bool {
	created := time.Unix(0, int64(binary.LittleEndian.Uint64(entry[offCreated:])))
	return time.Since(created) > m.window
}

func (m *idempotency) stripe(key []byte) *idemStripe {
	return &m.stripes[maphash.Bytes(m.seed, key)%idemStripes]
}

// parseIDResponse reads N from {"id":N}.
func parseIDResponse(b []byte) (uint64, bool) {
	const prefix = `{"id":`
	if !bytes.HasPrefix(b, []byte(prefix)) || len(b) < len(prefix)+2 {
		return 0, false
	}
	return parseID(b[len(prefix) : len(b)-1])
}
