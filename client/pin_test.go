package client

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/torbento/bento/internal/pintls"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/wire"
)

// tlsServer is a Bento server of one request (the policy) behind
// pintls.Sniff, as bentod's client port is: TLS and cleartext on one
// port. It records whether each connection was TLS and the bytes it read
// off the socket.
type tlsServer struct {
	addr, pin string
	mu        sync.Mutex
	raw       bytes.Buffer // every byte read from the sockets
	kinds     []bool       // per connection served: TLS or not
}

func startTLSServer(t *testing.T) *tlsServer {
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
	s := &tlsServer{addr: ln.Addr().String(), pin: id.Fingerprint}
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(nc, id)
		}
	}()
	return s
}

func (s *tlsServer) serve(nc net.Conn, id *pintls.Identity) {
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	rw := pintls.Sniff(&recordConn{Conn: nc, s: s}, id.ServerConfig())
	conn := wire.NewConn(rw)
	f, err := conn.Read()
	if err != nil || f.Type != proto.THello {
		return
	}
	s.mu.Lock()
	s.kinds = append(s.kinds, rw.(interface{ TLS() bool }).TLS())
	s.mu.Unlock()
	if conn.Send(proto.TWelcome, proto.Welcome{Version: proto.Version, Server: "test"}, nil) != nil {
		return
	}
	if f, err = conn.Read(); err != nil || f.Type != proto.TPolicy {
		return
	}
	conn.Send(proto.TPolicyReply, policy.Public{Nickname: "secret-policy-name"}, nil)
}

// recordConn copies what is read from the socket to s.raw.
type recordConn struct {
	net.Conn
	s *tlsServer
}

func (c *recordConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.s.mu.Lock()
	c.s.raw.Write(p[:n])
	c.s.mu.Unlock()
	return n, err
}

func (s *tlsServer) served() (kinds []bool, raw []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]bool(nil), s.kinds...), bytes.Clone(s.raw.Bytes())
}

// TestPin: with the server's pin the client speaks TLS (nothing of the
// protocol crosses the socket in clear); with another pin it is refused
// with a PinMismatch before it sends a frame; without one, cleartext.
func TestPin(t *testing.T) {
	s := startTLSServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	c := New(s.addr)
	c.Pin = s.pin
	p, err := c.Policy(ctx)
	if err != nil || p.Nickname != "secret-policy-name" {
		t.Fatalf("Policy with the right pin: %v, %v", p, err)
	}
	kinds, raw := s.served()
	if len(kinds) != 1 || !kinds[0] {
		t.Fatalf("connections served (TLS?): %v", kinds)
	}
	if raw[0] != 0x16 || bytes.Contains(raw, []byte(`"version"`)) {
		t.Fatalf("the client's bytes are not TLS: %q", raw)
	}

	other, err := pintls.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c.Pin = other.Fingerprint
	_, err = c.Policy(ctx)
	var pm *PinMismatch
	var ce *ConnError
	if !errors.As(err, &pm) || !errors.As(err, &ce) || pm.Got != s.pin || pm.Want != other.Fingerprint {
		t.Fatalf("Policy with another pin: %v", err)
	}
	if kinds, _ := s.served(); len(kinds) != 1 {
		t.Fatalf("a hello reached the server after a wrong pin: %v", kinds)
	}

	c.Pin = ""
	if _, err := c.Policy(ctx); err != nil {
		t.Fatalf("Policy in cleartext: %v", err)
	}
	if kinds, raw := s.served(); len(kinds) != 2 || kinds[1] || !bytes.Contains(raw, []byte(`"version"`)) {
		t.Fatalf("cleartext: TLS %v, bytes %q", kinds, raw)
	}

	c.Pin = "sha256:nope"
	if _, err := c.Policy(ctx); err == nil || !strings.Contains(err.Error(), "certificate pin") {
		t.Fatalf("Policy with a malformed pin: %v", err)
	}
}

// TestPinServerWithoutTLS: a server that speaks no TLS hangs up on the
// handshake; the error says what that likely means.
func TestPinServerWithoutTLS(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			// A bentod without TLS: the record header reads as a frame
			// far too large, and the connection is closed.
			nc.SetDeadline(time.Now().Add(5 * time.Second))
			nc.Read(make([]byte, 5))
			nc.Close()
		}
	}()
	c := New(ln.Addr().String())
	c.Pin = "sha256:" + strings.Repeat("ab", 32)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Policy(ctx); err == nil || !strings.Contains(err.Error(), "too old to speak TLS") {
		t.Fatalf("Policy of a server without TLS: %v", err)
	}
}

// TestPinOnion: a pin with an onion address is refused: bentod speaks no
// TLS on its onion service, which needs none.
func TestPinOnion(t *testing.T) {
	c := New("2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion:8888")
	c.Dialer = dialFunc(func(context.Context, string, string) (net.Conn, error) {
		t.Fatal("dialled")
		return nil, nil
	})
	c.Pin = "sha256:" + strings.Repeat("ab", 32)
	if _, err := c.Policy(context.Background()); err == nil || !strings.Contains(err.Error(), "give no pin") {
		t.Fatalf("Policy of an onion address with a pin: %v", err)
	}
}

type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

func (f dialFunc) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return f(ctx, network, addr)
}
