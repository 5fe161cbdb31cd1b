package compat

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/torbento/bento/internal/netlimit"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/wire"
)

// fakeBackend speaks enough of bentod's own protocol for the listener:
// Deploy (refused with a load error when loadFail is set), Invoke, Attach
// (whose session is served by attach) and Shutdown.
type fakeBackend struct {
	p        *policy.Policy
	loadFail bool
	attach   func(conn *wire.Conn, nc net.Conn)

	mu      sync.Mutex
	deploys int
}

type freeBudget struct{}

func (freeBudget) Acquire(context.Context, int64) error { return nil }
func (freeBudget) Release(int64)                        {}

func (b *fakeBackend) Policy() *policy.Policy { return b.p }

func (b *fakeBackend) ClientBudget(net.Addr) (Budget, func()) { return freeBudget{}, func() {} }

func (b *fakeBackend) LocalConn(net.Addr) net.Conn {
	a, s := net.Pipe()
	go b.serve(s)
	return a
}

func (b *fakeBackend) serve(nc net.Conn) {
	defer nc.Close()
	conn := wire.NewConn(nc)
	f, err := conn.Read()
	if err != nil || f.Type != proto.THello {
		return
	}
	if conn.Send(proto.TWelcome, proto.Welcome{Version: proto.Version}, nil) != nil {
		return
	}
	for {
		f, err := conn.Read()
		if err != nil {
			return
		}
		switch f.Type {
		case proto.TDeploy:
			b.mu.Lock()
			b.deploys++
			b.mu.Unlock()
			if b.loadFail {
				_ = conn.Send(proto.TError, proto.Error{Code: proto.CodeBadRequest, Message: loadFailed + "SyntaxError"}, nil)
				continue
			}
			res, _ := json.Marshal(policy.Limits{Lifetime: time.Minute})
			_ = conn.Send(proto.TDeployed, proto.Deployed{Instance: "i", InvocationToken: "inv", ShutdownToken: "shut", Resources: res}, nil)
		case proto.TInvoke:
			_ = conn.Send(proto.TSession, proto.Session{Session: "s"}, nil)
			return // the invocation goes on: its output waits for an Attach
		case proto.TAttach:
			if conn.Send(proto.TSession, proto.Session{Session: "s"}, nil) != nil {
				return
			}
			b.attach(conn, nc)
			return
		case proto.TShutdown:
			_ = conn.Send(proto.TOK, nil, nil)
		default:
			return
		}
	}
}

// testPolicy has the shortest deadlines a bentorc may give.
func testPolicy() *policy.Policy {
	p := policy.Default()
	p.Daemon.HandshakeTimeout = time.Second
	p.Daemon.IdleTimeout = time.Second
	p.Daemon.WriteTimeout = time.Second
	p.Daemon.ConnectionLifetime = time.Minute
	return p
}

