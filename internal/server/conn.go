package server

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime/debug"
	"sync"
	"time"

	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/netlimit"
	"github.com/torbento/bento/internal/pintls"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/safelog"
	"github.com/torbento/bento/internal/units"
	"github.com/torbento/bento/internal/wire"
)

// Frame bounds of the client protocol, by phase: a connection says hello
// in a frame of at most helloLimit bytes; requests other than a deploy
// fit in requestLimit; input to a session comes in frames of at most
// inputLimit.
const (
	helloLimit   = 4 << 10
	requestLimit = 64<<10 + 4<<10 // invoke arguments are at most 64 KB
	maxArgs      = 64 << 10
	inputLimit   = 256<<10 + 1<<10 // client.InputChunk and its frame header
)

// deployLimit bounds a deploy frame: the upload, the manifest and the file
// list.
func deployLimit(maxUpload int64) int {
	return int(maxUpload) + manifest.MaxSize + 16<<10
}

// The kernel's receive buffer of each client connection (twice this,
// with its bookkeeping): what a client can park in bentod's kernel while
// its upload waits for the byte budget, at most MaxConnections times.
// Autotuned, a stalled upload parks megabytes (1,024 of them parked about
// 445 MB). 128 KB still fills a loopback link (tor's, or a local client's)
// many times over; a distant direct client's uploads are slower (128 KB a
// round trip). The policy endpoint reads a request of a few hundred bytes.
const (
	clientRecvBuffer = 128 << 10
	policyRecvBuffer = 16 << 10
)

// LimitListener wraps ln with the policy's connection limits: for the
// listener clients reach directly (onion false), a total and a share per
// address; for the one bentod's onion service forwards to (onion true),
// where every client comes from tor's loopback address, a total only
// (tor itself bounds each rendezvous circuit with MaxStreams). A refused
// client is told why in a protocol error frame.
func (s *Server) LimitListener(ln net.Listener, onion bool) *netlimit.Listener {
	d := s.policy().Daemon
	// Refusals are encoded once: a flood's refusals cost a write each.
	refusals := map[netlimit.Reason][]byte{}
	for _, why := range []netlimit.Reason{netlimit.TooMany, netlimit.TooManyFromYou, netlimit.TooFast} {
		hdr, _ := json.Marshal(proto.Error{Code: proto.CodeBusy, Message: "busy, retry later: " + why.String()})
		refusals[why] = (&wire.Frame{Type: proto.TError, Header: hdr}).Encode(nil)
	}
	cfg := netlimit.Config{Name: "client", Total: d.MaxConnections, PerAddr: d.MaxConnectionsPerAddr,
		Rate: d.ConnectRate, Burst: d.ConnectBurst, KernelDrop: true, RecvBuffer: clientRecvBuffer, Log: s.log,
		Refusal: func(why netlimit.Reason) []byte { return refusals[why] }}
	if onion {
		// Everyone through Tor arrives from tor's address: no per-address
		// bounds here (tor's MaxStreams bounds each circuit).
		cfg.Name, cfg.Total, cfg.PerAddr, cfg.Rate = "onion", d.MaxOnionConnections, 0, 0
	}
	s.self.add(ln.Addr())
	return s.track(netlimit.New(ln, cfg))
}

// LimitPolicyListener wraps the policy endpoint's listener: it serves a
// small document, so a few connections per address are plenty.
func (s *Server) LimitPolicyListener(ln net.Listener) *netlimit.Listener {
	return s.LimitHTTPListener(ln, "policy")
}

// LimitHTTPListener wraps the listener of a small HTTP endpoint (the
// policy, the metrics) with the limits such an endpoint needs.
func (s *Server) LimitHTTPListener(ln net.Listener, name string) *netlimit.Listener {
	return s.track(netlimit.New(ln, netlimit.Config{Name: name, Total: 64, PerAddr: 4, Rate: 10, Burst: 20, KernelDrop: true, RecvBuffer: policyRecvBuffer, Log: s.log,
		Refusal: func(why netlimit.Reason) []byte {
			return []byte(fmt.Sprintf("HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s\n", len(why.String())+1, why))
		}}))
}

