package wal

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testSegBytes keeps the preallocated test segments small.
const testSegBytes = 256 << 10

func testBody(id uint64) []byte {
	return []byte(fmt.Sprintf(`{"patientId":%d,"timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}`, id))
}

// writeLog writes ids 1..n to a new log in dir, flushing every batch records.
func writeLog(t *testing.T, dir string, n, batch int) []uint64 {
	t.Helper()
	l, _, err := OpenLog(dir, testSegBytes, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ends []uint64
	for id := uint64(1); id <= uint64(n); id++ {
		pos, err := l.Append(id, testBody(id))
		if err != nil {
			t.Fatal(err)
		}
		ends = append(ends, pos+uint64(RecordSize(len(testBody(id)))))
		if int(id)%batch == 0 {
			if err := l.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return ends
}

type recovered struct {
	ids []uint64
	st  RecoveryStats
	err error
}

func recoverLog(t *testing.T, dir string, repair bool) recovered {
	t.Helper()
	var r recovered
	l, st, err := OpenLog(dir, testSegBytes, true, repair, func(id, pos uint64, _ []byte) { r.ids = append(r.ids, id) })
	r.st, r.err = st, err
	if err == nil {
		// Every recovered record reads back by position.
		var got int
		_, _, rerr := l.ReadFrom(0, nil, func(id uint64, body []byte) bool {
			if !bytes.Equal(body, testBody(id)) {
				t.Fatalf("record %d reads back as %q", id, body)
			}
			got++
			return true
		})
		if rerr != nil || got != len(r.ids) {
			t.Fatalf("ReadFrom: %v, %d records, recovered %d", rerr, got, len(r.ids))
		}
		l.Close()
	}
	return r
}

func segPath(t *testing.T, dir string) string {
	t.Helper()
	names, err := segmentNames(dir)
	if err != nil || len(names) == 0 {
		t.Fatalf("no segment: %v", err)
	}
	return filepath.Join(dir, names[len(names)-1])
}

func checkPrefix(t *testing.T, ids []uint64, n int) {
	t.Helper()
	if len(ids) != n {
		t.Fatalf("recovered %d records, want %d", len(ids), n)
	}
	for i, id := range ids {
		if id != uint64(i+1) {
			t.Fatalf("record %d has id %d", i, id)
		}
	}
}

// TestTornTailEveryOffset cuts the log at every byte of its last records: the
// recovered log is exactly the records that end before the cut.
func TestTornTailEveryOffset(t *testing.T) {
	src := t.TempDir()
	ends := writeLog(t, src, 20, 5)
	full, err := os.ReadFile(segPath(t, src))
	if err != nil {
		t.Fatal(err)
	}
	full = full[:ends[len(ends)-1]] // without the preallocated zeros
	from := int(ends[14])           // the last five records and everything inside them
	for cut := from; cut <= len(full); cut++ {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, segmentName(0)), full[:cut], 0o644); err != nil {
			t.Fatal(err)
		}
		r := recoverLog(t, dir, false)
		if r.err != nil {
			t.Fatalf("cut at %d: %v", cut, r.err)
		}
		want := 0
		for want < len(ends) && int(ends[want]) <= cut {
			want++
		}
		checkPrefix(t, r.ids, want)
		// The torn bytes are gone: the valid prefix is followed only by
		// zeros (the segment is preallocated again) or by nothing.
		after, _ := os.ReadFile(filepath.Join(dir, segmentName(0)))
		if len(after) < int(ends[want-1]) || !bytes.Equal(after[:ends[want-1]], full[:ends[want-1]]) || !allZero(after[ends[want-1]:]) {
			t.Fatalf("cut at %d: after recovery the file is %d bytes, not the %d-byte valid prefix and zeros", cut, len(after), ends[want-1])
		}
		// Appends after the repair survive a second crash.
		l, _, err := OpenLog(dir, testSegBytes, true, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		next := uint64(want + 1)
		if _, err := l.Append(next, testBody(next)); err != nil {
			t.Fatal(err)
		}
		if err := l.Flush(); err != nil {
			t.Fatal(err)
		}
		// No Close: the process "dies" here.
		r2 := recoverLog(t, dir, false)
		checkPrefix(t, r2.ids, want+1)
		l.Close()
	}
}

func TestZeroedSectorAndFlippedBit(t *testing.T) {
	f := func(name string, damage func(b []byte), wantRecords int, wantCorrupt bool) {
		t.Helper()
		dir := t.TempDir()
		writeLog(t, dir, 200, 10)
		path := segPath(t, dir)
		b, _ := os.ReadFile(path)
		damage(b)
		os.WriteFile(path, b, 0o644)
		r := recoverLog(t, dir, false)
		if wantCorrupt {
			if !errors.Is(r.err, ErrCorruptLog) {
				t.Fatalf("%s: recovery did not refuse: %v", name, r.err)
			}
			// --repair keeps exactly the valid prefix and moves the segment aside.
			r = recoverLog(t, dir, true)
			if r.err != nil {
				t.Fatalf("%s: repair: %v", name, r.err)
			}
			if r.st.Repaired != 1 || r.st.DroppedRecords == 0 {
				t.Fatalf("%s: repair stats %+v", name, r.st)
			}
			aside, _ := filepath.Glob(path + ".corrupt-*")
			if len(aside) != 1 {
				t.Fatalf("%s: damaged segment not moved aside: %v", name, aside)
			}
			// The repaired log opens cleanly and takes appends that survive.
			l, _, err := OpenLog(dir, testSegBytes, true, false, nil)
			if err != nil {
				t.Fatalf("%s: reopen after repair: %v", name, err)
			}
			l.Append(1000, testBody(1000))
			if err := l.Flush(); err != nil {
				t.Fatal(err)
			}
			r2 := recoverLog(t, dir, false)
			if r2.err != nil || len(r2.ids) != len(r.ids)+1 || r2.ids[len(r2.ids)-1] != 1000 {
				t.Fatalf("%s: after repair and append: %v, %d ids", name, r2.err, len(r2.ids))
			}
			l.Close()
		} else if r.err != nil {
			t.Fatalf("%s: %v", name, r.err)
		}
		checkPrefix(t, r.ids, wantRecords)
	}
	rec := RecordSize(len(testBody(100))) // ids 100..199 have equal sizes
	off100 := 0
	for id := uint64(1); id < 100; id++ {
		off100 += RecordSize(len(testBody(id)))
	}
	f("zeroed sector in the middle", func(b []byte) {
		for i := off100 + 3; i < off100+3+512; i++ {
			b[i] = 0
		}
	}, 99, true)
	f("flipped bit in the middle", func(b []byte) { b[off100+rec/2] ^= 0x10 }, 99, true)
	f("flipped bit in a length", func(b []byte) { b[off100+1] ^= 0x01 }, 99, true)
	f("zeroed last sector", func(b []byte) {
		end := lastNonZero(b) + 1 // the end of the data; the rest is preallocated
		for i := end - 512; i < end; i++ {
			b[i] = 0
		}
	}, 200-(512+rec-1)/rec, false)
}

func TestLogRollsAndReadsAcrossSegments(t *testing.T) {
	dir := t.TempDir()
	l, _, err := OpenLog(dir, 4096, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[uint64]uint64{}
	for id := uint64(1); id <= 500; id++ {
		p, err := l.Append(id, testBody(id))
		if err != nil {
			t.Fatal(err)
		}
		pos[id] = p
		if id%7 == 0 {
			if err := l.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	l.Flush()
	names, _ := segmentNames(dir)
	if len(names) < 10 {
		t.Fatalf("%d segments, want rolling at 4 KiB", len(names))
	}
	for id, p := range pos {
		body, got, err := l.Read(nil, p)
		if err != nil || got != id || !bytes.Equal(body, testBody(id)) {
			t.Fatalf("Read(%d) = %q, %d, %v", p, body, got, err)
		}
	}
	// ReadFrom resumes exactly at a returned position.
	var seen []uint64
	cur := uint64(0)
	for {
		n := 0
		next, _, err := l.ReadFrom(cur, nil, func(id uint64, body []byte) bool {
			if n == 13 {
				return false
			}
			seen = append(seen, id)
			n++
			return true
		})
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		cur = next
	}
	checkPrefix(t, seen, 500)
	// Retention removes old segments, never the active one.
	removed, err := l.RemoveBefore(time.Now().Add(time.Hour), ^uint64(0))
	if err != nil || removed != len(names)-1 {
		t.Fatalf("removed %d of %d segments: %v", removed, len(names), err)
	}
	l.Close()
	r := recoverLog(t, dir, false)
	if r.err != nil || len(r.ids) == 0 || r.ids[len(r.ids)-1] != 500 {
		t.Fatalf("after retention: %v %v", r.err, r.ids)
	}
}

func TestLeaseSurvivesTornSlot(t *testing.T) {
	dir := t.TempDir()
	l, err := OpenLease(dir)
	if err != nil || l.Bound() != 0 {
		t.Fatalf("new lease: %v %d", err, l.Bound())
	}
	for _, b := range []uint64{4097, 8193, 12289} {
		if err := l.Extend(b); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	l, _ = OpenLease(dir)
	if l.Bound() != 12289 {
		t.Fatalf("bound %d after reopen", l.Bound())
	}
	l.Close()
	// Tear the newest slot: the previous bound survives (ids below it were
	// never handed out beyond it, because Extend returned before use).
	path := filepath.Join(dir, leaseFile)
	b, _ := os.ReadFile(path)
	b[(3%2)*slotSize+20] ^= 0xff
	os.WriteFile(path, b, 0o644)
	l, _ = OpenLease(dir)
	if l.Bound() != 8193 {
		t.Fatalf("bound %d after a torn slot, want 8193", l.Bound())
	}
	l.Close()
}

func TestLockDir(t *testing.T) {
	dir := t.TempDir()
	s, _, err := Open(Options{Dir: dir, Shards: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := Open(Options{Dir: dir, Shards: 2}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
	s.Close()
	s, _, err = Open(Options{Dir: dir, Shards: 2})
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	s.Close()
}

func TestIndex(t *testing.T) {
	x := NewIndex()
	f := func(id uint64, shard int, pos uint64) {
		t.Helper()
		x.Set(id, shard, pos)
		s, p, ok := x.Get(id)
		if !ok || s != shard || p != pos {
			t.Fatalf("Get(%d) = %d, %d, %v; want %d, %d", id, s, p, ok, shard, pos)
		}
	}
	f(1, 0, 0)
	f(4096, 3, 1<<40)
	f(4097, 65535, 12345)
	f(1<<52, 7, 99)
	if _, _, ok := x.Get(2); ok {
		t.Fatal("Get of an unset id succeeded")
	}
	if x.Len() != 4 {
		t.Fatalf("Len %d", x.Len())
	}
	x.Delete(4096)
	if _, _, ok := x.Get(4096); ok || x.Len() != 3 {
		t.Fatal("Delete did not forget")
	}
}

// TestZeroEndingRecords: records whose last bytes are zeros (an empty body
// leaves the id's high bytes last) are recovered from a preallocated
// segment, whose free space is zeros too.
func TestZeroEndingRecords(t *testing.T) {
	dir := t.TempDir()
	l, _, err := OpenLog(dir, testSegBytes, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	bodies := [][]byte{[]byte("{}"), nil, {'x', 0, 0, 0}, nil}
	for i, b := range bodies {
		if _, err := l.Append(uint64(i+1), b); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	// Crash: no Close.
	var got []uint64
	l2, st, err := OpenLog(dir, testSegBytes, true, false, func(id, pos uint64, _ []byte) { got = append(got, id) })
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if len(got) != len(bodies) || st.TruncatedBytes != 0 {
		t.Fatalf("recovered %v (truncated %d bytes), want ids 1-%d", got, st.TruncatedBytes, len(bodies))
	}
	l.Close()
}

// TestDamagedBatch: power lost during a batch's fdatasync may leave any part
// of that batch unwritten (a hole of zeros: the preallocated space) or
// garbage, while a later page of the same batch did reach the disk. Nothing
// of that batch was acknowledged, so recovery keeps the valid prefix before
// the damage and truncates the rest. Damage followed by a record of a later
// batch is in a batch that was synced (the later one could only be written
// after that sync): recovery refuses, and --repair keeps the prefix.
func TestDamagedBatch(t *testing.T) {
	const n, batch, page = 400, 100, 4096
	tests := []struct {
		name    string
		batch   int  // the damaged batch, 0-3; 3 is the last
		middle  bool // damage a whole page inside the batch instead of its first page
		garbage bool // damage with random bytes instead of zeros
		corrupt bool // recovery must refuse
	}{
		{"hole in the last batch's first page", 3, false, false, false},
		{"garbage in the last batch's first page", 3, false, true, false},
		{"hole in a middle page of the last batch", 3, true, false, false},
		{"garbage in a middle page of the last batch", 3, true, true, false},
		{"hole in a synced batch's first page", 2, false, false, true},
		{"garbage in a middle page of a synced batch", 1, true, true, true},
		{"hole in the first batch", 0, false, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			ends := writeLog(t, dir, n, batch)
			start, end := 0, int(ends[(tt.batch+1)*batch-1])
			if tt.batch > 0 {
				start = int(ends[tt.batch*batch-1])
			}
			from, to := start, (start/page+1)*page // what the batch has of its first page
			if tt.middle {
				from = (start/page + 1) * page
				to = from + page
			}
			if to >= end {
				t.Fatalf("batch [%d, %d) is too small for the test", start, end)
			}
			path := segPath(t, dir)
			b, _ := os.ReadFile(path)
			for i := from; i < to; i++ {
				b[i] = 0
				if tt.garbage {
					b[i] = byte(i*7 + 3)
				}
			}
			os.WriteFile(path, b, 0o644)
			r := recoverLog(t, dir, false)
			kept := 0 // the records before the damage
			for kept < n && int(ends[kept]) <= from {
				kept++
			}
			if tt.corrupt {
				if !errors.Is(r.err, ErrCorruptLog) {
					t.Fatalf("recovery did not refuse: %v", r.err)
				}
				r = recoverLog(t, dir, true)
				if r.err != nil || r.st.Repaired != 1 {
					t.Fatalf("repair: %v %+v", r.err, r.st)
				}
				checkPrefix(t, r.ids, kept)
				return
			}
			if r.err != nil {
				t.Fatalf("recovery refused damage in the last batch: %v", r.err)
			}
			checkPrefix(t, r.ids, kept)
			if r.st.TruncatedBytes == 0 {
				t.Fatalf("nothing truncated: %+v", r.st)
			}
			// The damaged batch's later pages are gone too: a second
			// recovery finds exactly the same.
			checkPrefix(t, recoverLog(t, dir, false).ids, kept)
		})
	}
}

// TestTornGroup: a group (one batch of usages that must be kept whole) cut
// anywhere in its write, or with a hole inside, recovers to what came
// before its header; complete, it recovers whole. Single records before it
// are untouched.
func TestTornGroup(t *testing.T) {
	src := t.TempDir()
	l, _, err := OpenLog(src, testSegBytes, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for id := uint64(1); id <= 5; id++ {
		if _, err := l.Append(id, testBody(id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	groupAt, err := l.Append(0, groupHeader(5))
	if err != nil {
		t.Fatal(err)
	}
	var end uint64
	for id := uint64(6); id <= 10; id++ {
		pos, err := l.Append(id, testBody(id))
		if err != nil {
			t.Fatal(err)
		}
		end = pos + uint64(RecordSize(len(testBody(id))))
	}
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	l.Close()
	full, err := os.ReadFile(segPath(t, src))
	if err != nil {
		t.Fatal(err)
	}
	base, _ := strconv.ParseUint(strings.TrimSuffix(filepath.Base(segPath(t, src)), segSuffix), 10, 64)
	g, e := int(groupAt-base), int(end-base)
	full = full[:e]
	recoverIDs := func(data []byte) ([]uint64, error) {
		dir := t.TempDir()
		// Preallocated segments hold zeros past the data.
		padded := append(bytes.Clone(data), make([]byte, 4096)...)
		if err := os.WriteFile(filepath.Join(dir, segmentName(base)), padded, 0o644); err != nil {
			t.Fatal(err)
		}
		var ids []uint64
		l, _, err := OpenLog(dir, testSegBytes, true, false, func(id, pos uint64, _ []byte) {
			if id != 0 {
				ids = append(ids, id)
			}
		})
		if err != nil {
			return ids, err
		}
		defer l.Close()
		// What the log holds now (export, forwarding) is what recovery
		// visited: no record of a cut group is left readable.
		var read []uint64
		if _, _, err := l.ReadFrom(0, nil, func(id uint64, body []byte) bool {
			if id != 0 {
				read = append(read, id)
			}
			return true
		}); err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(read) != fmt.Sprint(ids) {
			t.Fatalf("the log reads %v after recovering %v", read, ids)
		}
		return ids, nil
	}
	for cut := g; cut <= e; cut++ {
		ids, err := recoverIDs(full[:cut])
		if err != nil {
			t.Fatalf("cut at %d: %v", cut, err)
		}
		want := 5
		if cut == e {
			want = 10
		}
		checkPrefix(t, ids, want)
	}
	// A hole of zeros inside the group, its later records intact.
	holed := bytes.Clone(full)
	mid := g + (e-g)/2
	clear(holed[mid : mid+40])
	ids, err := recoverIDs(holed)
	if err != nil {
		t.Fatalf("hole in the group: %v", err)
	}
	checkPrefix(t, ids, 5)
}

// Zeros written ahead of the data never land on it: batches that cross
// zeroChunk boundaries all read back, before and after a restart, and what
// lies between the data and the zeroed mark is zeros.
func TestZeroAheadKeepsData(t *testing.T) {
	dir := t.TempDir()
	const segBytes = 4 * zeroChunk
	l, _, err := OpenLog(dir, segBytes, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	n := uint64(0)
	for l.cur.zeroed < 3*zeroChunk {
		for range 37 { // batches that do not divide a chunk
			n++
			if _, err := l.Append(n, testBody(n)); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.Flush(); err != nil {
			t.Fatal(err)
		}
		s := l.cur
		if size := s.size.Load(); s.zeroed < size || s.zeroed%zeroChunk != 0 {
			t.Fatalf("zeroed %d with %d bytes of data", s.zeroed, size)
		}
	}
	s := l.cur
	size := s.size.Load()
	tail := make([]byte, s.zeroed-size)
	if _, err := s.f.ReadAt(tail, size); err != nil {
		t.Fatal(err)
	}
	if !allZero(tail) {
		t.Fatal("bytes between the data and the zeroed mark are not zero")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	var got uint64
	l, _, err = OpenLog(dir, segBytes, true, false, func(id, _ uint64, body []byte) {
		got++
		if id != got || !bytes.Equal(body, testBody(id)) {
			t.Fatalf("record %d recovered as id %d, %q", got, id, body)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if got != n {
		t.Fatalf("recovered %d records, wrote %d", got, n)
	}
}

// In memory mode the writer hands every writebackChunk of unsynced data to
// the kernel's writeback, so a roll's fdatasync has little left to write.
func TestMemoryModeStartsWriteback(t *testing.T) {
	l, _, err := OpenLog(t.TempDir(), 8<<20, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for id := uint64(1); l.cur.size.Load() < 3*writebackChunk; id++ {
		if _, err := l.Append(id, testBody(id)); err != nil {
			t.Fatal(err)
		}
		if id%100 == 0 {
			if err := l.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	s := l.cur
	if size := s.size.Load(); s.writeOut < size-writebackChunk || s.writeOut > size {
		t.Fatalf("%d bytes handed to writeback of %d written", s.writeOut, size)
	}
	if s.zeroed != 0 {
		t.Fatalf("memory mode wrote zeros ahead (%d bytes)", s.zeroed)
	}
}
