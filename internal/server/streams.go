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
	"time"

	"github.com/torbento/bento/internal/runner"
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

// torStream carries out the tor.* stream calls.
func (h hostCall) torStream(name string) (any, []byte, error) {
	var a struct {
		Host    string  `json:"host"`
		Port    int     `json:"port"`
		Conn    int     `json:"conn"`
		N       int     `json:"n"`
		Timeout float64 `json:"timeout"`
		A       int     `json:"a"`
		B       int     `json:"b"`
	}
	if err := json.Unmarshal(h.args, &a); err != nil {
		return nil, nil, fmt.Errorf("%s: bad arguments", name)
	}
	st := h.in.streams()
	wait := func() (context.Context, context.CancelFunc) {
		if a.Timeout > 0 && a.Timeout < 3600 {
			return h.ctx(time.Duration(a.Timeout * float64(time.Second)))
		}
		return h.ctx(h.in.m.Resources.Lifetime)
	}
	switch name {
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
			case <-h.in.c.Exited():
				return nil, nil, errStopped
			default:
			}
			return runner.StreamResult{Timeout: true}, nil, nil
		}
	case "tor.dial":
		if a.Host == "" || a.Port < 1 || a.Port > 65535 {
			return nil, nil, fmt.Errorf("tor.dial: want a host and a port 1-65535")
		}
		td, err := h.torDialer()
		if err != nil {
			return nil, nil, fmt.Errorf("tor.dial: %w", err)
		}
		ctx, cancel := wait()
		defer cancel()
		c, err := td.DialContext(ctx, "tcp", net.JoinHostPort(a.Host, strconv.Itoa(a.Port)))
		if err != nil {
			return nil, nil, fmt.Errorf("tor.dial: %w", err)
		}
		id, err := st.add(c)
		if err != nil {
			return nil, nil, fmt.Errorf("tor.dial: %w", err)
		}
		return runner.StreamResult{Conn: id}, nil, nil
	case "tor.read":
		c, err := st.get(a.Conn)
		if err != nil {
			return nil, nil, fmt.Errorf("tor.read: %w", err)
		}
		if a.N <= 0 || a.N > 1<<20 {
			a.N = 1 << 16
		}
		if a.Timeout > 0 {
			_ = c.SetReadDeadline(time.Now().Add(time.Duration(a.Timeout * float64(time.Second))))
		} else {
			_ = c.SetReadDeadline(time.Time{})
		}
		buf := make([]byte, a.N)
		n, err := c.Read(buf)
		if n > 0 {
			return runner.StreamResult{}, buf[:n], nil
		}
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			return runner.StreamResult{Timeout: true}, nil, nil
		case errors.Is(err, io.EOF):
			return runner.StreamResult{EOF: true}, []byte{}, nil
		}
		return nil, nil, fmt.Errorf("tor.read: %v", err)
	case "tor.write":
		c, err := st.get(a.Conn)
		if err != nil {
			return nil, nil, fmt.Errorf("tor.write: %w", err)
		}
		_ = c.SetWriteDeadline(time.Now().Add(60 * time.Second))
		if _, err := c.Write(h.body); err != nil {
			return nil, nil, fmt.Errorf("tor.write: %v", err)
		}
		return runner.StreamResult{}, nil, nil
	case "tor.close":
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
		go splice(ca, cb, h.in.c.Exited(), func() {
			st.mu.Lock()
			st.spliced--
			st.mu.Unlock()
		})
		return runner.StreamResult{}, nil, nil
	}
	return nil, nil, fmt.Errorf("unknown host call %q", name)
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
