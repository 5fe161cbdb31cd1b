package safelog

import (
	"bytes"
	"strings"
	"testing"
)

func TestScrub(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf, "notice")
	Notice(l, "client connected", "addr", Addr("192.0.2.7:5555"))
	l.Info("hidden at notice level")
	if strings.Contains(buf.String(), "192.0.2.7") || !strings.Contains(buf.String(), "[scrubbed]") || !strings.Contains(buf.String(), "level=notice") {
		t.Errorf("log = %q", buf.String())
	}
	if strings.Contains(buf.String(), "hidden") {
		t.Error("info logged at notice level")
	}
	SetSafe(false)
	defer SetSafe(true)
	buf.Reset()
	Notice(l, "x", "addr", Addr("192.0.2.7:5555"))
	if !strings.Contains(buf.String(), "192.0.2.7") {
		t.Errorf("unsafe logging scrubbed: %q", buf.String())
	}
}
