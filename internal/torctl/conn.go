package torctl

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

// Conn is an authenticated-or-not control connection. Commands may be
// issued from many goroutines; replies are matched to commands in order
// (tor answers in the order it receives), and asynchronous events go to the
// handler set with OnEvent.
type Conn struct {
	nc net.Conn

	wmu     sync.Mutex // serialises writes and the pending queue
	pending []chan result
	closed  bool
	err     error

	emu     sync.Mutex
	onEvent func(*Reply)

	done chan struct{}
}

type result struct {
	r   *Reply
	err error
}

// ErrClosed is returned by commands on a closed or broken connection.
var ErrClosed = errors.New("torctl: connection closed")

// Dial connects to a control port: addr is "host:port" or, with network
// "unix", a socket path.
func Dial(ctx context.Context, network, addr string) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("torctl: connecting to tor's control port %s: %w", addr, err)
	}
	return NewConn(nc), nil
}

// DialAuth connects to a control port given as "HOST:PORT" or
// "unix:PATH" and authenticates.
func DialAuth(ctx context.Context, addr string, a Auth) (*Conn, error) {
	network, na := ParseAddr(addr)
	c, err := Dial(ctx, network, na)
	if err != nil {
		return nil, fmt.Errorf("tor control port %s: %w", addr, err)
	}
	if err := c.Authenticate(ctx, a); err != nil {
		c.Close()
		return nil, fmt.Errorf("tor control port %s: %w", addr, err)
	}
	return c, nil
}

// ParseAddr splits a control-port address as bentorc writes it:
// "unix:/run/tor/control" or "127.0.0.1:9051".
func ParseAddr(s string) (network, addr string) {
	if p, ok := strings.CutPrefix(s, "unix:"); ok {
		return "unix", p
	}
	return "tcp", s
}

// NewConn wraps an established connection and starts reading from it.
func NewConn(nc net.Conn) *Conn {
	c := &Conn{nc: nc, done: make(chan struct{})}
	go c.readLoop()
	return c
}

// OnEvent sets the function called, from the reading goroutine and in
// order, for each asynchronous event. It must not block for long.
func (c *Conn) OnEvent(f func(*Reply)) {
	c.emu.Lock()
	c.onEvent = f
	c.emu.Unlock()
}

// Done is closed when the connection ends.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended (nil while it is open).
func (c *Conn) Err() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.err
}

// Close closes the connection; pending commands fail with ErrClosed.
func (c *Conn) Close() error {
	err := c.nc.Close()
	<-c.done
	return err
}

func (c *Conn) readLoop() {
	br := bufio.NewReaderSize(c.nc, 64<<10)
	var err error
	for {
		var r *Reply
		r, err = ReadReply(br)
		if err != nil {
			break
		}
		if r.IsEvent() {
			c.emu.Lock()
			f := c.onEvent
			c.emu.Unlock()
			if f != nil {
				f(r)
			}
			continue
		}
		c.wmu.Lock()
		if len(c.pending) == 0 {
			c.wmu.Unlock()
			err = protoErr("reply %d %q with no command outstanding", r.Status, r.Lines[0].Text)
			break
		}
		ch := c.pending[0]
		c.pending = c.pending[1:]
		c.wmu.Unlock()
		ch <- result{r: r}
	}
	c.nc.Close()
	c.wmu.Lock()
	c.closed = true
	if c.err == nil {
		c.err = fmt.Errorf("%w: %v", ErrClosed, err)
	}
	for _, ch := range c.pending {
		ch <- result{err: c.err}
	}
	c.pending = nil
	c.wmu.Unlock()
	close(c.done)
}

// Send sends cmd and returns tor's reply, whatever its status. The error is
// for transport failures only; see Do for status checking.
func (c *Conn) Send(ctx context.Context, cmd Command) (*Reply, error) {
	if cmd.keyword == "" {
		return nil, errors.New("torctl: empty command")
	}
	ch := make(chan result, 1)
	c.wmu.Lock()
	if c.closed {
		err := c.err
		c.wmu.Unlock()
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.nc.SetWriteDeadline(dl)
	} else {
		_ = c.nc.SetWriteDeadline(time.Time{})
	}
	if _, err := c.nc.Write(cmd.Encode()); err != nil {
		c.wmu.Unlock()
		c.nc.Close()
		return nil, fmt.Errorf("%w: writing %s: %v", ErrClosed, cmd.keyword, err)
	}
	c.pending = append(c.pending, ch)
	c.wmu.Unlock()
	select {
	case res := <-ch:
		return res.r, res.err
	case <-ctx.Done():
		// The reply will still arrive and must be consumed in order; the
		// buffered channel absorbs it.
		return nil, ctx.Err()
	}
}

// Do sends cmd and returns the reply, or an error for a non-2xx status.
func (c *Conn) Do(ctx context.Context, cmd Command) (*Reply, error) {
	r, err := c.Send(ctx, cmd)
	if err != nil {
		return nil, err
	}
	if err := r.Err(); err != nil {
		return r, fmt.Errorf("%s: %w", cmd, err)
	}
	return r, nil
}

