// Package netcheck gives functions network access on bentod's side of the
// sandbox, only to destinations that both the node's DestinationPolicy and
// the function's manifest accept. A name is resolved once, every address is
// checked, and the connection goes to a checked address: there is no second
// lookup a DNS rebinding could exploit. The underlying dialer is pluggable
// so that a Tor dialer can take its place.
package netcheck

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/torbento/bento/internal/exitpolicy"
)

// Dialer makes connections; *net.Dialer is one.
type Dialer interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// Resolver looks names up; *net.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Checked dials only destinations every policy accepts.
type Checked struct {
	Policies []*exitpolicy.Policy
	Dialer   Dialer
	Resolver Resolver
}

// DeniedError is a destination some policy rejects.
type DeniedError struct {
	Dest string
	Why  string
}

func (e *DeniedError) Error() string {
	return fmt.Sprintf("destination %s denied: %s", e.Dest, e.Why)
}

// Check returns the addresses of host:port that every policy accepts, or a
// DeniedError saying which policy refused.
func (c *Checked) Check(ctx context.Context, hostport string) ([]netip.AddrPort, error) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, fmt.Errorf("destination %q: %v", hostport, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return nil, fmt.Errorf("destination %q: bad port", hostport)
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a.Unmap()}
	} else {
		r := c.Resolver
		if r == nil {
			r = net.DefaultResolver
		}
		if addrs, err = r.LookupNetIP(ctx, "ip", host); err != nil {
			return nil, fmt.Errorf("resolving %s: %w", host, err)
		}
	}
	var ok []netip.AddrPort
	why := "no address"
	for _, a := range addrs {
		a = a.Unmap()
		allowed := true
		for i, p := range c.Policies {
			if !p.Allows(a, uint16(port)) {
				allowed = false
				why = fmt.Sprintf("%s is rejected by the %s", netip.AddrPortFrom(a, uint16(port)), policyName(i))
				break
			}
		}
		if allowed {
			ok = append(ok, netip.AddrPortFrom(a, uint16(port)))
		}
	}
	if len(ok) == 0 {
		return nil, &DeniedError{Dest: hostport, Why: why}
	}
	return ok, nil
}

func policyName(i int) string {
	switch i {
	case 0:
		return "node's DestinationPolicy"
	case 1:
		return "manifest's destinations"
	}
	return "relay's exit policy"
}

// DialContext checks addr and connects to the first accepted address that
// answers.
func (c *Checked) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if network != "tcp" && network != "tcp4" && network != "tcp6" {
		return nil, fmt.Errorf("network %q not supported", network)
	}
	addrs, err := c.Check(ctx, addr)
	if err != nil {
		return nil, err
	}
	d := c.Dialer
	if d == nil {
		d = &net.Dialer{}
	}
	var last error
	for _, a := range addrs {
		conn, err := d.DialContext(ctx, "tcp", a.String())
		if err == nil {
			return conn, nil
		}
		last = err
	}
	return nil, last
}

// CheckTor checks a destination reached through Tor: an exit relay or an
// onion service makes the connection, and the name is resolved there, not
// here. An address literal meets the address rules of every policy; a name
// (an onion address, or a host name an exit resolves) meets their name
// rules (see exitpolicy.EvaluateName). policies are the node's
// DestinationPolicy and the manifest's destinations, in that order.
func CheckTor(policies []*exitpolicy.Policy, hostport string) error {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		return fmt.Errorf("destination %q: %v", hostport, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return fmt.Errorf("destination %q: bad port", hostport)
	}
	if len(host) == 0 || len(host) > 255 {
		return fmt.Errorf("destination %q: bad host", hostport)
	}
	if onion, ok, err := CanonicalOnion(host); ok {
		if err != nil {
			return err
		}
		host = onion
	}
	a, aerr := netip.ParseAddr(host)
	for i, p := range policies {
		var ok bool
		if aerr == nil {
			ok = p.Allows(a.Unmap(), uint16(port))
		} else {
			ok = p.AllowsName(host, uint16(port))
		}
		if !ok {
			return &DeniedError{Dest: hostport, Why: fmt.Sprintf("%s is rejected by the %s", hostport, policyName(i))}
		}
	}
	return nil
}

// CanonicalOnion reduces a host name ending in ".onion" to the service it
// names, as tor does: lower case, no trailing dot, no subdomains
// ("www.<id>.onion" is "<id>.onion"). ok reports whether host is an onion
// name at all; err, whether it is not a valid v3 onion address.
func CanonicalOnion(host string) (onion string, ok bool, err error) {
	h := strings.ToLower(strings.TrimSuffix(host, "."))
	if !strings.HasSuffix(h, ".onion") {
		return "", false, nil
	}
	labels := strings.Split(h, ".")
	if len(labels) >= 2 {
		h = labels[len(labels)-2] + ".onion"
	}
	if !exitpolicy.ValidOnion(h) {
		return "", true, fmt.Errorf("%q is not a v3 onion address (56 base32 characters, then .onion)", host)
	}
	return h, true, nil
}

// SameOnionService reports whether two host:port destinations name the
// same onion service and port (subdomains, case and leading zeros aside).
func SameOnionService(a, b string) bool {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil {
		return false
	}
	oa, ok1, e1 := CanonicalOnion(ha)
	ob, ok2, e2 := CanonicalOnion(hb)
	na, e3 := strconv.Atoi(pa)
	nb, e4 := strconv.Atoi(pb)
	return ok1 && ok2 && e1 == nil && e2 == nil && e3 == nil && e4 == nil && oa == ob && na == nb
}
