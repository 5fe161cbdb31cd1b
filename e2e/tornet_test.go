package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"

	"github.com/torbento/bento/internal/privnet"
	"github.com/torbento/bento/internal/testutil"
)

var (
	torNetOnce sync.Once
	torNet     *privnet.Net
	torNetErr  error
	torNetDir  string
)

// tornet returns the private Tor network shared by the package's tests,
// starting it on first use. It runs until the package's tests end, so the
// tests that use it live in files named tor*_test.go: Go runs tests in
// file order, and these come after the load tests (siege_test.go), whose
// timed neighbour must not share the cores with the network's tors.
func tornet(t testing.TB) *privnet.Net {
	t.Helper()
	_, e1 := exec.LookPath("tor")
	_, e2 := exec.LookPath("tor-gencert")
	testutil.Require(t, e1 == nil && e2 == nil, "Debian's tor package (tor, tor-gencert)")
	torNetOnce.Do(func() {
		torNetDir, torNetErr = os.MkdirTemp("", "bento-privnet-")
		if torNetErr != nil {
			return
		}
		// Three exits: the directory test needs three boxes.
		torNet, torNetErr = privnet.Start(context.Background(), torNetDir, privnet.Options{Exits: 3})
	})
	if torNetErr != nil {
		t.Fatalf("private Tor network: %v", torNetErr)
	}
	return torNet
}

func stopTorNet() {
	if torNet != nil {
		torNet.Stop()
	}
	if torNetDir != "" {
		if os.Getenv("BENTO_KEEP_PRIVNET") != "" {
			fmt.Fprintf(os.Stderr, "private Tor network kept in %s (logs: */notice.log)\n", torNetDir)
			return
		}
		os.RemoveAll(torNetDir)
	}
}
