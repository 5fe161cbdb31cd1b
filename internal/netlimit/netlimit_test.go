package netlimit

import (
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// serve accepts on l and parks every connection until the test ends.
func serve(t *testing.T, l *Listener) chan net.Conn {
	got := make(chan net.Conn, 100)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(got)
				return
			}
			got <- c
		}
	}()
	t.Cleanup(func() { l.Close() })
	return got
}

func listen(t *testing.T, cfg Config) *Listener {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return New(ln, cfg)
}

func dialFrom(t *testing.T, ip string, addr net.Addr) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// refused reports whether the server closed c at once, and what it said.
func refused(c net.Conn) (bool, string) {
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false, ""
	}
	return true, string(b)
}

func TestPerAddress(t *testing.T) {
	l := listen(t, Config{Total: 100, PerAddr: 2, Refusal: func(why Reason) []byte { return []byte(why.String()) }})
	got := serve(t, l)
	a1, a2 := dialFrom(t, "127.0.0.2", l.Addr()), dialFrom(t, "127.0.0.2", l.Addr())
	<-got
	<-got
	a3 := dialFrom(t, "127.0.0.2", l.Addr())
	if ok, msg := refused(a3); !ok || !strings.Contains(msg, "from your address") {
		t.Fatalf("third connection from one address: refused %v, %q", ok, msg)
	}
	// Another address is served.
	dialFrom(t, "127.0.0.3", l.Addr())
	c := <-got
	if ok, _ := refused(a1); ok {
		t.Fatal("an admitted connection was closed")
	}
	// Closing one gives its slot back.
	c.Close()
	_ = a2
	st := l.Stats()
	if st.Open != 2 || st.RefusedPerAddr != 1 || st.Addresses != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestEvictsIdleWhenFull(t *testing.T) {
	l := listen(t, Config{Total: 3})
	got := serve(t, l)
	var served []net.Conn
	for i := 0; i < 3; i++ {
		dialFrom(t, "127.0.0."+string(rune('2'+i)), l.Addr())
		served = append(served, <-got)
	}
	// The first two are busy, the third idle: a newcomer evicts the third.
	SetIdle(served[0], false)
	SetIdle(served[1], false)
	time.Sleep(UnprovenGrace) // it had its moment to say hello
	newcomer := dialFrom(t, "127.0.0.9", l.Addr())
	<-got
	if _, err := served[2].Read(make([]byte, 1)); err == nil {
		t.Fatal("the idle connection was not closed")
	}
	if ok, _ := refused(newcomer); ok {
		t.Fatal("the newcomer was refused although an idle connection could go")
	}
	// All busy now: the next one is refused (a reset, nothing to say).
	l.mu.Lock()
	for c := range l.conns {
		SetIdle(c, false)
	}
	l.mu.Unlock()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.10")}}
	if late, err := d.Dial("tcp", l.Addr().String()); err == nil {
		if ok, _ := refused(late); !ok {
			t.Fatal("a connection over the total was served with nobody idle")
		}
		late.Close()
	}
	if st := l.Stats(); st.Evicted != 1 || st.RefusedTotal != 1 || st.Open != 3 {
		t.Fatalf("stats %+v", st)
	}
}

// flakyListener fails Accept with err (EMFILE by default) a few times.
type flakyListener struct {
	net.Listener
	mu    sync.Mutex
	fails int
	err   syscall.Errno
}

func (f *flakyListener) Accept() (net.Conn, error) {
	f.mu.Lock()
	if f.fails > 0 {
		f.fails--
		f.mu.Unlock()
		err := f.err
		if err == 0 {
			err = syscall.EMFILE
		}
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", err)}
	}
	f.mu.Unlock()
	return f.Listener.Accept()
}

func TestAcceptErrorsAreNotFatal(t *testing.T) {
	// Out of descriptors (per process, system-wide), out of kernel
	// buffers, a connection aborted before it was accepted: each backed
	// off from and retried, never fatal.
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		t.Run(errno.Error(), func(t *testing.T) {
			ln, err := Listen("127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			l := New(&flakyListener{Listener: ln, fails: 5, err: errno}, Config{Total: 10})
			got := serve(t, l)
			dialFrom(t, "127.0.0.1", ln.Addr())
			select {
			case c := <-got:
				if c == nil {
					t.Fatal("Accept gave up")
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no connection after the accept errors")
			}
			if st := l.Stats(); st.AcceptErrors != 5 {
				t.Fatalf("stats %+v", st)
			}
			l.Close()
			if _, ok := <-got; ok {
				t.Fatal("Accept went on after Close")
			}
		})
	}
}

func TestAddrKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7:1":             "192.0.2.7",
		"[::ffff:192.0.2.7]:1":    "192.0.2.7",
		"[2001:db8:1:2:3::4]:80":  "2001:db8:1::/56",
		"[2001:db8:1:ff:ff::]:80": "2001:db8:1::/56",
		"[2001:db8:1:100::1]:80":  "2001:db8:1:100::/56",
	} {
		a, _ := net.ResolveTCPAddr("tcp", in)
		if got := AddrKey(a); got != want {
			t.Errorf("AddrKey(%s) = %s, want %s", in, got, want)
		}
	}
}

