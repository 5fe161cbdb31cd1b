package netcheck

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/torbento/bento/internal/exitpolicy"
)

type fakeResolver map[string][]netip.Addr

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := f[host]; ok {
		return a, nil
	}
	return nil, errors.New("no such host")
}

func TestCheck(t *testing.T) {
	node := exitpolicy.MustParse("reject 127.0.0.1:8888, accept 127.0.0.0/8:*")
	fn := exitpolicy.MustParse("accept 127.0.0.1:1-9000")
	c := &Checked{Policies: []*exitpolicy.Policy{node, fn}, Resolver: fakeResolver{
		"ok.test":     {netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("127.0.0.1")},
		"rebind.test": {netip.MustParseAddr("::ffff:10.0.0.1")},
	}}
	tests := []struct {
		dest, want string
	}{
		{"127.0.0.1:8080", "127.0.0.1:8080"},
		{"127.0.0.1:8888", "node's DestinationPolicy"},
		{"127.0.0.2:80", "manifest's destinations"},
		{"127.0.0.1:9001", "manifest's destinations"},
		{"ok.test:80", "127.0.0.1:80"},
		{"rebind.test:80", "node's DestinationPolicy"},
		{"[::ffff:127.0.0.1]:80", "127.0.0.1:80"},
		{"missing.test:80", "no such host"},
		{"127.0.0.1", "missing port"},
	}
	for _, tc := range tests {
		got, err := c.Check(context.Background(), tc.dest)
		s := ""
		if err != nil {
			s = err.Error()
		}
		for _, a := range got {
			s += a.String()
		}
		if !strings.Contains(s, tc.want) {
			t.Errorf("Check(%s) = %q, want %q", tc.dest, s, tc.want)
		}
	}
}

func TestDial(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	ok := &Checked{Policies: []*exitpolicy.Policy{exitpolicy.MustParse("accept 127.0.0.1:*")}}
	conn, err := ok.DialContext(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	deny := &Checked{Policies: []*exitpolicy.Policy{exitpolicy.MustParse("reject *:*")}}
	var de *DeniedError
	if _, err := deny.DialContext(context.Background(), "tcp", ln.Addr().String()); !errors.As(err, &de) {
		t.Fatalf("dial to port %d through a reject-all policy: %v", port, err)
	}
}

func TestCheckTor(t *testing.T) {
	a := strings.Repeat("a", 56) + ".onion"
	node := exitpolicy.MustParse("reject " + a + ":*, accept *.onion:*, accept 192.0.2.0/24:80")
	man := exitpolicy.MustParse("accept *.onion:*, accept 192.0.2.7:80")
	pols := []*exitpolicy.Policy{node, man}
	for _, tc := range []struct {
		dest string
		ok   bool
	}{
		{strings.Repeat("b", 56) + ".onion:8888", true},
		{a + ":8888", false},
		{"www." + a + ":8888", false}, // a subdomain names the same service
		{strings.ToUpper(a[:56]) + ".ONION.:8888", false},
		{"192.0.2.7:80", true},
		{"192.0.2.8:80", false}, // the manifest does not name it
		{"example.com:80", false},
		{"short.onion:80", false}, // not an onion address
	} {
		err := CheckTor(pols, tc.dest)
		if (err == nil) != tc.ok {
			t.Errorf("CheckTor(%s) = %v, want ok %v", tc.dest, err, tc.ok)
		}
	}
	if !SameOnionService("www."+a+":08888", a+":8888") || SameOnionService(a+":8888", a+":8889") {
		t.Error("SameOnionService")
	}
}

func FuzzCanonicalOnion(f *testing.F) {
	f.Add(strings.Repeat("a", 56) + ".onion")
	f.Add("www.x.onion.")
	f.Fuzz(func(t *testing.T, host string) {
		o, ok, err := CanonicalOnion(host)
		if ok && err == nil {
			if !exitpolicy.ValidOnion(o) {
				t.Fatalf("CanonicalOnion(%q) = %q, not a valid onion", host, o)
			}
			if again, _, _ := CanonicalOnion(o); again != o {
				t.Fatalf("not idempotent: %q then %q", o, again)
			}
		}
	})
}
