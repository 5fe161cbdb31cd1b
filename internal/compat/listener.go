package compat

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/netlimit"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/safelog"
	"github.com/torbento/bento/internal/units"
)

// Backend is the bentod a Listener serves for: its own protocol, reached
// in process, does every deploy, invocation and session.
type Backend interface {
	// LocalConn connects to bentod's own protocol for the client at
	// remote: what is deployed through it is charged to that client.
	LocalConn(remote net.Addr) net.Conn
	// ClientBudget is the client's allowance of bytes in flight.
	ClientBudget(remote net.Addr) (Budget, func())
	Policy() *policy.Policy
}

// Listener serves the original client protocol.
type Listener struct {
	be    Backend
	log   *slog.Logger
	tmpl  atomic.Pointer[Template]
	codes *codeStore

	mu       sync.Mutex
	funcs    map[secret]*function // by function id's hash
	perOwner map[string]int       // functions kept (and Executes under way) by client address
	held     int                  // functions kept and Executes under way, in all
}

// New returns a listener for be whose stored code runs under t.
func New(be Backend, t *Template, log *slog.Logger) *Listener {
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	l := &Listener{be: be, log: log, codes: newCodeStore(), funcs: map[secret]*function{}, perOwner: map[string]int{}}
	l.tmpl.Store(t)
	return l
}

// SetTemplate replaces the manifest stored code runs under (a reload).
func (l *Listener) SetTemplate(t *Template) { l.tmpl.Store(t) }

// Refusal is what a client refused by the listener's connection limits is
// sent: an error response (of a Store, the usual first request).
func Refusal(why netlimit.Reason) []byte {
	return AppendResponse(nil, TStore, true, []byte("busy, retry later: "+why.String()))
}

// Serve accepts connections on ln until it is closed.
func (l *Listener) Serve(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go l.handle(c)
	}
}

// function is one Execute: a one-shot instance of bentod and its session,
// reachable by the original's function id.
type function struct {
	id      string
	owner   string // the address that executed it, charged for its place
	inv     string // the instance's invocation token
	shut    string // its shutdown token
	session string
	expires time.Time // the instance's lifetime and its output's retention are over
	loadErr string    // the code did not load: no instance, this is its output

	mu      sync.Mutex
	offset  int64       // output delivered: a later Open resumes here
	att     *attachment // the connection it is open on
	removed bool
}

// attachment is a function open on a connection.
type attachment struct {
	kick chan struct{} // closed: another connection takes the function over
	done chan struct{} // closed when it has let the function go
}

// Execute's and the session's bounds.
const (
	maxStoredPerClient = 16
	maxStored          = 1024
	storedTTL          = time.Hour
	takeOverWait       = 5 * time.Second
	ledgerCompact      = 64
	loadFailed         = "function failed to load: "
	maxFunctions       = 16384
	// maxFunctionsPerClient bounds the function ids one address makes
	// the listener keep: each outlives its instance until its end is
	// delivered (code that does not load has none at all).
	maxFunctionsPerClient = 256
	ackWait               = 2 * time.Second
	delayedAck            = 500 * time.Millisecond
	outputRetention       = 10 * time.Minute
)

var (
	errClosed      = errors.New("connection closed")
	errInvalidType = errors.New("invalid msg type")
)

// conn is one client connection.
type conn struct {
	l      *Listener
	nc     net.Conn
	raw    net.Conn // the socket under netlimit's wrapper, for TCP_INFO
	remote net.Addr
	owner  string
	log    *slog.Logger
	p      *policy.Policy
	r      *Reader

	bud     Budget
	wmu     sync.Mutex
	written int64       // bytes written on nc
	gone    atomic.Bool // the connection is given up: write no more
}

func (l *Listener) handle(nc net.Conn) {
	defer nc.Close()
	defer l.recoverPanic("serving a compat client")
	p := l.be.Policy()
	bud, done := l.be.ClientBudget(nc.RemoteAddr())
	defer done()
	c := &conn{l: l, nc: nc, raw: netlimit.Unwrap(nc), remote: nc.RemoteAddr(), owner: netlimit.AddrKey(nc.RemoteAddr()), p: p,
		log: l.log.With("client", safelog.Addr(nc.RemoteAddr().String()), "listener", "compat")}
	c.r = NewReader(nc, false)
	c.r.Budget, c.r.BudgetWait = bud, p.Daemon.IdleTimeout
	c.bud = bud
	c.serve()
}

