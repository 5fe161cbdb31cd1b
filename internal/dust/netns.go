package dust

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torbento/bento/internal/boxdir"
	"github.com/torbento/bento/internal/torctl"
)

// A local mote that joins a given Tor network (a test network) runs in a
// network namespace of its own, which, like the namespace of the network
// it joins, holds only lo: no interface links the two. The supervisor
// holds a handle on both namespaces and carries the mote's Tor traffic
// across, port by port, with forwarders in user space (as slirp4netns
// forwards ports):
//
//   - in: the mote's ORPort, on the joined namespace's loopback (where
//     its descriptor says it listens), to the same port in the mote's;
//   - out: every ORPort and DirPort of the network's relays that the
//     mote's tor may dial (the authorities', from the network's torrc;
//     the others', from the consensus the mote's tor holds, read again
//     as it changes), on the mote's loopback, to the same port in the
//     joined namespace.
//
// Nothing else crosses: the box's client port, policy endpoint and tor's
// control and SOCKS ports exist only inside the mote, so clients reach
// the box through Tor, as on a real mote.

// Bounds on what a bridge holds, whoever is at the other end: relays of
// the joined network, or anything else on its loopback.
const (
	// bridgeMaxPairs bounds the connections carried at once in each
	// direction (a relay keeps one to each relay it talks to).
	bridgeMaxPairs = 512
	// bridgeMaxPorts bounds the ports forwarded out of the mote.
	bridgeMaxPorts = 256
	// bridgeHalfClosed is how long a connection whose one direction has
	// ended may keep the other open.
	bridgeHalfClosed = 30 * time.Second
	// bridgeDialers is how many threads dial into the mote.
	bridgeDialers = 4
)

// bridge forwards TCP ports between two network namespaces.
type bridge struct {
	outer, inner *os.File     // the joined namespace, the mote's
	own          map[int]bool // the mote's own ports: never forwarded out
	logf         func(format string, a ...any)
	halfClosed   time.Duration
	dials        chan dialReq // served by threads in the mote's namespace
	wg           sync.WaitGroup

	mu     sync.Mutex
	out    map[int]bool // ports forwarded out
	lns    []net.Listener
	pairs  [2]int // connections carried: [0] into the mote, [1] out of it
	conns  map[net.Conn]bool
	closed bool
	done   chan struct{}
}

type dialReq struct {
	port  int
	reply chan net.Conn // nil when the dial failed
}

func newBridge(outer, inner *os.File, own []int, logf func(string, ...any)) *bridge {
	b := &bridge{outer: outer, inner: inner, own: map[int]bool{}, logf: logf, halfClosed: bridgeHalfClosed,
		dials: make(chan dialReq), out: map[int]bool{}, conns: map[net.Conn]bool{}, done: make(chan struct{})}
	if b.logf == nil {
		b.logf = func(string, ...any) {}
	}
	for _, p := range own {
		b.own[p] = true
	}
	// A few threads of the mote's namespace dial for every connection
	// carried in: no thread is made per connection.
	for i := 0; i < bridgeDialers; i++ {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
			if err := unix.Setns(int(inner.Fd()), unix.CLONE_NEWNET); err != nil {
				b.logf("a dialer in the mote's namespace: %v", err)
				return
			}
			for {
				select {
				case <-b.done:
					return
				case r := <-b.dials:
					c, err := net.DialTimeout("tcp", loopback(r.port), 10*time.Second)
					if err != nil {
						c = nil
					}
					r.reply <- c
				}
			}
		}()
	}
	return b
}

