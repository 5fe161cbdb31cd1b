package e2e

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/wire"
)

// The attacker runs in a process of its own (this test binary again, at
// nice 19): on a real network the attacker's CPU is not the box's, and
// running it niced keeps its own work from passing for harm bentod did.
// docs/SECURITY.md explains the method.
const attackEnv = "BENTO_E2E_ATTACK"

// attackSpec describes one attack.
type attackSpec struct {
	Kind    string `json:"kind"`
	Target  string `json:"target"`
	Sources int    `json:"sources"` // source addresses 127.0.<i/250+2>.<i%250+1>
	Conns   int    `json:"conns"`   // connections at once (per source: Conns/Sources)
	Total   int    `json:"total"`   // connection attempts in all (0: keep Conns open)
	Size    int    `json:"size"`    // frame size for frame attacks
	Token   string `json:"token"`   // invocation token for session attacks
	Session string `json:"session"` // session to attach to
	Offset  int64  `json:"offset"`  // ... and where
	Args    string `json:"args"`    // invocation arguments (JSON array)
	Every   int    `json:"every_ms"`
}

// attackReport is what the attacker saw.
type attackReport struct {
	Attempts  int64 `json:"attempts"`    // connections tried
	Connected int64 `json:"connected"`   // connections established
	Closed    int64 `json:"closed"`      // closed by the server
	Refused   int64 `json:"refused"`     // answered with an error frame or an HTTP 503
	Requests  int64 `json:"requests"`    // requests answered on held connections (attach-end: attaches answered with the exit alone)
	MaxLifeMs int64 `json:"max_life_ms"` // longest a connection stayed open (those still open at the report included)
	MaxHeld   int64 `json:"max_held"`    // most connections past their hello at once
	Sent      int64 `json:"sent"`        // bytes written to the server (its socket took them)
	Waited    int64 `json:"waited"`      // dials whose handshake took a retransmission (a second or more: dropped by bentod's kernel filter), made or timed out
	Reset     int64 `json:"reset"`       // dials that failed at once (reset for the rate, before the dial returned)

	output string // what the attacker printed, for a failure's message
}

// String shows the counters, and the attacker's own words when it
// reported nothing.
func (r attackReport) String() string {
	s := fmt.Sprintf("%d attempts, %d connected, %d closed, %d refused, %d dials waited for a retransmission, %d reset, %d requests answered, longest life %d ms, %d bytes sent",
		r.Attempts, r.Connected, r.Closed, r.Refused, r.Waited, r.Reset, r.Requests, r.MaxLifeMs, r.Sent)
	if r.Attempts == 0 {
		s += "; the attacker said: " + trunc(r.output)
	}
	return s
}

// countConn counts the bytes written on a connection.
type countConn struct {
	net.Conn
	n *int64
}

func (c countConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	atomic.AddInt64(c.n, int64(n))
	return n, err
}

type attackProc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

// startAttack runs spec in an attacker process until stop.
func startAttack(t *testing.T, spec attackSpec) *attackProc {
	t.Helper()
	a, err := launchAttack(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.stop() })
	return a
}

// launchAttack starts the attacker process, at nice 19.
func launchAttack(spec attackSpec) (*attackProc, error) {
	b, _ := json.Marshal(spec)
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("nice", "-n", "19", exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), attackEnv+"="+string(b))
	a := &attackProc{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = a.out, a.out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() { cmd.Wait(); close(a.done) }()
	return a, nil
}

// stop ends the attacker (SIGINT: it stops and prints its report) and
// returns what it saw.
func (a *attackProc) stop() attackReport {
	select {
	case <-a.done:
	default:
		// Closing stdin is not enough for a niced busy process: ask it.
		a.cmd.Process.Signal(os.Interrupt)
		select {
		case <-a.done:
		case <-time.After(10 * time.Second):
			a.cmd.Process.Kill()
			<-a.done
		}
	}
	r := attackReport{output: a.out.String()}
	sc := bufio.NewScanner(strings.NewReader(r.output))
	for sc.Scan() {
		if line := sc.Bytes(); len(line) > 0 && line[0] == '{' {
			_ = json.Unmarshal(line, &r)
		}
	}
	return r
}

