package main

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/torbento/bento/internal/pintls"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/socks"
	"github.com/torbento/bento/internal/wire"
)

// policyServer is a Bento server that answers the policy request, behind
// pintls.Sniff as bentod's client port is (TLS and cleartext on one
// port); it records whether each request came over TLS.
type policyServer struct {
	addr, pin string
	mu        sync.Mutex
	tls       []bool
}

func startPolicyServer(t *testing.T) *policyServer {
	t.Helper()
	id, err := pintls.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s := &policyServer{addr: ln.Addr().String(), pin: id.Fingerprint}
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer nc.Close()
				nc.SetDeadline(time.Now().Add(10 * time.Second))
				rw := pintls.Sniff(nc, id.ServerConfig())
				conn := wire.NewConn(rw)
				if f, err := conn.Read(); err != nil || f.Type != proto.THello {
					return
				}
				conn.Send(proto.TWelcome, proto.Welcome{Version: proto.Version}, nil)
				if f, err := conn.Read(); err != nil || f.Type != proto.TPolicy {
					return
				}
				s.mu.Lock()
				s.tls = append(s.tls, rw.(interface{ TLS() bool }).TLS())
				s.mu.Unlock()
				conn.Send(proto.TPolicyReply, policy.Public{Nickname: "pinned"}, nil)
			}()
		}
	}()
	return s
}

// requests returns, for each policy request served, whether it was TLS.
func (s *policyServer) requests() []bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]bool(nil), s.tls...)
}

// TestPinnedCLI runs bento policy against a server with each way of
// giving a pin, and without: TLS when pinned, cleartext over loopback,
// refusal of another certificate.
func TestPinnedCLI(t *testing.T) {
	s := startPolicyServer(t)
	other, err := pintls.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(s.addr)
	upper := "SHA256:" + strings.ToUpper(strings.TrimPrefix(s.pin, "sha256:"))
	for _, tc := range []struct {
		name string
		env  string // $BENTO_PIN
		args []string
		code int
		tls  bool
		says string
	}{
		{"in the address", "", []string{"policy", s.addr + "#" + s.pin}, exitOK, true, ""},
		{"in the address, upper case", "", []string{"policy", s.addr + "#" + upper}, exitOK, true, ""},
		{"--pin", "", []string{"--pin", s.pin, "policy", s.addr}, exitOK, true, ""},
		{"--pin=", "", []string{"--pin=" + s.pin, "policy", s.addr}, exitOK, true, ""},
		{"$BENTO_PIN", s.pin, []string{"policy", s.addr}, exitOK, true, ""},
		{"the address's pin over --pin", "", []string{"--pin", other.Fingerprint, "policy", s.addr + "#" + s.pin}, exitOK, true, ""},
		{"loopback in cleartext", "", []string{"policy", s.addr}, exitOK, false, ""},
		{"localhost in cleartext", "", []string{"policy", "localhost:" + port}, exitOK, false, ""},
		{"another pin", "", []string{"policy", s.addr + "#" + other.Fingerprint}, exitConnect, false, "is not the server pinned: its certificate is " + s.pin + ", the pin " + other.Fingerprint},
		{"another pin, --json", "", []string{"--pin", other.Fingerprint, "policy", s.addr, "--json"}, exitConnect, false, `{"code":4,"error":"` + s.addr + ` is not the server pinned`},
		{"a bad pin", "", []string{"policy", s.addr + "#sha256:abc"}, exitUsage, false, "got 3"},
		{"a bad --pin", "", []string{"--pin", "abc", "policy", s.addr}, exitUsage, false, "--pin: certificate pin"},
		{"a bad $BENTO_PIN", "abc", []string{"policy", s.addr}, exitUsage, false, "$BENTO_PIN: certificate pin"},
		{"--pin after the command", "", []string{"policy", s.addr, "--pin", s.pin}, exitUsage, false, "--pin is a global option: it goes before the command, bento --pin … policy …"},
		{"--insecure-cleartext=x", "", []string{"--insecure-cleartext=1", "policy", s.addr}, exitUsage, false, "takes no value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("BENTO_PIN", tc.env)
			t.Setenv("BENTO_TOR_SOCKS", "")
			before := len(s.requests())
			var out, errb bytes.Buffer
			code := run(tc.args, strings.NewReader(""), &out, &errb)
			reqs := s.requests()[before:]
			if code != tc.code || !strings.Contains(errb.String(), tc.says) {
				t.Fatalf("bento %q: exit %d, stderr:\n%s\nwant exit %d and %q", tc.args, code, errb.String(), tc.code, tc.says)
			}
			if tc.code != exitOK {
				if len(reqs) > 0 {
					t.Fatalf("a request reached the server: %v", reqs)
				}
				return
			}
			if !strings.Contains(out.String(), "pinned") || len(reqs) != 1 || reqs[0] != tc.tls {
				t.Fatalf("stdout %q; requests (TLS?) %v, want one, TLS %v", out.String(), reqs, tc.tls)
			}
		})
	}
}

