package e2e

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/privs"
)

// TestAttacks runs hostile functions and clients next to an innocent
// instance. Each is contained with a clear reason; bentod keeps serving;
// the neighbour's latency is measured before and during. (docs/SECURITY.md
// lists these with the resource attacks of TestLimits and the others.)
func TestAttacks(t *testing.T) {
	base, port := webServer(t, []byte("page"))
	s := newSiegeRC(t, strings.Replace(siegeRC, "DestinationPolicy accept 127.0.0.1:*", fmt.Sprintf("DestinationPolicy accept 127.0.0.1:%d", port), 1))
	d := s.d

	t.Run("deep-recursion", func(t *testing.T) {
		var r result
		s.while(t, func() { r = bento(t, "", "run", d.Addr, fn("recursion")) })
		if r.Code != 1 && r.Code != 6 {
			t.Fatalf("want a function error or a stop, got %s", r)
		}
		t.Logf("stopped: %s", strings.TrimSpace(strings.SplitN(r.Stderr, "\n", 2)[0]))
	})
	t.Run("host-files-through-bundle", func(t *testing.T) {
		s.while(t, func() {
			for _, p := range []string{"../../../../etc/passwd", "/etc/passwd", "/proc/1/environ"} {
				r := bento(t, "", "run", d.Addr, fn("traversal"), p)
				if r.Code != 1 || !strings.Contains(r.Stderr, "no file") {
					t.Errorf("bento.source(%q): %s", p, r)
				}
			}
		})
	})
	t.Run("loopback-services", func(t *testing.T) {
		// bentod's own port, and a relay control port: the manifest may
		// only name what the node accepts, and every dial is checked.
		s.while(t, func() {
			for _, target := range []string{"http://" + d.Addr + "/", "http://127.0.0.1:9051/"} {
				r := bento(t, "", "run", "--destinations", fmt.Sprintf("accept 127.0.0.1:%d", port), d.Addr, fn("browser"), target)
				if r.Code != 1 || !strings.Contains(r.Stderr, "rejected by the") {
					t.Errorf("fetch %s: %s", target, r)
				}
			}
			r := bento(t, "", "run", "--destinations", "accept 127.0.0.1:9051", d.Addr, fn("browser"), "http://127.0.0.1:9051/")
			if r.Code != 3 {
				t.Errorf("manifest asking for 127.0.0.1:9051: %s", r)
			}
			if r := bento(t, "", "run", "--destinations", fmt.Sprintf("accept 127.0.0.1:%d", port), d.Addr, fn("browser"), base+"/page"); r.Code != 0 {
				t.Errorf("the accepted destination: %s", r)
			}
		})
	})
	t.Run("tokens", func(t *testing.T) {
		s.while(t, func() { tokenAttacks(t, d) })
	})
	t.Run("slow-clients", func(t *testing.T) {
		// 200 connections from 20 other addresses that never finish their
		// hello, opened with the neighbour timed; a normal client is
		// served beside them.
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		s.while(t, func() {
			for i := 0; i < 200; i++ {
				dl := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(1+i%20))}}
				c, err := dl.Dial("tcp", d.Addr)
				if err != nil {
					t.Fatal(err)
				}
				c.Write([]byte{0, 0})
				conns = append(conns, c)
			}
			for i := 0; i < 3; i++ {
				if r := bento(t, "", "run", d.Addr, fn("hello")); r.Code != 0 {
					t.Fatalf("a normal client beside 200 slow ones: %s", r)
				}
			}
			for _, c := range conns {
				c.Close()
			}
			conns = conns[:0]
		})
	})
	t.Run("vanishing-client", func(t *testing.T) {
		// The client goes away in the middle of an invocation: the
		// invocation runs on, and its output waits for a reattach.
		cl := client.New(d.Addr)
		s.while(t, func() {
			var out []byte
			dep := deployCLI(t, d, fn("counter"))
			defer bento(t, "", "shutdown", d.Addr, dep.ShutdownToken)
			sess, err := cl.Invoke(ctx(t), dep.InvocationToken, 3, 0.2)
			if err != nil {
				t.Fatal(err)
			}
			sid := sess.ID
			sess.Close()
			time.Sleep(time.Second)
			s2, err := cl.Attach(ctx(t), dep.InvocationToken, sid, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			for {
				data, exit, err := s2.Recv()
				if err != nil {
					t.Fatal(err)
				}
				out = append(out, data...)
				if exit != nil {
					break
				}
			}
			if string(out) != "line 0\nline 1\nline 2\ndone\n" {
				t.Fatalf("output after reattaching: %q", out)
			}
		})
	})
	if r := bento(t, "", "run", d.Addr, fn("hello")); r.Code != 0 {
		t.Fatalf("bentod after the attacks: %s", r)
	}
}

