package loadgen

import (
	"fmt"
	"io"
	"sync"

	"github.com/schollz/progressbar/v3"
)

// ProgressView shows a run's progress: Update once a second, Finish at the
// end.
type ProgressView interface {
	Update(Progress)
	Finish()
}

// progressLine is the numbers both views show.
func progressLine(p Progress) string {
	return fmt.Sprintf("%-7s %s req/s  %s errors  p99 %s ms", p.Phase, num(p.Last.Responses), num(float64(p.Errors)), msStr(p.Last.P99))
}

// NewBar shows progress as a bar on a terminal, with the last second's
// rate, the errors so far and the last second's p99 beside it.
func NewBar(w io.Writer, total int64) ProgressView {
	bar := progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetWidth(30),
		progressbar.OptionSetDescription("dialling"),
		progressbar.OptionShowDescriptionAtLineEnd(),
		progressbar.OptionSetPredictTime(false),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionSetRenderBlankState(true),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionThrottle(0),
	)
	return &barView{bar: bar, total: total}
}

type barView struct {
	mu    sync.Mutex
	bar   *progressbar.ProgressBar
	total int64
}

func (v *barView) Update(p Progress) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.bar.Describe(progressLine(p))
	_ = v.bar.Set64(min(p.Elapsed.Milliseconds(), v.total))
}

func (v *barView) Finish() {
	v.mu.Lock()
	defer v.mu.Unlock()
	_ = v.bar.Finish()
}

// NewLines shows progress as one plain line a second, for logs and pipes.
func NewLines(w io.Writer) ProgressView { return &linesView{w: w} }

type linesView struct {
	mu sync.Mutex
	w  io.Writer
}

func (v *linesView) Update(p Progress) {
	v.mu.Lock()
	defer v.mu.Unlock()
	fmt.Fprintf(v.w, "bench %5.1fs/%.0fs  %s  (%s sent/s)\n", p.Elapsed.Seconds(), p.Total.Seconds(), progressLine(p), num(p.Last.Sent))
}

func (v *linesView) Finish() {}
