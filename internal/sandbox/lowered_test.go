package sandbox

import (
	"bytes"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The runtime is started StartNice steps below the calling process (up to
// 19), and the caller's own priority is untouched.
func TestRunLowered(t *testing.T) {
	raw, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		t.Fatal(err)
	}
	own := 20 - raw
	var out bytes.Buffer
	cmd := exec.Command("sh", "-c", "cut -d' ' -f19 /proc/self/stat")
	cmd.Stdout = &out
	if err := runLowered(cmd, StartNice); err != nil {
		t.Fatal(err)
	}
	got, err := strconv.Atoi(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatalf("reading the child's nice value: %q: %v", out.String(), err)
	}
	if want := min(own+StartNice, 19); got != want {
		t.Errorf("the runtime ran at nice %d, want %d (the caller's %d + %d)", got, want, own, StartNice)
	}
	if raw2, _ := unix.Getpriority(unix.PRIO_PROCESS, 0); raw2 != raw {
		t.Errorf("the caller's priority changed: %d, was %d", 20-raw2, own)
	}
}
