package sandbox

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Rootless tells whether containers can run once bentod has given up root,
// and if not, why: the runtime must be able to put them in cgroups of their
// own (a delegated cgroup v2 subtree it can write to) and to make user
// namespaces without privileges.
func (s *Sandbox) Rootless() error {
	switch {
	case !s.place.V2:
		return errors.New("this host's cgroups are v1, which an unprivileged runtime cannot place containers in (their memory, CPU and process limits would not apply)")
	case s.place.Mode != PlaceDelegated:
		return fmt.Errorf("bentod's cgroup is not delegated to it (%s); run bentod from its systemd unit, which sets Delegate=yes", s.place.Why)
	case !s.userns:
		return errors.New("containers get no user namespace here (NoUserNS, or the kernel has none), and without one they need root")
	}
	if b, err := os.ReadFile("/proc/sys/kernel/unprivileged_userns_clone"); err == nil && strings.TrimSpace(string(b)) == "0" {
		return errors.New("the kernel refuses user namespaces to unprivileged users (sysctl kernel.unprivileged_userns_clone = 0)")
	}
	return nil
}

// HandOver prepares the sandbox for a bentod that gives up root for
// uid:gid right after: the delegated cgroups and the runtime's state,
// bundles and root file system become theirs, and every container's user
// namespace maps its root, and only it, to uid:gid (an unprivileged
// runtime can map no other ID). Call it only when Rootless is nil.
func (s *Sandbox) HandOver(uid, gid int) error {
	own := filepath.Join(s.cgroot, s.place.Own)
	// The runtime moves each container's first process from bentod's
	// leaf to its cgroup below instances: that takes write access to
	// cgroup.procs of both and of their common parent, and creating
	// cgroups below instances, access to that directory.
	paths := []string{
		own, filepath.Join(own, "cgroup.procs"),
		filepath.Join(own, daemonLeaf), filepath.Join(own, daemonLeaf, "cgroup.procs"),
	}
	inst := filepath.Join(own, instancesDir)
	err := filepath.WalkDir(inst, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || strings.HasPrefix(d.Name(), "cgroup.") || isLimitFile(d.Name()) {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("handing the containers' cgroups to bentod's user: %w", err)
	}
	for _, p := range paths {
		if err := os.Lchown(p, uid, gid); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("handing the containers' cgroups to bentod's user: %w", err)
		}
	}
	for _, d := range []string{s.state, s.bundles, s.rootfs} {
		if err := ChownTree(d, uid, gid); err != nil {
			return err
		}
	}
	s.mapUID, s.mapGID = uid, gid
	return nil
}

// isLimitFile reports whether a cgroup v2 file name is one the runtime
// writes to set a container's limits.
func isLimitFile(name string) bool {
	for _, prefix := range []string{"memory.", "pids.", "cpu.", "io.", "cpuset."} {
		if strings.HasPrefix(name, prefix) {
			return true
		}
	}
	return false
}

// ChownTree gives dir and everything below it to uid:gid, without
// following symbolic links.
func ChownTree(dir string, uid, gid int) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := os.Lchown(p, uid, gid); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("giving %s to uid %d: %w", p, uid, err)
		}
		return nil
	})
}

// BecomeUser gives up root for uid:gid and their supplementary groups, on
// every thread: the syscall package's calls apply to all of the process's
// threads (golang.org/x/sys/unix's would change the calling thread's
// alone), and BecomeUser checks every thread afterwards. The capabilities
// go with root: nothing bentod runs later holds any.
func BecomeUser(uid, gid int, groups []int) error {
	if err := syscall.Setgroups(groups); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setresgid(gid, gid, gid); err != nil {
		return fmt.Errorf("setresgid %d: %w", gid, err)
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		return fmt.Errorf("setresuid %d: %w", uid, err)
	}
	// The process's dumpable flag falls on setuid, which leaves /proc/self
	// root's; the runtime and bentod's own cgroup code read it.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_DUMPABLE): %w", err)
	}
	return everyThreadIs(uid, gid)
}

// everyThreadIs checks /proc/self/task/*/status: every thread's real,
// effective, saved and file-system IDs are uid and gid, and no thread
// holds a capability.
func everyThreadIs(uid, gid int) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	wantUID := fmt.Sprintf("%d\t%d\t%d\t%d", uid, uid, uid, uid)
	wantGID := fmt.Sprintf("%d\t%d\t%d\t%d", gid, gid, gid, gid)
	for _, t := range tasks {
		b, err := os.ReadFile(filepath.Join("/proc/self/task", t.Name(), "status"))
		if err != nil {
			continue // the thread ended
		}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(line, ":")
			v = strings.TrimSpace(v)
			switch {
			case k == "Uid" && v != wantUID, k == "Gid" && v != wantGID:
				return fmt.Errorf("thread %s kept other IDs: %s %s", t.Name(), k, v)
			case (k == "CapEff" || k == "CapPrm") && strings.Trim(v, "0") != "":
				return fmt.Errorf("thread %s kept capabilities: %s %s", t.Name(), k, v)
			}
		}
	}
	return nil
}
