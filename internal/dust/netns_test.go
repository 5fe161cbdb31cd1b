package dust

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/internal/testutil"
)

// echo answers each line of each connection with itself.
func echo(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				c.Write([]byte(sc.Text() + "\n"))
			}
		}()
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func portOf(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }

// ping sends a line on a new connection to port and wants it back.
func ping(port int) error {
	c, err := net.DialTimeout("tcp", loopback(port), 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "ping\n" {
		return &net.OpError{Op: "echo", Err: os.ErrInvalid}
	}
	return nil
}

// TestBridge: a mote's namespace holds only lo and is unreachable from
// outside; the bridge carries exactly the ports it is told to, both
// ways, never one of the mote's own out, and nothing once closed.
func TestBridge(t *testing.T) {
	testutil.Require(t, os.Geteuid() == 0, "root (a network namespace of the mote's own)")
	type made struct {
		outer, inner *os.File
		ln           net.Listener
		err          error
	}
	ch := make(chan made)
	hold := make(chan struct{})
	go func() {
		// This thread moves into the new namespace for good, and ends
		// with its goroutine.
		runtime.LockOSThread()
		o, i, err := enterNewNamespace()
		var ln net.Listener
		if err == nil {
			ln, err = net.Listen("tcp", "127.0.0.1:0") // a server inside the mote
		}
		ch <- made{o, i, ln, err}
		<-hold
	}()
	m := <-ch
	defer close(hold)
	if m.err != nil {
		t.Fatal(m.err)
	}
	defer m.outer.Close()
	defer m.inner.Close()
	go echo(m.ln)
	defer m.ln.Close()
	inside := portOf(m.ln)

	var ifs []string
	var ifErr error
	if err := inNamespace(m.inner, func() { ifs, ifErr = Interfaces("/proc/thread-self/net/dev") }); err != nil || ifErr != nil {
		t.Fatal(err, ifErr)
	}
	if strings.Join(ifs, " ") != "lo" {
		t.Fatalf("the mote's namespace has %v; want only lo", ifs)
	}
	if namespaceID(m.inner) == namespaceID(m.outer) || !strings.HasPrefix(namespaceID(m.inner), "net:[") {
		t.Fatalf("namespaces %q and %q", namespaceID(m.inner), namespaceID(m.outer))
	}
	if err := ping(inside); err == nil {
		t.Fatal("the mote's server answers from outside without a bridge")
	}

	outside, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer outside.Close()
	go echo(outside)
	ownLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ownLn.Close()
	go echo(ownLn)

	b := newBridge(m.outer, m.inner, []int{portOf(ownLn)}, t.Logf)
	b.halfClosed = 300 * time.Millisecond // (before any connection reads it)
	if err := b.forwardIn(inside); err != nil {
		t.Fatal(err)
	}
	if err := ping(inside); err != nil {
		t.Fatalf("the mote's port through the bridge: %v", err)
	}
	for _, p := range []int{portOf(outside), portOf(outside)} {
		if err := b.forwardOut(p); err != nil {
			t.Fatalf("forwarding %d out: %v", p, err)
		}
	}
	if err := b.forwardOut(portOf(ownLn)); err == nil {
		t.Fatal("one of the mote's own ports was forwarded out without a word")
	}
	inNS := func(port int) (err error) {
		if e := inNamespace(m.inner, func() { err = ping(port) }); e != nil {
			return e
		}
		return err
	}
	if err := inNS(portOf(outside)); err != nil {
		t.Fatalf("a port outside, from inside the mote: %v", err)
	}
	if err := inNS(portOf(ownLn)); err == nil {
		t.Fatal("one of the mote's own ports was forwarded out")
	}
	// prime forwards out the relays of the network's consensus, fetched
	// from an authority's DirPort, before the mote's tor starts.
	relay, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	go echo(relay)
	auth := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/tor/status-vote/current/consensus-microdesc" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, "network-status-version 3 microdesc\nr relay q6urq6urq6urq6urq6urq6urq6s 2026-12-02 12:00:00 127.0.0.1 %d 0\ns Running\n", portOf(relay))
	}))
	defer auth.Close()
	if err := inNS(portOf(relay)); err == nil {
		t.Fatal("a relay's port answers inside the mote before it is forwarded")
	}
	if err := b.prime([]int{auth.Listener.Addr().(*net.TCPAddr).Port}); err != nil {
		t.Fatalf("prime: %v", err)
	}
	if err := inNS(portOf(relay)); err != nil {
		t.Fatalf("the consensus's relay, from inside the mote after prime: %v", err)
	}
	// A connection whose one direction ended gives way after the bridge's
	// half-closed time, whatever the other side does.
	// (A server in the mote that holds every connection and never closes.)
	var holdLn net.Listener
	if e := inNamespace(m.inner, func() { holdLn, err = net.Listen("tcp", "127.0.0.1:0") }); e != nil || err != nil {
		t.Fatal(e, err)
	}
	defer holdLn.Close()
	go func() {
		var keep []net.Conn
		for {
			c, err := holdLn.Accept()
			if err != nil {
				for _, c := range keep {
					c.Close()
				}
				return
			}
			keep = append(keep, c)
		}
	}()
	if err := b.forwardIn(portOf(holdLn)); err != nil {
		t.Fatal(err)
	}
	half, err := net.Dial("tcp", loopback(portOf(holdLn)))
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	half.(*net.TCPConn).CloseWrite()
	half.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := half.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("a half-closed connection through the bridge was not ended: %v", err)
	}
	// Closing the bridge ends the connections it carries.
	held, err := net.Dial("tcp", loopback(inside))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if _, err := held.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(held).ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("through the bridge: %q %v", line, err)
	}
	b.close()
	held.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := held.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("a connection the bridge carried outlived the bridge: %v", err)
	}
	if err := ping(inside); err == nil {
		t.Fatal("the bridge still carries connections once closed")
	}
	if err := inNS(portOf(outside)); err == nil {
		t.Fatal("the bridge still carries connections out once closed")
	}
}

