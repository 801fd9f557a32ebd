// Package auth holds busyapi's bearer tokens: it parses a tokens file, keeps
// the current set behind an atomic pointer (so reloading it on SIGHUP takes
// no lock on the request path) and checks a presented token in constant
// time.
//
// A tokens file has one token per line, with its scope:
//
//	# ingest clients
//	write 3q2+7wAAAAAXUy8Pm0L0Hw
//	# the export job
//	read  V1tJb6H0pm6tq5uiCZ9SSg
//
// Blank lines and lines starting with # are ignored. A write token may only
// store usages and a read token may only read them: a client that needs both
// gets the same token on a write line and on a read line.
package auth

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
)

// Scope is what a token allows, as a bit set.
type Scope uint8

// Scopes.
const (
	// Read allows GET and HEAD of the usages, the export and the metrics.
	Read Scope = 1 << iota
	// Write allows POST of usages.
	Write
)

// Has reports whether s includes every scope of want.
func (s Scope) Has(want Scope) bool { return s&want == want }

func (s Scope) String() string {
	switch s {
	case 0:
		return "none"
	case Read:
		return "read"
	case Write:
		return "write"
	case Read | Write:
		return "read+write"
	}
	return fmt.Sprintf("Scope(%d)", uint8(s))
}

// entry is one token: the SHA-256 of its text, so every comparison is over
// 32 bytes whatever the token's length, and its scope.
type entry struct {
	sum   [sha256.Size]byte
	scope Scope
}

// set is one parsed tokens file. It is never changed once parsed.
type set struct {
	entries     []entry
	read, write int // tokens per scope, for logs
}

// Tokens is the set of valid tokens, read from a file and re-read by Reload.
// It is safe for concurrent use; Check takes no lock and allocates nothing.
type Tokens struct {
	path string
	cur  atomic.Pointer[set]
}

// Load reads the tokens file at path. The error names the file and, for a
// malformed line, its line number.
func Load(path string) (*Tokens, error) {
	t := &Tokens{path: path}
	if err := t.Reload(); err != nil {
		return nil, err
	}
	return t, nil
}

// Reload re-reads the file and swaps the new tokens in atomically. On any
// error it keeps the tokens it had and returns the error: a bad edit never
// locks everyone out, nor lets everyone in.
func (t *Tokens) Reload() error {
	f, err := os.Open(t.path)
	if err != nil {
		return fmt.Errorf("cannot read the tokens file: %w", err)
	}
	defer f.Close()
	s, err := parse(f)
	if err != nil {
		return fmt.Errorf("tokens file %s: %w", t.path, err)
	}
	t.cur.Store(s)
	return nil
}

// Path returns the file the tokens are read from.
func (t *Tokens) Path() string { return t.path }

// Count returns the number of read and write tokens in effect.
func (t *Tokens) Count() (read, write int) {
	s := t.cur.Load()
	return s.read, s.write
}

// Check returns the scopes token grants: 0 for an unknown token. It hashes
// token and compares the hash with every known token's in constant time, so
// the time taken reveals neither which token matched nor how long they are.
func (t *Tokens) Check(token []byte) Scope {
	sum := sha256.Sum256(token)
	var scope Scope
	entries := t.cur.Load().entries
	for i := range entries {
		e := &entries[i]
		eq := subtle.ConstantTimeCompare(sum[:], e.sum[:])
		scope |= Scope(subtle.ConstantTimeSelect(eq, int(e.scope), 0))
	}
	return scope
}

// Bearer returns the token of an Authorization header value of the Bearer
// scheme (the scheme name in any case, RFC 7235), and false for any other
// value, including a missing one.
func Bearer(header []byte) ([]byte, bool) {
	const scheme = "bearer "
	if len(header) < len(scheme) || !bytes.EqualFold(header[:len(scheme)], []byte(scheme)) {
		return nil, false
	}
	return bytes.TrimSpace(header[len(scheme):]), true
}

var errEmpty = errors.New("no tokens: add lines such as \"write <token>\" or \"read <token>\"")

func parse(r io.Reader) (*set, error) {
	s := new(set)
	sc := bufio.NewScanner(r)
	n := 0
	for sc.Scan() {
		n++
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		f := strings.Fields(string(line))
		if len(f) != 2 {
			return nil, fmt.Errorf("line %d: want \"write <token>\" or \"read <token>\", got %d words", n, len(f))
		}
		var scope Scope
		switch f[0] {
		case "write":
			scope = Write
			s.write++
		case "read":
			scope = Read
			s.read++
		default:
			return nil, fmt.Errorf("line %d: unknown scope %q: use write or read", n, f[0])
		}
		if !isTokenText(f[1]) {
			return nil, fmt.Errorf("line %d: the token has characters an Authorization header cannot carry: use visible ASCII, best letters, digits and - . _ ~ + / (RFC 6750)", n)
		}
		s.entries = append(s.entries, entry{sum: sha256.Sum256([]byte(f[1])), scope: scope})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("line %d: %w", n+1, err)
	}
	if len(s.entries) == 0 {
		return nil, errEmpty
	}
	return s, nil
}

// isTokenText reports whether tok is all visible ASCII, which any HTTP
// client can send in a header. RFC 6750's b64token (letters, digits,
// -._~+/ and trailing =) is a subset: prefer it.
func isTokenText(tok string) bool {
	for i := 0; i < len(tok); i++ {
		if tok[i] < 0x21 || tok[i] > 0x7e {
			return false
		}
	}
	return tok != ""
}
