package netlimit

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/torbento/bento/internal/testutil"
)

// dialWithin dials addr from ip and reports whether the handshake
// completed within d (a dropped SYN waits for its retransmission, a second
// later).
func dialWithin(t *testing.T, ip, addr string, d time.Duration) (net.Conn, bool) {
	t.Helper()
	dl := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: d}
	c, err := dl.Dial("tcp", addr)
	if err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return nil, false
		}
		// A reset (refused for the rate) still completed a handshake.
		return nil, true
	}
	t.Cleanup(func() { c.Close() })
	return c, true
}

// waitDropped waits, at most within, until the number of addresses l
// drops satisfies ok, or fails with msg (a format for l's Stats).
func waitDropped(t *testing.T, l *Listener, within time.Duration, ok func(int) bool, msg string) {
	t.Helper()
	for deadline := time.Now().Add(within); !ok(l.Stats().Dropped); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf(msg, l.Stats())
		}
	}
}

// echo serves l: every connection admitted echoes what it reads.
func echo(t *testing.T, l *Listener) {
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
}

// An address over its rate has its handshakes dropped by the kernel for
// DropFor: its dials hang while another address's connect at once; a
// connection it made before keeps working; after DropFor it connects
// again.
func TestKernelDrop(t *testing.T) {
	l := listen(t, Config{Total: 16, Rate: 1, Burst: 1, KernelDrop: true})
	if l.drop == nil {
		t.Fatal("KernelDrop on a TCP listener set no filter up")
	}
	echo(t, l)
	addr := l.Addr().String()
	kept, ok := dialWithin(t, "127.0.0.2", addr, time.Second)
	if !ok || kept == nil {
		t.Fatal("the first connection was not made")
	}
	// Over the rate: refused (a reset), and dropped from now.
	dialWithin(t, "127.0.0.2", addr, time.Second)
	waitDropped(t, l, time.Second, func(n int) bool { return n > 0 }, "no address dropped after a refusal for the rate: %+v")
	if _, ok := dialWithin(t, "127.0.0.2", addr, 300*time.Millisecond); ok {
		t.Error("a dial from the dropped address completed its handshake")
	}
	if _, ok := dialWithin(t, "127.0.0.3", addr, 300*time.Millisecond); !ok {
		t.Error("a dial from another address was dropped too")
	}
	// The connection made before the drop still carries data both ways.
	kept.SetDeadline(time.Now().Add(time.Second))
	if _, err := kept.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(kept, buf); err != nil || string(buf) != "ping" {
		t.Errorf("a connection made before the drop was cut: %q, %v", buf, err)
	}
	// A second address over its rate while the first is dropped joins the
	// filter at once, not when the first drop ends.
	dialWithin(t, "127.0.0.4", addr, time.Second)
	dialWithin(t, "127.0.0.4", addr, time.Second)
	waitDropped(t, l, 200*time.Millisecond, func(n int) bool { return n >= 2 }, "a second address over its rate was not dropped within 200 ms: %+v")
	// After DropFor (and a token later), it connects again.
	time.Sleep(DropFor + 200*time.Millisecond)
	waitDropped(t, l, time.Second, func(n int) bool { return n == 0 }, "the drop outlived DropFor: %+v")
	if c, ok := dialWithin(t, "127.0.0.2", addr, 300*time.Millisecond); !ok || c == nil {
		t.Error("the address could not connect after its drop ended")
	}
	if st := l.Stats(); st.DropPeriods != 2 {
		t.Errorf("drop periods = %d, want 2", st.DropPeriods)
	}
}

// The filter's IPv6 branch: ::1 over its rate is dropped the same way.
func TestKernelDropIPv6(t *testing.T) {
	ln, err := Listen("[::1]:0")
	testutil.Require(t, err == nil, "an IPv6 loopback address (::1)")
	l := New(ln, Config{Total: 16, Rate: 1, Burst: 1, KernelDrop: true})
	echo(t, l)
	addr := l.Addr().String()
	dialWithin(t, "::1", addr, time.Second)
	dialWithin(t, "::1", addr, time.Second)
	waitDropped(t, l, time.Second, func(n int) bool { return n > 0 }, "no address dropped after a refusal for the rate: %+v")
	if _, ok := dialWithin(t, "::1", addr, 300*time.Millisecond); ok {
		t.Error("a dial from the dropped IPv6 address completed its handshake")
	}
}

// The fullest filter fits the kernel's limit and is taken by it.
func TestDropFilterFits(t *testing.T) {
	var v4, v6 []netip.Prefix
	for i := 0; i < maxDropV4; i++ {
		v4 = append(v4, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 32))
	}
	for i := 0; i < maxDropV6; i++ {
		p, _ := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(i), 0x10}).Prefix(56)
		v6 = append(v6, p)
	}
	prog := dropFilter(v4, v6)
	if len(prog) > 4096 {
		t.Fatalf("the fullest filter has %d instructions, over the kernel's 4,096", len(prog))
	}
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	rc, _ := ln.(*net.TCPListener).SyscallConn()
	d := newDropper(rc, func(string, ...any) {})
	if err := d.attach(prog); err != nil {
		t.Fatalf("the kernel refused the fullest filter: %v", err)
	}
	if err := d.detach(); err != nil {
		t.Fatal(err)
	}
	if err := d.attach(dropFilter(nil, nil)); err != nil {
		t.Fatalf("the kernel refused the empty filter: %v", err)
	}
}
