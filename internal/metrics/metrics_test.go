package metrics

import (
	"math"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// parse reads an exposition with Prometheus's own parser.
func parse(t *testing.T, text string) map[string]float64 {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("Prometheus's parser refuses the exposition: %v\n%s", err, text)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.Metric {
			key := name
			for _, l := range m.Label {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			switch {
			case m.Counter != nil:
				out[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[key] = m.Gauge.GetValue()
			case m.Histogram != nil:
				out[key+",count"] = float64(m.Histogram.GetSampleCount())
				out[key+",sum"] = m.Histogram.GetSampleSum()
				for _, b := range m.Histogram.Bucket {
					out[key+",le="+formatFloat(b.GetUpperBound())] = float64(b.GetCumulativeCount())
				}
			}
		}
	}
	return out
}

func TestExposition(t *testing.T) {
	var r Registry
	var up Counter
	var calls CounterVec
	h := NewHistogram(0.1, 0.01, 1)
	r.Counter("bento_up_total", "a counter\nwith a newline and a \\ backslash", &up)
	r.CounterVec("bento_calls_total", "calls by kind", "call", &calls, "send", "recv")
	r.Gauge("bento_memory_bytes", "memory", []string{"kind"}, func() []Sample {
		return []Sample{{[]string{"used"}, 3 << 20}, {[]string{`we"ird\` + "\n"}, 1.5}}
	})
	r.Histogram("bento_deploy_duration_seconds", "deploys", h)
	up.Add(5)
	calls.With("send").Inc()
	calls.With("http.fetch").Add(2)
	for _, v := range []float64{0.005, 0.05, 0.5, 5, math.NaN()} {
		h.Observe(v)
	}
	var b strings.Builder
	if _, err := r.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	got := parse(t, b.String())
	want := map[string]float64{
		"bento_up_total":                        5,
		"bento_calls_total,call=send":           1,
		"bento_calls_total,call=recv":           0,
		"bento_calls_total,call=http.fetch":     2,
		"bento_memory_bytes,kind=used":          3 << 20,
		"bento_memory_bytes,kind=we\"ird\\\n":   1.5,
		"bento_deploy_duration_seconds,count":   4,
		"bento_deploy_duration_seconds,sum":     5.555,
		"bento_deploy_duration_seconds,le=0.01": 1,
		"bento_deploy_duration_seconds,le=0.1":  2,
		"bento_deploy_duration_seconds,le=1":    3,
		"bento_deploy_duration_seconds,le=+Inf": 4,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || math.Abs(g-v) > 1e-9 {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d samples, want %d: %v", len(got), len(want), got)
	}
}

func TestRegistryRefusesBadNames(t *testing.T) {
	for _, f := range []func(r *Registry){
		func(r *Registry) { r.Counter("bad-name", "x", &Counter{}) },
		func(r *Registry) { r.Gauge("ok", "x", []string{"__reserved"}, nil) },
		func(r *Registry) { r.Counter("dup", "x", &Counter{}); r.Counter("dup", "x", &Counter{}) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Error("accepted")
				}
			}()
			f(&Registry{})
		}()
	}
}
