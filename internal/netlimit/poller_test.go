package netlimit

import (
	"net"
	"regexp"
	"runtime"
	"testing"
	"time"
)

// An Accept with nothing to accept waits in the runtime's poller ("IO
// wait"), as a goroutine reading a socket does, never in a blocking system
// call: one that held a thread in poll(2) kept the runtime's processors
// busy under a flood of refused connections, and every other goroutine
// of the daemon waited for its turn (the siege's neighbour saw its hello
// go from 0.3 ms to 1.8 ms). Close wakes it at once.
func TestAcceptWaitsInThePoller(t *testing.T) {
	l := listen(t, Config{Total: 4, PerAddr: 2})
	if l.raw == nil {
		t.Fatal("a TCP listener has no pollable duplicate: Accept falls back to the generic path")
	}
	done := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		done <- err
	}()
	header := regexp.MustCompile(`(?m)^goroutine \d+ \[([^\]]+)\]:\n(?:.*\n)*?.*netlimit\.\(\*Listener\)\.acceptRaw`)
	var state string
	for i := 0; i < 50; i++ {
		time.Sleep(20 * time.Millisecond)
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		for _, g := range regexp.MustCompile(`\n\n`).Split(string(buf), -1) {
			if m := header.FindStringSubmatch(g + "\n"); m != nil {
				state = m[1]
			}
		}
		if state != "" {
			break
		}
	}
	if state == "" {
		t.Fatal("no goroutine in acceptRaw")
	}
	if state != "IO wait" {
		t.Errorf("Accept waits in state %q, want \"IO wait\" (the runtime's poller)", state)
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
