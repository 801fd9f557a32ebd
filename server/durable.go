package server

import (
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
}

func newDurableSink(l *wal.Store, c *store.Cache) *durableSink {
	d := &durableSink{log: l, cache: c}
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
	d.log.Append(shard, id, body)
}

func (d *durableSink) Flush(shard int) error { return d.log.Flush(shard) }

func (d *durableSink) Recover(shard int) error { return d.log.Recover(shard) }
