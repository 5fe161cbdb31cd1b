// Package sandbox runs each function instance in its own container through
// an OCI runtime (runc by default; crun or runsc by configuration). It
// writes the bundle — read-only root holding only the runner, empty network
// namespace, size-limited /tmp, cgroup limits, no capabilities,
// no_new_privs, a seccomp allow-list, rlimits — starts the container
// detached with the host-API socket as fd 3, reaps it as a child subreaper,
// reads its cgroup counters, and removes every trace of it.
package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	runnerName   = "bento-runner"
	cgroupParent = "bento"
)

// Config configures a Sandbox.
type Config struct {
	Runtime    string // runtime binary (path or name in PATH)
	StateDir   string // runtime state (--root) and bundles live here
	RunnerPath string // the static bento-runner binary
	// NoUserNS turns the containers' user namespace off (for kernels or
	// setups that cannot map IDs); on by default where the kernel allows.
	NoUserNS bool
	// DaemonMemoryMax is bentod's own hard memory ceiling, written to its
	// leaf cgroup when its cgroup v2 is delegated (the containers are then
	// below the service's cgroup, and the service's MemoryMax= bounds
	// them too); 0 for none.
	DaemonMemoryMax int64
	// Python prepares the python image (FindPython): its mount targets in
	// the shared root and the driver.
	Python *PythonImage
}

// Sandbox starts and tracks containers.
type Sandbox struct {
	runtime string
	state   string // --root for the runtime
	bundles string
	rootfs  string
	memsw   bool
	userns  bool // containers get a user namespace
	// mapUID and mapGID, once bentod gave up root (HandOver), are its
	// IDs, to which each container's root is mapped; -1 before.
	mapUID, mapGID int
	place          Placement
	cgroot         string // the cgroup file system's mount point
	pyMu           sync.Mutex
	python         *PythonImage // nil until the image is offered
	// WeightErr is why the containers' parent cgroup could not be given a
	// low CPU weight (nil when it was).
	WeightErr error
}

// New prepares the shared read-only root filesystem and makes the calling
// process a child subreaper, so that detached containers are reparented to
// it and their exit status can be collected.
func New(cfg Config) (*Sandbox, error) {
	rt, err := exec.LookPath(cfg.Runtime)
	if err != nil {
		return nil, fmt.Errorf("OCI runtime %q not found: %w (install it, e.g. apt-get install runc, or set RuntimePath)", cfg.Runtime, err)
	}
	if cfg.RunnerPath == "" {
		return nil, errors.New("no runner binary configured")
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("becoming a child subreaper: %w", err)
	}
	s := &Sandbox{
		runtime: rt,
		state:   filepath.Join(cfg.StateDir, "runtime"),
		bundles: filepath.Join(cfg.StateDir, "bundles"),
		rootfs:  filepath.Join(cfg.StateDir, "rootfs"),
		mapUID:  -1,
		mapGID:  -1,
	}
	for _, d := range []string{s.state, s.bundles, s.rootfs} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	if err := s.prepareRootfs(cfg.RunnerPath); err != nil {
		return nil, err
	}
	if cfg.Python != nil {
		if err := s.preparePython(cfg.Python); err != nil {
			return nil, fmt.Errorf("preparing the python image: %w", err)
		}
		s.python = cfg.Python
	}
	// Where the containers' cgroups go: below bentod's own cgroup when it
	// is a delegated cgroup v2, else at /bento.
	env := hostCgroupEnv(cfg.DaemonMemoryMax)
	s.place, s.cgroot = place(env), env.root
	// Best effort (a machine may not let us): the quotas bound functions
	// either way.
	s.WeightErr = s.place.yieldToTor(s.cgroot)
	s.memsw = swapLimitable(s.cgroot, s.place.V2)
	s.userns = userNamespaces()
	if s.userns && !cfg.NoUserNS {
		if err := searchable(cfg.StateDir); err != nil {
			return nil, err
		}
	} else {
		s.userns = false
	}
	return s, nil
}

