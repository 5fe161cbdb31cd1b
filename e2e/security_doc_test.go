package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/torbento/bento/internal/testutil"
)

// TestSecurityTable keeps docs/SECURITY.md's table of attacks and the tests
// one for one: every test it names exists, and every case of the
// adversarial tests (TestAttacks, TestLimits, TestWasmImage) is in the
// table.
func TestSecurityTable(t *testing.T) {
	root := testutil.RepoRoot()
	doc, err := os.ReadFile(filepath.Join(root, "docs", "SECURITY.md"))
	if err != nil {
		t.Fatal(err)
	}
	// Every test source of the repository, by file.
	sources := map[string]string{}
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, "_test.go") {
			b, _ := os.ReadFile(p)
			sources[p] = string(b)
		}
		return nil
	})
	named := map[string]bool{}
	rows := 0
	for _, line := range strings.Split(string(doc), "\n") {
		cells := strings.Split(line, "|")
		if len(cells) != 5 || !strings.HasPrefix(strings.TrimSpace(cells[3]), "`Test") {
			continue
		}
		rows++
		ref := strings.Trim(strings.TrimSpace(cells[3]), "`")
		named[ref] = true
		fn, sub, _ := strings.Cut(ref, "/")
		found := false
		for _, src := range sources {
			if strings.Contains(src, "func "+fn+"(t *testing.T)") && (sub == "" || strings.Contains(src, `"`+sub+`"`)) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("docs/SECURITY.md names %s, which is not a test", ref)
		}
	}
	if rows < 20 {
		t.Fatalf("found %d attack rows in docs/SECURITY.md; the table's format changed?", rows)
	}
	// Every case of the adversarial tests is in the table: their subtests
	// (within each test function's own body) or the test itself.
	runRE := regexp.MustCompile(`t\.Run\("([a-z-]+)"`)
	cases := map[string]*regexp.Regexp{
		"TestAttacks":            runRE,
		"TestSiege":              runRE,
		"TestSiegeFunctions":     runRE,
		"TestCompositionCharged": runRE,
		"TestLimits":             regexp.MustCompile(`\{"([a-z]+)", "[a-z ]+(limit|exceeded|reached)`),
		"TestWasmImage":          regexp.MustCompile(`\{"([a-z]+)", [0-9], "`),
		"TestPythonImage":        regexp.MustCompile(`\{"([a-z0-9]+)", [0-9], "`),
	}
	for fn, re := range cases {
		found := false
		for p, src := range sources {
			body := funcBody(src, fn)
			if body == "" {
				continue
			}
			found = true
			for _, m := range re.FindAllStringSubmatch(body, -1) {
				if !named[fn+"/"+m[1]] {
					t.Errorf("%s/%s (%s) is not in docs/SECURITY.md's table", fn, m[1], filepath.Base(p))
				}
			}
		}
		if !found {
			t.Errorf("adversarial test %s not found", fn)
		}
	}
	for _, fn := range []string{"TestInvocationTokenCannotHarm", "TestSideBySide/CrashAtRandom", "TestRestartServesAtOnce", "TestSideBySide/SessionIDFirst", "TestTorDestinationsChecked"} {
		if !named[fn] {
			t.Errorf("%s is not in docs/SECURITY.md's table", fn)
		}
	}
}

// funcBody returns the source of test function fn, up to the next
// top-level function.
func funcBody(src, fn string) string {
	i := strings.Index(src, "func "+fn+"(t *testing.T)")
	if i < 0 {
		return ""
	}
	rest := src[i+1:]
	if j := strings.Index(rest, "\nfunc "); j >= 0 {
		rest = rest[:j]
	}
	return rest
}