// tokenAttacks guesses, replays and misuses tokens.
func tokenAttacks(t *testing.T, d *daemon) {
	t.Helper()
	dep := deployCLI(t, d, fn("dropbox"))
	guess := func() string {
		b := make([]byte, 32)
		rand.Read(b)
		return "bento-inv-" + base64.RawURLEncoding.EncodeToString(b)
	}
	for _, tc := range []struct{ what, cmd, token string }{
		{"a guessed invocation token", "invoke", guess()},
		{"a malformed token", "invoke", "x"},
		{"a guessed shutdown token", "shutdown", strings.Replace(guess(), "inv", "sd", 1)},
	} {
		if r := bento(t, "", tokenArgs(tc.cmd, d.Addr, tc.token)...); r.Code != 5 {
			t.Errorf("%s: %s", tc.what, r)
		}
	}
	// One token where the other goes: bento says so without asking
	// (exit 2), and bentod, asked directly, refuses it all the same.
	cl := client.New(d.Addr)
	if r := bento(t, "", tokenArgs("invoke", d.Addr, dep.ShutdownToken)...); r.Code != 2 {
		t.Errorf("the shutdown token used to invoke, with bento: %s", r)
	}
	if _, err := cl.Call(ctx(t), dep.ShutdownToken, "get"); !client.IsCode(err, client.CodeNotFound) {
		t.Errorf("the shutdown token used to invoke: %v", err)
	}
	if r := bento(t, "", tokenArgs("shutdown", d.Addr, dep.InvocationToken)...); r.Code != 2 {
		t.Errorf("the invocation token used to shut down, with bento: %s", r)
	}
	if err := cl.Shutdown(ctx(t), dep.InvocationToken); !client.IsCode(err, client.CodeNotFound) {
		t.Errorf("the invocation token used to shut down: %v", err)
	}
	if r := bento(t, "", "shutdown", d.Addr, dep.ShutdownToken); r.Code != 0 {
		t.Fatal(r)
	}
	for _, tc := range []struct{ cmd, token string }{{"invoke", dep.InvocationToken}, {"shutdown", dep.ShutdownToken}} {
		if r := bento(t, "", tokenArgs(tc.cmd, d.Addr, tc.token)...); r.Code != 5 {
			t.Errorf("%s with a token of an ended instance: %s", tc.cmd, r)
		}
	}
}

func tokenArgs(cmd, addr, token string) []string {
	if cmd == "invoke" {
		return []string{cmd, addr, token, "get"}
	}
	return []string{cmd, addr, token}
}

// TestFairness: one client cannot take every slot. Two clients on
// different addresses (127.0.0.2 and 127.0.0.3) each get their share.
func TestFairness(t *testing.T) {
	s := newSiege(t, "MaxInstances 5\nMaxInstancesPerClient 2\n")
	d := s.d
	fnc, err := client.LoadFunction(fn("dropbox"))
	if err != nil {
		t.Fatal(err)
	}
	greedy, other := from(d.Addr, "127.0.0.2"), from(d.Addr, "127.0.0.3")
	s.while(t, func() {
		var held []*client.Deployed
		for i := 0; i < 2; i++ {
			dep, err := greedy.Deploy(ctx(t), fnc)
			if err != nil {
				t.Fatalf("greedy client's deploy %d: %v", i, err)
			}
			held = append(held, dep)
		}
		for i := 0; i < 10; i++ {
			_, err = greedy.Deploy(ctx(t), fnc)
			if !client.IsCode(err, client.CodeBusy) || !strings.Contains(err.Error(), "MaxInstancesPerClient") {
				t.Fatalf("greedy client's deploy beyond its share: %v", err)
			}
		}
		theirs, err := other.Deploy(ctx(t), fnc)
		if err != nil {
			t.Fatalf("another client while the greedy one is at its share: %v", err)
		}
		// A slot given back is the greedy client's to use again.
		if err := greedy.Shutdown(ctx(t), held[0].ShutdownToken); err != nil {
			t.Fatal(err)
		}
		again, err := greedy.Deploy(ctx(t), fnc)
		if err != nil {
			t.Fatalf("after a shutdown: %v", err)
		}
		// Every slot given back, for the next play.
		for _, sd := range []struct {
			cl  *client.Client
			tok string
		}{{greedy, held[1].ShutdownToken}, {greedy, again.ShutdownToken}, {other, theirs.ShutdownToken}} {
			if err := sd.cl.Shutdown(ctx(t), sd.tok); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestBentodPrivileges: bentod keeps only the capabilities runc needs, on
// every thread and for everything it starts.
func TestBentodPrivileges(t *testing.T) {
	d := startBentod(t, "")
	if r := bento(t, "", "run", d.Addr, fn("hello")); r.Code != 0 {
		t.Fatalf("bentod with fewer privileges cannot run functions: %s", r)
	}
	bnd, err := privs.Bounding(d.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	var want uint64
	for _, c := range privs.Needed {
		want |= 1 << c
	}
	mine, err := privs.Bounding(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if want &= mine; bnd != want {
		t.Fatalf("bentod's capability bounding set is %#x, want %#x (privs.Needed within the test's own %#x)", bnd, want, mine)
	}
	for _, c := range []int{unix.CAP_SYS_MODULE, unix.CAP_SYS_TIME, unix.CAP_NET_RAW, unix.CAP_SYS_BOOT, unix.CAP_SYSLOG, unix.CAP_BPF} {
		if bnd&(1<<c) != 0 {
			t.Errorf("bentod may still use capability %d", c)
		}
	}
}