// pythonReady prepares the python image if bentod started without it
// (a policy reloaded to offer it): its mounts worked out, their targets
// and the driver written into the shared root.
func (s *Sandbox) pythonReady() error {
	s.pyMu.Lock()
	defer s.pyMu.Unlock()
	if s.python != nil {
		return nil
	}
	img, err := FindPython()
	if err != nil {
		return err
	}
	if err := s.preparePython(img); err != nil {
		return fmt.Errorf("preparing the python image: %w", err)
	}
	s.python = img
	return nil
}

// Placement tells where the containers' cgroups are, and why.
func (s *Sandbox) Placement() Placement { return s.place }

// prepareRootfs lays out the image: the runner and empty mount points.
func (s *Sandbox) prepareRootfs(runner string) error {
	if err := os.Chmod(s.rootfs, 0o755); err != nil {
		return err
	}
	for _, d := range []string{"proc", "dev", "tmp"} {
		if err := os.MkdirAll(filepath.Join(s.rootfs, d), 0o755); err != nil {
			return err
		}
	}
	// runc gives a tmpfs the mode of the directory it is mounted on: make
	// /tmp writable by the function's unprivileged user.
	if err := os.Chmod(filepath.Join(s.rootfs, "tmp"), 0o1777|os.ModeSticky); err != nil {
		return err
	}
	src, err := os.Open(runner)
	if err != nil {
		return fmt.Errorf("runner binary: %w (build it with: CGO_ENABLED=0 go build -o bin/ ./cmd/bento-runner)", err)
	}
	defer src.Close()
	tmp := filepath.Join(s.rootfs, "."+runnerName+".tmp")
	dst, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	if err := dst.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(s.rootfs, runnerName))
}

// Container is one running instance's container.
type Container struct {
	ID     string
	Pid    int
	s      *Sandbox
	bundle string
	cg     cgroupPaths

	exited  chan struct{}
	status  unix.WaitStatus
	once    sync.Once
	out     *tailBuffer
	drained <-chan struct{} // the output pipe reached its end
}

// StartNice is how many steps below bentod's own priority the runtime
// starts and removes containers, and the containers' processes run (up to
// nice 19).
// Starting a container is background work (the runtime's own process runs
// in bentod's cgroup until the container has its own): it yields the CPU
// to the calls bentod is serving. With the cpu controller, the
// containers' CPU share comes from their cgroup's weight and quota; where
// it is not delegated to bentod, this priority is what keeps functions
// behind bentod and tor.
const StartNice = 10

// runLowered runs cmd from an OS thread of its own, its priority lowered
// by steps (a child inherits the priority of the thread that created it,
// and Linux keeps one per thread). The thread is never handed back to the
// Go runtime: it ends with the goroutine, and its priority with it.
func runLowered(cmd *exec.Cmd, steps int) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked, on purpose
		tid := unix.Gettid()
		// getpriority(2) returns 20 - nice; setpriority takes the nice
		// value and keeps it within -20..19.
		if raw, err := unix.Getpriority(unix.PRIO_PROCESS, tid); err == nil {
			_ = unix.Setpriority(unix.PRIO_PROCESS, tid, 20-raw+steps)
		}
		errc <- cmd.Run()
	}()
	return <-errc
}

// OutputKept bounds what is kept of a container's standard output and
// error (and the runtime's own messages): the last bytes only. A container
// that writes endlessly costs a pipe and a small buffer, never disk.
const OutputKept = 8 << 10