// startListener serves be on a loopback port.
func startListener(t *testing.T, be *fakeBackend) (*Listener, string) {
	t.Helper()
	tmpl := &Template{doc: map[string]any{"image": "starlark"}, Entry: "main.star", Image: "starlark"}
	l := New(be, tmpl, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() { _ = l.Serve(ln) }()
	return l, ln.Addr().String()
}

// dialFrom connects to addr from the loopback address from.
func dialFrom(t *testing.T, from, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

type rawClient struct {
	t  *testing.T
	nc net.Conn
	r  *Reader
}

func newRawClient(t *testing.T, nc net.Conn) *rawClient {
	return &rawClient{t: t, nc: nc, r: NewReader(nc, true)}
}

// request sends a request and reads its response.
func (c *rawClient) request(typ uint8, payload any) (bool, string) {
	c.t.Helper()
	b, _ := json.Marshal(payload)
	if _, err := c.nc.Write(AppendRequest(nil, typ, b)); err != nil {
		c.t.Fatal(err)
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := c.r.Read()
	if err != nil {
		c.t.Fatalf("response to request %d: %v", typ, err)
	}
	return f.Err == 0, string(f.Payload)
}

func (c *rawClient) store() string {
	c.t.Helper()
	ok, tok := c.request(TStore, StoreRequest{Name: "f", Code: "def f(): pass"})
	if !ok {
		c.t.Fatalf("store: %s", tok)
	}
	return tok
}

// TestFunctionsPerClient: one address cannot fill the listener's table of
// function ids (whose entries outlive their instances, or have none: code
// that does not load) and lock every other client out of Execute.
func TestFunctionsPerClient(t *testing.T) {
	be := &fakeBackend{p: testPolicy(), loadFail: true}
	l, addr := startListener(t, be)
	c := newRawClient(t, dialFrom(t, "127.0.0.1", addr))
	tok := c.store()
	for i := range maxFunctionsPerClient {
		if ok, msg := c.request(TExecute, ExecuteRequest{Call: "f()", Token: tok}); !ok {
			t.Fatalf("execute %d: %s", i+1, msg)
		}
	}
	ok, msg := c.request(TExecute, ExecuteRequest{Call: "f()", Token: tok})
	if ok || !strings.Contains(msg, "busy, retry later") || !strings.Contains(msg, "your address") {
		t.Fatalf("execute beyond the address's bound: ok %v, %q", ok, msg)
	}
	l.mu.Lock()
	n := len(l.funcs)
	l.mu.Unlock()
	if n != maxFunctionsPerClient {
		t.Fatalf("%d functions kept, want %d", n, maxFunctionsPerClient)
	}
	// Another address is not locked out.
	o := newRawClient(t, dialFrom(t, "127.0.0.2", addr))
	if ok, msg := o.request(TExecute, ExecuteRequest{Call: "f()", Token: tok}); !ok {
		t.Fatalf("another address's execute: %s", msg)
	}
	// Delivering a function's end gives its place back.
	id := ""
	l.mu.Lock()
	for _, f := range l.funcs {
		if f.owner == netlimitKey("127.0.0.1") {
			id = f.id
			break
		}
	}
	l.mu.Unlock()
	c.open(id)
	if typ, data := c.message(); typ != MError {
		t.Fatalf("open of code that did not load: message %d %q", typ, data)
	}
	if typ, data := c.message(); typ != MFunctionErr || data != "function dead" {
		t.Fatalf("open of code that did not load: message %d %q", typ, data)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		l.mu.Lock()
		_, kept := l.funcs[hashSecret(id)]
		l.mu.Unlock()
		if !kept {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a function whose end was delivered is still kept")
		}
	}
	if ok, msg := c.request(TExecute, ExecuteRequest{Call: "f()", Token: tok}); !ok {
		t.Fatalf("execute after one was delivered: %s", msg)
	}
}

func netlimitKey(ip string) string {
	return netlimit.AddrKey(&net.TCPAddr{IP: net.ParseIP(ip)})
}

func (c *rawClient) open(id string) {
	c.t.Helper()
	if _, err := c.nc.Write(AppendRequest(nil, TOpen, []byte(id))); err != nil {
		c.t.Fatal(err)
	}
}

// message reads the next message: its type and data.
func (c *rawClient) message() (uint8, string) {
	c.t.Helper()
	_ = c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	var hdr [MessageHeader]byte
	if _, err := io.ReadFull(c.nc, hdr[:]); err != nil {
		c.t.Fatalf("reading a message: %v", err)
	}
	p := make([]byte, binary.BigEndian.Uint32(hdr[1:]))
	if _, err := io.ReadFull(c.nc, p); err != nil {
		c.t.Fatalf("reading a message: %v", err)
	}
	_, data, err := SplitMessage(p)
	if err != nil {
		c.t.Fatal(err)
	}
	return hdr[0], string(data)
}

// execute runs a function and returns its id.
func (c *rawClient) execute() string {
	c.t.Helper()
	tok := c.store()
	ok, id := c.request(TExecute, ExecuteRequest{Call: "f()", Token: tok})
	if !ok {
		c.t.Fatalf("execute: %s", id)
	}
	return id
}

// TestOpenOutputInterrupted: when the function's output stops flowing on
// an open connection without the function's end (bentod's session
// dropped), the client is told, and the connection does not stay open
// beyond IdleTimeout without a word.
func TestOpenOutputInterrupted(t *testing.T) {
	be := &fakeBackend{p: testPolicy(), attach: func(*wire.Conn, net.Conn) {}}
	_, addr := startListener(t, be)
	c := newRawClient(t, dialFrom(t, "127.0.0.1", addr))
	c.open(c.execute())
	typ, data := c.message()
	if typ != MFunctionErr || !strings.Contains(data, "open it again") {
		t.Fatalf("after the output stopped: message %d %q, want a FunctionErr saying to open it again", typ, data)
	}
	// Silent, the client is dropped after IdleTimeout.
	_ = c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.nc.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("connection after the output stopped and IdleTimeout: %v, want it closed", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestOpenWriteTimeoutEnds: a client that stops reading mid-output is
// dropped after WriteTimeout; the stream never goes on after a message
// cut short (the original client would read garbage).
func TestOpenWriteTimeoutEnds(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 8<<20)
	be := &fakeBackend{p: testPolicy(), attach: func(conn *wire.Conn, nc net.Conn) {
		_ = conn.Send(proto.TOutput, proto.Output{Offset: int64(len(big))}, big)
		// The session then drops (bentod's own WriteTimeout, say).
	}}
	_, addr := startListener(t, be)
	// A small receive buffer, set before the connection's window is.
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<10) })
	}}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := newRawClient(t, nc)
	id := c.execute()
	c.open(id)
	time.Sleep(3 * time.Second) // beyond WriteTimeout, reading nothing
	// Whole messages, then the end of the connection: nothing after a
	// message cut short.
	_ = c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	all, err := io.ReadAll(c.nc)
	if isTimeout(err) {
		t.Fatalf("the connection was not closed after a write timed out (%d bytes read)", len(all))
	}
	for len(all) > 0 {
		if len(all) < MessageHeader {
			return // cut: then nothing
		}
		n := int(binary.BigEndian.Uint32(all[1:MessageHeader]))
		if all[0] < MFunctionErr || all[0] > MOutput || n < IDLen || n > len(big)+IDLen {
			t.Fatalf("a frame of type %d, %d bytes: the stream went on after a message cut short", all[0], n)
		}
		if len(all) < MessageHeader+n {
			return // cut: then nothing
		}
		if got := string(all[MessageHeader : MessageHeader+IDLen]); got != id {
			t.Fatalf("a message for %q: the stream went on after a message cut short", got)
		}
		all = all[MessageHeader+n:]
	}
}

