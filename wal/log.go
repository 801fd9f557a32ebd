package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const segSuffix = ".wal"

// segment is one append-only file of a shard's log. Positions in a shard's
// log are logical: a record at byte off of the segment named base is at
// position base+off. Positions only grow.
type segment struct {
	base uint64
	path string
	f    *os.File
	size atomic.Int64 // bytes written and flushed; readers never look past it
	mod  atomic.Int64 // unix nanoseconds of the last flush, for retention

	zeroed   int64 // the writer's: bytes from the start written, with data or zeros
	writeOut int64 // the writer's: bytes from the start handed to writeback (memory mode)
}

func (s *segment) end() uint64 { return s.base + uint64(s.size.Load()) }

// Log is one shard's log. Append and Flush are for the shard's drainer only;
// Read and ReadFrom are safe for concurrent use by any goroutine.
type Log struct {
	dir      string
	segBytes int64
	sync     bool

	mu   sync.RWMutex // guards segs; held shortly, never during I/O by the writer
	segs []*segment   // by base

	// The writer's state, owned by the one goroutine that appends.
	cur    *segment // the active segment, segs' last
	buf    []byte   // the batch being built
	synced uint64   // everything below is fdatasynced: the sync mark of new records
	dirty  bool     // written since the last fdatasync (memory mode)
	failed bool     // a write or fsync failed: nothing is accepted until Recover
	syncer *syncer  // runs the writer's fdatasyncs
}

// RecoveryStats tell what opening a log found.
type RecoveryStats struct {
	Segments       int
	Records        int
	Bytes          int64
	TruncatedBytes int64 // torn tail cut off
	Repaired       int   // segments moved aside by --repair
	DroppedRecords int   // valid-looking records after the corruption in repaired segments
	DroppedBytes   int64
	MaxID          uint64
}

// ErrCorruptLog is wrapped by Open when a segment is damaged before its end.
var ErrCorruptLog = errors.New("wal: corruption in the middle of the log")

// OpenLog opens (creating if needed) the log in dir and recovers it: every
// segment is scanned, and visit is called with each valid record's id and
// position, in log order. Damage in the last batch of the last segment (a
// torn tail: that batch's fdatasync never completed, so none of it was
// acknowledged) is truncated, keeping exactly the valid prefix before it.
// Damage anywhere else, in data that had been synced, is refused with
// ErrCorruptLog unless repair is set; then the segment is renamed aside
// with a ".corrupt" suffix and its valid prefix is kept. What recovery
// keeps is fdatasynced before OpenLog returns.
//
// The log then goes on in a new segment, based above everything the last
// one ever held, so that new records never take the position of a record
// that was lost, cut off or dropped, which an export cursor may hold: a torn
// tail or a repair cuts records off, and in memory mode records are read
// and exported before they are synced, so a power cut may lose them with
// nothing left to show (the preallocated zeros look like free space). The
// old segment is trimmed to its data, and removed if it holds none.
func OpenLog(dir string, segBytes int64, syncWrites, repair bool, visit func(id, pos uint64, body []byte)) (*Log, RecoveryStats, error) {
	var st RecoveryStats
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, st, fmt.Errorf("cannot create %q: %w", dir, err)
	}
	l := &Log{dir: dir, segBytes: segBytes, sync: syncWrites, syncer: newSyncer()}
	names, err := segmentNames(dir)
	if err != nil {
		return nil, st, err
	}
	var buf []byte
	var next uint64 // the position above everything the last segment held
	for i, name := range names {
		var s *segment
		s, next, buf, err = l.recoverSegment(name, i == len(names)-1, repair, visit, &st, buf)
		if err != nil {
			l.closeFiles()
			return nil, st, err
		}
		l.segs = append(l.segs, s)
	}
	if err := l.retireLast(); err != nil {
		l.closeFiles()
		return nil, st, err
	}
	if err := l.newSegment(next); err != nil {
		l.closeFiles()
		return nil, st, err
	}
	l.synced = l.cur.end() // retireLast synced everything below
	return l, st, nil
}

