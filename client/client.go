// Package client is the Go client of Bento servers: fetch a server's node
// policy, deploy a function (getting its invocation and shutdown tokens),
// invoke it or reattach to a running invocation without losing output, and
// shut it down. The bento CLI is built on it, and so is bentod's own
// composition support. The transport is pluggable: any Dialer (plain TCP,
// a Tor SOCKS dialer) can carry the connection.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/pintls"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/socks"
	"github.com/torbento/bento/internal/wire"
)

// Dialer makes the connection to a server.
type Dialer interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// Client talks to one Bento server.
type Client struct {
	Addr   string
	Dialer Dialer
	// Timeout bounds each request (not sessions, which last as long as the
	// function runs). Zero means 60 seconds.
	Timeout time.Duration
	// MaxOutput bounds what Call, CallWithInput and Session.Collect gather
	// (0: unlimited); beyond it they fail with ErrOutputTooLarge. A server
	// is a peer like any other: set it when the caller's memory matters.
	MaxOutput int64
	// Budget, if set, is charged for every frame read from the server
	// while it is held (see wire.Budget); bentod sets it for its own
	// functions' composition calls.
	Budget Budget
	// Hops is sent in the hello: how deep in composition the caller is.
	// bentod sets it for its functions; other clients leave it 0.
	Hops int
	// MaxFrame bounds a frame from the server (0: 32 MB).
	MaxFrame int
	// OnSent, if set, is told the bytes written to the server as they go,
	// in pieces of at most 64 KB (a progress bar for uploads).
	OnSent func(n int)
	// Pin, if set, is the server's certificate pin ("sha256:<64 hex
	// digits>", as bentod logs it and writes it to
	// DataDirectory/tls_fingerprint): the connection is TLS 1.3 over
	// Dialer, and a server with any other certificate is refused
	// (a *PinMismatch in the error) before anything is sent.
	// Without it the connection is cleartext: fine over loopback or to an
	// onion address (Tor authenticates and encrypts it), readable and
	// changeable by anyone on the path otherwise.
	Pin string
}

// Budget is an allowance of bytes in flight.
type Budget interface {
	Acquire(ctx context.Context, n int64) error
	Release(n int64)
}

// ErrOutputTooLarge is output beyond Client.MaxOutput.
var ErrOutputTooLarge = errors.New("output exceeds the caller's limit")

// New returns a client for the server at addr (host:port) over plain TCP.
func New(addr string) *Client { return &Client{Addr: addr} }

// Error is a request the server refused; it carries the server's code,
// message and, for a refused manifest, the list of violations.
type Error = proto.Error

// Violation is one manifest item the server's policy does not allow.
type Violation = proto.Violation

// FuncError is an error in a function's code, with file and line.
type FuncError = proto.FuncError

// Exit is how an invocation ended.
type Exit = proto.Exit

// Notice is bentod telling the session's client something (the box ends
// soon, say); see Session.OnNotice.
type Notice = proto.Notice

// Exit statuses.
const (
	StatusOK     = proto.StatusOK
	StatusError  = proto.StatusError
	StatusKilled = proto.StatusKilled
)

// Error codes.
const (
	CodeBadRequest = proto.CodeBadRequest
	CodeRefused    = proto.CodeRefused
	CodeBusy       = proto.CodeBusy
	CodeNotFound   = proto.CodeNotFound
	CodeTooLarge   = proto.CodeTooLarge
	CodeGone       = proto.CodeGone
	CodeInternal   = proto.CodeInternal
)

func (c *Client) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return 60 * time.Second
}

// ConnError is a failure to reach or talk to the server.
type ConnError struct{ Err error }

func (e *ConnError) Error() string { return "connection to server: " + e.Err.Error() }
func (e *ConnError) Unwrap() error { return e.Err }

// PinMismatch is a server whose certificate is not the one pinned
// (Client.Pin): someone in between, another server, or a server that made
// a new key.
type PinMismatch = pintls.MismatchError

func (c *Client) dial(ctx context.Context) (*wire.Conn, net.Conn, error) {
	conn, nc, _, err := c.dialWelcome(ctx)
	return conn, nc, err
}