// wait waits (at most within) for an attacker with a Total to make all its
// attempts, and returns what it saw.
func (a *attackProc) wait(within time.Duration) attackReport {
	select {
	case <-a.done:
	case <-time.After(within):
	}
	return a.stop()
}

// runAttacker is the attacker process's main.
func runAttacker(specJSON string) int {
	var spec attackSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "attacker:", err)
		return 2
	}
	var rep attackReport
	stop := make(chan struct{})
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() { <-sig; close(stop) }()
	// The connections open now, by when they opened: a connection the
	// server never closes counts at its age when the report is made.
	var openMu sync.Mutex
	open := map[*time.Time]bool{}
	report := func() {
		life := atomic.LoadInt64(&rep.MaxLifeMs)
		openMu.Lock()
		for start := range open {
			life = max(life, time.Since(*start).Milliseconds())
		}
		openMu.Unlock()
		b, _ := json.Marshal(attackReport{
			Attempts: atomic.LoadInt64(&rep.Attempts), Connected: atomic.LoadInt64(&rep.Connected),
			Closed: atomic.LoadInt64(&rep.Closed), Refused: atomic.LoadInt64(&rep.Refused),
			Requests: atomic.LoadInt64(&rep.Requests), MaxLifeMs: life, MaxHeld: atomic.LoadInt64(&rep.MaxHeld),
			Sent: atomic.LoadInt64(&rep.Sent), Waited: atomic.LoadInt64(&rep.Waited), Reset: atomic.LoadInt64(&rep.Reset)})
		fmt.Println(string(b))
	}
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(500 * time.Millisecond):
				report()
			}
		}
	}()
	switch spec.Kind {
	case "sink":
		// Not an attack: the cheapest possible target, so that the
		// attacker's own cost can be told from bentod's. It turns every
		// connection away at once, as a full server does, so the
		// attackers come back as often as they would to bentod.
		return serve(spec.Target, stop, func(net.Conn) {})
	case "endless-bento":
		// A Bento server of the attacker's: welcome, a session for any
		// invocation, and output without end.
		return serve(spec.Target, stop, endlessBento)
	case "endless-http":
		// An HTTP server whose bodies never end.
		return serve(spec.Target, stop, func(c net.Conn) {
			br := bufio.NewReader(c)
			for {
				l, err := br.ReadString('\n')
				if err != nil {
					return
				}
				if l == "\r\n" {
					break
				}
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
			chunk := make([]byte, 64<<10)
			for {
				if _, err := c.Write(chunk); err != nil {
					return
				}
			}
		})
	}
	sources := max(spec.Sources, 1)
	var attempts atomic.Int64
	more := func() bool {
		if spec.Total == 0 {
			return true
		}
		return attempts.Add(1) <= int64(spec.Total)
	}
	var wg sync.WaitGroup
	for w := 0; w < spec.Conns; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src := net.IPv4(127, 0, byte(2+(w%sources)/250), byte(1+(w%sources)%250))
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 5 * time.Second}
			for more() {
				select {
				case <-stop:
					return
				default:
				}
				atomic.AddInt64(&rep.Attempts, 1)
				dialed := time.Now()
				c, err := d.Dial("tcp", spec.Target)
				if time.Since(dialed) > 900*time.Millisecond {
					atomic.AddInt64(&rep.Waited, 1)
				}
				if err != nil {
					if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
						atomic.AddInt64(&rep.Reset, 1)
					}
					time.Sleep(50 * time.Millisecond)
					continue
				}
				atomic.AddInt64(&rep.Connected, 1)
				start := time.Now()
				openMu.Lock()
				open[&start] = true
				openMu.Unlock()
				refused := attackOne(spec, countConn{c, &rep.Sent}, stop, &rep)
				openMu.Lock()
				delete(open, &start)
				openMu.Unlock()
				life := time.Since(start).Milliseconds()
				for {
					old := atomic.LoadInt64(&rep.MaxLifeMs)
					if life <= old || atomic.CompareAndSwapInt64(&rep.MaxLifeMs, old, life) {
						break
					}
				}
				c.Close()
				if refused {
					atomic.AddInt64(&rep.Refused, 1)
				} else {
					atomic.AddInt64(&rep.Closed, 1)
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-stop:
	case <-done:
	}
	report()
	return 0
}