// Start creates and starts a container. hostAPI becomes the container's fd
// 3; the runtime's and the runner's standard output and error go to a
// pipe of which bentod keeps the last OutputKept bytes (Container.Output).
func (s *Sandbox) Start(ctx context.Context, id string, l Limits, hostAPI *os.File) (*Container, error) {
	if !validID(id) {
		return nil, fmt.Errorf("invalid container id %q", id)
	}
	if l.Image == ImagePython {
		if err := s.pythonReady(); err != nil {
			return nil, err
		}
	}
	bundle := filepath.Join(s.bundles, id)
	if err := os.MkdirAll(bundle, 0o700); err != nil {
		return nil, err
	}
	cfg, err := json.Marshal(s.buildSpec(id, l))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), cfg, 0o600); err != nil {
		return nil, err
	}
	pidFile := filepath.Join(bundle, "pid")
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	out := newTailBuffer(OutputKept)
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		defer pr.Close()
		_, _ = io.Copy(out, pr)
	}()
	cmd := exec.CommandContext(ctx, s.runtime, "--root", s.state, "run", "--detach",
		"--bundle", bundle, "--pid-file", pidFile, "--preserve-fds", "1", id)
	cmd.ExtraFiles = []*os.File{hostAPI}
	// The pipe's write end is an *os.File, handed to the runtime as it is:
	// no copying goroutine of ours keeps Wait from returning while the
	// detached container holds it.
	cmd.Stdout = pw
	cmd.Stderr = pw
	err = runLowered(cmd, StartNice)
	pw.Close() // only the container holds it now
	if err != nil {
		s.remove(id, bundle)
		select {
		case <-drained:
		case <-time.After(200 * time.Millisecond):
		}
		return nil, fmt.Errorf("%s run: %v: %s", filepath.Base(s.runtime), err, lastLines(out.String()))
	}
	pidData, err := os.ReadFile(pidFile)
	if err != nil {
		s.remove(id, bundle)
		return nil, fmt.Errorf("reading container pid: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(pidData)))
	if err != nil {
		s.remove(id, bundle)
		return nil, fmt.Errorf("bad container pid %q", pidData)
	}
	c := &Container{ID: id, Pid: pid, s: s, bundle: bundle, cg: s.place.cgroupsFor(s.cgroot, id), exited: make(chan struct{}), out: out, drained: drained}
	go c.reap()
	return c, nil
}

// reap waits for the container's init process, which is our child once the
// runtime has exited (we are its subreaper).
func (c *Container) reap() {
	for {
		_, err := unix.Wait4(c.Pid, &c.status, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			// Not our child (should not happen): poll until it is gone.
			for unix.Kill(c.Pid, 0) == nil {
				time.Sleep(50 * time.Millisecond)
			}
		}
		break
	}
	close(c.exited)
}

// Exited is closed when the container's process has ended.
func (c *Container) Exited() <-chan struct{} { return c.exited }

// Status describes how the container's process ended; valid after Exited.
func (c *Container) Status() string {
	ws := c.status
	switch {
	case ws.Exited():
		return fmt.Sprintf("exit status %d", ws.ExitStatus())
	case ws.Signaled():
		return "killed by " + unix.SignalName(ws.Signal())
	}
	return "ended"
}

// Signal returns the signal that ended the process, or 0.
func (c *Container) Signal() syscall.Signal {
	if c.status.Signaled() {
		return c.status.Signal()
	}
	return 0
}

// Kill stops the container's processes at once. Killing the init of a pid
// namespace kills everything in it.
func (c *Container) Kill() {
	select {
	case <-c.exited:
		return
	default:
	}
	_ = unix.Kill(c.Pid, unix.SIGKILL)
}

// Stats reads the container's cgroup counters.
func (c *Container) Stats() Stats { return c.cg.stats() }

// Remove kills the container if needed, waits for it, and deletes its
// runtime state, cgroups and bundle.
func (c *Container) Remove() error {
	c.Kill()
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("container %s did not exit after SIGKILL", c.ID)
	}
	var err error
	c.once.Do(func() { err = c.s.remove(c.ID, c.bundle) })
	return err
}

