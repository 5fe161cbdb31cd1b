package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/testutil"
)

// The adversarial load suite: bentod as it ships (no race detector, whose
// shadow memory would swamp the figures) under attacks on its own
// resources, each with an innocent neighbour timed before and during, and
// bentod's memory and descriptors sampled throughout against the ceilings
// below. Attackers run in processes of their own at nice 19
// (attacker_test.go). docs/SECURITY.md lists every case.

// siegeRC is the configuration under test: the shipped defaults, with
// shorter timeouts so the tests can watch them act.
const siegeRC = `MaxDaemonMemory 384 MB
MaxInFlight 96 MB
HandshakeTimeout 3 s
IdleTimeout 5 s
ConnectionLifetime 12 s
WriteTimeout 4 s
AllowAPI send,recv,log,time,sleep,random,storage,exit,http.fetch,bento
DestinationPolicy accept 127.0.0.1:*
`

// The stated ceilings (docs/SECURITY.md): bentod's resident memory never
// passes MaxDaemonMemory, and its descriptors stay within its client
// connections (MaxConnections 512), the policy endpoint's (64) and a few
// per instance.
const (
	siegeMemCeiling = 384 << 20
	siegeFDBase     = 512 + 64 + 64
	siegeFDInstance = 8
	// siegeFDLeft is how many more descriptors than before a case bentod
	// may hold once the case is over (log files rotate, a connection
	// to the neighbour's runner may be replaced).
	siegeFDLeft = 4
)

// usage samples a process's resident memory and descriptors. Each running
// instance may hold siegeFDInstance descriptors (its runner's connection,
// output files, the container's pipes): the descriptor figure kept is the
// peak of descriptors less that allowance for bentod's children at the
// same moment, so the ceiling follows the instances running, not those
// ever started.
type usage struct {
	pid    int
	mu     sync.Mutex
	maxRSS int64
	maxFDs int // descriptors less siegeFDInstance per child, at the worst moment
	stop   chan struct{}
	done   chan struct{}
}

func watchUsage(pid int) *usage {
	u := &usage{pid: pid, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(u.done)
		for {
			rss := rssKB(pid) << 10
			fds := countFDs(pid) - siegeFDInstance*countChildren(pid)
			u.mu.Lock()
			u.maxRSS = max(u.maxRSS, rss)
			u.maxFDs = max(u.maxFDs, fds)
			u.mu.Unlock()
			select {
			case <-u.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return u
}

func (u *usage) end() (int64, int) {
	close(u.stop)
	<-u.done
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.maxRSS, u.maxFDs
}

// countFDs counts a process's open descriptors.
func countFDs(pid int) int {
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(fds)
}

// countChildren counts a process's children (bentod's are the
// containers' init processes and the runc commands starting them).
func countChildren(pid int) int {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	n := 0
	for _, task := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		n += len(strings.Fields(string(b)))
	}
	return n
}

// siegeChecked holds the name of every test and subtest that ran under
// the siege's invariants; TestSecurityLoadSuite checks that each row of
// docs/SECURITY.md's load-suite table is among them.
var siegeChecked sync.Map

// siege is one bentod under attack with its neighbour.
type siege struct {
	d     *daemon
	token string         // the neighbour: a Dropbox holding "kept"
	cl    *client.Client // the test's own client, from 127.0.0.1
	nb    *client.Client // the neighbour's, from siegeNeighbourIP
	// keeping is set while a case whose attack is to start instances
	// runs: they outlive it, so its leftovers are judged by descriptors
	// per running instance, not by free resources.
	keeping bool
	// dropsAllowed is set while a case runs whose documented outcome is
	// that fewer are served for a while (bentod out of descriptors closes
	// connections to recover): a neighbour's call whose connection is
	// closed is counted, and at most one in ten may be.
	dropsAllowed bool
}

// whileKeeping is while for an attack that starts instances that outlive
// it (composition).
func (s *siege) whileKeeping(t *testing.T, attack func()) {
	t.Helper()
	s.keeping = true
	defer func() { s.keeping = false }()
	s.while(t, attack)
}

func newSiege(t *testing.T, extra string) *siege { return newSiegeRC(t, siegeRC+extra) }

// newSiegeRC is newSiege with a configuration of the caller's.
func newSiegeRC(t *testing.T, rc string) *siege {
	return siegeOn(t, startBentodFrom(t, testutil.ReleaseBinaries(t), rc))
}

// siegeOn deploys the neighbour on a bentod started by the caller.
func siegeOn(t *testing.T, d *daemon) *siege {
	dep := deployCLI(t, d, fn("dropbox"))
	if r := bento(t, "kept", "invoke", "-i", d.Addr, dep.InvocationToken, "put"); r.Code != 0 {
		t.Fatalf("neighbour put: %s", r)
	}
	return &siege{d: d, token: dep.InvocationToken, cl: client.New(d.Addr), nb: from(d.Addr, siegeNeighbourIP)}
}

// call times one of the neighbour's calls.
func (s *siege) call(t *testing.T) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := s.nb.Call(ctx, s.token, "get")
	if err == nil && string(out) != "kept" {
		err = fmt.Errorf("neighbour got %q", out)
	}
	return time.Since(start), err
}

// calls times n calls, or as many as fit in d (at least n).
func (s *siege) calls(t *testing.T, n int, d time.Duration) []time.Duration {
	t.Helper()
	var out []time.Duration
	deadline := time.Now().Add(d)
	drops := 0
	for len(out) < n || time.Now().Before(deadline) {
		lat, err := s.call(t)
		if err != nil && s.dropsAllowed && drops < n {
			// Judged over the case's calls, not as they come: the
			// failures cluster when the attack begins.
			drops++
			t.Logf("the neighbour's call %d failed (%d so far; this case allows one in ten): %v", len(out)+drops, drops, err)
			time.Sleep(20 * time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatalf("the neighbour's call failed (%d failed before it): %v", drops, err)
		}
		out = append(out, lat)
		time.Sleep(20 * time.Millisecond)
	}
	if made := len(out) + drops; drops*10 > made {
		t.Errorf("%d of the neighbour's %d calls failed, more than one in ten", drops, made)
	}
	return out
}

// siegeNeighbourIP is the neighbour's address: its own, as an honest
// client's would be, so that its calls (about 40 a second) and an attack
// from 127.0.0.1 (the CLI's) do not share one address's connection rate.
const siegeNeighbourIP = "127.0.9.9"

// siegeCalls is how many of the neighbour's calls each case is judged
// on at least: a median of fewer is a median of a moment (a case judged on
// the 5 calls its attack overlapped once read 3.0x, 9 ms for 3 ms, in CI).
const siegeCalls = 20

// under runs attack (which returns once the attack is in full swing, and
// a function that ends it), times the neighbour for hold, and checks the
// invariants: the neighbour's median within 2x of its
// baseline, bentod alive, its memory and descriptors under the ceilings.
func (s *siege) under(t *testing.T, hold time.Duration, attack func() func()) {
	t.Helper()
	s.check(t, false, func(during func() []time.Duration) []time.Duration {
		stop := attack()
		defer stop()
		return during()
	}, func() []time.Duration { return s.calls(t, siegeCalls, hold) })
}

// while runs a blocking attack (on the test's goroutine: it may call
// t.Fatal) and times the neighbour meanwhile, a call every 20 ms (each a
// new connection from the neighbour's address, which may open 50 a
// second). The attack is played again until at least siegeCalls of the
// neighbour's calls have started while it ran, and those calls are what
// is judged: a short attack is judged on a median of 20 calls it
// overlapped, not of the 5 a single play overlaps or of calls made after
// it. An attack must therefore leave things as a new play expects them
// (each play checks itself), or keep what it needs across plays in its
// closure. For the same reason a case whose first play puts the
// neighbour over 2x is played again, from a fresh baseline, and fails
// only if that play is over 2x too.
func (s *siege) while(t *testing.T, attack func()) {
	t.Helper()
	s.check(t, true, func(_ func() []time.Duration) []time.Duration {
		var started atomic.Int64
		finished := make(chan struct{})
		got := make(chan []time.Duration, 1)
		go func() {
			var during []time.Duration
			defer func() { got <- during }()
			for {
				select {
				case <-finished:
					return
				default:
				}
				l, err := s.call(t)
				if err != nil {
					t.Errorf("the neighbour's call failed: %v", err)
					return
				}
				during = append(during, l)
				started.Add(1)
				time.Sleep(20 * time.Millisecond)
			}
		}()
		func() {
			defer close(finished)
			for {
				attack()
				if started.Load() >= siegeCalls || t.Failed() {
					return
				}
			}
		}()
		return <-got
	}, nil)
}

// retryPeriod paces an attack whose plays are refused at once and come
// from one address (a client that keeps trying): a play every 30 ms stays
// within the address's connection rate (50 a second), so what is judged
// is the retries and not their refusal for the rate.
const retryPeriod = 30 * time.Millisecond

// pace sleeps until period has passed since start.
func pace(start time.Time, period time.Duration) { time.Sleep(time.Until(start.Add(period))) }

// siegePlays is how many times a replayable case's attack is played, at
// most, before its neighbour's median over 2x fails it: twice, the second
// only when the first was over.
const siegePlays = 2

// check times the neighbour before and during run, and checks the
// invariants; replay says the attack may be played again (see siegePlays).
func (s *siege) check(t *testing.T, replay bool, run func(func() []time.Duration) []time.Duration, during func() []time.Duration) {
	t.Helper()
	pid := s.d.cmd.Process.Pid
	fdsBefore, kidsBefore, freeBefore := countFDs(pid), countChildren(pid), s.free(t)
	stBefore := bentodStatus(t, s.d)
	if s.keeping {
		freeBefore = policy.Public{}.Free
	}
	for play := 1; ; play++ {
		before := s.calls(t, 40, 0)
		u := watchUsage(pid)
		cliNice.Store(19) // the case's runs of the CLI are the attacker's
		lat := func() []time.Duration { defer cliNice.Store(0); return run(during) }()
		rss, fds := u.end()
		if len(lat) == 0 {
			if t.Failed() {
				return // the attack failed before the neighbour's first call
			}
			t.Fatal("no call of the neighbour was timed")
		}
		mb, md := median(before), median(lat)
		t.Logf("neighbour: median %v before, %v during (%d calls, slowest %v); bentod: peak RSS %.1f MB (ceiling %d MB), peak descriptors %d beyond %d per running instance (ceiling %d)",
			mb.Round(10*time.Microsecond), md.Round(10*time.Microsecond), len(lat), lat[len(lat)-1].Round(10*time.Microsecond), float64(rss)/(1<<20), siegeMemCeiling>>20, fds, siegeFDInstance, siegeFDBase)
		if rss > siegeMemCeiling {
			t.Errorf("bentod's memory reached %.1f MB, over its %d MB ceiling", float64(rss)/(1<<20), siegeMemCeiling>>20)
		}
		if fds > siegeFDBase {
			t.Errorf("bentod held %d descriptors beyond its instances' allowance, over its ceiling of %d", fds, siegeFDBase)
		}
		if md <= 2*mb {
			break
		}
		if !replay || play == siegePlays || t.Failed() {
			t.Errorf("the neighbour's median went from %v to %v, more than 2x", mb, md)
			break
		}
		// A slowdown that bentod lets an attack cause is there on every
		// play; a spike of the machine's (two cores shared with a private
		// Tor network's votes and fetches) is not.
		t.Logf("play %d: the neighbour's median went from %v to %v, more than 2x; the attack is played again from a fresh baseline, and the case fails if that play is over 2x too", play, mb, md)
		s.settle(t, fdsBefore, kidsBefore, freeBefore)
		s.settleStatus(t, stBefore, kidsBefore)
	}
	if !procAlive(pid) {
		t.Fatalf("bentod is gone\n%s", s.d.log)
	}
	// Nothing left behind: the case's connections closed, its instances
	// ended (the resources free again), and the neighbour as it was.
	s.settle(t, fdsBefore, kidsBefore, freeBefore)
	s.settleStatus(t, stBefore, kidsBefore)
	if _, err := s.call(t); err != nil {
		t.Errorf("the neighbour after the attack: %v", err)
	}
	siegeChecked.Store(t.Name(), true)
}

// settle waits (at most 30 s) until bentod holds at most siegeFDLeft
// descriptors more than fds did with kids children (and siegeFDInstance
// for each child more) and its free resources are back to free (a zero
// free: do not compare), and fails the test otherwise.
func (s *siege) settle(t *testing.T, fds, kids int, free any) {
	t.Helper()
	pid := s.d.cmd.Process.Pid
	var nowFDs int
	var nowFree any
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		nowFDs, nowFree = countFDs(pid), s.free(t)
		fdsOK := nowFDs <= fds+siegeFDLeft+siegeFDInstance*max(0, countChildren(pid)-kids)
		freeOK := free == (policy.Public{}.Free) || nowFree == free
		if fdsOK && freeOK {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("left behind after the case: bentod holds %d descriptors (before: %d); free resources %+v (before: %+v)", nowFDs, fds, nowFree, free)
			return
		}
	}
}

// settleStatus waits (at most 30 s) until what bentod holds by its own
// account is back to what it held before the case: bytes in flight (64 KB
// of slack), open client connections (the neighbour's may differ by a
// couple), goroutines (20 of slack, and 16 per instance started and
// still running), and fails the test otherwise.
func (s *siege) settleStatus(t *testing.T, before map[string]int64, kids int) {
	t.Helper()
	pid := s.d.cmd.Process.Pid
	var now map[string]int64
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		now = bentodStatus(t, s.d)
		more := int64(max(0, countChildren(pid)-kids))
		if now["in_flight_bytes"] <= before["in_flight_bytes"]+64<<10 &&
			now["client_open"] <= before["client_open"]+2 &&
			now["goroutines"] <= before["goroutines"]+20+16*more {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("left behind after the case, by bentod's own account: %d bytes in flight (before: %d), %d client connections (before: %d), %d goroutines (before: %d)",
				now["in_flight_bytes"], before["in_flight_bytes"], now["client_open"], before["client_open"], now["goroutines"], before["goroutines"])
			return
		}
	}
}

