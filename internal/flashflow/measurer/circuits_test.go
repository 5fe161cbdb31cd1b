package measurer

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/torbento/bento/internal/torctl"
)

// fakeTor plays the measurer's tor: a control port that builds circuits
// (reporting some BUILT before its EXTENDED reply, as tor may, and
// failing those asked to) and a SOCKS port whose streams wait for
// ATTACHSTREAM before they connect to the real target.
type fakeTor struct {
	t       *testing.T
	ctl     net.Conn
	socks   net.Listener
	target  string // where streams really go
	failing map[int]bool

	mu       sync.Mutex
	nextCirc int
	nextStrm int
	paths    map[string]string        // circuit → path
	attached map[string]string        // stream → circuit
	bySource map[string]string        // SOCKS client address → stream
	waiting  map[string]chan struct{} // stream → closed when attached
	closed   []string
}

func newFakeTor(t *testing.T, target string, failing map[int]bool) (*Tor, *fakeTor) {
	// A TCP connection, not net.Pipe: tor's control port has socket
	// buffers, and torctl relies on them.
	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a, err := net.Dial("tcp", cl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := cl.Accept()
	cl.Close()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeTor{t: t, ctl: b, socks: ln, target: target, failing: failing,
		paths: map[string]string{}, attached: map[string]string{}, bySource: map[string]string{}, waiting: map[string]chan struct{}{}}
	go f.control()
	go f.serveSocks()
	c := torctl.NewConn(a)
	t.Cleanup(func() { c.Close(); b.Close(); ln.Close() })
	tor, err := NewTor(context.Background(), c, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return tor, f
}

func (f *fakeTor) write(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ctl.Write([]byte(s))
}

func (f *fakeTor) control() {
	br := bufio.NewReader(f.ctl)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		w := strings.Fields(strings.TrimSpace(line))
		switch w[0] {
		case "EXTENDCIRCUIT":
			f.mu.Lock()
			f.nextCirc++
			id := f.nextCirc
			f.paths[fmt.Sprint(id)] = w[2]
			f.mu.Unlock()
			status := "BUILT"
			if f.failing[id] {
				status = "FAILED"
			}
			// The event first, then the reply: the measurer must not
			// lose a circuit reported before it knows the circuit's id.
			f.write(fmt.Sprintf("650 CIRC %d %s\r\n250 EXTENDED %d\r\n", id, status, id))
		case "ATTACHSTREAM":
			f.mu.Lock()
			f.attached[w[1]] = w[2]
			ch := f.waiting[w[1]]
			f.mu.Unlock()
			if ch != nil {
				close(ch)
			}
			f.write("250 OK\r\n")
		case "CLOSECIRCUIT":
			f.mu.Lock()
			f.closed = append(f.closed, w[1])
			f.mu.Unlock()
			f.write("250 OK\r\n")
		default: // SETCONF, SETEVENTS, CLOSESTREAM
			f.write("250 OK\r\n")
		}
	}
}

func (f *fakeTor) serveSocks() {
	for {
		c, err := f.socks.Accept()
		if err != nil {
			return
		}
		go f.stream(c)
	}
}

func (f *fakeTor) stream(c net.Conn) {
	defer c.Close()
	var greet [3]byte
	if _, err := io.ReadFull(c, greet[:]); err != nil {
		return
	}
	c.Write([]byte{5, 0})
	var req [10]byte // IPv4 CONNECT
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return
	}
	port := int(req[8])<<8 | int(req[9])
	f.mu.Lock()
	f.nextStrm++
	sid := fmt.Sprint(f.nextStrm)
	ch := make(chan struct{})
	f.waiting[sid] = ch
	f.bySource[c.RemoteAddr().String()] = sid
	f.mu.Unlock()
	f.write(fmt.Sprintf("650 STREAM %s NEW 0 127.0.0.1:%d SOURCE_ADDR=%s PURPOSE=USER\r\n", sid, port, c.RemoteAddr()))
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		c.Write([]byte{5, 1, 0, 1, 0, 0, 0, 0, 0, 0})
		return
	}
	up, err := net.Dial("tcp", f.target)
	if err != nil {
		c.Write([]byte{5, 5, 0, 1, 0, 0, 0, 0, 0, 0})
		return
	}
	defer up.Close()
	c.Write([]byte{5, 0, 0, 1, 0, 0, 0, 0, 0, 0})
	go io.Copy(up, c)
	io.Copy(c, up)
}

func echoServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

// Streams builds one two-hop circuit per stream through the first hops in
// turn, puts each stream on a circuit of its own, and goes on without the
// circuits that failed.
func TestStreams(t *testing.T) {
	tor, f := newFakeTor(t, echoServer(t), map[int]bool{3: true})
	via := []string{strings.Repeat("A", 40), "$" + strings.Repeat("B", 40)}
	target := strings.Repeat("C", 40)
	conns, circs, err := tor.Streams(context.Background(), via, target, 9252, 6)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	if len(conns) != 5 || len(circs) != 5 {
		t.Fatalf("%d streams on %d circuits, want 5 and 5 (one circuit failed)", len(conns), len(circs))
	}
	f.mu.Lock()
	used := map[string]bool{}
	for sid, cid := range f.attached {
		if used[cid] {
			t.Errorf("circuit %s carries two streams (stream %s)", cid, sid)
		}
		used[cid] = true
	}
	firstHops := map[string]int{}
	for _, p := range f.paths {
		hops := strings.Split(p, ",")
		if len(hops) != 2 || hops[1] != "$"+target {
			t.Errorf("path %q: want two hops ending at the target", p)
		}
		firstHops[hops[0]]++
	}
	f.mu.Unlock()
	if len(used) != 5 || firstHops["$"+via[0]] != 3 || firstHops[via[1]] != 3 {
		t.Fatalf("attached %d circuits; first hops %v", len(used), firstHops)
	}
	// The streams carry data to the target and back.
	for i, c := range conns {
		msg := []byte(fmt.Sprintf("stream %d", i))
		c.Write(msg)
		got := make([]byte, len(msg))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
			t.Fatalf("stream %d: %q %v", i, got, err)
		}
	}
	tor.CloseCircuits(circs)
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.closed) != 5 {
		t.Fatalf("closed %d circuits, want 5", len(f.closed))
	}
}

// TestStreamsConcurrent: two measurements open their streams at once,
// to the same echo port; each stream goes on a circuit its own
// measurement built.
func TestStreamsConcurrent(t *testing.T) {
	tor, f := newFakeTor(t, echoServer(t), nil)
	via := []string{strings.Repeat("A", 40)}
	type res struct {
		conns []net.Conn
		circs []string
		err   error
	}
	out := make([]res, 2)
	var wg sync.WaitGroup
	for i := range out {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, ci, err := tor.Streams(context.Background(), via, strings.Repeat("C", 40), 9252, 4)
			out[i] = res{c, ci, err}
		}()
	}
	wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, r := range out {
		if r.err != nil || len(r.conns) != 4 || len(r.circs) != 4 {
			t.Fatalf("measurement %d: %d streams on %d circuits, %v; want 4 and 4", i, len(r.conns), len(r.circs), r.err)
		}
		for _, c := range r.conns {
			defer c.Close()
			sid := f.bySource[c.LocalAddr().String()]
			if cid := f.attached[sid]; !slices.Contains(r.circs, cid) {
				t.Errorf("measurement %d: stream %s on circuit %q, not one of its own %v", i, sid, cid, r.circs)
			}
		}
	}
}

func TestStreamsNeedsFirstHop(t *testing.T) {
	tor, _ := newFakeTor(t, echoServer(t), nil)
	if _, _, err := tor.Streams(context.Background(), nil, strings.Repeat("C", 40), 9252, 2); err == nil || !strings.Contains(err.Error(), "-via") {
		t.Fatalf("got %v, want an error naming -via", err)
	}
}
