package loadgen

import (
	"bytes"
	"fmt"
	"html/template"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/go-analyze/charts"
)

// Chart sizes in the report, in pixels.
const (
	chartWidth  = 960
	chartHeight = 400
)

// chart renders a line chart as SVG.
func lineChart(title, yTitle string, labels []string, names []string, values [][]float64) ([]byte, error) {
	opt := charts.NewLineChartOptionWithData(values)
	opt.Title.Text = title
	opt.XAxis.Labels = labels
	opt.XAxis.LabelCount = min(len(labels), 13)
	opt.Legend.SeriesNames = names
	opt.Legend.Offset = charts.OffsetStr{Left: charts.PositionRight}
	opt.YAxis = []charts.YAxisOption{{Title: yTitle, Min: charts.Ptr(0.0)}}
	opt.Symbol.Shape = charts.SymbolNone
	opt.LineStrokeWidth = 1.5
	p := charts.NewPainter(charts.PainterOptions{OutputFormat: charts.ChartOutputSVG, Width: chartWidth, Height: chartHeight})
	if err := p.LineChart(opt); err != nil {
		return nil, fmt.Errorf("chart %q: %w", title, err)
	}
	return p.Bytes()
}

func barChart(title, yTitle string, labels []string, values []float64) ([]byte, error) {
	opt := charts.NewBarChartOptionWithData([][]float64{values})
	opt.Title.Text = title
	opt.CategoryAxis.Labels = labels
	opt.CategoryAxis.LabelCount = min(len(labels), 12)
	opt.ValueAxis = []charts.ValueAxisOption{{Title: yTitle, Min: charts.Ptr(0.0)}}
	p := charts.NewPainter(charts.PainterOptions{OutputFormat: charts.ChartOutputSVG, Width: chartWidth, Height: chartHeight})
	if err := p.BarChart(opt); err != nil {
		return nil, fmt.Errorf("chart %q: %w", title, err)
	}
	return p.Bytes()
}

// xmlns matches the namespace declarations of an SVG document, which an
// <svg> inlined in HTML does not need.
var xmlns = regexp.MustCompile(` xmlns(:xlink)?="[^"]*"`)

// inline makes a chart's SVG document an <svg> element for the report.
func inline(svg []byte) template.HTML {
	if svg == nil {
		return ""
	}
	b := xmlns.ReplaceAll(svg, nil)
	b = bytes.Replace(b, []byte("<svg "), []byte(`<svg class="chart" `), 1)
	return template.HTML(b) // the library's own SVG, whose text it escapes
}

// spectrumAt are the percentiles of the spectrum chart: about evenly
// spaced on a log scale of 1/(1-q), as HdrHistogram's plots are.
var spectrumAt = []float64{0, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 99.995, 99.999}

// spectrum is the latency percentile spectrum: the latency at each of
// spectrumAt that the number of latencies supports, and the maximum.
func spectrum(r *Result) (labels []string, values []float64) {
	h := r.hist
	if h == nil || h.TotalCount() == 0 {
		return nil, nil
	}
	for _, q := range spectrumAt {
		if float64(h.TotalCount())*(100-q)/100 < 1 {
			break
		}
		labels = append(labels, strconv.FormatFloat(q, 'f', -1, 64)+"%")
		values = append(values, ms(h.ValueAtQuantile(q)))
	}
	labels = append(labels, "max")
	values = append(values, r.Latency.Max)
	return labels, values
}

// distribution counts the latencies in 40 buckets spaced evenly on a log
// scale from the smallest to the largest.
func distribution(r *Result) (labels []string, counts []float64) {
	h := r.hist
	if h == nil || h.TotalCount() == 0 {
		return nil, nil
	}
	lo, hi := float64(max(h.Min(), 1)), float64(max(h.Max(), 1))
	const n = 40
	if hi <= lo {
		hi = lo * 1.01
	}
	step := math.Log(hi/lo) / n
	counts = make([]float64, n)
	for _, b := range h.Distribution() {
		if b.Count == 0 {
			continue
		}
		i := int(math.Log(float64(max(b.From, 1))/lo) / step)
		counts[min(max(i, 0), n-1)] += float64(b.Count)
	}
	for i := range n {
		labels = append(labels, msStr(lo*math.Exp(step*float64(i))/1e6))
	}
	return labels, counts
}

// Charts are the report's charts, as SVG documents; Spectrum and
// Histogram are nil when no latency was measured.
type Charts struct {
	Throughput, LatencyOverTime, Spectrum, Histogram []byte
}

