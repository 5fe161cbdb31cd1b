package server

import (
	"encoding/json"
	"strings"
	"testing"
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
