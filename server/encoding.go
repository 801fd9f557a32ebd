package server

import (
	"bytes"
	"errors"
	"io"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/valyala/fasthttp"
)

var (
	strGzip  = []byte("gzip")
	strXGzip = []byte("x-gzip")
)

var (
	errGzip = jsonError("request body is not a valid gzip stream: compress it with gzip, or drop Content-Encoding")
)

// gzipReaders keeps inflaters: a gzip.Reader holds about 40 KiB of state.
var gzipReaders sync.Pool

// requestBody returns the request body, inflated if it came with
// Content-Encoding: gzip, and a function to call once the body is no longer
// used. It refuses, with a status and message, an unknown encoding (415),
// a broken gzip stream (400) and a body that inflates beyond limit bytes
// (413, given as tooLarge); it never inflates more than limit+1 bytes, so a
// gzip bomb costs no more than a body at the limit.
func (s *Server) requestBody(ctx *fasthttp.RequestCtx, limit int, tooLarge errBody) ([]byte, func(), int, errBody) {
	body := ctx.PostBody()
	ce := bytes.TrimSpace(ctx.Request.Header.ContentEncoding())
	switch {
	case len(ce) == 0 || bytes.EqualFold(ce, strIdentity):
		return body, noop, 0, nil
	case !bytes.EqualFold(ce, strGzip) && !bytes.EqualFold(ce, strXGzip):
		return nil, nil, fasthttp.StatusUnsupportedMediaType, errEncoding
	}
	bp := bufPool.Get().(*[]byte)
	release := func() { bufPool.Put(bp) }
	out, err := gunzip((*bp)[:0], body, limit)
	*bp = out[:0]
	switch {
	case errors.Is(err, errInflateLimit):
		release()
		return nil, nil, fasthttp.StatusRequestEntityTooLarge, tooLarge
	case err != nil:
		release()
		return nil, nil, fasthttp.StatusBadRequest, errGzip
	}
	return out, release, 0, nil
}

func noop() {}

var errInflateLimit = errors.New("inflated body is over the limit")

// gunzip appends the inflation of the gzip stream src (one or more members)
// to dst. It stops with errInflateLimit as soon as the output would pass
// limit bytes.
func gunzip(dst, src []byte, limit int) ([]byte, error) {
	br := bytes.NewReader(src)
	zr, _ := gzipReaders.Get().(*gzip.Reader)
	var err error
	if zr == nil {
		zr, err = gzip.NewReader(br)
	} else {
		err = zr.Reset(br)
	}
	if err != nil {
		if zr != nil {
			gzipReaders.Put(zr)
		}
		return dst, err
	}
	defer gzipReaders.Put(zr)
	start := len(dst)
	for {
		if len(dst) == cap(dst) {
			dst = append(dst, 0)[:len(dst)]
		}
		room := cap(dst) - len(dst)
		if over := len(dst) - start + room - (limit + 1); over > 0 {
			room -= over // read at most limit+1 bytes in all
		}
		n, err := zr.Read(dst[len(dst) : len(dst)+room])
		dst = dst[:len(dst)+n]
		if len(dst)-start > limit {
			return dst, errInflateLimit
		}
		if err == io.EOF {
			return dst, nil
		}
		if err != nil {
			return dst, err
		}
	}
}
