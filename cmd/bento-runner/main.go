// Command bento-runner runs inside a Bento sandbox. bentod starts it as the
// container's only process, with the host-API channel on file descriptor 3.
// It is not meant to be run by hand.
package main

import (
	"fmt"
	"os"

	"github.com/torbento/bento/internal/runner"
	"github.com/torbento/bento/internal/wire"
)

func main() {
	ch := os.NewFile(3, "hostapi")
	if ch == nil {
		fmt.Fprintln(os.Stderr, "bento-runner: no host-API channel on fd 3; this program is started by bentod")
		os.Exit(2)
	}
	runner.OwnProcess = true
	conn := wire.NewConn(ch)
	conn.MaxFrame = 256 << 20
	if err := runner.Serve(conn); err != nil {
		fmt.Fprintln(os.Stderr, "bento-runner:", err)
		os.Exit(1)
	}
}
