package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/valyala/fastjson"
)

// natsCluster is a real 3-node JetStream cluster in this process, on
// loopback ports that stay the same across restarts of its nodes.
type natsCluster struct {
	t       *testing.T
	client  []int
	route   []int
	stores  []string
	mu      sync.Mutex
	servers []*natsserver.Server
}

func startNATSCluster(t *testing.T, n int) *natsCluster {
	t.Helper()
	c := &natsCluster{t: t, servers: make([]*natsserver.Server, n)}
	for i := 0; i < n; i++ {
		c.client = append(c.client, freePort(t))
		c.route = append(c.route, freePort(t))
		c.stores = append(c.stores, t.TempDir())
	}
	for i := 0; i < n; i++ {
		c.start(i)
	}
	c.waitMetaLeader()
	t.Cleanup(func() {
		for i := range c.servers {
			c.stop(i)
		}
	})
	return c
}

func (c *natsCluster) start(i int) {
	c.t.Helper()
	var routes []string
	for _, p := range c.route {
		routes = append(routes, "nats-route://127.0.0.1:"+strconv.Itoa(p))
	}
	opts := &natsserver.Options{
		ServerName: fmt.Sprintf("n%d", i+1), Host: "127.0.0.1", Port: c.client[i],
		JetStream: true, StoreDir: c.stores[i], NoLog: true, NoSigs: true,
		Cluster: natsserver.ClusterOpts{Name: "busyapi-test", Host: "127.0.0.1", Port: c.route[i]},
		Routes:  natsserver.RoutesFromStr(strings.Join(routes, ",")),
	}
	s, err := natsserver.NewServer(opts)
	if err != nil {
		c.t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		c.t.Fatalf("nats node %d did not start", i+1)
	}
	c.mu.Lock()
	c.servers[i] = s
	c.mu.Unlock()
}

func (c *natsCluster) stop(i int) {
	c.mu.Lock()
	s := c.servers[i]
	c.servers[i] = nil
	c.mu.Unlock()
	if s != nil {
		s.Shutdown()
		s.WaitForShutdown()
	}
}

