//go:build race

package testutil

// raceEnabled is true when the tests run under the race detector; the
// daemon and CLI they start are then built with it too.
const raceEnabled = true
