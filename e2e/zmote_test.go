package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torbento/bento/internal/dust"
	"github.com/torbento/bento/internal/testutil"
)

// beforeMote holds TestDustMote back until the tests that use the shared
// private network in the parallel phase are done. Each registers in its
// sequential part, which runs before TestDustMote starts.
var beforeMote sync.WaitGroup

// This file's name makes its test the last to use the shared private
// network (Go runs tests in file order; zz_security_test.go, after it,
// does not use it): a mote's relay joins the shared private network and then dies,
// and in a test network whose authorities do not test reachability
// (privnet's AuthDirTestReachability 0) the dead relay stays in the
// consensus, an HSDir and a hop that fails, for every test after it.

// TestDustMote: a mote spawned from the shipped template joins the private
// Tor network from a network namespace of its own, serves a function
// through its onion service, shows its end
// in its policy, tells an attached client, refuses deploys in its drain
// period, and after its end is gone: supervisor, tor, bentod, containers
// and files, namespace included.
//
// It runs in the parallel phase, beside the tests that mostly wait for
// tor on networks or daemons of their own (TestFlashFlowPrivateNetwork,
// TestBoxLifetime), but only once the other parallel users of the shared
// network (TestDelayMail) are done with it: its relay's death would
// otherwise leave them a dead HSDir.
func TestDustMote(t *testing.T) {
	t.Parallel()
	beforeMote.Wait()
	n := tornet(t)
	join, err := n.JoinTorrc()
	if err != nil {
		t.Fatal(err)
	}
	dir := testutil.TempDir(t) // searchable: the box's containers reach below it
	joinFile := filepath.Join(dir, "join.torrc")
	if err := os.WriteFile(joinFile, []byte(join), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "motes")
	t0 := time.Now()
	const lifetime, drain = 60 * time.Second, 28 * time.Second
	r := bento(t, "", "dust", "up", "--template", filepath.Join(testutil.RepoRoot(), "templates", "mote.toml"),
		"--network-torrc", joinFile, "--lifetime", lifetime.String(), "--drain", drain.String(), "--state", state)
	if r.Code != 0 {
		t.Fatalf("dust up: %s", r)
	}
	motes := listMotes(t, state)
	if len(motes) != 1 || motes[0].State != dust.StateUp || !motes[0].Alive || !strings.HasSuffix(strings.Split(motes[0].Onion, ":")[0], ".onion") {
		t.Fatalf("dust ls after up: %+v", motes)
	}
	m := motes[0].Mote
	t.Logf("mote up after %v", time.Since(t0).Round(time.Millisecond))
	t.Cleanup(func() { bento(t, "", "dust", "down", m.Name, "--state", state) })
	if !strings.Contains(r.Stdout, m.Onion) || !strings.Contains(r.Stdout, m.EndsAt.Format(time.RFC3339)) {
		t.Errorf("dust up did not say where the box is and when it ends: %s", r.Stdout)
	}
	// Only tor and bentod run, under the supervisor.
	for _, pid := range []int{m.TorPID, m.BentodPID} {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if !strings.Contains(string(cmdline), m.Dir) {
			t.Errorf("process %d is not the mote's: %q", pid, cmdline)
		}
	}

	// In a network namespace of its own that holds only lo, as the
	// network's own: the supervisor carries its Tor traffic across.
	self, _ := os.Readlink("/proc/self/ns/net")
	if m.Netns == "" || m.Netns == self {
		t.Errorf("the mote's network namespace is %q, the test's %q: want one of its own", m.Netns, self)
	}
	for _, pid := range []int{m.TorPID, m.BentodPID} {
		if ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); ns != m.Netns {
			t.Errorf("process %d of the mote is in namespace %q, not the mote's %q", pid, ns, m.Netns)
		}
	}
	if ifs := interfaces(t, m.TorPID); strings.Join(ifs, " ") != "lo" {
		t.Errorf("the mote's namespace has interfaces %v; want only lo", ifs)
	}
	// Only the Tor ports cross: the client's SOCKS port, on the
	// network's loopback, is out of the mote's reach.
	err = dialFromNamespace(t, m.TorPID, n.Client().SocksAddr())
	if err != nil && strings.HasPrefix(err.Error(), "returning from") {
		t.Fatal(err)
	}
	if err == nil {
		t.Errorf("from inside the mote, the network's client SOCKS port %s answers: the bridge carries more than Tor's ports", n.Client().SocksAddr())
	}

	cl := n.Client()
	r = bentoTorRetry(t, cl, "run", m.Onion, fn("hello"), "dust")
	if r.Code != 0 || !strings.Contains(r.Stdout, "hello, dust!") {
		// What the client side looked like (a CI run once saw the
		// client's SocksPort refuse every try): does it answer here, does
		// its tor run, and what did it log last.
		c, derr := net.DialTimeout("tcp", cl.SocksAddr(), time.Second)
		if c != nil {
			c.Close()
		}
		notice := readFile(filepath.Join(cl.Dir, "notice.log"))
		if len(notice) > 3000 {
			notice = notice[len(notice)-3000:]
		}
		t.Logf("the client's SocksPort from the test: %v; its tor (pid %d) alive: %v; its log ends:\n%s", derr, cl.PID(), syscall.Kill(cl.PID(), 0) == nil, notice)
		t.Fatalf("hello on the mote: %s\nsupervisor log: %s", r, readFile(filepath.Join(m.Dir, "bentod.out")))
	}
	r = bentoTorRetry(t, cl, "policy", m.Onion)
	if r.Code != 0 || !strings.Contains(r.Stdout, "box ends     "+m.EndsAt.Format(time.RFC3339)) {
		t.Errorf("the mote's policy does not announce its end: %s", r)
	}
	r = bentoTorRetry(t, cl, "deploy", m.Onion, fn("boxlife"))
	if r.Code != 0 {
		t.Fatalf("deploy on the mote: %s", r)
	}
	var dep struct {
		InvocationToken string `json:"invocation_token"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &dep); err != nil || dep.InvocationToken == "" {
		t.Fatalf("no invocation token in %q: %v", r.Stdout, err)
	}
	tok := dep.InvocationToken
	t.Logf("hello, policy and deploy through Tor done after %v; drain at +%v", time.Since(t0).Round(time.Millisecond), m.DrainAt.Sub(t0).Round(time.Second))
	wait := exec.Command(filepath.Join(testutil.Binaries(t), "bento"), "--tor-socks", cl.SocksAddr(), "invoke", m.Onion, tok, "wait")
	var waitOut, waitErr syncBuffer
	wait.Stdout, wait.Stderr = &waitOut, &waitErr
	if err := wait.Start(); err != nil {
		t.Fatal(err)
	}
	waitDone := make(chan struct{})
	go func() { _ = wait.Wait(); close(waitDone) }()
	t.Cleanup(func() { _ = wait.Process.Kill(); <-waitDone })

	time.Sleep(time.Until(m.DrainAt.Add(2 * time.Second)))
	r = bento(t, "", "--tor-socks", cl.SocksAddr(), "deploy", m.Onion, fn("hello"))
	if r.Code != 3 || !strings.Contains(r.Stderr, "drain period") {
		t.Errorf("deploy in the mote's drain period: %s", r)
	}
	select {
	case <-waitDone:
	case <-time.After(time.Until(m.EndsAt.Add(30 * time.Second))):
		t.Fatal("the attached client outlived the mote")
	}
	for _, want := range []string{"notice from the box: this box ends at " + m.EndsAt.Format(time.RFC3339), "the box ended at"} {
		if !strings.Contains(waitErr.String(), want) {
			t.Errorf("the attached client was not told %q; its stderr:\n%s", want, waitErr.String())
		}
	}
	// Gone: supervisor, processes, files.
	deadline := time.Now().Add(dust.Grace + 60*time.Second)
	for {
		_, err := os.Stat(m.Dir)
		if os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the mote's directory is still there %s after its end: %v", time.Since(m.EndsAt), err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	// The supervisor exits just after removing the directory.
	for _, pid := range []int{m.Supervisor, m.TorPID, m.BentodPID} {
		for i := 0; ; i++ {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if syscall.Kill(pid, 0) != nil || !strings.Contains(string(cmdline), m.Dir) {
				break
			}
			if i == 100 {
				t.Errorf("process %d still runs 10 s after the mote's directory went: %q", pid, cmdline)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// The namespace went with them: no thread is in it, no descriptor
	// holds it.
	threads, _ := filepath.Glob("/proc/[0-9]*/task/[0-9]*/ns/net")
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, p := range append(threads, fds...) {
		if ns, _ := os.Readlink(p); ns == m.Netns {
			t.Errorf("the mote's namespace %s is still held after its end: %s", m.Netns, p)
		}
	}
	if motes := listMotes(t, state); len(motes) != 0 {
		t.Errorf("dust ls after the end: %+v", motes)
	}
	out, _ := exec.Command("runc", "--root", filepath.Join(m.Dir, "bentod", "runtime"), "list", "-q").Output()
	if s := strings.TrimSpace(string(out)); s != "" {
		t.Errorf("containers left behind: %s", s)
	}
}

func listMotes(t *testing.T, state string) []dust.Listed {
	t.Helper()
	r := bento(t, "", "dust", "ls", "--json", "--state", state)
	if r.Code != 0 {
		t.Fatalf("dust ls: %s", r)
	}
	var out []dust.Listed
	if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil {
		t.Fatalf("dust ls --json: %v\n%s", err, r.Stdout)
	}
	return out
}

// dialFromNamespace dials addr from inside process pid's network
// namespace, on a thread that enters it and then returns to the test's.
//
// The thread must not end with the goroutine (what a goroutine locked to
// its thread does when it returns): privnet starts tor with Pdeathsig, so
// a thread that ends sends SIGTERM to every tor it happened to start. A
// CI run lost the network's client tor that way, mid-test.
func dialFromNamespace(t *testing.T, pid int, addr string) error {
	t.Helper()
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	errc := make(chan error, 1)
	setup := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			setup <- err
			return
		}
		defer home.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			setup <- err
			return
		}
		setup <- nil
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err == nil {
			c.Close()
		}
		// Back home; only then may the thread serve other goroutines.
		// If that fails the thread stays locked and ends with this
		// goroutine, which the test then reports.
		if herr := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); herr != nil {
			errc <- fmt.Errorf("returning from the mote's namespace: %w", herr)
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-setup; err != nil {
		t.Fatalf("entering the mote's namespace: %v", err)
	}
	return <-errc
}

// interfaces lists the network interfaces in process pid's namespace.
func interfaces(t *testing.T, pid int) []string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/dev", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for i, l := range strings.Split(string(b), "\n") {
		if name, _, ok := strings.Cut(l, ":"); ok && i >= 2 {
			out = append(out, strings.TrimSpace(name))
		}
	}
	return out
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}
