package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/torbento/bento/internal/runner"
	"github.com/torbento/bento/internal/socks"
	"github.com/torbento/bento/internal/torfw"
)

// maxConns bounds an instance's open streams, spliced pairs included, and
// maxPending the accepted connections waiting for tor.accept.
const (
	maxConns   = 64
	maxPending = 64
)

// streams are an instance's Tor streams and onion-service listeners.
type streams struct {
	mu        sync.Mutex
	next      int
	conns     map[int]net.Conn
	spliced   int
	listeners []net.Listener
	accepted  chan net.Conn
	closed    bool
}

func newStreams() *streams {
	return &streams{conns: map[int]net.Conn{}, accepted: make(chan net.Conn, maxPending)}
}

// add registers c and returns its handle.
func (st *streams) add(c net.Conn) (int, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.closed {
		c.Close()
		return 0, errors.New("instance ended")
	}
	if len(st.conns)+2*st.spliced >= maxConns {
		c.Close()
		return 0, fmt.Errorf("too many open streams (at most %d, spliced pairs count twice)", maxConns)
	}
	st.next++
	st.conns[st.next] = c
	return st.next, nil
}

func (st *streams) get(id int) (net.Conn, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	c, ok := st.conns[id]
	if !ok {
		return nil, fmt.Errorf("no open stream %d", id)
	}
	return c, nil
}

// close ends everything: listeners, queued and open streams. Splices end
// when their streams are closed by closing them here too.
func (st *streams) close() {
	st.mu.Lock()
	st.closed = true
	ls, cs := st.listeners, st.conns
	st.listeners, st.conns = nil, map[int]net.Conn{}
	st.mu.Unlock()
	for _, l := range ls {
		l.Close()
	}
	for _, c := range cs {
		c.Close()
	}
	for {
		select {
		case c := <-st.accepted:
			c.Close()
		default:
			return
		}
	}
}

// control returns the instance's control-port firewall session.
func (in *Instance) control() (*torfw.Session, error) {
	fw := in.srv.firewall
	if fw == nil {
		return nil, fmt.Errorf("this node is not connected to tor's control port (TorControlPort)")
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.torSession == nil {
		in.torSession = fw.Open(in.socksUser())
	}
	return in.torSession, nil
}

// socksUser is the SOCKS username of the instance's Tor traffic: tor
// isolates it from everyone else's, and the firewall attributes circuits
// and streams by it.
func (in *Instance) socksUser() string { return "bento-" + in.id }

// streams returns the instance's stream table, creating it.
func (in *Instance) streams() *streams {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.st == nil {
		in.st = newStreams()
	}
	return in.st
}

// listenFor is the firewall's Listen hook: a loopback listener whose
// connections go to the instance owning the onion service.
func (s *Server) listenFor(owner string, virtPort int) (string, error) {
	id, ok := strings.CutPrefix(owner, "bento-")
	s.mu.Lock()
	in := s.instances[id]
	s.mu.Unlock()
	if !ok || in == nil {
		return "", errors.New("no such instance")
	}
	st := in.streams()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		ln.Close()
		return "", errors.New("instance ended")
	}
	st.listeners = append(st.listeners, ln)
	st.mu.Unlock()
	go func() {
		defer s.recoverPanic("an onion service's listener")
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case st.accepted <- c:
			default:
				c.Close() // the function is not keeping up: refuse, as a full backlog does
			}
		}
	}()
	return ln.Addr().String(), nil
}