// TestProvenLast: connections that said a valid hello are closed for a
// newcomer only after those that did not, and only once idle for
// ProvenGrace.
func TestProvenLast(t *testing.T) {
	l := listen(t, Config{Total: 2})
	got := serve(t, l)
	dialFrom(t, "127.0.0.2", l.Addr())
	old := <-got
	Prove(old)
	time.Sleep(10 * time.Millisecond)
	dialFrom(t, "127.0.0.3", l.Addr())
	fresh := <-got // newer, never proven
	time.Sleep(UnprovenGrace)
	dialFrom(t, "127.0.0.4", l.Addr())
	<-got
	if _, err := fresh.Read(make([]byte, 1)); err == nil {
		t.Fatal("the unproven connection was not the one closed")
	}
	old.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := old.Read(make([]byte, 1)); !isTimeout(err) {
		t.Fatalf("the proven connection was closed: %v", err)
	}
	// All proven and idle for less than the grace: a newcomer is refused.
	l.mu.Lock()
	for c := range l.conns {
		c.proven.Store(true)
		c.idleSince.Store(time.Now().UnixNano())
	}
	l.mu.Unlock()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.5")}}
	if c, err := d.Dial("tcp", l.Addr().String()); err == nil {
		if ok, _ := refused(c); !ok {
			t.Fatal("a proven connection idle for a moment was closed for a newcomer")
		}
		c.Close()
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestFairShareEviction: when the total is reached, an address under its
// fair share gets a connection of the address holding the most, even a
// busy one; an address over its share does not.
func TestFairShareEviction(t *testing.T) {
	l := listen(t, Config{Total: 4})
	got := serve(t, l)
	var hog []net.Conn
	for i := 0; i < 4; i++ {
		dialFrom(t, "127.0.0.2", l.Addr())
		c := <-got
		Prove(c)
		SetIdle(c, false) // busy: mid-request
		hog = append(hog, c)
	}
	dialFrom(t, "127.0.0.3", l.Addr())
	Prove(<-got)
	closed := 0
	for _, c := range hog {
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); !isTimeout(err) {
			closed++
		}
	}
	if closed != 1 {
		t.Fatalf("%d of the hog's connections closed for a newcomer under its share, want 1", closed)
	}
	// The hog, now at 3 of 4, is over its share of 2: it gets nothing.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	if c, err := d.Dial("tcp", l.Addr().String()); err == nil {
		if ok, _ := refused(c); !ok {
			t.Fatal("an address over its share displaced another's connection")
		}
		c.Close()
	}
}

// TestRate: an address connecting faster than its rate is reset at once
// beyond its burst; another address is not.
func TestRate(t *testing.T) {
	l := listen(t, Config{Total: 100, Rate: 1, Burst: 3})
	got := serve(t, l)
	for i := 0; i < 3; i++ {
		dialFrom(t, "127.0.0.2", l.Addr())
		<-got
	}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	if c, err := d.Dial("tcp", l.Addr().String()); err == nil {
		if ok, _ := refused(c); !ok {
			t.Fatal("the 4th connection in a burst of 3 was served")
		}
		c.Close()
	}
	dialFrom(t, "127.0.0.3", l.Addr())
	<-got
	if st := l.Stats(); st.RefusedRate != 1 || st.Accepted != 4 {
		t.Fatalf("stats %+v", st)
	}
}

// TestTotalIsACeiling: while newcomers evict idle connections, the count
// of open connections never shows more than the total, not even between
// a victim's choice and its close (the victim's room is the newcomer's
// from the moment it is chosen).
func TestTotalIsACeiling(t *testing.T) {
	const total = 8
	l := listen(t, Config{Total: total})
	got := serve(t, l)
	go func() {
		for range got { // parked: idle, never a hello
		}
	}()
	stop := make(chan struct{})
	peak := make(chan int)
	go func() {
		m := 0
		for {
			select {
			case <-stop:
				peak <- m
				return
			default:
			}
			m = max(m, l.Stats().Open)
		}
	}()
	var wg sync.WaitGroup
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(1+i%200))}, Timeout: 5 * time.Second}
			if c, err := d.Dial("tcp", l.Addr().String()); err == nil {
				time.Sleep(2 * UnprovenGrace)
				c.Close()
			}
		}()
		if i%20 == 19 {
			time.Sleep(UnprovenGrace) // idle long enough to be evicted
		}
	}
	wg.Wait()
	close(stop)
	if m := <-peak; m > total {
		t.Fatalf("%d connections counted open at once, over the total of %d", m, total)
	}
	if st := l.Stats(); st.Evicted == 0 {
		t.Fatalf("nobody was evicted: the test proves nothing (%+v)", st)
	}
}

// TestShortLowersOnce: a flood makes accept fail with EMFILE many times
// a second; the limit is lowered once per UnprovenGrace, not at each
// failure (which took it to one at once, where every newcomer, an honest
// one too, needed a victim to get in).
func TestShortLowersOnce(t *testing.T) {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	l := New(ln, Config{Total: 512})
	l.mu.Lock()
	l.open = 100
	l.mu.Unlock()
	var delay time.Duration
	for range 4 { // 5+10+20+40 ms of back-off: within UnprovenGrace
		l.acceptFailed(syscall.EMFILE, &delay, func() {})
	}
	l.mu.Lock()
	got := l.limit
	l.open = 0
	l.mu.Unlock()
	if got != 84 {
		t.Fatalf("limit after four failures within %s: %d, want 84 (100 open, less 16, once)", UnprovenGrace, got)
	}
}