// enterNewNamespace moves the calling thread, which must be locked to its
// goroutine, into a new network namespace with lo up, and returns handles
// on the namespace it left and on the new one. Processes this goroutine
// starts afterwards are in the new namespace. (The supervisor checks
// first that the namespace it leaves holds only lo: onlyLoopback.)
func enterNewNamespace() (outer, inner *os.File, err error) {
	outer, err = os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, nil, err
	}
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		outer.Close()
		return nil, nil, fmt.Errorf("a network namespace of the mote's own: %w (local motes need root)", err)
	}
	inner, err = os.Open("/proc/thread-self/ns/net")
	if err == nil {
		err = loopbackUp()
	}
	if err != nil {
		_ = unix.Setns(int(outer.Fd()), unix.CLONE_NEWNET)
		outer.Close()
		if inner != nil {
			inner.Close()
		}
		return nil, nil, fmt.Errorf("the mote's network namespace: %w", err)
	}
	return outer, inner, nil
}

// onlyLoopback fails unless the calling thread's network namespace has no
// interface but lo: the namespace a mote joins must be a private test
// network's, since the bridge carries ports of its loopback into the
// mote, which must never be the host's own services.
func onlyLoopback() error {
	ifs, err := Interfaces("/proc/thread-self/net/dev")
	if err != nil {
		return err
	}
	for _, name := range ifs {
		if name != "lo" {
			return fmt.Errorf("this network namespace has interface %q besides lo: a local mote joins only a network in a namespace of loopback alone (run it under privnet run, share this namespace with --netns=false, or join the public network with --public-network)", name)
		}
	}
	return nil
}

// Interfaces lists the network interfaces a /proc/.../net/dev file names
// (those of the namespace of the process or thread it belongs to).
func Interfaces(devFile string) ([]string, error) {
	b, err := os.ReadFile(devFile)
	if err != nil {
		return nil, err
	}
	var out []string
	for i, line := range strings.Split(string(b), "\n") {
		if name, _, ok := strings.Cut(line, ":"); ok && i >= 2 {
			out = append(out, strings.TrimSpace(name))
		}
	}
	return out, nil
}

// loopbackUp brings lo up in the calling thread's network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bringing lo up: %w", err)
	}
	return nil
}

// namespaceID names a namespace as the kernel does ("net:[4026532...]").
func namespaceID(f *os.File) string {
	id, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	return id
}

// inNamespace runs f on a thread of its own in namespace ns. The thread
// is never unlocked, so it ends with its goroutine: no other goroutine
// ever runs in ns by accident. (It is for rare work: listening, reading
// the mote's consensus.)
func inNamespace(ns *os.File, f func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		f()
		errc <- nil
	}()
	return <-errc
}

func loopback(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// forward listens on the loopback port in namespace from and carries each
// connection to the same port in the other namespace.
func (b *bridge) forward(from *os.File, port int) error {
	into := from == b.outer // a connection arriving outside goes into the mote
	var ln net.Listener
	var err error
	// (On a thread of that namespace: the caller's may be in either.)
	if e := inNamespace(from, func() { ln, err = net.Listen("tcp", loopback(port)) }); e != nil {
		return e
	}
	if err != nil {
		return err
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		ln.Close()
		return errors.New("the bridge is closed")
	}
	b.lns = append(b.lns, ln)
	b.wg.Add(1)
	b.mu.Unlock()
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				var ne net.Error
				if !b.isClosed() && (errors.As(err, &ne) && ne.Timeout() || errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE)) {
					time.Sleep(100 * time.Millisecond)
					continue
				}
				return // closed
			}
			if !b.admit(c, into) {
				c.Close()
				continue
			}
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				b.carry(c, into, port)
			}()
		}
	}()
	return nil
}

func (b *bridge) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

func dir(into bool) int {
	if into {
		return 0
	}
	return 1
}

// admit counts a connection in, within bridgeMaxPairs for its direction.
func (b *bridge) admit(c net.Conn, into bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed || b.pairs[dir(into)] >= bridgeMaxPairs {
		return false
	}
	b.pairs[dir(into)]++
	b.conns[c] = true
	return true
}

