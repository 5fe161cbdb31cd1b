package server

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestJSONDepth(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
	}{
		{`[]`, 1},
		{`["a", 2, null]`, 1},
		{`[{"k": [1, {"x": []}]}]`, 5},
		{`["[[[[", "}}}"]`, 1},
		{`["\"[[[", "\\", [["\\\""]]]`, 3},
		{strings.Repeat("[", 2000) + strings.Repeat("]", 2000), 2000},
	} {
		if got := jsonDepth([]byte(tc.in)); got != tc.want {
			t.Errorf("jsonDepth(%.40s) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

// FuzzJSONDepth: for valid JSON, jsonDepth agrees with a decoder's own
// count of nesting.
func FuzzJSONDepth(f *testing.F) {
	for _, s := range []string{`[]`, `[1,[2,{"a":"]"}]]`, `["\\\"["]`, `{"x":{"y":{}}}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var v any
		if json.Unmarshal([]byte(s), &v) != nil {
			jsonDepth([]byte(s)) // any bytes: no panic
			return
		}
		if got, want := jsonDepth([]byte(s)), depthOf(v); got != want {
			t.Fatalf("jsonDepth(%q) = %d, want %d", s, got, want)
		}
	})
}

func depthOf(v any) int {
	most := 0
	switch v := v.(type) {
	case []any:
		for _, x := range v {
			most = max(most, depthOf(x))
		}
		return most + 1
	case map[string]any:
		for _, x := range v {
			most = max(most, depthOf(x))
		}
		return most + 1
	}
	return 0
}

// TestCallLimiter: an instance's host calls go at callsPerCore a second
// per core of its quota (at least minCalls), a second's worth ahead.
func TestCallLimiter(t *testing.T) {
	for _, tc := range []struct {
		cpu  float64
		rate float64
	}{{1, 2000}, {0.1, 1000}, {2, 4000}} {
		l := newCallLimiter(tc.cpu)
		if l.rate != tc.rate || l.burst != tc.rate {
			t.Errorf("cpu %v: rate %v burst %v, want %v", tc.cpu, l.rate, l.burst, tc.rate)
		}
	}
	l := newCallLimiter(1)
	start := time.Now()
	for range 3000 { // the burst, then 1000 at 2000 a second
		if !l.waitOr(nil, 1) {
			t.Fatal("stopped")
		}
	}
	if d := time.Since(start); d < 400*time.Millisecond || d > 3*time.Second {
		t.Errorf("3000 calls took %v, want about 500 ms", d)
	}
	stop := make(chan struct{})
	close(stop)
	for l.waitOr(stop, 1) {
	} // the bucket runs dry: stop ends the wait
}
