package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/internal/server"
)

func TestUsage(t *testing.T) {
	dir := t.TempDir()
	noSocket := filepath.Join(dir, "bentorc")
	os.WriteFile(noSocket, []byte("Nickname x\n"), 0o644)
	// A mistake elsewhere in the bentorc does not keep bentoctl from
	// its socket (bentod reports the mistake on reload).
	broken := filepath.Join(dir, "broken")
	os.WriteFile(broken, []byte("MaxMemry 64 MB\nControlSocket "+filepath.Join(dir, "ctl")+"\n"), 0o644)
	for _, tc := range []struct {
		args       []string
		code       int
		out, errws string
	}{
		{[]string{"--help"}, 0, "usage: bentoctl", ""},
		{[]string{"help"}, 0, "Commands:", ""},
		{nil, 2, "", "usage: bentoctl"},
		{[]string{"frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{[]string{"end", "i-1"}, 2, "", "end needs an instance id and a reason"},
		{[]string{"drain", "maybe"}, 2, "", "drain takes on or off"},
		{[]string{"stop", "now"}, 2, "", "stop takes no arguments"},
		{[]string{"top", "-i", "1ms"}, 2, "", "at least 100ms"},
		{[]string{"top"}, 2, "", "top draws on a terminal"},
		{[]string{"-f", noSocket, "status"}, 2, "", "has no ControlSocket"},
		{[]string{"-f", broken, "status"}, 3, "", "no control socket at " + filepath.Join(dir, "ctl")},
		{[]string{"-f", filepath.Join(dir, "none"), "status"}, 2, "", "reading configuration"},
		{[]string{"-s", filepath.Join(dir, "none"), "status"}, 3, "", "is bentod running"},
		{[]string{"-s", filepath.Join(dir, "none"), "--json", "ls"}, 3, "", `"code":3`},
	} {
		var out, errw strings.Builder
		code := run(tc.args, strings.NewReader(""), &out, &errw)
		if code != tc.code || !strings.Contains(out.String(), tc.out) || !strings.Contains(errw.String(), tc.errws) {
			t.Errorf("bentoctl %q: exit %d, stdout %q, stderr %q; want exit %d with %q / %q", tc.args, code, out.String(), errw.String(), tc.code, tc.out, tc.errws)
		}
	}
}

func TestListRendering(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	var b strings.Builder
	writeList(&b, []server.InstanceInfo{{ID: "i-1", Function: "evil\x1b[2Jname-that-is-very-long-indeed", Client: "[scrubbed]", Created: now.Add(-90 * time.Second),
		EndsAt: now.Add(3 * time.Hour), State: "running", MemoryUsed: 1536 << 10, MemoryReserved: 64 << 20, CPUUsed: 1234 * time.Millisecond, StorageUsed: 100, Sessions: 2}}, now)
	got := b.String()
	for _, want := range []string{"ID", "i-1", "evil?[2Jname-that-is-ve…", "[scrubbed]", "1m30s", "3h00m", "running", "1.5 MB/64.0 MB", "1.234s", "100 B", "2\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("list lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "\x1b") {
		t.Error("a function's name put an escape sequence on the operator's terminal")
	}
	b.Reset()
	writeList(&b, []server.InstanceInfo{{ID: "i-2", Function: "f", Created: now.Add(-time.Hour), EndsAt: now.Add(2 * time.Hour), State: "ended", EndReason: "shut down"}}, now)
	if lines := strings.Split(b.String(), "\n"); len(lines) < 2 || !strings.Contains(lines[1], "1h00m  -  ") || strings.Contains(lines[1], "2h00m") {
		t.Errorf("an ended instance's ENDS IN should read -:\n%s", b.String())
	}
	b.Reset()
	writeList(&b, nil, now)
	if b.String() != "no instances\n" {
		t.Errorf("empty list: %q", b.String())
	}
}
