package sandbox

import (
	"math"
	"path"
	"strconv"
	"time"
)

// The OCI runtime-spec subset bentod writes (github.com/opencontainers/
// runtime-spec, config.md and config-linux.md). Declared here rather than
// imported: the fields are few and stable, and the module is heavy.
type ociSpec struct {
	Version  string     `json:"ociVersion"`
	Process  ociProcess `json:"process"`
	Root     ociRoot    `json:"root"`
	Hostname string     `json:"hostname"`
	Mounts   []ociMount `json:"mounts"`
	Linux    ociLinux   `json:"linux"`
}

type ociProcess struct {
	Terminal        bool            `json:"terminal"`
	User            ociUser         `json:"user"`
	Args            []string        `json:"args"`
	Env             []string        `json:"env"`
	Cwd             string          `json:"cwd"`
	Capabilities    ociCapabilities `json:"capabilities"`
	Rlimits         []ociRlimit     `json:"rlimits"`
	NoNewPrivileges bool            `json:"noNewPrivileges"`
}

type ociUser struct {
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
}

type ociCapabilities struct {
	Bounding    []string `json:"bounding"`
	Effective   []string `json:"effective"`
	Inheritable []string `json:"inheritable"`
	Permitted   []string `json:"permitted"`
	Ambient     []string `json:"ambient"`
}

type ociRlimit struct {
	Type string `json:"type"`
	Hard uint64 `json:"hard"`
	Soft uint64 `json:"soft"`
}

type ociRoot struct {
	Path     string `json:"path"`
	Readonly bool   `json:"readonly"`
}

type ociMount struct {
	Destination string   `json:"destination"`
	Type        string   `json:"type"`
	Source      string   `json:"source"`
	Options     []string `json:"options"`
}

type ociLinux struct {
	UIDMappings   []ociIDMap     `json:"uidMappings,omitempty"`
	GIDMappings   []ociIDMap     `json:"gidMappings,omitempty"`
	Devices       []ociDevice    `json:"devices"`
	CgroupsPath   string         `json:"cgroupsPath"`
	Resources     ociResources   `json:"resources"`
	Namespaces    []ociNamespace `json:"namespaces"`
	MaskedPaths   []string       `json:"maskedPaths"`
	ReadonlyPaths []string       `json:"readonlyPaths"`
	Seccomp       *ociSeccomp    `json:"seccomp,omitempty"`
}

type ociResources struct {
	Memory  ociMemory      `json:"memory"`
	CPU     ociCPU         `json:"cpu"`
	Pids    ociPids        `json:"pids"`
	Devices []ociDeviceCgr `json:"devices"`
}

type ociMemory struct {
	Limit int64  `json:"limit"`
	Swap  *int64 `json:"swap,omitempty"`
}

type ociCPU struct {
	Shares uint64 `json:"shares,omitempty"`
	Quota  int64  `json:"quota"`
	Period uint64 `json:"period"`
}

// cpuShares is the containers' CPU weight (cgroup v1 cpu.shares; runc maps
// it to cpu.weight on v2): an eighth of a normal process's 1024, so that
// when tor and functions want the CPU at once, tor gets it; the quota
// still bounds what a function takes when nobody else wants it.
const cpuShares = 128

type ociPids struct {
	Limit int64 `json:"limit"`
}

type ociIDMap struct {
	ContainerID uint32 `json:"containerID"`
	HostID      uint32 `json:"hostID"`
	Size        uint32 `json:"size"`
}

type ociDevice struct {
	Path     string `json:"path"`
	Type     string `json:"type"`
	Major    int64  `json:"major"`
	Minor    int64  `json:"minor"`
	FileMode uint32 `json:"fileMode"`
	UID      uint32 `json:"uid"`
	GID      uint32 `json:"gid"`
}

type ociDeviceCgr struct {
	Allow  bool   `json:"allow"`
	Type   string `json:"type,omitempty"`
	Major  *int64 `json:"major,omitempty"`
	Minor  *int64 `json:"minor,omitempty"`
	Access string `json:"access"`
}