func TestAuthorityPorts(t *testing.T) {
	ok := "TestingTorNetwork 1\nDirAuthority auth0 orport=5000 no-v2 v3ident=AAAA 127.0.0.1:7000 FFFF\n" +
		"dirauthority auth1 orport=5001 no-v2 v3ident=BBBB 127.0.0.1:7001 EEEE\n"
	ports, err := AuthorityPorts(ok)
	if err != nil || len(ports) != 4 || ports[0] != 5000 || ports[1] != 7000 || ports[2] != 5001 || ports[3] != 7001 {
		t.Fatalf("%v %v", ports, err)
	}
	for _, bad := range []string{
		"",
		"SocksPort 9050\n",
		"DirAuthority a orport=0 127.0.0.1:7000 FF\n",
		"DirAuthority a orport=70000 127.0.0.1:7000 FF\n",
		"DirAuthority a orport=5000 128.31.0.39:9131 FF\n",
		"DirAuthority a orport=5000 FF\n",
		"DirAuthority a 127.0.0.1:7000 FF\n",
		"DirAuthority a orport=5000 127.0.0.1:0 FF\n",
	} {
		if _, err := AuthorityPorts(bad); err == nil {
			t.Errorf("AuthorityPorts(%q) accepted", bad)
		}
	}
}

func FuzzAuthorityPorts(f *testing.F) {
	f.Add("DirAuthority auth0 orport=5000 no-v2 v3ident=AAAA 127.0.0.1:7000 FFFF\n")
	f.Add("DirAuthority a orport=5000 128.31.0.39:9131 FF\n")
	f.Fuzz(func(t *testing.T, s string) {
		ports, err := AuthorityPorts(s)
		if err != nil {
			return
		}
		if len(ports) == 0 || len(ports)%2 != 0 {
			t.Fatalf("%d ports from %q", len(ports), s)
		}
		for _, p := range ports {
			if p < 1 || p > 65535 {
				t.Fatalf("port %d from %q", p, s)
			}
		}
	})
}