// TestNewClient: what newClient makes of each server and transport: a
// pin, a plain dial, a name checked for loopback, or a refusal (and its
// exit status).
func TestNewClient(t *testing.T) {
	const (
		onion = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion"
		pinA  = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
		pinB  = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	)
	type opts struct {
		torSocks, pin string
		insecure      bool
	}
	type want struct {
		addr, pin string
		dial      string // "plain", "tor", "name", "refused"
		code      int    // of a refusal
	}
	for _, tc := range []struct {
		server string
		tr     opts
		want   want
	}{
		{"127.0.0.1:8888", opts{}, want{"127.0.0.1:8888", "", "plain", 0}},
		{"127.3.4.5", opts{}, want{"127.3.4.5:8888", "", "plain", 0}},
		{"[::1]:9", opts{}, want{"[::1]:9", "", "plain", 0}},
		{"[::ffff:127.0.0.1]:9", opts{}, want{"[::ffff:127.0.0.1]:9", "", "plain", 0}},
		{"localhost", opts{}, want{"localhost:8888", "", "name", 0}},
		{"box.example.org:8888", opts{}, want{"box.example.org:8888", "", "name", 0}},
		{"192.0.2.1:8888", opts{}, want{"192.0.2.1:8888", "", "refused", exitUsage}},
		{"[2001:db8::1]:8888", opts{}, want{"[2001:db8::1]:8888", "", "refused", exitUsage}},
		{"0.0.0.0:8888", opts{}, want{"0.0.0.0:8888", "", "refused", exitUsage}},
		{"192.0.2.1:8888", opts{insecure: true}, want{"192.0.2.1:8888", "", "plain", 0}},
		{"192.0.2.1:8888#" + pinA, opts{}, want{"192.0.2.1:8888", pinA, "plain", 0}},
		{"192.0.2.1#" + pinA, opts{}, want{"192.0.2.1:8888", pinA, "plain", 0}},
		{"192.0.2.1:8888", opts{pin: pinA}, want{"192.0.2.1:8888", pinA, "plain", 0}},
		{"192.0.2.1:8888#" + pinB, opts{pin: pinA}, want{"192.0.2.1:8888", pinB, "plain", 0}},
		{"127.0.0.1:8888", opts{pin: pinA}, want{"127.0.0.1:8888", pinA, "plain", 0}},
		{"192.0.2.1:8888#" + pinA, opts{insecure: true}, want{"192.0.2.1:8888", pinA, "plain", 0}},
		{"192.0.2.1:8888#sha256:00", opts{}, want{"192.0.2.1:8888", "", "refused", exitUsage}},
		{onion + ":8888", opts{}, want{onion + ":8888", "", "plain", 0}},
		{onion + ":8888", opts{pin: pinA}, want{onion + ":8888", "", "plain", 0}},
		{onion + ":8888#" + pinA, opts{}, want{onion + ":8888", "", "refused", exitUsage}},
		// Through Tor: an onion address needs nothing; any other
		// address leaves Tor at an exit.
		{onion + ":8888", opts{torSocks: "127.0.0.1:9050"}, want{onion + ":8888", "", "tor", 0}},
		{"192.0.2.1:8888", opts{torSocks: "127.0.0.1:9050"}, want{"192.0.2.1:8888", "", "refused", exitUsage}},
		{"box.example.org:8888", opts{torSocks: "127.0.0.1:9050"}, want{"box.example.org:8888", "", "refused", exitUsage}},
		{"192.0.2.1:8888#" + pinA, opts{torSocks: "127.0.0.1:9050"}, want{"192.0.2.1:8888", pinA, "tor", 0}},
		{"127.0.0.1:8888", opts{torSocks: "127.0.0.1:9050"}, want{"127.0.0.1:8888", "", "tor", 0}},
	} {
		var errb bytes.Buffer
		c := &cli{stderr: &errb, transport: &transport{torSocks: tc.tr.torSocks, pin: tc.tr.pin, insecure: tc.tr.insecure}}
		cl := c.newClient(tc.server)
		got := want{addr: cl.Addr, pin: cl.Pin}
		switch d := cl.Dialer.(type) {
		case nil:
			got.dial = "plain"
		case refusal:
			got.dial = "refused"
			var te *transportError
			if errors.As(d.err, &te) {
				got.code = te.code
			}
		case *loopbackOnly:
			got.dial = "name"
		default:
			got.dial = "tor"
		}
		if got != tc.want {
			t.Errorf("newClient(%q) with %+v: %+v, want %+v", tc.server, tc.tr, got, tc.want)
		}
		if warned := strings.Contains(errb.String(), "warning: talking to"); warned != (tc.tr.insecure && tc.want.pin == "") {
			t.Errorf("newClient(%q) with %+v: stderr %q", tc.server, tc.tr, errb.String())
		}
	}
}