// procAlive reports whether process pid runs (not gone, not a zombie
// nobody has reaped yet).
func procAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	st := b[i+2]
	return st != 'Z' && st != 'X'
}

// free reads bentod's free resources from its policy endpoint.
func (s *siege) free(t *testing.T) any {
	t.Helper()
	p, err := s.cl.Policy(ctx(t))
	if err != nil {
		t.Fatalf("bentod's policy: %v", err)
	}
	return p.Free
}

// tempFunction writes a function directory.
func tempFunction(t *testing.T, manifest, code string, extra ...string) string {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "bento.toml"), []byte(manifest), 0o644)
	os.WriteFile(filepath.Join(dir, "main.star"), []byte(code), 0o644)
	for i := 0; i+1 < len(extra); i += 2 {
		os.WriteFile(filepath.Join(dir, extra[i]), []byte(extra[i+1]), 0o644)
	}
	return dir
}

// TestSiege: attacks on bentod's own resources. Each subtest is one row
// of docs/SECURITY.md.
func TestSiege(t *testing.T) {
	s := newSiege(t, "")
	d := s.d
	_, policyPort, _ := strings.Cut(d.Policy, ":")

	t.Run("idle-connection-flood", func(t *testing.T) {
		// 20,000 connections from 64 addresses that never say hello: the
		// total stays within MaxConnections, the idle ones give way to
		// newcomers, and the handshake timeout ends them.
		var r attackReport
		var before, during map[string]int64
		s.under(t, 6*time.Second, func() func() {
			before = bentodStatus(t, d)
			a := startAttack(t, attackSpec{Kind: "idle", Target: d.Addr, Sources: 64, Conns: 1024, Total: 20000})
			time.Sleep(2 * time.Second)
			during = bentodStatus(t, d) // in full swing
			return func() { r = a.stop() }
		})
		t.Logf("attacker: %v; bentod during: %d client connections open, %d evicted, %d refused", r, during["client_open"], during["client_evicted"]-before["client_evicted"], during["client_refused"]-before["client_refused"])
		if during["client_open"] > 512 {
			t.Errorf("bentod held %d client connections, over MaxConnections 512", during["client_open"])
		}
		if during["client_evicted"] == before["client_evicted"] {
			t.Error("no idle connection gave way to a newcomer")
		}
		if r.Connected < 2000 {
			t.Errorf("the attacker made only %d connections", r.Connected)
		}
		if r.MaxLifeMs > 5000 {
			t.Errorf("a silent connection stayed %d ms (HandshakeTimeout is 3 s)", r.MaxLifeMs)
		}
	})
	t.Run("one-address-hog", func(t *testing.T) {
		// One address says hello on 64 connections and asks for the policy
		// every second, forever: it gets its 16, each lives at most
		// ConnectionLifetime however often it asks.
		var r attackReport
		s.under(t, 14*time.Second, func() func() {
			a := startAttack(t, attackSpec{Kind: "hello-idle", Target: d.Addr, Sources: 1, Conns: 64, Every: 1000})
			time.Sleep(time.Second)
			return func() { r = a.stop() }
		})
		t.Logf("attacker: %v", r)
		if r.MaxHeld > 16 || r.MaxHeld < 12 || r.Refused < 48 {
			t.Errorf("one address held %d connections at once (its share is 16), %d refused: %v", r.MaxHeld, r.Refused, r)
		}
		if r.MaxLifeMs > 14000 {
			t.Errorf("a connection asking for the policy lived %d ms (ConnectionLifetime is 12 s)", r.MaxLifeMs)
		}
		if r.Requests == 0 {
			t.Error("the attacker's requests were never answered: the test proves nothing")
		}
	})
	t.Run("large-frame-before-hello", func(t *testing.T) {
		// 1,000 connections announce a frame of MaxUploadSize before any
		// hello and send all but its last byte: refused at once, nothing
		// grown for them.
		var r attackReport
		var rssBefore int64
		s.under(t, 5*time.Second, func() func() {
			rssBefore = rssKB(d.cmd.Process.Pid) << 10
			a := startAttack(t, attackSpec{Kind: "big-frame", Target: d.Addr, Sources: 50, Conns: 1000, Total: 1000, Size: 1 << 20})
			time.Sleep(time.Second)
			return func() { r = a.stop() }
		})
		t.Logf("attacker: %v", r)
		if r.Connected < 500 || r.Refused < r.Connected/2 {
			t.Errorf("the attack did not take place (%d connections, %d refused with a reason): the test proves nothing", r.Connected, r.Refused)
		}
		// Refused at the frame's header: well before the 3 s handshake
		// timeout would have ended a connection that merely idled.
		if r.MaxLifeMs > 1500 {
			t.Errorf("a connection announcing a large frame before its hello lived %d ms: %+v", r.MaxLifeMs, r)
		}
		if grown := rssKB(d.cmd.Process.Pid)<<10 - rssBefore; grown > 32<<20 {
			t.Errorf("bentod grew by %.1f MB for frames it refused", float64(grown)/(1<<20))
		}
	})
	t.Run("slow-uploads", func(t *testing.T) {
		// 1,024 connections from 64 addresses say hello and upload 1 MB
		// each, all but the last byte: the bytes in flight stay within
		// MaxInFlight (96 MB), the rest wait, and the idle timeout ends
		// them.
		r, held := s.attackInFlight(t, 8*time.Second, 3*time.Second, attackSpec{Kind: "slow-upload", Target: d.Addr, Sources: 64, Conns: 1024, Size: 1 << 20})
		t.Logf("attacker: %v; bentod holds %.1f MB of uploads in flight", r, held/(1<<20))
		if r.Connected < 512 || r.Sent < 64<<20 {
			t.Errorf("the attack did not take place (%v): the test proves nothing", r)
		}
		if held > 96<<20 {
			t.Errorf("bentod holds %.1f MB in flight, over MaxInFlight (96 MB)", held/(1<<20))
		}
		// A request, an upload included, must arrive within IdleTimeout.
		if r.MaxLifeMs > 8000 {
			t.Errorf("a stalled upload lived %d ms (IdleTimeout is 5 s)", r.MaxLifeMs)
		}
	})
	t.Run("slow-reader", func(t *testing.T) {
		// 32 clients invoke a function that sends 8 MB and never read it:
		// the write timeout drops them, the output waits on disk, and a
		// client that does read gets all of it.
		out := tempFunction(t, "name = \"big\"\nmode = \"service\"\napis = [\"send\"]\n[resources]\noutput = \"16 MB\"\nlifetime = \"5 minutes\"\n",
			"def main(n):\n    c = \"z\" * 65536\n    for i in range(n):\n        bento.send(c)\n")
		dep := deployCLI(t, d, out)
		var r attackReport
		s.under(t, 8*time.Second, func() func() {
			a := startAttack(t, attackSpec{Kind: "slow-reader", Target: d.Addr, Sources: 8, Conns: 32, Token: dep.InvocationToken, Args: "[8]"})
			time.Sleep(2 * time.Second)
			return func() { r = a.stop() }
		})
		t.Logf("attacker: %v", r)
		if r.Connected < 32 {
			t.Errorf("the attack did not take place (%d connections): the test proves nothing", r.Connected)
		}
		if r.MaxLifeMs > 8000 {
			t.Errorf("a client that never read stayed %d ms (WriteTimeout is 4 s)", r.MaxLifeMs)
		}
		got, err := client.New(d.Addr).Call(ctx(t), dep.InvocationToken, 128)
		if err != nil || len(got) != 128*65536 {
			t.Fatalf("a reading client after the slow ones: %d bytes, %v", len(got), err)
		}
		bento(t, "", "shutdown", d.Addr, dep.ShutdownToken)
	})
	t.Run("input-flood", func(t *testing.T) {
		// 16 clients send endless input to a function that never reads it:
		// each session queues two frames; the rest waits in TCP.
		// (It sleeps past the check at about 8 s, not much longer: the
		// case ends when its sessions do.)
		quiet := tempFunction(t, "name = \"quiet\"\nmode = \"service\"\napis = [\"sleep\"]\n[resources]\nlifetime = \"5 minutes\"\n",
			"def main():\n    bento.sleep(11)\n")
		dep := deployCLI(t, d, quiet)
		rssBefore := rssKB(d.cmd.Process.Pid) << 10
		r, held := s.attackInFlight(t, 6*time.Second, 2*time.Second, attackSpec{Kind: "input-flood", Target: d.Addr, Sources: 16, Conns: 16, Token: dep.InvocationToken, Args: "[]"})
		t.Logf("attacker: %v; bentod holds %.1f MB in flight", r, held/(1<<20))
		if r.Connected < 16 || r.Sent < 8<<20 {
			t.Errorf("the attack did not take place (%v): the test proves nothing", r)
		}
		// Two frames of 256 KB queued per session and the one being
		// read, and no more.
		if limit := 16 * 3 * float64(256<<10+64); held > limit {
			t.Errorf("bentod holds %.1f MB of input for 16 sessions; three frames each is %.1f MB", held/(1<<20), limit/(1<<20))
		}
		if grown := rssKB(d.cmd.Process.Pid)<<10 - rssBefore; grown > 64<<20 {
			t.Errorf("bentod grew by %.1f MB while 16 sessions' input waited", float64(grown)/(1<<20))
		}
		bento(t, "", "shutdown", d.Addr, dep.ShutdownToken)
	})
	t.Run("policy-endpoint-flood", func(t *testing.T) {
		// 3,000 slow HTTP requests (headers that never end) from 64
		// addresses to the policy endpoint: it keeps answering others.
		var r attackReport
		var worst time.Duration
		s.under(t, 6*time.Second, func() func() {
			a := startAttack(t, attackSpec{Kind: "slowloris", Target: "127.0.0.1:" + policyPort, Sources: 64, Conns: 256, Total: 3000})
			time.Sleep(2 * time.Second)
			for i := 0; i < 10; i++ {
				start := time.Now()
				resp, err := http.Get("http://" + d.Policy + "/policy")
				if err != nil {
					t.Fatalf("the policy endpoint under a flood: %v", err)
				}
				var pub client.Policy
				err = json.NewDecoder(resp.Body).Decode(&pub)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 {
					t.Fatalf("policy under a flood: %d %v", resp.StatusCode, err)
				}
				worst = max(worst, time.Since(start))
			}
			return func() { r = a.stop() }
		})
		t.Logf("attacker: %v; slowest policy fetch during the flood: %v", r, worst)
		if r.Connected < 256 || r.Refused == 0 {
			t.Errorf("the attack did not take place (%v): the test proves nothing", r)
		}
		if worst > 2*time.Second {
			t.Errorf("the policy endpoint took %v to answer during the flood", worst)
		}
		// Headers that never end are cut by ReadHeaderTimeout (5 s).
		if r.MaxLifeMs > 8000 {
			t.Errorf("a request whose headers never ended was held %d ms", r.MaxLifeMs)
		}
	})
	t.Run("policy-idle-flood", func(t *testing.T) {
		// Kept-alive connections to the policy endpoint, 1,024 at once
		// from 64 addresses, each asking once and then idling, coming
		// back as they are closed: the endpoint's own cap holds, idle
		// ones give way, others are answered.
		var r attackReport
		var before, during map[string]int64
		var worst time.Duration
		s.under(t, 6*time.Second, func() func() {
			before = bentodStatus(t, d)
			a := startAttack(t, attackSpec{Kind: "http-keepalive", Target: "127.0.0.1:" + policyPort, Sources: 64, Conns: 1024})
			time.Sleep(2 * time.Second)
			during = bentodStatus(t, d) // in full swing
			for i := 0; i < 10; i++ {
				start := time.Now()
				resp, err := http.Get("http://" + d.Policy + "/policy")
				if err != nil {
					t.Fatalf("the policy endpoint under a flood of idle connections: %v", err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Fatalf("policy under a flood of idle connections: %d", resp.StatusCode)
				}
				worst = max(worst, time.Since(start))
			}
			return func() { r = a.stop() }
		})
		t.Logf("attacker: %v; policy endpoint during: %d open, %d evicted; slowest fetch %v", r, during["policy_open"], during["policy_evicted"]-before["policy_evicted"], worst)
		if r.Connected < 500 || r.Requests == 0 {
			t.Errorf("the attack did not take place (%v): the test proves nothing", r)
		}
		if during["policy_open"] > 64 {
			t.Errorf("the policy endpoint held %d connections, over its 64", during["policy_open"])
		}
		if during["policy_evicted"] == before["policy_evicted"] {
			t.Error("no idle connection to the policy endpoint gave way")
		}
		if worst > 2*time.Second {
			t.Errorf("the policy endpoint took %v to answer", worst)
		}
	})
	t.Run("garbage-frames", func(t *testing.T) {
		// 3,000 connections of random bytes, some shaped like frames.
		var r attackReport
		s.under(t, 5*time.Second, func() func() {
			a := startAttack(t, attackSpec{Kind: "garbage", Target: d.Addr, Sources: 32, Conns: 32, Total: 3000})
			time.Sleep(time.Second)
			return func() { r = a.stop() }
		})
		t.Logf("attacker: %v", r)
		if r.Connected < 1000 || r.Sent < 1<<20 {
			t.Errorf("the attack did not take place (%v): the test proves nothing", r)
		}
	})
	t.Run("bytes-in-flight-stay-bounded", func(t *testing.T) {
		// The slow uploads once more, with bentod's memory as the measure:
		// 1,024 uploads of 1 MB would be 1 GB; the budget holds 96 MB.
		var r attackReport
		var rssBefore, grown int64
		var st map[string]int64
		s.under(t, 6*time.Second, func() func() {
			rssBefore = rssKB(d.cmd.Process.Pid) << 10
			a := startAttack(t, attackSpec{Kind: "slow-upload", Target: d.Addr, Sources: 64, Conns: 1024, Size: 1 << 20})
			time.Sleep(3 * time.Second)
			return func() {
				grown = rssKB(d.cmd.Process.Pid)<<10 - rssBefore
				st = bentodStatus(t, d)
				r = a.stop()
			}
		})
		t.Logf("attacker: %v; bentod grew by %.1f MB during 1,024 stalled 1 MB uploads, holding %.1f MB (peak %.1f MB) of MaxInFlight %.0f MB",
			r, float64(grown)/(1<<20), float64(st["in_flight_bytes"])/(1<<20), float64(st["in_flight_peak_bytes"])/(1<<20), float64(st["in_flight_limit_bytes"])/(1<<20))
		if r.Sent < 64<<20 {
			t.Errorf("the attacker sent only %d bytes: the test proves nothing", r.Sent)
		}
		// What bentod holds is the budget's; its resident memory (the
		// bytes, the buffers they were copied out of, the collector's
		// headroom) stays under MaxDaemonMemory, checked with the rest.
		if st["in_flight_peak_bytes"] > 96<<20 || st["in_flight_limit_bytes"] != 96<<20 {
			t.Errorf("bentod held %d bytes in flight at its peak; MaxInFlight is %d", st["in_flight_peak_bytes"], st["in_flight_limit_bytes"])
		}
	})

	t.Run("out-of-descriptors", func(t *testing.T) {
		// bentod's descriptor limit is lowered below what its connection
		// cap allows, and idle connections flood in: accept fails with
		// EMFILE, bentod backs off, closes the connections idle longest,
		// and goes on serving.
		pid := d.cmd.Process.Pid
		var old unix.Rlimit
		if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old); err != nil {
			t.Fatal(err)
		}
		// Once the earlier attacks' connections are gone, leave room for
		// 100 more descriptors: far fewer than MaxConnections.
		var fds []os.DirEntry
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			fds, _ = os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
			if len(fds) < 150 || time.Now().After(deadline) {
				break
			}
		}
		low := unix.Rlimit{Cur: uint64(len(fds) + 100), Max: old.Max}
		if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &low, nil); err != nil {
			t.Fatal(err)
		}
		defer unix.Prlimit(pid, unix.RLIMIT_NOFILE, &old, nil)
		s.dropsAllowed = true
		defer func() { s.dropsAllowed = false }()
		s.under(t, 6*time.Second, func() func() {
			a := startAttack(t, attackSpec{Kind: "idle", Target: d.Addr, Sources: 64, Conns: 512, Total: 5000})
			time.Sleep(2 * time.Second)
			return func() {
				a.stop()
				unix.Prlimit(pid, unix.RLIMIT_NOFILE, &old, nil)
			}
		})
		if !strings.Contains(d.log.String(), "out of file descriptors") {
			t.Error("bentod never ran out of descriptors: the test proves nothing")
		}
	})
	if r := bento(t, "", "run", d.Addr, fn("hello")); r.Code != 0 {
		t.Fatalf("bentod after the siege: %s", r)
	}
}

