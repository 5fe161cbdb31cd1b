// Package socks is a SOCKS5 client (RFC 1928, RFC 1929) for reaching
// destinations through a tor SocksPort: host names, .onion addresses
// included, are sent to tor unresolved, and a username/password pair
// selects tor's per-credential circuit isolation (IsolateSOCKSAuth).
package socks

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"
)

// Dialer dials through a SOCKS5 proxy.
type Dialer struct {
	// Proxy is the SocksPort: "host:port", or "unix:/path".
	Proxy string
	// Username and Password, when set, are sent with RFC 1929
	// authentication; tor puts streams with different credentials on
	// different circuits.
	Username, Password string
	// Forward dials the proxy (default: a net.Dialer).
	Forward func(ctx context.Context, network, addr string) (net.Conn, error)
	// RetryFor, if positive, is how long DialContext keeps trying
	// again after failures a new onion service gives while its
	// descriptor spreads (descriptor not found, introduction failed or
	// timed out: Error.Transient), waiting 0.5 s, then twice as long each
	// time, at most 8 s. Other failures return at once; the context
	// bounds the retries too.
	RetryFor time.Duration
	// OnRetry, if set, is called before each wait with the failure, the
	// number of tries so far and the wait.
	OnRetry func(err *Error, tries int, wait time.Duration)
}

// Backoff between tries (variables for the tests).
var (
	retryFirstWait = 500 * time.Millisecond
	retryMaxWait   = 8 * time.Second
)

// attemptTimeout bounds one try when the context has no deadline: longer
// than tor's own SocksTimeout (2 minutes), so tor answers first.
const attemptTimeout = 150 * time.Second

// DialContext connects to addr ("host:port") through the proxy. network
// must be "tcp" (or tcp4/tcp6).
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if network != "tcp" && network != "tcp4" && network != "tcp6" {
		return nil, fmt.Errorf("socks: network %q not supported", network)
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("socks: bad target %q: %v", addr, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return nil, fmt.Errorf("socks: bad port in %q", addr)
	}
	if len(host) == 0 || len(host) > 255 {
		return nil, fmt.Errorf("socks: bad host in %q", addr)
	}
	if IsOnion(host) {
		// A mistyped address fails here, at once, not after tor has
		// looked for its descriptor.
		if _, err := ParseOnion(host); err != nil {
			return nil, err
		}
	}
	if len(d.Username) > 255 || len(d.Password) > 255 {
		return nil, errors.New("socks: username or password longer than 255 bytes")
	}
	start := time.Now()
	wait := retryFirstWait
	var last *Error
	for tries := 1; ; tries++ {
		c, err := d.dialOnce(ctx, host, uint16(port))
		var se *Error
		switch {
		case err == nil:
			return c, nil
		case last != nil && ctx.Err() != nil:
			return nil, fmt.Errorf("%w; stopped after %d tries in %s: %w", last, tries-1, since(start), ctx.Err())
		case d.RetryFor <= 0 || !errors.As(err, &se) || !se.Transient():
			return nil, err
		case time.Since(start)+wait > d.RetryFor:
			return nil, fmt.Errorf("%w; gave up after %d tries in %s", se, tries, since(start))
		}
		last = se
		if d.OnRetry != nil {
			d.OnRetry(se, tries, wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w; stopped after %d tries in %s: %w", se, tries, since(start), ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, retryMaxWait)
	}
}

func since(t time.Time) time.Duration { return time.Since(t).Round(100 * time.Millisecond) }

// dialOnce is one try: connect to the proxy, ask it for host:port.
func (d *Dialer) dialOnce(ctx context.Context, host string, port uint16) (net.Conn, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, attemptTimeout)
		defer cancel()
	}
	fwd := d.Forward
	if fwd == nil {
		var nd net.Dialer
		fwd = nd.DialContext
	}
	pn, pa := "tcp", d.Proxy
	if len(pa) > 5 && pa[:5] == "unix:" {
		pn, pa = "unix", pa[5:]
	}
	c, err := fwd(ctx, pn, pa)
	if err != nil {
		return nil, fmt.Errorf("socks: connecting to the proxy %s: %w", d.Proxy, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	err = d.handshake(c, host, port)
	if !stop() || err != nil {
		c.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

func (d *Dialer) handshake(c net.Conn, host string, port uint16) error {
	method := byte(0)
	if d.Username != "" || d.Password != "" {
		method = 2
	}
	if _, err := c.Write([]byte{5, 1, method}); err != nil {
		return fmt.Errorf("socks: %w", err)
	}
	var b [2]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return fmt.Errorf("socks: reading method choice: %w", err)
	}
	if b[0] != 5 || b[1] != method {
		return fmt.Errorf("socks: proxy refused authentication method %d (answered %d %d)", method, b[0], b[1])
	}
	if method == 2 {
		req := []byte{1, byte(len(d.Username))}
		req = append(req, d.Username...)
		req = append(req, byte(len(d.Password)))
		req = append(req, d.Password...)
		if _, err := c.Write(req); err != nil {
			return fmt.Errorf("socks: %w", err)
		}
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return fmt.Errorf("socks: reading authentication reply: %w", err)
		}
		if b[1] != 0 {
			return errors.New("socks: proxy rejected the username/password")
		}
	}
	req := []byte{5, 1, 0}
	if ip := net.ParseIP(host); ip != nil && ip.To4() != nil {
		req = append(append(req, 1), ip.To4()...)
	} else if ip != nil {
		req = append(append(req, 4), ip.To16()...)
	} else {
		req = append(append(req, 3, byte(len(host))), host...)
	}
	req = binary.BigEndian.AppendUint16(req, port)
	if _, err := c.Write(req); err != nil {
		return fmt.Errorf("socks: %w", err)
	}
	if _, err := ReadReply(c); err != nil {
		var se *Error
		if errors.As(err, &se) {
			se.Target = net.JoinHostPort(host, strconv.Itoa(int(port)))
		}
		return err
	}
	return nil
}

// ReadReply reads a SOCKS5 CONNECT reply and returns the bound address.
func ReadReply(r io.Reader) (string, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return "", fmt.Errorf("socks: reading reply: %w", err)
	}
	if h[0] != 5 {
		return "", fmt.Errorf("socks: reply version %d, want 5 (is this a SOCKS5 proxy?)", h[0])
	}
	if h[1] != 0 {
		return "", &Error{Code: h[1]}
	}
	var host string
	switch h[3] {
	case 1, 4:
		ip := make([]byte, 4)
		if h[3] == 4 {
			ip = make([]byte, 16)
		}
		if _, err := io.ReadFull(r, ip); err != nil {
			return "", fmt.Errorf("socks: reading bound address: %w", err)
		}
		host = net.IP(ip).String()
	case 3:
		var n [1]byte
		if _, err := io.ReadFull(r, n[:]); err != nil {
			return "", fmt.Errorf("socks: reading bound address: %w", err)
		}
		name := make([]byte, n[0])
		if _, err := io.ReadFull(r, name); err != nil {
			return "", fmt.Errorf("socks: reading bound address: %w", err)
		}
		for _, c := range name {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
				return "", fmt.Errorf("socks: bound address %q is not a host name", name)
			}
		}
		host = string(name)
	default:
		return "", fmt.Errorf("socks: unknown address type %d in reply", h[3])
	}
	var p [2]byte
	if _, err := io.ReadFull(r, p[:]); err != nil {
		return "", fmt.Errorf("socks: reading bound port: %w", err)
	}
	return net.JoinHostPort(host, strconv.Itoa(int(binary.BigEndian.Uint16(p[:])))), nil
}
