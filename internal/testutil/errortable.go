package testutil

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// ErrorRow is one row of an error table in docs (docs/errors.md,
// docs/errors-operators.md): | `id` | mistake | `message` | exit | test |.
type ErrorRow struct {
	ID, Message, Test string
	Exit              int
}

// ErrorRows reads the error table of docs/NAME. A table of fewer than
// ten rows means its format changed: the test fails rather than check
// nothing.
func ErrorRows(t testing.TB, name string) []ErrorRow {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join(RepoRoot(), "docs", name))
	if err != nil {
		t.Fatal(err)
	}
	var rows []ErrorRow
	for _, line := range strings.Split(string(doc), "\n") {
		cells := strings.Split(line, "|")
		if len(cells) != 7 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`") {
			continue
		}
		code, err := strconv.Atoi(strings.TrimSpace(cells[4]))
		if err != nil {
			t.Fatalf("docs/%s: exit %q: %v", name, cells[4], err)
		}
		rows = append(rows, ErrorRow{
			ID:      strings.Trim(strings.TrimSpace(cells[1]), "`"),
			Message: strings.Trim(strings.TrimSpace(cells[3]), "`"),
			Exit:    code,
			Test:    strings.TrimSpace(cells[5]),
		})
	}
	if len(rows) < 10 {
		t.Fatalf("found %d rows in docs/%s; the table's format changed?", len(rows), name)
	}
	return rows
}

// MessageIn reports whether a line of out matches a documented message,
// in which … stands for anything.
func MessageIn(out, message string) bool {
	parts := strings.Split(message, "…")
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, parts[0]) {
			continue
		}
		rest, ok := line[len(parts[0]):], true
		for _, p := range parts[1:] {
			i := strings.Index(rest, p)
			if i < 0 {
				ok = false
				break
			}
			rest = rest[i+len(p):]
		}
		if ok {
			return true
		}
	}
	return false
}