// noPaths fails when a client-facing text names bentod's data directory.
func noPaths(t *testing.T, d *daemon, texts ...string) {
	t.Helper()
	for _, s := range texts {
		if strings.Contains(s, d.DataDir) || strings.Contains(s, "/instances/") {
			t.Errorf("a host path reached a client: %q", trunc(s))
		}
	}
}

// TestSiegeFunctions: what a function or a client can make bentod hold
// through host calls, and the accounting that must not be fooled. Each
// subtest is one row of docs/SECURITY.md.
func TestSiegeFunctions(t *testing.T) {
	s := newSiege(t, "")
	d := s.d
	run := func(dir string, args ...string) result {
		return bento(t, "", append([]string{"run", d.Addr, dir}, args...)...)
	}
	t.Run("remote-endless-output", func(t *testing.T) {
		// remote.invoke on a server that streams without end: cut at the
		// instance's MaxFetchSize, charged to it, bentod's memory flat.
		srv := startServer(t, "endless-bento")
		relay := tempFunction(t, "name = \"relay\"\napis = [\"bento\"]\ndestinations = [\"accept 127.0.0.1:*\"]\n[resources]\nmemory = \"16 MB\"\n",
			"def main(server):\n    return remote.invoke(server, \"bento-inv-x\")\n")
		var rs []result
		rssBefore := rssKB(d.cmd.Process.Pid) << 10
		s.while(t, func() {
			for i := 0; i < 3; i++ {
				rs = append(rs, run(relay, srv))
			}
		})
		for _, r := range rs {
			if r.Code != 1 || !strings.Contains(r.Stderr, "exceeds 16 MB (MaxFetchSize)") {
				t.Fatalf("remote.invoke of endless output: %s\n%s", r, d.log)
			}
		}
		// Cut at 16 MB and charged to the instance: bentod does not keep
		// what it cut. Each call may hold the instance's share (twice
		// MaxFetchSize, the buffer doubling as output arrives) and the
		// collector as much again before it runs; three cuts kept would
		// be 48 MB live and about twice that resident. (A run saw 48.7 MB of
		// growth with nothing kept, the heap's headroom.)
		if grown := rssKB(d.cmd.Process.Pid)<<10 - rssBefore; grown > 64<<20 {
			t.Errorf("bentod grew by %.1f MB relaying endless output", float64(grown)/(1<<20))
		}
	})
	t.Run("fetch-endless-body", func(t *testing.T) {
		url := "http://" + startServer(t, "endless-http") + "/"
		f := tempFunction(t, "name = \"fetch\"\napis = [\"http.fetch\"]\ndestinations = [\"accept 127.0.0.1:*\"]\n",
			"def main(url):\n    return \"%d\" % len(http.fetch(url).body)\n")
		var rs []result
		s.while(t, func() {
			for i := 0; i < 3; i++ {
				rs = append(rs, run(f, url))
			}
		})
		for _, r := range rs {
			if r.Code != 1 || !strings.Contains(r.Stderr, "response body exceeds 16 MB") {
				t.Fatalf("fetch of an endless body: %s", r)
			}
		}
	})
	t.Run("host-call-results-fill-the-budget", func(t *testing.T) {
		// Eight clients, from addresses of their own, each run a function
		// that fetches a 12 MB body three times: at once they would hold
		// up to 190 MB of results, each within its instance's share and
		// its client's. Together they meet MaxInFlight (96 MB): bentod
		// holds no more, the rest waits for room (back-pressure on the
		// functions), every call ends with its bodies or a clear "retry
		// later", and the neighbour is served throughout.
		const clients, body, fetches = 8, 12 << 20, 3
		base, _ := webServer(t, page(body))
		f, err := client.LoadFunction(tempFunction(t, "name = \"fetch3\"\napis = [\"http.fetch\"]\ndestinations = [\"accept 127.0.0.1:*\"]\n[resources]\nmemory = \"64 MB\"\ncpu = 0.1\n",
			fmt.Sprintf("def main(url):\n    n = 0\n    for i in range(%d):\n        n += len(http.fetch(url).body)\n    return \"%%d\" %% n\n", fetches)))
		if err != nil {
			t.Fatal(err)
		}
		var (
			mu       sync.Mutex
			served   int
			retry    int
			failures []string
			seen     int64 // the most bytes in flight seen in bentod's status
		)
		s.while(t, func() {
			var wg sync.WaitGroup
			for i := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c := &client.Client{Addr: d.Addr, Dialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 3, byte(10+i))}}}
					ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
					defer cancel()
					dep, err := c.Deploy(ctx, f)
					if err != nil {
						mu.Lock()
						failures = append(failures, "deploy: "+err.Error())
						mu.Unlock()
						return
					}
					defer c.Shutdown(context.Background(), dep.ShutdownToken)
					out, err := c.Call(ctx, dep.InvocationToken, base+"/page")
					mu.Lock()
					defer mu.Unlock()
					switch {
					case err == nil && string(out) == fmt.Sprint(fetches*body):
						served++
					case err != nil && strings.Contains(err.Error(), "too much data in flight on this node; retry later"):
						retry++
					default:
						failures = append(failures, fmt.Sprintf("%q %v", out, err))
					}
				}()
			}
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			for waiting := true; waiting; {
				select {
				case <-done:
					waiting = false
				case <-time.After(200 * time.Millisecond):
				}
				st := bentodStatus(t, d)
				seen = max(seen, st["in_flight_bytes"])
			}
		})
		st := bentodStatus(t, d)
		t.Logf("%d clients: %d calls served, %d told to retry later; bentod held at most %.1f MB in flight (seen), %.1f MB at its peak, of MaxInFlight %.0f MB",
			clients, served, retry, float64(seen)/(1<<20), float64(st["in_flight_peak_bytes"])/(1<<20), float64(st["in_flight_limit_bytes"])/(1<<20))
		if len(failures) > 0 {
			t.Errorf("calls that neither got their bodies nor a clear retry later: %s", strings.Join(failures, "; "))
		}
		if served < clients/2 {
			t.Errorf("only %d of %d calls were served: back-pressure should make most wait, not fail", served, clients)
		}
		if seen < 48<<20 {
			t.Errorf("bentod never held more than %.1f MB in flight: the functions did not press the budget, the case proves nothing", float64(seen)/(1<<20))
		}
		if st["in_flight_peak_bytes"] > 96<<20 {
			t.Errorf("bentod held %d bytes in flight at its peak; MaxInFlight is %d", st["in_flight_peak_bytes"], 96<<20)
		}
	})
	t.Run("onion-destinations-checked", func(t *testing.T) {
		// remote.* to an onion address the manifest does not name is
		// refused before any connection, as any other destination.
		// This bentod's TorSocksPort is a listener that counts the
		// connections it gets and closes them: a destination the checks
		// refuse never reaches it; one the manifest names does (and then
		// fails). TestTorDestinationsChecked does the same over real Tor.
		socksLn, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer socksLn.Close()
		var reached atomic.Int64
		go func() {
			for {
				c, err := socksLn.Accept()
				if err != nil {
					return
				}
				reached.Add(1)
				c.Close()
			}
		}()
		rc := strings.Replace(siegeRC, "DestinationPolicy accept 127.0.0.1:*", "DestinationPolicy accept *.onion:*, accept 127.0.0.1:*", 1)
		ts := newSiegeRC(t, rc+"TorSocksPort "+socksLn.Addr().String()+"\nAllowAPI send,recv,log,time,sleep,random,storage,exit,http.fetch,bento,tor.fetch\n")
		named, other := deadOnion(t), deadOnion(t)
		code := "def main(op, host):\n" +
			"    if op == \"remote\":\n        return remote.invoke(host + \":8888\", \"bento-inv-x\")\n" +
			"    return tor.fetch(\"http://\" + host + \":8888/\").body\n"
		f := tempFunction(t, "name = \"onion\"\napis = [\"bento\", \"tor.fetch\"]\ndestinations = [\"accept 127.0.0.1:*\", \"accept "+named+":8888\"]\n", code)
		tsRun := func(args ...string) result {
			return bento(t, "", append([]string{"run", ts.d.Addr, f}, args...)...)
		}
		// Played again until 20 of the neighbour's calls overlapped it:
		// four runs overlap about ten, a median of a moment.
		ts.while(t, func() {
			before := reached.Load()
			for _, op := range []string{"remote", "fetch"} {
				if r := tsRun(op, other); r.Code != 1 || !strings.Contains(r.Stderr, "rejected by the") {
					t.Errorf("%s to an onion the manifest does not name: %s", op, r)
				}
			}
			if n := reached.Load() - before; n != 0 {
				t.Errorf("refused destinations reached the SOCKS port %d times", n)
			}
			for _, op := range []string{"remote", "fetch"} {
				if r := tsRun(op, named); r.Code != 1 || strings.Contains(r.Stderr, "rejected by the") {
					t.Errorf("%s to the onion the manifest names: want it let through (and fail at the SOCKS port), got %s", op, r)
				}
			}
			if n := reached.Load() - before; n < 2 {
				t.Errorf("the onion the manifest names reached the SOCKS port %d times of 2", n)
			}
		})
	})
	t.Run("non-finite-numbers", func(t *testing.T) {
		// cpu = nan, inf, a denormal, a step finer than the sandbox's: each
		// refused with what was wrong; the policy stays finite JSON.
		// Each play from an address of its own: 7 deploys a play, played
		// again for the neighbour's 20 calls, are more than one address's
		// connection rate.
		play := 0
		s.while(t, func() {
			play++
			cl := from(d.Addr, fmt.Sprintf("127.0.5.%d", 1+play%250))
			for _, cpu := range []string{"nan", "inf", "-inf", "1e-300", "0.015", "-0.5", "1e300"} {
				fnc := &client.Function{Manifest: []byte("name = \"n\"\n[resources]\ncpu = " + cpu + "\n"), Files: map[string][]byte{"main.star": []byte("def main(): return 1\n")}}
				_, err := cl.Deploy(ctx(t), fnc)
				if !client.IsCode(err, client.CodeBadRequest) || !strings.Contains(err.Error(), "resources.cpu") {
					t.Errorf("cpu = %s: %v", cpu, err)
				}
			}
		})
		resp, err := http.Get("http://" + d.Policy + "/policy")
		if err != nil {
			t.Fatal(err)
		}
		var pub client.Policy
		err = json.NewDecoder(resp.Body).Decode(&pub)
		resp.Body.Close()
		if err != nil || pub.Free.CPU <= 0 || pub.Free.CPU > 1e6 {
			t.Fatalf("the policy after non-finite manifests: %+v %v", pub.Free, err)
		}
		rc := filepath.Join(t.TempDir(), "bentorc")
		for _, line := range []string{"TotalCPU nan", "MaxCPU inf", "ReserveCPU 0.001", "MaxConnections -1", "IdleTimeout 0"} {
			os.WriteFile(rc, []byte(line+"\n"), 0o644)
			out, err := execOutput(filepath.Join(d.bin, "bentod"), "-f", rc, "--verify-config")
			if err == nil || !strings.Contains(out, rc+":1:") {
				t.Errorf("bentorc %q: %v %s", line, err, out)
			}
		}
	})
	t.Run("many-tiny-keys", func(t *testing.T) {
		// 60,000 one-byte keys in 256 KB of storage: each key is charged
		// its overhead, so about 4,000 fit, in one file on disk.
		keys := tempFunction(t, "name = \"keys\"\nmode = \"service\"\napis = [\"storage\"]\n[resources]\nstorage = \"256 KB\"\n",
			"def main(op, n = 0):\n    if op == \"count\":\n        return \"%d\" % len(storage.keys())\n    for i in range(n):\n        storage.put(str(i), \"x\")\n")
		dep := deployCLI(t, d, keys)
		var r result
		s.while(t, func() { r = bento(t, "", "invoke", d.Addr, dep.InvocationToken, "fill", "60000") })
		if r.Code != 1 || !strings.Contains(r.Stderr, "storage limit exceeded") {
			t.Fatalf("60,000 keys: %s", r)
		}
		c := bento(t, "", "invoke", d.Addr, dep.InvocationToken, "count")
		n, _ := strconv.Atoi(c.Stdout)
		if n == 0 || n > (256<<10)/64 {
			t.Fatalf("%s keys fit in 256 KB", c.Stdout)
		}
		dir := filepath.Join(d.DataDir, "instances", dep.Instance)
		st, err := os.Stat(filepath.Join(dir, "storage.log"))
		if err != nil || st.Size() > 2*(256<<10)+(64<<10) {
			t.Fatalf("storage on disk: %v %v", st, err)
		}
		ents, _ := os.ReadDir(dir)
		t.Logf("%d keys, %d bytes on disk in one file; instance directory: %d entries", n, st.Size(), len(ents))
		bento(t, "", "shutdown", d.Addr, dep.ShutdownToken)
	})
	t.Run("empty-sends", func(t *testing.T) {
		// bento.send("") 300,000 times: each record is charged its framing,
		// so 256 KB holds about 16,000 of them.
		f := tempFunction(t, "name = \"empty\"\napis = [\"send\"]\n[resources]\noutput = \"256 KB\"\ncpu = 0.5\n",
			"def main(n):\n    for i in range(n):\n        bento.send(\"\")\n")
		s.while(t, func() {
			if r := run(f, "300000"); r.Code != 6 || !strings.Contains(r.Stderr, "output limit exceeded") {
				t.Fatalf("300,000 empty sends in 256 KB: %s", r)
			}
		})
	})
	t.Run("long-keys-no-paths", func(t *testing.T) {
		// The longest key works; a longer one is refused; no error names a
		// host path.
		f := tempFunction(t, "name = \"long\"\napis = [\"storage\"]\n",
			"def main(n):\n    k = \"k\" * n\n    storage.put(k, \"v\")\n    return storage.get(k)\n")
		s.while(t, func() {
			r, r2 := run(f, "256"), run(f, "257")
			if r.Code != 0 || r.Stdout != "v" {
				t.Fatalf("a 256-byte key: %s", r)
			}
			if r2.Code != 1 || !strings.Contains(r2.Stderr, "key must be 1-256 bytes") {
				t.Fatalf("a 257-byte key: %s", r2)
			}
			noPaths(t, d, r.Stderr, r2.Stderr)
		})
	})
	t.Run("oversized-arguments", func(t *testing.T) {
		// Arguments over 64 KB are refused before they are parsed. The
		// attacker is the CLI, a process of its own (at nice 19, as every
		// attacker): encoding 100 KB arguments again and again inside the
		// test's own process, beside the neighbour's timer and under the
		// race detector, slowed the timer itself.
		big := strings.Repeat("a", 100<<10)
		s.while(t, func() {
			for i := 0; i < 3; i++ {
				r := bento(t, "", "invoke", d.Addr, s.token, big)
				if r.Code != 8 || !strings.Contains(r.Stderr, "invoke arguments at most") {
					t.Errorf("100 KB of arguments: %s", r)
					return
				}
			}
		})
	})
	t.Run("huge-error-message", func(t *testing.T) {
		// A function that fails with 10 MB of message: cut to 4 KB.
		f := tempFunction(t, "name = \"huge\"\n[resources]\nmemory = \"64 MB\"\n", "def main():\n    fail(\"e\" * 10000000)\n")
		s.while(t, func() {
			if r := run(f); r.Code != 1 || len(r.Stderr) > 16<<10 || !strings.Contains(r.Stderr, "eeee") {
				t.Fatalf("a 10 MB error: exit %d, %d bytes of stderr", r.Code, len(r.Stderr))
			}
		})
	})
	t.Run("log-flood", func(t *testing.T) {
		// print() 20,000 lines: at most 64 KB of log is kept on disk.
		f := tempFunction(t, "name = \"logger\"\nmode = \"service\"\napis = [\"log\"]\n[resources]\noutput = \"1 MB\"\n",
			"def main(n):\n    for i in range(n):\n        print(\"line %d %s\" % (i, \"x\" * 100))\n")
		dep := deployCLI(t, d, f)
		s.while(t, func() {
			if r := bento(t, "", "invoke", d.Addr, dep.InvocationToken, "20000"); r.Code != 0 {
				t.Errorf("20,000 log lines: %s", r)
			}
		})
		var kept int64
		for _, name := range []string{"function.log", "function.log.1"} {
			if st, err := os.Stat(filepath.Join(d.DataDir, "instances", dep.Instance, name)); err == nil {
				kept += st.Size()
			}
		}
		if kept == 0 || kept > 64<<10+8<<10 {
			t.Fatalf("%d bytes of log kept", kept)
		}
		bento(t, "", "shutdown", d.Addr, dep.ShutdownToken)
	})
	t.Run("reattach-by-index", func(t *testing.T) {
		// 40,000 one-byte records (240 KB of log): attaching near the end
		// reads at most 64 KB of record headers (the index's step), not
		// the whole log. bentod's read(2) bytes (/proc/PID/io rchar) are
		// the measure: a rescan would read 200 KB of headers per attach.
		const records = 40000
		f := tempFunction(t, "name = \"tiny\"\nmode = \"service\"\napis = [\"send\"]\n[resources]\noutput = \"8 MB\"\nlifetime = \"5 minutes\"\ncpu = 0.5\ncpu_time = \"60 s\"\n",
			"def main(n):\n    for i in range(n):\n        bento.send(\"x\")\n")
		dep := deployCLI(t, d, f)
		sess, err := s.cl.Invoke(ctx(t), dep.InvocationToken, records)
		if err != nil {
			t.Fatal(err)
		}
		var offsets []int64 // where each record starts
		n := 0
		for {
			start := sess.Offset
			data, exit, err := sess.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if exit != nil {
				if exit.Status != client.StatusOK {
					t.Fatalf("%d records: %+v", records, exit)
				}
				break
			}
			n += len(data)
			offsets = append(offsets, start)
		}
		sess.Close()
		if n != records {
			t.Fatalf("%d bytes of %d records", n, records)
		}
		const attaches = 20
		var read int64
		play := 0
		s.while(t, func() {
			play++ // each play from an address of its own, as above
			cl := from(d.Addr, fmt.Sprintf("127.0.6.%d", 1+play%250))
			before := readBytes(t, d.cmd.Process.Pid)
			for i := 1; i <= attaches; i++ {
				a, err := cl.Attach(ctx(t), dep.InvocationToken, sess.ID, offsets[len(offsets)-i])
				if err != nil {
					t.Error(err)
					return
				}
				rest, _, err := a.Collect()
				a.Close()
				if err != nil || len(rest) != i {
					t.Errorf("attach %d records before the end: %d bytes, %v", i, len(rest), err)
					return
				}
			}
			read = readBytes(t, d.cmd.Process.Pid) - before
		})
		t.Logf("%d attaches near the end of %d records: bentod read %d bytes, %d per attach", attaches, records, read, read/attaches)
		if read/attaches > 100<<10 {
			t.Errorf("bentod read %d bytes per attach near the end of a %d-record log: a rescan, not the index", read/attaches, records)
		}
		bento(t, "", "shutdown", d.Addr, dep.ShutdownToken)
	})
	t.Run("many-readers", func(t *testing.T) {
		// At most 8 clients attach to one session at once; the session
		// runs to its end beside them.
		f := tempFunction(t, "name = \"slow\"\nmode = \"service\"\napis = [\"sleep\", \"send\"]\n[resources]\nlifetime = \"5 minutes\"\n",
			"def main():\n    bento.send(\"start\")\n    bento.sleep(2)\n    return \"end\"\n")
		dep := deployCLI(t, d, f)
		s.while(t, func() {
			first, err := s.cl.Invoke(ctx(t), dep.InvocationToken)
			if err != nil {
				t.Fatal(err)
			}
			defer first.Close()
			var held []*client.Session
			var busy int
			for i := 0; i < 10; i++ {
				a, err := s.cl.Attach(ctx(t), dep.InvocationToken, first.ID, 0)
				if client.IsCode(err, client.CodeBusy) {
					busy++
					continue
				}
				if err != nil {
					t.Error(err)
					break
				}
				held = append(held, a)
			}
			for _, a := range held {
				a.Close()
			}
			if len(held) != 7 || busy != 3 {
				t.Fatalf("%d readers attached beside the first, %d refused; want 7 and 3", len(held), busy)
			}
			out, exit, err := first.Collect()
			if err != nil || exit == nil || exit.Status != client.StatusOK || !strings.Contains(string(out), "start") {
				t.Fatalf("the session beside its readers: %q %+v %v", out, exit, err)
			}
		})
		bento(t, "", "shutdown", d.Addr, dep.ShutdownToken)
	})
	t.Run("attach-at-end", func(t *testing.T) {
		// 200 clients attach at once at the exact end of a finished
		// session (the offset the server gave with its exit): each gets
		// the exit at once, and nothing is held for them afterwards.
		dep := deployCLI(t, d, tempFunction(t, "name = \"sayer\"\nmode = \"service\"\napis = [\"send\"]\n[resources]\nlifetime = \"5 minutes\"\n",
			"def main():\n    bento.send(\"said\")\n"))
		sess, err := s.cl.Invoke(ctx(t), dep.InvocationToken)
		if err != nil {
			t.Fatal(err)
		}
		_, exit, err := sess.Collect()
		sess.Close()
		if err != nil || exit == nil {
			t.Fatalf("the session: %v", err)
		}
		// The attacker is a process of its own, as for the floods: 200
		// clients at once in the test's own process, under the race
		// detector, slowed the neighbour's timer itself.
		var slowest int64
		s.while(t, func() {
			r := startAttack(t, attackSpec{Kind: "attach-end", Target: d.Addr, Sources: 50, Conns: 200, Total: 200, Token: dep.InvocationToken, Session: sess.ID, Offset: exit.Offset}).wait(time.Minute)
			t.Logf("attacker: %v", r)
			// A session has at most 8 readers at once: an attach that
			// finds 8 is told to retry later, clearly; every other gets
			// the exit alone.
			if r.Attempts != 200 || r.Requests+r.Refused != 200 || r.Requests < 100 {
				t.Errorf("200 attaches at the end: %d answered with the exit alone, %d refused, of %d attempts (%d connected): want every one answered or refused, most answered", r.Requests, r.Refused, r.Attempts, r.Connected)
			}
			slowest = max(slowest, r.MaxLifeMs)
		})
		t.Logf("200 attaches at the end offset %d, played again until the neighbour's 20 calls: the slowest answered in %d ms", exit.Offset, slowest)
		if slowest > 5000 {
			t.Errorf("an attach at the end of a finished session took %d ms", slowest)
		}
		bento(t, "", "shutdown", d.Addr, dep.ShutdownToken)
	})
}

