package main

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/privs"
)

// TestServiceUnit keeps the shipped systemd unit (dist/systemd/
// bentod.service) in step with bentod: its hard memory ceiling is above
// bentod's own soft limit with room for runc, its descriptor limit covers
// what the default policy may need with every API on (bentod would warn
// at start otherwise), and it runs bentod with a bentorc, reloads with
// SIGHUP, and restarts it if it dies. bentod tells systemd when it is
// ready and pings its watchdog (internal/sdnotify): the unit must be
// Type=notify and listen to bentod alone. Its capability bounding set is
// the one bentod drops to (internal/privs), and the directories systemd
// makes for it are the package's (scripts/package.sh, dist/bentorc).
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
	// On cgroup v2 the unit's MemoryMax= bounds bentod and every
	// function together: a value right for bentod alone starves the
	// functions (bentod sets its own leaf's ceiling instead).
	if v := svc("MemoryMax"); v != "" {
		t.Errorf("MemoryMax=%s in the unit: on cgroup v2 it bounds the functions too", v)
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
	if svc("Type") != "notify" || svc("NotifyAccess") != "main" {
		t.Errorf("Type=%q NotifyAccess=%q: bentod says READY=1 itself (Type=notify, NotifyAccess=main)", svc("Type"), svc("NotifyAccess"))
	}
	if d, err := time.ParseDuration(svc("WatchdogSec") + "s"); err != nil || d < 10*time.Second {
		t.Errorf("WatchdogSec=%q: bentod's watchdog test takes up to 2 s and runs every WatchdogSec/2; give it at least 10 s", svc("WatchdogSec"))
	}
	for k, want := range map[string]string{"RuntimeDirectory": "bento", "ReadWritePaths": "/var/lib/bento /var/log/bento", "Delegate": "yes", "KillMode": "mixed"} {
		if svc(k) != want {
			t.Errorf("%s=%q, want %q", k, svc(k), want)
		}
	}
	// systemd gives a StateDirectory= or LogsDirectory= back to the
	// unit's user (root) at every ExecReload=, taking the data away from
	// a bentod that switched to User bento.
	for _, k := range []string{"StateDirectory", "LogsDirectory", "CacheDirectory"} {
		if svc(k) != "" {
			t.Errorf("%s=%q: systemd would chown it to root at each reload, away from User bento", k, svc(k))
		}
	}
	if !strings.HasPrefix(svc("ExecStart"), "/usr/sbin/bentod ") {
		t.Errorf("ExecStart=%q: the package installs bentod as /usr/sbin/bentod", svc("ExecStart"))
	}
	var bounding []int
	for _, name := range strings.Fields(svc("CapabilityBoundingSet")) {
		c, ok := capabilities[name]
		if !ok {
			t.Fatalf("CapabilityBoundingSet: unknown capability %q", name)
		}
		bounding = append(bounding, c)
	}
	needed := append([]int(nil), privs.Needed...)
	slices.Sort(bounding)
	slices.Sort(needed)
	if !slices.Equal(bounding, needed) {
		t.Errorf("CapabilityBoundingSet=%s is not internal/privs.Needed", svc("CapabilityBoundingSet"))
	}
}

// capabilities names Linux's capabilities as systemd does.
var capabilities = map[string]int{
	"CAP_CHOWN": unix.CAP_CHOWN, "CAP_DAC_OVERRIDE": unix.CAP_DAC_OVERRIDE, "CAP_DAC_READ_SEARCH": unix.CAP_DAC_READ_SEARCH,
	"CAP_FOWNER": unix.CAP_FOWNER, "CAP_FSETID": unix.CAP_FSETID, "CAP_KILL": unix.CAP_KILL, "CAP_SETGID": unix.CAP_SETGID,
	"CAP_SETUID": unix.CAP_SETUID, "CAP_SETPCAP": unix.CAP_SETPCAP, "CAP_LINUX_IMMUTABLE": unix.CAP_LINUX_IMMUTABLE,
	"CAP_NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE, "CAP_NET_BROADCAST": unix.CAP_NET_BROADCAST, "CAP_NET_ADMIN": unix.CAP_NET_ADMIN,
	"CAP_NET_RAW": unix.CAP_NET_RAW, "CAP_IPC_LOCK": unix.CAP_IPC_LOCK, "CAP_IPC_OWNER": unix.CAP_IPC_OWNER,
	"CAP_SYS_MODULE": unix.CAP_SYS_MODULE, "CAP_SYS_RAWIO": unix.CAP_SYS_RAWIO, "CAP_SYS_CHROOT": unix.CAP_SYS_CHROOT,
	"CAP_SYS_PTRACE": unix.CAP_SYS_PTRACE, "CAP_SYS_PACCT": unix.CAP_SYS_PACCT, "CAP_SYS_ADMIN": unix.CAP_SYS_ADMIN,
	"CAP_SYS_BOOT": unix.CAP_SYS_BOOT, "CAP_SYS_NICE": unix.CAP_SYS_NICE, "CAP_SYS_RESOURCE": unix.CAP_SYS_RESOURCE,
	"CAP_SYS_TIME": unix.CAP_SYS_TIME, "CAP_SYS_TTY_CONFIG": unix.CAP_SYS_TTY_CONFIG, "CAP_MKNOD": unix.CAP_MKNOD,
	"CAP_LEASE": unix.CAP_LEASE, "CAP_AUDIT_WRITE": unix.CAP_AUDIT_WRITE, "CAP_AUDIT_CONTROL": unix.CAP_AUDIT_CONTROL,
	"CAP_SETFCAP": unix.CAP_SETFCAP, "CAP_MAC_OVERRIDE": unix.CAP_MAC_OVERRIDE, "CAP_MAC_ADMIN": unix.CAP_MAC_ADMIN,
	"CAP_SYSLOG": unix.CAP_SYSLOG, "CAP_WAKE_ALARM": unix.CAP_WAKE_ALARM, "CAP_BLOCK_SUSPEND": unix.CAP_BLOCK_SUSPEND,
	"CAP_AUDIT_READ": unix.CAP_AUDIT_READ, "CAP_PERFMON": unix.CAP_PERFMON, "CAP_BPF": unix.CAP_BPF,
	"CAP_CHECKPOINT_RESTORE": unix.CAP_CHECKPOINT_RESTORE,
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
