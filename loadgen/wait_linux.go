package loadgen

import (
	"errors"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// A waiter sleeps until a due time with microsecond precision: on a
// one-shot timerfd in the runtime's netpoller. time.Sleep is not enough: when
// every goroutine is asleep the runtime waits in epoll_wait, whose timeout
// has millisecond resolution, so a sleep can end up to a millisecond late,
// and that lateness would be counted as server latency. The timerfd wakes
// epoll_wait as an event, on time.
type waiter struct {
	f      *os.File
	rc     syscall.RawConn
	buf    [8]byte
	due    int64
	armed  bool
	failed bool
	fn     func(fd uintptr) bool // w.onReadable, bound once
}

func newWaiter(precise bool) (*waiter, error) {
	if !precise {
		return &waiter{}, nil
	}
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("timerfd_create", err)
	}
	// A non-blocking fd joins the runtime's netpoller.
	f := os.NewFile(uintptr(fd), "timerfd")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	w := &waiter{f: f, rc: rc}
	w.fn = w.onReadable
	return w, nil
}

func (w *waiter) close() {
	if w.f != nil {
		w.f.Close()
	}
}

// spinBelow is how close to the due time wait spins instead of sleeping.
// It must stay short: with one P a spinning pacer keeps the connections'
// goroutines from running and the runtime from polling the network
// (runtime.Gosched instead of spinning is worse: the run queue is never
// empty, so the network is polled only every 10 ms).
const spinBelow = 5000 // ns

// wait returns at or just after due, a mono time.
func (w *waiter) wait(due int64) {
	d := due - mono()
	if d <= 0 {
		return
	}
	if w.f == nil {
		sleep(d)
		return
	}
	if d > spinBelow {
		w.due, w.armed, w.failed = due, false, false
		_ = w.rc.Read(w.fn)
		if w.failed {
			sleep(due - mono())
		}
	}
	for mono() < due {
	}
}

// onReadable is the RawConn.Read callback: it arms the timer on its first
// call and reads the expiry on the next.
func (w *waiter) onReadable(fd uintptr) bool {
	if !w.armed {
		// Arm the timer only now, after RawRead has reset the poller's
		// readiness: an expiry before the reset would be forgotten, and
		// with edge-triggered epoll never reported again.
		w.armed = true
		rem := w.due - mono()
		if rem <= 0 {
			return true
		}
		spec := unix.ItimerSpec{Value: unix.NsecToTimespec(rem)}
		if unix.TimerfdSettime(int(fd), 0, &spec, nil) != nil {
			w.failed = true
			return true
		}
		return false // wait for the expiry
	}
	_, err := unix.Read(int(fd), w.buf[:])
	return !errors.Is(err, unix.EAGAIN)
}
