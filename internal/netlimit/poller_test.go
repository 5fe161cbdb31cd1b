package netlimit

import (
	"net"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

// acceptState returns the state of the goroutine waiting in acceptRaw
// ("" if none is).
func acceptState() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	header := regexp.MustCompile(`^goroutine \d+ \[([^\]]+)\]:`)
	for _, g := range strings.Split(string(buf), "\n\n") {
		if m := header.FindStringSubmatch(g); m != nil && strings.Contains(g, "netlimit.(*Listener).acceptRaw") {
			return m[1]
		}
	}
	return ""
}

// An Accept with nothing to accept waits in the runtime's poller ("IO
// wait"), as a goroutine reading a socket does, never in a blocking system
// call: one that held a thread in poll(2) kept the runtime's processors
// busy under a flood of refused connections, and every other goroutine
// of the daemon waited for its turn (the siege's neighbour saw its hello
// go from 0.3 ms to 1.8 ms). Close wakes it at once.
func TestAcceptWaitsInThePoller(t *testing.T) {
	l := listen(t, Config{Total: 4, PerAddr: 2})
	t.Cleanup(func() { l.Close() })
	if l.raw == nil {
		t.Fatal("a TCP listener has no pollable duplicate: Accept falls back to the generic path")
	}
	done := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		done <- err
	}()
	// The goroutine passes through other states (running, the accept
	// system call) on its way: it must settle in the poller.
	var seen []string
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := acceptState()
		if s == "IO wait" {
			break
		}
		if s != "" && (len(seen) == 0 || seen[len(seen)-1] != s) {
			seen = append(seen, s)
		}
		if time.Now().After(deadline) {
			t.Fatalf("Accept never waited in the poller; it was seen in states %q", seen)
		}
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	l.Close()
	select {
	case err := <-done:
		if err != net.ErrClosed {
			t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake Accept")
	}
	t.Logf("Close woke Accept in %v", time.Since(start))
}

// A listener its owner closes directly (not through the wrapper) stops
// accepting within probeEvery, and its port is free again: the duplicate
// descriptor the wrapper waits on does not keep it bound.
func TestListenerClosedDirectly(t *testing.T) {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := New(ln, Config{Total: 4})
	t.Cleanup(func() { l.Close() })
	done := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	ln.Close()
	select {
	case err := <-done:
		if err != net.ErrClosed {
			t.Errorf("Accept after its listener was closed: %v, want net.ErrClosed", err)
		}
	case <-time.After(probeEvery + 5*time.Second):
		t.Fatal("Accept still waits after its listener was closed")
	}
	again, err := Listen(ln.Addr().String())
	if err != nil {
		t.Fatalf("the closed listener's port is still bound: %v", err)
	}
	again.Close()
}
