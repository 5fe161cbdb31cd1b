package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	cgroupV1Root = "/sys/fs/cgroup"
)

// Placement modes: where the containers' cgroups go.
const (
	// PlaceLegacy: "/bento/<id>" at the top of the hierarchy (in every
	// controller's on cgroup v1), beside bentod's own cgroup.
	PlaceLegacy = "legacy"
	// PlaceDelegated: "<own>/instances/<id>" below bentod's own, delegated
	// cgroup v2 (systemd's Delegate=yes), bentod itself in "<own>/daemon".
	PlaceDelegated = "delegated"
)

// Placement tells where the containers' cgroups are and why.
type Placement struct {
	Mode   string // PlaceLegacy or PlaceDelegated
	V2     bool   // the unified (v2) hierarchy only
	Own    string // bentod's own cgroup as it found it ("/" on v1)
	Parent string // the containers' parent cgroup, from the hierarchy's root
	Daemon string // bentod's leaf cgroup when delegated, else ""
	Why    string // why this placement, for the log
	// MemoryMax is the delegated cgroup's memory.max (systemd's
	// MemoryMax=), which bounds bentod and every container together; 0
	// when there is none or the placement is not delegated.
	MemoryMax int64
	// DaemonMax is the memory.max bentod gave its own leaf (0: none).
	DaemonMax int64
	// FunctionTasks is the pids.max of the containers' parent when
	// delegated: the service's (systemd's TasksMax=) but daemonTasks, so
	// that functions filling their process limits together leave bentod
	// its threads (0: the service has no TasksMax=).
	FunctionTasks int64
	// Err is what went wrong setting up the delegated placement, when
	// bentod fell back to the legacy one; nil otherwise.
	Err error
}

// cgroupEnv is what placement depends on, injectable for tests: the
// cgroup file system's mount point, the file to read one's own cgroup
// from, the process to move, and whether a cgroup directory is delegated.
type cgroupEnv struct {
	root      string            // /sys/fs/cgroup
	self      string            // /proc/self/cgroup
	pid       int               // the process that moves to the leaf
	delegated func(string) bool // is this cgroup directory delegated to us
	daemonMax int64             // memory.max for bentod's leaf (0: none)
	// write writes a cgroup control file (os.WriteFile when nil).
	write func(name string, data []byte) error
}

func (env cgroupEnv) writeFile(name string, data []byte) error {
	if env.write != nil {
		return env.write(name, data)
	}
	return os.WriteFile(name, data, 0o644)
}

func hostCgroupEnv(daemonMax int64) cgroupEnv {
	return cgroupEnv{root: cgroupV1Root, self: "/proc/self/cgroup", pid: os.Getpid(), delegated: delegatedXattr, daemonMax: daemonMax}
}

// delegatedXattr reports whether systemd marked the cgroup directory as
// delegated: it sets "trusted.delegate" (and, for an unprivileged unit,
// "user.delegate") to "1" on the cgroup of a unit with Delegate=yes
// (systemd 251 and later).
func delegatedXattr(dir string) bool {
	for _, name := range []string{"trusted.delegate", "user.delegate"} {
		buf := make([]byte, 8)
		n, err := unix.Getxattr(dir, name, buf)
		if err == nil && strings.TrimSpace(string(buf[:n])) == "1" {
			return true
		}
	}
	return false
}

// unifiedCgroup returns the path of this process's cgroup in the unified
// hierarchy from /proc/self/cgroup's "0::PATH" line.
func unifiedCgroup(procSelfCgroup []byte) (string, bool) {
	for _, l := range strings.Split(string(procSelfCgroup), "\n") {
		if rest, ok := strings.CutPrefix(l, "0::"); ok {
			p := strings.TrimSpace(rest)
			if !strings.HasPrefix(p, "/") || strings.Contains(p, "\x00") {
				return "", false
			}
			return path.Clean(p), true
		}
	}
	return "", false
}

// delegatedSubtree: the controllers the containers' limits need.
var delegatedControllers = []string{"cpu", "memory", "pids"}