// retireLast ends the last recovered segment's time as the active one: it
// is trimmed to its data and fdatasynced (a batch written before a crash
// but never synced may have been read back from the page cache; it must be
// durable before new records claim, by their sync marks, that it is), or
// removed if it holds no data.
func (l *Log) retireLast() error {
	if len(l.segs) == 0 {
		return nil
	}
	s := l.segs[len(l.segs)-1]
	size := s.size.Load()
	if size > 0 {
		if fileSizeOf(s.f) > size {
			if err := s.f.Truncate(size); err != nil {
				return fmt.Errorf("cannot trim %q: %w", s.path, err)
			}
		}
		if err := fdatasync(s.f); err != nil {
			return fmt.Errorf("cannot sync %q: %w", s.path, err)
		}
		return nil
	}
	s.f.Close()
	l.segs = l.segs[:len(l.segs)-1]
	if err := os.Remove(s.path); err != nil {
		return fmt.Errorf("cannot remove empty segment: %w", err)
	}
	return nil // newSegment syncs the directory
}

// recoverSegment opens and scans the segment file name, calling visit for
// each record of its valid prefix, and deals with damage after that prefix
// as OpenLog describes. It returns the segment, sized to its valid prefix;
// the position above everything it ever held (its file's size, preallocated
// or written, and at least segBytes: a segment outgrows that only with a
// single batch); and buf, reused for the file's data.
func (l *Log) recoverSegment(name string, last, repair bool, visit func(id, pos uint64, body []byte), st *RecoveryStats, buf []byte) (*segment, uint64, []byte, error) {
	base, _ := strconv.ParseUint(strings.TrimSuffix(name, segSuffix), 10, 64)
	path := filepath.Join(l.dir, name)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, 0, buf, fmt.Errorf("cannot open segment %q: %w", path, err)
	}
	buf, valid, n, err := readValid(f, base, buf[:0], visit, st)
	if err != nil {
		f.Close()
		return nil, 0, buf, fmt.Errorf("cannot read segment %q: %w", path, err)
	}
	held := base + uint64(max(fileSizeOf(f), int64(len(buf)), l.segBytes))
	if valid < len(buf) {
		switch {
		case last && tornBatch(buf, base, valid):
			// No longer the active segment: cut exactly, without
			// preallocating it again.
			if err := truncateSync(f, int64(valid)); err != nil {
				f.Close()
				return nil, 0, buf, err
			}
			st.TruncatedBytes += int64(len(buf) - valid)
		case repair:
			if f, err = repairSegment(f, path, buf, valid, st); err != nil {
				return nil, 0, buf, err
			}
		default:
			f.Close()
			return nil, 0, buf, fmt.Errorf("%w: segment %q is damaged at byte %d of %d, in data that had been synced "+
				"(more of the log was written after it); restore it from a backup, or restart with --repair "+
				"to move it aside and keep its %d valid records",
				ErrCorruptLog, path, valid, len(buf), n)
		}
	}
	s := &segment{base: base, path: path, f: f}
	s.size.Store(int64(valid))
	if fi, err := f.Stat(); err == nil {
		s.mod.Store(fi.ModTime().UnixNano())
	}
	st.Segments++
	st.Bytes += int64(valid)
	return s, held, buf, nil
}

// readValid reads a segment's data into buf and scans its valid prefix. It
// returns the data (without the preallocated zeros after it), the length of
// the valid prefix and the number of records in it.
func readValid(f *os.File, base uint64, buf []byte, visit func(id, pos uint64, body []byte), st *RecoveryStats) ([]byte, int, int, error) {
	buf, err := readAll(f, buf)
	if err != nil {
		return buf, 0, 0, err
	}
	var gs scanState
	valid, n := scan(buf, base, visit, st, &gs)
	// readAll stops at the last non-zero byte, but a record may end in
	// zero bytes (a sync mark's high bytes, a binary body): read on to the
	// length its header declares, as far as the file goes.
	for fileSize := fileSizeOf(f); ; {
		need := valid + headerSize
		if len(buf) >= need {
			if l := binary.LittleEndian.Uint32(buf[valid:]); l <= MaxBody {
				need += int(l)
			}
		}
		if need <= len(buf) || int64(need) > fileSize {
			break
		}
		old := len(buf)
		buf = append(buf, make([]byte, need-old)...)
		if _, err := f.ReadAt(buf[old:], int64(old)); err != nil {
			return buf, 0, 0, err
		}
		v, m := scan(buf[valid:], base+uint64(valid), visit, st, &gs)
		if v == 0 {
			break
		}
		valid, n = valid+v, n+m
	}
	if gs.open > 0 {
		// A group cut short: the valid prefix ends before its header.
		valid = int(gs.start - base)
	}
	if valid < len(buf) && allZero(buf[valid:]) {
		buf = buf[:valid] // only free, preallocated space follows
	}
	return buf, valid, n, nil
}