func (s *Sandbox) remove(id, bundle string) error {
	// Removing a container is background work too.
	var buf bytes.Buffer
	cmd := exec.Command(s.runtime, "--root", s.state, "delete", "--force", id)
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := runLowered(cmd, StartNice)
	out := buf.Bytes()
	if err != nil && !strings.Contains(string(out), "does not exist") {
		err = fmt.Errorf("%s delete %s: %v: %s", filepath.Base(s.runtime), id, err, strings.TrimSpace(string(out)))
	} else {
		err = nil
	}
	s.place.cgroupsFor(s.cgroot, id).remove()
	if rerr := os.RemoveAll(bundle); rerr != nil && err == nil {
		err = rerr
	}
	return err
}

// List returns the ids of containers the runtime knows in our state dir.
func (s *Sandbox) List() ([]string, error) {
	out, err := exec.Command(s.runtime, "--root", s.state, "list", "--quiet").Output()
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(out)), nil
}

// Reap removes containers left by an earlier bentod (for example one
// killed with SIGKILL) and returns how many it removed.
func (s *Sandbox) Reap() (int, error) {
	ids, err := s.Stale()
	if err != nil {
		return 0, err
	}
	return s.ReapIDs(ids), nil
}

// Stale returns the containers the runtime or the bundle directory know
// now: taken when bentod starts, before it starts any of its own, it is
// what an earlier bentod left.
func (s *Sandbox) Stale() ([]string, error) {
	ids, err := s.List()
	if err != nil {
		return nil, err
	}
	ents, _ := os.ReadDir(s.bundles)
	seen := map[string]bool{}
	for _, id := range ids {
		seen[id] = true
	}
	for _, e := range ents {
		if validID(e.Name()) {
			seen[e.Name()] = true
		}
	}
	out := make([]string, 0, len(seen))
	for id := range seen {
		out = append(out, id)
	}
	return out, nil
}

// ReapIDs removes the given containers (from Stale) and returns how many
// it removed.
func (s *Sandbox) ReapIDs(ids []string) int {
	n := 0
	for _, id := range ids {
		if err := s.remove(id, filepath.Join(s.bundles, id)); err == nil {
			n++
		}
	}
	return n
}

func validID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// Output returns the last bytes the container and its runtime wrote to
// standard output and error; once the container has exited, all of them.
func (c *Container) Output() string {
	select {
	case <-c.exited:
		select {
		case <-c.drained:
		case <-time.After(time.Second):
		}
	default:
	}
	return c.out.String()
}

// lastLines returns the last three lines of s, joined.
func lastLines(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > 3 {
		lines = lines[len(lines)-3:]
	}
	return strings.Join(lines, "; ")
}

// tailBuffer keeps the last n bytes written to it.
type tailBuffer struct {
	mu    sync.Mutex
	buf   []byte
	n     int
	total int64
}

func newTailBuffer(n int) *tailBuffer { return &tailBuffer{n: n} }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.total += int64(len(p))
	if len(p) >= t.n {
		t.buf = append(t.buf[:0], p[len(p)-t.n:]...)
		return len(p), nil
	}
	if over := len(t.buf) + len(p) - t.n; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	t.buf = append(t.buf, p...)
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// userNamespaces reports whether the kernel lets us create user namespaces.
func userNamespaces() bool {
	b, err := os.ReadFile("/proc/sys/user/max_user_namespaces")
	if err != nil {
		return false
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return err == nil && n > 0
}

// searchable makes dir searchable by others (0711: they may pass through,
// not list) and checks that every directory above it is too: a container's
// init runs as an unprivileged ID of its user namespace and must reach the
// root filesystem through this path.
func searchable(dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		return err
	}
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if st.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("containers run in a user namespace and must reach %s, but %s is mode %o: make it searchable (chmod o+x %s) or move DataDirectory", dir, p, st.Mode().Perm(), p)
		}
		if p == "/" {
			return nil
		}
	}
}