// place chooses where the containers' cgroups go. On cgroup v2, when
// bentod's own cgroup is delegated to it, bentod moves every process of
// that cgroup (itself) into the leaf "<own>/daemon" (a cgroup v2 with
// controllers enabled for its children may hold no processes), enables
// the cpu, memory and pids controllers for its children, gives the leaf
// bentod's own memory ceiling (the service's memory.max now bounds the
// functions too), and puts the containers below "<own>/instances".
// Otherwise (cgroup v1, or a cgroup
// nobody delegated) the containers go to "/bento", as before. A failure
// in the delegated set-up falls back to "/bento" and says why in Err.
func place(env cgroupEnv) Placement {
	legacy := Placement{Mode: PlaceLegacy, Own: "/", Parent: "/" + cgroupParent}
	if _, err := os.Stat(filepath.Join(env.root, "cgroup.controllers")); err != nil {
		legacy.Why = "cgroup v1: containers at /" + cgroupParent + " in each controller's hierarchy"
		return legacy
	}
	legacy.V2 = true
	b, err := os.ReadFile(env.self)
	if err != nil {
		legacy.Why = "cgroup v2, own cgroup unknown"
		legacy.Err = err
		return legacy
	}
	own, ok := unifiedCgroup(b)
	if !ok {
		legacy.Why = "cgroup v2, but " + env.self + " has no \"0::/path\" line"
		return legacy
	}
	legacy.Own = own
	// Started again inside the leaf an earlier start made: the service's
	// cgroup is the leaf's parent.
	if path.Base(own) == daemonLeaf && own != "/"+daemonLeaf && env.delegated(filepath.Join(env.root, path.Dir(own))) {
		own = path.Dir(own)
	}
	if own == "/" || !env.delegated(filepath.Join(env.root, own)) {
		legacy.Why = "cgroup v2, own cgroup " + own + " not delegated (no Delegate=yes): containers at /" + cgroupParent
		return legacy
	}
	p, err := delegate(env, own)
	if err != nil {
		legacy.Why = "cgroup v2, own cgroup " + own + " delegated but not usable: containers at /" + cgroupParent
		legacy.Err = err
		return legacy
	}
	return p
}

const (
	daemonLeaf   = "daemon"
	instancesDir = "instances"
	// daemonTasks is what bentod keeps of the service's TasksMax= for
	// itself (a quarter where that is less): the Go runtime's threads and
	// the OCI runtime's processes while containers start and end.
	daemonTasks = 512
)

