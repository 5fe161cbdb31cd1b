package manifest

import (
	"bytes"
	"strings"
)

// Locate returns the line (1-based) of bento.toml where key is set, or 0
// if it cannot tell. key is dotted: "apis" is a top-level key,
// "resources.memory" the key memory of the table [resources] (or the
// dotted key itself). With value, the line of the key's list that holds
// value as a quoted string is returned, when there is one (a list may
// span lines).
//
// It reads lines, not TOML: it only has to find what a decoder has
// already accepted, and is wrong at worst about a line.
func Locate(data []byte, key, value string) int {
	table, name := "", key
	if i := strings.LastIndexByte(key, '.'); i >= 0 {
		table, name = key[:i], key[i+1:]
	}
	cur, found := "", 0
	lines := bytes.Split(data, []byte("\n"))
	for i, raw := range lines {
		line := strings.TrimSpace(string(raw))
		if found > 0 {
			// Within the key's value: a list running over lines.
			if value != "" && strings.Contains(line, quote(value)) {
				return i + 1
			}
			if strings.HasPrefix(line, "[") && !strings.HasPrefix(line, "[[") && strings.HasSuffix(line, "]") && !strings.Contains(line, "\"") || isKeyLine(line) {
				break
			}
			continue
		}
		if strings.HasPrefix(line, "[") && strings.Contains(line, "]") && !strings.Contains(line, "=") {
			cur = strings.TrimSpace(strings.Trim(line[:strings.Index(line, "]")+1], "[]"))
			continue
		}
		k, _, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		k = strings.Trim(strings.TrimSpace(k), `"'`)
		if (cur == table && k == name) || (cur == "" && k == key) {
			found = i + 1
			if value == "" || strings.Contains(line, quote(value)) {
				return found
			}
		}
	}
	return found
}

// quote is value as a TOML basic string would hold it, near enough.
func quote(value string) string { return `"` + value + `"` }

// isKeyLine reports whether line looks like "key = value".
func isKeyLine(line string) bool {
	k, _, ok := strings.Cut(line, "=")
	if !ok {
		return false
	}
	k = strings.TrimSpace(k)
	return k != "" && strings.IndexFunc(k, func(r rune) bool {
		return !(r == '_' || r == '-' || r == '.' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
	}) < 0
}