// tornBatch reports whether the damage at buf[valid], in the segment at
// base, lies in the last batch written: no valid record after it has a sync
// mark above it. Such a record would prove that the damaged spot had been
// fdatasynced before the record was written; without one, the damage is
// what a crash during the last batch's write or fdatasync leaves (a hole of
// zeros or garbage in any of its pages, later pages possibly written).
func tornBatch(buf []byte, base uint64, valid int) bool {
	damage := base + uint64(valid)
	for off := nextValid(buf, valid+1); off >= 0; {
		_, _, size, _ := DecodeRecord(buf[off:])
		if m := markOf(buf[off:]); m > damage && m <= base+uint64(off) {
			return false
		}
		off = nextValid(buf, off+size)
	}
	return true
}

// Groups. A group header is a meta record (id 0) whose body is groupTag and
// then the number of records of the group, uint32 little endian: the records
// of one batch that must be kept whole or not at all (Store.AppendGroup).
// Recovery keeps a group only once all its records are in the valid prefix;
// a group cut short (a crash in the middle of its write) ends the valid
// prefix at its header, so the torn tail goes from there.
const (
	groupTag        = 2
	groupHeaderSize = 5
)

func groupHeader(n int) []byte {
	b := make([]byte, groupHeaderSize)
	b[0] = groupTag
	binary.LittleEndian.PutUint32(b[1:], uint32(n))
	return b
}

// groupSize returns the record count of a group header, or 0 if id and body
// are not one.
func groupSize(id uint64, body []byte) int {
	if id != 0 || len(body) != groupHeaderSize || body[0] != groupTag {
		return 0
	}
	return int(binary.LittleEndian.Uint32(body[1:]))
}

// scanState is what scan carries from one call to the next over one
// segment: the open group and the records of it held back from visit.
type scanState struct {
	open  int    // records of the open group still to come; 0: none open
	start uint64 // log position of the open group's header
	held  []heldRecord
}

type heldRecord struct {
	id, pos uint64
	body    []byte
}

// scan visits the valid prefix of a segment and returns its length and the
// number of records in it. A record whose sync mark lies above its own
// position cannot have been written by Flush and ends the prefix. The
// records of a group are visited once the group is complete; gs says
// whether one is still open where the prefix ends.
func scan(buf []byte, base uint64, visit func(id, pos uint64, body []byte), st *RecoveryStats, gs *scanState) (int, int) {
	off, n := 0, 0
	release := func() {
		for _, r := range gs.held[1:] { // the group header is for recovery alone
			if visit != nil {
				visit(r.id, r.pos, r.body)
			}
		}
		n += len(gs.held)
		gs.held = gs.held[:0]
	}
	for off < len(buf) {
		id, body, size, err := DecodeRecord(buf[off:])
		if err != nil || markOf(buf[off:]) > base+uint64(off) {
			break
		}
		pos := base + uint64(off)
		if id > st.MaxID {
			st.MaxID = id
		}
		switch k := groupSize(id, body); {
		case k > 0 && gs.open == 0:
			gs.open, gs.start = k, pos
			gs.held = append(gs.held, heldRecord{id, pos, body})
		case gs.open > 0:
			gs.held = append(gs.held, heldRecord{id, pos, body})
			if gs.open--; gs.open == 0 {
				release()
			}
		default:
			if visit != nil {
				visit(id, pos, body)
			}
			n++
		}
		off += size
	}
	st.Records += n
	return off, n
}

func repairSegment(f *os.File, path string, buf []byte, valid int, st *RecoveryStats) (*os.File, error) {
	for off := nextValid(buf, valid+1); off >= 0; {
		_, _, size, _ := DecodeRecord(buf[off:])
		st.DroppedRecords++
		off = nextValid(buf, off+size)
	}
	st.DroppedBytes += int64(len(buf) - valid)
	st.Repaired++
	f.Close()
	aside := path + ".corrupt-" + strconv.FormatInt(time.Now().Unix(), 10)
	if err := os.Rename(path, aside); err != nil {
		return nil, fmt.Errorf("cannot move damaged segment aside: %w", err)
	}
	nf, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, err
	}
	if _, err := nf.Write(buf[:valid]); err != nil {
		nf.Close()
		return nil, err
	}
	if err := nf.Sync(); err != nil {
		nf.Close()
		return nil, err
	}
	return nf, SyncDir(filepath.Dir(path))
}