func execOutput(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// vault is a service holding one value, with operations an invoker could
// abuse to exhaust it.
const vaultManifest = `name = "vault"
mode = "service"
apis = ["storage", "send", "recv"]
[resources]
memory = "32 MB"
cpu = 0.5
cpu_time = "1 s"
steps = 1000000000
storage = "1 MB"
output = "1 MB"
lifetime = "10 minutes"
`

const vaultCode = `def main(op, n = 0):
    if op == "put":
        storage.put("v", "precious")
        return "ok"
    if op == "get":
        return storage.get("v")
    if op == "oom":
        l = []
        while True:
            l.append("x" * 100000 + str(len(l)))
    if op == "spin":
        x = 0
        while True:
            x += 1
    if op == "flood":
        for i in range(n):
            bento.send("y" * 65536)
        return None
    if op == "fill":
        for i in range(n):
            storage.put("junk%d" % i, "z" * 65536)
        return None
    if op == "hoard":
        data = b""
        while True:
            chunk = bento.recv()
            if chunk == None:
                return "%d" % len(data)
            data = data + chunk
    fail("unknown op")
`

// TestInvocationTokenCannotHarm: whoever holds only the invocation token
// (the users of a shared Dropbox) can make calls fail, but cannot end the
// instance, exhaust it for good, or destroy or corrupt its stored data.
func TestInvocationTokenCannotHarm(t *testing.T) {
	s := newSiege(t, "")
	d := s.d
	dep := deployCLI(t, d, tempFunction(t, vaultManifest, vaultCode))
	inv := func(stdin string, args ...string) result {
		all := append([]string{"invoke"}, args...)
		if stdin != "" {
			all = append([]string{"invoke", "-i"}, args...)
		}
		return bento(t, stdin, append(all[:len(all)-len(args)], append([]string{d.Addr, dep.InvocationToken}, args...)...)...)
	}
	if r := inv("", "put"); r.Code != 0 {
		t.Fatalf("put: %s", r)
	}
	abuse := []struct {
		name   string
		stdin  string
		args   []string
		reason string
	}{
		{"memory bomb", "", []string{"oom"}, "memory limit exceeded"},
		{"cpu spin", "", []string{"spin"}, "cpu time limit exceeded"},
		{"output flood", "", []string{"flood", "64"}, "output limit exceeded"},
		{"storage fill", "", []string{"fill", "100"}, "storage limit exceeded"},
		{"memory bomb again", "", []string{"oom"}, "memory limit exceeded"},
		{"huge input hoarded", strings.Repeat("h", 24<<20), []string{"hoard"}, "limit exceeded"}, // memory or CPU, whichever first
	}
	s.while(t, func() {
		for _, a := range abuse {
			r := inv(a.stdin, a.args...)
			if r.Code == 0 || !strings.Contains(r.Stderr, a.reason) {
				t.Errorf("%s: want a failed call with %q, got %s", a.name, a.reason, r)
			}
			// Between blows the owner's data is there.
			if g := inv("", "get"); g.Code != 0 || g.Stdout != "precious" {
				t.Fatalf("after %s the stored value is %q: %s", a.name, g.Stdout, g)
			}
		}
		// Output over and over: old output gives way, the instance stays.
		for i := 0; i < 12; i++ {
			if r := inv("", "flood", "12"); r.Code != 0 {
				t.Fatalf("flood %d within the allowance: %s", i, r)
			}
		}
	})
	if g := inv("", "get"); g.Code != 0 || g.Stdout != "precious" {
		t.Fatalf("after the abuse: %s", g)
	}
	if !strings.Contains(d.log.String(), "starting a new one") {
		t.Error("the runner was never restarted: the test proves nothing")
	}
	// Only the shutdown token ends it: bentod refuses the invocation
	// token (asked directly; bento would not even send it).
	if err := client.New(d.Addr).Shutdown(ctx(t), dep.InvocationToken); !client.IsCode(err, client.CodeNotFound) {
		t.Fatalf("shutdown with the invocation token: %v", err)
	}
	if r := bento(t, "", "shutdown", d.Addr, dep.ShutdownToken); r.Code != 0 {
		t.Fatalf("shutdown with the shutdown token: %s", r)
	}
}

// from returns a client whose connections come from ip.
func from(addr, ip string) *client.Client {
	cl := client.New(addr)
	cl.Dialer = &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return cl
}

// collectAll invokes and gathers the output and how the call ended.
func collectAll(t *testing.T, cl *client.Client, token string, args ...any) (string, *client.Exit) {
	t.Helper()
	sess, err := cl.Invoke(ctx(t), token, args...)
	if err != nil {
		t.Fatalf("invoke: %v", err)
	}
	defer sess.Close()
	out, exit, err := sess.Collect()
	if err != nil {
		t.Fatalf("collect: %v", err)
	}
	return string(out), exit
}

const childManifest = "name = \"child\"\nmode = \"service\"\n[resources]\nlifetime = \"10 minutes\"\n"

// TestCompositionCharged: instances and calls a function starts are
// charged to the client that deployed it, within their own caps, and
// composition has a bound on depth.
func TestCompositionCharged(t *testing.T) {
	s := newSiege(t, "TotalCPU 50\nMaxInstancesPerClient 6\nMaxComposedInstances 8\nMaxCompositionDepth 3\nMaxCompositionCalls 4\n")
	d := s.d
	spawner := tempFunction(t, "name = \"spawner\"\nmode = \"service\"\napis = [\"bento\", \"send\"]\ndestinations = [\"accept 127.0.0.1:*\"]\n[resources]\nlifetime = \"10 minutes\"\n",
		"def main(server, n):\n    for i in range(n):\n        remote.deploy(server, bento.source(\"child.toml\"), {\"main.star\": bento.source(\"child.star\")})\n        bento.send(\"%d \" % (i + 1))\n    return \"all\"\n",
		"child.toml", childManifest, "child.star", "def main():\n    return 1\n")
	fnc, err := client.LoadFunction(spawner)
	if err != nil {
		t.Fatal(err)
	}
	// A bentod whose clients have room to spare (32 instances each), for
	// composed-instances-capped. What that case and the first leave, the
	// last counts again after a restart.
	roomy := newSiege(t, "TotalCPU 50\nMaxInstancesPerClient 32\nMaxComposedInstances 8\n")
	var roomyDep *client.Deployed
	t.Run("self-deploys-charged-to-client", func(t *testing.T) {
		// A client at 127.0.0.5 (6 instances at most) deploys a function
		// that deploys onto its own box: the function's instances count as
		// the client's, so it makes 5, and the client itself has no slot
		// left; a client at another address is served.
		greedy := from(d.Addr, "127.0.0.5")
		dep, err := greedy.Deploy(ctx(t), fnc)
		if err != nil {
			t.Fatal(err)
		}
		// The first play makes 5; each one after it, none (a client that
		// keeps trying, at its address's rate).
		want := "1 2 3 4 5 "
		s.whileKeeping(t, func() {
			defer pace(time.Now(), retryPeriod)
			out, exit := collectAll(t, greedy, dep.InvocationToken, d.Addr, 20)
			if out != want || exit.Error == nil || !strings.Contains(exit.Error.Msg, "MaxInstancesPerClient") {
				t.Fatalf("spawning from a client with 6 slots: %q, %+v; want %q and refused at MaxInstancesPerClient", out, exit, want)
			}
			want = ""
		})
		if _, err := greedy.Deploy(ctx(t), fnc); !client.IsCode(err, client.CodeBusy) || !strings.Contains(err.Error(), "MaxInstancesPerClient") {
			t.Fatalf("the client's own deploy after its function used its share: %v", err)
		}
		if _, err := from(d.Addr, "127.0.0.6").Deploy(ctx(t), fnc); err != nil {
			t.Fatalf("another client: %v", err)
		}
	})
	t.Run("composed-instances-capped", func(t *testing.T) {
		// Whatever room is left in a client's share (here 32 instances, on
		// the roomy bentod), a root's functions may hold only
		// MaxComposedInstances (8): the function stops at 8.
		cl := from(roomy.d.Addr, "127.0.0.7")
		dep, err := cl.Deploy(ctx(t), fnc)
		if err != nil {
			t.Fatal(err)
		}
		roomyDep = dep
		// The first play makes 8; each one after it, none.
		want := "1 2 3 4 5 6 7 8 "
		roomy.whileKeeping(t, func() {
			defer pace(time.Now(), retryPeriod)
			out, exit := collectAll(t, cl, dep.InvocationToken, roomy.d.Addr, 20)
			if out != want || exit.Error == nil || !strings.Contains(exit.Error.Msg, "MaxComposedInstances") {
				t.Fatalf("spawning without a per-client share: %q, %+v; want %q and refused at MaxComposedInstances", out, exit, want)
			}
			want = ""
		})
	})
	t.Run("composition-depth", func(t *testing.T) {
		// A function that deploys itself and calls the copy, without end:
		// refused when the chain is deeper than MaxCompositionDepth (3).
		self := "name = \"deeper\"\nmode = \"service\"\napis = [\"bento\"]\ndestinations = [\"accept 127.0.0.1:*\"]\n[resources]\nlifetime = \"2 minutes\"\n"
		code := "def main(server):\n    box = remote.deploy(server, bento.source(\"self.toml\"), {\"main.star\": bento.source(\"main.star\"), \"self.toml\": bento.source(\"self.toml\")})\n    return \"+\" + remote.invoke(server, box.invocation_token, [server])\n"
		fnc, err := client.LoadFunction(tempFunction(t, self, code, "self.toml", self))
		if err != nil {
			t.Fatal(err)
		}
		// Each play from an address of its own: the copies a chain
		// leaves (until their lifetime ends) count against its client.
		play := 0
		s.whileKeeping(t, func() {
			play++
			cl := from(d.Addr, fmt.Sprintf("127.0.4.%d", 1+play%250))
			dep, err := cl.Deploy(ctx(t), fnc)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Shutdown(context.Background(), dep.ShutdownToken)
			if out, exit := collectAll(t, cl, dep.InvocationToken, d.Addr); exit.Error == nil || !strings.Contains(exit.Error.Msg, "MaxCompositionDepth 3") {
				t.Fatalf("recursive self-deploy: %q, %+v; want refused at MaxCompositionDepth 3", out, exit)
			}
		})
	})
	t.Run("composition-calls-capped", func(t *testing.T) {
		// At most 4 remote calls of one root at once.
		sleepy := deployCLI(t, d, tempFunction(t, "name = \"sleepy\"\nmode = \"service\"\napis = [\"sleep\"]\n[resources]\nlifetime = \"2 minutes\"\n", "def main():\n    bento.sleep(2)\n    return \"z\"\n"))
		caller := deployCLI(t, d, tempFunction(t, "name = \"caller\"\nmode = \"service\"\napis = [\"bento\"]\ndestinations = [\"accept 127.0.0.1:*\"]\n[resources]\nlifetime = \"2 minutes\"\n",
			"def main(server, tok):\n    return remote.invoke(server, tok)\n"))
		s.while(t, func() {
			var mu sync.Mutex
			var ok, capped int
			var wg sync.WaitGroup
			for i := 0; i < 8; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					out, exit := collectAll(t, client.New(d.Addr), caller.InvocationToken, d.Addr, sleepy.InvocationToken)
					mu.Lock()
					defer mu.Unlock()
					switch {
					case out == "z":
						ok++
					case exit.Error != nil && strings.Contains(exit.Error.Msg, "MaxCompositionCalls"):
						capped++
					default:
						t.Errorf("call: %q %+v", out, exit)
					}
				}()
			}
			wg.Wait()
			if ok != 4 || capped != 4 {
				t.Fatalf("8 calls at once: %d served, %d capped; want 4 and 4", ok, capped)
			}
		})
	})
	t.Run("composition-groups-restored", func(t *testing.T) {
		// Both bentods killed (as a crash would) and started again: the
		// instances come back with their owner and their root, so the
		// client at 127.0.0.5 is still at its MaxInstancesPerClient and the
		// root on the roomy bentod still holds its MaxComposedInstances;
		// the first bentod's neighbour comes back with its data. (Their
		// lifetimes, 10 minutes, outlast the cases before this one.)
		if roomyDep == nil {
			t.Skip("the cases this one continues did not run (-run)")
		}
		for _, x := range []*siege{s, roomy} {
			x.d.kill()
			x.d.restart(t)
		}
		s.whileKeeping(t, func() {
			defer pace(time.Now(), retryPeriod)
			if _, err := from(d.Addr, "127.0.0.5").Deploy(ctx(t), fnc); !client.IsCode(err, client.CodeBusy) || !strings.Contains(err.Error(), "MaxInstancesPerClient") {
				t.Errorf("after a restart, the deploy of a client whose functions filled its share: %v, want refused at MaxInstancesPerClient", err)
			}
			out, exit := collectAll(t, from(roomy.d.Addr, "127.0.0.7"), roomyDep.InvocationToken, roomy.d.Addr, 1)
			if out != "" || exit.Error == nil || !strings.Contains(exit.Error.Msg, "MaxComposedInstances") {
				t.Errorf("after a restart, a root whose group is full deploying once more: %q, %+v; want refused at MaxComposedInstances", out, exit)
			}
		})
	})
}

