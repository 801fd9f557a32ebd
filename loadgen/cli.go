package loadgen

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"

	"golang.org/x/term"
)

// Exit statuses of Main.
const (
	ExitPass  = 0 // every check passed
	ExitFail  = 1 // a check failed, or the run could not start
	ExitUsage = 2 // bad flags
)

const usageText = `usage: busyapi bench [flags]

Sends POST /api/usages (or /api/usages/batch with --batch) to a
busyapi-compatible server and reports throughput, status codes, connection
errors, latency percentiles and whether any id was answered twice.

Without --rate or --users-per-minute it runs closed loop, as fast as the
server answers. With one it runs open loop: requests leave on schedule
whether or not earlier ones were answered, and latency counts from each
request's scheduled send time.

Exit status: 0 when every check passes; 1 when the achieved rate is under
97% of the requested rate, any request failed (connection error, timeout,
never sent) or was answered other than 2xx, any id was answered twice, or
the run could not start; 2 on bad flags.

Flags:
`

// Main runs `busyapi bench` with args (after "bench") and returns the exit
// status. The summary goes to stdout, progress and errors to stderr.
func Main(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("busyapi bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageText)
		fs.PrintDefaults()
	}
	cfg := DefaultConfig()
	fs.StringVar(&cfg.URL, "url", cfg.URL, "base URL of the server (http only); requests go to URL/api/usages")
	fs.Float64Var(&cfg.Rate, "rate", 0, "open loop: requests per second over all connections (0: closed loop, as fast as the server answers)")
	upm := fs.Float64("users-per-minute", 0, "open loop: usages per minute, i.e. a --rate of N/60 requests/s (N/60/B with --batch B)")
	fs.IntVar(&cfg.Connections, "connections", cfg.Connections, "keep-alive connections")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "measured duration, after the warmup")
	fs.DurationVar(&cfg.Warmup, "warmup", cfg.Warmup, "load before the measured duration, sent but not measured")
	fs.IntVar(&cfg.Pipeline, "pipeline", cfg.Pipeline, "HTTP/1.1 pipelining depth: requests in flight per connection")
	fs.IntVar(&cfg.Batch, "batch", 0, "usages per request, posted as NDJSON to /api/usages/batch (0: one usage per request to /api/usages)")
	payload := fs.String("payload", "", "file of usages, one JSON object per line, cycled (default: generated, varied usages)")
	fs.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "seed of the generated usages")
	fs.Func("header", "extra request header \"Name: value\", e.g. \"Authorization: Bearer TOKEN\"; repeatable", func(s string) error {
		cfg.Headers = append(cfg.Headers, s)
		return nil
	})
	jsonOut := fs.Bool("json", false, "print the summary as JSON")
	report := fs.String("report", "", "write a self-contained HTML report with charts to this file")
	chartDir := fs.String("charts", "", "write the report's charts as SVG files into this directory")
	progress := fs.String("progress", "auto", "live progress on stderr: auto (a bar on a terminal, else lines), bar, lines or off")
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "longest wait for an answer; longer is a timeout error")
	fs.DurationVar(&cfg.Drain, "drain", cfg.Drain, "open loop: how long after the schedule ends connections that fell behind may still send; requests unsent then fail the run")
	fs.IntVar(&cfg.DialConcurrency, "dial-concurrency", cfg.DialConcurrency, "connections dialled at once before the run")
	fs.StringVar(&cfg.Pacer, "pacer", cfg.Pacer, "open loop: how the pacer sleeps: timerfd (Linux, microsecond precision) or sleep (time.Sleep, up to 1ms late)")
	fs.IntVar(&cfg.PID, "pid", 0, "PID of the server, to report its peak RSS and CPU use")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the generator to this file")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitPass
		}
		return ExitUsage
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "busyapi bench: "+format+"\n", a...)
		return ExitUsage
	}
	if fs.NArg() > 0 {
		return usage("unexpected argument %q", fs.Arg(0))
	}
	if *upm < 0 {
		return usage("--users-per-minute must not be negative")
	}
	if *upm > 0 {
		if cfg.Rate > 0 {
			return usage("give --rate or --users-per-minute, not both")
		}
		cfg.Rate = *upm / 60 / float64(max(cfg.Batch, 1))
	}
	if *payload != "" {
		lines, err := ReadPayload(*payload)
		if err != nil {
			return usage("%v", err)
		}
		cfg.Payload = lines
	}
	if _, err := cfg.validate(); err != nil {
		return usage("%v", err)
	}

	var view ProgressView
	mode := *progress
	if mode == "auto" {
		mode = "lines"
		if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			mode = "bar"
		}
	}
	switch mode {
	case "bar":
		view = NewBar(stderr, (cfg.Warmup + cfg.Duration).Milliseconds())
	case "lines":
		view = NewLines(stderr)
	case "off":
	default:
		return usage("--progress %q: use auto, bar, lines or off", *progress)
	}
	if view != nil {
		cfg.Progress = view.Update
	}

	// The generator's heap is small and allocated up front; collect less.
	debug.SetGCPercent(400)
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(stderr, "busyapi bench:", err)
			return ExitFail
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(stderr, "busyapi bench:", err)
			return ExitFail
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if mode == "lines" {
		fmt.Fprintf(stderr, "busyapi bench: %s, %d connections, %s\n", describeLoad(&cfg), cfg.Connections, cfg.URL)
	}
	res, err := Run(ctx, cfg)
	stop() // a second Ctrl-C kills
	if view != nil {
		view.Finish()
	}
	if err != nil {
		fmt.Fprintln(stderr, "busyapi bench:", err)
		return ExitFail
	}
	if *jsonOut {
		if err := res.WriteJSON(stdout); err != nil {
			fmt.Fprintln(stderr, "busyapi bench:", err)
			return ExitFail
		}
	} else {
		res.WriteText(stdout)
	}
	if *report != "" {
		if err := WriteReportFile(*report, res, "busyapi bench "+strings.Join(args, " ")); err != nil {
			fmt.Fprintln(stderr, "busyapi bench: report:", err)
			return ExitFail
		}
		fmt.Fprintf(stderr, "busyapi bench: report written to %s\n", *report)
	}
	if *chartDir != "" {
		if err := WriteChartFiles(*chartDir, res); err != nil {
			fmt.Fprintln(stderr, "busyapi bench: charts:", err)
			return ExitFail
		}
		fmt.Fprintf(stderr, "busyapi bench: charts written to %s\n", *chartDir)
	}
	if !res.OK {
		return ExitFail
	}
	return ExitPass
}

func describeLoad(c *Config) string {
	s := "closed loop"
	if c.Rate > 0 {
		s = fmt.Sprintf("open loop at %s req/s", num(c.Rate))
	}
	s += fmt.Sprintf(" for %v after %v warmup", c.Duration, c.Warmup)
	if c.Pipeline > 1 {
		s += fmt.Sprintf(", pipeline %d", c.Pipeline)
	}
	if c.Batch > 0 {
		s += fmt.Sprintf(", batches of %d", c.Batch)
	}
	return s
}