// torStream carries out the stream calls: tor.* (streams through Tor and
// onion services) and net.* (direct TCP connections, checked as http.fetch
// is: both destination policies and, beside a relay, its exit policy). An
// instance's streams of both kinds share one table and its bound; read,
// write and close work on either.
func (h *hostCall) torStream(name string) (any, []byte, error) {
	var a struct {
		Host    string  `json:"host"`
		Port    int     `json:"port"`
		Conn    int     `json:"conn"`
		N       int     `json:"n"`
		Timeout float64 `json:"timeout"`
		A       int     `json:"a"`
		B       int     `json:"b"`
		Circuit string  `json:"circuit"`
	}
	if err := json.Unmarshal(h.args, &a); err != nil {
		return nil, nil, fmt.Errorf("%s: bad arguments", name)
	}
	st := h.in.streams()
	wait := func() (context.Context, context.CancelFunc) {
		if a.Timeout > 0 && a.Timeout < 3600 {
			return h.ctx(time.Duration(a.Timeout * float64(time.Second)))
		}
		return h.ctx(h.in.mf().Resources.Lifetime)
	}
	switch name {
	case "net.dial":
		return h.netDial(a.Host, a.Port, wait)
	case "tor.listen":
		if a.Port < 1 || a.Port > 65535 {
			return nil, nil, fmt.Errorf("tor.listen: port must be 1-65535")
		}
		sess, err := h.in.control()
		if err != nil {
			return nil, nil, fmt.Errorf("tor.listen: %w", err)
		}
		ctx, cancel := h.ctx(60 * time.Second)
		defer cancel()
		r, err := sess.Do(ctx, "ADD_ONION NEW:ED25519-V3 Port="+strconv.Itoa(a.Port))
		if err != nil {
			return nil, nil, fmt.Errorf("tor.listen: %w", err)
		}
		if !r.OK() {
			return nil, nil, fmt.Errorf("tor.listen: tor answered %d %s", r.Status, r.Lines[len(r.Lines)-1].Text)
		}
		for _, l := range r.Lines {
			if id, ok := strings.CutPrefix(l.Text, "ServiceID="); ok {
				// Return once clients can find the service: a client that
				// asks too early is told it does not exist, and does not
				// ask the same directories again for 15 minutes.
				select {
				case <-h.in.srv.tor.WaitUploaded(id):
				case <-ctx.Done():
					h.in.srv.tor.StopWaiting(id)
					return nil, nil, fmt.Errorf("tor.listen: the onion service's descriptor was not uploaded within a minute")
				}
				return runner.StreamResult{Onion: id + ".onion"}, nil, nil
			}
		}
		return nil, nil, errors.New("tor.listen: tor returned no service ID")
	case "tor.accept":
		ctx, cancel := wait()
		defer cancel()
		select {
		case c := <-st.accepted:
			id, err := st.add(c)
			if err != nil {
				return nil, nil, fmt.Errorf("tor.accept: %w", err)
			}
			return runner.StreamResult{Conn: id}, nil, nil
		case <-ctx.Done():
			select {
			case <-h.rt.exited():
				return nil, nil, errStopped
			default:
			}
			return runner.StreamResult{Timeout: true}, nil, nil
		}
	case "tor.dial":
		if a.Host == "" || a.Port < 1 || a.Port > 65535 {
			return nil, nil, fmt.Errorf("tor.dial: want a host and a port 1-65535")
		}
		td := h.torDialer()
		ctx, cancel := wait()
		defer cancel()
		target := net.JoinHostPort(a.Host, strconv.Itoa(a.Port))
		if err := td.check(target); err != nil {
			return nil, nil, fmt.Errorf("tor.dial: %w", err)
		}
		if err := td.ready(); err != nil {
			return nil, nil, fmt.Errorf("tor.dial: %w", err)
		}
		var c net.Conn
		var err error
		if a.Circuit != "" {
			c, err = h.dialOnCircuit(ctx, td.d, target, a.Circuit)
		} else {
			c, err = td.d.DialContext(ctx, "tcp", target)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("tor.dial: %w", err)
		}
		id, err := st.add(c)
		if err != nil {
			return nil, nil, fmt.Errorf("tor.dial: %w", err)
		}
		return runner.StreamResult{Conn: id}, nil, nil
	case "tor.read", "net.read":
		c, err := st.get(a.Conn)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
		if a.N <= 0 || a.N > 1<<20 {
			a.N = 1 << 16
		}
		if a.Timeout > 0 {
			_ = c.SetReadDeadline(time.Now().Add(seconds(a.Timeout, h.in.mf().Resources.Lifetime)))
		} else {
			_ = c.SetReadDeadline(time.Time{})
		}
		// A read waits no longer than the runtime that asked.
		readDone := make(chan struct{})
		defer close(readDone)
		go func() {
			select {
			case <-h.rt.exited():
				_ = c.SetReadDeadline(time.Now())
			case <-readDone:
			}
		}()
		hctx, hcancel := h.ctx(30 * time.Second)
		err = h.hold(hctx, int64(a.N))
		hcancel()
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
		buf := make([]byte, a.N)
		n, err := c.Read(buf)
		if n > 0 {
			wctx, wcancel := h.ctx(h.in.mf().Resources.Lifetime)
			werr := h.in.io.wait(wctx, n)
			wcancel()
			if werr != nil {
				return nil, nil, errStopped
			}
		}
		res, b, err := runner.ReadResult(name, buf, n, err)
		if err != nil {
			return nil, nil, err
		}
		return res, b, nil
	case "tor.write", "net.write":
		c, err := st.get(a.Conn)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
		_ = c.SetWriteDeadline(time.Now().Add(60 * time.Second))
		if _, err := c.Write(h.body); err != nil {
			return nil, nil, fmt.Errorf("%s: %v", name, err)
		}
		return runner.StreamResult{}, nil, nil
	case "tor.close", "net.close":
		st.mu.Lock()
		c, ok := st.conns[a.Conn]
		delete(st.conns, a.Conn)
		st.mu.Unlock()
		if ok {
			c.Close()
		}
		return runner.StreamResult{}, nil, nil
	case "tor.splice":
		st.mu.Lock()
		ca, oka := st.conns[a.A]
		cb, okb := st.conns[a.B]
		if !oka || !okb || a.A == a.B {
			st.mu.Unlock()
			return nil, nil, errors.New("tor.splice: want two different open streams")
		}
		delete(st.conns, a.A)
		delete(st.conns, a.B)
		st.spliced++
		st.mu.Unlock()
		_ = ca.SetDeadline(time.Time{})
		_ = cb.SetDeadline(time.Time{})
		go splice(ca, cb, h.rt.exited(), func() {
			st.mu.Lock()
			st.spliced--
			st.mu.Unlock()
		})
		return runner.StreamResult{}, nil, nil
	}
	return nil, nil, fmt.Errorf("unknown host call %q", name)
}

