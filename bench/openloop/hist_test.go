package main

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestHistIndexBounds(t *testing.T) {
	prev := -1
	for _, v := range []uint64{0, 1, 255, 256, 257, 511, 512, 1000, 1 << 20, 1<<20 + 12345, 1<<63 - 1, 1 << 63, ^uint64(0)} {
		i := histIndex(v)
		if i < 0 || i >= histBuckets {
			t.Fatalf("histIndex(%d) = %d out of range", v, i)
		}
		if i < prev {
			t.Fatalf("histIndex not monotonic at %d", v)
		}
		prev = i
		low, width := histBounds(i)
		if v < low || v-low >= width {
			t.Fatalf("v=%d in bucket %d [%d, +%d)", v, i, low, width)
		}
		if low >= 256 && float64(width)/float64(low) > 1.0/128 {
			t.Fatalf("bucket %d too wide: %d at %d", i, width, low)
		}
	}
	for i := 1; i < histBuckets; i++ {
		l0, w0 := histBounds(i - 1)
		l1, _ := histBounds(i)
		if l0+w0 != l1 {
			t.Fatalf("buckets %d and %d not contiguous", i-1, i)
		}
	}
}

func TestHistQuantiles(t *testing.T) {
	var h hist
	vals := make([]time.Duration, 100000)
	for i := range vals {
		vals[i] = time.Duration(rand.ExpFloat64() * 1e6)
		h.record(vals[i])
	}
	slices.Sort(vals)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999, 1} {
		want := vals[int(q*float64(len(vals)))-1]
		got := h.quantile(q)
		if err := float64(got-want) / float64(want); err > 0.01 || err < -0.01 {
			t.Errorf("q%.3f = %v, want %v (error %.2f%%)", q, got, want, 100*err)
		}
	}
	if h.maximum() != vals[len(vals)-1] {
		t.Errorf("max %v, want %v", h.maximum(), vals[len(vals)-1])
	}
}
