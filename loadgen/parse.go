package loadgen

import (
	"bufio"
	"bytes"
	"errors"
	"hash/maphash"
	"io"
)

var (
	errProto = errors.New("malformed response")
	errEOF   = errors.New("connection closed by the server")

	hdrContentLength    = []byte("content-length:")
	hdrConnection       = []byte("connection:")
	hdrTransferEncoding = []byte("transfer-encoding:")
	strClose            = []byte("close")
	strKeepAlive        = []byte("keep-alive")
	strChunked          = []byte("chunked")
	strHTTP1            = []byte("HTTP/1.")
)

// respReader reads HTTP/1.1 responses from a connection with a minimal
// parser: the status line, Content-Length, Transfer-Encoding: chunked and
// Connection, and the body, which is handed out without a copy while it
// fits the bufio.Reader's buffer. It does not allocate, except to grow its
// scratch buffer for bodies larger than the read buffer.
type respReader struct {
	br      *bufio.Reader
	scratch []byte
}

// read reads one response. body is valid until the next call.
func (r *respReader) read() (status int, keepAlive bool, body []byte, err error) {
	line, err := r.br.ReadSlice('\n')
	if err != nil {
		return 0, false, nil, readErr(err)
	}
	// HTTP/1.1 201 Created
	if len(line) < 12 || !bytes.HasPrefix(line, strHTTP1) || line[8] != ' ' {
		return 0, false, nil, errProto
	}
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return 0, false, nil, errProto
		}
		status = status*10 + int(c-'0')
	}
	keepAlive = line[7] == '1'
	length, chunked := -1, false
	for {
		line, err = r.br.ReadSlice('\n')
		if err != nil {
			return 0, false, nil, readErr(err)
		}
		if len(line) <= 2 { // \r\n
			break
		}
		switch {
		case hasPrefixFold(line, hdrContentLength):
			n, ok := parseUint(bytes.TrimSpace(line[len(hdrContentLength):]))
			if !ok || n > 1<<30 {
				return 0, false, nil, errProto
			}
			length = int(n)
		case hasPrefixFold(line, hdrConnection):
			v := line[len(hdrConnection):]
			if containsFold(v, strClose) {
				keepAlive = false
			} else if containsFold(v, strKeepAlive) {
				keepAlive = true
			}
		case hasPrefixFold(line, hdrTransferEncoding):
			chunked = containsFold(line[len(hdrTransferEncoding):], strChunked)
		}
	}
	switch {
	case status < 200 || status == 204 || status == 304:
		return status, keepAlive, nil, nil
	case chunked:
		body, err = r.readChunked()
		return status, keepAlive, body, err
	case length < 0: // the body runs to the end of the connection
		r.scratch = r.scratch[:0]
		for {
			b, err := r.br.ReadSlice('\n')
			r.scratch = append(r.scratch, b...)
			if err == io.EOF {
				return status, false, r.scratch, nil
			}
			if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
				return 0, false, nil, err
			}
		}
	case length <= r.br.Size():
		body, err = r.br.Peek(length)
		if err != nil {
			return 0, false, nil, readErr(err)
		}
		_, _ = r.br.Discard(length)
		return status, keepAlive, body, nil
	default:
		r.scratch = grow(r.scratch, length)
		if _, err := io.ReadFull(r.br, r.scratch); err != nil {
			return 0, false, nil, readErr(err)
		}
		return status, keepAlive, r.scratch, nil
	}
}

