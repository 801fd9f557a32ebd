package server

import (
	"time"

	"github.com/busyapi/busyapi/store"
	"github.com/busyapi/busyapi/wal"
)

// durableSink feeds each drained usage to the log. The cache is filled on
// reads instead (read-through): writing every usage into fastcache cost the
// drainer about 9% of one core under wrk (a CPU profile, --ack memory,
// 64 connections), for usages most of which are never read back. If a
// batch fails, its usages are taken out of the cache, in case a reader
// raced it in: their POSTs are answered 503, so they must not be readable.
type durableSink struct {
	log   *wal.Store
	cache *store.Cache

	// With sync, each Flush is one batch's write and fdatasync; its size
	// and duration go to the fsync histograms. records[i] counts the
	// open batch of shard i, touched only by that shard's drainer.
	meters  *meters
	sync    bool
	records []int
}

func newDurableSink(l *wal.Store, c *store.Cache, m *meters, sync bool) *durableSink {
	d := &durableSink{log: l, cache: c, meters: m, sync: sync, records: make([]int, l.Logs())}
	l.OnFlush(func(shard int, idPos []uint64, err error) {
		if err == nil {
			return
		}
		for i := 0; i < len(idPos); i += 2 {
			d.cache.Del(idPos[i])
		}
	})
	return d
}

func (d *durableSink) Append(shard int, id uint64, body []byte) {
	d.records[shard]++
	d.log.Append(shard, id, body)
}

// Meta logs an idempotency answer (a batch trailer) as a meta record.
func (d *durableSink) Meta(shard int, body []byte) { d.log.Append(shard, 0, body) }

// Group keeps a batch's records whole across a crash (wal groups).
func (d *durableSink) Group(shard int, n int) { d.log.AppendGroup(shard, n) }

func (d *durableSink) Flush(shard int) error {
	n := d.records[shard]
	d.records[shard] = 0
	if !d.sync {
		err := d.log.Flush(shard)
		if err != nil {
			d.meters.flushErrors.Inc()
		}
		return err
	}
	start := time.Now()
	err := d.log.Flush(shard)
	if err != nil {
		d.meters.flushErrors.Inc()
		return err
	}
	if n > 0 {
		d.meters.syncSeconds.Update(time.Since(start).Seconds())
		d.meters.batchRecords.Update(float64(n))
	}
	return nil
}

func (d *durableSink) Recover(shard int) error { return d.log.Recover(shard) }
