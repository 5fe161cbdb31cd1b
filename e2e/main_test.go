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
	if spec := os.Getenv(attackEnv); spec != "" {
		// An attacker process of the adversarial load tests (already in the
		// test's namespace).
		os.Exit(runAttacker(spec))
	}
	// bento's local store of instances (bento ls) would keep every
	// test's tokens in the user's home: the tests that check it set it.
	os.Setenv("BENTO_NO_STORE", "1")
	privnet.Isolate()
	code := m.Run()
	stopTorNet()
	os.Exit(code)
}
