package wal

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure a Store.
type Options struct {
	// Dir is the data directory; it is created if missing and locked.
	Dir string
	// Shards is how many shard logs are written. Logs of more shards found
	// on disk (from a run with more shards) are recovered and read too.
	Shards int
	// SegmentBytes rolls a shard's segment at this size; default 64 MiB.
	SegmentBytes int64
	// Sync makes Flush fdatasync each batch (ack fsync). Otherwise Flush
	// writes to the page cache and Close syncs.
	Sync bool
	// Repair moves damaged segments aside instead of refusing to start.
	Repair bool
	// Logger gets recovery and error events; default slog.Default().
	Logger *slog.Logger
	// OnMeta, if set, is called during Open with the body of each meta
	// record (id 0, see Append) found in the log, oldest first within a
	// shard. body is valid only during the call.
	OnMeta func(body []byte)
}

// Store is the durable store of all shards: one Log per shard, the id index
// and the id lease. It implements shard.Sink through Append and Flush.
type Store struct {
	opts  Options
	lock  *os.File
	lease *Lease
	logs  []*Log
	index *Index
	log   *slog.Logger

	batches []openBatch // per shard, each written by its drainer only
	onFlush func(shard int, ids []uint64, err error)

	export exportMark

	usages []atomic.Uint64 // per shard log: usage records flushed (see Usages)

	bytesWritten atomic.Uint64
	closed       atomic.Bool
}

// openBatch is what a Store keeps of a shard's batch until Flush, padded to
// a cache line: each shard's drainer writes its own.
type openBatch struct {
	pending []uint64 // id, pos pairs
	err     error    // an Append failed
	_       [64 - 40]byte
}

// Recovery reports what Open found.
type Recovery struct {
	RecoveryStats
	Shards     int
	LeaseBound uint64
	Duration   time.Duration
}

// Open locks dir, recovers every shard log and rebuilds the index.
func Open(opts Options) (*Store, Recovery, error) {
	var rec Recovery
	start := time.Now()
	if opts.SegmentBytes <= 0 {
		opts.SegmentBytes = 64 << 20
	}
	if opts.Shards < 1 {
		opts.Shards = 1
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, rec, fmt.Errorf("cannot create data directory: %w", err)
	}
	lock, err := LockDir(opts.Dir)
	if err != nil {
		return nil, rec, err
	}
	s := &Store{opts: opts, lock: lock, index: NewIndex(), log: opts.Logger}
	fail := func(err error) (*Store, Recovery, error) {
		for _, l := range s.logs {
			l.Close()
		}
		if s.lease != nil {
			s.lease.Close()
		}
		lock.Close()
		return nil, rec, err
	}
	if s.lease, err = OpenLease(opts.Dir); err != nil {
		return fail(err)
	}
	n := opts.Shards
	if onDisk := shardDirs(opts.Dir); onDisk > n {
		n = onDisk
	}
	s.usages = make([]atomic.Uint64, n)
	for i := 0; i < n; i++ {
		i := i
		l, st, err := OpenLog(shardDir(opts.Dir, i), opts.SegmentBytes, opts.Sync, opts.Repair,
			func(id, pos uint64, body []byte) {
				if id == 0 {
					if opts.OnMeta != nil {
						opts.OnMeta(body)
					}
					return
				}
				s.index.Set(id, i, pos)
				s.usages[i].Add(1)
			})
		if err != nil {
			return fail(err)
		}
		s.logs = append(s.logs, l)
		if l.End()+uint64(opts.SegmentBytes) >= maxPos {
			// Every start goes on above the last segment's size.
			return fail(fmt.Errorf("shard log %d has used up its %d bytes of positions: export and move the data directory aside", i, uint64(maxPos)))
		}
		rec.Segments += st.Segments
		rec.Records += st.Records
		rec.Bytes += st.Bytes
		rec.TruncatedBytes += st.TruncatedBytes
		rec.Repaired += st.Repaired
		rec.DroppedRecords += st.DroppedRecords
		rec.DroppedBytes += st.DroppedBytes
		if st.MaxID > rec.MaxID {
			rec.MaxID = st.MaxID
		}
	}
	if err := s.export.open(opts.Dir, n); err != nil {
		return fail(err)
	}
	s.batches = make([]openBatch, opts.Shards)
	rec.Shards = n
	rec.LeaseBound = s.lease.Bound()
	rec.Duration = time.Since(start)
	return s, rec, nil
}

