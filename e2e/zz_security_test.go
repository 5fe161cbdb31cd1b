package e2e

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/torbento/bento/internal/testutil"
)

// TestSecurityLoadSuite runs after every other test (its file sorts last)
// and checks that each row of docs/SECURITY.md's load-suite table ran
// under the siege's invariants in this run: the neighbour timed, the
// ceilings asserted, nothing left behind. A row whose test forgot the
// harness fails here. With -run, only a full run can tell; it checks
// nothing then.
func TestSecurityLoadSuite(t *testing.T) {
	if f := flag.Lookup("test.run"); f == nil || f.Value.String() != "" {
		t.Log("not a full run (-run is set): nothing to check")
		return
	}
	doc, err := os.ReadFile(filepath.Join(testutil.RepoRoot(), "docs", "SECURITY.md"))
	if err != nil {
		t.Fatal(err)
	}
	rows := loadSuiteRows(string(doc))
	if len(rows) < 40 {
		t.Fatalf("found %d rows in docs/SECURITY.md's load-suite table; its format changed?", len(rows))
	}
	for _, name := range rows {
		if _, ok := siegeChecked.Load(name); !ok {
			t.Errorf("docs/SECURITY.md's load suite names %s, which did not run under the siege's checks", name)
		}
	}
}

// loadSuiteRows returns the tests named by the load-suite table.
func loadSuiteRows(doc string) []string {
	_, sec, ok := strings.Cut(doc, "### The load suite")
	if !ok {
		return nil
	}
	if i := strings.Index(sec, "\n### "); i >= 0 {
		sec = sec[:i]
	}
	var names []string
	for _, line := range strings.Split(sec, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) == 5 && strings.HasPrefix(strings.TrimSpace(cells[3]), "`Test") {
			names = append(names, strings.Trim(strings.TrimSpace(cells[3]), "`"))
		}
	}
	return names
}
