// Package privs narrows the privileges bentod keeps. bentod runs as root
// because runc needs to create namespaces, cgroups and mounts; it does not
// need to load kernel modules, set the clock, use raw sockets, reboot or
// read the kernel log. Drop removes every capability outside the list the
// container runtime needs, from bentod's own sets and from the bounding
// set, so runc and everything below it can never regain them.
package privs

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Needed are the capabilities bentod and runc use: file ownership and
// access for bundles and root filesystems, setuid/setgid and ID maps for
// the user namespace, mount and namespace setup (SYS_ADMIN, SYS_CHROOT),
// devices (MKNOD), signals to containers (KILL), rlimits (SYS_RESOURCE),
// reading other processes' /proc entries (SYS_PTRACE), and binding a low
// ListenAddress port (NET_BIND_SERVICE).
var Needed = []int{
	unix.CAP_CHOWN, unix.CAP_DAC_OVERRIDE, unix.CAP_DAC_READ_SEARCH, unix.CAP_FOWNER, unix.CAP_FSETID,
	unix.CAP_KILL, unix.CAP_SETGID, unix.CAP_SETUID, unix.CAP_SETPCAP, unix.CAP_NET_BIND_SERVICE,
	unix.CAP_NET_ADMIN, unix.CAP_SYS_CHROOT, unix.CAP_SYS_PTRACE, unix.CAP_SYS_ADMIN, unix.CAP_SYS_RESOURCE,
	unix.CAP_MKNOD, unix.CAP_SETFCAP,
}

// EnvDropped marks a process that Drop re-executed.
const EnvDropped = "BENTO_PRIVS_DROPPED"

// Drop keeps only the capabilities in keep. Capabilities belong to
// threads, and a Go program has many, so Drop narrows the bounding set of
// one locked thread and re-executes the program from it: the new process
// starts, on every thread, with only the kept capabilities, and nothing it
// runs can regain the others. It returns only in the re-executed process
// (or at once for a process that is not root).
func Drop(keep []int) error {
	if os.Geteuid() != 0 || os.Getenv(EnvDropped) == "1" {
		return nil
	}
	want := map[int]bool{}
	for _, c := range keep {
		want[c] = true
	}
	runtime.LockOSThread() // never unlocked: this thread execs
	last := lastCap()
	for c := 0; c <= last; c++ {
		if want[c] {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && err != unix.EINVAL {
			runtime.UnlockOSThread()
			return fmt.Errorf("dropping capability %d from the bounding set: %w", c, err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	env := append(os.Environ(), EnvDropped+"=1")
	return syscall.Exec(self, os.Args, env)
}

// Bounding returns the capability bounding set of pid (from /proc).
func Bounding(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapBnd:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, fmt.Errorf("no CapBnd in /proc/%d/status", pid)
}

// lastCap is the highest capability the kernel knows.
func lastCap() int {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 40
	}
	n := 0
	for _, c := range strings.TrimSpace(string(b)) {
		n = n*10 + int(c-'0')
	}
	return n
}
