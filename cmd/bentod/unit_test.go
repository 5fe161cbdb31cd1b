package main

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/units"
)

// TestServiceUnit keeps the shipped systemd unit (dist/systemd/
// bentod.service) in step with bentod: its hard memory ceiling is above
// bentod's own soft limit with room for runc, its descriptor limit covers
// what the default policy may need with every API on (bentod would warn
// at start otherwise), and it runs bentod with a bentorc, reloads with
// SIGHUP, and restarts it if it dies.
func TestServiceUnit(t *testing.T) {
	f, err := os.Open("../../dist/systemd/bentod.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	unit := map[string]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if strings.HasPrefix(line, "[") {
			section = line
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("not a key=value line in %s: %q", section, line)
		}
		if _, dup := unit[section+k]; dup {
			t.Fatalf("%s set twice in %s", k, section)
		}
		unit[section+k] = v
	}
	svc := func(k string) string { return unit["[Service]"+k] }

	p := policy.Default()
	for _, a := range []string{policy.APITorStream} {
		p.APIs[a] = true
	}
	memMax, err := units.ParseSize(strings.TrimSuffix(svc("MemoryMax"), "M") + " MB")
	if err != nil {
		t.Fatalf("MemoryMax=%q: %v", svc("MemoryMax"), err)
	}
	if memMax < p.Daemon.MaxMemory+128<<20 {
		t.Errorf("MemoryMax %d is not above MaxDaemonMemory %d with 128 MB for runc", memMax, p.Daemon.MaxMemory)
	}
	if svc("MemorySwapMax") != "0" {
		t.Error("bentod's memory may go to swap: MemorySwapMax=0 is missing")
	}
	nofile, err := strconv.ParseUint(svc("LimitNOFILE"), 10, 64)
	if err != nil || nofile < descriptorsNeeded(p) {
		t.Errorf("LimitNOFILE=%s; the default policy with tor.stream needs %d", svc("LimitNOFILE"), descriptorsNeeded(p))
	}
	if !strings.Contains(svc("ExecStart"), "bentod -f ") {
		t.Errorf("ExecStart=%q does not run bentod with a bentorc", svc("ExecStart"))
	}
	if !strings.Contains(svc("ExecReload"), "-HUP") {
		t.Errorf("ExecReload=%q does not send SIGHUP", svc("ExecReload"))
	}
	if svc("Restart") != "on-failure" {
		t.Errorf("Restart=%q", svc("Restart"))
	}
}

// TestConfigSource: without -f, a missing default file means the built-in
// defaults, as tor runs without a torrc; a file named with -f must exist.
func TestConfigSource(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "bentorc")
	p, builtin, err := confSource{path: missing}.load()
	if err != nil || !builtin || p.ListenAddress != "127.0.0.1:8888" {
		t.Errorf("missing default file: %v, %v, %v", p, builtin, err)
	}
	if _, _, err := (confSource{path: missing, explicit: true}).load(); err == nil || !strings.Contains(err.Error(), "reading configuration") {
		t.Errorf("missing -f file: %v", err)
	}
	os.WriteFile(missing, []byte("Nickname here\n"), 0o644)
	if p, builtin, err := (confSource{path: missing}).load(); err != nil || builtin || p.Nickname != "here" {
		t.Errorf("present default file: %v, %v, %v", p, builtin, err)
	}
}