func shardDir(dir string, i int) string { return filepath.Join(dir, fmt.Sprintf("shard-%03d", i)) }

func shardDirs(dir string) int {
	ents, _ := os.ReadDir(dir)
	n := 0
	for _, e := range ents {
		if e.IsDir() && strings.HasPrefix(e.Name(), "shard-") {
			if i, err := strconv.Atoi(strings.TrimPrefix(e.Name(), "shard-")); err == nil && i+1 > n {
				n = i + 1
			}
		}
	}
	return n
}

// Lease returns the durable id lease.
func (s *Store) Lease() *Lease { return s.lease }

// Logs returns the number of shard logs (at least Options.Shards).
func (s *Store) Logs() int { return len(s.logs) }

// OnFlush sets a function called by each drainer after a batch is flushed
// (err == nil) or has failed, with the batch's ids. Set it before use.
func (s *Store) OnFlush(fn func(shard int, ids []uint64, err error)) { s.onFlush = fn }

// Append adds a record to shard's open batch. It implements shard.Sink.
// A record with id 0 is a meta record: it is flushed (and fails) with its
// batch and handed to Options.OnMeta at the next Open, but it is not
// indexed and not exported. Its body must not be empty.
func (s *Store) Append(shard int, id uint64, body []byte) {
	b := &s.batches[shard]
	pos, err := s.logs[shard].Append(id, body)
	if err != nil {
		if b.err == nil {
			b.err = err
		}
		pos = 0 // reported as failed
	}
	if id != 0 { // meta records are neither indexed nor reported
		b.pending = append(b.pending, id, pos)
	}
}

// AppendGroup adds a group header to shard's open batch: the next n
// records appended (a batch of usages and its meta records) are recovered
// whole or not at all after a crash in the middle of their write.
func (s *Store) AppendGroup(shard int, n int) {
	s.Append(shard, 0, groupHeader(n))
}

// Flush ends shard's batch: one write and, in sync mode, one fdatasync.
// A batch fails as a whole: if one of its Appends failed, none of it is
// written. The records are indexed just before the log makes them readable
// (until then Get finds nothing to read at their positions), so a cursor
// at any readable record checks against the index; if the batch fails,
// they are taken out again. It implements shard.Sink.
func (s *Store) Flush(shard int) error {
	b := &s.batches[shard]
	err, p := b.err, b.pending
	b.err = nil
	if err != nil {
		s.logs[shard].Discard()
	} else {
		s.index.SetMany(shard, p)
		n := s.logs[shard].Buffered()
		if err = s.logs[shard].Flush(); err != nil {
			for i := 0; i < len(p); i += 2 {
				s.index.Delete(p[i])
			}
		} else {
			s.bytesWritten.Add(uint64(n))
			if len(p) > 0 {
				s.usages[shard].Add(uint64(len(p) / 2))
			}
		}
	}
	if s.onFlush != nil && len(p) > 0 {
		s.onFlush(shard, p, err)
	}
	b.pending = p[:0]
	return err
}

// ReadFrom reads shard log i from pos, a record boundary (0, or a position
// it returned), as Log.ReadFrom does: fn gets every flushed record after pos
// in log order, meta records (id 0) included, until it returns false. It
// returns the position after the last record passed to fn. It is safe to
// call while the shard's drainer appends.
func (s *Store) ReadFrom(i int, pos uint64, buf []byte, fn func(id uint64, body []byte) bool) (uint64, []byte, error) {
	return s.logs[i].ReadFrom(pos, buf, fn)
}

// End returns the position just past shard log i's last flushed record.
func (s *Store) End(i int) uint64 { return s.logs[i].End() }

// Usages returns how many usage records (meta records not counted) shard
// log i holds from Open on: those recovered, plus those flushed since. It
// grows just after a flush makes its records readable, so a reader that
// has just read a record may see the count a moment later. Retention does
// not lower it.
func (s *Store) Usages(i int) uint64 { return s.usages[i].Load() }

// Recover tries to make shard's log writable again after a failure.
func (s *Store) Recover(shard int) error { return s.logs[shard].Recover() }

// ErrNotStored is returned by Get for ids that are not in the log.
var ErrNotStored = errors.New("wal: id not stored")