// GetInfo asks for keys and returns their values.
func (c *Conn) GetInfo(ctx context.Context, keys ...string) (map[string]string, error) {
	cmd, err := NewCommand("GETINFO", keys...)
	if err != nil {
		return nil, err
	}
	r, err := c.Do(ctx, cmd)
	if err != nil {
		return nil, err
	}
	return r.GetInfo(), nil
}

// Auth holds the credentials Authenticate may use.
type Auth struct {
	// Password for HASHEDPASSWORD.
	Password string
	// CookieFile overrides the cookie path tor announces.
	CookieFile string
}

// ProtocolInfo is tor's answer to PROTOCOLINFO.
type ProtocolInfo struct {
	Methods    []string
	CookieFile string
	Version    string
}

// ProtocolInfo asks tor which authentication methods it accepts.
func (c *Conn) ProtocolInfo(ctx context.Context) (*ProtocolInfo, error) {
	r, err := c.Do(ctx, MustCommand("PROTOCOLINFO", "1"))
	if err != nil {
		return nil, err
	}
	pi := &ProtocolInfo{}
	for _, l := range r.Lines {
		words, kv, err := ParseLine(l.Text)
		if err != nil || len(words) == 0 {
			continue
		}
		switch words[0] {
		case "AUTH":
			if m := kv["METHODS"]; m != "" {
				pi.Methods = strings.Split(m, ",")
			}
			pi.CookieFile = kv["COOKIEFILE"]
		case "VERSION":
			pi.Version = kv["Tor"]
		}
	}
	return pi, nil
}

const (
	serverHashKey = "Tor safe cookie authentication server-to-controller hash"
	clientHashKey = "Tor safe cookie authentication controller-to-server hash"
)

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Authenticate authenticates with the best method both sides support:
// SAFECOOKIE, then HASHEDPASSWORD (if a password is set), then COOKIE,
// then NULL.
func (c *Conn) Authenticate(ctx context.Context, a Auth) error {
	pi, err := c.ProtocolInfo(ctx)
	if err != nil {
		return err
	}
	cookiePath := a.CookieFile
	if cookiePath == "" {
		cookiePath = pi.CookieFile
	}
	readCookie := func() ([]byte, error) {
		b, err := os.ReadFile(cookiePath)
		if err != nil {
			return nil, fmt.Errorf("torctl: reading tor's auth cookie: %w (is bentod in tor's group?)", err)
		}
		if len(b) != 32 {
			return nil, fmt.Errorf("torctl: auth cookie %s is %d bytes, want 32", cookiePath, len(b))
		}
		return b, nil
	}
	switch {
	case has(pi.Methods, "SAFECOOKIE") && cookiePath != "" && (a.Password == "" || !has(pi.Methods, "HASHEDPASSWORD")):
		cookie, err := readCookie()
		if err != nil {
			return err
		}
		return c.safeCookie(ctx, cookie)
	case has(pi.Methods, "HASHEDPASSWORD") && a.Password != "":
		q, err := Quote(a.Password)
		if err != nil {
			return errors.New("torctl: the control password contains a line end")
		}
		return c.authenticate(ctx, q)
	case has(pi.Methods, "COOKIE") && cookiePath != "":
		cookie, err := readCookie()
		if err != nil {
			return err
		}
		return c.authenticate(ctx, hex.EncodeToString(cookie))
	case has(pi.Methods, "NULL"):
		return c.authenticate(ctx, "")
	}
	return fmt.Errorf("torctl: no usable authentication method (tor offers %s; set a password or make the cookie readable)", strings.Join(pi.Methods, ","))
}

func (c *Conn) authenticate(ctx context.Context, arg string) error {
	cmd := MustCommand("AUTHENTICATE")
	if arg != "" {
		var err error
		if cmd, err = NewCommand("AUTHENTICATE", arg); err != nil {
			return err
		}
	}
	_, err := c.Do(ctx, cmd)
	if err != nil {
		return fmt.Errorf("torctl: authentication failed: %w", err)
	}
	return nil
}

func (c *Conn) safeCookie(ctx context.Context, cookie []byte) error {
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		return err
	}
	r, err := c.Do(ctx, MustCommand("AUTHCHALLENGE", "SAFECOOKIE", hex.EncodeToString(nonce)))
	if err != nil {
		return fmt.Errorf("torctl: AUTHCHALLENGE: %w", err)
	}
	_, kv, err := ParseLine(r.Lines[0].Text)
	if err != nil {
		return err
	}
	serverHash, err1 := hex.DecodeString(kv["SERVERHASH"])
	serverNonce, err2 := hex.DecodeString(kv["SERVERNONCE"])
	if err1 != nil || err2 != nil || len(serverHash) != 32 || len(serverNonce) != 32 {
		return protoErr("bad AUTHCHALLENGE reply %q", r.Lines[0].Text)
	}
	msg := append(append(append([]byte{}, cookie...), nonce...), serverNonce...)
	mac := func(key string) []byte {
		h := hmac.New(sha256.New, []byte(key))
		h.Write(msg)
		return h.Sum(nil)
	}
	if !hmac.Equal(mac(serverHashKey), serverHash) {
		return errors.New("torctl: SAFECOOKIE: tor's server hash is wrong: this is not the tor whose cookie we read")
	}
	return c.authenticate(ctx, hex.EncodeToString(mac(clientHashKey)))
}
