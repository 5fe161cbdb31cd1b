// Package metrics keeps bentod's counters and histograms and writes them
// in Prometheus's text exposition format (version 0.0.4), the format tor's
// MetricsPort serves. It has no dependencies: counters are atomics, and
// gauges are read when a scrape asks for them.
package metrics

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// Counter is a monotonically increasing count.
type Counter struct{ v atomic.Uint64 }

// Add adds n.
func (c *Counter) Add(n uint64) { c.v.Add(n) }

// Inc adds one.
func (c *Counter) Inc() { c.v.Add(1) }

// Value returns the count.
func (c *Counter) Value() uint64 { return c.v.Load() }

// CounterVec is a family of counters told apart by one label. A label
// value is made when first used; the values a caller may pass must come
// from a fixed set (reasons, host-call names), never from a client, so
// that the family stays bounded.
type CounterVec struct {
	mu sync.Mutex
	m  map[string]*Counter
}

// With returns the counter for the label value.
func (v *CounterVec) With(value string) *Counter {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.m == nil {
		v.m = map[string]*Counter{}
	}
	c, ok := v.m[value]
	if !ok {
		c = &Counter{}
		v.m[value] = c
	}
	return c
}

func (v *CounterVec) snapshot() map[string]uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make(map[string]uint64, len(v.m))
	for k, c := range v.m {
		out[k] = c.Value()
	}
	return out
}

// Histogram counts observations in cumulative buckets, with their sum.
type Histogram struct {
	bounds []float64 // upper bounds, ascending; +Inf is implied
	counts []atomic.Uint64
	sum    atomic.Uint64 // float64 bits
	n      atomic.Uint64
}

// NewHistogram returns a histogram with the given upper bounds.
func NewHistogram(bounds ...float64) *Histogram {
	b := append([]float64(nil), bounds...)
	sort.Float64s(b)
	return &Histogram{bounds: b, counts: make([]atomic.Uint64, len(b))}
}

// Observe records one value; NaN is ignored.
func (h *Histogram) Observe(v float64) {
	if math.IsNaN(v) {
		return
	}
	for i, b := range h.bounds {
		if v <= b {
			h.counts[i].Add(1)
			break
		}
	}
	h.n.Add(1)
	for {
		old := h.sum.Load()
		if h.sum.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			return
		}
	}
}

// Sample is one value of a gauge, with its label values in the order of
// the family's label names.
type Sample struct {
	Labels []string
	Value  float64
}

// Registry is the set of families a scrape writes, in the order they
// were added.
type Registry struct {
	mu       sync.Mutex
	families []family
}

type family struct {
	name, help, kind string
	labels           []string
	write            func(w *writer, f *family)
}

// Counter adds a counter family with no labels.
func (r *Registry) Counter(name, help string, c *Counter) {
	r.add(family{name: name, help: help, kind: "counter", write: func(w *writer, f *family) {
		w.sample(f.name, nil, nil, float64(c.Value()))
	}})
}

// CounterVec adds a counter family with one label. Values in always
// are written even before they are counted, so that a rate over them
// starts at zero.
func (r *Registry) CounterVec(name, help, label string, v *CounterVec, always ...string) {
	for _, a := range always {
		v.With(a)
	}
	r.add(family{name: name, help: help, kind: "counter", labels: []string{label}, write: func(w *writer, f *family) {
		snap := v.snapshot()
		keys := make([]string, 0, len(snap))
		for k := range snap {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			w.sample(f.name, f.labels, []string{k}, float64(snap[k]))
		}
	}})
}

// Gauge adds a gauge family whose samples read is called for at each
// scrape.
func (r *Registry) Gauge(name, help string, labels []string, read func() []Sample) {
	r.add(family{name: name, help: help, kind: "gauge", labels: labels, write: func(w *writer, f *family) {
		for _, s := range read() {
			w.sample(f.name, f.labels, s.Labels, s.Value)
		}
	}})
}

// CounterFunc adds a counter family read at each scrape (counts kept
// elsewhere, such as a listener's).
func (r *Registry) CounterFunc(name, help string, labels []string, read func() []Sample) {
	r.add(family{name: name, help: help, kind: "counter", labels: labels, write: func(w *writer, f *family) {
		for _, s := range read() {
			w.sample(f.name, f.labels, s.Labels, s.Value)
		}
	}})
}

// Histogram adds a histogram family.
func (r *Registry) Histogram(name, help string, h *Histogram) {
	r.add(family{name: name, help: help, kind: "histogram", write: func(w *writer, f *family) {
		var cum uint64
		for i, b := range h.bounds {
			cum += h.counts[i].Load()
			w.sample(f.name+"_bucket", []string{"le"}, []string{formatFloat(b)}, float64(cum))
		}
		// Observations arriving during the scrape may have reached the
		// buckets before the count: +Inf is never below a bucket.
		n := max(h.n.Load(), cum)
		w.sample(f.name+"_bucket", []string{"le"}, []string{"+Inf"}, float64(n))
		w.sample(f.name+"_sum", nil, nil, math.Float64frombits(h.sum.Load()))
		w.sample(f.name+"_count", nil, nil, float64(n))
	}})
}

func (r *Registry) add(f family) {
	if !validName(f.name) {
		panic("metrics: invalid metric name " + strconv.Quote(f.name))
	}
	for _, l := range f.labels {
		if !validName(l) || strings.HasPrefix(l, "__") || l == "le" && f.kind == "histogram" {
			panic("metrics: invalid label name " + strconv.Quote(l))
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, g := range r.families {
		if g.name == f.name {
			panic("metrics: " + f.name + " registered twice")
		}
	}
	r.families = append(r.families, f)
}

// WriteTo writes every family in the text exposition format.
func (r *Registry) WriteTo(out io.Writer) (int64, error) {
	r.mu.Lock()
	fams := append([]family(nil), r.families...)
	r.mu.Unlock()
	w := &writer{}
	for i := range fams {
		f := &fams[i]
		fmt.Fprintf(&w.b, "# HELP %s %s\n# TYPE %s %s\n", f.name, escapeHelp(f.help), f.name, f.kind)
		f.write(w, f)
	}
	n, err := io.WriteString(out, w.b.String())
	return int64(n), err
}

// ContentType is the exposition format's media type.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

type writer struct{ b strings.Builder }

func (w *writer) sample(name string, labels, values []string, v float64) {
	w.b.WriteString(name)
	if len(labels) > 0 {
		w.b.WriteByte('{')
		for i, l := range labels {
			if i > 0 {
				w.b.WriteByte(',')
			}
			val := ""
			if i < len(values) {
				val = values[i]
			}
			fmt.Fprintf(&w.b, "%s=\"%s\"", l, escapeLabel(val))
		}
		w.b.WriteByte('}')
	}
	w.b.WriteByte(' ')
	w.b.WriteString(formatFloat(v))
	w.b.WriteByte('\n')
}

func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

var (
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
	labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
)

func escapeHelp(s string) string  { return helpEscaper.Replace(s) }
func escapeLabel(s string) string { return labelEscaper.Replace(s) }

// validName reports whether s is a metric or label name:
// [a-zA-Z_:][a-zA-Z0-9_:]* (colons only in metric names, by convention).
func validName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		ok := r == '_' || r == ':' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && r >= '0' && r <= '9'
		if !ok {
			return false
		}
	}
	return true
}
