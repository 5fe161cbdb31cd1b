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
