package main

import (
	"bytes"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fastjson"
)

// buildBinary builds busyapi once for the process tests.
func buildBinary(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "busyapi")
	if out, err := exec.Command(goBin, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func freeAddr(t *testing.T) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", freePort(t))
}

// freePort returns a loopback port nothing listens on.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

type proc struct {
	cmd  *exec.Cmd
	addr string
	logs *bytes.Buffer
}

func startServer(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	addr := freeAddr(t)
	var logs bytes.Buffer
	cmd := exec.Command(bin, append([]string{"--addr", addr}, args...)...)
	cmd.Stdout = &logs
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, err := http.Get("http://" + addr + "/"); err == nil {
			resp.Body.Close()
			return &proc{cmd: cmd, addr: addr, logs: &logs}
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("server did not start:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestKill9 runs the real binary in the default fsync mode, posts from many
// connections, kills it with SIGKILL at random moments and restarts it on the
// same data directory: every usage answered 201 reads back unchanged, no id
// is ever answered twice, and ids after a restart are above all earlier ones.
func TestKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("kills and restarts the server 20 times")
	}
	bin := buildBinary(t)
	dataDir := t.TempDir()
	rounds := 20
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	acked := map[uint64]string{}
	var maxBefore uint64
	var lastRound []uint64
	seq := 0
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	for round := 0; round < rounds; round++ {
		// Small id blocks and segments, so kills land between lease
		// extensions, in the middle of blocks and across segment rolls.
		p := startServer(t, bin, "--data-dir", dataDir, "--id-block", "16", "--segment-bytes", "256KiB")
		// Check the last round's usages and a sample of older ones; the
		// final start below checks all of them.
		check := map[uint64]string{}
		for _, id := range lastRound {
			check[id] = acked[id]
		}
		for id, body := range acked {
			if len(check) >= len(lastRound)+300 {
				break
			}
			check[id] = body
		}
		for id, body := range check {
			resp, err := client.Get("http://" + p.addr + "/api/usages/" + strconv.FormatUint(id, 10))
			if err != nil {
				t.Fatalf("round %d: GET %d: %v", round, id, err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			want := `{"id":` + strconv.FormatUint(id, 10) + `,` + body[1:]
			if resp.StatusCode != 200 || string(got) != want {
				t.Fatalf("round %d: acknowledged usage %d lost or changed: %d %s\nlogs:\n%s", round, id, resp.StatusCode, got, p.logs)
			}
		}
		var mu sync.Mutex
		var roundIDs []uint64
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for w := 0; w < 32; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					mu.Lock()
					seq++
					body := fmt.Sprintf(`{"patientId":"p%d","timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol","round":%d,"seq":%d}`, w, round, seq)
					mu.Unlock()
					resp, err := client.Post("http://"+p.addr+"/api/usages", "application/json", bytes.NewBufferString(body))
					if err != nil {
						return // killed
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 201 {
						if resp.StatusCode == 503 {
							continue
						}
						t.Errorf("POST: %d %s", resp.StatusCode, b)
						return
					}
					id := uint64(fastjson.GetInt(b, "id"))
					mu.Lock()
					if _, dup := acked[id]; dup || id == 0 {
						t.Errorf("round %d: id %d answered twice", round, id)
					}
					acked[id] = body
					roundIDs = append(roundIDs, id)
					mu.Unlock()
				}
			}(w)
		}
		time.Sleep(time.Duration(20+rng.Intn(300)) * time.Millisecond)
		if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		p.cmd.Wait()
		close(stop)
		wg.Wait()
		client.CloseIdleConnections()
		if t.Failed() {
			t.Fatalf("logs:\n%s", p.logs)
		}
		for _, id := range roundIDs {
			if id <= maxBefore {
				t.Fatalf("round %d: id %d is not above %d, the highest id before the restart", round, id, maxBefore)
			}
		}
		for _, id := range roundIDs {
			maxBefore = max(maxBefore, id)
		}
		lastRound = roundIDs
		t.Logf("round %d: %d usages acknowledged before kill -9 (%d in all)", round, len(roundIDs), len(acked))
	}
	// A last clean start reads everything and stops with exit 0 on SIGTERM.
	p := startServer(t, bin, "--data-dir", dataDir)
	n := 0
	for id, body := range acked {
		resp, err := client.Get("http://" + p.addr + "/api/usages/" + strconv.FormatUint(id, 10))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(got) != `{"id":`+strconv.FormatUint(id, 10)+`,`+body[1:] {
			t.Fatalf("usage %d: %s", id, got)
		}
		n++
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, p.logs)
	}
	if n < 1000 {
		t.Fatalf("only %d usages acknowledged over %d rounds: the test did not load the server", n, rounds)
	}
}

// TestSecondProcessExits checks that a second server on a locked data
// directory refuses to start, says why, and exits non-zero.
func TestSecondProcessExits(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	p := startServer(t, bin, "--data-dir", dir)
	defer func() { p.cmd.Process.Kill(); p.cmd.Wait() }()
	out, err := exec.Command(bin, "--addr", freeAddr(t), "--data-dir", dir).CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte("in use by another busyapi process")) {
		t.Fatalf("second process: %v\n%s", err, out)
	}
}
