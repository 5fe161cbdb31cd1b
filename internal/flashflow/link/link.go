// Package link carries FlashFlow's messages between coordinator, measurers
// and targets: TLS 1.3 in both directions with certificates pinned by the
// SHA-256 fingerprint of their DER encoding (no certificate authority, as
// prop 316's FFAllowedCoordinators lists fingerprints), and the framing of
// package msg with a deadline on every read and write.
//
// A server accepts any client certificate during the handshake and checks
// the pin afterwards, so that it can tell an unpinned peer why it is
// refused (an ERR message with ErrUntrusted, as prop 316 §3.1.3 asks)
// instead of a bare TLS alert. A client refuses a server whose certificate
// is not the one pinned before sending anything.
package link

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/torbento/bento/internal/atomicfile"
	"github.com/torbento/bento/internal/flashflow/msg"
)

// Fingerprint is the pin of a certificate: hex SHA-256 of its DER bytes,
// upper case, 64 characters.
func Fingerprint(der []byte) string {
	s := sha256.Sum256(der)
	return strings.ToUpper(hex.EncodeToString(s[:]))
}

// ParseFingerprint checks and normalises a fingerprint written by a human
// (colons and spaces allowed, any case).
func ParseFingerprint(s string) (string, error) {
	t := strings.ToUpper(strings.NewReplacer(":", "", " ", "").Replace(strings.TrimSpace(s)))
	if len(t) != 64 {
		return "", fmt.Errorf("certificate fingerprint %q: want 64 hex digits (SHA-256 of the certificate), got %d", s, len(t))
	}
	if _, err := hex.DecodeString(t); err != nil {
		return "", fmt.Errorf("certificate fingerprint %q: not hex", s)
	}
	return t, nil
}

// Identity is a party's certificate and key.
type Identity struct {
	Cert        tls.Certificate
	Fingerprint string
}

// LoadOrCreate loads the identity in certFile and keyFile, creating a new
// Ed25519 key and self-signed certificate (valid 10 years) if neither
// exists. The key file is written with mode 0600.
func LoadOrCreate(certFile, keyFile, name string) (*Identity, error) {
	_, errC := os.Stat(certFile)
	_, errK := os.Stat(keyFile)
	if errors.Is(errC, os.ErrNotExist) && errors.Is(errK, os.ErrNotExist) {
		if err := create(certFile, keyFile, name); err != nil {
			return nil, err
		}
	}
	return Load(certFile, keyFile)
}

// Load reads an identity.
func Load(certFile, keyFile string) (*Identity, error) {
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("flashflow: loading certificate %s and key %s: %w", certFile, keyFile, err)
	}
	return &Identity{Cert: c, Fingerprint: Fingerprint(c.Certificate[0])}, nil
}

func create(certFile, keyFile, name string) error {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		return err
	}
	pk, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return err
	}
	if err := writeFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}), 0o600); err != nil {
		return err
	}
	return writeFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func writeFile(path string, b []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return atomicfile.Write(path, b, mode)
}

// ServerConfig is the TLS configuration of a listener: TLS 1.3, and a
// client certificate required (pins are checked by Conn.Peer's caller).
func (id *Identity) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.Cert},
		ClientAuth:   tls.RequireAnyClientCert,
	}
}

// ClientConfig is the TLS configuration of a dialer that accepts only a
// server whose certificate has one of the fingerprints pins (more than
// one while a server rotates its certificate).
func (id *Identity) ClientConfig(pins ...string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.Cert},
		// The certificate is checked against its pin below, not against
		// a certificate authority.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("flashflow: peer sent no certificate")
			}
			got := Fingerprint(raw[0])
			for _, p := range pins {
				if got == p {
					return nil
				}
			}
			return fmt.Errorf("flashflow: peer certificate %s is not the pinned %s", got, strings.Join(pins, " or "))
		},
	}
}

// Conn is one framed FlashFlow connection.
type Conn struct {
	wmu     sync.Mutex
	c       *tls.Conn
	timeout time.Duration
	buf     [msg.MaxFrame]byte
}

// DefaultTimeout bounds a handshake and every read and write that has no
// deadline of its own.
const DefaultTimeout = 10 * time.Second

// Dial connects to addr and checks its certificate is one of pins.
func Dial(ctx context.Context, addr string, id *Identity, pins ...string) (*Conn, error) {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: DefaultTimeout}, Config: id.ClientConfig(pins...)}
	ctx, cancel := context.WithTimeout(ctx, DefaultTimeout)
	defer cancel()
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("flashflow: connecting to %s: %w", addr, err)
	}
	return &Conn{c: nc.(*tls.Conn), timeout: DefaultTimeout}, nil
}

// Server completes the handshake of an accepted connection.
func Server(nc net.Conn, id *Identity) (*Conn, error) {
	return ServerTimeout(nc, id, DefaultTimeout)
}

// ServerTimeout is Server with a handshake deadline of its own.
func ServerTimeout(nc net.Conn, id *Identity, d time.Duration) (*Conn, error) {
	tc := tls.Server(nc, id.ServerConfig())
	tc.SetDeadline(time.Now().Add(d))
	if err := tc.Handshake(); err != nil {
		tc.Close()
		return nil, err
	}
	tc.SetDeadline(time.Time{})
	return &Conn{c: tc, timeout: DefaultTimeout}, nil
}

// Peer is the fingerprint of the peer's certificate.
func (c *Conn) Peer() string {
	cs := c.c.ConnectionState()
	if len(cs.PeerCertificates) == 0 {
		return ""
	}
	return Fingerprint(cs.PeerCertificates[0].Raw)
}

// RemoteAddr is the peer's address.
func (c *Conn) RemoteAddr() net.Addr { return c.c.RemoteAddr() }

// Send writes m within the timeout. It is safe for concurrent use.
func (c *Conn) Send(m msg.Msg) error {
	b, err := msg.Frame(m)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.c.SetWriteDeadline(time.Now().Add(c.timeout))
	_, err = c.c.Write(b)
	return err
}

// Recv reads one message, waiting at most d (DefaultTimeout if d is 0).
func (c *Conn) Recv(d time.Duration) (msg.Msg, error) {
	if d == 0 {
		d = c.timeout
	}
	c.c.SetReadDeadline(time.Now().Add(d))
	p, err := msg.ReadFrame(c.c, c.buf[:])
	if err != nil {
		return nil, err
	}
	return msg.Decode(p)
}

// Close closes the connection.
func (c *Conn) Close() error { return c.c.Close() }

// AcceptLoop accepts connections on ln until ctx ends (it then closes
// ln) and passes each to handle, which must not block (it starts a
// goroutine for anything slow). Accept errors are logged (what names the
// listener) and followed by a short pause, never the end of the loop.
func AcceptLoop(ctx context.Context, ln net.Listener, log *slog.Logger, what string, handle func(net.Conn)) error {
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				log.Warn("flashflow: accepting "+what, "err", err)
				time.Sleep(100 * time.Millisecond)
			}
			continue
		}
		handle(nc)
	}
}
