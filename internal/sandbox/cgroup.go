package sandbox

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

const (
	cgroupV1Root = "/sys/fs/cgroup"
)

// unified reports whether the machine runs cgroup v2 only.
var unified = func() bool {
	_, err := os.Stat("/sys/fs/cgroup/cgroup.controllers")
	return err == nil
}()

// cgroupPaths locates one container's cgroups, as runc creates them for
// cgroupsPath "/bento/<id>".
type cgroupPaths struct {
	v2                 string
	cpuacct, mem, pids string
}

func cgroupsFor(id string) cgroupPaths {
	rel := filepath.Join(cgroupParent, id)
	if unified {
		return cgroupPaths{v2: filepath.Join(cgroupV1Root, rel)}
	}
	return cgroupPaths{
		cpuacct: filepath.Join(cgroupV1Root, "cpuacct", rel),
		mem:     filepath.Join(cgroupV1Root, "memory", rel),
		pids:    filepath.Join(cgroupV1Root, "pids", rel),
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
	for _, d := range []string{p.v2, p.cpuacct, p.mem, p.pids} {
		if d != "" {
			_ = os.Remove(d)
		}
	}
	if !unified {
		// runc v1 also creates the group in the other hierarchies.
		for _, c := range []string{"cpu", "cpuset", "devices", "freezer", "blkio", "net_cls", "perf_event", "hugetlb", "net_prio", "rdma", "misc", "systemd"} {
			_ = os.Remove(filepath.Join(cgroupV1Root, c, filepath.Base(filepath.Dir(p.mem)), filepath.Base(p.mem)))
		}
	}
}

// Leftover lists cgroup directories under bento's parent that still exist,
// for tests and crash recovery.
func Leftover() []string {
	var out []string
	roots := []string{filepath.Join(cgroupV1Root, cgroupParent)}
	if !unified {
		roots = nil
		for _, c := range []string{"cpu", "cpuacct", "memory", "pids", "devices", "freezer", "blkio", "cpuset"} {
			roots = append(roots, filepath.Join(cgroupV1Root, c, cgroupParent))
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
// when tor (or anything else on the machine) wants the CPU, the functions
// together get an eighth of a normal process's share; when nobody else
// does, they use what their quotas allow. Each container's own weight
// only divides the parent's among the functions.
func yieldToTor() error {
	if unified {
		dir := filepath.Join(cgroupV1Root, cgroupParent)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		// cpu.weight exists once the root delegates the cpu controller.
		if _, err := os.Stat(filepath.Join(dir, "cpu.weight")); err != nil {
			return nil
		}
		return os.WriteFile(filepath.Join(dir, "cpu.weight"), []byte("5"), 0o644)
	}
	dir := filepath.Join(cgroupV1Root, "cpu", cgroupParent)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "cpu.shares"), []byte(strconv.Itoa(cpuShares)), 0o644)
}
