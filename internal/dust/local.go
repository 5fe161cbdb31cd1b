package dust

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/torbento/bento/internal/atomicfile"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/torctl"
)

// Mote is a local mote, as recorded in its directory (mote.json).
type Mote struct {
	Name       string    `json:"name"`
	Dir        string    `json:"dir"`
	Started    time.Time `json:"started"`
	EndsAt     time.Time `json:"ends_at"`
	DrainAt    time.Time `json:"drain_at"`
	Ports      Ports     `json:"ports"`
	Supervisor int       `json:"supervisor_pid,omitempty"`
	TorPID     int       `json:"tor_pid,omitempty"`
	BentodPID  int       `json:"bentod_pid,omitempty"`
	Onion      string    `json:"onion,omitempty"` // ADDRESS.onion:PORT
	Relay      string    `json:"relay,omitempty"` // fingerprint
	State      string    `json:"state"`           // starting, up, ending, failed
	Error      string    `json:"error,omitempty"`
	Tor        string    `json:"tor"`    // binaries the supervisor runs
	Bentod     string    `json:"bentod"` //
	// OwnNetns is set for a mote joining a given network: it runs in a
	// network namespace of its own (netns.go), named by Netns once up.
	OwnNetns bool   `json:"own_netns,omitempty"`
	Netns    string `json:"netns,omitempty"`
}

// Mote states.
const (
	StateStarting = "starting"
	StateUp       = "up"
	StateEnding   = "ending"
	StateFailed   = "failed"
)

const (
	recordFile = "mote.json"
	// Grace is how long after its end a mote's processes are given: the
	// box ends its instances at the end itself, then both programs stop.
	Grace = 5 * time.Second
)

func readMote(dir string) (*Mote, error) {
	b, err := os.ReadFile(filepath.Join(dir, recordFile))
	if err != nil {
		return nil, err
	}
	if len(b) > 1<<16 {
		return nil, fmt.Errorf("%s: too large", filepath.Join(dir, recordFile))
	}
	var m Mote
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, recordFile), err)
	}
	return &m, nil
}

func (m *Mote) save() error {
	b, _ := json.MarshalIndent(m, "", "  ")
	return atomicfile.Write(filepath.Join(m.Dir, recordFile), b, 0o600)
}

// UpOptions configure Up.
type UpOptions struct {
	StateDir     string        // where motes live
	Template     *Template     //
	Lifetime     time.Duration // overrides the template's (0: keep)
	NetworkTorrc string        // torrc lines of the network to join (DirAuthority ...)
	Public       bool          // join the public Tor network (no NetworkTorrc)
	// OwnNetns runs a mote joining a given network in a network namespace
	// of its own (netns.go); bento dust up sets it unless told not to
	// (--netns=false: without root, or to debug).
	OwnNetns    bool
	Tor, Bentod string        // binaries (default: tor from PATH, bentod beside Self)
	Self        string        // the bento binary, run as the supervisor
	Wait        time.Duration // how long Up waits for the mote to be up (default 3 minutes)
}

