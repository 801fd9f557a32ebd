package loadgen

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
)

// cpuTimes are CPU times in seconds at one moment, for telling how busy the
// server, the load generator and everything else were during a run.
type cpuTimes struct {
	at      int64   // mono time of the sample
	machine float64 // user+nice+system+irq+softirq time of all CPUs; -1 if unknown (not Linux)
	steal   float64 // time the hypervisor ran something else
	server  float64 // user+system time of -pid; -1 if unknown
	self    float64 // user+system time of this process
}

// userHZ is the unit of /proc's CPU times: 100 on every Linux architecture
// Go supports.
const userHZ = 100

func readCPU(pid int) cpuTimes {
	c := cpuTimes{at: mono(), machine: -1, server: -1}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		// cpu  user nice system idle iowait irq softirq steal ...
		line, _, _ := bytes.Cut(b, []byte("\n"))
		f := bytes.Fields(line)
		if len(f) >= 9 && string(f[0]) == "cpu" {
			var v [8]float64
			for i := range v {
				n, _ := strconv.ParseUint(string(f[i+1]), 10, 64)
				v[i] = float64(n) / userHZ
			}
			// Loopback TCP runs largely in softirqs, which a process's
			// own CPU time may include: count them, or the generator's
			// time can exceed the machine's.
			c.machine = v[0] + v[1] + v[2] + v[5] + v[6]
			c.steal = v[7]
		}
	}
	if pid > 0 {
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil {
			// pid (comm) state ppid ... utime is field 14, stime 15; comm
			// may hold spaces, so count from its closing parenthesis.
			if i := bytes.LastIndexByte(b, ')'); i >= 0 {
				f := bytes.Fields(b[i+1:])
				if len(f) >= 13 {
					u, _ := strconv.ParseUint(string(f[11]), 10, 64)
					s, _ := strconv.ParseUint(string(f[12]), 10, 64)
					c.server = float64(u+s) / userHZ
				}
			}
		}
	}
	c.self, _ = selfUsage()
	return c
}

// selfUsage returns the user+system CPU time of this process, in seconds,
// and its peak resident set in KiB; zeros if getrusage fails.
func selfUsage() (cpuSeconds float64, peakRSSKiB uint64) {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0, 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9, uint64(ru.Maxrss)
}

// CPUUse is the CPU used during the measured window, in percent of one
// core: by the server (with --pid), the load generator, other processes and
// the hypervisor (steal).
type CPUUse struct {
	Seconds float64 `json:"window_seconds"`
	Server  float64 `json:"server_percent,omitempty"`
	Load    float64 `json:"loadgen_percent"`
	Others  float64 `json:"others_percent"`
	Steal   float64 `json:"steal_percent"`
	known   bool    // machine-wide numbers are available
}

func cpuBetween(a, b cpuTimes) CPUUse {
	u := CPUUse{Seconds: float64(b.at-a.at) / 1e9}
	if u.Seconds <= 0 {
		return u
	}
	pct := func(x float64) float64 { return 100 * x / u.Seconds }
	u.Load = pct(b.self - a.self)
	if a.machine >= 0 && b.machine >= 0 {
		u.known = true
		others := b.machine - a.machine - (b.self - a.self)
		if a.server >= 0 && b.server >= 0 {
			u.Server = pct(b.server - a.server)
			others -= b.server - a.server
		}
		u.Others = pct(max(others, 0))
		u.Steal = pct(b.steal - a.steal)
	}
	return u
}

// readRSS reads VmHWM (peak resident set) and VmRSS, in KiB, of a process.
func readRSS(pid int) (hwm, rss uint64, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0, err
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		name, val, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		f := bytes.Fields(val)
		if len(f) == 0 {
			continue
		}
		n, _ := strconv.ParseUint(string(f[0]), 10, 64)
		switch string(name) {
		case "VmHWM":
			hwm = n
		case "VmRSS":
			rss = n
		}
	}
	return hwm, rss, nil
}