func unixKill0(pid int) error { return unix.Kill(pid, 0) }

// bentodStatus asks bentod for its status line (SIGUSR1) and returns its
// numeric fields.
func bentodStatus(t *testing.T, d *daemon) map[string]int64 {
	t.Helper()
	n := strings.Count(d.log.String(), "msg=status ")
	if err := d.cmd.Process.Signal(unix.SIGUSR1); err != nil {
		t.Fatalf("SIGUSR1 to bentod: %v", err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		lines := strings.Split(d.log.String(), "\n")
		if strings.Count(d.log.String(), "msg=status ") <= n {
			continue
		}
		for i := len(lines) - 1; i >= 0; i-- {
			if !strings.Contains(lines[i], "msg=status ") {
				continue
			}
			st := map[string]int64{}
			for _, f := range strings.Fields(lines[i]) {
				k, v, ok := strings.Cut(f, "=")
				if n, err := strconv.ParseInt(v, 10, 64); ok && err == nil {
					st[k] = n
				}
			}
			return st
		}
	}
	t.Fatalf("bentod wrote no status line after SIGUSR1:\n%s", d.log)
	return nil
}

// attackInFlight runs an attack under the siege's checks (the neighbour
// timed for hold, once warm has passed) and returns what the attacker saw
// and the bytes bentod held in flight just before it stopped.
func (s *siege) attackInFlight(t *testing.T, hold, warm time.Duration, spec attackSpec) (r attackReport, held float64) {
	t.Helper()
	s.under(t, hold, func() func() {
		a := startAttack(t, spec)
		time.Sleep(warm)
		return func() {
			held = bentodInFlight(t, s.d)
			r = a.stop()
		}
	})
	return r, held
}

// bentodInFlight is the bytes bentod holds for clients and functions now.
func bentodInFlight(t *testing.T, d *daemon) float64 {
	t.Helper()
	st := bentodStatus(t, d)
	v, ok := st["in_flight_bytes"]
	if !ok {
		t.Fatalf("bentod's status has no in_flight_bytes: %v", st)
	}
	return float64(v)
}

// readBytes is what a process has read with read(2) and its kind so far
// (/proc/PID/io rchar).
func readBytes(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "rchar: "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	t.Fatalf("no rchar in /proc/%d/io", pid)
	return 0
}