// allZero reports whether b holds only zero bytes: the preallocated part of
// a segment that was never written.
func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func fileSizeOf(f *os.File) int64 {
	fi, err := f.Stat()
	if err != nil {
		return 0
	}
	return fi.Size()
}

func dataEnd(f *os.File, size int64) (int, error) {
	var chunk [64 << 10]byte
	end := size
	for end > 0 {
		start := max(0, end-int64(len(chunk)))
		b := chunk[:end-start]
		if _, err := f.ReadAt(b, start); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		if i := lastNonZero(b); i >= 0 {
			return int(start) + i + 1, nil
		}
		end = start
	}
	return 0, nil
}

func lastNonZero(b []byte) int {
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] != 0 {
			return i
		}
	}
	return -1
}

// readAll reads a segment up to the end of its data: the preallocated zeros
// after it (see preallocate) are found from the end in small reads and left
// out, so recovering a mostly empty 64 MiB segment needs no 64 MiB buffer.
func readAll(f *os.File, buf []byte) ([]byte, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	n, err := dataEnd(f, fi.Size())
	if err != nil {
		return nil, err
	}
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := f.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return buf, nil
}

func truncateSync(f *os.File, size int64) error {
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("cannot truncate %q: %w", f.Name(), err)
	}
	return f.Sync()
}

func segmentNames(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		name := e.Name()
		if e.Type().IsRegular() && strings.HasSuffix(name, segSuffix) {
			if _, err := strconv.ParseUint(strings.TrimSuffix(name, segSuffix), 10, 64); err == nil {
				names = append(names, name)
			}
		}
	}
	sort.Strings(names) // fixed-width names sort by base
	return names, nil
}

func segmentName(base uint64) string { return fmt.Sprintf("%020d%s", base, segSuffix) }

// SyncDir fsyncs a directory, so that files created, renamed or removed in
// it survive a crash.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (l *Log) newSegment(base uint64) error {
	path := filepath.Join(l.dir, segmentName(base))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("cannot create segment: %w", err)
	}
	preallocate(f, l.segBytes)
	if err := SyncDir(l.dir); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("cannot sync %q: %w", l.dir, err)
	}
	s := &segment{base: base, path: path, f: f}
	s.mod.Store(time.Now().UnixNano())
	l.mu.Lock()
	l.segs = append(l.segs, s)
	l.mu.Unlock()
	l.cur = s
	return nil
}

// ErrTooLarge is returned by Append for a body over MaxBody.
var ErrTooLarge = errors.New("wal: record body over MaxBody")

// Append adds a record to the batch being built and returns its position.
// It does no I/O: Flush writes the batch, wholly into one segment, at the
// positions Append returned.
func (l *Log) Append(id uint64, body []byte) (uint64, error) {
	if len(body) > MaxBody {
		return 0, ErrTooLarge
	}
	pos := l.cur.end() + uint64(len(l.buf))
	l.buf = AppendRecord(l.buf, id, l.synced, body)
	return pos, nil
}

// Buffered returns the bytes of the batch waiting for Flush.
func (l *Log) Buffered() int { return len(l.buf) }

// Discard drops the batch being built; none of it is written.
func (l *Log) Discard() { l.buf = l.buf[:0] }

// Flush writes the batch with one write and, in sync mode, one fdatasync,
// and only then makes it readable. On error nothing of the batch counts as
// written: what it left on disk is cut off at once (so a crash right after
// recovers none of it either), and the log refuses further batches until
// Recover succeeds (after a failed fsync the page cache can no longer be
// trusted, so the fsync is never simply retried).
func (l *Log) Flush() error { return l.flush(l.sync) }

// Sync writes the batch, if any, and makes everything flushed so far
// durable (memory mode, shutdown).
func (l *Log) Sync() error { return l.flush(true) }

func (l *Log) flush(syncNow bool) error {
	if l.failed {
		l.buf = l.buf[:0]
		return ErrFailed
	}
	if len(l.buf) == 0 {
		if syncNow && l.dirty {
			return l.syncActive()
		}
		return nil
	}
	err := l.writeBatch(syncNow)
	l.buf = l.buf[:0]
	return err
}