// TestLedgerBounded: a client whose TCP acknowledges nothing while
// thousands of small messages are written (its window closed, the
// socket's buffer large) does not grow the ledger with them; what the
// thinned ledger counts as delivered is never more than was.
func TestLedgerBounded(t *testing.T) {
	var ledger, all []mark
	none := func() (int64, bool) { return 0, true }
	for i := int64(1); i <= 200000; i++ {
		m := mark{end: 41 * i, offset: 17 * i}
		all = append(all, m)
		var d int64
		if ledger, d = addMark(ledger, m, none); d >= 0 {
			t.Fatalf("mark %d: offset %d delivered with nothing acknowledged", i, d)
		}
		if len(ledger) > maxLedger+1 {
			t.Fatalf("%d marks held after %d messages, at most %d", len(ledger), i, maxLedger+1)
		}
	}
	if ledger[len(ledger)-1] != all[len(all)-1] {
		t.Fatal("the last mark was thinned out")
	}
	deliveredBy := func(marks []mark, acked int64) int64 {
		d := int64(-1)
		for _, m := range marks {
			if m.end <= acked {
				d = m.offset
			}
		}
		return d
	}
	for _, acked := range []int64{0, 40, 41, 1000, 41 * 99999, 41*199999 + 3, 41 * 200000} {
		if got, most := deliveredBy(ledger, acked), deliveredBy(all, acked); got > most {
			t.Fatalf("acknowledged %d: %d counted delivered, only %d was", acked, got, most)
		}
	}
	if got := deliveredBy(ledger, 41*200000); got != 17*200000 {
		t.Fatalf("everything acknowledged: %d delivered, want %d", got, 17*200000)
	}
	// Acknowledged marks leave it, the offset they reached delivered.
	ledger, d := addMark(ledger, mark{end: 41 * 200001, offset: 17 * 200001}, func() (int64, bool) { return 41 * 200001, true })
	if d != 17*200001 || len(ledger) != 0 {
		t.Fatalf("all acknowledged: delivered %d, %d marks left", d, len(ledger))
	}
}
