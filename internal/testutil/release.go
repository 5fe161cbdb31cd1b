package testutil

import (
	"os"
	"os/exec"
	"sync"
	"testing"
)

var (
	releaseOnce sync.Once
	releaseDir  string
	releaseErr  error
	releaseOut  []byte
)

// ReleaseBinaries builds bentod and bento-runner as they ship, without the
// race detector, once per test process, and returns their directory: the
// adversarial load tests measure bentod's memory, which the race
// detector's shadow memory would swamp.
func ReleaseBinaries(t testing.TB) string {
	t.Helper()
	releaseOnce.Do(func() {
		releaseDir, releaseErr = os.MkdirTemp("", "bento-release-")
		if releaseErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-trimpath", "-o", releaseDir+"/", "./cmd/bentod", "./cmd/bento-runner", "./cmd/flashflow")
		cmd.Dir = RepoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		releaseOut, releaseErr = cmd.CombinedOutput()
	})
	if releaseErr != nil {
		t.Fatalf("building release binaries: %v\n%s", releaseErr, releaseOut)
	}
	return releaseDir
}