// readChunked reads a chunked body into the scratch buffer.
func (r *respReader) readChunked() ([]byte, error) {
	r.scratch = r.scratch[:0]
	for {
		line, err := r.br.ReadSlice('\n')
		if err != nil {
			return nil, readErr(err)
		}
		size, ok := 0, false
		for _, c := range bytes.TrimSpace(line) {
			var d int
			switch {
			case '0' <= c && c <= '9':
				d = int(c - '0')
			case 'a' <= c && c <= 'f':
				d = int(c-'a') + 10
			case 'A' <= c && c <= 'F':
				d = int(c-'A') + 10
			case c == ';': // a chunk extension follows
			default:
				return nil, errProto
			}
			if c == ';' {
				break
			}
			size, ok = size*16+d, true
			if size > 1<<30 {
				return nil, errProto
			}
		}
		if !ok {
			return nil, errProto
		}
		if size == 0 { // trailers, then an empty line
			for {
				line, err := r.br.ReadSlice('\n')
				if err != nil {
					return nil, readErr(err)
				}
				if len(line) <= 2 {
					return r.scratch, nil
				}
			}
		}
		n := len(r.scratch)
		r.scratch = grow(r.scratch, n+size)
		if _, err := io.ReadFull(r.br, r.scratch[n:]); err != nil {
			return nil, readErr(err)
		}
		if line, err = r.br.ReadSlice('\n'); err != nil || len(bytes.TrimSpace(line)) != 0 {
			if err != nil {
				return nil, readErr(err)
			}
			return nil, errProto
		}
	}
}

func grow(b []byte, n int) []byte {
	if cap(b) >= n {
		return b[:n]
	}
	nb := make([]byte, n, max(n, 2*cap(b)))
	copy(nb, b)
	return nb
}

func readErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errEOF
	}
	if errors.Is(err, bufio.ErrBufferFull) {
		return errProto // a status or header line longer than the buffer
	}
	return err
}

func hasPrefixFold(s, lowerPrefix []byte) bool {
	if len(s) < len(lowerPrefix) {
		return false
	}
	for i, c := range lowerPrefix {
		b := s[i]
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if b != c {
			return false
		}
	}
	return true
}

func containsFold(s, lower []byte) bool {
	for i := 0; i+len(lower) <= len(s); i++ {
		if hasPrefixFold(s[i:], lower) {
			return true
		}
	}
	return false
}

func parseUint(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

var (
	keyID  = []byte(`"id"`)
	keyIDs = []byte(`"ids"`)
	// idSeed hashes ids that are JSON strings rather than numbers.
	idSeed = maphash.MakeSeed()
)

// scanIDs adds to s each id of a 2xx answer's body: the value of "id"
// ({"id":N}, POST /api/usages) or each element of "ids"
// ({"ids":[N,...]}, the batch endpoint). Ids are JSON integers; an id that
// is a JSON string is hashed (64 bits) for the duplicate check. It returns
// the number of ids found.
func scanIDs(body []byte, batch bool, s *idStore) int {
	key := keyID
	if batch {
		key = keyIDs
	}
	i := bytes.Index(body, key)
	if i < 0 {
		return 0
	}
	b := skipSpace(body[i+len(key):])
	if len(b) == 0 || b[0] != ':' {
		return 0
	}
	b = skipSpace(b[1:])
	if !batch {
		id, _, ok := scanID(b)
		if ok {
			s.add(id)
			return 1
		}
		return 0
	}
	if len(b) == 0 || b[0] != '[' {
		return 0
	}
	b = b[1:]
	n := 0
	for {
		b = skipSpace(b)
		if len(b) == 0 || b[0] == ']' {
			return n
		}
		id, rest, ok := scanID(b)
		if !ok {
			return n
		}
		s.add(id)
		n++
		b = skipSpace(rest)
		if len(b) > 0 && b[0] == ',' {
			b = b[1:]
		}
	}
}

// scanID reads a JSON integer or string at the start of b.
func scanID(b []byte) (id uint64, rest []byte, ok bool) {
	if len(b) > 0 && b[0] == '"' {
		e := bytes.IndexByte(b[1:], '"')
		if e < 0 {
			return 0, nil, false
		}
		return maphash.Bytes(idSeed, b[1:1+e]) | 1<<63, b[2+e:], true
	}
	e := 0
	for e < len(b) && b[e] >= '0' && b[e] <= '9' {
		e++
	}
	id, ok = parseUint(b[:e])
	return id, b[e:], ok
}

func skipSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t' || b[0] == '\n' || b[0] == '\r') {
		b = b[1:]
	}
	return b
}