func delegate(env cgroupEnv, own string) (Placement, error) {
	dir := filepath.Join(env.root, own)
	leaf := filepath.Join(dir, daemonLeaf)
	if err := os.Mkdir(leaf, 0o755); err != nil && !os.IsExist(err) {
		return Placement{}, err
	}
	// Every process of the delegated cgroup (bentod, and whatever it
	// started that is still there) moves to the leaf; ours last.
	procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return Placement{}, err
	}
	pids := strings.Fields(string(procs))
	pids = append(pids, strconv.Itoa(env.pid))
	for _, p := range pids {
		if err := env.writeFile(filepath.Join(leaf, "cgroup.procs"), []byte(p)); err != nil && !errors.Is(err, unix.ESRCH) {
			return Placement{}, fmt.Errorf("moving process %s to %s: %w", p, leaf, err)
		}
	}
	avail, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return Placement{}, err
	}
	have := strings.Fields(string(avail))
	var enable []string
	for _, c := range delegatedControllers {
		if !slices.Contains(have, c) {
			return Placement{}, fmt.Errorf("controller %s is not available in %s (cgroup.controllers: %q): a delegated unit gets it with Delegate=yes", c, dir, strings.TrimSpace(string(avail)))
		}
		enable = append(enable, "+"+c)
	}
	inst := filepath.Join(dir, instancesDir)
	if err := os.Mkdir(inst, 0o755); err != nil && !os.IsExist(err) {
		return Placement{}, err
	}
	for _, d := range []string{dir, inst} {
		if err := env.writeFile(filepath.Join(d, "cgroup.subtree_control"), []byte(strings.Join(enable, " "))); err != nil {
			return Placement{}, fmt.Errorf("enabling %s in %s: %w", strings.Join(enable, " "), d, err)
		}
	}
	// bentod's own hard ceiling, on its leaf: the service's memory.max
	// now bounds the functions too.
	if env.daemonMax > 0 {
		if err := env.writeFile(filepath.Join(leaf, "memory.max"), []byte(strconv.FormatInt(env.daemonMax, 10))); err != nil {
			return Placement{}, fmt.Errorf("setting %s/memory.max: %w", leaf, err)
		}
		if _, err := os.Stat(filepath.Join(leaf, "memory.swap.max")); err == nil {
			if err := env.writeFile(filepath.Join(leaf, "memory.swap.max"), []byte("0")); err != nil {
				return Placement{}, fmt.Errorf("setting %s/memory.swap.max: %w", leaf, err)
			}
		}
	}
	var memMax int64
	if b, err := os.ReadFile(filepath.Join(dir, "memory.max")); err == nil && strings.TrimSpace(string(b)) != "max" {
		memMax, _ = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	}
	// The service's TasksMax= bounds bentod and every function together:
	// the functions get all of it but bentod's reserve (a python function
	// fills its process limit with threads, and all of them together
	// would otherwise leave bentod's runtime no thread to start, which it
	// does not survive).
	var tasks int64
	if b, err := os.ReadFile(filepath.Join(dir, "pids.max")); err == nil && strings.TrimSpace(string(b)) != "max" {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && n > 0 {
			tasks = n - min(daemonTasks, n/4)
			if err := env.writeFile(filepath.Join(inst, "pids.max"), []byte(strconv.FormatInt(tasks, 10))); err != nil {
				return Placement{}, fmt.Errorf("setting %s/pids.max: %w", inst, err)
			}
		}
	}
	why := "cgroup v2, own cgroup " + own + " delegated: bentod in " + path.Join(own, daemonLeaf) + ", containers below " + path.Join(own, instancesDir)
	if tasks > 0 {
		why += fmt.Sprintf(" (at most %d processes and threads together: the unit's TasksMax= but bentod's own)", tasks)
	}
	return Placement{
		MemoryMax:     memMax,
		DaemonMax:     env.daemonMax,
		FunctionTasks: tasks,
		Mode:          PlaceDelegated,
		V2:            true,
		Own:           own,
		Parent:        path.Join(own, instancesDir),
		Daemon:        path.Join(own, daemonLeaf),
		Why:           why,
	}, nil
}

// parent is the containers' parent cgroup; a zero Placement is the legacy
// one.
func (p Placement) parent() string {
	if p.Parent == "" {
		return "/" + cgroupParent
	}
	return p.Parent
}

// swapLimitable reports whether the containers' swap can be limited, as
// buildSpec then does (to none: what a function holds in memory, its
// /tmp included, never goes to a swap device on the disk): cgroup v1's
// memory.memsw, or cgroup v2's memory.swap.max, each present only where
// the kernel accounts swap. The runtime fails a container whose spec
// limits swap where it cannot; on cgroup v2 without a limit, a container
// may swap as much as the machine lets it.
func swapLimitable(root string, v2 bool) bool {
	if !v2 {
		_, err := os.Stat(filepath.Join(root, "memory", "memory.memsw.limit_in_bytes"))
		return err == nil
	}
	// The root cgroup has no memory.swap.max: any cgroup below it that
	// has the memory controller shows it.
	ents, _ := os.ReadDir(root)
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join(root, e.Name(), "memory.swap.max")); err == nil {
			return true
		}
	}
	return false
}

// cgroupPaths locates one container's cgroups, as runc creates them for
// the cgroupsPath the spec gives it (Placement.Parent + "/" + id).
type cgroupPaths struct {
	v2                 string
	cpuacct, mem, pids string
	root               string // the cgroup file system
	rel                string // the container's cgroup from the hierarchy's root
}

