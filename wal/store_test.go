package wal

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// openStore opens a one-shard store in dir with small segments.
func openStore(t *testing.T, dir string, sync, repair bool) *Store {
	t.Helper()
	s, _, err := Open(Options{Dir: dir, Shards: 1, SegmentBytes: testSegBytes, Sync: sync, Repair: repair})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// appendIDs appends ids from..to to shard 0 in batches of batch, and returns
// the position of each id.
func appendIDs(t *testing.T, s *Store, from, to uint64, batch int) {
	t.Helper()
	for id := from; id <= to; id++ {
		s.Append(0, id, testBody(id))
		if int(id-from+1)%batch == 0 || id == to {
			if err := s.Flush(0); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// export returns the ids of one Export call and the next cursor.
func export(t *testing.T, s *Store, cursor []uint64, limit int) ([]uint64, []uint64) {
	t.Helper()
	var ids []uint64
	next, err := s.Export(cursor, limit, func(id uint64, body []byte) { ids = append(ids, id) })
	if err != nil {
		t.Fatalf("Export(%v): %v", cursor, err)
	}
	return ids, next
}

func idRange(from, to uint64) []uint64 {
	var ids []uint64
	for id := from; id <= to; id++ {
		ids = append(ids, id)
	}
	return ids
}

// recordPos returns the position of id in shard 0's log.
func recordPos(t *testing.T, s *Store, id uint64) uint64 {
	t.Helper()
	_, pos, ok := s.Index().Get(id)
	if !ok {
		t.Fatalf("id %d not indexed", id)
	}
	return pos
}

// TestPositionsNeverReused: an export consumer may hold a cursor at a
// position whose record recovery then cut off (a torn tail in memory mode,
// where flushed records are exported before they are synced) or --repair
// dropped. New records never reuse those positions: the log goes on in a new
// segment above everything the cut one ever held, and the old cursor resumes
// at the first record written after the restart.
func TestPositionsNeverReused(t *testing.T) {
	tests := []struct {
		name   string
		sync   bool
		damage func(b []byte, at int) // at: the position of id 11
		repair bool
		kept   uint64 // ids 1..kept survive
	}{
		{"unsynced tail lost as zeros (memory mode)", false, func(b []byte, at int) { clear(b[at:]) }, false, 10},
		{"torn last batch, garbage (memory mode)", false, func(b []byte, at int) {
			for i := at; i < at+3000; i++ {
				b[i] = byte(i * 13)
			}
		}, false, 10},
		{"repaired corruption (fsync mode)", true, func(b []byte, at int) { b[at+headerSize+3] ^= 1 }, true, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openStore(t, dir, tt.sync, false)
			appendIDs(t, s, 1, 10, 10)
			appendIDs(t, s, 11, 30, 10)
			got, cursor := export(t, s, nil, 25) // the consumer has 1..25
			if !slices.Equal(got, idRange(1, 25)) {
				t.Fatalf("exported %v", got)
			}
			at := int(recordPos(t, s, 11))
			handedOut := cursor[0]
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(shardDir(dir, 0), segmentName(0))
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			tt.damage(b, at)
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			s = openStore(t, dir, tt.sync, tt.repair)
			defer s.Close()
			if got, _ := export(t, s, nil, 100); !slices.Equal(got, idRange(1, tt.kept)) {
				t.Fatalf("after recovery the log holds %v", got)
			}
			appendIDs(t, s, 31, 40, 4)
			if p := recordPos(t, s, 31); p < handedOut {
				t.Fatalf("the first record after recovery is at %d, below the cursor %d handed out before", p, handedOut)
			}
			got, next := export(t, s, cursor, 100)
			if !slices.Equal(got, idRange(31, 40)) {
				t.Fatalf("the old cursor resumes with %v, want 31-40", got)
			}
			if got, _ := export(t, s, next, 100); len(got) != 0 {
				t.Fatalf("after the end: %v", got)
			}
		})
	}
}

// TestReopenStartsNewSegment: every open goes on in a new segment; the old
// last one is trimmed to its data, or removed if it holds none.
func TestReopenStartsNewSegment(t *testing.T) {
	dir := t.TempDir()
	l, _, err := OpenLog(dir, testSegBytes, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	l.Append(1, testBody(1))
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	end := l.End()
	l.Close()
	for round := 0; round < 3; round++ {
		l, _, err = OpenLog(dir, testSegBytes, true, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
		names, _ := segmentNames(dir)
		if len(names) != 2 || names[0] != segmentName(0) {
			t.Fatalf("round %d: segments %v, want the first and one new", round, names)
		}
		if fi, err := os.Stat(filepath.Join(dir, names[0])); err != nil || fi.Size() != int64(end) {
			t.Fatalf("round %d: the old segment is not trimmed to its %d bytes: %v %v", round, end, fi.Size(), err)
		}
		if names[1] <= segmentName(testSegBytes-1) {
			t.Fatalf("round %d: new segment %s is not above the old one's %d bytes", round, names[1], testSegBytes)
		}
	}
}

// TestExportCursorChecks: a cursor position past its shard log's end, inside
// a record, or for a shard log that does not exist is refused with
// ErrBadCursor, before anything is exported; positions at record
// boundaries, at the end, and where no segment holds data are accepted.
func TestExportCursorChecks(t *testing.T) {
	dir := t.TempDir()
	s, _, err := Open(Options{Dir: dir, Shards: 2, SegmentBytes: testSegBytes, Sync: true})
	if err != nil {
		t.Fatal(err)
	}
	appendIDs(t, s, 1, 20, 5)
	// A body holding a well-formed frame of id 1: at its inner frame a
	// record decodes, but it is not where the index has id 1.
	inner := append([]byte(`{"x":"`), AppendRecord(nil, 1, 0, []byte(`{}`))...)
	s.Append(0, 21, inner)
	if err := s.Flush(0); err != nil {
		t.Fatal(err)
	}
	s.Append(1, 100, testBody(100))
	if err := s.Flush(1); err != nil {
		t.Fatal(err)
	}
	// A restart: shard 0 goes on in a new segment above the old one.
	oldEnd := s.logs[0].End()
	s.Close()
	if s, _, err = Open(Options{Dir: dir, Shards: 2, SegmentBytes: testSegBytes, Sync: true}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	appendIDs(t, s, 22, 25, 2)
	end0, end1 := s.logs[0].End(), s.logs[1].End()
	p5 := recordPos(t, s, 5)
	tests := []struct {
		name   string
		cursor []uint64
		first  uint64 // the first id exported from shard 0; 0: none
		bad    bool
	}{
		{"start", nil, 1, false},
		{"short cursor", []uint64{p5}, 5, false},
		{"at a record", []uint64{p5, 0}, 5, false},
		{"at the end", []uint64{end0, end1}, 0, false},
		{"after a segment's end, before the next", []uint64{oldEnd + 10, 0}, 22, false},
		{"one past the end", []uint64{end0 + 1, 0}, 0, true},
		{"far past the end", []uint64{0, 1 << 40}, 0, true},
		{"inside a record's body", []uint64{p5 + headerSize + 3, 0}, 0, true},
		{"inside a record's header", []uint64{p5 + 8, 0}, 0, true},
		{"at a frame inside a body", []uint64{recordPos(t, s, 21) + headerSize + 6, 0}, 0, true},
		{"a shard log that does not exist", []uint64{0, 0, 0}, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var first uint64
			_, err := s.Export(tt.cursor, 1000, func(id uint64, body []byte) {
				if first == 0 && id < 100 {
					first = id
				}
			})
			if tt.bad {
				if !errors.Is(err, ErrBadCursor) {
					t.Fatalf("Export(%v) = %v, want ErrBadCursor", tt.cursor, err)
				}
				if first != 0 {
					t.Fatalf("Export(%v) exported id %d before refusing", tt.cursor, first)
				}
				return
			}
			if err != nil || first != tt.first {
				t.Fatalf("Export(%v): first id %d, %v; want %d", tt.cursor, first, err, tt.first)
			}
		})
	}
	// Below the oldest segment, removed by retention: from the oldest kept.
	if n, err := s.logs[0].RemoveBefore(time.Now().Add(time.Hour), ^uint64(0)); n != 1 || err != nil {
		t.Fatalf("RemoveBefore: %d, %v", n, err)
	}
	if got, _ := export(t, s, []uint64{p5}, 1); !slices.Equal(got, []uint64{22}) {
		t.Fatalf("a cursor below the oldest segment exports %v, want 22", got)
	}
}

// TestAckExportClamps: acknowledging a cursor never moves the export mark
// past what exists to be read, so retention cannot delete what comes later.
func TestAckExportClamps(t *testing.T) {
	dir := t.TempDir()
	s, _, err := Open(Options{Dir: dir, Shards: 2, SegmentBytes: testSegBytes, Sync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	appendIDs(t, s, 1, 10, 5)
	end0, end1 := s.logs[0].End(), s.logs[1].End()
	if err := s.AckExport([]uint64{end0 + 1<<30, 1 << 50, 7}); err != nil {
		t.Fatal(err)
	}
	for i, want := range []uint64{end0, end1} {
		if m, ok := s.export.mark(i); !ok || m != want {
			t.Fatalf("mark of shard %d = %d, %v; want the log end %d", i, m, ok, want)
		}
	}
}

// TestPositionsExhausted: a shard log whose positions come near what the
// index holds is refused at start, not silently mis-indexed.
func TestPositionsExhausted(t *testing.T) {
	dir := t.TempDir()
	sd := shardDir(dir, 0)
	if err := os.MkdirAll(sd, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sd, segmentName(maxPos-testSegBytes)), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if s, _, err := Open(Options{Dir: dir, Shards: 1, SegmentBytes: testSegBytes}); err == nil {
		s.Close()
		t.Fatal("Open accepted a log past the positions the index holds")
	}
}

// Meta records (id 0) are flushed and fail with their batch, come back
// through OnMeta at Open, and are neither indexed nor exported; an export
// page never stops at one.
func TestMetaRecords(t *testing.T) {
	dir := t.TempDir()
	s, _, err := Open(Options{Dir: dir, Shards: 1, SegmentBytes: testSegBytes, Sync: true})
	if err != nil {
		t.Fatal(err)
	}
	for id := uint64(1); id <= 6; id++ {
		s.Append(0, id, testBody(id))
		s.Append(0, 0, []byte(fmt.Sprintf("meta %d", id)))
		if err := s.Flush(0); err != nil {
			t.Fatal(err)
		}
	}
	// A batch that fails takes its meta record with it.
	SetFaultHook(func(op string, _ string) error {
		if op == "write" {
			return errors.New("injected")
		}
		return nil
	})
	s.Append(0, 7, testBody(7))
	s.Append(0, 0, []byte("meta 7"))
	if err := s.Flush(0); err == nil {
		t.Fatal("Flush with a failing write succeeded")
	}
	SetFaultHook(nil)
	// Export: one usage per page passes over the meta records.
	var cursor []uint64
	var got []uint64
	for range 20 {
		next, err := s.Export(cursor, 1, func(id uint64, body []byte) {
			if !bytes.Equal(body, testBody(id)) {
				t.Fatalf("export of %d: %q", id, body)
			}
			got = append(got, id)
		})
		if err != nil {
			t.Fatalf("Export(%v): %v", cursor, err)
		}
		cursor = next
	}
	if fmt.Sprint(got) != "[1 2 3 4 5 6]" {
		t.Fatalf("exported %v, want [1 2 3 4 5 6]", got)
	}
	if _, err := s.Get(nil, 0); !errors.Is(err, ErrNotStored) {
		t.Fatalf("Get(0) = %v", err)
	}
	s.Close()
	var metas []string
	s, rec, err := Open(Options{Dir: dir, Shards: 1, SegmentBytes: testSegBytes, Sync: true,
		OnMeta: func(body []byte) { metas = append(metas, string(body)) }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if fmt.Sprint(metas) != "[meta 1 meta 2 meta 3 meta 4 meta 5 meta 6]" || rec.MaxID != 6 {
		t.Fatalf("OnMeta got %q, MaxID %d", metas, rec.MaxID)
	}
	for id := uint64(1); id <= 6; id++ {
		if b, err := s.Get(nil, id); err != nil || !bytes.Equal(b, testBody(id)) {
			t.Fatalf("Get(%d) = %q, %v", id, b, err)
		}
	}
}

// TestStoreUsagesAndReadFrom: Usages counts usage records, not meta
// records, from recovery on; Store.ReadFrom hands out both, and ends at End.
func TestStoreUsagesAndReadFrom(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, true, false)
	appendIDs(t, s, 1, 100, 7)
	s.Append(0, 0, []byte(`{"meta":1}`))
	s.Append(0, 101, testBody(101))
	if err := s.Flush(0); err != nil {
		t.Fatal(err)
	}
	if n := s.Usages(0); n != 101 {
		t.Fatalf("Usages = %d, want 101", n)
	}
	read := func(s *Store) (usages, metas int, end uint64) {
		end, _, err := s.ReadFrom(0, 0, nil, func(id uint64, body []byte) bool {
			if id == 0 {
				metas++
			} else {
				usages++
			}
			return true
		})
		if err != nil {
			t.Fatal(err)
		}
		return usages, metas, end
	}
	if u, m, end := read(s); u != 101 || m != 1 || end != s.End(0) {
		t.Fatalf("ReadFrom: %d usages, %d meta records, end %d (End %d)", u, m, end, s.End(0))
	}
	s.Close()
	s = openStore(t, dir, true, false)
	defer s.Close()
	if n := s.Usages(0); n != 101 {
		t.Fatalf("Usages after reopening = %d, want 101", n)
	}
	if u, m, end := read(s); u != 101 || m != 1 || end != s.End(0) {
		t.Fatalf("ReadFrom after reopening: %d usages, %d meta records, end %d (End %d)", u, m, end, s.End(0))
	}
}
