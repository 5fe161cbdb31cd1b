package server

import (
	"net"

	"github.com/torbento/bento/internal/netlimit"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/wire"
)

// LocalConn returns a connection to this bentod served in process for a
// client at remote that reached bentod another way (the compat listener,
// internal/compat): what it deploys, invokes and holds is charged to that
// client's address as a direct client's is, and every check of a direct
// connection applies.
func (s *Server) LocalConn(remote net.Addr) net.Conn {
	a, b := net.Pipe()
	o := &origin{owner: clientKey(remote)}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.handle(b, o, false)
	}()
	return a
}

// ClientBudget is the allowance of bytes in flight of the client at
// remote (shared with its direct connections); call done when finished
// with it.
func (s *Server) ClientBudget(remote net.Addr) (b wire.Budget, done func()) {
	return s.budgets.get(budgetKey(clientKey(remote)))
}

// Policy is the policy in force.
func (s *Server) Policy() *policy.Policy { return s.policy() }

// LimitNamedListener wraps ln with the limits of the direct client
// listener (connections in total and per address, the connection rate),
// under its own name and counters, refusing with refusal's bytes.
func (s *Server) LimitNamedListener(ln net.Listener, name string, refusal func(netlimit.Reason) []byte) *netlimit.Listener {
	d := s.policy().Daemon
	return s.track(netlimit.New(ln, netlimit.Config{Name: name, Total: d.MaxConnections, PerAddr: d.MaxConnectionsPerAddr,
		Rate: d.ConnectRate, Burst: d.ConnectBurst, KernelDrop: true, RecvBuffer: clientRecvBuffer, Log: s.log, Refusal: refusal}))
}