// writeBatch writes the batch at the end of the active segment. A batch that
// does not fit in what is left of a non-empty segment goes wholly into a new
// one, which starts at the old one's end, so the positions Append returned
// hold; a segment outgrows segBytes only with a batch that alone does.
func (l *Log) writeBatch(syncNow bool) error {
	if size := l.cur.size.Load(); size > 0 && size+int64(len(l.buf)) > l.segBytes {
		if err := l.roll(); err != nil {
			l.failed = true
			return err
		}
	}
	s := l.cur
	off := s.size.Load()
	if l.sync {
		l.zeroAhead(s, off+int64(len(l.buf)))
	}
	if err := writeAt(s.f, l.buf, off); err != nil {
		return l.abort(fmt.Errorf("wal: write %q: %w", s.path, err))
	}
	l.dirty = true
	if syncNow {
		if err := syncData(l.syncer, s.f); err != nil {
			return l.abort(fmt.Errorf("wal: fdatasync %q: %w", s.path, err))
		}
		l.dirty = false
	}
	end := off + int64(len(l.buf))
	s.size.Store(end)
	s.mod.Store(time.Now().UnixNano())
	if syncNow {
		l.synced = s.end()
	} else if end-s.writeOut >= writebackChunk {
		startWriteback(s.f, s.writeOut, end-s.writeOut)
		s.writeOut = end
	}
	return nil
}

// writebackChunk is how much unsynced data (memory mode) may pile up in the
// page cache before the writer asks the kernel to start writing it out.
// Without that, the fdatasync at a segment's roll wrote the whole 64 MiB
// segment, and the drainer waited for it while the ring filled: 503s at 1,000
// connections × 16 pipelined (busyapi bench, --ack memory: 10-27k 503s in 10 s;
// none with segments too large to roll). The same as RocksDB's bytes_per_sync.
const writebackChunk = 1 << 20

// zeroChunk is how far ahead of the data zeroAhead writes zeros.
const zeroChunk = 256 << 10

var zeros [zeroChunk]byte

// zeroAhead writes zeros over the preallocated space of s from where it
// last did up to at least end, a zeroChunk at a time. fallocate leaves
// "unwritten" extents, and the first fdatasync after data lands in one must
// also write the extent's new state: measured on this machine's ext4,
// 121-137 µs of CPU and 390-420 µs per 25 KB write and fdatasync, against
// 86-90 µs and 255-260 µs with zeros written 256 KiB ahead (the metadata
// then changes once per chunk, not once per batch). Zeros are what
// recovery reads as free space anyway. It writes only from the end of the
// data already written (the batch about to be written goes over its
// zeros); a failed write only ends the speed-up for this segment. Only in
// sync mode: without an fdatasync per batch the zeros would only double the
// bytes written.
func (l *Log) zeroAhead(s *segment, end int64) {
	for s.zeroed < end && s.zeroed < l.segBytes {
		n := min(zeroChunk, l.segBytes-s.zeroed)
		if _, err := s.f.WriteAt(zeros[:n], s.zeroed); err != nil {
			s.zeroed = l.segBytes
			return
		}
		s.zeroed += n
	}
}

// roll makes the active segment durable and starts a new one at its end.
func (l *Log) roll() error {
	if l.dirty {
		if err := l.syncActive(); err != nil {
			return err
		}
	}
	return l.newSegment(l.cur.end())
}

// syncActive fdatasyncs the active segment; a failure fails the log.
func (l *Log) syncActive() error {
	if err := syncData(l.syncer, l.cur.f); err != nil {
		l.failed = true
		return fmt.Errorf("wal: fdatasync %q: %w", l.cur.path, err)
	}
	l.dirty = false
	l.synced = l.cur.end()
	return nil
}

// abort fails the log after a failed write or fdatasync of a batch and cuts
// off what the batch left in the active segment. It returns err, joined with
// the error of the cut if that failed too (Recover tries again).
func (l *Log) abort(err error) error {
	l.failed = true
	if cerr := l.cutBack(); cerr != nil {
		return errors.Join(err, cerr)
	}
	return err
}

// cutBack truncates the active segment to its flushed size and syncs it,
// removing whatever a failed batch left after it (and the preallocated
// space, which Recover restores). It leaves the sync mark alone: after a
// failed fdatasync, a later one does not prove that earlier writes reached
// the disk.
func (l *Log) cutBack() error {
	s := l.cur
	if err := s.f.Truncate(s.size.Load()); err != nil {
		return fmt.Errorf("wal: cannot cut %q back to %d bytes: %w", s.path, s.size.Load(), err)
	}
	s.zeroed = min(s.zeroed, s.size.Load())
	if err := syncData(l.syncer, s.f); err != nil {
		return fmt.Errorf("wal: cannot sync %q after cutting it back: %w", s.path, err)
	}
	l.dirty = false
	return nil
}