// atomicHeld counts the attacker's connections past their hello.
var atomicHeld atomic.Int64

// attackOne plays the attack on one connection until the server closes it
// or the attack stops; it reports whether the server refused it with a
// message.
func attackOne(spec attackSpec, c net.Conn, stop <-chan struct{}, rep *attackReport) bool {
	conn := wire.NewConn(c)
	closed := make(chan bool, 1)
	// The reader: whatever the server says, until it closes.
	readAll := func() {
		br := bufio.NewReader(c)
		first, _ := br.Peek(64)
		refused := len(first) > 0
		io.Copy(io.Discard, br)
		closed <- refused
	}
	heldNow := false
	hello := func() bool {
		conn.Send(proto.THello, proto.Hello{Version: proto.Version}, nil)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		f, err := conn.Read()
		c.SetReadDeadline(time.Time{})
		if err != nil || f.Type != proto.TWelcome {
			return false
		}
		// Held: past its hello. The most at once is the server's share
		// for this attacker, as it saw it.
		n := atomicHeld.Add(1)
		heldNow = true
		for {
			old := atomic.LoadInt64(&rep.MaxHeld)
			if n <= old || atomic.CompareAndSwapInt64(&rep.MaxHeld, old, n) {
				break
			}
		}
		return true
	}
	defer func() {
		if heldNow {
			atomicHeld.Add(-1)
		}
	}()
	switch spec.Kind {
	case "idle": // connect and say nothing
		go readAll()
	case "big-frame": // announce a large frame before any hello, send all but its last byte
		var hdr [5]byte
		binary.BigEndian.PutUint32(hdr[:], uint32(spec.Size))
		hdr[4] = proto.TDeploy
		c.Write(hdr[:])
		go readAll()
		go writeSlowly(c, spec.Size-2, stop)
	case "hello-idle": // say hello, then ask for the policy now and then
		if !hello() {
			return true
		}
		every := time.Duration(max(spec.Every, 100)) * time.Millisecond
		go func() {
			for {
				f, err := conn.Read()
				if err != nil {
					closed <- false
					return
				}
				if f.Type == proto.TPolicyReply {
					atomic.AddInt64(&rep.Requests, 1)
				}
			}
		}()
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(every):
				}
				if conn.Send(proto.TPolicy, nil, nil) != nil {
					return
				}
			}
		}()
	case "slow-upload": // hello, then an upload of Size bytes short of its last byte
		if !hello() {
			return true
		}
		var hdr [9]byte
		binary.BigEndian.PutUint32(hdr[:], uint32(spec.Size))
		hdr[4] = proto.TDeploy
		binary.BigEndian.PutUint32(hdr[5:], 2)
		c.Write(hdr[:])
		c.Write([]byte("{}"))
		go readAll()
		go writeSlowly(c, spec.Size-8, stop)
	case "garbage": // random bytes, then close
		b := make([]byte, 5+int(randUint(4096)))
		rand.Read(b)
		if randUint(2) == 0 {
			binary.BigEndian.PutUint32(b, uint32(randUint(64)))
		}
		c.Write(b)
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		io.Copy(io.Discard, c)
		return false
	case "http-keepalive": // one whole HTTP request on a kept-alive connection, then silence
		io.WriteString(c, "GET /policy HTTP/1.1\r\nHost: bento\r\nConnection: keep-alive\r\n\r\n")
		br := bufio.NewReader(c)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		c.SetReadDeadline(time.Time{})
		if err != nil {
			return false
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			atomic.AddInt64(&rep.Requests, 1)
		} else {
			return true // turned away with a 503
		}
		go func() {
			io.Copy(io.Discard, br)
			closed <- false
		}()
	case "slowloris": // an HTTP request whose headers never end
		io.WriteString(c, "GET /policy HTTP/1.1\r\nHost: bento\r\n")
		go readAll()
		go func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(time.Second):
				}
				if _, err := fmt.Fprintf(c, "X-%d: y\r\n", i); err != nil {
					return
				}
			}
		}()
	case "slow-reader": // invoke, then never read the output
		if !hello() {
			return true
		}
		conn.Send(proto.TInvoke, proto.Invoke{Token: spec.Token, Args: json.RawMessage(spec.Args)}, nil)
		go func() {
			// Never read; find out when the server gave up on us by
			// writing (a reset ends the writes).
			for {
				select {
				case <-stop:
					closed <- false
					return
				case <-time.After(500 * time.Millisecond):
				}
				c.SetWriteDeadline(time.Now().Add(time.Second))
				if err := conn.Send(proto.TInput, nil, []byte{0}); err != nil && !isTimeout(err) {
					closed <- false
					return
				}
			}
		}()
	case "input-flood": // invoke a function that never reads, then send input without end
		if !hello() {
			return true
		}
		conn.Send(proto.TInvoke, proto.Invoke{Token: spec.Token, Args: json.RawMessage(spec.Args)}, nil)
		go readAll()
		go func() {
			chunk := make([]byte, 256<<10)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if conn.Send(proto.TInput, nil, chunk) != nil {
					return
				}
			}
		}()
	case "attach-end": // attach at a finished session's end: the exit alone should come back
		if !hello() {
			return true
		}
		conn.Send(proto.TAttach, proto.Attach{Token: spec.Token, Session: spec.Session, Offset: spec.Offset}, nil)
		go func() {
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			for {
				f, err := conn.Read()
				switch {
				case err != nil:
					closed <- false
					return
				case f.Type == proto.TError:
					closed <- true
					return
				case f.Type == proto.TExit:
					atomic.AddInt64(&rep.Requests, 1)
					closed <- false
					return
				case f.Type != proto.TSession:
					closed <- false // output after the end: not counted as answered
					return
				}
			}
		}()
	default:
		fmt.Fprintln(os.Stderr, "attacker: unknown kind", spec.Kind)
		os.Exit(2)
	}
	select {
	case refused := <-closed:
		return refused
	case <-stop:
		return false
	}
}

