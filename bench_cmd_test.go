package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/busyapi/busyapi/loadgen"
	"github.com/busyapi/busyapi/server"
)

// startBusyapi serves busyapi in this process on a loopback port with its
// log in a temporary directory, answering once usages are in memory.
func startBusyapi(t *testing.T) string {
	t.Helper()
	srv, err := server.New(server.Config{
		Ack:     server.AckMemory,
		DataDir: t.TempDir(),
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	return "http://" + ln.Addr().String()
}

// TestBenchAgainstBusyapi: `busyapi bench` against busyapi itself, closed
// loop, open loop pipelined and in batches: every generated usage is
// accepted (201) and every id is unique.
func TestBenchAgainstBusyapi(t *testing.T) {
	url := startBusyapi(t)
	for _, args := range [][]string{
		{"--connections", "8"},
		{"--rate", "2000", "--connections", "20", "--pipeline", "4"},
		{"--batch", "100", "--connections", "4"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			args = append(args, "--url", url, "--duration", "500ms", "--warmup", "100ms", "--progress", "off", "--json")
			code := loadgen.Main(args, &out, &errOut)
			var res loadgen.Result
			if err := json.Unmarshal(out.Bytes(), &res); err != nil {
				t.Fatalf("%v\n%s\n%s", err, out.String(), errOut.String())
			}
			if code != loadgen.ExitPass || !res.OK {
				t.Fatalf("exit status %d, failures %q\n%s", code, res.Failures, errOut.String())
			}
			per := uint64(res.UsagesPerRequest)
			if res.Status["201"] != res.Requests.Responses || res.IDs.Returned != per*res.Requests.OK ||
				res.IDs.Duplicates != 0 || res.IDs.AnswersWithoutAllIDs != 0 {
				t.Errorf("status %v, ids %+v for %d answers", res.Status, res.IDs, res.Requests.OK)
			}
		})
	}
}

// TestBenchSubcommand: the binary runs the load generator as `busyapi
// bench`, with its own flags and exit status; without a subcommand it is
// the server.
func TestBenchSubcommand(t *testing.T) {
	bin := buildBinary(t)
	out, err := exec.Command(bin, "bench", "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "usage: busyapi bench") || !strings.Contains(string(out), "-users-per-minute") {
		t.Errorf("bench --help: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, "bench", "--connections", "0").CombinedOutput()
	if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Errorf("bench --connections 0: %v, want exit status 2\n%s", err, out)
	}
	url := startBusyapi(t)
	report := filepath.Join(t.TempDir(), "r.html")
	out, err = exec.Command(bin, "bench", "--url", url, "--duration", "300ms", "--warmup", "0s", "--report", report).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "result        PASS") {
		t.Errorf("bench: %v\n%s", err, out)
	}
	// Without a subcommand, flags are the server's.
	out, err = exec.Command(bin, "--users-per-minute", "1").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "flag provided but not defined") {
		t.Errorf("server with a bench flag: %v\n%s", err, out)
	}
}
