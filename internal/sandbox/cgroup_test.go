package sandbox

import (
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeCgroupFS lays out a cgroup file system in a temporary directory:
// files maps a path below the root to its content.
func fakeCgroupFS(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

const svc = "/system.slice/bentod.service"

func TestPlace(t *testing.T) {
	v2root := map[string]string{"cgroup.controllers": "cpuset cpu io memory pids\n"}
	with := func(base map[string]string, more map[string]string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for k, v := range more {
			m[k] = v
		}
		return m
	}
	delegatedSvc := with(v2root, map[string]string{
		svc + "/cgroup.controllers": "cpu io memory pids\n",
		svc + "/cgroup.procs":       "4242\n",
		svc + "/memory.max":         "805306368\n",
	})
	for _, tc := range []struct {
		name      string
		files     map[string]string
		self      string          // /proc/self/cgroup
		delegated map[string]bool // cgroup paths systemd delegated
		mode      string
		v2        bool
		parent    string
		daemon    string
		memMax    int64
		why, err  string // substrings
	}{
		{name: "v1", files: map[string]string{"memory/x": ""}, self: "4:memory:/\n0::/\n",
			mode: PlaceLegacy, parent: "/bento", why: "cgroup v1"},
		{name: "v1 delegated cgroup is not used", files: map[string]string{}, self: "0::" + svc + "\n", delegated: map[string]bool{svc: true},
			mode: PlaceLegacy, parent: "/bento", why: "cgroup v1"},
		{name: "v2 at the root", files: v2root, self: "0::/\n", delegated: map[string]bool{"/": true},
			mode: PlaceLegacy, v2: true, parent: "/bento", why: "own cgroup / not delegated"},
		{name: "v2 not delegated", files: delegatedSvc, self: "0::" + svc + "\n",
			mode: PlaceLegacy, v2: true, parent: "/bento", why: "own cgroup " + svc + " not delegated"},
		{name: "v2 no unified line", files: v2root, self: "1:name=systemd:/x\n",
			mode: PlaceLegacy, v2: true, parent: "/bento", why: "no \"0::/path\" line"},
		{name: "v2 delegated", files: delegatedSvc, self: "0::" + svc + "\n", delegated: map[string]bool{svc: true},
			mode: PlaceDelegated, v2: true, parent: svc + "/instances", daemon: svc + "/daemon", memMax: 805306368, why: "bentod in " + svc + "/daemon"},
		{name: "v2 delegated, no memory limit", files: with(delegatedSvc, map[string]string{svc + "/memory.max": "max\n"}), self: "0::" + svc + "\n", delegated: map[string]bool{svc: true},
			mode: PlaceDelegated, v2: true, parent: svc + "/instances", daemon: svc + "/daemon"},
		{name: "v2 delegated, started again in the leaf", files: delegatedSvc, self: "0::" + svc + "/daemon\n", delegated: map[string]bool{svc: true},
			mode: PlaceDelegated, v2: true, parent: svc + "/instances", daemon: svc + "/daemon", memMax: 805306368},
		{name: "v2 a leaf named daemon that is not ours", files: with(v2root, map[string]string{"/a/daemon/cgroup.procs": ""}), self: "0::/a/daemon\n",
			mode: PlaceLegacy, v2: true, parent: "/bento", why: "own cgroup /a/daemon not delegated"},
		{name: "v2 delegated without the memory controller", files: with(delegatedSvc, map[string]string{svc + "/cgroup.controllers": "cpu pids\n"}), self: "0::" + svc + "\n", delegated: map[string]bool{svc: true},
			mode: PlaceLegacy, v2: true, parent: "/bento", why: "delegated but not usable", err: "controller memory is not available"},
		{name: "v2 delegated, cgroup.procs unreadable", files: with(v2root, map[string]string{svc + "/cgroup.controllers": "cpu memory pids\n"}), self: "0::" + svc + "\n", delegated: map[string]bool{svc: true},
			mode: PlaceLegacy, v2: true, parent: "/bento", why: "delegated but not usable", err: "cgroup.procs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := fakeCgroupFS(t, tc.files)
			self := filepath.Join(t.TempDir(), "cgroup")
			if err := os.WriteFile(self, []byte(tc.self), 0o644); err != nil {
				t.Fatal(err)
			}
			env := cgroupEnv{root: root, self: self, pid: 777, delegated: func(dir string) bool {
				rel, err := filepath.Rel(root, dir)
				if err != nil {
					t.Fatal(err)
				}
				return tc.delegated[path.Clean("/"+rel)]
			}}
			p := place(env)
			if p.Mode != tc.mode || p.V2 != tc.v2 || p.Parent != tc.parent || p.Daemon != tc.daemon || p.MemoryMax != tc.memMax {
				t.Fatalf("place = %+v, want mode %s v2 %v parent %s daemon %s memory.max %d", p, tc.mode, tc.v2, tc.parent, tc.daemon, tc.memMax)
			}
			if !strings.Contains(p.Why, tc.why) {
				t.Errorf("why %q, want it to say %q", p.Why, tc.why)
			}
			if tc.err == "" && p.Err != nil || tc.err != "" && (p.Err == nil || !strings.Contains(p.Err.Error(), tc.err)) {
				t.Errorf("err %v, want %q", p.Err, tc.err)
			}
			if p.Mode != PlaceDelegated {
				if _, err := os.Stat(filepath.Join(root, svc, "instances")); err == nil && tc.err == "" {
					t.Error("a legacy placement made the instances cgroup")
				}
				return
			}
			// bentod (and every process of the delegated cgroup) moved to
			// the leaf, ours last; the controllers enabled for the
			// children of the service's cgroup and of instances/.
			if got := readFile(t, filepath.Join(root, svc, "daemon", "cgroup.procs")); got != "777" {
				t.Errorf("daemon/cgroup.procs last written %q, want our pid 777", got)
			}
			for _, d := range []string{svc, svc + "/instances"} {
				if got := readFile(t, filepath.Join(root, d, "cgroup.subtree_control")); got != "+cpu +memory +pids" {
					t.Errorf("%s/cgroup.subtree_control = %q", d, got)
				}
			}
			// Placing again (a second Sandbox in one process) is the same.
			if again := place(env); again.Mode != p.Mode || again.Parent != p.Parent {
				t.Errorf("placed again: %+v", again)
			}
		})
	}
}

// TestPlaceMovesEveryProcess: every process of the delegated cgroup goes
// to the leaf, ours last, before the controllers are enabled (cgroup v2
// refuses them for the children of a cgroup that holds processes); a
// process that ended meanwhile (ESRCH) is no error.
func TestPlaceMovesEveryProcess(t *testing.T) {
	root := fakeCgroupFS(t, map[string]string{
		"cgroup.controllers":        "cpu memory pids\n",
		svc + "/cgroup.controllers": "cpu memory pids\n",
		svc + "/cgroup.procs":       "10\n11\n",
	})
	self := filepath.Join(t.TempDir(), "cgroup")
	if err := os.WriteFile(self, []byte("0::"+svc+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var writes []string
	env := cgroupEnv{root: root, self: self, pid: 12, daemonMax: 768 << 20, delegated: func(string) bool { return true },
		write: func(name string, data []byte) error {
			rel, _ := filepath.Rel(root, name)
			writes = append(writes, rel+"="+string(data))
			if string(data) == "11" {
				return unix.ESRCH // ended before it could move
			}
			return nil
		}}
	if p := place(env); p.Mode != PlaceDelegated {
		t.Fatalf("place = %+v", p)
	}
	want := []string{
		"system.slice/bentod.service/daemon/cgroup.procs=10",
		"system.slice/bentod.service/daemon/cgroup.procs=11",
		"system.slice/bentod.service/daemon/cgroup.procs=12",
		"system.slice/bentod.service/cgroup.subtree_control=+cpu +memory +pids",
		"system.slice/bentod.service/instances/cgroup.subtree_control=+cpu +memory +pids",
		"system.slice/bentod.service/daemon/memory.max=805306368",
	}
	if strings.Join(writes, "\n") != strings.Join(want, "\n") {
		t.Fatalf("writes:\n%s\nwant:\n%s", strings.Join(writes, "\n"), strings.Join(want, "\n"))
	}

	// A move the kernel refuses (not delegated after all) falls back.
	env.write = func(name string, data []byte) error { return unix.EACCES }
	p := place(env)
	if p.Mode != PlaceLegacy || p.Err == nil || !strings.Contains(p.Err.Error(), "moving process 10") {
		t.Fatalf("with every write refused: %+v", p)
	}
}

func TestUnifiedCgroup(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
		ok   bool
	}{
		{"0::/system.slice/bentod.service\n", "/system.slice/bentod.service", true},
		{"12:pids:/x\n0::/\n", "/", true},
		{"0::/a/../b/\n", "/b", true},
		{"0::relative\n", "", false},
		{"1:name=systemd:/x\n", "", false},
		{"", "", false},
		{"0::/a\x00b\n", "", false},
	} {
		got, ok := unifiedCgroup([]byte(tc.in))
		if got != tc.want || ok != tc.ok {
			t.Errorf("unifiedCgroup(%q) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func FuzzUnifiedCgroup(f *testing.F) {
	for _, s := range []string{"0::/\n", "0::/system.slice/bentod.service\n", "4:memory:/x\n0::/a/../..\n", "0::"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, ok := unifiedCgroup(b)
		if !ok {
			return
		}
		if !strings.HasPrefix(p, "/") || path.Clean(p) != p || strings.Contains(p, "..") && p != path.Clean(p) {
			t.Fatalf("unifiedCgroup(%q) = %q: not a clean absolute path", b, p)
		}
		// Below the hierarchy's root, whatever the input.
		if j := filepath.Join("/sys/fs/cgroup", p); !strings.HasPrefix(j, "/sys/fs/cgroup") {
			t.Fatalf("unifiedCgroup(%q) = %q escapes the cgroup root: %s", b, p, j)
		}
	})
}

// TestPlacementPaths: the spec's cgroupsPath, the stats reader and the
// clean-up all follow the placement.
func TestPlacementPaths(t *testing.T) {
	delegated := Placement{Mode: PlaceDelegated, V2: true, Parent: svc + "/instances"}
	for _, tc := range []struct {
		name  string
		p     Placement
		spec  string
		files map[string]string
		want  Stats
	}{
		{"zero is legacy", Placement{}, "/bento/x", map[string]string{
			"cpuacct/bento/x/cpuacct.usage":        "2000000000\n",
			"memory/bento/x/memory.usage_in_bytes": "4096\n",
			"memory/bento/x/memory.oom_control":    "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
			"pids/bento/x/pids.events":             "max 3\n",
		}, Stats{CPU: 2 * time.Second, Memory: 4096, OOMKills: 1, PidsRefused: 3}},
		{"legacy v2", Placement{Mode: PlaceLegacy, V2: true, Parent: "/bento"}, "/bento/x", map[string]string{
			"bento/x/cpu.stat":       "usage_usec 1500000\nuser_usec 1\n",
			"bento/x/memory.current": "8192\n",
			"bento/x/memory.events":  "low 0\noom 1\noom_kill 2\n",
			"bento/x/pids.events":    "max 4\n",
		}, Stats{CPU: 1500 * time.Millisecond, Memory: 8192, OOMKills: 2, PidsRefused: 4}},
		{"delegated", delegated, svc + "/instances/x", map[string]string{
			svc + "/instances/x/cpu.stat":       "usage_usec 1000\n",
			svc + "/instances/x/memory.current": "65536\n",
			svc + "/instances/x/memory.events":  "oom_kill 0\n",
			svc + "/instances/x/pids.events":    "max 0\n",
		}, Stats{CPU: time.Millisecond, Memory: 65536}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &Sandbox{place: tc.p}
			if got := s.buildSpec("x", Limits{CPU: 1, Memory: 1 << 20}).Linux.CgroupsPath; got != tc.spec {
				t.Errorf("cgroupsPath %q, want %q", got, tc.spec)
			}
			root := fakeCgroupFS(t, tc.files)
			s.cgroot = root
			cg := tc.p.cgroupsFor(root, "x")
			if got := cg.stats(); got != tc.want {
				t.Errorf("stats %+v, want %+v", got, tc.want)
			}
			if left := s.Leftover(); len(left) == 0 {
				t.Error("Leftover found no cgroup for x")
			}
			// remove deletes only empty directories, as the kernel's
			// cgroupfs does: empty them as the kernel would.
			for name := range tc.files {
				os.Remove(filepath.Join(root, name))
			}
			cg.remove()
			if left := s.Leftover(); len(left) != 0 {
				t.Errorf("left after remove: %v", left)
			}
		})
	}
}

// TestPlaceDaemonCeiling: bentod's leaf gets its own hard memory ceiling
// and no swap, since the service's memory.max now bounds the functions
// too; without a ceiling configured, the leaf's files are left alone.
func TestPlaceDaemonCeiling(t *testing.T) {
	for _, ceiling := range []int64{0, 768 << 20} {
		root := fakeCgroupFS(t, map[string]string{
			"cgroup.controllers":                  "cpu memory pids\n",
			svc + "/cgroup.controllers":           "cpu memory pids\n",
			svc + "/cgroup.procs":                 "",
			svc + "/daemon/memory.max":            "max\n",
			svc + "/daemon/memory.swap.max":       "max\n",
			svc + "/instances/cgroup.controllers": "cpu memory pids\n",
		})
		self := filepath.Join(t.TempDir(), "cgroup")
		if err := os.WriteFile(self, []byte("0::"+svc+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		p := place(cgroupEnv{root: root, self: self, pid: 1, daemonMax: ceiling, delegated: func(string) bool { return true }})
		if p.Mode != PlaceDelegated || p.DaemonMax != ceiling {
			t.Fatalf("ceiling %d: place = %+v", ceiling, p)
		}
		wantMem, wantSwap := "max\n", "max\n"
		if ceiling > 0 {
			wantMem, wantSwap = "805306368", "0"
		}
		if got := readFile(t, filepath.Join(root, svc, "daemon", "memory.max")); got != wantMem {
			t.Errorf("ceiling %d: daemon/memory.max = %q, want %q", ceiling, got, wantMem)
		}
		if got := readFile(t, filepath.Join(root, svc, "daemon", "memory.swap.max")); got != wantSwap {
			t.Errorf("ceiling %d: daemon/memory.swap.max = %q, want %q", ceiling, got, wantSwap)
		}
	}
}

// TestPlaceFunctionTasks: the service's TasksMax= (its pids.max) bounds
// bentod and every function together; the functions' parent gets all of
// it but bentod's reserve, so functions that fill their process limits
// together (a python function's threads) never take the last threads
// bentod's own runtime and the OCI runtime need.
func TestPlaceFunctionTasks(t *testing.T) {
	for _, tc := range []struct {
		tasksMax string // the service's pids.max
		want     string // instances/pids.max, "" for untouched
		n        int64
	}{
		{"4096\n", "3584", 3584},
		{"1000\n", "750", 750},
		{"max\n", "", 0},
	} {
		root := fakeCgroupFS(t, map[string]string{
			"cgroup.controllers":                  "cpu memory pids\n",
			svc + "/cgroup.controllers":           "cpu memory pids\n",
			svc + "/cgroup.procs":                 "",
			svc + "/pids.max":                     tc.tasksMax,
			svc + "/instances/cgroup.controllers": "cpu memory pids\n",
		})
		self := filepath.Join(t.TempDir(), "cgroup")
		if err := os.WriteFile(self, []byte("0::"+svc+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		p := place(cgroupEnv{root: root, self: self, pid: 1, delegated: func(string) bool { return true }})
		if p.Mode != PlaceDelegated || p.FunctionTasks != tc.n {
			t.Fatalf("TasksMax %q: place = %+v, want FunctionTasks %d", tc.tasksMax, p, tc.n)
		}
		b, err := os.ReadFile(filepath.Join(root, svc, "instances", "pids.max"))
		if got := string(b); (err != nil) != (tc.want == "") || got != tc.want {
			t.Errorf("TasksMax %q: instances/pids.max = %q (%v), want %q", tc.tasksMax, got, err, tc.want)
		}
	}
}