// ErrFailed is returned by Flush while the log is refusing writes after a
// failure.
var ErrFailed = errors.New("wal: log is read-only after a write failure")

// Recover tries to leave the failed state: the active segment is cut back to
// its last good size and synced, and a probe write is synced. It returns nil
// when the log accepts writes again.
func (l *Log) Recover() error {
	if !l.failed {
		return nil
	}
	s := l.cur
	if err := fault("write", s.path); err != nil {
		return err
	}
	if err := l.cutBack(); err != nil {
		return err
	}
	probe := filepath.Join(l.dir, ".probe")
	f, err := os.Create(probe)
	if err != nil {
		return err
	}
	_, err = f.Write(make([]byte, 64<<10))
	if err == nil {
		err = f.Sync()
	}
	f.Close()
	os.Remove(probe)
	if err != nil {
		return err
	}
	preallocate(s.f, l.segBytes)
	l.failed = false
	return nil
}

// Failed reports whether the log refuses writes.
func (l *Log) Failed() bool { return l.failed }

// segmentFor returns the segment holding pos, or nil.
func (l *Log) segmentFor(pos uint64) *segment {
	l.mu.RLock()
	defer l.mu.RUnlock()
	i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].base > pos }) - 1
	if i < 0 {
		return nil
	}
	return l.segs[i]
}

// Read appends the body of the record at pos to dst and returns it with the
// record's id. It fails for positions that are not flushed.
func (l *Log) Read(dst []byte, pos uint64) ([]byte, uint64, error) {
	s := l.segmentFor(pos)
	if s == nil {
		return dst, 0, ErrNotFound
	}
	off := int64(pos - s.base)
	size := s.size.Load()
	if off+headerSize > size {
		return dst, 0, ErrNotFound
	}
	// One pread for typical records; a second only for large ones.
	want := int64(512)
	if off+want > size {
		want = size - off
	}
	start := len(dst)
	dst = append(dst, make([]byte, want)...)
	if _, err := s.f.ReadAt(dst[start:], off); err != nil {
		return dst[:start], 0, err
	}
	bodyLen := binary.LittleEndian.Uint32(dst[start:])
	if bodyLen > MaxBody {
		return dst[:start], 0, ErrCorrupt
	}
	n := int64(RecordSize(int(bodyLen)))
	if n > want {
		if off+n > size {
			return dst[:start], 0, ErrCorrupt
		}
		dst = append(dst[:start+int(want)], make([]byte, n-want)...)
		if _, err := s.f.ReadAt(dst[start+int(want):], off+want); err != nil {
			return dst[:start], 0, err
		}
	}
	id, body, _, err := DecodeRecord(dst[start:])
	if err != nil {
		return dst[:start], 0, err
	}
	copy(dst[start:], body)
	return dst[:start+len(body)], id, nil
}

// ErrNotFound is returned by Read for a position outside the log.
var ErrNotFound = errors.New("wal: no record at this position")

// ErrPastEnd is returned for a cursor position past the end of the log.
var ErrPastEnd = errors.New("wal: position past the end of the log")

// resume returns the position an export from pos, a cursor position, goes on
// from: pos itself if a segment's flushed data holds it or ends at it; the
// next segment's base if no segment holds it (below the oldest segment,
// removed by retention, or in a range that recovery or --repair cut off).
// inside reports that pos lies strictly inside a segment's data, where the
// caller must check that a record starts there. A position past the end of
// the log returns ErrPastEnd.
func (l *Log) resume(pos uint64) (next uint64, inside bool, err error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	for _, s := range l.segs {
		if pos < s.base {
			return s.base, false, nil
		}
		if end := s.end(); pos <= end {
			return pos, pos > s.base && pos < end, nil
		}
	}
	return 0, false, fmt.Errorf("%w: %d", ErrPastEnd, pos)
}

// End returns the position just past the last flushed record.
func (l *Log) End() uint64 {
	l.mu.RLock()
	s := l.segs[len(l.segs)-1]
	l.mu.RUnlock()
	return s.end()
}