func (p Placement) cgroupsFor(root, id string) cgroupPaths {
	rel := path.Join(p.parent(), id)
	if p.V2 {
		return cgroupPaths{v2: filepath.Join(root, rel), root: root, rel: rel}
	}
	return cgroupPaths{
		cpuacct: filepath.Join(root, "cpuacct", rel),
		mem:     filepath.Join(root, "memory", rel),
		pids:    filepath.Join(root, "pids", rel),
		root:    root,
		rel:     rel,
	}
}

// Stats are a container's cgroup counters.
type Stats struct {
	CPU         time.Duration // CPU time used
	Memory      int64         // current memory use, bytes
	OOMKills    int64         // processes the kernel killed for memory
	PidsRefused int64         // forks refused by the pids limit
}

func (p cgroupPaths) stats() Stats {
	var s Stats
	if p.v2 != "" {
		if v, ok := keyed(filepath.Join(p.v2, "cpu.stat"), "usage_usec"); ok {
			s.CPU = time.Duration(v) * time.Microsecond
		}
		s.Memory, _ = single(filepath.Join(p.v2, "memory.current"))
		s.OOMKills, _ = keyed(filepath.Join(p.v2, "memory.events"), "oom_kill")
		s.PidsRefused, _ = keyed(filepath.Join(p.v2, "pids.events"), "max")
		return s
	}
	if v, ok := single(filepath.Join(p.cpuacct, "cpuacct.usage")); ok {
		s.CPU = time.Duration(v)
	}
	s.Memory, _ = single(filepath.Join(p.mem, "memory.usage_in_bytes"))
	s.OOMKills, _ = keyed(filepath.Join(p.mem, "memory.oom_control"), "oom_kill")
	s.PidsRefused, _ = keyed(filepath.Join(p.pids, "pids.events"), "max")
	return s
}

// remove deletes the container's cgroup directories if the runtime left
// any (it normally removes them itself).
func (p cgroupPaths) remove() {
	if p.v2 != "" {
		_ = os.Remove(p.v2)
		return
	}
	// runc on v1 creates the group in every hierarchy.
	for _, c := range v1Controllers {
		_ = os.Remove(filepath.Join(p.root, c, p.rel))
	}
}

var v1Controllers = []string{"cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "blkio", "net_cls", "perf_event", "hugetlb", "net_prio", "rdma", "misc", "systemd"}

// Leftover lists the container cgroup directories under the containers'
// parent that still exist, for tests and crash recovery.
func (s *Sandbox) Leftover() []string {
	var out []string
	roots := []string{filepath.Join(s.cgroot, s.place.parent())}
	if !s.place.V2 {
		roots = nil
		for _, c := range []string{"cpu", "cpuacct", "memory", "pids", "devices", "freezer", "blkio", "cpuset"} {
			roots = append(roots, filepath.Join(s.cgroot, c, s.place.parent()))
		}
	}
	for _, r := range roots {
		ents, _ := os.ReadDir(r)
		for _, e := range ents {
			if e.IsDir() {
				out = append(out, filepath.Join(r, e.Name()))
			}
		}
	}
	return out
}

func single(path string) (int64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return v, err == nil
}

func keyed(path, key string) (int64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) == 2 && f[0] == key {
			v, err := strconv.ParseInt(f[1], 10, 64)
			return v, err == nil
		}
	}
	return 0, false
}

// yieldToTor gives the parent cgroup of all containers a low CPU weight:
// when tor (or anything else on the machine; bentod itself when the
// containers are below its delegated cgroup) wants the CPU, the functions
// together get an eighth of a normal process's share; when nobody else
// does, they use what their quotas allow. Each container's own weight
// only divides the parent's among the functions.
func (p Placement) yieldToTor(root string) error {
	if p.V2 {
		dir := filepath.Join(root, p.parent())
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		// cpu.weight exists once the parent delegates the cpu controller.
		if _, err := os.Stat(filepath.Join(dir, "cpu.weight")); err != nil {
			return nil
		}
		return os.WriteFile(filepath.Join(dir, "cpu.weight"), []byte("5"), 0o644)
	}
	dir := filepath.Join(root, "cpu", p.parent())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "cpu.shares"), []byte(strconv.Itoa(cpuShares)), 0o644)
}
