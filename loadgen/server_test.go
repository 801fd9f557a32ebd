package loadgen

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testServer is an HTTP/1.1 server on loopback for the generator's tests,
// written on raw TCP to control what a real server hides: each answer is
// sent delay after its request arrived (pipelined requests are answered
// in order, but their delays overlap), it can stall every answer once, and
// it answers ids as told.
type testServer struct {
	t     *testing.T
	ln    net.Listener
	delay time.Duration
	// After stallAfter requests, no answer leaves for stallFor.
	stallAfter int64
	stallFor   time.Duration
	status     int
	// ids makes the answer's ids; default unique ids from 1.
	ids func(s *testServer, usages int) []uint64
	// closeAfter > 0 closes each connection after that many answers,
	// without Connection: close.
	closeAfter int

	requests   atomic.Int64
	usages     atomic.Int64
	nextID     atomic.Uint64
	stallUntil atomic.Int64 // mono time
	maxBurst   atomic.Int64 // most requests read back to back from one connection's buffer
	auth       atomic.Value // the last Authorization header

	mu    sync.Mutex
	paths map[string]int // "METHOD path content-type" seen
	conns []net.Conn
	wg    sync.WaitGroup
}

func newTestServer(t *testing.T, configure func(*testServer)) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{t: t, ln: ln, status: 201, paths: map[string]int{}}
	if configure != nil {
		configure(s)
	}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(s.close)
	return s
}

func (s *testServer) url() string { return "http://" + s.ln.Addr().String() }

func (s *testServer) close() {
	s.ln.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *testServer) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns = append(s.conns, c)
		s.mu.Unlock()
		s.wg.Add(1)
		go s.serve(c)
	}
}

type pending struct {
	arrived int64
	usages  int
	batch   bool
}

// serve reads requests and hands them, in order, to a writer that answers
// each at its arrival + delay.
func (s *testServer) serve(c net.Conn) {
	defer s.wg.Done()
	defer c.Close()
	queue := make(chan pending, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.answer(c, queue)
	}()
	defer func() { <-done }()
	defer close(queue)
	br := bufio.NewReaderSize(c, 64<<10)
	burst := int64(0)
	for {
		usages, batch, err := s.readRequest(br)
		if err != nil {
			return
		}
		n := s.requests.Add(1)
		s.usages.Add(int64(usages))
		if s.stallAfter > 0 && n == s.stallAfter {
			s.stallUntil.Store(mono() + int64(s.stallFor))
		}
		burst++
		if br.Buffered() == 0 {
			if burst > s.maxBurst.Load() {
				s.maxBurst.Store(burst)
			}
			burst = 0
		}
		select {
		case queue <- pending{arrived: mono(), usages: usages, batch: batch}:
		case <-done:
			return
		}
	}
}

// readRequest reads one request and returns its number of usages: the
// lines of an NDJSON body to a batch path, or 1.
func (s *testServer) readRequest(br *bufio.Reader) (usages int, batch bool, err error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return 0, false, err
	}
	method, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
	path, _, _ := strings.Cut(rest, " ")
	length, ctype := 0, ""
	for {
		h, err := br.ReadString('\n')
		if err != nil {
			return 0, false, err
		}
		h = strings.TrimSpace(h)
		if h == "" {
			break
		}
		k, v, _ := strings.Cut(h, ":")
		switch strings.ToLower(k) {
		case "content-length":
			length, _ = strconv.Atoi(strings.TrimSpace(v))
		case "content-type":
			ctype = strings.TrimSpace(v)
		case "authorization":
			s.auth.Store(strings.TrimSpace(v))
		}
	}
	body := make([]byte, length)
	if _, err := io.ReadFull(br, body); err != nil {
		return 0, false, err
	}
	s.mu.Lock()
	s.paths[method+" "+path+" "+ctype]++
	s.mu.Unlock()
	if strings.HasSuffix(path, "/batch") {
		return bytes.Count(body, []byte("\n")), true, nil
	}
	return 1, false, nil
}

func (s *testServer) answer(c net.Conn, queue chan pending) {
	bw := bufio.NewWriterSize(c, 64<<10)
	answered := 0
	var body []byte
	for p := range queue {
		due := p.arrived + int64(s.delay)
		if st := s.stallUntil.Load(); st > due {
			due = st
		}
		if d := due - mono(); d > 0 {
			if bw.Buffered() > 0 && bw.Flush() != nil {
				return
			}
			time.Sleep(time.Duration(d))
		}
		body = body[:0]
		if s.status >= 200 && s.status < 300 {
			var ids []uint64
			if s.ids != nil {
				ids = s.ids(s, p.usages)
			} else {
				for range p.usages {
					ids = append(ids, s.nextID.Add(1))
				}
			}
			if !p.batch && len(ids) == 1 {
				body = fmt.Appendf(body, `{"id":%d}`, ids[0])
			} else {
				body = append(body, `{"ids":[`...)
				for i, id := range ids {
					if i > 0 {
						body = append(body, ',')
					}
					body = strconv.AppendUint(body, id, 10)
				}
				body = append(body, "]}"...)
			}
		} else {
			body = append(body, `{"error":"test"}`...)
		}
		fmt.Fprintf(bw, "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", s.status, len(body))
		bw.Write(body)
		answered++
		if s.closeAfter > 0 && answered >= s.closeAfter {
			bw.Flush()
			c.Close()
			for range queue {
			}
			return
		}
		if len(queue) == 0 && bw.Flush() != nil {
			return
		}
	}
	bw.Flush()
}

func (s *testServer) seen() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := map[string]int{}
	for k, v := range s.paths {
		m[k] = v
	}
	return m
}