// ReadFrom decodes flushed records starting at pos (a record boundary, as
// returned in a cursor) and calls fn for each, until fn returns false or the
// log's end. It returns the position after the last record passed to fn.
// Positions where no segment holds data (in segments removed by retention,
// or in a range cut off by recovery or --repair) skip to the next record
// there is.
func (l *Log) ReadFrom(pos uint64, buf []byte, fn func(id uint64, body []byte) bool) (uint64, []byte, error) {
	for {
		l.mu.RLock()
		var s *segment
		for _, cand := range l.segs {
			if cand.end() > pos {
				s = cand
				break
			}
		}
		l.mu.RUnlock()
		if s == nil {
			return pos, buf, nil
		}
		if pos < s.base {
			pos = s.base
		}
		off := int64(pos - s.base)
		size := s.size.Load()
		for off < size {
			chunk := int64(256 << 10)
			if off+chunk > size {
				chunk = size - off
			}
			if int64(cap(buf)) < chunk {
				buf = make([]byte, chunk)
			}
			buf = buf[:chunk]
			if _, err := s.f.ReadAt(buf, off); err != nil {
				return pos, buf, err
			}
			used := 0
			for used < len(buf) {
				id, body, n, err := DecodeRecord(buf[used:])
				if errors.Is(err, ErrTorn) && used > 0 {
					break // the rest is in the next chunk
				}
				if errors.Is(err, ErrTorn) {
					// A record larger than the chunk, or a cursor that does
					// not point at a record: never trust the length blindly.
					if len(buf)-used < headerSize {
						return pos, buf, ErrCorrupt
					}
					l := binary.LittleEndian.Uint32(buf[used:])
					if l > MaxBody || off+int64(RecordSize(int(l))) > size {
						return pos, buf, ErrCorrupt
					}
					rec := make([]byte, RecordSize(int(l)))
					if _, err := s.f.ReadAt(rec, off); err != nil {
						return pos, buf, err
					}
					id, body, n, err = DecodeRecord(rec)
					if err != nil {
						return pos, buf, err
					}
				} else if err != nil {
					return pos, buf, err
				}
				if !fn(id, body) {
					return pos, buf, nil
				}
				used += n
				off += int64(n)
				pos = s.base + uint64(off)
			}
		}
		// Go on from exactly where this read stopped, not from s.end():
		// the segment may have grown meanwhile, and reading its end
		// again would skip what was appended in between.
		pos = s.base + uint64(off)
	}
}

// RemoveBefore deletes whole segments, except the active one, whose last
// flush is older than cutoff and that end at or before keep (everything
// below keep has been exported or forwarded). It returns how many it removed.
func (l *Log) RemoveBefore(cutoff time.Time, keep uint64) (int, error) {
	l.mu.Lock()
	var gone []*segment
	kept := l.segs[:0]
	for i, s := range l.segs {
		if i < len(l.segs)-1 && s.mod.Load() < cutoff.UnixNano() && s.end() <= keep {
			gone = append(gone, s)
			continue
		}
		kept = append(kept, s)
	}
	l.segs = kept
	l.mu.Unlock()
	for _, s := range gone {
		s.f.Close()
		if err := os.Remove(s.path); err != nil {
			return len(gone), err
		}
	}
	if len(gone) > 0 {
		return len(gone), SyncDir(l.dir)
	}
	return 0, nil
}

// ErrLost is returned by Close of a memory-mode log that failed: batches it
// could not write had been acknowledged.
var ErrLost = errors.New("wal: acknowledged records were lost to a write failure")

// closeFiles closes every segment file, for a log that is not returned.
func (l *Log) closeFiles() {
	for _, s := range l.segs {
		s.f.Close()
	}
	l.syncer.close()
}

// Close makes everything flushed durable and closes the log. A log in the
// failed state is cut back to its flushed end instead. In sync mode nothing
// acknowledged is lost then (a batch is acknowledged only once synced), so
// Close returns only an error of that cut (the failed batch, answered as
// failed, might then be recovered at the next start); in memory mode it
// returns ErrLost.
func (l *Log) Close() error {
	var err error
	if l.failed {
		err = l.cutBack()
		if !l.sync {
			err = errors.Join(ErrLost, err)
		}
	} else {
		err = l.Sync()
	}
	l.mu.Lock()
	for _, s := range l.segs {
		if cerr := s.f.Close(); err == nil {
			err = cerr
		}
	}
	l.segs = nil
	l.mu.Unlock()
	l.syncer.close()
	return err
}