// recoverPanic keeps a bug reached by one client from ending bentod.
func (l *Listener) recoverPanic(where string) {
	if r := recover(); r != nil {
		l.log.Error("internal error in the compat listener (a bug: please report it); bentod goes on", "where", where, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	}
}

// write sends b within WriteTimeout and returns how many bytes the
// connection has carried after it.
func (c *conn) write(b []byte) (int64, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.gone.Load() {
		return c.written, errClosed
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.p.Daemon.WriteTimeout))
	n, err := c.nc.Write(b)
	c.written += int64(n)
	if err != nil {
		// The frame may be cut: nothing more may follow it, and the
		// connection is given up.
		c.gone.Store(true)
	}
	return c.written, err
}

func (c *conn) respond(t uint8, failed bool, msg string) error {
	_, err := c.write(AppendResponse(nil, t, failed, []byte(msg)))
	return err
}

func (c *conn) message(t uint8, id string, data []byte) (int64, error) {
	return c.write(AppendMessage(nil, t, id, data))
}

// requestLimit bounds a request by type: a Store holds code of at most
// MaxUploadSize, JSON-escaped as the original's ASCII-only JSON does (six
// times as long at most: a control character, or an accented letter's
// two bytes, become \u00XX); an Execute a call of at most MaxCall bytes
// and a token. A frame's buffer grows only as its bytes arrive.
func (c *conn) requestLimit(t uint8) int {
	switch t {
	case TStore:
		return int(6*c.p.Max.Upload) + 4<<10
	case TExecute:
		return 2*MaxCall + 1<<10
	case TOpen, TClose:
		return maxIDFrame
	}
	return 0
}

// readError answers a frame that could not be read, if it can be.
func (c *conn) readError(err error, open string) {
	var se *SizeError
	var te *TypeError
	switch {
	case errors.As(err, &se) && open != "":
		_, _ = c.message(MFunctionErr, open, []byte(fmt.Sprintf("message too large: %v", se)))
	case errors.As(err, &se) && se.Type == TStore:
		_ = c.respond(TStore, true, fmt.Sprintf("store request of %s exceeds this node's bound of %s (code of at most MaxUploadSize, %s)", units.FormatSize(int64(se.Size)), units.FormatSize(int64(se.Limit)), units.FormatSize(c.p.Max.Upload)))
	case errors.As(err, &se):
		_ = c.respond(se.Type, true, fmt.Sprintf("request too large: %v", se))
	case errors.As(err, &te) && open != "":
		_, _ = c.message(MFunctionErr, open, []byte("invalid msg type"))
	case errors.As(err, &te):
		_ = c.respond(te.Type, true, fmt.Sprintf("invalid request: type %d (Store 0, Execute 1, Open 2, Close 3)", te.Type))
	case errors.Is(err, ErrBusy) && open != "":
		_, _ = c.message(MFunctionErr, open, []byte("busy, retry later: "+err.Error()))
	case errors.Is(err, ErrBusy):
		_ = c.respond(TStore, true, "busy, retry later: "+err.Error())
	}
}

