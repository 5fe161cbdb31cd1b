package e2e

import (
	"os"
	"testing"

	"github.com/torbento/bento/internal/privnet"
)

// TestMain runs the whole suite inside a network namespace with only
// loopback (and a PID namespace that takes every process with it), where
// the private Tor network of the Tor tests may run; the other tests only
// use loopback anyway.
func TestMain(m *testing.M) {
	privnet.Isolate()
	code := m.Run()
	stopTorNet()
	os.Exit(code)
}
