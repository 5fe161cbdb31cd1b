package sandbox

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/testutil"
	"github.com/torbento/bento/internal/wire"
)

func newSandbox(t *testing.T) *Sandbox {
	testutil.RequireSandbox(t)
	s, err := New(Config{Runtime: "runc", StateDir: testutil.TempDir(t), RunnerPath: testutil.Runner(t)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var small = Limits{Memory: 32 << 20, CPU: 0.5, CPUTime: 5 * time.Second, Processes: 16, Storage: 1 << 20}

// start runs code in a fresh container and returns the host side.
func start(t *testing.T, s *Sandbox, id, code string, l Limits) (*Container, *wire.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	host, guest := os.NewFile(uintptr(fds[0]), "host"), os.NewFile(uintptr(fds[1]), "guest")
	c, err := s.Start(context.Background(), id, l, guest)
	guest.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Remove(); err != nil {
			t.Error(err)
		}
		host.Close()
	})
	conn := wire.NewConn(host)
	ents, body := proto.PackFiles(map[string][]byte{"main.star": []byte(code)})
	if err := conn.Send(proto.HInit, proto.Init{Version: proto.HostAPIVersion, Entry: "main.star", Function: "main", Files: ents}, body); err != nil {
		<-c.Exited()
		t.Fatalf("sending init: %v; container %s; log: %s", err, c.Status(), c.Output())
	}
	f, err := conn.Read()
	if err != nil || f.Type != proto.HReady {
		t.Fatalf("no ready: %v %v; log: %s", f, err, c.Output())
	}
	return c, conn
}

func TestRunFunction(t *testing.T) {
	s := newSandbox(t)
	_, conn := start(t, s, "t-run", "def main(a, b):\n    return a * b\n", small)
	conn.Send(proto.HInvoke, proto.HostInvoke{Inv: 1, Args: []byte(`["ab", 3]`)}, nil)
	f, err := conn.Read()
	if err != nil || f.Type != proto.HDone || string(f.Body) != "ababab" {
		t.Fatalf("got %+v %v", f, err)
	}
}

func TestMemoryLimitKills(t *testing.T) {
	s := newSandbox(t)
	c, conn := start(t, s, "t-mem", "def main():\n    x = 'a' * 1000\n    l = []\n    for i in range(100000000):\n        l.append(x * 100 + str(i))\n", small)
	conn.Send(proto.HInvoke, proto.HostInvoke{Inv: 1}, nil)
	select {
	case <-c.Exited():
	case <-time.After(30 * time.Second):
		t.Fatal("memory bomb still running after 30s")
	}
	st := c.Stats()
	if st.OOMKills == 0 {
		t.Errorf("status %s, stats %+v: want an OOM kill", c.Status(), st)
	}
}

func TestNoNetwork(t *testing.T) {
	s := newSandbox(t)
	// The container has its own /proc: only its own process is visible.
	c, conn := start(t, s, "t-net", "def main():\n    return 1\n", small)
	_ = conn
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/dev", c.Pid))
	if err != nil {
		t.Fatal(err)
	}
	// Only the header lines and lo.
	if n := len(splitLines(string(b))); n != 3 {
		t.Errorf("container sees %d lines of interfaces, want header+lo only:\n%s", n, b)
	}
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := range s {
		if s[i] == '\n' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return out
}

// TestConfinement runs a probe in place of the runner and checks what the
// sandbox lets a hostile program do.
func TestConfinement(t *testing.T) {
	testutil.RequireSandbox(t)
	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", dir+"/probe", "./testdata/probe")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building probe: %v\n%s", err, out)
	}
	s, err := New(Config{Runtime: "runc", StateDir: testutil.TempDir(t), RunnerPath: dir + "/probe"})
	if err != nil {
		t.Fatal(err)
	}
	devnull, _ := os.Open(os.DevNull)
	c, err := s.Start(context.Background(), "t-probe", Limits{Memory: 32 << 20, CPU: 0.5, CPUTime: 5 * time.Second, Processes: 16, Storage: 256 << 10}, devnull)
	if err != nil {
		t.Fatal(err)
	}
	<-c.Exited()
	defer c.Remove()
	out := c.Output()
	got := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			got[k] = v
		}
	}
	want := map[string]string{
		"uid":          "65534",
		"socket":       "operation not permitted",
		"socket_unix":  "operation not permitted",
		"mount":        "operation not permitted",
		"ptrace":       "operation not permitted",
		"fork":         "operation not permitted",
		"write_root":   "read-only file system",
		"fill_tmp":     "no space left on device",
		"root":         "bento-runner,dev,proc,tmp",
		"cap_eff":      "0000000000000000",
		"no_new_privs": "1",
		"seccomp":      "2",
		"hostname":     "bento",
		// Only null, zero and urandom: the other nodes runc adds are
		// /dev/null in disguise, or do not open.
		"dev_null":    "1:3",
		"dev_zero":    "1:5",
		"dev_urandom": "1:9",
		"dev_full":    "1:3",
		"dev_random":  "1:3",
		"dev_tty":     "1:3",
		"dev_ptmx":    "no such file or directory",
		"mknod":       "operation not permitted",
		// Only itself: no host process, not even runc's.
		"procs": "1",
		"done":  "true",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	if sandboxUserNS(s) && got["uid_map"] != fmt.Sprintf("0 %d 65536", UserNSBase) {
		t.Errorf("uid_map = %q, want the container's IDs mapped to %d and up", got["uid_map"], UserNSBase)
	}
	if got["kcore"] == "ok" {
		t.Error("/proc/kcore is readable")
	}
	t.Logf("probe output:\n%s", out)
}

// sandboxUserNS reports whether containers get a user namespace here; under
// CI it must be so.
func sandboxUserNS(s *Sandbox) bool {
	return s.userns || testutil.InCI()
}

// TestCPUQuotaExact: the quota runc gets is exactly the cores admitted
// (hundredths of a core, policy.MilliCores), never a microsecond short:
// 0.29 * 100000 is 28999.999999999996 in floating point.
func TestCPUQuotaExact(t *testing.T) {
	s := &Sandbox{}
	for hundredths := 1; hundredths <= 400; hundredths++ {
		cpu := float64(hundredths) / 100
		spec := s.buildSpec("x", Limits{CPU: cpu, Memory: 1 << 20})
		want := max(1000, int64(hundredths)*1000)
		if got := spec.Linux.Resources.CPU.Quota; got != want {
			t.Fatalf("cpu %.2f: quota %d µs, want %d", cpu, got, want)
		}
	}
}