type ociNamespace struct {
	Type string `json:"type"`
}

type ociSeccomp struct {
	DefaultAction string           `json:"defaultAction"`
	Architectures []string         `json:"architectures"`
	Syscalls      []ociSyscallRule `json:"syscalls"`
}

type ociSyscallRule struct {
	Names    []string     `json:"names"`
	Action   string       `json:"action"`
	ErrnoRet *uint        `json:"errnoRet,omitempty"`
	Args     []ociSyscArg `json:"args,omitempty"`
}

type ociSyscArg struct {
	Index    uint   `json:"index"`
	Value    uint64 `json:"value"`
	ValueTwo uint64 `json:"valueTwo"`
	Op       string `json:"op"`
}

const cpuPeriod = 100_000 // µs

// buildSpec returns the container configuration for one instance.
func (s *Sandbox) buildSpec(id string, l Limits) *ociSpec {
	// RLIMIT_CPU is a backstop only: bentod stops an invocation at its
	// CPU-time limit itself, and a container can use no more than its
	// quota over its lifetime.
	cpuSecs := uint64(math.Ceil(l.CPUTime.Seconds()+l.CPU*l.Lifetime.Seconds())) + 2
	spec := &ociSpec{
		Version: "1.0.2",
		Process: ociProcess{
			User: ociUser{UID: 65534, GID: 65534},
			Args: []string{"/" + runnerName},
			Env: []string{
				"PATH=/",
				// The Go runtime collects garbage harder as it nears the
				// cgroup limit instead of being OOM-killed early.
				"GOMEMLIMIT=" + strconv.FormatInt(l.Memory*7/8, 10),
				"GOMAXPROCS=" + strconv.Itoa(max(1, int(math.Ceil(l.CPU)))),
				"GOTRACEBACK=none",
			},
			Cwd:          "/",
			Capabilities: ociCapabilities{Bounding: []string{}, Effective: []string{}, Inheritable: []string{}, Permitted: []string{}, Ambient: []string{}},
			Rlimits: []ociRlimit{
				{Type: "RLIMIT_NOFILE", Hard: 64, Soft: 64},
				{Type: "RLIMIT_CORE", Hard: 0, Soft: 0},
				// Backstop for the CPU-time limit bentod enforces itself.
				{Type: "RLIMIT_CPU", Soft: cpuSecs, Hard: cpuSecs + 1},
			},
			NoNewPrivileges: true,
		},
		Root:     ociRoot{Path: s.rootfs, Readonly: true},
		Hostname: "bento",
		Mounts: []ociMount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "noexec", "strictatime", "mode=755", "size=64k"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{
				"nosuid", "nodev", "noexec", "mode=1777", "size=" + strconv.FormatInt(max(l.Storage, 4096), 10), "nr_inodes=1024"}},
		},
		Linux: ociLinux{
			CgroupsPath: path.Join(s.place.parent(), id),
			Resources: ociResources{
				Memory:  ociMemory{Limit: l.Memory},
				CPU:     ociCPU{Shares: cpuShares, Quota: max(1000, int64(math.Round(l.CPU*cpuPeriod))), Period: cpuPeriod},
				Pids:    ociPids{Limit: int64(l.Processes)},
				Devices: deviceRules(),
			},
			Devices: devices(),
			Namespaces: []ociNamespace{
				{Type: "pid"}, {Type: "network"}, {Type: "ipc"}, {Type: "uts"}, {Type: "mount"}, {Type: "cgroup"},
			},
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
				"/proc/interrupts", "/proc/meminfo", "/proc/cpuinfo", "/proc/stat", "/proc/loadavg",
				"/proc/uptime", "/proc/diskstats", "/proc/net", "/sys/firmware",
				// The host's activity, which no namespace divides (a
				// python function reads /proc): softirqs counts the
				// NICs' packets per CPU as they come, the others its
				// memory, scheduling, pressure, locks and open files.
				"/proc/softirqs", "/proc/vmstat", "/proc/zoneinfo", "/proc/buddyinfo",
				"/proc/schedstat", "/proc/pressure", "/proc/locks", "/proc/swaps",
				"/proc/sys/fs/file-nr", "/proc/sys/fs/inode-nr", "/proc/sys/fs/dentry-state",
				// runc always adds these devices; masked, each is /dev/null.
				"/dev/full", "/dev/random", "/dev/tty",
			},
			ReadonlyPaths: []string{
				"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
			},
			Seccomp: seccompProfile(),
		},
	}
	if l.Image == ImagePython && s.python != nil {
		p := &spec.Process
		// -I: no environment variables, no user site, no script directory
		// on the path; -S: no site module (the driver sets the path); -B:
		// no .pyc files written (the root is read-only anyway).
		p.Args = []string{s.python.Binary, "-I", "-S", "-B", driverPath}
		p.Env = []string{"PATH=/usr/bin", "LANG=C.UTF-8"}
		spec.Mounts = append(spec.Mounts, s.python.ociMounts()...)
		spec.Linux.Seccomp = pythonSeccompProfile()
	}
	if s.userns {
		// A user namespace: the runner's uid 65534 inside is an unprivileged
		// uid of a range no one on the host uses; root inside (which nothing
		// runs as) is no one outside either.
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, ociNamespace{Type: "user"})
		spec.Linux.UIDMappings = []ociIDMap{{ContainerID: 0, HostID: UserNSBase, Size: 65536}}
		spec.Linux.GIDMappings = []ociIDMap{{ContainerID: 0, HostID: UserNSBase, Size: 65536}}
		if s.mapUID >= 0 {
			// bentod gave up root: an unprivileged runtime maps one ID,
			// bentod's own, and must map its root (the runtime's init
			// becomes root in the namespace first). The runner runs as
			// that root: no capabilities (an empty bounding set, no new
			// privileges), a read-only root file system, seccomp.
			spec.Linux.UIDMappings = []ociIDMap{{ContainerID: 0, HostID: uint32(s.mapUID), Size: 1}}
			spec.Linux.GIDMappings = []ociIDMap{{ContainerID: 0, HostID: uint32(s.mapGID), Size: 1}}
			spec.Process.User = ociUser{UID: 0, GID: 0}
		}
	}
	if s.memsw {
		swap := l.Memory // memory+swap equal to memory: no swap
		spec.Linux.Resources.Memory.Swap = &swap
	}
	return spec
}

