package wal

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
)

// failIn makes the op ("write" or "sync") fail, in every segment of dir
// but the first if notFirst is set, until the returned function is called.
func failIn(dir, op string, notFirst bool) (stop func()) {
	first := filepath.Join(dir, segmentName(0))
	SetFaultHook(func(o, path string) error {
		if o == op && (path != first || !notFirst) {
			return syscall.EIO
		}
		return nil
	})
	return func() { SetFaultHook(nil) }
}

// copyFiles copies the regular files of dir src to dir dst, as a crash
// would leave them.
func copyFiles(t *testing.T, src, dst string) {
	t.Helper()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err == nil {
			err = os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestFailedBatch: when the write or fdatasync of a batch fails, none of its
// records is readable, exported or recovered, not even after a crash right
// after the failure, and Close still succeeds in sync mode (everything
// acknowledged is durable). A batch that does not fit in the active segment
// goes wholly into a new one; there the write or fdatasync fails, while the
// first segment's would succeed.
func TestFailedBatch(t *testing.T) {
	tests := []struct {
		op    string
		n     uint64 // records in the failed batch, after 10 in a first one
		cross bool   // the batch does not fit in the first segment
	}{
		{"write", 10, false},
		{"sync", 10, false},
		{"write", 50, true}, // 50 records of about 120 bytes: more than the 4 KiB segment has left
		{"sync", 50, true},
	}
	for _, tt := range tests {
		name := tt.op
		if tt.cross {
			name += " across a roll"
		}
		t.Run(name, func(t *testing.T) {
			op, last := tt.op, 10+tt.n
			dir := t.TempDir()
			s, _, err := Open(Options{Dir: dir, Shards: 1, SegmentBytes: 4096, Sync: true})
			if err != nil {
				t.Fatal(err)
			}
			shardLog := shardDir(dir, 0)
			for id := uint64(1); id <= 10; id++ {
				s.Append(0, id, testBody(id))
			}
			if err := s.Flush(0); err != nil {
				t.Fatal(err)
			}
			stop := failIn(shardLog, op, tt.cross)
			defer stop()
			var failedPos []uint64 // where the failed batch's records would be
			for id, pos := uint64(11), s.logs[0].End(); id <= last; id++ {
				s.Append(0, id, testBody(id))
				failedPos = append(failedPos, pos)
				pos += uint64(RecordSize(len(testBody(id))))
			}
			if err := s.Flush(0); err == nil {
				t.Fatal("Flush succeeded on a failing disk")
			}
			check := func(when string, s *Store) {
				t.Helper()
				var got []uint64
				if _, err := s.Export(nil, 1000, func(id uint64, body []byte) { got = append(got, id) }); err != nil {
					t.Fatalf("%s: Export: %v", when, err)
				}
				want := []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
				if !slices.Equal(got, want) {
					t.Fatalf("%s: exported %v, want %v", when, got, want)
				}
				for id := uint64(11); id <= last; id++ {
					if _, err := s.Get(nil, id); !errors.Is(err, ErrNotStored) {
						t.Fatalf("%s: Get(%d) of the failed batch: %v, want ErrNotStored", when, id, err)
					}
				}
				for _, pos := range failedPos {
					if _, id, err := s.logs[0].Read(nil, pos); !errors.Is(err, ErrNotFound) {
						t.Fatalf("%s: Read(%d) finds id %d of the failed batch (%v)", when, pos, id, err)
					}
				}
			}
			check("after the failure", s)
			// The failed batch is cut off at once: a crash now (the log is
			// still open; recover a copy of its files) recovers none of it.
			crash := t.TempDir()
			copyFiles(t, shardLog, crash)
			var crashed []uint64
			l, _, err := OpenLog(crash, 4096, true, false, func(id, pos uint64, _ []byte) { crashed = append(crashed, id) })
			if err != nil {
				t.Fatalf("recovery right after the failure: %v", err)
			}
			l.Close()
			if len(crashed) != 10 {
				t.Fatalf("a crash right after the failure recovers ids %v, want 1-10", crashed)
			}
			if err := s.Close(); err != nil {
				t.Fatalf("Close of a failed log whose acknowledged batches are durable: %v", err)
			}
			stop()
			s, _, err = Open(Options{Dir: dir, Shards: 1, SegmentBytes: 4096, Sync: true})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			check("after reopening", s)
		})
	}
}

// TestBatchNeverSpansSegments: a batch is written wholly into one segment;
// the roll happens before a batch that does not fit, and a batch larger than
// a segment gets a segment of its own.
func TestBatchNeverSpansSegments(t *testing.T) {
	dir := t.TempDir()
	l, _, err := OpenLog(dir, 4096, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	id := uint64(0)
	for _, n := range []int{3, 20, 30, 1, 60, 5, 40} {
		var first, last uint64
		for i := 0; i < n; i++ {
			id++
			pos, err := l.Append(id, testBody(id))
			if err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				first = pos
			}
			last = pos
		}
		if err := l.Flush(); err != nil {
			t.Fatal(err)
		}
		if a, b := l.segmentFor(first), l.segmentFor(last); a != b {
			t.Fatalf("a batch of %d records spans segments %d and %d", n, a.base, b.base)
		}
		if s := l.segmentFor(first); s.size.Load() > 4096 && s.base != first {
			t.Fatalf("segment %d grew to %d bytes with a batch that did not start it", s.base, s.size.Load())
		}
	}
	var got int
	if _, _, err := l.ReadFrom(0, nil, func(rid uint64, body []byte) bool {
		got++
		if !bytes.Equal(body, testBody(rid)) {
			t.Fatalf("record %d reads back as %q", rid, body)
		}
		return true
	}); err != nil || got != int(id) {
		t.Fatalf("ReadFrom: %d records, %v; want %d", got, err, id)
	}
	if fi, err := os.Stat(filepath.Join(dir, segmentName(0))); err != nil || fi.Size() < 4096 {
		t.Fatalf("first segment: %v", err)
	}
}

// TestBatchFailsAsAWhole: when one record of a batch cannot be appended, the
// batch is reported failed and none of it is written.
func TestBatchFailsAsAWhole(t *testing.T) {
	dir := t.TempDir()
	s, _, err := Open(Options{Dir: dir, Shards: 1, Sync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var failed []uint64
	s.OnFlush(func(shard int, idPos []uint64, err error) {
		if err != nil {
			for i := 0; i < len(idPos); i += 2 {
				failed = append(failed, idPos[i])
			}
		}
	})
	s.Append(0, 1, testBody(1))
	s.Append(0, 2, make([]byte, MaxBody+1))
	s.Append(0, 3, testBody(3))
	if err := s.Flush(0); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Flush: %v, want ErrTooLarge", err)
	}
	if !slices.Equal(failed, []uint64{1, 2, 3}) {
		t.Fatalf("reported failed: %v, want 1-3", failed)
	}
	n := 0
	if _, err := s.Export(nil, 10, func(uint64, []byte) { n++ }); err != nil || n != 0 {
		t.Fatalf("Export after the failed batch: %d records, %v", n, err)
	}
	// The log is not failed by it: the next batch is stored.
	s.Append(0, 4, testBody(4))
	if err := s.Flush(0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(nil, 4); err != nil {
		t.Fatal(err)
	}
}

// TestCloseFailedMemoryMode: in memory mode a failed batch had been
// acknowledged, so Close of a failed log reports the loss.
func TestCloseFailedMemoryMode(t *testing.T) {
	dir := t.TempDir()
	l, _, err := OpenLog(dir, testSegBytes, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	SetFaultHook(func(op, path string) error { return syscall.EIO })
	defer SetFaultHook(nil)
	l.Append(1, testBody(1))
	if err := l.Flush(); err == nil {
		t.Fatal("Flush succeeded on a failing disk")
	}
	if err := l.Close(); !errors.Is(err, ErrLost) {
		t.Fatalf("Close: %v, want ErrLost", err)
	}
}