// dial reaches port on the other side of the bridge: in the mote for a
// connection going in (by the mote's dialer threads), outside for one
// going out (carry runs on an ordinary thread, which is outside: the
// runtime makes new threads from its template thread, started before the
// supervisor entered the mote's namespace).
func (b *bridge) dial(into bool, port int) net.Conn {
	if !into {
		c, err := net.DialTimeout("tcp", loopback(port), 10*time.Second)
		if err != nil {
			return nil
		}
		return c
	}
	r := dialReq{port: port, reply: make(chan net.Conn, 1)}
	select {
	case b.dials <- r:
	case <-b.done:
		return nil
	}
	return <-r.reply
}

// carry dials the other side and copies both ways. When one direction
// ends, the other may go on for halfClosed at most; an error ends both.
func (b *bridge) carry(c net.Conn, into bool, port int) {
	d := b.dial(into, port)
	b.mu.Lock()
	if d != nil && !b.closed {
		b.conns[d] = true
	} else if d != nil {
		d.Close()
		d = nil
	}
	b.mu.Unlock()
	defer func() {
		c.Close()
		if d != nil {
			d.Close()
		}
		b.mu.Lock()
		delete(b.conns, c)
		delete(b.conns, d)
		b.pairs[dir(into)]--
		b.mu.Unlock()
	}()
	if d == nil {
		return
	}
	ended := make(chan error, 2)
	pipe := func(dst, src net.Conn) {
		_, err := io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok && err == nil {
			_ = tc.CloseWrite()
		}
		ended <- err
	}
	go pipe(d, c)
	go pipe(c, d)
	if err := <-ended; err != nil {
		return // the deferred closes end the other direction
	}
	deadline := time.Now().Add(b.halfClosed)
	c.SetDeadline(deadline)
	d.SetDeadline(deadline)
	<-ended
}

// forwardIn makes the mote's port reachable from the joined namespace.
func (b *bridge) forwardIn(port int) error { return b.forward(b.outer, port) }

// forwardOut makes a port of the joined namespace reachable from the
// mote's, once; never one of the mote's own, and at most bridgeMaxPorts.
func (b *bridge) forwardOut(port int) error {
	b.mu.Lock()
	if b.out[port] || port <= 0 || port > 65535 {
		b.mu.Unlock()
		return nil
	}
	if b.own[port] {
		b.mu.Unlock()
		return fmt.Errorf("port %d is one of the mote's own: not forwarded", port)
	}
	if len(b.out) >= bridgeMaxPorts {
		b.mu.Unlock()
		return fmt.Errorf("already %d ports forwarded out of the mote: not forwarding %d", bridgeMaxPorts, port)
	}
	b.out[port] = true
	b.mu.Unlock()
	if err := b.forward(b.inner, port); err != nil {
		return err // stays marked: not tried again every few seconds
	}
	return nil
}

