package dust

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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

// bridgeMaxConns bounds the connections a bridge carries at once: a
// relay keeps one to each other relay it talks to.
const bridgeMaxConns = 1024

// bridge forwards TCP ports between two network namespaces.
type bridge struct {
	outer, inner *os.File     // the joined namespace, the mote's
	own          map[int]bool // the mote's own ports: never forwarded out
	logf         func(format string, a ...any)

	mu     sync.Mutex
	out    map[int]bool // ports forwarded out
	lns    []net.Listener
	conns  map[net.Conn]bool
	closed bool
}

func newBridge(outer, inner *os.File, own []int, logf func(string, ...any)) *bridge {
	b := &bridge{outer: outer, inner: inner, own: map[int]bool{}, logf: logf, out: map[int]bool{}, conns: map[net.Conn]bool{}}
	for _, p := range own {
		b.own[p] = true
	}
	return b
}

// enterNewNamespace moves the calling thread, which must be locked to its
// goroutine for good, into a new network namespace with lo up, and
// returns handles on the namespace it left and on the new one. Processes
// this goroutine starts afterwards are in the new namespace.
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
// ever runs in ns by accident.
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
// connection to the same port in namespace to.
func (b *bridge) forward(from, to *os.File, port int) error {
	var ln net.Listener
	var err error
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
	b.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
					time.Sleep(100 * time.Millisecond)
					continue
				}
				return // closed
			}
			if !b.track(c) {
				c.Close()
				continue
			}
			go b.carry(c, to, port)
		}
	}()
	return nil
}

// track counts a connection in, within bridgeMaxConns.
func (b *bridge) track(c net.Conn) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed || len(b.conns) >= bridgeMaxConns {
		return false
	}
	b.conns[c] = true
	return true
}

func (b *bridge) untrack(cs ...net.Conn) {
	b.mu.Lock()
	for _, c := range cs {
		delete(b.conns, c)
	}
	b.mu.Unlock()
}

// carry dials port in namespace to and copies both ways until either
// side closes.
func (b *bridge) carry(c net.Conn, to *os.File, port int) {
	var d net.Conn
	var err error
	if e := inNamespace(to, func() { d, err = net.DialTimeout("tcp", loopback(port), 10*time.Second) }); e != nil {
		err = e
	}
	if err != nil || !b.track(d) {
		c.Close()
		if d != nil {
			d.Close()
		}
		b.untrack(c)
		return
	}
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(d, c)
	go pipe(c, d)
	<-done
	<-done
	c.Close()
	d.Close()
	b.untrack(c, d)
}

// forwardIn makes the mote's port reachable from the joined namespace.
func (b *bridge) forwardIn(port int) error { return b.forward(b.outer, b.inner, port) }

// forwardOut makes a port of the joined namespace reachable from the
// mote's, once; never one of the mote's own.
func (b *bridge) forwardOut(port int) error {
	b.mu.Lock()
	if b.own[port] || b.out[port] || port <= 0 || port > 65535 {
		b.mu.Unlock()
		return nil
	}
	b.out[port] = true
	b.mu.Unlock()
	if err := b.forward(b.inner, b.outer, port); err != nil {
		b.mu.Lock()
		delete(b.out, port)
		b.mu.Unlock()
		return err
	}
	return nil
}

// follow forwards out the ports of the relays in the consensus of the
// mote's tor (control port ctl, in the mote's namespace) as they appear:
// every 2 s for the first two minutes, then every 15 s, until ctx ends.
func (b *bridge) follow(ctx context.Context, ctl, cookie string) {
	start := time.Now()
	for {
		var statuses map[string]boxdir.Status
		_ = inNamespace(b.inner, func() {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			c, err := torctl.DialAuth(cctx, ctl, torctl.Auth{CookieFile: cookie})
			if err != nil {
				return
			}
			defer c.Close()
			if info, err := c.GetInfo(cctx, "ns/all"); err == nil {
				statuses, _ = boxdir.ParseStatuses(info["ns/all"])
			}
		})
		for _, st := range statuses {
			if !st.Addr.IsLoopback() {
				continue
			}
			for _, p := range []uint16{st.ORPort, st.DirPort} {
				if err := b.forwardOut(int(p)); err != nil && b.logf != nil {
					b.logf("forwarding port %d out of the mote: %v", p, err)
				}
			}
		}
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

// close stops every forwarder and connection.
func (b *bridge) close() {
	b.mu.Lock()
	b.closed = true
	lns, conns := b.lns, b.conns
	b.lns, b.conns = nil, map[net.Conn]bool{}
	b.mu.Unlock()
	for _, l := range lns {
		l.Close()
	}
	for c := range conns {
		c.Close()
	}
}

// AuthorityPorts returns the ORPorts and DirPorts the DirAuthority lines
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
