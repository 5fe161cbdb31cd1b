// Package testutil holds helpers shared by tests: prerequisite checks that
// fail under CI instead of skipping, building the project's binaries once
// per test process, and the synthetic packet captures the tests read.
package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/torbento/bento/internal/lightbox/tracegen"
)

// InCI reports whether the tests run under CI (CI=true), where a missing
// prerequisite is a failure, never a skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// Require fails (under CI) or skips the test when ok is false.
func Require(t testing.TB, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if InCI() {
		t.Fatalf("prerequisite missing under CI: %s (run scripts/setup.sh)", what)
	}
	t.Skipf("prerequisite missing: %s (run scripts/setup.sh)", what)
}

// RequireSandbox checks for root and runc.
func RequireSandbox(t testing.TB) {
	t.Helper()
	Require(t, os.Geteuid() == 0, "root (containers need it)")
	_, err := exec.LookPath("runc")
	Require(t, err == nil, "runc in PATH (apt-get install runc)")
}

// RepoRoot returns the module's root directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
	buildOut  []byte
)

// Binaries builds bentod, bento and bento-runner (static) into a shared
// temporary directory once per test process and returns it. Under the race
// detector, bentod and bento are built with it.
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "bento-bin-")
		if buildErr != nil {
			return
		}
		// The runner lives alone in an empty root filesystem: static.
		cmd := exec.Command("go", "build", "-o", binDir+"/", "./cmd/bento-runner")
		cmd.Dir = RepoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if buildOut, buildErr = cmd.CombinedOutput(); buildErr != nil {
			return
		}
		args := []string{"build", "-o", binDir + "/"}
		if raceEnabled {
			args = append(args, "-race")
		}
		cmd = exec.Command("go", append(args, "./cmd/bentod", "./cmd/bento", "./cmd/bentoctl", "./cmd/lightbox", "./cmd/flashflow")...)
		cmd.Dir = RepoRoot()
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("building binaries: %v\n%s", buildErr, buildOut)
	}
	return binDir
}

// Runner builds only bento-runner and returns its path.
func Runner(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/bento-runner", "./cmd/bento-runner")
	cmd.Dir = RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building runner: %v\n%s", err, out)
	}
	return dir + "/bento-runner"
}

// generated holds a capture of internal/lightbox/tracegen, made once per test
// process.
type generated struct {
	once sync.Once
	data []byte
	tr   tracegen.Trace
	err  error
}

var captures sync.Map // name → *generated

// Captures writes the synthetic packet captures of internal/lightbox/tracegen — all
// of them, or the named ones — into a temporary directory of the test and
// returns them with what each holds. Each is generated once per test
// process. They are the captures the tests read, replay and send through
// LightBox: the same on a fresh clone as under CI, with nothing beside the
// repository.
func Captures(t testing.TB, names ...string) []tracegen.Trace {
	t.Helper()
	if len(names) == 0 {
		names = tracegen.Names()
	}
	dir := t.TempDir()
	out := make([]tracegen.Trace, 0, len(names))
	for _, name := range names {
		v, _ := captures.LoadOrStore(name, &generated{})
		g := v.(*generated)
		g.once.Do(func() { g.data, g.tr, g.err = tracegen.Generate(name) })
		if g.err != nil {
			t.Fatal(g.err)
		}
		tr := g.tr
		tr.Path = filepath.Join(dir, name)
		if err := os.WriteFile(tr.Path, g.data, 0o644); err != nil {
			t.Fatal(err)
		}
		out = append(out, tr)
	}
	return out
}

// Capture writes one capture of internal/lightbox/tracegen (see Captures).
func Capture(t testing.TB, name string) tracegen.Trace {
	t.Helper()
	return Captures(t, name)[0]
}

// Traces returns extra packet captures for the tests that read, bounce and
// replay every capture: the files in the directory $BENTO_TRACES names,
// for whoever has real captures to try. Unset, there are none and those
// tests run on the generated captures (Captures) alone; set, the directory
// must hold some.
func Traces(t testing.TB) []string {
	t.Helper()
	dir := os.Getenv("BENTO_TRACES")
	if dir == "" {
		return nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("BENTO_TRACES: %v", err)
	}
	var files []string
	for _, e := range entries {
		if e.Type().IsRegular() {
			files = append(files, filepath.Join(dir, e.Name()))
		}
	}
	if len(files) == 0 {
		t.Fatalf("BENTO_TRACES=%s holds no capture", dir)
	}
	return files
}

// TempDir returns a temporary directory that bentod may use as its
// DataDirectory: it and its parents are searchable by others, as the
// containers' user namespace needs (t.TempDir's parents are 0700).
func TempDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
