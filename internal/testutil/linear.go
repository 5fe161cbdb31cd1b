package testutil

import (
	"runtime"
	"testing"
)

// Linear checks that parse's work grows linearly with its input, and that
// what it answers stays small: for each shape, an input of n and one of
// 8n units (made by input) are parsed; the bytes allocated for the larger
// may be at most 12 times those for the smaller (linear work is 8 times,
// quadratic 64), and an error's text at most maxErr bytes. Allocated
// bytes stand in for time: they do not depend on the machine's load.
func Linear(t *testing.T, n int, maxErr int, shapes map[string]func(n int) []byte, parse func([]byte) error) {
	t.Helper()
	for name, input := range shapes {
		small, large := input(n), input(8*n)
		a1, err1 := allocated(func() error { return parse(small) })
		a8, err8 := allocated(func() error { return parse(large) })
		for _, err := range []error{err1, err8} {
			if err != nil && len(err.Error()) > maxErr {
				t.Errorf("%s: an error of %d bytes for %d bytes of input: %.200q…", name, len(err.Error()), len(large), err.Error())
			}
		}
		if a1 > 0 && a8 > 12*a1 {
			t.Errorf("%s: %d bytes allocated for %d bytes of input, %d for %d: %.1f times the work for 8 times the input",
				name, a8, len(large), a1, len(small), float64(a8)/float64(a1))
		}
	}
}

// allocated returns the bytes f allocates.
func allocated(f func() error) (uint64, error) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	err := f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc, err
}