// serve reads requests until the client leaves, idles too long or the
// connection's lifetime is over.
func (c *conn) serve() {
	d := c.p.Daemon
	end := time.Now().Add(d.ConnectionLifetime)
	first := true
	var pending *Frame // a request read in a function's messages
	for time.Now().Before(end) {
		f := pending
		pending = nil
		if f == nil {
			wait := d.IdleTimeout
			if first {
				wait = d.HandshakeTimeout
			}
			_ = c.nc.SetReadDeadline(minTime(time.Now().Add(wait), end))
			netlimit.SetIdle(c.nc, true)
			c.r.Limit = c.requestLimit
			var err error
			f, err = c.r.Read()
			netlimit.SetIdle(c.nc, false)
			var te *TypeError
			if errors.As(err, &te) && te.Size <= maxDiscard && !first {
				// As the original: answered, and the connection goes
				// on (input sent after its function died, say).
				if c.r.Discard(int(te.Size)) == nil {
					c.readError(err, "")
					continue
				}
			}
			if err != nil {
				c.readError(err, "")
				return
			}
			_ = c.nc.SetReadDeadline(time.Time{})
		}
		if first {
			netlimit.Prove(c.nc)
			first = false
		}
		var err error
		switch f.Type {
		case TStore:
			err = c.store(f.Payload)
		case TExecute:
			err = c.execute(f.Payload)
		case TOpen:
			id := string(f.Payload)
			f.Release()
			pending, err = c.open(id)
		case TClose:
			// Nothing is open: the original client expects no answer.
		}
		f.Release()
		if err != nil {
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

// store keeps the code and answers its token.
func (c *conn) store(p []byte) error {
	req, err := DecodeStore(p)
	if err != nil {
		return c.respond(TStore, true, err.Error())
	}
	if int64(len(req.Code)) > c.p.Max.Upload {
		return c.respond(TStore, true, fmt.Sprintf("code of %s exceeds this node's MaxUploadSize of %s", units.FormatSize(int64(len(req.Code))), units.FormatSize(c.p.Max.Upload)))
	}
	tok, err := c.l.codes.put(c.owner, req.Name, req.Code, c.p.Max.Upload)
	if err != nil {
		return c.respond(TStore, true, err.Error())
	}
	c.log.Info("code stored", "bytes", len(req.Code))
	return c.respond(TStore, false, tok)
}

// native is a client of bentod's own protocol, in process, charged to
// this connection's client.
func (c *conn) native() *client.Client {
	return &client.Client{Addr: "bentod", Dialer: localDialer{c}, Timeout: 60 * time.Second}
}

type localDialer struct{ c *conn }

func (d localDialer) DialContext(ctx context.Context, _, _ string) (net.Conn, error) {
	return d.c.l.be.LocalConn(d.c.remote), nil
}

// errText is a refusal of bentod's own, for the original client's error
// message: the message and each violation.
func errText(err error) string {
	var pe *proto.Error
	if errors.As(err, &pe) {
		var b strings.Builder
		b.WriteString(pe.Message)
		for _, v := range pe.Violations {
			fmt.Fprintf(&b, "; %s: asks %s, policy allows %s", v.Item, v.Asked, v.Allowed)
		}
		return b.String()
	}
	return err.Error()
}

// execute deploys the stored code under the operator's manifest as a
// one-shot instance, invokes the call's function with its literal
// arguments, and answers the function id.
func (c *conn) execute(p []byte) error {
	fail := func(format string, a ...any) error {
		return c.respond(TExecute, true, fmt.Sprintf(format, a...))
	}
	req, err := DecodeExecute(p)
	if err != nil {
		return fail("%v", err)
	}
	code, ok := c.l.codes.get(req.Token)
	if !ok {
		return fail("invalid token")
	}
	name, args, err := ParseCall(req.Call)
	if err != nil {
		return fail("%v", err)
	}
	if err := c.l.reserve(c.owner); err != nil {
		return fail("%v", err)
	}
	kept := false
	defer func() {
		if !kept {
			c.l.unreserve(c.owner)
		}
	}()
	t := c.l.tmpl.Load()
	mf, err := t.Manifest(manifestName(code.name), name)
	if err != nil {
		return fail("the operator's CompatManifest: %v", err)
	}
	nat := c.native()
	ctx := context.Background()
	dep, err := nat.Deploy(ctx, &client.Function{Manifest: mf, Files: map[string][]byte{t.Entry: []byte(code.code)}})
	if err != nil {
		// Its words stay out of the log: a load error quotes the code.
		var pe *proto.Error
		if errors.As(err, &pe) {
			c.log.Info("execute refused", "code", pe.Code)
			if pe.Code == proto.CodeBadRequest && strings.HasPrefix(pe.Message, loadFailed) {
				// As the original, whose worker raised it: the
				// execute succeeds and the error is the function's
				// output, an Error message at its Open.
				f := &function{id: newUUID(), owner: c.owner, loadErr: pe.Message, expires: time.Now().Add(outputRetention)}
				c.l.keep(f)
				kept = true
				return c.respond(TExecute, false, f.id)
			}
		}
		return fail("%s", errText(err))
	}
	sess, err := nat.Invoke(ctx, dep.InvocationToken, args...)
	if err != nil {
		_ = nat.Shutdown(ctx, dep.ShutdownToken)
		return fail("%s", errText(err))
	}
	sid := sess.ID
	sess.Close() // the invocation goes on; its output is kept for Open
	var res policy.Limits
	_ = json.Unmarshal(dep.Resources, &res)
	f := &function{id: newUUID(), owner: c.owner, inv: dep.InvocationToken, shut: dep.ShutdownToken, session: sid,
		expires: time.Now().Add(res.Lifetime + outputRetention + time.Minute)}
	c.l.keep(f)
	kept = true
	c.log.Info("function executing", "instance", dep.Instance)
	return c.respond(TExecute, false, f.id)
}

// reserve takes a place for a function of owner's (an Execute under
// way), within the bounds per address and in all.
func (l *Listener) reserve(owner string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweepLocked()
	switch {
	case l.perOwner[owner] >= maxFunctionsPerClient:
		return fmt.Errorf("busy, retry later: your address keeps %d functions, the most it may; each is forgotten once its end is delivered (open it to the end), or its lifetime and 11 minutes after its Execute", maxFunctionsPerClient)
	case l.held >= maxFunctions:
		return fmt.Errorf("busy, retry later: this server keeps the most functions it may (%d); each is forgotten once its end is delivered", maxFunctions)
	}
	l.perOwner[owner]++
	l.held++
	return nil
}

// unreserve gives back a place reserve took.
func (l *Listener) unreserve(owner string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.unreserveLocked(owner)
}

func (l *Listener) unreserveLocked(owner string) {
	l.held--
	if l.perOwner[owner]--; l.perOwner[owner] <= 0 {
		delete(l.perOwner, owner)
	}
}

// keep adds a function in the place reserve took for it.
func (l *Listener) keep(f *function) {
	l.mu.Lock()
	l.funcs[hashSecret(f.id)] = f
	l.mu.Unlock()
}

// dropLocked forgets a function kept, giving its place back.
func (l *Listener) dropLocked(f *function) {
	if k := hashSecret(f.id); l.funcs[k] == f {
		delete(l.funcs, k)
		l.unreserveLocked(f.owner)
	}
}

// sweepLocked forgets functions whose instance is surely gone.
func (l *Listener) sweepLocked() {
	now := time.Now()
	for _, f := range l.funcs {
		if now.After(f.expires) {
			l.dropLocked(f)
		}
	}
}

func (l *Listener) lookup(id string) *function {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(id) > IDLen {
		return nil
	}
	f := l.funcs[hashSecret(id)]
	if f != nil && time.Now().After(f.expires) {
		l.dropLocked(f)
		return nil
	}
	return f
}

func (l *Listener) forget(f *function) {
	l.mu.Lock()
	l.dropLocked(f)
	l.mu.Unlock()
	f.mu.Lock()
	f.removed = true
	f.mu.Unlock()
}

// take makes a the function's attachment, taking it over from another
// connection (one that dropped without a Close, likely) if need be.
func (f *function) take(a *attachment) bool {
	deadline := time.After(takeOverWait)
	for {
		f.mu.Lock()
		if f.removed {
			f.mu.Unlock()
			return false
		}
		old := f.att
		if old == nil {
			f.att = a
			f.mu.Unlock()
			return true
		}
		f.mu.Unlock()
		select {
		case <-old.kick:
		default:
			close(old.kick)
		}
		select {
		case <-old.done:
		case <-deadline:
			return false
		}
	}
}

// ledger is what a connection wrote of a function: after each frame, the
// bytes the connection had carried and the output offset the frame took
// the function to.
type mark struct {
	end    int64
	offset int64
	dead   bool
}

// maxLedger bounds a connection's ledger: a client whose TCP acknowledges
// nothing (its window closed) while the socket's buffer takes thousands
// of small messages does not make it grow with them.
const maxLedger = 4096

// addMark appends m to the ledger. Every ledgerCompact marks, those the
// client's TCP acknowledged (acked; ok false: it cannot tell) leave it,
// and the output offset they took the function to is returned as
// delivered (-1: none). Beyond maxLedger marks, every other one goes: a
// message whose mark went counts as delivered only with the next one's
// (sent again, rather than lost).
func addMark(ledger []mark, m mark, acked func() (int64, bool)) ([]mark, int64) {
	ledger = append(ledger, m)
	if len(ledger) < ledgerCompact {
		return ledger, -1
	}
	delivered := int64(-1)
	n, ok := acked()
	if !ok && len(ledger) > maxLedger {
		// Without TCP_INFO (not Linux's TCP): the oldest marks are
		// taken as delivered beyond a bound.
		n, ok = ledger[len(ledger)/2].end, true
	}
	if ok {
		i := 0
		for i < len(ledger) && ledger[i].end <= n && !ledger[i].dead {
			i++
		}
		if i > 0 {
			delivered = ledger[i-1].offset
			ledger = append(ledger[:0], ledger[i:]...)
		}
	}
	if len(ledger) > maxLedger {
		last := ledger[len(ledger)-1]
		k := 0
		for i := 1; i < len(ledger); i += 2 {
			ledger[k] = ledger[i]
			k++
		}
		ledger = ledger[:k]
		if ledger[k-1] != last {
			ledger = append(ledger, last)
		}
	}
	return ledger, delivered
}

// open streams the function's output to the client and its input to the
// function until the client closes it, the function is dead and the
// client moves on, or the connection ends. It returns a request read
// meanwhile (after the function died), and an error when the connection
// is finished.
func (c *conn) open(rawID string) (*Frame, error) {
	id := strings.TrimSpace(rawID)
	f := c.l.lookup(id)
	if f == nil {
		_, err := c.message(MFunctionErr, rawID, []byte("no function exists with id: "+truncate(id, IDLen)+" (it ended and its output was delivered, or it ended more than 10 minutes ago, or the id is mistyped)"))
		return nil, err
	}
	a := &attachment{kick: make(chan struct{}), done: make(chan struct{})}
	if !f.take(a) {
		_, err := c.message(MFunctionErr, f.id, []byte("busy, retry later: function "+f.id+" is open on another connection"))
		return nil, err
	}
	if f.loadErr != "" {
		return nil, c.openFailed(f, a)
	}
	f.mu.Lock()
	off := f.offset
	f.mu.Unlock()
	var pipe net.Conn
	nat := c.native()
	nat.Dialer = dialerFunc(func() net.Conn {
		pipe = c.l.be.LocalConn(c.remote)
		return pipe
	})
	sess, err := nat.Attach(context.Background(), f.inv, f.session, off)
	if err != nil {
		f.mu.Lock()
		f.att = nil
		f.mu.Unlock()
		close(a.done)
		var pe *proto.Error
		if errors.As(err, &pe) && (pe.Code == proto.CodeNotFound || pe.Code == proto.CodeGone) {
			c.l.forget(f)
			_, err = c.message(MFunctionErr, f.id, []byte("no function exists with id: "+f.id+" ("+pe.Message+")"))
			return nil, err
		}
		_, err = c.message(MFunctionErr, f.id, []byte(errText(err)))
		return nil, err
	}
	var (
		lmu    sync.Mutex
		ledger []mark
		dead   = make(chan struct{})
	)
	// Marks acknowledged on a live connection are delivered: every
	// ledgerCompact marks, they go to the function's offset, and the
	// ledger stays short whatever the function's output.
	record := func(m mark) {
		lmu.Lock()
		defer lmu.Unlock()
		var delivered int64
		ledger, delivered = addMark(ledger, m, func() (int64, bool) { return bytesAcked(c.raw) })
		if delivered >= 0 {
			f.mu.Lock()
			f.offset = max(f.offset, delivered)
			f.mu.Unlock()
		}
	}
	pumpDone := make(chan struct{})
	var released atomic.Bool // the function is being let go: its session's end is ours
	go func() {
		defer close(pumpDone)
		defer c.l.recoverPanic("sending a compat function's output")
		for {
			data, exit, err := sess.Recv()
			if err != nil {
				if released.Load() {
					return
				}
				// bentod's own refusal (too much output in flight, the
				// output discarded) is the client's to hear; so is a
				// session that dropped, lest the client wait for ever.
				msg := "the function's output stopped on this connection: close the function and open it again to go on"
				var pe *proto.Error
				if errors.As(err, &pe) {
					msg = pe.Message + "; close the function and open it again to go on"
				}
				_, _ = c.message(MFunctionErr, f.id, []byte(msg))
				return
			}
			if exit != nil {
				var frames []byte
				if msg := exitText(exit); msg != "" {
					frames = AppendMessage(frames, MError, f.id, []byte(msg))
				}
				frames = AppendMessage(frames, MFunctionErr, f.id, []byte("function dead"))
				end, err := c.write(frames)
				if err == nil {
					record(mark{end: end, offset: sess.Offset, dead: true})
					close(dead)
					// The client goes back to requests: they must come
					// within the idle timeout.
					_ = c.nc.SetReadDeadline(time.Now().Add(c.p.Daemon.IdleTimeout))
				}
				return
			}
			// Held while it is written: charged to the client.
			charged := int64(0)
			if len(data) > FreeFrame {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				err := c.bud.Acquire(ctx, int64(len(data)))
				cancel()
				if err != nil {
					_, _ = c.message(MFunctionErr, f.id, []byte("busy, retry later: too much output in flight on this server; open the function again to go on"))
					return
				}
				charged = int64(len(data))
			}
			end, err := c.message(MOutput, f.id, data)
			if charged > 0 {
				c.bud.Release(charged)
			}
			if err != nil {
				return
			}
			record(mark{end: end, offset: sess.Offset})
		}
	}()
	// release lets the function go: what the client's TCP acknowledged is
	// delivered, the rest is sent again at the next Open; a dead function
	// whose end was delivered is shut down and forgotten.
	release := func(alive bool) {
		released.Store(true)
		if !alive {
			// A write waiting for a client that is gone ends now.
			c.gone.Store(true)
			_ = c.nc.SetWriteDeadline(time.Now())
		}
		sess.Close()
		<-pumpDone
		lmu.Lock()
		marks := ledger
		lmu.Unlock()
		acked, ok := bytesAcked(c.raw)
		if ok && len(marks) > 0 {
			// The client's TCP may delay its acknowledgement (40 ms to
			// 200 ms on Linux): a connection given up waits that long,
			// a live one a little longer.
			wait := ackWait
			if !alive {
				wait = delayedAck
			}
			want := marks[len(marks)-1].end
			for stop := time.Now().Add(wait); acked < want && time.Now().Before(stop); {
				time.Sleep(20 * time.Millisecond)
				acked, _ = bytesAcked(c.raw)
			}
		}
		if !ok {
			// Without TCP_INFO, only what was written before a live
			// connection's next request counts as delivered.
			acked = 0
			if alive {
				c.wmu.Lock()
				acked = c.written
				c.wmu.Unlock()
			}
		}
		delivered, deadDelivered := int64(-1), false
		for _, m := range marks {
			if m.end <= acked {
				delivered, deadDelivered = m.offset, m.dead
			}
		}
		f.mu.Lock()
		if delivered >= 0 && delivered > f.offset {
			f.offset = delivered
		}
		f.att = nil
		f.mu.Unlock()
		close(a.done)
		if deadDelivered {
			c.l.forget(f)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				if err := c.native().Shutdown(ctx, f.shut); err != nil && !client.IsCode(err, proto.CodeNotFound) {
					c.log.Warn("shutting down a compat function's instance", "err", errText(err))
				}
			}()
		}
	}
	// The client's messages, read by a goroutine so that a take-over
	// can end the connection while it waits.
	type read struct {
		f   *Frame
		err error
	}
	reads := make(chan read)
	next := make(chan struct{}, 1)
	readerDone := make(chan struct{})
	isDead := func() bool {
		select {
		case <-dead:
			return true
		default:
			return false
		}
	}
	c.r.Limit = func(t uint8) int {
		switch t {
		case MInput:
			return IDLen + MaxInput
		case TClose:
			return maxIDFrame
		case TStore, TExecute, TOpen:
			if isDead() {
				return c.requestLimit(t)
			}
		}
		return 0
	}
	stopReader := make(chan struct{})
	go func() {
		defer close(readerDone)
		defer c.l.recoverPanic("reading a compat client's messages")
		for {
			fr, err := c.r.Read()
			var te *TypeError
			if errors.As(err, &te) && te.Size <= maxDiscard && c.r.Discard(int(te.Size)) == nil {
				err = errInvalidType // answered; the stream is still in step
			}
			select {
			case reads <- read{fr, err}:
			case <-a.kick:
				fr.Release()
				return
			case <-stopReader:
				fr.Release()
				return
			}
			if err != nil && err != errInvalidType {
				return
			}
			select {
			case <-next:
			case <-a.kick:
				return
			case <-stopReader:
				return
			}
		}
	}()
	finish := func(alive bool) {
		release(alive)
		if !alive {
			c.nc.Close()
		}
		close(stopReader)
		<-readerDone
	}
	pumped := pumpDone // nil once seen
	for {
		select {
		case <-pumped:
			pumped = nil
			switch {
			case c.gone.Load():
				// A write failed (WriteTimeout: the client reads
				// nothing): the connection ends, what it did not
				// acknowledge waits for the next Open.
				finish(false)
				return nil, errClosed
			case !isDead():
				// The output stopped without the function's end (the
				// client was told): the client has IdleTimeout to
				// close the function, as between requests.
				_ = c.nc.SetReadDeadline(time.Now().Add(c.p.Daemon.IdleTimeout))
			}
		case <-a.kick:
			// Another connection opened the function: this one is taken
			// to be dead (its client reconnected).
			release(false)
			c.nc.Close()
			return nil, errClosed
		case rd := <-reads:
			if rd.err != nil {
				var te *TypeError
				var se *SizeError
				switch {
				case rd.err == errInvalidType:
					_, _ = c.message(MFunctionErr, f.id, []byte("invalid msg type"))
					next <- struct{}{}
					continue
				case errors.As(rd.err, &se) || errors.As(rd.err, &te) || errors.Is(rd.err, ErrBusy):
					c.readError(rd.err, f.id)
				}
				finish(false)
				return nil, rd.err
			}
			fr := rd.f
			switch fr.Type {
			case MInput:
				mid, data, err := SplitMessage(fr.Payload)
				switch {
				case err != nil:
					_, _ = c.message(MFunctionErr, f.id, []byte(err.Error()))
				case mid != f.id:
					_, _ = c.message(MFunctionErr, mid, []byte("function "+truncate(mid, IDLen)+" is not open on this connection (open it first)"))
				case isDead():
					_, _ = c.message(MFunctionErr, f.id, []byte("function dead"))
				default:
					if pipe != nil {
						_ = pipe.SetWriteDeadline(time.Now().Add(c.p.Daemon.WriteTimeout))
					}
					if sess.Send(data) != nil && !isDead() {
						// The session's end is on its way, or the
						// function left its input unread for
						// WriteTimeout (and the input stream to it may
						// be cut mid-frame): this connection ends.
						select {
						case <-dead:
						case <-pumpDone:
						case <-time.After(time.Second):
						}
						if !isDead() {
							_, _ = c.message(MFunctionErr, f.id, []byte("the function did not read its input: this input was not delivered; open the function again to go on"))
							fr.Release()
							finish(false)
							return nil, errClosed
						}
						_, _ = c.message(MFunctionErr, f.id, []byte("function dead"))
					}
				}
				fr.Release()
				next <- struct{}{}
			case TClose:
				fr.Release()
				finish(true)
				return nil, nil
			default: // a request after the function died
				finish(true)
				return fr, nil
			}
		}
	}
}

// openFailed delivers the load error of code that did not load, and the
// function's end; once the client's TCP has them, the function is
// forgotten.
func (c *conn) openFailed(f *function, a *attachment) error {
	end, err := c.write(AppendMessage(AppendMessage(nil, MError, f.id, []byte(f.loadErr)), MFunctionErr, f.id, []byte("function dead")))
	acked, ok := false, false
	for stop := time.Now().Add(ackWait); err == nil && time.Now().Before(stop); time.Sleep(20 * time.Millisecond) {
		var n int64
		if n, ok = bytesAcked(c.raw); !ok || n >= end {
			acked = ok
			break
		}
	}
	f.mu.Lock()
	f.att = nil
	f.mu.Unlock()
	close(a.done)
	if acked {
		c.l.forget(f)
	}
	return err
}

// exitText is what the original client is told of an invocation's end
// besides "function dead": the function's error, or why it was stopped.
func exitText(e *client.Exit) string {
	switch {
	case e.Error != nil:
		return e.Error.Error()
	case e.Reason != "":
		return "function stopped: " + e.Reason
	}
	return ""
}

type dialerFunc func() net.Conn

func (d dialerFunc) DialContext(context.Context, string, string) (net.Conn, error) { return d(), nil }

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// secret is the SHA-256 hash of a token or a function id, by which they
// are looked up: a lookup's time depends on the hash of what the client
// sent, never on how much of a real token it guessed (as bentod's own
// tokens, internal/server).
type secret [sha256.Size]byte

func hashSecret(s string) secret { return sha256.Sum256([]byte(s)) }

// newUUID is a random (version 4) UUID string, the form of the original's
// tokens and function ids.
func newUUID() string {
	var b [16]byte
	_, _ = io.ReadFull(rand.Reader, b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// codeStore keeps stored code: per client and in all, bounded in count
// and bytes; each is forgotten an hour after its last use.
type codeStore struct {
	mu      sync.Mutex
	m       map[secret]*stored // by the token's hash
	bytes   int64
	byOwner map[string]*ownerUse
}

type ownerUse struct {
	n     int
	bytes int64
}

type stored struct {
	owner, name, code string
	used              time.Time
}

func newCodeStore() *codeStore {
	return &codeStore{m: map[secret]*stored{}, byOwner: map[string]*ownerUse{}}
}

func (s *codeStore) expireLocked(now time.Time) {
	for k, e := range s.m {
		if now.Sub(e.used) > storedTTL {
			s.dropLocked(k, e)
		}
	}
}

func (s *codeStore) dropLocked(k secret, e *stored) {
	delete(s.m, k)
	s.bytes -= int64(len(e.code))
	u := s.byOwner[e.owner]
	u.n--
	u.bytes -= int64(len(e.code))
	if u.n == 0 {
		delete(s.byOwner, e.owner)
	}
}

// put stores code for owner; maxUpload bounds one code, and so what a
// client and everyone may keep.
func (s *codeStore) put(owner, name, code string, maxUpload int64) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.expireLocked(now)
	u := s.byOwner[owner]
	if u == nil {
		u = &ownerUse{}
	}
	size := int64(len(code))
	switch {
	case u.n >= maxStoredPerClient || u.bytes+size > 4*maxUpload:
		return "", fmt.Errorf("busy, retry later: your address keeps %d stored functions (%s), the most it may (%d, %s); each is forgotten an hour after its last use", u.n, units.FormatSize(u.bytes), maxStoredPerClient, units.FormatSize(4*maxUpload))
	case !s.makeRoomLocked(owner, u, size, maxUpload):
		return "", errors.New("busy, retry later: this server keeps the most stored functions it may; each is forgotten an hour after its last use")
	}
	tok := newUUID()
	s.m[hashSecret(tok)] = &stored{owner: owner, name: name, code: code, used: now}
	s.bytes += size
	u.n++
	u.bytes += size
	s.byOwner[owner] = u
	return tok, nil
}

// makeRoomLocked makes room for size bytes of owner's (who holds u) when
// the store is full in all: the least recently used code of the address
// holding the most goes, as long as that address keeps more than owner
// will, so that many addresses filling the store cannot lock a newcomer
// out for an hour, and no address loses code to one holding more.
func (s *codeStore) makeRoomLocked(owner string, u *ownerUse, size, maxUpload int64) bool {
	for {
		countFull := len(s.m) >= maxStored
		bytesFull := s.bytes+size > 64*maxUpload
		if !countFull && !bytesFull {
			return true
		}
		var victim string
		var most *ownerUse
		for o, v := range s.byOwner {
			if o == owner {
				continue
			}
			if most == nil || v.n > most.n || v.n == most.n && v.bytes > most.bytes {
				victim, most = o, v
			}
		}
		if bytesFull {
			for o, v := range s.byOwner {
				if o != owner && (most == nil || v.bytes > most.bytes) {
					victim, most = o, v
				}
			}
		}
		switch {
		case most == nil,
			countFull && most.n <= u.n+1,
			bytesFull && most.bytes <= u.bytes+size:
			return false
		}
		var oldKey secret
		var oldest *stored
		for k, e := range s.m {
			if e.owner == victim && (oldest == nil || e.used.Before(oldest.used)) {
				oldKey, oldest = k, e
			}
		}
		s.dropLocked(oldKey, oldest)
	}
}

func (s *codeStore) get(tok string) (stored, bool) {
	if len(tok) > maxTokenLen {
		return stored{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k := hashSecret(tok)
	e := s.m[k]
	if e == nil {
		return stored{}, false
	}
	if time.Since(e.used) > storedTTL {
		s.dropLocked(k, e)
		return stored{}, false
	}
	e.used = time.Now()
	return *e, true
}