// Limits are the resources one container gets.
type Limits struct {
	Memory    int64
	CPU       float64
	CPUTime   time.Duration
	Lifetime  time.Duration
	Processes int
	Storage   int64
	// Image is the manifest's image: ImagePython runs Debian's CPython
	// with the driver instead of bento-runner.
	Image string
}

// UserNSBase is the first host ID of the range containers' IDs map to.
// The runner runs as 65534 inside, UserNSBase+65534 outside.
const UserNSBase = 0x30000000

// The only devices in a container: /dev/null, /dev/zero and /dev/urandom.
var allowedDevices = []struct {
	name         string
	major, minor int64
}{{"null", 1, 3}, {"zero", 1, 5}, {"urandom", 1, 9}}

func devices() []ociDevice {
	var out []ociDevice
	for _, d := range allowedDevices {
		out = append(out, ociDevice{Path: "/dev/" + d.name, Type: "c", Major: d.major, Minor: d.minor, FileMode: 0o666})
	}
	return out
}

// deviceRules denies every device in the cgroup, then allows the three.
func deviceRules() []ociDeviceCgr {
	out := []ociDeviceCgr{{Allow: false, Access: "rwm"}}
	for _, d := range allowedDevices {
		out = append(out, ociDeviceCgr{Allow: true, Type: "c", Major: &d.major, Minor: &d.minor, Access: "rw"})
	}
	return out
}
