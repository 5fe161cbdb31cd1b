package e2e

import (
	"bufio"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
)

// lineServer answers each connection's first line with "pong:" and the
// line, then closes it; it returns its port.
func lineServer(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, err := bufio.NewReader(c).ReadString('\n')
				if err == nil {
					fmt.Fprintf(c, "pong:%s", line)
				}
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// netDialCode dials 127.0.0.1:port directly (net.dial), writes a line and
// returns everything the server answers before it closes.
const netDialCode = `def main(port):
    c = net.dial("127.0.0.1", port, timeout=10)
    net.write(c, "ping\n")
    out = b""
    for i in range(1000):
        b = net.read(c, 4096, timeout=10)
        if b == None:
            fail("net.read timed out")
        if len(b) == 0:
            break
        out += b
    net.close(c)
    return out
`

// TestNetStreams: direct TCP streams (net.*) reach exactly the
// destinations both the node's DestinationPolicy and the manifest accept.
func TestNetStreams(t *testing.T) {
	allowed, other, rejected := lineServer(t), lineServer(t), lineServer(t)
	d := startBentod(t, fmt.Sprintf("AllowAPI send,recv,log,net\nDestinationPolicy reject 127.0.0.1:%d, accept 127.0.0.1:*\n", rejected))
	manifest := func(apis, dest string) string {
		return "name = \"dialer\"\nentry = \"main.star\"\nfunction = \"main\"\napis = [" + apis + "]\ndestinations = [" + dest + "]\n[resources]\nmemory = \"32 MB\"\ncpu_time = \"5 s\"\nlifetime = \"1 minute\"\n"
	}
	narrow := tempFunction(t, manifest(`"net"`, fmt.Sprintf(`"accept 127.0.0.1:%d"`, allowed)), netDialCode)
	toRejected := tempFunction(t, manifest(`"net"`, fmt.Sprintf(`"accept 127.0.0.1:%d"`, rejected)), netDialCode)
	noAPI := tempFunction(t, manifest(`"send"`, fmt.Sprintf(`"accept 127.0.0.1:%d"`, allowed)), netDialCode)
	port := strconv.Itoa

	t.Run("allowed", func(t *testing.T) {
		r := bento(t, "", "run", d.Addr, narrow, port(allowed))
		if r.Code != 0 || r.Stdout != "pong:ping\n" {
			t.Fatalf("net.dial to an accepted destination: %s", r)
		}
	})
	t.Run("outside-the-manifest", func(t *testing.T) {
		r := bento(t, "", "run", d.Addr, narrow, port(other))
		if r.Code != 1 || !strings.Contains(r.Stderr, "rejected by the manifest's destinations") || !strings.Contains(r.Stderr, "main.star:2:") {
			t.Fatalf("net.dial outside the manifest's destinations: %s", r)
		}
	})
	t.Run("outside-the-node-policy", func(t *testing.T) {
		// A manifest naming a destination the node rejects is refused at
		// the upload (bentod checks each dial against both policies too).
		r := bento(t, "", "run", d.Addr, toRejected, port(rejected))
		if r.Code != 3 || !strings.Contains(r.Stderr, "destinations") {
			t.Fatalf("a manifest asking for a destination the node rejects: %s", r)
		}
	})
	t.Run("not-in-apis", func(t *testing.T) {
		r := bento(t, "", "run", d.Addr, noAPI, port(allowed))
		if r.Code != 1 || !strings.Contains(r.Stderr, `needs "net" in the manifest's apis`) {
			t.Fatalf("net.dial without net in apis: %s", r)
		}
	})
	t.Run("not-in-the-node-policy", func(t *testing.T) {
		d2 := startBentod(t, "AllowAPI send,recv,log\nDestinationPolicy accept 127.0.0.1:*\n")
		r := bento(t, "", "run", d2.Addr, narrow, port(allowed))
		if r.Code != 3 || !strings.Contains(r.Stderr, "net") {
			t.Fatalf("a manifest asking for net where the policy does not allow it: %s", r)
		}
	})
}