// Up spawns a local mote: it renders the configuration, checks it, starts
// the supervisor detached and waits until the box's onion service is up.
func Up(ctx context.Context, o UpOptions) (*Mote, error) {
	t := o.Template
	if !o.Public && !strings.Contains(o.NetworkTorrc, "DirAuthority") {
		return nil, errors.New("give the Tor network to join (--network-torrc: its DirAuthority lines, for a test network), or --public-network to join the public one")
	}
	if o.Public && o.NetworkTorrc != "" {
		return nil, errors.New("--public-network takes no --network-torrc")
	}
	if o.Lifetime > 0 {
		t.Lifetime = o.Lifetime
	}
	if t.Lifetime <= t.Drain {
		return nil, fmt.Errorf("lifetime %s is not longer than the drain period %s: the box would never take a function", t.Lifetime, t.Drain)
	}
	if o.Wait == 0 {
		o.Wait = 3 * time.Minute
	}
	if o.Tor == "" {
		o.Tor = "tor"
	}
	tor, err := exec.LookPath(o.Tor)
	if err != nil {
		return nil, fmt.Errorf("tor: %w (install Debian's tor package)", err)
	}
	if o.Bentod == "" {
		o.Bentod = filepath.Join(filepath.Dir(o.Self), "bentod")
	}
	// Searchable (not readable) by others: bentod's containers run as an
	// unprivileged user that must reach the box's data directory below.
	if err := os.MkdirAll(o.StateDir, 0o711); err != nil {
		return nil, err
	}
	if err := searchable(o.StateDir); err != nil {
		return nil, err
	}
	var suffix [3]byte
	_, _ = rand.Read(suffix[:])
	name := t.Name + "-" + hex.EncodeToString(suffix[:])
	dir, err := filepath.Abs(filepath.Join(o.StateDir, name))
	if err != nil {
		return nil, err
	}
	ports, err := freePorts()
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC().Truncate(time.Second)
	m := &Mote{Name: name, Dir: dir, Started: now, EndsAt: now.Add(t.Lifetime), DrainAt: now.Add(t.Lifetime - t.Drain),
		Ports: ports, State: StateStarting, Tor: tor, Bentod: o.Bentod, OwnNetns: o.OwnNetns && !o.Public}
	if m.OwnNetns {
		// Checked here too, where the user sees the answer at once.
		if _, err := AuthorityPorts(o.NetworkTorrc); err != nil {
			return nil, fmt.Errorf("--network-torrc: %w", err)
		}
		if os.Geteuid() != 0 {
			return nil, errors.New("a local mote joining a given network runs in a network namespace of its own, which needs root: run as root, or with --netns=false to share this host's namespace")
		}
		if err := onlyLoopback(); err != nil {
			return nil, err
		}
	}
	bentorc := t.RenderBentorc(dir, ports, m.EndsAt)
	if _, err := policy.Parse("the template's bentorc", []byte(bentorc)); err != nil {
		return nil, err
	}
	for d, mode := range map[string]os.FileMode{dir: 0o711, filepath.Join(dir, "tor"): 0o700, filepath.Join(dir, "bentod"): 0o700} {
		if err := os.MkdirAll(d, mode); err != nil {
			return nil, err
		}
		if err := os.Chmod(d, mode); err != nil { // whatever the umask
			return nil, err
		}
	}
	files := map[string]string{
		"empty.torrc":    "",
		"tor/torrc":      t.RenderTorrc(dir, ports, o.NetworkTorrc),
		"bentod/bentorc": bentorc,
	}
	for f, content := range files {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(content), 0o600); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	if err := m.save(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "supervisor.log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	cmd := exec.Command(o.Self, "dust", "supervise", dir)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("starting the mote's supervisor: %w", err)
	}
	go func() { _ = cmd.Wait() }() // reaped if we are still here when it ends
	deadline := time.Now().Add(o.Wait)
	for {
		cur, err := readMote(dir)
		switch {
		case err == nil && cur.State == StateUp:
			return cur, nil
		case err == nil && cur.State == StateFailed:
			return cur, fmt.Errorf("mote %s failed to start: %s (logs in %s; bento dust down %s removes it)", name, cur.Error, dir, name)
		case errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("mote %s ended while starting", name)
		}
		if time.Now().After(deadline) {
			_ = Down(context.Background(), o.StateDir, name, time.Minute)
			return nil, fmt.Errorf("mote %s was not up within %s; it was taken down", name, o.Wait)
		}
		select {
		case <-ctx.Done():
			_ = Down(context.Background(), o.StateDir, name, time.Minute)
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// freePorts picks five free loopback ports.
func freePorts() (Ports, error) {
	var ps [5]int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := range ps {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return Ports{}, err
		}
		ls = append(ls, l)
		ps[i] = l.Addr().(*net.TCPAddr).Port
	}
	return Ports{OR: ps[0], Control: ps[1], Socks: ps[2], Bento: ps[3], Policy: ps[4]}, nil
}

// Supervise runs a mote from its directory until its end (or SIGTERM):
// tor, then bentod; at the end both stop and the directory is removed.
// It is the body of the detached `bento dust supervise DIR`.
func Supervise(dir string) error {
	// Children get SIGTERM if this thread goes (Pdeathsig is per thread).
	runtime.LockOSThread()
	m, err := readMote(dir)
	if err != nil {
		return err
	}
	m.Supervisor = os.Getpid()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	fail := func(why string) error {
		m.State, m.Error = StateFailed, why
		_ = m.save()
		return errors.New(why)
	}
	// A mote joining a given network gets a network namespace of its own
	// (this thread moves into it, so tor and bentod start there) and a
	// bridge carrying its Tor traffic to the network's.
	var br *bridge
	if m.OwnNetns {
		torrc, err := os.ReadFile(filepath.Join(dir, "tor", "torrc"))
		if err != nil {
			return fail("the mote's torrc: " + err.Error())
		}
		auth, err := AuthorityPorts(string(torrc))
		if err != nil {
			return fail("the mote's torrc: " + err.Error())
		}
		if err := onlyLoopback(); err != nil {
			return fail(err.Error())
		}
		outer, inner, err := enterNewNamespace()
		if err != nil {
			return fail(err.Error())
		}
		defer outer.Close()
		defer inner.Close()
		m.Netns = namespaceID(inner)
		p := m.Ports
		br = newBridge(outer, inner, []int{p.OR, p.Control, p.Socks, p.Bento, p.Policy}, func(format string, a ...any) { fmt.Printf(format+"\n", a...) })
		defer br.close()
		if err := br.forwardIn(p.OR); err != nil {
			return fail("forwarding the mote's ORPort: " + err.Error())
		}
		var dirPorts []int
		for i, port := range auth {
			if err := br.forwardOut(port); err != nil {
				return fail(fmt.Sprintf("forwarding the authorities' port %d: %v", port, err))
			}
			if i%2 == 1 { // each DirAuthority line: its orport=, then ADDRESS:DIRPORT
				dirPorts = append(dirPorts, port)
			}
		}
		if err := br.prime(dirPorts); err != nil {
			fmt.Printf("the network's consensus before tor starts: %v (its relays are forwarded as the mote's tor learns them)\n", err)
		}
		_ = m.save()
	}
	start := func(name string, args ...string) (*exec.Cmd, chan struct{}, error) {
		out, err := os.Create(filepath.Join(dir, filepath.Base(name)+".out"))
		if err != nil {
			return nil, nil, err
		}
		defer out.Close()
		cmd := exec.Command(name, args...)
		cmd.Stdout, cmd.Stderr = out, out
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
		if err := cmd.Start(); err != nil {
			return nil, nil, err
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		return cmd, done, nil
	}
	// tor never runs on a default configuration: an empty defaults file,
	// and the rendered torrc.
	tor, torDone, err := start(m.Tor, "--defaults-torrc", filepath.Join(dir, "empty.torrc"), "-f", filepath.Join(dir, "tor", "torrc"))
	if err != nil {
		return fail("starting tor: " + err.Error())
	}
	m.TorPID = tor.Process.Pid
	_ = m.save()
	var bentod *exec.Cmd
	bentodDone := make(chan struct{})
	stopAll := func() {
		m.State = StateEnding
		_ = m.save()
		if bentod != nil {
			stop(bentod, bentodDone, 30*time.Second)
		}
		stop(tor, torDone, 15*time.Second)
	}
	ctl := "127.0.0.1:" + strconv.Itoa(m.Ports.Control)
	if err := waitFor(60*time.Second, sigs, torDone, func() bool {
		c, err := net.DialTimeout("tcp", ctl, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}); err != nil {
		stopAll()
		return fail("tor: " + err.Error() + "; tor said: " + tail(filepath.Join(dir, "tor.out")))
	}
	if br != nil {
		fctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go br.follow(fctx, ctl, filepath.Join(dir, "tor", "control_auth_cookie"))
	}
	bentod, bentodDone, err = start(m.Bentod, "-f", filepath.Join(dir, "bentod", "bentorc"))
	if err != nil {
		stopAll()
		return fail("starting bentod: " + err.Error())
	}
	m.BentodPID = bentod.Process.Pid
	_ = m.save()
	host := filepath.Join(dir, "bentod", "onion_hostname")
	anyDone := make(chan struct{})
	go func() {
		select {
		case <-torDone:
		case <-bentodDone:
		}
		close(anyDone)
	}()
	if err := waitFor(2*time.Minute, sigs, anyDone, func() bool { _, err := os.Stat(host); return err == nil }); err != nil {
		stopAll()
		return fail("bentod's onion service: " + err.Error() + "; bentod said: " + tail(filepath.Join(dir, "bentod.out")))
	}
	b, _ := os.ReadFile(host)
	m.Onion = strings.TrimSpace(string(b)) + ":" + strconv.Itoa(m.Ports.Bento)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	if c, err := torctl.DialAuth(ctx, ctl, torctl.Auth{CookieFile: filepath.Join(dir, "tor", "control_auth_cookie")}); err == nil {
		if info, err := c.GetInfo(ctx, "fingerprint"); err == nil {
			m.Relay = strings.TrimSpace(info["fingerprint"])
		}
		c.Close()
	}
	cancel()
	m.State = StateUp
	if err := m.save(); err != nil {
		stopAll()
		return err
	}
	fmt.Printf("mote %s up: box %s beside relay %s, ends at %s\n", m.Name, m.Onion, m.Relay, m.EndsAt.Format(time.RFC3339))
	select {
	case <-time.After(time.Until(m.EndsAt.Add(Grace))):
		fmt.Printf("mote %s: its end has come\n", m.Name)
	case s := <-sigs:
		fmt.Printf("mote %s: %s, ending early\n", m.Name, s)
	case <-anyDone:
		stopAll()
		return fail("tor or bentod exited before the mote's end (see tor/notice.log, bentod.out)")
	}
	stopAll()
	return os.RemoveAll(dir)
}

// waitFor polls ok every 100 ms until it holds, the deadline passes, a
// signal comes or done closes.
func waitFor(d time.Duration, sigs <-chan os.Signal, done <-chan struct{}, ok func() bool) error {
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s", d)
		}
		select {
		case s := <-sigs:
			return fmt.Errorf("stopped by %s", s)
		case <-done:
			return errors.New("exited")
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// stop ends a child: SIGTERM, then SIGKILL after d.
func stop(cmd *exec.Cmd, done <-chan struct{}, d time.Duration) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(d):
		_ = cmd.Process.Kill()
		<-done
	}
}

// List returns the motes in stateDir, with Alive telling whether each
// one's supervisor still runs.
func List(stateDir string) ([]Listed, error) {
	ents, err := os.ReadDir(stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Listed
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		m, err := readMote(filepath.Join(stateDir, e.Name()))
		if err != nil {
			continue
		}
		out = append(out, Listed{Mote: *m, Alive: alive(m.Supervisor) && ownedBy(m.Supervisor, m.Dir)})
	}
	return out, nil
}

// Listed is a mote as List finds it.
type Listed struct {
	Mote
	Alive bool
}

func alive(pid int) bool {
	return pid > 0 && syscall.Kill(pid, 0) == nil
}

// Down ends a mote before its time: its supervisor stops tor and bentod
// and removes its directory. A mote whose supervisor is gone (it failed
// to start, or the machine restarted) is cleaned up here.
func Down(ctx context.Context, stateDir, name string, wait time.Duration) error {
	if !validMoteName(name) {
		return fmt.Errorf("no mote %q", name)
	}
	dir, err := filepath.Abs(filepath.Join(stateDir, name))
	if err != nil {
		return err
	}
	m, err := readMote(dir)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no mote %q in %s (bento dust ls)", name, stateDir)
	}
	if err != nil {
		return err
	}
	if alive(m.Supervisor) && ownedBy(m.Supervisor, dir) {
		_ = syscall.Kill(m.Supervisor, syscall.SIGTERM)
		deadline := time.Now().Add(wait)
		for alive(m.Supervisor) {
			if time.Now().After(deadline) {
				return fmt.Errorf("mote %s: its supervisor (pid %d) did not end within %s", name, m.Supervisor, wait)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	// Whatever is left (a failed start, a supervisor killed hard).
	for _, pid := range []int{m.BentodPID, m.TorPID} {
		if alive(pid) && ownedBy(pid, dir) {
			_ = syscall.Kill(pid, syscall.SIGTERM)
		}
	}
	return os.RemoveAll(dir)
}

// ownedBy reports whether process pid runs with dir in its command line:
// Down ends only the mote's own processes, never a reused pid.
func ownedBy(pid int, dir string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && strings.Contains(string(b), dir)
}

func validMoteName(s string) bool {
	if len(s) == 0 || len(s) > 48 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// tail returns the last lines of a log, for an error message.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log)"
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}

// searchable makes sure every directory from dir up lets others pass
// (x), as bentod's containers need to reach its data directory.
func searchable(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for d := abs; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		if st.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s is mode %v: the box's containers could not reach its data directory below it; make it searchable (chmod o+x %s) or give another --state", d, st.Mode().Perm(), d)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}
