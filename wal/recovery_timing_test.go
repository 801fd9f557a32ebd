package wal

import (
	"os"
	"strconv"
	"testing"
	"time"
)

// BenchmarkRecovery measures how fast Open scans and indexes a log: the
// target is at most 2 s per GiB. The log size is BUSYAPI_RECOVERY_BYTES
// (default 256 MiB; set 1073741824 for the 1 GiB figure).
//
//	BUSYAPI_RECOVERY_BYTES=1073741824 go test -run '^$' -bench Recovery -benchtime 3x ./wal
func BenchmarkRecovery(b *testing.B) {
	size := int64(256 << 20)
	if v, err := strconv.ParseInt(os.Getenv("BUSYAPI_RECOVERY_BYTES"), 10, 64); err == nil && v > 0 {
		size = v
	}
	dir := b.TempDir()
	const shards = 2
	var written int64
	var id uint64
	for sh := 0; sh < shards; sh++ {
		l, _, err := OpenLog(shardDir(dir, sh), 64<<20, false, false, nil)
		if err != nil {
			b.Fatal(err)
		}
		for n := int64(0); n < size/shards; {
			id++
			body := testBody(id)
			if _, err := l.Append(id, body); err != nil {
				b.Fatal(err)
			}
			n += int64(RecordSize(len(body)))
			if id%4096 == 0 {
				if err := l.Flush(); err != nil {
					b.Fatal(err)
				}
			}
		}
		if err := l.Close(); err != nil {
			b.Fatal(err)
		}
	}
	written = size
	b.SetBytes(written)
	b.ResetTimer()
	var rec Recovery
	for i := 0; i < b.N; i++ {
		start := time.Now()
		s, r, err := Open(Options{Dir: dir, Shards: shards})
		if err != nil {
			b.Fatal(err)
		}
		rec = r
		b.ReportMetric(time.Since(start).Seconds()/(float64(written)/(1<<30)), "s/GiB")
		s.Close()
	}
	if rec.Records != int(id) {
		b.Fatalf("recovered %d records, wrote %d", rec.Records, id)
	}
}