// Get appends the body stored for id to dst.
func (s *Store) Get(dst []byte, id uint64) ([]byte, error) {
	sh, pos, ok := s.index.Get(id)
	if !ok || sh >= len(s.logs) {
		return dst, ErrNotStored
	}
	out, got, err := s.logs[sh].Read(dst, pos)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return dst, ErrNotStored
		}
		return dst, err
	}
	if got != id {
		if sh2, pos2, ok := s.index.Get(id); !ok || sh2 != sh || pos2 != pos {
			// id's batch failed while we read, and a later batch took its
			// place after Recover.
			return dst, ErrNotStored
		}
		return dst, fmt.Errorf("BUG: wal: index points id %d at a record of id %d", id, got)
	}
	return out, nil
}

// Index returns the id index.
func (s *Store) Index() *Index { return s.index }

// ErrBadCursor is wrapped by Export for a cursor that no export of this
// store returned.
var ErrBadCursor = errors.New("wal: invalid export cursor")

// Export calls fn for up to limit flushed records after cursor, spread
// fairly over the shards, and returns the cursor after them. A cursor is one
// position per shard log; a nil or short cursor starts those shards at the
// beginning. Records come out exactly once across successive calls that pass
// on the returned cursor.
//
// A cursor with more positions than there are shard logs, or with a
// position past its log's end or inside a record, is refused with
// ErrBadCursor before fn is called. A position where no segment holds data
// (removed by retention, or cut off by recovery) resumes at the next record.
func (s *Store) Export(cursor []uint64, limit int, fn func(id uint64, body []byte)) ([]uint64, error) {
	next, err := s.resolveCursor(cursor)
	if err != nil {
		return nil, err
	}
	var buf []byte
	left := limit
	// Two passes: a fair share per shard, then whatever is left to anyone.
	for pass := 0; pass < 2 && left > 0; pass++ {
		for i, l := range s.logs {
			quota := left
			if pass == 0 {
				quota = (limit + len(s.logs) - 1) / len(s.logs)
				if quota > left {
					quota = left
				}
			}
			if quota == 0 {
				continue
			}
			taken := 0
			pos, b, err := l.ReadFrom(next[i], buf, func(id uint64, body []byte) bool {
				if id == 0 {
					return true // a meta record: passed over, even at the quota
				}
				if taken == quota {
					return false
				}
				fn(id, body)
				taken++
				return true
			})
			buf = b
			if err != nil {
				return next, err
			}
			next[i] = pos
			left -= taken
			if left == 0 {
				break
			}
		}
	}
	return next, nil
}

// resolveCursor checks cursor as Export describes and returns the position
// each shard log's export goes on from.
func (s *Store) resolveCursor(cursor []uint64) ([]uint64, error) {
	if len(cursor) > len(s.logs) {
		return nil, fmt.Errorf("%w: %d positions for %d shard logs", ErrBadCursor, len(cursor), len(s.logs))
	}
	next := make([]uint64, len(s.logs))
	for i, pos := range cursor {
		p, inside, err := s.logs[i].resume(pos)
		if err != nil {
			return nil, fmt.Errorf("%w: shard %d: %w", ErrBadCursor, i, err)
		}
		if inside {
			if err := s.checkRecordAt(i, p); err != nil {
				return nil, err
			}
		}
		next[i] = p
	}
	return next, nil
}

// checkRecordAt returns nil if a record of shard log i starts at pos, which
// lies inside its flushed data: the record there must decode, and the index
// must place its id exactly there (a frame that a body happens to contain
// decodes, but its id is indexed elsewhere).
func (s *Store) checkRecordAt(i int, pos uint64) error {
	_, id, err := s.logs[i].Read(nil, pos)
	if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrTorn) && !errors.Is(err, ErrNotFound) {
		return err
	}
	if sh, p, ok := s.index.Get(id); err != nil || !ok || sh != i || p != pos {
		return fmt.Errorf("%w: shard %d: no record starts at position %d", ErrBadCursor, i, pos)
	}
	return nil
}

// AckExport records that a consumer has everything before cursor, so that
// retention may delete it. It is durable. Positions past a shard log's end
// are taken as its end, and positions of shard logs that do not exist are
// ignored, so the mark never passes what could have been read.
func (s *Store) AckExport(cursor []uint64) error {
	c := make([]uint64, min(len(cursor), len(s.logs)))
	for i := range c {
		c[i] = min(cursor[i], s.logs[i].End())
	}
	return s.export.ack(c)
}

