package idlease

import (
	"context"
	"errors"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func startJetStream(t *testing.T) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(s.Shutdown)
	return s
}

func connect(t *testing.T, s *server.Server) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// Eight instances, each with its own connection and block size, lease at
// once: no two ranges of ids overlap, and every range is above each
// instance's floor.
func TestLeaseContention(t *testing.T) {
	s := startJetStream(t)
	ctx := context.Background()
	type span struct {
		from, to uint64 // ids (from, to]
		inst     int
	}
	var mu sync.Mutex
	var spans []span
	var wg sync.WaitGroup
	for inst := range 8 {
		wg.Go(func() {
			kv, err := Bucket(ctx, connect(t, s), "busyapi_ids", 1, true)
			if err != nil {
				t.Error(err)
				return
			}
			block := uint64(1) << (inst % 4 * 3) // 1, 8, 64, 512
			floor := uint64(1 + inst*1000)
			l := New(kv, block, floor)
			for range 40 {
				n := uint64(1 + inst%3)
				b, err := l.Lease(n)
				if err != nil {
					t.Error(err)
					return
				}
				sp := span{b * block, (b + n) * block, inst}
				if sp.from+1 < floor {
					t.Errorf("instance %d leased ids from %d, below its floor %d", inst, sp.from+1, floor)
				}
				mu.Lock()
				spans = append(spans, sp)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	sort.Slice(spans, func(i, j int) bool { return spans[i].from < spans[j].from })
	for i := 1; i < len(spans); i++ {
		if spans[i].from < spans[i-1].to {
			t.Fatalf("ranges overlap: ids (%d,%d] of instance %d and (%d,%d] of instance %d",
				spans[i-1].from, spans[i-1].to, spans[i-1].inst, spans[i].from, spans[i].to, spans[i].inst)
		}
	}
	if len(spans) != 8*40 {
		t.Fatalf("%d ranges leased, want %d", len(spans), 8*40)
	}
}

func TestLeaseErrors(t *testing.T) {
	s := startJetStream(t)
	ctx := context.Background()
	js := connect(t, s)
	if _, err := Bucket(ctx, js, "missing", 1, false); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("Bucket without create = %v, want ErrBucketNotFound", err)
	}
	kv, err := Bucket(ctx, js, "ids", 1, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, Key, []byte("not a number")); err != nil {
		t.Fatal(err)
	}
	if _, err := New(kv, 16, 1).Lease(4); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Lease over a corrupt value = %v, want ErrCorrupt", err)
	}
	// A floor above the bucket's value wins: a lost bucket cannot make an
	// instance reuse its own ids.
	if _, err := kv.Put(ctx, Key, []byte("5")); err != nil {
		t.Fatal(err)
	}
	b, err := New(kv, 16, 1000).Lease(2)
	if err != nil || b*16+1 < 1000 {
		t.Fatalf("Lease with floor 1000 = block %d, %v", b, err)
	}
	if e, err := kv.Get(ctx, Key); err != nil || string(e.Value()) != strconv.FormatUint((b+2)*16+1, 10) {
		t.Fatalf("next id after leasing blocks %d and %d of 16: %v %v", b, b+1, e, err)
	}
	// NATS unreachable: Lease fails within its timeout instead of hanging.
	s.Shutdown()
	l := New(kv, 16, 1)
	l.timeout = 500 * time.Millisecond
	start := time.Now()
	if _, err := l.Lease(1); err == nil {
		t.Fatal("Lease with NATS down succeeded")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Lease with NATS down took %v", d)
	}
}