// RenderCharts draws the report's charts: throughput and latency
// percentiles per second, and the distribution of the measured latencies.
func RenderCharts(r *Result) (Charts, error) {
	var c Charts
	var err error
	labels := make([]string, len(r.Series))
	var resp, ok, sent, errs, p50, p90, p99, p999, mx []float64
	for i, s := range r.Series {
		labels[i] = strconv.FormatFloat(math.Round(s.T*10)/10, 'f', -1, 64)
		resp = append(resp, s.Responses)
		ok = append(ok, s.OK)
		sent = append(sent, s.Sent)
		errs = append(errs, s.Errors)
		p50, p90, p99, p999, mx = append(p50, s.P50), append(p90, s.P90), append(p99, s.P99), append(p999, s.P999), append(mx, s.Max)
	}
	if len(labels) == 0 {
		return c, fmt.Errorf("no per-second data to chart")
	}
	if c.Throughput, err = lineChart("Throughput per second (x: seconds since start)", "req/s", labels,
		[]string{"sent", "answered", "2xx", "errors"}, [][]float64{sent, resp, ok, errs}); err != nil {
		return c, err
	}
	if c.LatencyOverTime, err = lineChart("Latency percentiles per second, ms (x: seconds since start)", "ms", labels,
		[]string{"p50", "p90", "p99", "p99.9", "max"}, [][]float64{p50, p90, p99, p999, mx}); err != nil {
		return c, err
	}
	if l, v := spectrum(r); len(l) > 0 {
		if c.Spectrum, err = lineChart("Latency by percentile, ms (measured window)", "ms", l, []string{"latency"}, [][]float64{v}); err != nil {
			return c, err
		}
	}
	if l, v := distribution(r); len(l) > 0 {
		if c.Histogram, err = barChart("Latency distribution: requests by latency, ms (measured window)", "requests", l, v); err != nil {
			return c, err
		}
	}
	return c, nil
}

var reportTmpl = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>busyapi bench: {{.R.URL}}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 13px; }
svg.chart { width: 100%; height: auto; display: block; margin: 1em 0; }
table { border-collapse: collapse; font-size: 13px; }
td, th { padding: 2px 8px; text-align: right; border-bottom: 1px solid #ddd; }
.pass { color: #176d2c; } .fail { color: #b00020; }
</style>
</head>
<body>
<h1>busyapi bench</h1>
<p>{{.When}}{{if .Command}}: <code>{{.Command}}</code>{{end}}</p>
<p class="{{if .R.OK}}pass{{else}}fail{{end}}"><strong>{{if .R.OK}}PASS{{else}}FAIL{{end}}</strong>{{range .R.Failures}}; {{.}}{{end}}</p>
<h2>Summary</h2>
<pre>{{.Summary}}</pre>
<h2>Throughput</h2>
{{.C.Throughput}}
<h2>Latency over time</h2>
<p>Per second, by the time each answer was read{{if eq .R.Mode "open loop"}}, measured from each request's scheduled send time (coordinated omission corrected){{end}}; the first {{.R.WarmupSeconds}} s are warmup.</p>
{{.C.LatencyOverTime}}
<h2>Latency distribution</h2>
{{if .C.Spectrum}}{{.C.Spectrum}}{{.C.Histogram}}{{else}}<p>No latencies were measured.</p>{{end}}
<h2>Per second</h2>
<table>
<tr><th>t (s)</th><th>phase</th><th>sent/s</th><th>answered/s</th><th>2xx/s</th><th>errors/s</th><th>usages/s</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th></tr>
{{range .R.Series}}<tr><td>{{printf "%.1f" .T}}</td><td>{{.Phase}}</td><td>{{printf "%.0f" .Sent}}</td><td>{{printf "%.0f" .Responses}}</td><td>{{printf "%.0f" .OK}}</td><td>{{printf "%.0f" .Errors}}</td><td>{{printf "%.0f" .Usages}}</td><td>{{printf "%.3f" .P50}}</td><td>{{printf "%.3f" .P90}}</td><td>{{printf "%.3f" .P99}}</td><td>{{printf "%.3f" .P999}}</td><td>{{printf "%.3f" .Max}}</td></tr>
{{end}}</table>
</body>
</html>
`))

// WriteReport writes the self-contained HTML report: the summary, the
// charts inline as SVG, and the per-second table. command, if set, is
// shown as the command that ran.
func WriteReport(w io.Writer, r *Result, command string) error {
	c, err := RenderCharts(r)
	if err != nil {
		return err
	}
	var sum bytes.Buffer
	r.WriteText(&sum)
	return reportTmpl.Execute(w, map[string]any{
		"R": r,
		"C": map[string]template.HTML{
			"Throughput":      inline(c.Throughput),
			"LatencyOverTime": inline(c.LatencyOverTime),
			"Spectrum":        inline(c.Spectrum),
			"Histogram":       inline(c.Histogram),
		},
		"Summary": sum.String(),
		"When":    time.Now().Format("2006-01-02 15:04:05 MST"),
		"Command": command,
	})
}

// WriteReportFile writes the report to a file.
func WriteReportFile(name string, r *Result, command string) error {
	var b bytes.Buffer
	if err := WriteReport(&b, r, command); err != nil {
		return err
	}
	return os.WriteFile(name, b.Bytes(), 0o644)
}

// WriteChartFiles writes the report's charts as SVG files into dir
// (created if need be): throughput.svg, latency.svg, percentiles.svg and
// distribution.svg, for pages that show images (BENCHMARKS.md).
func WriteChartFiles(dir string, r *Result) error {
	c, err := RenderCharts(r)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, svg := range map[string][]byte{
		"throughput.svg": c.Throughput, "latency.svg": c.LatencyOverTime,
		"percentiles.svg": c.Spectrum, "distribution.svg": c.Histogram,
	} {
		if svg == nil {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, name), svg, 0o644); err != nil {
			return err
		}
	}
	return nil
}