// serve accepts connections on addr and hands each to handle, until stop.
func serve(addr string, stop <-chan struct{}, handle func(net.Conn)) int {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "attacker:", err)
		return 1
	}
	fmt.Println("listening") // the parent waits for this
	go func() { <-stop; ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			select {
			case <-stop:
				return 0
			default:
				time.Sleep(10 * time.Millisecond)
				continue
			}
		}
		go func() {
			defer c.Close()
			handle(c)
		}()
	}
}

// endlessBento plays a Bento server that streams output without end.
func endlessBento(c net.Conn) {
	conn := wire.NewConn(c)
	for {
		f, err := conn.Read()
		if err != nil {
			return
		}
		switch f.Type {
		case proto.THello:
			conn.Send(proto.TWelcome, proto.Welcome{Version: proto.Version, Server: "endless"}, nil)
		case proto.TInvoke:
			conn.Send(proto.TSession, proto.Session{Session: "s-endless"}, nil)
			chunk := make([]byte, 64<<10)
			for off := int64(0); ; {
				off += int64(len(chunk)) + 5
				if conn.Send(proto.TOutput, proto.Output{Offset: off}, chunk) != nil {
					return
				}
			}
		}
	}
}

// startServer runs a server kind of the attacker and waits until it
// listens; it returns its address.
func startServer(t *testing.T, kind string) string {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	a := startAttack(t, attackSpec{Kind: kind, Target: addr})
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(a.out.String(), "listening"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the attacker's %s server did not start: %s", kind, a.out.String())
		}
	}
	return addr
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// writeSlowly trickles n bytes: a byte a second, as slow senders do.
func writeSlowly(c net.Conn, n int, stop <-chan struct{}) {
	chunk := make([]byte, min(n, 64<<10))
	// Most of it at once (the buffer the server must not grow for free),
	// then the rest a byte at a time.
	for n > 1<<10 {
		k := min(n-1<<10, len(chunk))
		if _, err := c.Write(chunk[:k]); err != nil {
			return
		}
		n -= k
	}
	for ; n > 1; n-- {
		select {
		case <-stop:
			return
		case <-time.After(time.Second):
		}
		if _, err := c.Write([]byte{0}); err != nil {
			return
		}
	}
}

func randUint(n int) int {
	var b [4]byte
	rand.Read(b[:])
	return int(binary.BigEndian.Uint32(b[:]) % uint32(n))
}
