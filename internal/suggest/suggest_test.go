package suggest

import (
	"strings"
	"testing"
)

func TestDistance(t *testing.T) {
	for _, c := range []struct {
		a, b  string
		bound int
		want  int
	}{
		{"", "", 3, 0},
		{"deploy", "deploy", 3, 0},
		{"deplyo", "deploy", 3, 2},
		{"invoke", "invok", 3, 1},
		{"kitten", "sitting", 5, 3},
		{"abc", "xyz", 2, 2}, // bounded
		{strings.Repeat("a", 65), strings.Repeat("a", 65), 3, 3},
	} {
		if got := Distance(c.a, c.b, c.bound); got != c.want {
			t.Errorf("Distance(%q, %q, %d) = %d, want %d", c.a, c.b, c.bound, got, c.want)
		}
	}
}

func TestNearest(t *testing.T) {
	cmds := []string{"deploy", "invoke", "attach", "shutdown", "run", "logs", "ls"}
	for _, c := range []struct {
		word string
		max  int
		want string
	}{
		{"deplyo", 2, "deploy"},
		{"INVOKE", 2, "invoke"},
		{"lgs", 2, "logs"},
		{"xyzzy", 2, ""},
		{"shutdwon", 2, "shutdown"},
		{"rn", 1, "run"},
	} {
		if got := Nearest(c.word, cmds, c.max); got != c.want {
			t.Errorf("Nearest(%q, %d) = %q, want %q", c.word, c.max, got, c.want)
		}
	}
}
