package link

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/torbento/bento/internal/flashflow/msg"
)

func ident(t *testing.T, name string) *Identity {
	t.Helper()
	d := t.TempDir()
	id, err := LoadOrCreate(filepath.Join(d, name+".crt"), filepath.Join(d, name+".key"), name)
	if err != nil {
		t.Fatal(err)
	}
	again, err := LoadOrCreate(filepath.Join(d, name+".crt"), filepath.Join(d, name+".key"), name)
	if err != nil || again.Fingerprint != id.Fingerprint {
		t.Fatalf("reloading changed the identity: %v", err)
	}
	return id
}

func TestPinning(t *testing.T) {
	srv, cli, other := ident(t, "server"), ident(t, "client"), ident(t, "other")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peers := make(chan string, 4)
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				c, err := Server(nc, srv)
				if err != nil {
					peers <- "handshake failed"
					return
				}
				defer c.Close()
				peers <- c.Peer()
				if m, err := c.Recv(0); err == nil {
					c.Send(m)
				}
			}()
		}
	}()
	ctx := context.Background()
	c, err := Dial(ctx, ln.Addr().String(), cli, srv.Fingerprint)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Send(&msg.Go{Header: msg.Header{MeasID: 3}}); err != nil {
		t.Fatal(err)
	}
	m, err := c.Recv(0)
	if err != nil || m.ID() != 3 {
		t.Fatalf("echo: %v %v", m, err)
	}
	if got := <-peers; got != cli.Fingerprint {
		t.Fatalf("server saw %s, want %s", got, cli.Fingerprint)
	}
	c.Close()
	// A client pinning another certificate refuses the server.
	if _, err := Dial(ctx, ln.Addr().String(), cli, other.Fingerprint); err == nil || !strings.Contains(err.Error(), "not the pinned") {
		t.Fatalf("dial with wrong pin: %v", err)
	}
	<-peers
}

func TestParseFingerprint(t *testing.T) {
	fp := strings.Repeat("ab", 32)
	for _, in := range []string{fp, strings.ToUpper(fp), " " + fp + " "} {
		if got, err := ParseFingerprint(in); err != nil || got != strings.ToUpper(fp) {
			t.Errorf("ParseFingerprint(%q) = %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"", fp[:62], fp + "00", strings.Repeat("zz", 32)} {
		if _, err := ParseFingerprint(in); err == nil {
			t.Errorf("ParseFingerprint(%q) succeeded", in)
		}
	}
}
