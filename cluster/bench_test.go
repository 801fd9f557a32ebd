package cluster

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/busyapi/busyapi/wal"
)

// BenchmarkForward measures forwarding from a log of b.N usages (4 shards)
// into a local single-node JetStream server, from the first publish to the
// last ack: usages/s is the figure.
//
//	go test -run '^$' -bench Forward -benchtime 200000x ./cluster
func BenchmarkForward(b *testing.B) {
	ns := startNATS(b).url()
	dir := b.TempDir()
	s, _, err := wal.Open(wal.Options{Dir: dir, Shards: 4})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for id := uint64(1); id <= uint64(b.N); id++ {
		s.Append(int(id%4), id, []byte(usageBody(id)))
		if id%1000 == 0 {
			flushAll(b, s, 4)
		}
	}
	flushAll(b, s, 4)
	cfg := Config{URLs: ns}
	if err := cfg.SetDefaults(); err != nil {
		b.Fatal(err)
	}
	c, err := Dial(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	f, err := NewForwarder(s, dir, c, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	// Create the stream first, outside the timing.
	f.ctx = context.Background()
	if err := f.ensureStream(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	f.Start()
	var st Stats
	for f.UpdateStats(&st); st.LagUsages > 0; f.UpdateStats(&st) {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "usages/s")
	f.Close(context.Background())
}
