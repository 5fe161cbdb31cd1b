package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/torbento/bento/internal/exitpolicy"
	"github.com/torbento/bento/internal/netcheck"
	"github.com/torbento/bento/internal/runner"
)

// devMaxConns is bentod's bound on an instance's open streams.
const devMaxConns = 64

// devStreams are a dev run's direct TCP connections (net.*), dialled with
// bentod's destination checks: the node policy given with --policy and
// the manifest's destinations.
type devStreams struct {
	mu    sync.Mutex
	next  int
	conns map[int]net.Conn
	done  bool
}

// closeAll ends every connection; the run is over.
func (st *devStreams) closeAll() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.done = true
	for id, c := range st.conns {
		c.Close()
		delete(st.conns, id)
	}
}

func (st *devStreams) get(id int) (net.Conn, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	c, ok := st.conns[id]
	if !ok {
		return nil, fmt.Errorf("no open stream %d", id)
	}
	return c, nil
}

// netCall carries out net.dial, net.read, net.write and net.close as
// bentod does, with its words.
func (h *devHost) netCall(name string, args json.RawMessage, body []byte) (any, []byte, error) {
	var a struct {
		Host    string  `json:"host"`
		Port    int     `json:"port"`
		Conn    int     `json:"conn"`
		N       int     `json:"n"`
		Timeout float64 `json:"timeout"`
	}
	if err := json.Unmarshal(args, &a); err != nil {
		return nil, nil, fmt.Errorf("%s: bad arguments", name)
	}
	st := &h.streams
	switch name {
	case "net.dial":
		if a.Host == "" || len(a.Host) > 255 || a.Port < 1 || a.Port > 65535 {
			return nil, nil, fmt.Errorf("net.dial: want a host name or address and a port 1-65535")
		}
		ctx, cancel := context.WithTimeout(h.ctx, wait(a.Timeout, h.m.Resources.Lifetime))
		defer cancel()
		d := &netcheck.Checked{Policies: []*exitpolicy.Policy{h.p.Destinations, h.m.Dest}}
		c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(a.Host, strconv.Itoa(a.Port)))
		if err != nil {
			return nil, nil, fmt.Errorf("net.dial: %w", err)
		}
		st.mu.Lock()
		defer st.mu.Unlock()
		if st.done {
			c.Close()
			return nil, nil, errors.New("net.dial: the run ended")
		}
		if st.conns == nil {
			st.conns = map[int]net.Conn{}
		}
		if len(st.conns) >= devMaxConns {
			c.Close()
			return nil, nil, fmt.Errorf("net.dial: too many open streams (at most %d, spliced pairs count twice)", devMaxConns)
		}
		st.next++
		st.conns[st.next] = c
		return runner.StreamResult{Conn: st.next}, nil, nil
	case "net.read":
		c, err := st.get(a.Conn)
		if err != nil {
			return nil, nil, fmt.Errorf("net.read: %w", err)
		}
		if a.N <= 0 || a.N > 1<<20 {
			a.N = 1 << 16
		}
		if a.Timeout > 0 {
			_ = c.SetReadDeadline(time.Now().Add(wait(a.Timeout, h.m.Resources.Lifetime)))
		} else {
			_ = c.SetReadDeadline(time.Time{})
		}
		buf := make([]byte, a.N)
		n, err := c.Read(buf)
		res, b, err := runner.ReadResult(name, buf, n, err)
		if err != nil {
			return nil, nil, err
		}
		return res, b, nil
	case "net.write":
		c, err := st.get(a.Conn)
		if err != nil {
			return nil, nil, fmt.Errorf("net.write: %w", err)
		}
		_ = c.SetWriteDeadline(time.Now().Add(60 * time.Second))
		if _, err := c.Write(body); err != nil {
			return nil, nil, fmt.Errorf("net.write: %v", err)
		}
		return runner.StreamResult{}, nil, nil
	case "net.close":
		st.mu.Lock()
		c, ok := st.conns[a.Conn]
		delete(st.conns, a.Conn)
		st.mu.Unlock()
		if ok {
			c.Close()
		}
		return runner.StreamResult{}, nil, nil
	}
	return nil, nil, fmt.Errorf("unknown host call %q", name)
}