// TestInsecureCleartextWarnsOnce: --insecure-cleartext says it once a
// run, on one line.
func TestInsecureCleartextWarnsOnce(t *testing.T) {
	var errb bytes.Buffer
	c := &cli{stderr: &errb, transport: &transport{insecure: true}}
	c.newClient("192.0.2.1:8888")
	c.newClient("192.0.2.1:8888")
	if n := strings.Count(errb.String(), "\n"); n != 1 || !strings.HasPrefix(errb.String(), "bento: warning: talking to 192.0.2.1:8888 in cleartext (--insecure-cleartext)") {
		t.Fatalf("stderr %q", errb.String())
	}
}

// TestLoopbackOnlyRefusesOtherAddresses: a name is dialled in cleartext
// only when it stands for loopback addresses alone.
func TestLoopbackOnlyRefusesOtherAddresses(t *testing.T) {
	refused := errors.New("refused")
	d := &loopbackOnly{refused: refused}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	c, err := d.DialContext(t.Context(), "tcp", "localhost:"+port)
	if err != nil {
		t.Fatalf("localhost: %v", err)
	}
	c.Close()
	// A name that is an address not on loopback.
	if _, err := d.DialContext(t.Context(), "tcp", "192.0.2.1:"+port); !errors.Is(err, refused) {
		t.Fatalf("192.0.2.1: %v", err)
	}
}

// FuzzNewClient: whatever the server argument, bento never sends in
// cleartext over a direct connection to an address that is not loopback
// or an onion address, and never both pins and dials an onion address.
func FuzzNewClient(f *testing.F) {
	for _, s := range []string{"127.0.0.1:8888", "10.0.0.1", "[::1]:1#sha256:" + strings.Repeat("0", 64), "a.onion:1", "localhost", "x#y#z", "[fe80::1%lo]:1", "::1", "1.2.3.4:5#"} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, server string, insecure bool) {
		c := &cli{stderr: io.Discard, transport: &transport{insecure: insecure}}
		cl := c.newClient(server)
		host, _, err := net.SplitHostPort(cl.Addr)
		if err != nil {
			return // the dial fails
		}
		if cl.Pin != "" {
			if _, perr := pintls.ParsePin(cl.Pin); perr != nil {
				t.Fatalf("%q: pin %q", server, cl.Pin)
			}
			return
		}
		if _, refused := cl.Dialer.(refusal); refused || insecure {
			return
		}
		if _, ok := cl.Dialer.(*loopbackOnly); ok && net.ParseIP(host) == nil {
			return
		}
		if cl.Dialer != nil || !(loopbackIP(host) || socks.IsOnion(host)) {
			t.Fatalf("%q: cleartext to %q (dialer %T)", server, cl.Addr, cl.Dialer)
		}
	})
}
