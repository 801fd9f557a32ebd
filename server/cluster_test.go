package server

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/busyapi/busyapi/cluster"
)

// startJetStream runs a real single-node JetStream server on a loopback
// port until the test ends, and returns its URL.
func startJetStream(t *testing.T) string {
	t.Helper()
	return startJetStreamServer(t).ClientURL()
}

// startJetStreamServer is startJetStream for tests that stop it.
func startJetStreamServer(t *testing.T) *natsserver.Server {
	t.Helper()
	s, err := natsserver.NewServer(&natsserver.Options{
		ServerName: "n1", Host: "127.0.0.1", Port: -1,
		JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// deadURL is a loopback NATS URL where nothing listens.
func deadURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return "nats://" + ln.Addr().String()
}

type readyBody struct {
	Status       string   `json:"status"`
	LagUsages    *uint64  `json:"forward_lag_usages"`
	LagSeconds   *float64 `json:"forward_lag_seconds"`
	NATS         string   `json:"nats"`
	ForwardError string   `json:"forward_error"`
}

func ready(t *testing.T, s *Server) readyBody {
	t.Helper()
	resp := call(s, "GET", "/readyz", "", nil)
	var rb readyBody
	if resp.StatusCode() != 200 || json.Unmarshal(resp.Body(), &rb) != nil || rb.Status != "ok" {
		t.Fatalf("readyz: %d %s", resp.StatusCode(), resp.Body())
	}
	return rb
}

// metricsOf returns the samples of /metrics by series name.
func metricsOf(s *Server) map[string]string {
	var b bytes.Buffer
	s.WriteMetrics(&b)
	out := map[string]string{}
	for _, line := range strings.Split(b.String(), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok && !strings.HasPrefix(line, "#") {
			out[k] = v
		}
	}
	return out
}

// TestScaleOutForwards: in scale-out mode the usages POSTed reach the
// stream; /readyz reports the lag, which returns to 0, and /metrics has
// the forwarding figures.
func TestScaleOutForwards(t *testing.T) {
	url := startJetStream(t)
	s := newDurable(t, t.TempDir(), Config{NATS: cluster.Config{URLs: url}})
	defer s.Shutdown(context.Background())
	for i := 0; i < 20; i++ {
		if _, code := postID(t, s, usageBody(i)); code != 201 {
			t.Fatalf("POST: %d", code)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		rb := ready(t, s)
		if rb.LagUsages == nil || rb.LagSeconds == nil || rb.NATS == "" {
			t.Fatalf("readyz in scale-out mode without the forward lag: %+v", rb)
		}
		if *rb.LagUsages == 0 && rb.NATS == "connected" {
			if *rb.LagSeconds != 0 || rb.ForwardError != "" {
				t.Fatalf("readyz: %+v", rb)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("forward lag did not return to 0: %+v", rb)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var st Stats
	s.UpdateStats(&st)
	if st.Forward.Published != 20 || st.Forward.PublishErrors != 0 {
		t.Fatalf("Stats.Forward: %+v", st.Forward)
	}
	m := metricsOf(s)
	for name, want := range map[string]string{
		"busyapi_forward_lag_usages":           "0",
		"busyapi_forward_lag_seconds":          "0",
		"busyapi_forward_published_total":      "20",
		"busyapi_forward_duplicates_total":     "0",
		"busyapi_forward_publish_errors_total": "0",
		"busyapi_nats_connected":               "1",
		"busyapi_id_lease_roundtrips_total":    "1", // one range covers it all
	} {
		if got, ok := m[name]; !ok || got != want {
			t.Errorf("%s = %q (present %v), want %s", name, got, ok, want)
		}
	}
}

// TestScaleOutNATSDown: an instance that never reached NATS has no
// cluster-wide ids, so it answers 503 with Retry-After rather than risk a
// duplicate. Once it has leased a range, NATS going down does not stop
// ingest: POSTs answer 201 at once, the server stays ready while reporting
// the lag and the lost connection, and retention keeps every segment not
// yet forwarded.
func TestScaleOutNATSDown(t *testing.T) {
	cold := newDurable(t, t.TempDir(), Config{NATS: cluster.Config{URLs: deadURL(t)}})
	resp := call(cold, "POST", "/api/usages", "application/json", []byte(sample))
	if resp.StatusCode() != 503 || len(resp.Header.Peek("Retry-After")) == 0 || !strings.Contains(errorOf(t, resp), "reserving ids") {
		t.Fatalf("POST before any cluster lease: %d %s", resp.StatusCode(), resp.Body())
	}
	if r := call(cold, "GET", "/readyz", "", nil); r.StatusCode() != 503 || !strings.Contains(errorOf(t, r), "no ids are reserved") {
		t.Fatalf("readyz before any cluster lease: %d %s", r.StatusCode(), r.Body())
	}
	if err := cold.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}

	ns := startJetStreamServer(t)
	s := newDurable(t, t.TempDir(), Config{NATS: cluster.Config{URLs: ns.ClientURL()}, SegmentBytes: 64 << 10})
	defer s.Shutdown(context.Background())
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, code := postID(t, s, usageBody(-1)); code == 201 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no 201 with NATS up")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for ready(t, s).LagUsages == nil || *ready(t, s).LagUsages != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the first usage was not forwarded")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ns.Shutdown()
	ns.WaitForShutdown()
	start := time.Now()
	var ids []uint64
	for i := 0; i < 2000; i++ {
		id, code := postID(t, s, usageBody(i))
		if code != 201 {
			t.Fatalf("POST with NATS down: %d", code)
		}
		ids = append(ids, id)
	}
	t.Logf("2000 POSTs with NATS down took %v", time.Since(start))
	rb := ready(t, s)
	if rb.LagUsages == nil || *rb.LagUsages != 2000 || rb.NATS != "disconnected" || *rb.LagSeconds <= 0 {
		t.Fatalf("readyz with NATS down: %+v", rb)
	}
	m := metricsOf(s)
	if m["busyapi_forward_lag_usages"] != "2000" || m["busyapi_nats_connected"] != "0" {
		t.Fatalf("metrics with NATS down: lag %s, connected %s", m["busyapi_forward_lag_usages"], m["busyapi_nats_connected"])
	}
	segs, _ := filepath.Glob(filepath.Join(s.cfg.DataDir, "shard-*", "*.wal"))
	if len(segs) < 4 {
		t.Fatalf("%d segments: the test needs old ones for retention to consider", len(segs))
	}
	time.Sleep(10 * time.Millisecond)
	n, err := s.wal.ApplyRetention(time.Nanosecond, s.forwardKeep())
	if err != nil || n != 0 {
		t.Fatalf("retention deleted %d unforwarded segments: %v", n, err)
	}
	for _, i := range []int{0, 1000, 1999} {
		checkRead(t, s, ids[i], usageBody(i))
	}
}

// TestScaleOutNeedsDataDir: scale-out mode forwards the log, so it needs
// one.
func TestScaleOutNeedsDataDir(t *testing.T) {
	_, err := New(Config{NATS: cluster.Config{URLs: "nats://127.0.0.1:4222"}})
	if err == nil || !strings.Contains(err.Error(), "--data-dir") {
		t.Fatalf("New without a data directory: %v", err)
	}
	_, err = New(Config{DataDir: t.TempDir(), NATS: cluster.Config{URLs: "nats://127.0.0.1:4222", Replicas: 7}})
	if err == nil || !strings.Contains(err.Error(), "--nats-replicas") {
		t.Fatalf("New with 7 replicas: %v", err)
	}
}