// follow forwards out the ports of the relays on 127.0.0.1 in the
// consensus of the mote's tor (control port ctl, in the mote's namespace)
// as they appear: every 2 s for the first two minutes, then every 15 s,
// until ctx ends.
func (b *bridge) follow(ctx context.Context, ctl, cookie string) {
	start := time.Now()
	var lastErr string
	for {
		var statuses map[string]boxdir.Status
		var err error
		_ = inNamespace(b.inner, func() {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			c, derr := torctl.DialAuth(cctx, ctl, torctl.Auth{CookieFile: cookie})
			if derr != nil {
				err = derr
				return
			}
			defer c.Close()
			info, gerr := c.GetInfo(cctx, "ns/all")
			if gerr != nil {
				err = gerr
				return
			}
			statuses, err = boxdir.ParseStatuses(info["ns/all"])
		})
		if err != nil && err.Error() != lastErr && ctx.Err() == nil {
			b.logf("reading the mote's consensus: %v", err)
			lastErr = err.Error()
		}
		b.forwardRelays(statuses)
		every := 15 * time.Second
		if time.Since(start) < 2*time.Minute {
			every = 2 * time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}

// prime forwards out, before the mote's tor starts, the ports of every
// relay in the network's current consensus, fetched from an authority's
// DirPort (dirPorts, tried in turn): a relay whose port is not forwarded
// yet when the mote's tor first dials it would be taken for down, and a
// guard so taken is not tried again for a while.
func (b *bridge) prime(dirPorts []int) error {
	var lastErr error
	for _, p := range dirPorts {
		var statuses map[string]boxdir.Status
		var err error
		_ = inNamespace(b.outer, func() {
			cl := http.Client{Timeout: 10 * time.Second}
			resp, gerr := cl.Get("http://" + loopback(p) + "/tor/status-vote/current/consensus-microdesc")
			if gerr != nil {
				err = gerr
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("the authority at port %d answered %s", p, resp.Status)
				return
			}
			body, rerr := io.ReadAll(io.LimitReader(resp.Body, boxdir.MaxDocument))
			if rerr != nil {
				err = rerr
				return
			}
			statuses, err = boxdir.ParseStatuses(string(body))
		})
		if err != nil {
			lastErr = err
			continue
		}
		b.forwardRelays(statuses)
		return nil
	}
	return lastErr
}

// forwardRelays forwards out the ORPorts and DirPorts of the relays on
// 127.0.0.1 (the bridge carries that address only, as the network's
// relays use).
func (b *bridge) forwardRelays(statuses map[string]boxdir.Status) {
	for _, st := range statuses {
		if st.Addr != netip.AddrFrom4([4]byte{127, 0, 0, 1}) {
			continue
		}
		for _, port := range []uint16{st.ORPort, st.DirPort} {
			if err := b.forwardOut(int(port)); err != nil && port != 0 {
				b.logf("forwarding out of the mote: %v", err)
			}
		}
	}
}

// close stops every forwarder and connection, and waits for the bridge's
// goroutines (at most 10 s) so that the namespace handles can be closed
// after it.
func (b *bridge) close() {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.closed = true
	close(b.done)
	lns, conns := b.lns, b.conns
	b.lns, b.conns = nil, map[net.Conn]bool{}
	b.mu.Unlock()
	for _, l := range lns {
		l.Close()
	}
	for c := range conns {
		c.Close()
	}
	waited := make(chan struct{})
	go func() { b.wg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		b.logf("the bridge's goroutines did not end within 10 s")
	}
}

// AuthorityPorts returns, for each DirAuthority line, the ORPort and then the DirPort
// of a torrc name on loopback: what a mote's tor dials first.
func AuthorityPorts(torrc string) ([]int, error) {
	var ports []int
	for n, line := range strings.Split(torrc, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.EqualFold(f[0], "DirAuthority") {
			continue
		}
		found := 0
		for _, tok := range f[1:] {
			if v, ok := strings.CutPrefix(tok, "orport="); ok {
				p, err := strconv.ParseUint(v, 10, 16)
				if err != nil || p == 0 {
					return nil, fmt.Errorf("line %d: orport=%q: want a port 1-65535", n+1, truncateText(v, 20))
				}
				ports = append(ports, int(p))
				found++
				continue
			}
			host, port, err := net.SplitHostPort(tok)
			if err != nil || strings.Contains(tok, "=") {
				continue
			}
			if host != "127.0.0.1" {
				return nil, fmt.Errorf("line %d: authority at %q: a local mote joins only a network on this machine's loopback", n+1, truncateText(tok, 60))
			}
			p, err := strconv.ParseUint(port, 10, 16)
			if err != nil || p == 0 {
				return nil, fmt.Errorf("line %d: %q: want a port 1-65535", n+1, truncateText(tok, 60))
			}
			ports = append(ports, int(p))
			found++
		}
		if found != 2 {
			return nil, fmt.Errorf("line %d: a DirAuthority line names an orport= and an ADDRESS:DIRPORT", n+1)
		}
	}
	if len(ports) == 0 {
		return nil, errors.New("no DirAuthority line")
	}
	return ports, nil
}

func truncateText(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