// netDial opens a direct TCP connection to host:port for net.dial, to a
// destination every policy accepts (the name resolved once, the address
// checked, the connection made to the checked address).
func (h *hostCall) netDial(host string, port int, wait func() (context.Context, context.CancelFunc)) (any, []byte, error) {
	if host == "" || len(host) > 255 || port < 1 || port > 65535 {
		return nil, nil, fmt.Errorf("net.dial: want a host name or address and a port 1-65535")
	}
	ctx, cancel := wait()
	defer cancel()
	c, err := h.checked().DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return nil, nil, fmt.Errorf("net.dial: %w", err)
	}
	id, err := h.in.streams().add(c)
	if err != nil {
		return nil, nil, fmt.Errorf("net.dial: %w", err)
	}
	return runner.StreamResult{Conn: id}, nil, nil
}

// splice copies a→b and b→a until either direction ends or the instance
// does, then closes both.
func splice(a, b net.Conn, exited <-chan struct{}, done func()) {
	defer done()
	finished := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		finished <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	select {
	case <-finished:
	case <-exited:
	}
	a.Close()
	b.Close()
	<-finished
	<-finished
}

var attachSeq atomic.Uint64

// dialOnCircuit opens a stream to target on circuit circ, which the
// function must own. The SOCKS password is unique to this stream, so tor
// has no circuit for it yet and leaves it waiting while one is built; the
// firewall spots the stream's NEW event and bentod attaches it to circ.
func (h *hostCall) dialOnCircuit(ctx context.Context, td *socks.Dialer, target, circ string) (net.Conn, error) {
	sess, err := h.in.control()
	if err != nil {
		return nil, err
	}
	if !sess.OwnsCircuit(circ) {
		return nil, fmt.Errorf("circuit %q is not one of yours (build one with tor.control(\"EXTENDCIRCUIT 0\"))", circ)
	}
	// Moving a stream races with the exit's answer on the circuit tor
	// chose; a lost race is retried on a fresh stream.
	for attempt := 1; ; attempt++ {
		c, err := h.dialOnCircuitOnce(ctx, sess, td, target, circ)
		if !errors.Is(err, errLostRace) || attempt == 5 {
			return c, err
		}
		h.in.log.Info("moving a stream to the function's circuit lost the race with the exit; retrying", "instance", h.in.id, "attempt", attempt)
	}
}

var errLostRace = errors.New("the stream connected on tor's circuit before it could be moved")

func (h *hostCall) dialOnCircuitOnce(ctx context.Context, sess *torfw.Session, td *socks.Dialer, target, circ string) (net.Conn, error) {
	pw := fmt.Sprintf("attach-%d", attachSeq.Add(1))
	ids := sess.ExpectStream(pw)
	defer sess.Unexpect(pw)
	d := *td
	d.Password = pw
	type res struct {
		c   net.Conn
		err error
	}
	done := make(chan res, 1)
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		c, err := d.DialContext(dctx, "tcp", target)
		done <- res{c, err}
	}()
	fail := func(err error) (net.Conn, error) {
		cancel()
		if r := <-done; r.c != nil {
			r.c.Close()
		}
		return nil, err
	}
	select {
	case id := <-ids:
		r, err := sess.Do(ctx, "ATTACHSTREAM "+id+" "+circ)
		if err != nil {
			return fail(err)
		}
		if r.Status == 555 {
			return fail(errLostRace)
		}
		if !r.OK() {
			return fail(fmt.Errorf("attaching the stream to circuit %s: tor answered %d %s", circ, r.Status, r.Lines[len(r.Lines)-1].Text))
		}
	case r := <-done:
		if r.err == nil {
			r.c.Close()
			return nil, errLostRace
		}
		return nil, r.err
	case <-time.After(15 * time.Second):
		return fail(errors.New("tor reported no new stream within 15 s"))
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	r := <-done
	return r.c, r.err
}