// ApplyRetention deletes whole segments older than age. Segments a
// registered export consumer has not acknowledged, or that keep(shard)
// says are needed (for example not yet forwarded), are kept.
func (s *Store) ApplyRetention(age time.Duration, keep func(shard int) uint64) (int, error) {
	cutoff := time.Now().Add(-age)
	removed := 0
	for i, l := range s.logs {
		limit := ^uint64(0)
		if m, ok := s.export.mark(i); ok {
			limit = m
		}
		if keep != nil {
			if k := keep(i); k < limit {
				limit = k
			}
		}
		n, err := l.RemoveBefore(cutoff, limit)
		removed += n
		if err != nil {
			return removed, err
		}
	}
	return removed, nil
}

// Stats are counters of a Store.
type Stats struct {
	BytesWritten uint64
	Indexed      int
	IndexBytes   int
	Failed       int // shard logs refusing writes
}

// UpdateStats fills st.
func (s *Store) UpdateStats(st *Stats) {
	st.BytesWritten = s.bytesWritten.Load()
	st.Indexed = s.index.Len()
	st.IndexBytes = s.index.Bytes()
	st.Failed = 0
	for _, l := range s.logs {
		if l.Failed() {
			st.Failed++
		}
	}
}

// Close syncs and closes every log, the lease and the lock. The drainers
// must have stopped. A shard log still failed after a disk error is logged,
// not returned, in sync mode: everything acknowledged in it is durable.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	var err error
	for i, l := range s.logs {
		failed := l.Failed()
		cerr := l.Close()
		if failed && s.opts.Sync {
			s.log.Warn("shard log closed after a write failure: everything acknowledged is durable; the failed batch was reported failed and cut off",
				"shard", i)
			if cerr != nil {
				s.log.Error("cannot cut the failed batch off; the next start may recover part of it", "shard", i, "err", cerr)
			}
			continue
		}
		if cerr != nil && err == nil {
			err = cerr
		}
	}
	s.lease.Close()
	s.lock.Close()
	return err
}

// exportMark is the durable, acknowledged export cursor.
type exportMark struct {
	mu   sync.Mutex
	path string
	pos  []uint64
	set  bool
}

const exportFile = "export.cursor"

func (e *exportMark) open(dir string, n int) error {
	e.path = filepath.Join(dir, exportFile)
	b, err := os.ReadFile(e.path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	cur, err := ParseCursor(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("cannot read %q: %w", e.path, err)
	}
	e.pos, e.set = cur, true
	return nil
}

func (e *exportMark) mark(shard int) (uint64, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.set {
		return 0, false
	}
	if shard < len(e.pos) {
		return e.pos[shard], true
	}
	return 0, true
}

func (e *exportMark) ack(cursor []uint64) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.set {
		// Only ever move forward, shard by shard.
		adv := false
		for i, p := range cursor {
			if i >= len(e.pos) || p > e.pos[i] {
				adv = true
			}
		}
		if !adv {
			return nil
		}
		merged := make([]uint64, max(len(cursor), len(e.pos)))
		copy(merged, e.pos)
		for i, p := range cursor {
			merged[i] = max(merged[i], p)
		}
		cursor = merged
	}
	tmp := e.path + ".tmp"
	if err := os.WriteFile(tmp, []byte(FormatCursor(cursor)+"\n"), 0o644); err != nil {
		return err
	}
	f, err := os.Open(tmp)
	if err == nil {
		err = f.Sync()
		f.Close()
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, e.path); err != nil {
		return err
	}
	if err := SyncDir(filepath.Dir(e.path)); err != nil {
		return err
	}
	e.pos, e.set = append([]uint64(nil), cursor...), true
	return nil
}

// FormatCursor renders an export cursor: shard positions joined by '.'.
func FormatCursor(c []uint64) string {
	var b strings.Builder
	for i, p := range c {
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(strconv.FormatUint(p, 10))
	}
	return b.String()
}

// ParseCursor parses a cursor made by FormatCursor; "" is the start.
func ParseCursor(s string) ([]uint64, error) {
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, ".")
	if len(parts) > 4096 {
		return nil, errors.New("cursor has too many shards")
	}
	c := make([]uint64, len(parts))
	for i, p := range parts {
		v, err := strconv.ParseUint(p, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("invalid cursor %q: use the X-Next-Cursor value of the previous export", s)
		}
		c[i] = v
	}
	return c, nil
}