// dialWelcome is dial, also returning the server's welcome (its features).
func (c *Client) dialWelcome(ctx context.Context) (*wire.Conn, net.Conn, *proto.Welcome, error) {
	d := c.Dialer
	if _, direct := d.(*net.Dialer); d == nil || direct {
		// An onion address resolved outside Tor would only leak the name
		// to the DNS.
		if host, _, err := net.SplitHostPort(c.Addr); err == nil && socks.IsOnion(host) {
			return nil, nil, nil, &ConnError{fmt.Errorf("%s is an onion address, reachable only through Tor: give tor's SocksPort (bento --tor-socks 127.0.0.1:9050)", c.Addr)}
		}
	}
	if d == nil {
		d = &net.Dialer{}
	}
	if c.Pin != "" {
		if host, _, err := net.SplitHostPort(c.Addr); err == nil && socks.IsOnion(host) {
			// bentod speaks TLS to direct clients only.
			return nil, nil, nil, &ConnError{fmt.Errorf("%s is an onion address: Tor authenticates and encrypts the connection end to end, and bentod speaks no TLS there; give no pin", c.Addr)}
		}
		d = &pintls.Dialer{Pin: c.Pin, Forward: d}
	}
	nc, err := d.DialContext(ctx, "tcp", c.Addr)
	if err != nil {
		return nil, nil, nil, &ConnError{err}
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	var rw net.Conn = nc
	if c.OnSent != nil {
		rw = &sentCounter{Conn: nc, on: c.OnSent}
	}
	conn := wire.NewConn(rw)
	if c.Budget != nil {
		conn.Budget = c.Budget
	}
	if c.MaxFrame > 0 {
		conn.MaxFrame = c.MaxFrame
	}
	if err := conn.Send(proto.THello, proto.Hello{Version: proto.Version, Hops: c.Hops, Notices: true}, nil); err != nil {
		nc.Close()
		return nil, nil, nil, &ConnError{err}
	}
	var w proto.Welcome
	if err := expect(conn, proto.TWelcome, &w); err != nil {
		nc.Close()
		return nil, nil, nil, err
	}
	return conn, nc, &w, nil
}

// sentCounter reports what is written through it, in pieces.
type sentCounter struct {
	net.Conn
	on func(int)
}

func (s *sentCounter) Write(b []byte) (int, error) {
	total := 0
	for len(b) > 0 {
		n, err := s.Conn.Write(b[:min(len(b), 64<<10)])
		total += n
		if n > 0 {
			s.on(n)
		}
		if err != nil {
			return total, err
		}
		b = b[n:]
	}
	return total, nil
}

// expect reads one frame and decodes it as want, or returns the server's
// error.
func expect(conn *wire.Conn, want uint8, v any) error {
	f, err := conn.Read()
	if err != nil {
		return &ConnError{err}
	}
	defer f.Release()
	return decode(f, want, v)
}

func decode(f *wire.Frame, want uint8, v any) error {
	if f.Type == proto.TError {
		var e proto.Error
		if err := f.Unmarshal(&e); err != nil {
			return &ConnError{err}
		}
		return &e
	}
	if f.Type != want {
		return &ConnError{fmt.Errorf("unexpected reply type %d (want %d)", f.Type, want)}
	}
	if v != nil {
		return f.Unmarshal(v)
	}
	return nil
}

// request runs one request/response exchange on a fresh connection.
func (c *Client) request(ctx context.Context, t uint8, hdr any, body []byte, want uint8, v any) (*wire.Frame, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	conn, nc, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	if err := conn.Send(t, hdr, body); err != nil {
		return nil, &ConnError{err}
	}
	f, err := conn.Read()
	if err != nil {
		return nil, &ConnError{err}
	}
	defer f.Release()
	return f, decode(f, want, v)
}

// Policy is a server's public node policy.
type Policy = policy.Public

// Policy fetches the server's node policy.
func (c *Client) Policy(ctx context.Context) (*Policy, error) {
	var p Policy
	if _, err := c.request(ctx, proto.TPolicy, nil, nil, proto.TPolicyReply, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// PolicyJSON fetches the server's node policy, and the JSON it was served
// as (what a box's statement signs).
func (c *Client) PolicyJSON(ctx context.Context) ([]byte, *Policy, error) {
	var raw json.RawMessage
	if _, err := c.request(ctx, proto.TPolicy, nil, nil, proto.TPolicyReply, &raw); err != nil {
		return nil, nil, err
	}
	var p Policy
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, nil, fmt.Errorf("the server's policy: %w", err)
	}
	return raw, &p, nil
}

// Function is a function to deploy: its manifest text and its files.
type Function struct {
	Manifest []byte
	Files    map[string][]byte
}

// LoadFunction reads a function directory: bento.toml and every other
// regular file beside it (dotfiles skipped).
func LoadFunction(dir string) (*Function, error) {
	m, err := os.ReadFile(filepath.Join(dir, manifest.FileName))
	if err != nil {
		return nil, fmt.Errorf("function directory %s: %w", dir, err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	fn := &Function{Manifest: m, Files: map[string][]byte{}}
	for _, e := range ents {
		if e.Name() == manifest.FileName || !manifest.ValidFileName(e.Name()) {
			continue
		}
		// Symbolic links are followed, so a composed function can share
		// files with the functions it deploys.
		if st, err := os.Stat(filepath.Join(dir, e.Name())); err != nil || !st.Mode().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		fn.Files[e.Name()] = b
	}
	return fn, nil
}

// SetDestinations replaces the manifest's destinations (tor exit-policy
// items), for fitting a shipped function to a particular server.
func (fn *Function) SetDestinations(items []string) error {
	var doc map[string]any
	if err := toml.Unmarshal(fn.Manifest, &doc); err != nil {
		return fmt.Errorf("%s: %w", manifest.FileName, err)
	}
	doc["destinations"] = items
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(doc); err != nil {
		return err
	}
	fn.Manifest = buf.Bytes()
	return nil
}

// Check parses the function's manifest and checks it against a policy
// locally, returning the violations a server with that policy would report.
func (fn *Function) Check(p *Policy) ([]Violation, error) {
	m, err := manifest.Parse(fn.Manifest)
	if err != nil {
		return nil, err
	}
	pol, err := policy.FromPublic(p)
	if err != nil {
		return nil, err
	}
	m.Resolve(pol)
	var out []Violation
	for _, v := range manifest.Check(m, pol) {
		out = append(out, Violation(v))
	}
	return out, nil
}

// Deployed is a running instance: its id and tokens. The invocation token
// may be shared; keep the shutdown token to yourself.
type Deployed = proto.Deployed

// Deploy uploads fn and spawns an instance.
func (c *Client) Deploy(ctx context.Context, fn *Function) (*Deployed, error) {
	ents, body := proto.PackFiles(fn.Files)
	var d Deployed
	if _, err := c.request(ctx, proto.TDeploy, proto.Deploy{Manifest: string(fn.Manifest), Files: ents}, body, proto.TDeployed, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// Shutdown ends an instance with its shutdown token.
func (c *Client) Shutdown(ctx context.Context, shutdownToken string) error {
	_, err := c.request(ctx, proto.TShutdown, proto.Shutdown{Token: shutdownToken}, nil, proto.TOK, nil)
	return err
}

// Session is one invocation's stream: output from the function, input to
// it. Offset tracks how much output has been received, so Attach can
// resume exactly there after a disconnect.
type Session struct {
	ID     string
	Offset int64
	conn   *wire.Conn
	nc     net.Conn
	exit   *Exit
	max    int64 // Collect's bound (Client.MaxOutput)
	// OnNotice, if set, is called by Recv with each notice from bentod
	// (the box's end is near, ...); Notices keeps the last few.
	OnNotice func(Notice)
	Notices  []Notice
}

// Invoke calls the instance's function with args (encoded as a JSON array)
// and returns the session streaming its output.
func (c *Client) Invoke(ctx context.Context, token string, args ...any) (*Session, error) {
	if args == nil {
		args = []any{}
	}
	raw, err := json.Marshal(args)
	if err != nil {
		return nil, err
	}
	return c.session(ctx, proto.TInvoke, proto.Invoke{Token: token, Args: raw})
}

// Attach reattaches to a session, resuming output at offset.
func (c *Client) Attach(ctx context.Context, token, session string, offset int64) (*Session, error) {
	return c.session(ctx, proto.TAttach, proto.Attach{Token: token, Session: session, Offset: offset})
}

func (c *Client) session(ctx context.Context, t uint8, hdr any) (*Session, error) {
	dctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	conn, nc, err := c.dial(dctx)
	if err != nil {
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	if err := conn.Send(t, hdr, nil); err != nil {
		nc.Close()
		return nil, &ConnError{err}
	}
	nc.SetReadDeadline(time.Now().Add(c.timeout()))
	var s proto.Session
	if err := expect(conn, proto.TSession, &s); err != nil {
		nc.Close()
		return nil, err
	}
	nc.SetReadDeadline(time.Time{})
	if ctx.Done() != nil {
		context.AfterFunc(ctx, func() { nc.Close() })
	}
	return &Session{ID: s.Session, Offset: s.Offset, conn: conn, nc: nc, max: c.MaxOutput}, nil
}

// Recv returns the next piece of output. At the end of the session it
// returns nil data and the Exit (also kept in s.Exit()).
func (s *Session) Recv() ([]byte, *Exit, error) {
	if s.exit != nil {
		return nil, s.exit, nil
	}
	for {
		data, exit, notice, err := s.recv()
		if notice == nil {
			return data, exit, err
		}
		if len(s.Notices) == maxNotices {
			s.Notices = s.Notices[1:]
		}
		s.Notices = append(s.Notices, *notice)
		if s.OnNotice != nil {
			s.OnNotice(*notice)
		}
	}
}

// maxNotices bounds Session.Notices.
const maxNotices = 16

func (s *Session) recv() ([]byte, *Exit, *Notice, error) {
	f, err := s.conn.Read()
	if err != nil {
		return nil, nil, nil, &ConnError{err}
	}
	// The body is handed to the caller: with a Budget, the caller charges
	// it again if it keeps it (bentod does).
	defer f.Release()
	switch f.Type {
	case proto.TOutput:
		var o proto.Output
		if err := f.Unmarshal(&o); err != nil {
			return nil, nil, nil, err
		}
		s.Offset = o.Offset
		return f.Body, nil, nil, nil
	case proto.TNotice:
		var n Notice
		if err := f.Unmarshal(&n); err != nil {
			return nil, nil, nil, err
		}
		s.Offset = n.Offset
		return nil, nil, &n, nil
	case proto.TExit:
		var e Exit
		if err := f.Unmarshal(&e); err != nil {
			return nil, nil, nil, err
		}
		s.Offset = e.Offset
		s.exit = &e
		return nil, &e, nil, nil
	}
	return nil, nil, nil, decode(f, proto.TOutput, nil)
}

// Exit returns how the session ended, once Recv has returned it.
func (s *Session) Exit() *Exit { return s.exit }

// Send sends data to the function's recv(), in frames of at most
// InputChunk bytes.
func (s *Session) Send(data []byte) error {
	for {
		n := min(len(data), InputChunk)
		if err := s.conn.Send(proto.TInput, nil, data[:n]); err != nil {
			return err
		}
		if data = data[n:]; len(data) == 0 {
			return nil
		}
	}
}

// CloseInput tells the function no more input will come (recv() returns
// None).
func (s *Session) CloseInput() error { return s.conn.Send(proto.TInputEOF, nil, nil) }

// Close disconnects. The invocation goes on and its output is kept for a
// later Attach.
func (s *Session) Close() error { return s.nc.Close() }

// Collect reads the session to its end and returns all output, at most
// Client.MaxOutput bytes of it.
func (s *Session) Collect() ([]byte, *Exit, error) {
	var out []byte
	for {
		data, exit, err := s.Recv()
		if err != nil {
			return out, nil, err
		}
		if exit != nil {
			return out, exit, nil
		}
		if s.max > 0 && int64(len(out)+len(data)) > s.max {
			return out, nil, fmt.Errorf("%w (%d bytes)", ErrOutputTooLarge, s.max)
		}
		out = append(out, data...)
	}
}

// Call invokes the function, waits for it to finish and returns its output.
// A function that failed or was stopped yields an *ExitError.
func (c *Client) Call(ctx context.Context, token string, args ...any) ([]byte, error) {
	return c.CallWithInput(ctx, token, nil, args...)
}

// InputChunk is the size of the input frames CallWithInput sends (the
// largest bentod accepts).
const InputChunk = 256 << 10

// CallWithInput is Call with input: the function's recv() returns input
// (in chunks of up to InputChunk bytes), then None.
func (c *Client) CallWithInput(ctx context.Context, token string, input []byte, args ...any) ([]byte, error) {
	s, err := c.Invoke(ctx, token, args...)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	for len(input) > 0 {
		n := min(len(input), InputChunk)
		if err := s.Send(input[:n]); err != nil {
			return nil, &ConnError{err}
		}
		input = input[n:]
	}
	if err := s.CloseInput(); err != nil {
		return nil, &ConnError{err}
	}
	out, exit, err := s.Collect()
	if err != nil {
		return out, err
	}
	if exit.Status != StatusOK {
		return out, &ExitError{Exit: exit}
	}
	return out, nil
}

// ExitError is an invocation that did not end with StatusOK.
type ExitError struct{ Exit *Exit }

func (e *ExitError) Error() string {
	switch {
	case e.Exit.Error != nil:
		return "function failed: " + e.Exit.Error.Error()
	case e.Exit.Reason != "":
		return "function stopped: " + e.Exit.Reason
	}
	return "function ended with status " + e.Exit.Status
}

// IsCode reports whether err is a server error with the given code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}