// track keeps a listener for Status.
func (s *Server) track(l *netlimit.Listener) *netlimit.Listener {
	s.mu.Lock()
	s.listeners = append(s.listeners, l)
	s.mu.Unlock()
	return l
}

// Serve accepts client connections on ln until Close. A listener not
// made by LimitListener is wrapped as a direct one. Accept errors never
// end it: netlimit backs off and retries.
func (s *Server) Serve(ln net.Listener) error { return s.serve(ln, false) }

// ServeOnion serves the listener bentod's onion service forwards to.
func (s *Server) ServeOnion(ln net.Listener) error { return s.serve(ln, true) }

func (s *Server) serve(ln net.Listener, onion bool) error {
	if _, ok := ln.(*netlimit.Listener); !ok {
		ln = s.LimitListener(ln, onion)
	}
	go func() { <-s.closed; ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			select {
			case <-s.closed:
				return nil
			default:
			}
			return err
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(c, nil, onion)
		}()
	}
}

// recoverPanic keeps a bug reached by one request from ending bentod (and
// every instance with it): it logs the panic with its stack for the
// operator and lets the caller's deferred clean-up run.
func (s *Server) recoverPanic(where string) {
	if r := recover(); r != nil {
		s.log.Error("internal error (a bug: please report it); bentod goes on", "where", where, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	}
}

// handle serves one client connection. o is set for a connection a
// function of this bentod opened onto it (composition): what it deploys is
// charged to that function's client and root.
func (s *Server) handle(nc net.Conn, o *origin, onion bool) {
	// The frame being handled goes back to the budget whatever happens
	// (Release is idempotent), a panic included.
	var cur *wire.Frame
	defer func() { cur.Release() }()
	defer s.recoverPanic("serving a client")
	defer nc.Close()
	p := s.policy()
	d := p.Daemon
	// Bytes in flight are charged to the client: by address, one key for
	// everyone through Tor, and a function's own composition calls to the
	// client that deployed it.
	var key string
	switch {
	case o != nil:
		key = budgetKey(o.owner)
	case onion:
		key = budgetKey("")
	default:
		key = budgetKey(clientKey(nc.RemoteAddr()))
	}
	log := s.log.With("client", safelog.Addr(nc.RemoteAddr().String()))
	bud, done := s.budgets.get(key)
	defer done()
	// With TLS set, a client connecting directly may speak TLS (pintls):
	// frames go through rw, while deadlines and netlimit's marks stay on
	// nc.
	var rw net.Conn = nc
	if cfg := s.tlsConfig.Load(); cfg != nil && o == nil && !onion {
		rw = pintls.Sniff(nc, cfg)
	}
	conn := wire.NewConn(rw)
	conn.Budget = bud
	conn.BudgetWait = d.IdleTimeout
	conn.Limit = func(t uint8) int {
		if t == proto.THello {
			return helloLimit
		}
		return 0
	}
	send := func(t uint8, hdr any) error {
		_ = nc.SetWriteDeadline(time.Now().Add(d.WriteTimeout))
		return conn.Send(t, hdr, nil)
	}
	fail := func(code, format string, a ...any) {
		_ = send(proto.TError, proto.Error{Code: code, Message: fmt.Sprintf(format, a...)})
	}
	// The whole hello must arrive within HandshakeTimeout.
	_ = nc.SetReadDeadline(time.Now().Add(d.HandshakeTimeout))
	f, err := conn.Read()
	if err != nil {
		var te *wire.TypeError
		switch {
		case errors.As(err, &te), errors.Is(err, wire.ErrTooLarge):
			fail(proto.CodeBadRequest, "expected a hello frame first (is this a Bento client?)")
		case errors.Is(err, wire.ErrBusy):
			fail(proto.CodeBusy, "busy, retry later: %v", err)
		}
		return
	}
	var hello proto.Hello
	err = f.Unmarshal(&hello)
	f.Release()
	if err != nil {
		fail(proto.CodeBadRequest, "expected a hello frame first (is this a Bento client?)")
		return
	}
	if hello.Version != proto.Version {
		fail(proto.CodeBadRequest, "protocol version %d not supported (server speaks %d)", hello.Version, proto.Version)
		return
	}
	if hello.Hops < 0 || hello.Hops > 255 {
		fail(proto.CodeBadRequest, "hops %d out of range 0-255", hello.Hops)
		return
	}
	if err := send(proto.TWelcome, proto.Welcome{Version: proto.Version, Server: Version, Features: features}); err != nil {
		return
	}
	netlimit.Prove(nc)
	// A request whose bytes are arriving is work in progress, not idleness.
	conn.OnFrame = func(uint8, int) { netlimit.SetIdle(nc, false) }
	who := origin{depth: hello.Hops}
	switch {
	case o != nil:
		who = *o
	case !onion:
		who.owner = clientKey(nc.RemoteAddr())
	}
	conn.Limit = func(t uint8) int {
		switch t {
		case proto.TPolicy, proto.TShutdown, proto.TInvoke, proto.TAttach, proto.TLogs:
			return requestLimit
		case proto.TDeploy, proto.TUpdate:
			return deployLimit(s.policy().Max.Upload)
		}
		return 0
	}
	// Requests renew the idle deadline, never beyond the connection's
	// lifetime: one client cannot hold a connection forever by asking for
	// the policy now and then.
	end := time.Now().Add(d.ConnectionLifetime)
	for time.Now().Before(end) {
		dl := minTime(time.Now().Add(d.IdleTimeout), end)
		_ = nc.SetReadDeadline(dl)
		conn.Deadline = dl         // a request waiting for the byte budget waits no longer
		netlimit.SetIdle(nc, true) // may be closed to make room until a request is in
		f, err := conn.Read()
		netlimit.SetIdle(nc, false)
		conn.Deadline = time.Time{}
		cur = f
		if err != nil {
			var te *wire.TypeError
			var se *wire.SizeError
			switch {
			case errors.As(err, &se) && (se.Type == proto.TDeploy || se.Type == proto.TUpdate):
				fail(proto.CodeTooLarge, "upload of %s exceeds this node's MaxUploadSize of %s", units.FormatSize(int64(se.Size)), units.FormatSize(s.policy().Max.Upload))
			case errors.As(err, &se):
				fail(proto.CodeTooLarge, "a request of type %d may hold %d bytes (invoke arguments at most %d), this one announces %d", se.Type, se.Limit, maxArgs, se.Size)
			case errors.Is(err, wire.ErrTooLarge):
				fail(proto.CodeTooLarge, "%v", err)
			case errors.As(err, &te):
				fail(proto.CodeBadRequest, "unexpected frame type %d", te.Type)
			case errors.Is(err, wire.ErrBusy):
				fail(proto.CodeBusy, "busy, retry later: %v", err)
			}
			return
		}
		_ = nc.SetReadDeadline(time.Time{})
		switch f.Type {
		case proto.TPolicy:
			f.Release()
			if send(proto.TPolicyReply, s.publicPolicy()) != nil {
				return
			}
		case proto.TDeploy:
			var dep proto.Deploy
			if err := f.Unmarshal(&dep); err != nil {
				f.Release()
				fail(proto.CodeBadRequest, "%v", err)
				return
			}
			start := time.Now()
			res, perr := s.deploy(dep, f.Body, who, log)
			s.met.deployed(start, perr)
			f.Release()
			if perr != nil {
				if send(proto.TError, perr) != nil {
					return
				}
				continue
			}
			if send(proto.TDeployed, res) != nil {
				return
			}
		case proto.TShutdown:
			var sd proto.Shutdown
			err := f.Unmarshal(&sd)
			f.Release()
			if err != nil {
				fail(proto.CodeBadRequest, "%v", err)
				return
			}
			if perr := s.shutdown(sd.Token); perr != nil {
				if send(proto.TError, perr) != nil {
					return
				}
				continue
			}
			if send(proto.TOK, nil) != nil {
				return
			}
		case proto.TUpdate:
			var up proto.Update
			if err := f.Unmarshal(&up); err != nil {
				f.Release()
				fail(proto.CodeBadRequest, "%v", err)
				return
			}
			res, perr := s.update(up, f.Body, log)
			f.Release()
			if perr != nil {
				if send(proto.TError, perr) != nil {
					return
				}
				continue
			}
			if send(proto.TUpdated, res) != nil {
				return
			}
		case proto.TInvoke, proto.TAttach:
			s.serveSession(conn, nc, f, log, hello.Notices)
			return
		case proto.TLogs:
			s.serveLogs(conn, nc, f, log)
			return
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// clientKey is the address per-client fairness counts by on the direct
// listener: the client's IPv4 address or IPv6 prefix. (Clients through
// bentod's onion service arrive on a listener of their own and have none.)
func clientKey(a net.Addr) string {
	if _, ok := a.(*net.TCPAddr); !ok {
		return "local"
	}
	return netlimit.AddrKey(a)
}

// selfAddrs are the addresses bentod serves clients on, so that a
// function's composition call onto this very bentod is served in process,
// charged to the function's client, instead of arriving as a stranger
// from loopback.
type selfAddrs struct {
	mu        sync.Mutex
	listen    []netip.AddrPort
	local     map[netip.Addr]bool // this host's addresses
	refreshed time.Time
}

func (sa *selfAddrs) add(a net.Addr) {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return
	}
	sa.mu.Lock()
	defer sa.mu.Unlock()
	sa.listen = append(sa.listen, ta.AddrPort())
}

// is reports whether ap reaches one of bentod's client listeners.
func (sa *selfAddrs) is(ap netip.AddrPort) bool {
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	sa.mu.Lock()
	defer sa.mu.Unlock()
	for _, l := range sa.listen {
		if l.Port() != ap.Port() {
			continue
		}
		la := l.Addr().Unmap()
		if la == ap.Addr() {
			return true
		}
		if la.IsUnspecified() && (ap.Addr().IsLoopback() || ap.Addr().IsUnspecified() || sa.isLocalLocked(ap.Addr())) {
			return true
		}
	}
	return false
}

func (sa *selfAddrs) isLocalLocked(a netip.Addr) bool {
	if time.Since(sa.refreshed) > time.Minute {
		sa.local = map[netip.Addr]bool{}
		if addrs, err := net.InterfaceAddrs(); err == nil {
			for _, x := range addrs {
				if n, ok := x.(*net.IPNet); ok {
					if ip, ok := netip.AddrFromSlice(n.IP); ok {
						sa.local[ip.Unmap()] = true
					}
				}
			}
		}
		sa.refreshed = time.Now()
	}
	return sa.local[a]
}

// selfConn returns a connection to this bentod served in process for a
// function of in: what it starts is charged to in's client and root.
func (s *Server) selfConn(in *Instance) net.Conn {
	a, b := net.Pipe()
	o := childOrigin(in)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.handle(b, o, false)
	}()
	return a
}

// childOrigin is the origin of what a function of in deploys here.
func childOrigin(in *Instance) *origin {
	return &origin{owner: in.owner, root: in.root, depth: in.depth + 1, protected: in.key != nil}
}

// SetTLS lets clients connecting directly (not through the onion
// service) speak TLS with cfg on the same port as cleartext.
func (s *Server) SetTLS(cfg *tls.Config) { s.tlsConfig.Store(cfg) }
