package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/torbento/bento/internal/testutil"
)

// TestBenchmarkCommands keeps docs/benchmarks.md's commands runnable as
// written: each names a package that builds and a -bench pattern that
// matches at least one benchmark there (go test -list). The cheapest of
// them, runc alone, is run once as root, as the document says.
func TestBenchmarkCommands(t *testing.T) {
	root := testutil.RepoRoot()
	doc, err := os.ReadFile(filepath.Join(root, "docs", "benchmarks.md"))
	if err != nil {
		t.Fatal(err)
	}
	cmdRE := regexp.MustCompile(`(?m)^(?:[A-Z_]+=\S+ )?go test .*-bench '?([^' ]+)'? .*?(\./\S+)\s*$`)
	cmds := cmdRE.FindAllStringSubmatch(string(doc), -1)
	if len(cmds) < 6 {
		t.Fatalf("found %d benchmark commands in docs/benchmarks.md; the format changed?", len(cmds))
	}
	for _, m := range cmds {
		pattern, pkg := m[1], m[2]
		cmd := exec.Command("go", "test", "-list", pattern, pkg)
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("%s: %v\n%s", m[0], err, out)
			continue
		}
		found := false
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "Benchmark") {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: -bench %s matches no benchmark in %s", m[0], pattern, pkg)
		}
	}
	// The baseline that once failed as root (its directory's parents were
	// not searchable by the containers' user namespace).
	testutil.RequireSandbox(t)
	br := testing.Benchmark(BenchmarkRuncStartBaseline)
	if br.N == 0 {
		t.Fatal("BenchmarkRuncStartBaseline did not run")
	}
}
