package server

import (
	"github.com/valyala/fasthttp"

	"github.com/busyapi/busyapi/auth"
)

// pathAPI prefixes every path that needs a token (besides pathMetrics).
const pathAPI = "/api/"

var (
	strAuthorization   = []byte("Authorization")
	strWWWAuthenticate = []byte("WWW-Authenticate")
	// RFC 6750 section 3: no error code when the request had no token.
	strChallenge        = []byte(`Bearer`)
	strChallengeInvalid = []byte(`Bearer error="invalid_token"`)
	strChallengeWrite   = []byte(`Bearer error="insufficient_scope", scope="write"`)
	strChallengeRead    = []byte(`Bearer error="insufficient_scope", scope="read"`)
)

var (
	errNoTokenWrite = jsonError("authentication required: send Authorization: Bearer <token> with a write token")
	errNoTokenRead  = jsonError("authentication required: send Authorization: Bearer <token> with a read token")
	errBadToken     = jsonError("invalid token: it is not in the server's tokens file; check it, or ask for a new one")
	errScopeWrite   = jsonError("this token may not store usages: use a write token")
	errScopeRead    = jsonError("this token may not read: use a read token")
)

// requiredScope is the scope a request needs: reads (GET, HEAD) of anything
// under /api/ and of /metrics need a read token, every other method under
// /api/ (POST /api/usages, /api/usages/batch, and any method added later)
// needs a write token. OPTIONS (which only lists the allowed methods) and
// everything else (/, /healthz, /readyz) is open. Unknown paths under /api/
// need a token too, so a client without one learns nothing about routes.
func requiredScope(ctx *fasthttp.RequestCtx, path []byte) auth.Scope {
	api := len(path) >= len(pathAPI) && string(path[:len(pathAPI)]) == pathAPI
	if (!api && string(path) != pathMetrics) || ctx.IsOptions() {
		return 0
	}
	if ctx.IsGet() || ctx.IsHead() || !api {
		return auth.Read
	}
	return auth.Write
}

// authorize checks the request's bearer token when the server has tokens.
// It answers 401 (no token, or an unknown one) or 403 (a token without the
// scope the request needs) and returns false, or returns true to go on.
// It allocates nothing.
func (s *Server) authorize(ctx *fasthttp.RequestCtx, path []byte) bool {
	tokens := s.cfg.Tokens
	if tokens == nil {
		return true
	}
	need := requiredScope(ctx, path)
	if need == 0 {
		return true
	}
	token, ok := auth.Bearer(ctx.Request.Header.PeekBytes(strAuthorization))
	if !ok {
		ctx.Response.Header.SetBytesKV(strWWWAuthenticate, strChallenge)
		msg := errNoTokenRead
		if need == auth.Write {
			msg = errNoTokenWrite
		}
		s.fail(ctx, fasthttp.StatusUnauthorized, ReasonToken, msg)
		return false
	}
	has := tokens.Check(token)
	switch {
	case has == 0:
		ctx.Response.Header.SetBytesKV(strWWWAuthenticate, strChallengeInvalid)
		s.fail(ctx, fasthttp.StatusUnauthorized, ReasonToken, errBadToken)
		return false
	case !has.Has(need) && need == auth.Write:
		ctx.Response.Header.SetBytesKV(strWWWAuthenticate, strChallengeWrite)
		s.fail(ctx, fasthttp.StatusForbidden, ReasonForbidden, errScopeWrite)
		return false
	case !has.Has(need):
		ctx.Response.Header.SetBytesKV(strWWWAuthenticate, strChallengeRead)
		s.fail(ctx, fasthttp.StatusForbidden, ReasonForbidden, errScopeRead)
		return false
	}
	return true
}
