package main

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// hist is a log-linear histogram of durations in nanoseconds, safe for
// concurrent use. Values below 256 ns are exact; above, each power of two
// is split into 128 buckets, so a bucket is at most 1/128 (0.78%) of its
// lower bound wide and the midpoint reported for it is within 0.4% of any
// value in it. The 7424 buckets cover all of uint64.
type hist struct {
	counts [histBuckets]atomic.Uint64
	n      atomic.Uint64
	sum    atomic.Uint64
	max    atomic.Uint64
}

const (
	histSubBits = 7
	histSub     = 1 << histSubBits                       // buckets per power of two
	histBuckets = (64-histSubBits-1)*histSub + 2*histSub // 7424
)

// histIndex maps v to its bucket: v itself below 256, else
// shift*128 + v>>shift where shift keeps v>>shift in [128, 256).
func histIndex(v uint64) int {
	if v < 2*histSub {
		return int(v)
	}
	shift := bits.Len64(v) - histSubBits - 1
	return shift*histSub + int(v>>shift)
}

// histBounds is the inverse of histIndex: the lowest value of bucket i and
// the bucket's width.
func histBounds(i int) (low, width uint64) {
	if i < 2*histSub {
		return uint64(i), 1
	}
	shift := i/histSub - 1
	m := uint64(i - shift*histSub) // in [128, 256)
	return m << shift, 1 << shift
}

func (h *hist) record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	v := uint64(d)
	h.counts[histIndex(v)].Add(1)
	h.n.Add(1)
	h.sum.Add(v)
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			break
		}
	}
}

func (h *hist) count() uint64 { return h.n.Load() }

// quantile returns the value at quantile q in [0, 1]: the midpoint of the
// bucket holding the ceil(q*n)-th smallest value, capped at the maximum.
func (h *hist) quantile(q float64) time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			low, width := histBounds(i)
			v := low + (width-1)/2
			if m := h.max.Load(); v > m {
				v = m
			}
			return time.Duration(v)
		}
	}
	return time.Duration(h.max.Load())
}

func (h *hist) mean() time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	return time.Duration(h.sum.Load() / n)
}

func (h *hist) maximum() time.Duration { return time.Duration(h.max.Load()) }
