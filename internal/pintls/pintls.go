// Package pintls is TLS 1.3 for direct TCP between bento and bentod,
// without certificate authorities: bentod keeps a self-signed certificate
// in its DataDirectory, and a client pins the SHA-256 fingerprint of that
// certificate ("sha256:<64 hex digits>"), given by the user.
//
// bentod serves TLS and cleartext on one port: a connection whose first
// byte is a TLS handshake record (0x16) gets TLS; a Bento hello frame
// starts with its length's high byte, 0x00.
package pintls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/torbento/bento/internal/flashflow/link"
)

// Prefix starts a pin.
const Prefix = "sha256:"

// Fingerprint is the pin of a certificate: "sha256:" and the hex SHA-256
// of its DER bytes, lower case.
func Fingerprint(der []byte) string { return Prefix + strings.ToLower(link.Fingerprint(der)) }

// ParsePin checks and normalises a pin written by a human: "sha256:" then
// 64 hex digits, any case, colons allowed between them.
func ParsePin(s string) (string, error) {
	shown := s
	if len(shown) > 100 {
		shown = shown[:100] + "…"
	}
	rest, ok := strings.CutPrefix(strings.ToLower(strings.TrimSpace(s)), Prefix)
	if !ok {
		return "", fmt.Errorf("certificate pin %q: want sha256:<64 hex digits> (bentod logs its own, and writes it to DataDirectory/tls_fingerprint)", shown)
	}
	h := strings.ReplaceAll(rest, ":", "")
	if len(h) != 64 {
		return "", fmt.Errorf("certificate pin %q: want 64 hex digits after sha256:, got %d", shown, len(h))
	}
	if _, err := hex.DecodeString(h); err != nil {
		return "", fmt.Errorf("certificate pin %q: not hex", shown)
	}
	return Prefix + h, nil
}

// SplitAddr splits "host:port#sha256:..." into the address and the pin
// ("" if there is none).
func SplitAddr(s string) (addr, pin string, err error) {
	addr, p, ok := strings.Cut(s, "#")
	if !ok {
		return s, "", nil
	}
	pin, err = ParsePin(p)
	return addr, pin, err
}

// Identity is bentod's certificate and key.
type Identity struct {
	Cert        tls.Certificate
	Fingerprint string
}

// LoadOrCreate loads bentod's certificate from dir (tls_cert.pem,
// tls_key.pem), creating an Ed25519 key and a self-signed certificate
// valid for 10 years if neither exists (the key with mode 0600).
func LoadOrCreate(dir string) (*Identity, error) {
	id, err := link.LoadOrCreate(filepath.Join(dir, "tls_cert.pem"), filepath.Join(dir, "tls_key.pem"), "bentod")
	if err != nil {
		return nil, fmt.Errorf("bentod's TLS certificate: %w", err)
	}
	return &Identity{Cert: id.Cert, Fingerprint: Fingerprint(id.Cert.Certificate[0])}, nil
}

// ServerConfig is bentod's TLS configuration: TLS 1.3, no client
// certificate.
func (id *Identity) ServerConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{id.Cert}}
}

// ClientConfig accepts only a server whose certificate has the pin.
func ClientConfig(pin string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The certificate is checked against its pin, not a certificate
		// authority.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("the server sent no certificate")
			}
			if got := Fingerprint(raw[0]); got != pin {
				return &MismatchError{Got: got, Want: pin}
			}
			return nil
		},
	}
}

// MismatchError is a server whose certificate is not the pinned one:
// the handshake stops before anything is sent.
type MismatchError struct {
	Addr string // the server's address, as dialled
	Got  string // the pin of the certificate the server presented
	Want string // the pin given
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("the server's certificate is %s, not the pinned %s: a different server, someone in between, or a server that made a new key; check the pin with the server's operator", e.Got, e.Want)
}

// Dialer dials TLS over Forward (default: a net.Dialer) to a server
// whose certificate has the fingerprint Pin.
type Dialer struct {
	Pin     string
	Forward interface {
		DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	}
}

// handshakeTimeout bounds the handshake when the context has no deadline.
const handshakeTimeout = 30 * time.Second

// DialContext connects and completes the TLS handshake.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	pin, err := ParsePin(d.Pin)
	if err != nil {
		return nil, err
	}
	var fwd interface {
		DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	} = &net.Dialer{}
	if d.Forward != nil {
		fwd = d.Forward
	}
	nc, err := fwd.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, handshakeTimeout)
		defer cancel()
	}
	tc := tls.Client(nc, ClientConfig(pin))
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		var me *MismatchError
		if errors.As(err, &me) {
			me.Addr = addr
		} else if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
			// A server that speaks no TLS reads the handshake as a
			// frame too large, and hangs up.
			return nil, fmt.Errorf("TLS with %s: %w (the server hung up during the handshake: a bentod too old to speak TLS, or not a bentod)", addr, err)
		}
		return nil, fmt.Errorf("TLS with %s: %w", addr, err)
	}
	return tc, nil
}

// Sniff returns nc as the server reads and writes it: on its first read,
// a connection that starts with a TLS handshake record becomes a TLS
// server connection with cfg; any other stays cleartext. Deadlines and
// closing still go to nc.
func Sniff(nc net.Conn, cfg *tls.Config) net.Conn { return &sniffConn{Conn: nc, cfg: cfg} }

type sniffConn struct {
	net.Conn
	cfg  *tls.Config
	once sync.Once
	err  error
	rw   net.Conn // nc itself, or the TLS connection over it
	peek []byte   // the byte read to decide, for a cleartext connection
	mu   sync.Mutex
}

func (c *sniffConn) decide() {
	var b [1]byte
	if _, err := c.Conn.Read(b[:]); err != nil {
		c.err = err
		return
	}
	if b[0] == 0x16 {
		c.setRW(tls.Server(&prefixConn{Conn: c.Conn, prefix: b[:]}, c.cfg))
		return
	}
	c.peek = []byte{b[0]}
	c.setRW(c.Conn)
}

func (c *sniffConn) setRW(rw net.Conn) {
	c.mu.Lock()
	c.rw = rw
	c.mu.Unlock()
}

func (c *sniffConn) getRW() net.Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rw == nil {
		return c.Conn
	}
	return c.rw
}

func (c *sniffConn) Read(p []byte) (int, error) {
	c.once.Do(c.decide)
	if c.err != nil {
		return 0, c.err
	}
	if len(c.peek) > 0 && len(p) > 0 {
		n := copy(p, c.peek)
		c.peek = c.peek[n:]
		return n, nil
	}
	return c.getRW().Read(p)
}

func (c *sniffConn) Write(p []byte) (int, error) { return c.getRW().Write(p) }

// TLS reports whether the connection turned out to be TLS (once read).
func (c *sniffConn) TLS() bool { _, ok := c.getRW().(*tls.Conn); return ok }

// prefixConn reads prefix before the connection's own bytes.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
