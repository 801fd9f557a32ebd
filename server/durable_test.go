package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fastjson"

	"github.com/busyapi/busyapi/wal"
)

func newDurable(t *testing.T, dir string, cfg Config) *Server {
	t.Helper()
	cfg.DataDir = dir
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

func postID(t *testing.T, s *Server, body string) (uint64, int) {
	t.Helper()
	resp := call(s, "POST", "/api/usages", "application/json", []byte(body))
	if resp.StatusCode() != 201 {
		return 0, resp.StatusCode()
	}
	return uint64(fastjson.GetInt(resp.Body(), "id")), 201
}

func usageBody(i int) string {
	return fmt.Sprintf(`{"patientId":%d,"timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol","n":%d}`, i, i)
}

func checkRead(t *testing.T, s *Server, id uint64, body string) {
	t.Helper()
	resp := call(s, "GET", "/api/usages/"+strconv.FormatUint(id, 10), "", nil)
	want := `{"id":` + strconv.FormatUint(id, 10) + `,` + body[1:]
	if resp.StatusCode() != 200 || string(resp.Body()) != want {
		t.Fatalf("GET %d: %d %s, want %s", id, resp.StatusCode(), resp.Body(), want)
	}
}

// TestDurableRestart: in fsync mode every acknowledged usage reads back from
// the log after a restart (the cache starts empty), and new ids are above
// every id handed out before.
func TestDurableRestart(t *testing.T) {
	dir := t.TempDir()
	s := newDurable(t, dir, Config{IDBlock: 16})
	if s.Config().Ack != AckFsync {
		t.Fatalf("default ack with a data dir is %q, want fsync", s.Config().Ack)
	}
	acked := map[uint64]string{}
	var maxID uint64
	for i := 0; i < 300; i++ {
		id, status := postID(t, s, usageBody(i))
		if status != 201 {
			t.Fatalf("POST: %d", status)
		}
		acked[id] = usageBody(i)
		maxID = max(maxID, id)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	s = newDurable(t, dir, Config{IDBlock: 16})
	defer s.Shutdown(context.Background())
	s.cache.Reset()
	for id, body := range acked {
		checkRead(t, s, id, body)
	}
	id, status := postID(t, s, usageBody(1000))
	if status != 201 || id <= maxID {
		t.Fatalf("after restart: id %d (status %d), want above %d", id, status, maxID)
	}
}

func TestSecondProcessRefused(t *testing.T) {
	dir := t.TempDir()
	s := newDurable(t, dir, Config{})
	defer s.Shutdown(context.Background())
	if _, err := New(Config{DataDir: dir}); !errors.Is(err, wal.ErrLocked) {
		t.Fatalf("second server on one data dir: %v, want ErrLocked", err)
	}
}

// TestDiskFaults injects write and fsync failures: the POSTs get 503 with
// Retry-After, nothing half-written is acknowledged or readable, reads keep
// working, and the server takes writes again by itself once the disk does.
func TestDiskFaults(t *testing.T) {
	for _, op := range []string{"write", "sync"} {
		t.Run(op, func(t *testing.T) {
			dir := t.TempDir()
			s := newDurable(t, dir, Config{Shards: 1})
			okID, status := postID(t, s, usageBody(1))
			if status != 201 {
				t.Fatal(status)
			}
			var failing sync.Map
			failing.Store("on", true)
			wal.SetFaultHook(func(o, path string) error {
				if _, on := failing.Load("on"); on && o == op {
					return syscall.ENOSPC
				}
				return nil
			})
			defer wal.SetFaultHook(nil)
			resp := call(s, "POST", "/api/usages", "application/json", []byte(usageBody(2)))
			if resp.StatusCode() != 503 || len(resp.Header.Peek("Retry-After")) == 0 {
				t.Fatalf("POST on a failing disk: %d %s", resp.StatusCode(), resp.Body())
			}
			errorOf(t, resp)
			if _, status := postID(t, s, usageBody(3)); status != 503 {
				t.Fatalf("POST while the log is failed: %d, want 503", status)
			}
			checkRead(t, s, okID, usageBody(1))
			failing.Delete("on")
			deadline := time.Now().Add(10 * time.Second)
			var newID uint64
			for {
				id, status := postID(t, s, usageBody(4))
				if status == 201 {
					newID = id
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the server did not recover after the disk did")
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err := s.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			// After a restart: the acknowledged usages are there, the failed
			// one is not (no partial record), and the log opens cleanly.
			s = newDurable(t, dir, Config{Shards: 1})
			defer s.Shutdown(context.Background())
			checkRead(t, s, okID, usageBody(1))
			checkRead(t, s, newID, usageBody(4))
			n := 0
			if _, err := s.wal.Export(nil, 100, func(id uint64, body []byte) { n++ }); err != nil || n != 2 {
				t.Fatalf("log holds %d usages (%v), want the 2 acknowledged", n, err)
			}
		})
	}
}

// TestDiskFullTmpfs fills a real (tmpfs) file system: 503 while it is full,
// reads keep working, writes resume once space is freed. It needs root to
// mount tmpfs, as in CI.
func TestDiskFullTmpfs(t *testing.T) {
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount tmpfs (needs root): %v %s", err, out)
	}
	defer exec.Command("umount", mnt).Run()
	filler := filepath.Join(mnt, "filler")
	if err := os.WriteFile(filler, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	s := newDurable(t, filepath.Join(mnt, "data"), Config{Shards: 1})
	defer s.Shutdown(context.Background())
	acked := map[uint64]string{}
	full := false
	big := strings.Repeat("x", 8000)
	for i := 0; i < 1000 && !full; i++ {
		body := fmt.Sprintf(`{"patientId":%d,"timestamp":"t","medication":"m","pad":"%s"}`, i, big)
		id, status := postID(t, s, body)
		switch status {
		case 201:
			acked[id] = body
		case 503:
			full = true
		default:
			t.Fatalf("status %d", status)
		}
	}
	if !full {
		t.Fatal("the disk never filled")
	}
	for id, body := range acked {
		checkRead(t, s, id, body)
	}
	os.Remove(filler)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, status := postID(t, s, usageBody(1)); status == 201 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no recovery after space was freed")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("%d usages stored before the disk was full", len(acked))
}

// TestExportUnderIngest pages through the export while usages are posted
// and across a restart: every acknowledged usage appears exactly once.
func TestExportUnderIngest(t *testing.T) {
	dir := t.TempDir()
	s := newDurable(t, dir, Config{SegmentBytes: 64 << 10})
	acked := sync.Map{}
	seen := map[uint64]int{}
	cursor := ""
	page := func(s *Server) int {
		uri := "/api/usages/export?limit=37"
		if cursor != "" {
			uri += "&cursor=" + cursor
		}
		resp := call(s, "GET", uri, "", nil)
		if resp.StatusCode() != 200 {
			t.Fatalf("export: %d %s", resp.StatusCode(), resp.Body())
		}
		n := 0
		for _, line := range strings.Split(strings.TrimSuffix(string(resp.Body()), "\n"), "\n") {
			if line == "" {
				continue
			}
			v, err := fastjson.Parse(line)
			if err != nil {
				t.Fatalf("export line %q: %v", line, err)
			}
			seen[uint64(v.GetInt("id"))]++
			n++
		}
		if c := string(resp.Header.Peek("X-Export-Count")); c != strconv.Itoa(n) {
			t.Fatalf("X-Export-Count %s for %d lines", c, n)
		}
		cursor = string(resp.Header.Peek("X-Next-Cursor"))
		return n
	}
	run := func(s *Server, from int) {
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for i := 0; i < 250; i++ {
					body := usageBody(from + w*1000 + i)
					if id, status := postID(t, s, body); status == 201 {
						acked.Store(id, body)
					}
				}
			}(w)
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		for {
			select {
			case <-done:
				return
			default:
				page(s)
			}
		}
	}
	run(s, 0)
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	s = newDurable(t, dir, Config{SegmentBytes: 64 << 10})
	defer s.Shutdown(context.Background())
	run(s, 10000)
	for page(s) > 0 {
	}
	n := 0
	acked.Range(func(k, v any) bool {
		n++
		if seen[k.(uint64)] != 1 {
			t.Fatalf("usage %d exported %d times", k, seen[k.(uint64)])
		}
		return true
	})
	if len(seen) != n {
		t.Fatalf("exported %d usages, acknowledged %d", len(seen), n)
	}
	for id, c := range seen {
		if c != 1 {
			t.Fatalf("usage %d exported %d times", id, c)
		}
	}
}

// TestShutdownAfterDiskFault: a shard whose log failed (and has not
// recovered) does not make Shutdown fail in fsync mode: every usage answered
// 201 is durable, and the one answered 503 is not stored.
func TestShutdownAfterDiskFault(t *testing.T) {
	for _, op := range []string{"write", "sync"} {
		t.Run(op, func(t *testing.T) {
			dir := t.TempDir()
			s := newDurable(t, dir, Config{Shards: 1})
			okID, status := postID(t, s, usageBody(1))
			if status != 201 {
				t.Fatal(status)
			}
			wal.SetFaultHook(func(o, path string) error {
				if o == op {
					return syscall.EIO
				}
				return nil
			})
			defer wal.SetFaultHook(nil)
			if _, status := postID(t, s, usageBody(2)); status != 503 {
				t.Fatalf("POST on a failing disk: %d, want 503", status)
			}
			if err := s.Shutdown(context.Background()); err != nil {
				t.Fatalf("Shutdown after a disk fault: %v", err)
			}
			wal.SetFaultHook(nil)
			s = newDurable(t, dir, Config{Shards: 1})
			defer s.Shutdown(context.Background())
			checkRead(t, s, okID, usageBody(1))
			var ids []uint64
			if _, err := s.wal.Export(nil, 100, func(id uint64, body []byte) { ids = append(ids, id) }); err != nil || len(ids) != 1 || ids[0] != okID {
				t.Fatalf("log holds %v (%v), want only %d", ids, err, okID)
			}
		})
	}
}

// TestExportBadCursor: a cursor that no export returned is answered 400 and
// acknowledges nothing, so retention cannot delete unexported usages on its
// account.
func TestExportBadCursor(t *testing.T) {
	dir := t.TempDir()
	s := newDurable(t, dir, Config{Shards: 2})
	defer s.Shutdown(context.Background())
	for i := 0; i < 20; i++ {
		if _, status := postID(t, s, usageBody(i)); status != 201 {
			t.Fatal(status)
		}
	}
	get := func(cursor string) (int, string) {
		resp := call(s, "GET", "/api/usages/export?limit=5&cursor="+cursor, "", nil)
		return resp.StatusCode(), string(resp.Header.Peek("X-Next-Cursor"))
	}
	status, first := get("")
	if status != 200 {
		t.Fatal(status)
	}
	status, second := get(first) // acknowledges first
	if status != 200 {
		t.Fatal(status)
	}
	mark, err := os.ReadFile(filepath.Join(dir, "export.cursor"))
	if err != nil {
		t.Fatal(err)
	}
	pos, _ := wal.ParseCursor(second)
	used := slices.IndexFunc(pos, func(p uint64) bool { return p > 0 }) // a shard that has read records
	moved := func(delta int64) string {
		c := slices.Clone(pos)
		c[used] = uint64(int64(c[used]) + delta)
		return wal.FormatCursor(c)
	}
	tests := []struct {
		name, cursor string
	}{
		{"past the end", moved(1 << 20)},
		{"far past the end", "0.99999999999"},
		{"inside a record", moved(-1)},
		{"more positions than shard logs", second + ".0"},
		{"not a number", "abc"},
		{"empty position", "1..2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if status, _ := get(tt.cursor); status != 400 {
				t.Fatalf("export with cursor %q: %d, want 400", tt.cursor, status)
			}
			if now, _ := os.ReadFile(filepath.Join(dir, "export.cursor")); string(now) != string(mark) {
				t.Fatalf("cursor %q moved the export mark from %q to %q", tt.cursor, mark, now)
			}
		})
	}
	if status, _ := get(second); status != 200 {
		t.Fatalf("the valid cursor after bad ones: %d", status)
	}
}
