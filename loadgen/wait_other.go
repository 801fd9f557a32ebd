//go:build !linux

package loadgen

// A waiter sleeps until a due time. Off Linux it uses time.Sleep, whose
// resolution may add up to a millisecond of the load generator's own
// lateness to the latencies measured.
type waiter struct{}

func newWaiter(precise bool) (*waiter, error) { return &waiter{}, nil }

func (w *waiter) close() {}

// wait returns at or after due, a mono time.
func (w *waiter) wait(due int64) {
	if d := due - mono(); d > 0 {
		sleep(d)
	}
}
