package loadgen

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"time"
)

// medications are the inhaler and asthma medications the generated usages
// name.
var medications = []string{
	"Albuterol", "Albuterol", "Albuterol", "Levalbuterol", "Fluticasone",
	"Budesonide", "Beclomethasone", "Mometasone", "Ciclesonide", "Salmeterol",
	"Formoterol", "Fluticasone/Salmeterol", "Budesonide/Formoterol",
	"Ipratropium", "Tiotropium", "Montelukast", "Prednisone", "Theophylline",
}

// regions are the time zones of the generated timestamps: standard and
// daylight saving time (April to October; the same where there is none),
// with the short names older JavaScript engines print and the long ones
// current V8 prints. Every timestamp they give fits busyapi's 64 bytes
// (Central European time does not: "... GMT+0200 (Central European Summer
// Time)" is 65).
var regions = [][2]zone{
	{{-6 * 3600, "CST", "Central Standard Time"}, {-5 * 3600, "CDT", "Central Daylight Time"}},
	{{-5 * 3600, "EST", "Eastern Standard Time"}, {-4 * 3600, "EDT", "Eastern Daylight Time"}},
	{{-7 * 3600, "MST", "Mountain Standard Time"}, {-6 * 3600, "MDT", "Mountain Daylight Time"}},
	{{-8 * 3600, "PST", "Pacific Standard Time"}, {-7 * 3600, "PDT", "Pacific Daylight Time"}},
	{{0, "GMT", "Greenwich Mean Time"}, {3600, "BST", "British Summer Time"}},
	{{0, "UTC", "Coordinated Universal Time"}, {0, "UTC", "Coordinated Universal Time"}},
	{{9 * 3600, "JST", "Japan Standard Time"}, {9 * 3600, "JST", "Japan Standard Time"}},
	{{19800, "IST", "India Standard Time"}, {19800, "IST", "India Standard Time"}},
}

type zone struct {
	offset      int // seconds east of UTC
	short, long string
}

// usageGen makes realistic, varied usages: patient ids as JSON integers and
// strings, timestamps as JavaScript's Date.toString() prints them, and
// common asthma medications.
type usageGen struct {
	r *rand.Rand
}

func newUsageGen(seed uint64) *usageGen {
	return &usageGen{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// from and span bound the generated timestamps: 2016 to 2026.
var (
	tsFrom = time.Date(2016, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	tsSpan = time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC).Unix() - tsFrom
)

// appendUsage appends one usage as a JSON object.
func (g *usageGen) appendUsage(b []byte) []byte {
	b = append(b, `{"patientId":`...)
	switch n := g.r.IntN(10); {
	case n < 6: // a number
		b = strconv.AppendInt(b, int64(1+g.r.IntN(999_999)), 10)
	case n < 9: // digits in a string, as the original curl example
		b = append(b, '"')
		b = strconv.AppendInt(b, int64(1+g.r.IntN(999_999)), 10)
		b = append(b, '"')
	default: // a medical record number
		b = fmt.Appendf(b, `"MRN-%07d"`, g.r.IntN(10_000_000))
	}
	b = append(b, `,"timestamp":"`...)
	b = g.appendTimestamp(b)
	b = append(b, `","medication":"`...)
	b = append(b, medications[g.r.IntN(len(medications))]...)
	b = append(b, `"}`...)
	return b
}

// appendTimestamp appends a random moment of 2016-2026 as JavaScript's
// Date.prototype.toString prints it, e.g.
// "Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)".
func (g *usageGen) appendTimestamp(b []byte) []byte {
	t := time.Unix(tsFrom+g.r.Int64N(tsSpan), 0).UTC()
	r := regions[g.r.IntN(len(regions))]
	z := r[0]
	if m := t.Month(); m >= time.April && m <= time.October {
		z = r[1]
	}
	name := z.long
	if g.r.IntN(3) == 0 {
		name = z.short
	}
	t = t.In(time.FixedZone(z.short, z.offset))
	b = t.AppendFormat(b, "Mon Jan 02 2006 15:04:05 GMT-0700")
	b = append(b, " ("...)
	b = append(b, name...)
	b = append(b, ')')
	return b
}

// ReadPayload reads a payload file: one JSON usage (an object) per line;
// blank lines are skipped.
func ReadPayload(name string) ([][]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parsePayload(f, name)
}

func parsePayload(r io.Reader, name string) ([][]byte, error) {
	var lines [][]byte
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		if line[0] != '{' || !json.Valid(line) {
			return nil, fmt.Errorf("%s:%d: not a JSON object on one line", name, n)
		}
		lines = append(lines, bytes.Clone(line))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(lines) == 0 {
		return nil, fmt.Errorf("%s: no usages in it", name)
	}
	return lines, nil
}

// ring is the run's requests, formatted once before the run and shared,
// read-only, by every connection. Request k is buf[off[k]:off[k+1]]; the
// first pipeline-1 requests are repeated after the n distinct ones, so any
// m <= pipeline requests from k < n on are one contiguous slice: one write.
type ring struct {
	buf []byte
	off []int
	n   int // distinct requests
}

// window returns requests k..k+m-1 (k < r.n, m <= the pipeline depth) as
// one slice.
func (r *ring) window(k, m int) []byte { return r.buf[r.off[k]:r.off[k+m]] }

// ringBudget bounds the bytes of generated requests: enough distinct
// requests to vary, few enough to stay in cache at 10,000 connections.
const ringBudget = 16 << 20

// newRing formats the requests: POST path with host and the extra headers,
// B usages per request (B = batch, or 1 for single usages), from lines
// (cycled) or generated.
func newRing(host, path string, headers []string, batch, pipeline int, lines [][]byte, seed uint64) *ring {
	per := max(batch, 1)
	ctype := "application/json"
	if batch > 0 {
		ctype = "application/x-ndjson"
	}
	head := "POST " + path + " HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: busyapi-bench\r\n"
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ":")
		head += name + ": " + strings.TrimSpace(value) + "\r\n"
		if strings.EqualFold(name, "Content-Type") {
			ctype = ""
		}
	}
	if ctype != "" {
		head += "Content-Type: " + ctype + "\r\n"
	}
	head += "Content-Length: "
	var n int
	if lines != nil {
		n = (len(lines) + per - 1) / per
	} else {
		const approx = 140 // bytes of a generated usage, about
		n = min(max(ringBudget/(per*approx+len(head)+8), 16), 4096)
	}
	g := newUsageGen(seed)
	r := &ring{n: n}
	bodies := make([][]byte, n)
	var body []byte
	next := 0
	for i := range bodies {
		body = body[:0]
		for u := 0; u < per; u++ {
			if lines != nil {
				body = append(body, lines[next]...)
				next = (next + 1) % len(lines)
			} else {
				body = g.appendUsage(body)
			}
			if batch > 0 {
				body = append(body, '\n')
			}
		}
		bodies[i] = bytes.Clone(body)
	}
	for i := 0; i < n+pipeline-1; i++ {
		b := bodies[i%n]
		r.off = append(r.off, len(r.buf))
		r.buf = append(r.buf, head...)
		r.buf = strconv.AppendInt(r.buf, int64(len(b)), 10)
		r.buf = append(r.buf, "\r\n\r\n"...)
		r.buf = append(r.buf, b...)
	}
	r.off = append(r.off, len(r.buf))
	return r
}