// waitMetaLeader waits until the JetStream meta group has a leader that
// every node follows.
func (c *natsCluster) waitMetaLeader() {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c.mu.Lock()
		leader, current := false, true
		for _, s := range c.servers {
			if s == nil {
				current = false
				continue
			}
			leader = leader || s.JetStreamIsLeader()
			current = current && s.JetStreamIsCurrent()
		}
		c.mu.Unlock()
		if leader && current {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatal("the NATS cluster has no JetStream meta leader after 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *natsCluster) urls() string {
	var u []string
	for _, p := range c.client {
		u = append(u, "nats://127.0.0.1:"+strconv.Itoa(p))
	}
	return strings.Join(u, ",")
}

// instance is one busyapi process of the test, restartable on its data
// directory.
type instance struct {
	n       int
	dir     string
	args    []string
	addr    atomic.Pointer[string]
	p       *proc
	logs    []string // of the processes that ended
	mu      sync.Mutex
	acked   map[uint64]string // id -> body answered 201
	posted  map[string]string // "i/w/seq" -> body, every body sent
	during  atomic.Int64      // 201s while NATS was entirely down
	counter *atomic.Bool      // true while NATS is entirely down
}

// readyz returns an instance's /readyz body.
func readyz(client *http.Client, addr string) (map[string]any, error) {
	resp, err := client.Get("http://" + addr + "/readyz")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		return nil, err
	}
	if resp.StatusCode != 200 {
		return m, fmt.Errorf("readyz %d: %v", resp.StatusCode, m)
	}
	return m, nil
}

// TestScaleOutCluster runs 3 busyapi processes in scale-out mode against a
// 3-node JetStream cluster, posting concurrently, while one NATS node
// restarts, one busyapi process is killed with SIGKILL and restarted on its
// data directory, and NATS stops entirely for a few seconds. Then every
// usage answered 201 by any instance is in the stream exactly once, as
// posted (and as GET returns it), ids are unique across instances, and
// every instance's forward lag returns to 0.
func TestScaleOutCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a NATS cluster and three busyapi processes")
	}
	bin := buildBinary(t)
	nc := startNATSCluster(t, 3)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	var natsDown atomic.Bool

	const instances, workers = 3, 4
	insts := make([]*instance, instances)
	for i := range insts {
		in := &instance{n: i, dir: t.TempDir(), acked: map[uint64]string{}, posted: map[string]string{}, counter: &natsDown}
		in.args = []string{"--data-dir", in.dir, "--nats", nc.urls(), "--nats-replicas", "3", "--shutdown-timeout", "5s"}
		in.p = startServer(t, bin, in.args...)
		in.addr.Store(&in.p.addr)
		insts[i] = in
	}
	defer func() {
		for _, in := range insts {
			if in.p != nil {
				in.p.cmd.Process.Kill()
				in.p.cmd.Wait()
				in.logs = append(in.logs, in.p.logs.String())
				in.p = nil
			}
			if t.Failed() {
				for k, l := range in.logs {
					t.Logf("instance %d, process %d:\n%s", in.n, k, l)
				}
			}
		}
	}()

	// Load: workers per instance post until stop.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, in := range insts {
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func(in *instance, w int) {
				defer wg.Done()
				for seq := 0; ; seq++ {
					select {
					case <-stop:
						return
					default:
					}
					key := fmt.Sprintf("%d/%d/%d", in.n, w, seq)
					body := fmt.Sprintf(`{"patientId":"p%d","timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol","key":%q}`, seq%100, key)
					in.mu.Lock()
					in.posted[key] = body
					in.mu.Unlock()
					resp, err := client.Post("http://"+*in.addr.Load()+"/api/usages", "application/json", strings.NewReader(body))
					if err != nil {
						time.Sleep(20 * time.Millisecond) // killed, or restarting
						continue
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode == 503 {
						time.Sleep(5 * time.Millisecond)
						continue
					}
					if resp.StatusCode != 201 {
						t.Errorf("instance %d: POST: %d %s", in.n, resp.StatusCode, b)
						return
					}
					id := uint64(fastjson.GetInt(b, "id"))
					in.mu.Lock()
					if _, dup := in.acked[id]; dup || id == 0 {
						t.Errorf("instance %d: id %d answered twice", in.n, id)
					}
					in.acked[id] = body
					in.mu.Unlock()
					if in.counter.Load() {
						in.during.Add(1)
					}
					time.Sleep(2 * time.Millisecond) // a steady load, not a benchmark
				}
			}(in, w)
		}
	}
	count := func() int {
		n := 0
		for _, in := range insts {
			in.mu.Lock()
			n += len(in.acked)
			in.mu.Unlock()
		}
		return n
	}
	start := time.Now()
	step := func(what string) {
		t.Logf("%5.1fs %s (%d usages answered 201)", time.Since(start).Seconds(), what, count())
	}

	time.Sleep(1500 * time.Millisecond)
	step("restarting NATS node 2")
	nc.stop(1)
	time.Sleep(500 * time.Millisecond)
	nc.start(1)
	step("NATS node 2 back")

	time.Sleep(1500 * time.Millisecond)
	victim := insts[1]
	step("kill -9 of busyapi instance 1")
	victim.p.cmd.Process.Signal(syscall.SIGKILL)
	victim.p.cmd.Wait()
	victim.logs = append(victim.logs, victim.p.logs.String())
	victim.p = startServer(t, bin, victim.args...)
	victim.addr.Store(&victim.p.addr)
	step("busyapi instance 1 restarted")

	time.Sleep(1500 * time.Millisecond)
	step("stopping all NATS nodes")
	natsDown.Store(true)
	for i := 0; i < 3; i++ {
		nc.stop(i)
	}
	time.Sleep(3 * time.Second)
	natsDown.Store(false)
	step("starting all NATS nodes")
	for i := 0; i < 3; i++ {
		nc.start(i)
	}
	nc.waitMetaLeader()
	step("NATS cluster back")
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	step("load stopped")
	if t.Failed() {
		t.FailNow()
	}
	for _, in := range insts {
		if in.during.Load() == 0 {
			t.Errorf("instance %d answered no POST 201 while NATS was down: ingest must not wait for NATS", in.n)
		}
	}

	// Every instance's forward lag returns to 0.
	deadline := time.Now().Add(90 * time.Second)
	for _, in := range insts {
		for {
			m, err := readyz(client, *in.addr.Load())
			if err == nil && m["forward_lag_usages"] == 0.0 && m["nats"] == "connected" {
				if m["forward_lag_seconds"] != 0.0 {
					t.Fatalf("instance %d: no usages behind, but forward_lag_seconds %v", in.n, m["forward_lag_seconds"])
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("instance %d: forward lag did not return to 0: %v %v", in.n, m, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	step("every forward lag is 0")

	// Read the whole stream.
	conn, err := nats.Connect(nc.urls(), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	js, err := jetstream.New(conn)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stream, err := js.Stream(ctx, "USAGES")
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.Replicas != 3 || info.Config.Duplicates != 2*time.Minute || len(info.Config.Subjects) != 1 || info.Config.Subjects[0] != "busyapi.usages" {
		t.Fatalf("stream config: %+v", info.Config)
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	inStream := map[uint64]string{}
	readDeadline := time.Now().Add(60 * time.Second)
	for got := uint64(0); got < info.State.Msgs; {
		if time.Now().After(readDeadline) {
			t.Fatalf("read %d of the stream's %d messages in 60s", got, info.State.Msgs)
		}
		batch, err := cons.Fetch(int(min(1000, info.State.Msgs-got)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			// Right after the cluster restarted, the consumer's
			// interest may not have reached every route yet.
			t.Logf("fetch: %v; retrying", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		for m := range batch.Messages() {
			got++
			id, err := strconv.ParseUint(m.Headers().Get("Nats-Msg-Id"), 10, 64)
			if err != nil || m.Subject() != "busyapi.usages" {
				t.Fatalf("message %q on %s: no numeric Nats-Msg-Id: %v", m.Data(), m.Subject(), m.Headers())
			}
			if prev, dup := inStream[id]; dup {
				t.Fatalf("usage %d is in the stream twice:\n%s\n%s", id, prev, m.Data())
			}
			inStream[id] = string(m.Data())
		}
		if err := batch.Error(); err != nil {
			t.Logf("fetch: %v; retrying", err)
			time.Sleep(100 * time.Millisecond)
		}
	}
	step(fmt.Sprintf("read %d messages from the stream", len(inStream)))

	// Every usage answered 201 is there exactly once, as posted; ids are
	// unique across instances.
	owner := map[uint64]int{}
	total := 0
	for _, in := range insts {
		for id, body := range in.acked {
			if o, dup := owner[id]; dup {
				t.Fatalf("id %d answered 201 by instances %d and %d", id, o, in.n)
			}
			owner[id] = in.n
			want := `{"id":` + strconv.FormatUint(id, 10) + `,` + body[1:]
			if got, ok := inStream[id]; !ok || got != want {
				t.Fatalf("instance %d: usage %d answered 201 is not in the stream as posted:\n got %q (present %v)\nwant %q", in.n, id, got, ok, want)
			}
			total++
		}
	}
	// Anything else in the stream was stored without its 201 reaching the
	// client (the kill -9): it must be a body that was posted.
	extra := 0
	for id, msg := range inStream {
		if _, ok := owner[id]; ok {
			continue
		}
		extra++
		key := fastjson.GetString([]byte(msg), "key")
		var n int
		fmt.Sscanf(key, "%d/", &n)
		if n < 0 || n >= instances {
			t.Fatalf("message %d in the stream was never posted: %s", id, msg)
		}
		in := insts[n]
		body, ok := in.posted[key]
		if !ok || msg != `{"id":`+strconv.FormatUint(id, 10)+`,`+body[1:] {
			t.Fatalf("message %d in the stream was never posted: %s", id, msg)
		}
	}
	if total < 1000 {
		t.Fatalf("only %d usages answered 201: the test did not load the instances", total)
	}
	// The stream holds what GET returns.
	for _, in := range insts {
		k := 0
		for id := range in.acked {
			if k++; k > 100 {
				break
			}
			resp, err := client.Get("http://" + *in.addr.Load() + "/api/usages/" + strconv.FormatUint(id, 10))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != inStream[id] {
				t.Fatalf("instance %d: GET %d = %d %s, the stream has %s", in.n, id, resp.StatusCode, b, inStream[id])
			}
		}
	}
	t.Logf("%d usages answered 201 across %d instances, each in the stream once; %d more stored without their 201 reaching the client (kill -9), each once too; 201s while NATS was down: %d, %d, %d",
		total, instances, extra, insts[0].during.Load(), insts[1].during.Load(), insts[2].during.Load())

	for _, in := range insts {
		resp, err := client.Get("http://" + *in.addr.Load() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var figures []string
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "busyapi_forward_") {
				figures = append(figures, line)
			}
		}
		t.Logf("instance %d (since its last start): %s", in.n, strings.Join(figures, ", "))
	}

	// A clean stop exits 0 and leaves nothing to forward.
	for _, in := range insts {
		in.p.cmd.Process.Signal(syscall.SIGTERM)
		err := in.p.cmd.Wait()
		in.logs = append(in.logs, in.p.logs.String())
		in.p = nil
		if err != nil {
			t.Fatalf("instance %d: exit after SIGTERM: %v", in.n, err)
		}
		if !bytes.Contains([]byte(in.logs[len(in.logs)-1]), []byte("lag_usages=0")) {
			t.Errorf("instance %d: forwarding stopped with a lag:\n%s", in.n, in.logs[len(in.logs)-1])
		}
	}
}
