// Package netlimit bounds what clients can make a daemon hold through a
// listener: a total number of connections served at once, a number per
// client address, and an accept loop that survives running out of file
// descriptors or kernel buffers (EMFILE, ENFILE, ENOBUFS, ENOMEM) by
// backing off and shedding the pending connection, as nginx and Go's
// net/http do, instead of failing.
//
// A connection over its address's share is accepted and closed at once
// (after an optional Reject hook has told it why), so the kernel's backlog
// never fills with connections nobody will serve and honest clients get a
// prompt answer instead of a hang. When the total is reached, the
// connection that has been idle longest (one that has not said what it
// wants, or waits between requests; see SetIdle) is closed to make room:
// a crowd of idle connections from many addresses cannot lock newcomers
// out, it can only churn itself; and among connections that proved they
// speak the protocol, the addresses holding the most give way first.
package netlimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Reason says why a connection was refused.
type Reason int

// Reasons for refusing a connection.
const (
	TooMany        Reason = iota + 1 // the listener serves its total already
	TooManyFromYou                   // the client's address holds its share already
	TooFast                          // the client's address connects faster than its rate
)

func (r Reason) String() string {
	switch r {
	case TooMany:
		return "too many connections to this server; retry later"
	case TooManyFromYou:
		return "too many connections from your address; close some and retry"
	case TooFast:
		return "too many new connections from your address; slow down"
	}
	return "refused"
}

// Config sets a listener's limits.
type Config struct {
	// Name names the listener in logs ("client", "policy").
	Name string
	// Total bounds the connections served at once (0: unlimited).
	Total int
	// PerAddr bounds the connections one client address holds at once
	// (0: unlimited). Addresses are counted by Key.
	PerAddr int
	// Rate and Burst bound how fast one address may open connections (a
	// token bucket per address, as tor's DoSConnectionConnectRate): beyond
	// it, connections are reset at once, the cheapest refusal there is, so
	// that a flood drains from the kernel's backlog quickly and honest
	// clients' connections behind it wait little. 0: no bound.
	Rate  float64
	Burst int
	// Key maps a remote address to the unit PerAddr counts: by default an
	// IPv4 address, or an IPv6 /64 (one host's usual share).
	Key func(net.Addr) string
	// Refusal, if set, gives the bytes written to a refused connection
	// before it is closed, to tell the client why (they must fit a socket
	// buffer: they are written once, without waiting). An address refused
	// less than a second ago is reset without a word.
	Refusal func(why Reason) []byte
	// KernelDrop: an address over its Rate also has its new connections
	// dropped by the kernel, before the handshake, for DropFor (see
	// kdrop.go). Only on a TCP listener accepted on the raw path.
	KernelDrop bool
	// RecvBuffer, if set, fixes the receive buffer of a TCP listener's
	// connections (SO_RCVBUF, set on the listener so that every accepted
	// connection inherits it before its first byte): the kernel's memory
	// for a connection whose bytes wait to be read, and so the data a
	// stalled upload or an unread request can park in the kernel, stays
	// bounded instead of growing with TCP's autotuning (up to tcp_rmem's
	// maximum, megabytes a connection). 0: the kernel's autotuning.
	RecvBuffer int
	// Log receives rate-limited warnings (nil: no logging).
	Log *slog.Logger
}

// Stats are a listener's counters.
type Stats struct {
	Open           int   `json:"open"`             // connections being served
	Addresses      int   `json:"addresses"`        // distinct client addresses among them
	Accepted       int64 `json:"accepted"`         // connections handed to the server
	RefusedTotal   int64 `json:"refused_total"`    // refused: the total was reached
	RefusedPerAddr int64 `json:"refused_per_addr"` // refused: the address's share was reached
	RefusedRate    int64 `json:"refused_rate"`     // refused: the address connected too fast
	Evicted        int64 `json:"evicted"`          // idle connections closed to make room
	AcceptErrors   int64 `json:"accept_errors"`    // accept failures (out of descriptors and the like)
	DropPeriods    int64 `json:"drop_periods"`     // times an address over its rate began to be dropped in the kernel
	Dropped        int   `json:"dropped"`          // addresses the kernel drops now
	BytesIn        int64 `json:"bytes_in"`         // bytes read from its connections
	BytesOut       int64 `json:"bytes_out"`        // bytes written to them
}

// AddCounts adds o's counters (not its gauges, Open, Addresses and
// Dropped) to s: the counts of a listener that went on from another's.
func (s *Stats) AddCounts(o Stats) {
	s.Accepted += o.Accepted
	s.RefusedTotal += o.RefusedTotal
	s.RefusedPerAddr += o.RefusedPerAddr
	s.RefusedRate += o.RefusedRate
	s.Evicted += o.Evicted
	s.AcceptErrors += o.AcceptErrors
	s.DropPeriods += o.DropPeriods
	s.BytesIn += o.BytesIn
	s.BytesOut += o.BytesOut
}

// Listener wraps a net.Listener with the limits of a Config.
type Listener struct {
	ln  net.Listener
	cfg Config

	mu     sync.Mutex
	open   int
	limit  int       // the total in force: Total, lowered while descriptors run short
	short  time.Time // when descriptors last ran short
	byAddr map[string]int
	conns  map[*conn]struct{}
	rates  map[string]*addrRate // by address: its token bucket and last refusal
	noneAt time.Time            // when a search for room last found none
	spare  *os.File             // a reserved descriptor, given up to shed a connection on EMFILE

	// pollable is a duplicate of a TCP listener's descriptor that the
	// runtime's poller waits on (nil if the listener is not TCP or the
	// duplicate could not be made pollable): the raw accept path waits
	// for connections as every other goroutine waits for its socket,
	// never in a blocking system call that holds one of the runtime's few
	// processors. It accepts on the listener's own descriptor (lrc), so a
	// listener its owner closes directly stops accepting at once.
	pollable *os.File
	raw      syscall.RawConn // pollable's
	lrc      syscall.RawConn // the listener's
	dupOnce  sync.Once
	drop     *dropper // with KernelDrop on the raw path

	accepted, refusedTotal, refusedPerAddr, refusedRate, evicted, acceptErrors, bytesIn, bytesOut atomic.Int64

	closed   atomic.Bool
	warnMu   sync.Mutex
	lastWarn map[string]time.Time // by message
}

// Listen opens a plain TCP listener for New. Go's listeners are
// Multipath TCP by default where the kernel has it, and an MPTCP socket
// takes no socket filter (KernelDrop); a client of a Bento server gains
// nothing from several paths (it comes through tor, or once).
func Listen(addr string) (net.Listener, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	return lc.Listen(context.Background(), "tcp", addr)
}

// New wraps ln.
func New(ln net.Listener, cfg Config) *Listener {
	if cfg.Key == nil {
		cfg.Key = AddrKey
	}
	l := &Listener{ln: ln, cfg: cfg, limit: cfg.Total, byAddr: map[string]int{}, conns: map[*conn]struct{}{}, rates: map[string]*addrRate{}}
	l.spare, _ = os.Open(os.DevNull)
	if tl, ok := ln.(*net.TCPListener); ok {
		var err error
		if l.pollable, l.raw, l.lrc, err = pollableDup(tl); err != nil {
			l.warn("accepting through the generic path (refused connections cost a net.Conn)", "err", err)
		}
		if cfg.KernelDrop && l.lrc != nil {
			l.drop = newDropper(l.lrc, l.warn)
		}
		if cfg.RecvBuffer > 0 {
			if err := setRecvBuffer(tl, cfg.RecvBuffer); err != nil {
				l.warn("connections keep the kernel's receive buffers (autotuned)", "err", err)
			}
		}
	}
	return l
}

// setRecvBuffer sets SO_RCVBUF on a listening socket: Linux copies it,
// and the lock that stops autotuning, to every connection accepted from
// it, and sizes the window the connection's handshake offers by it.
func setRecvBuffer(tl *net.TCPListener, n int) error {
	rc, err := tl.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, n)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("setting the receive buffer to %d bytes: %w", n, serr)
	}
	return nil
}

// pollableDup duplicates a TCP listener's descriptor as a file the
// runtime's poller waits on (the listener's RawConn cannot wait for
// readability: Read is not offered for listeners). The duplicate shares
// the listener's non-blocking open file, so os.NewFile registers it with
// the poller; a file that could not be registered (it does not take
// deadlines) is given up.
func pollableDup(tl *net.TCPListener) (*os.File, syscall.RawConn, syscall.RawConn, error) {
	rc, err := tl.SyscallConn()
	if err != nil {
		return nil, nil, nil, err
	}
	dup := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, nil, nil, err
	}
	if derr != nil {
		return nil, nil, nil, fmt.Errorf("duplicating the listener: %w", derr)
	}
	f := os.NewFile(uintptr(dup), "listener")
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		f.Close()
		return nil, nil, nil, fmt.Errorf("the runtime's poller does not take the listener: %w", err)
	}
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, nil, nil, err
	}
	return f, raw, rc, nil
}

// probeEvery is how often an Accept that waits checks that the listener
// is still open (its owner may have closed it directly, not through
// Close): the duplicate would otherwise keep the port bound.
const probeEvery = time.Second

// closeDup gives up the duplicate descriptor.
func (l *Listener) closeDup() {
	l.dupOnce.Do(func() {
		l.pollable.Close()
		if l.drop != nil {
			l.drop.close()
		}
	})
}

// AddrKey is the default per-address key: the IP address for IPv4 (and
// IPv4-mapped IPv6), the /56 prefix for IPv6 (what one subscriber line is
// commonly given), the whole string otherwise.
func AddrKey(a net.Addr) string {
	var ip netip.Addr
	switch t := a.(type) {
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(t.IP)
	case *net.UDPAddr:
		ip, _ = netip.AddrFromSlice(t.IP)
	default:
		return a.String()
	}
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(56)
		return p.String()
	}
	return ip.String()
}

// Name returns the listener's name (Config.Name).
func (l *Listener) Name() string { return l.cfg.Name }

// Addr returns the listener's address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// isClosed reports whether Close was called.
func (l *Listener) isClosed() bool { return l.closed.Load() }

// Close closes the listener; connections already handed out stay open.
func (l *Listener) Close() error {
	l.closed.Store(true)
	l.mu.Lock()
	if l.spare != nil {
		l.spare.Close()
		l.spare = nil
	}
	l.mu.Unlock()
	if l.pollable != nil {
		l.closeDup() // wakes an Accept waiting on it
	}
	return l.ln.Close()
}

// Stats returns the listener's counters.
func (l *Listener) Stats() Stats {
	l.mu.Lock()
	open, addrs := l.open, len(l.byAddr)
	l.mu.Unlock()
	st := Stats{Open: open, Addresses: addrs, Accepted: l.accepted.Load(), RefusedTotal: l.refusedTotal.Load(),
		RefusedPerAddr: l.refusedPerAddr.Load(), RefusedRate: l.refusedRate.Load(), Evicted: l.evicted.Load(), AcceptErrors: l.acceptErrors.Load(),
		BytesIn: l.bytesIn.Load(), BytesOut: l.bytesOut.Load()}
	if l.drop != nil {
		st.DropPeriods, st.Dropped = l.drop.periods.Load(), int(l.drop.attached.Load())
	}
	return st
}

// Accept returns the next connection within the limits. Connections over
// a limit are refused here and never returned. Accept fails only when the
// listener is closed: every other error (out of descriptors, out of kernel
// memory, an aborted connection) is logged, backed off from and retried.
func (l *Listener) Accept() (net.Conn, error) {
	if l.raw != nil {
		return l.acceptRaw()
	}
	var delay time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil, err
			}
			l.acceptFailed(err, &delay, l.shed)
			continue
		}
		delay = 0
		key := l.cfg.Key(c.RemoteAddr())
		lc, why, quiet := l.admit(key)
		if why == 0 {
			l.mu.Lock()
			lc.Conn, lc.ready = c, true
			l.mu.Unlock()
			l.accepted.Add(1)
			return lc, nil
		}
		if l.cfg.Refusal != nil && !quiet {
			_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			_, _ = c.Write(l.cfg.Refusal(why))
		} else if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // a reset: nothing to say, no TIME_WAIT to keep
		}
		c.Close()
	}
}

// acceptRaw accepts on the listener's descriptor itself: a connection
// that is refused (a flood's, mostly) costs accept and close and perhaps
// one write, never a registration with the runtime's poller, keepalive
// settings or a net.Conn; only admitted ones become net.Conns.
func (l *Listener) acceptRaw() (net.Conn, error) {
	var delay time.Duration
	for {
		nfd := -1
		var sa unix.Sockaddr
		var aerr error
		closed := false
		// Read waits, in the runtime's poller, until a connection is
		// pending (or a while has passed), then accepts it on the
		// listener's own descriptor (EAGAIN: another took it, wait again).
		_ = l.pollable.SetReadDeadline(time.Now().Add(probeEvery))
		err := l.raw.Read(func(uintptr) bool {
			if cerr := l.lrc.Control(func(fd uintptr) {
				nfd, sa, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			}); cerr != nil {
				closed = true // by its owner, directly
				return true
			}
			return aerr != unix.EAGAIN
		})
		if closed || l.isClosed() {
			if nfd >= 0 {
				unix.Close(nfd)
			}
			l.closeDup()
			return nil, net.ErrClosed
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue // the next Read probes the listener first
			}
			if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
				l.closeDup()
				return nil, net.ErrClosed
			}
			aerr = err
		}
		if aerr == unix.EINTR || aerr == unix.ECONNABORTED {
			continue
		}
		if aerr != nil {
			l.acceptFailed(aerr, &delay, func() { l.shedRaw(l.lrc) })
			continue
		}
		delay = 0
		addr := sockaddrTCP(sa)
		lc, why, quiet := l.admit(l.cfg.Key(addr))
		if why == TooFast && l.drop != nil {
			if ip, ok := netip.AddrFromSlice(addr.(*net.TCPAddr).IP); ok {
				l.drop.add(ip, time.Now())
			}
		}
		if why != 0 {
			if l.cfg.Refusal != nil && !quiet {
				_, _ = unix.Write(nfd, l.cfg.Refusal(why))
			} else {
				_ = unix.SetsockoptLinger(nfd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
			}
			unix.Close(nfd)
			continue
		}
		if l.drop != nil {
			l.drop.release(nfd)
		}
		c, err := l.fileConn(nfd)
		if err != nil {
			l.release(lc)
			if tooManyFiles(err) {
				// The newcomer is lost (closed with the descriptor), but
				// the next is not: the limit comes down and an idle
				// connection makes room, as when accept itself fails.
				l.acceptFailed(err, &delay, func() {})
			}
			continue
		}
		l.mu.Lock()
		lc.Conn, lc.ready = c, true
		l.mu.Unlock()
		l.accepted.Add(1)
		return lc, nil
	}
}

// fileConn makes the accepted descriptor nfd a net.Conn (a duplicate the
// runtime's poller owns) and closes nfd. The duplicate needs a descriptor
// of its own: when accept took the last one, it fails with EMFILE and the
// connection would be closed as soon as it was accepted, silently, with
// nothing lowering the limit or making room (accept never failed, so
// acceptFailed was never called), and every newcomer, an honest one too,
// met the same fate for as long as the flood held the rest: the spare
// descriptor is given up for the duplicate, then taken back in the slot
// nfd leaves.
func (l *Listener) fileConn(nfd int) (net.Conn, error) {
	f := os.NewFile(uintptr(nfd), "tcp")
	c, err := net.FileConn(f)
	if short := err; err != nil && tooManyFiles(err) {
		l.mu.Lock()
		if l.spare != nil {
			l.spare.Close()
			l.spare = nil
			c, err = net.FileConn(f)
		}
		l.mu.Unlock()
		if err == nil {
			// Short all the same: the limit comes down and an idle
			// connection gives way before the next newcomer finds no
			// spare.
			f.Close()
			l.takeSpare()
			l.acceptErrors.Add(1)
			l.shortOfDescriptors(short)
			return c, nil
		}
	}
	f.Close()
	l.takeSpare()
	return c, err
}

// takeSpare reserves the spare descriptor again if it was given up.
func (l *Listener) takeSpare() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.spare == nil && !l.isClosed() {
		l.spare, _ = os.Open(os.DevNull)
	}
}

// tooManyFiles reports whether err says the process or the system is out
// of file descriptors.
func tooManyFiles(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// acceptFailed handles an accept error other than a closed listener: out
// of descriptors, it serves fewer connections for a while (so the rest of
// the daemon, its files and its instances, has descriptors) and lets an
// idle connection give its descriptor up for the newcomer, or, with none
// idle, sheds the newcomer; any other error, or no idle connection, is
// backed off from (5 ms doubling to a second), never returned.
func (l *Listener) acceptFailed(err error, delay *time.Duration, shed func()) {
	l.acceptErrors.Add(1)
	if tooManyFiles(err) {
		if l.shortOfDescriptors(err) {
			return
		}
		shed()
	}
	if *delay == 0 {
		*delay = 5 * time.Millisecond
	} else if *delay *= 2; *delay > time.Second {
		*delay = time.Second
	}
	l.warn("accept failed; backing off", "err", err, "delay", *delay)
	time.Sleep(*delay)
}

// shortOfDescriptors serves fewer connections for a while, so the rest
// of the daemon (its files, its instances) has descriptors, and closes an
// idle connection to make room for the next newcomer, if one may be
// closed (it reports whether one was).
func (l *Listener) shortOfDescriptors(err error) bool {
	l.mu.Lock()
	// Fewer connections, once per UnprovenGrace at most: a flood makes
	// accept fail hundreds of times a second, and lowering at each
	// failure took the limit to one within moments, where every newcomer,
	// an honest one too, needs a victim to get in.
	if time.Since(l.short) > UnprovenGrace {
		l.limit = max(1, min(l.limit, l.open)-16)
	}
	l.short = time.Now()
	victim := l.victimLocked("")
	l.mu.Unlock()
	l.warn("out of file descriptors: serving fewer connections for a while (raise the descriptor limit)", "err", err)
	if victim == nil {
		return false
	}
	l.evicted.Add(1)
	victim.Close()
	return true
}

// shedRaw is shed for the raw accept path.
func (l *Listener) shedRaw(rc syscall.RawConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.spare == nil {
		return
	}
	l.spare.Close()
	l.spare = nil
	_ = rc.Control(func(fd uintptr) {
		if nfd, _, err := unix.Accept4(int(fd), unix.SOCK_CLOEXEC); err == nil {
			unix.Close(nfd)
		}
	})
	l.spare, _ = os.Open(os.DevNull)
}

func sockaddrTCP(sa unix.Sockaddr) net.Addr {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]).To16(), Port: a.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	}
	return &net.TCPAddr{}
}

// shed gives up the spare descriptor to accept and close the connection
// that could not be accepted, so that its client learns at once, then
// takes the descriptor back.
func (l *Listener) shed() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.spare == nil {
		return
	}
	l.spare.Close()
	l.spare = nil
	if tl, ok := l.ln.(*net.TCPListener); ok {
		_ = tl.SetDeadline(time.Now().Add(time.Millisecond))
		if c, err := tl.Accept(); err == nil {
			c.Close()
		}
		_ = tl.SetDeadline(time.Time{})
	}
	l.spare, _ = os.Open(os.DevNull)
}

// admit counts a connection from key in (the conn it returns needs its
// Conn set), or says why not and whether to say nothing.
func (l *Listener) admit(key string) (*conn, Reason, bool) {
	t := time.Now()
	now := t.UnixNano()
	l.mu.Lock()
	why := Reason(0)
	var victims []*conn
	ar := l.rateLocked(key, t)
	switch {
	case l.cfg.Rate > 0 && !ar.take(t, l.cfg.Rate, float64(max(l.cfg.Burst, 1))):
		why = TooFast
	case l.cfg.PerAddr > 0 && l.byAddr[key] >= l.cfg.PerAddr:
		why = TooManyFromYou
	case l.cfg.Total > 0 && l.open >= l.limitLocked():
		// A search that just found no room is not repeated for every
		// newcomer of a flood that is over its fair share anyway.
		addrs := len(l.byAddr)
		if l.byAddr[key] == 0 {
			addrs++
		}
		overShare := l.byAddr[key]+1 > (l.limit+addrs-1)/max(1, addrs)
		if !overShare || t.Sub(l.noneAt) > 20*time.Millisecond {
			for l.open >= l.limit {
				v := l.victimLocked(key)
				if v == nil {
					break
				}
				victims = append(victims, v)
			}
			if len(victims) == 0 {
				l.noneAt = t
			}
		}
		if len(victims) == 0 {
			why = TooMany
		}
	}
	quiet := false // say nothing to an address refused a moment ago
	if why != 0 {
		quiet = t.Sub(ar.refused) < time.Second
		ar.refused = t
	}
	var lc *conn
	if why == 0 {
		l.open++
		l.byAddr[key]++
		lc = &conn{l: l, key: key}
		lc.idleSince.Store(now) // idle until the server says otherwise
		l.conns[lc] = struct{}{}
	}
	l.mu.Unlock()
	for _, v := range victims {
		l.evicted.Add(1)
		l.warn("connection limit reached; closing the connections idle longest", "listener", l.cfg.Name, "limit", l.cfg.Total)
		v.Close()
	}
	if why == 0 {
		return lc, 0, false
	}
	switch why {
	case TooMany:
		l.refusedTotal.Add(1)
		if l.warnDue("connection limit reached; refusing connections") {
			l.warn("connection limit reached; refusing connections", append([]any{"listener", l.cfg.Name, "limit", l.cfg.Total}, l.census()...)...)
		}
	case TooFast:
		l.refusedRate.Add(1)
	default:
		l.refusedPerAddr.Add(1)
	}
	return nil, why, quiet
}

// addrRate is one address's connection rate.
type addrRate struct {
	tokens  float64
	last    time.Time
	refused time.Time // last refusal of any kind
}

// take spends a token, if the bucket (rate per second, burst) has one.
func (a *addrRate) take(now time.Time, rate, burst float64) bool {
	a.tokens = min(burst, a.tokens+now.Sub(a.last).Seconds()*rate)
	a.last = now
	if a.tokens < 1 {
		return false
	}
	a.tokens--
	return true
}

// maxRates bounds the addresses whose rate is remembered: beyond it the
// quietest are forgotten (they start again with a full bucket).
const maxRates = 1 << 16

// rateLocked returns key's rate record, making one with a full bucket.
func (l *Listener) rateLocked(key string, now time.Time) *addrRate {
	ar := l.rates[key]
	if ar == nil {
		if len(l.rates) >= maxRates {
			for k, r := range l.rates {
				if now.Sub(r.last) > time.Minute || len(l.rates) >= maxRates {
					delete(l.rates, k)
				}
				if len(l.rates) < maxRates*3/4 {
					break
				}
			}
		}
		ar = &addrRate{tokens: float64(max(l.cfg.Burst, 1)), last: now}
		l.rates[key] = ar
	}
	return ar
}

// limitLocked returns the total in force: after descriptors ran short it
// doubles every 2 quiet seconds until it is Total again.
func (l *Listener) limitLocked() int {
	if l.limit < l.cfg.Total && time.Since(l.short) > 2*time.Second {
		l.limit = min(l.cfg.Total, 2*l.limit)
		l.short = time.Now()
	}
	return l.limit
}

// Grace periods before a connection may be closed for just any newcomer:
// one that has not said a valid hello yet gets a moment to say it (an
// honest client does at once), one that has gets longer.
const (
	UnprovenGrace = 250 * time.Millisecond
	ProvenGrace   = time.Second
)

// victimLocked picks the connection to close for a newcomer from address
// key ("" when making room for no one in particular), and marks it so no
// other newcomer picks it too:
//
//   - an idle connection that has not proved it speaks the protocol (said
//     a valid hello) within UnprovenGrace, the one idle longest;
//   - else, for a newcomer whose address would hold no more than its fair
//     share of the total (the total over the addresses connected), a
//     connection of the address holding the most, if that is more than the
//     newcomer's would and at least its fair share: unproven ones first,
//     then idle ones, then busy ones. Shares of the total follow addresses, so many connections of a
//     few addresses, or of one attacker's many, cannot crowd out an honest
//     client;
//   - else the proven connection idle longest, if idle for ProvenGrace.
func (l *Listener) victimLocked(key string) *conn {
	mine := l.byAddr[key] + 1
	addrs := len(l.byAddr)
	if l.byAddr[key] == 0 {
		addrs++
	}
	fair := (l.limit + addrs - 1) / max(1, addrs)
	now := time.Now().UnixNano()
	// Each connection's idle time is read once: it changes under us as
	// the server serves it, and only the value read decides.
	type cand struct {
		c    *conn
		t    int64 // idle since (0: busy)
		rank int   // among an address's own: unproven, idle, busy
	}
	var unproven, fattest, oldest cand
	for c := range l.conns {
		if c.evicting || !c.ready { // not yet handed out: nothing to close
			continue
		}
		t := c.idleSince.Load()
		proven := c.proven.Load()
		x := cand{c: c, t: t, rank: 2}
		switch {
		case !proven:
			x.rank = 0
		case t != 0:
			x.rank = 1
		}
		if t != 0 && !proven && now-t >= int64(UnprovenGrace) && (unproven.c == nil || t < unproven.t) {
			unproven = x
		}
		if key != "" && mine <= fair {
			// Only from an address at or over its fair share, and holding
			// more than the newcomer's would.
			if n := l.byAddr[c.key]; n > mine && n >= fair {
				if fattest.c == nil || n > l.byAddr[fattest.c.key] || n == l.byAddr[fattest.c.key] && x.rank < fattest.rank {
					fattest = x
				}
			}
		}
		if t != 0 && proven && now-t >= int64(ProvenGrace) && (oldest.c == nil || t < oldest.t) {
			oldest = x
		}
	}
	for i, v := range []cand{unproven, fattest, oldest} {
		if v.c == nil {
			continue
		}
		// The idle rules take a connection only if it is still idle (the
		// server may have started a request on it since it was read). The
		// fair-share rule takes busy connections too: its choice of an
		// idle one is a preference, and a connection that has just become
		// busy must not leave a newcomer under its share without room.
		if i != 1 && v.t != 0 && !v.c.idleSince.CompareAndSwap(v.t, 0) {
			continue
		}
		v.c.idleSince.Store(0)
		v.c.evicting = true
		// Its room is the newcomer's from now: the caller closes it as
		// soon as it lets go of the lock, and the counts must never show
		// the two at once (the total is a ceiling, not an average).
		l.uncountLocked(v.c)
		return v.c
	}
	return nil
}

// uncountLocked takes c out of the open and per-address counts.
func (l *Listener) uncountLocked(c *conn) {
	l.open--
	if l.byAddr[c.key]--; l.byAddr[c.key] <= 0 {
		delete(l.byAddr, c.key)
	}
}

func (l *Listener) release(c *conn) {
	l.mu.Lock()
	delete(l.conns, c)
	if !c.evicting { // an evicted one was uncounted when chosen
		l.uncountLocked(c)
	}
	l.mu.Unlock()
}

// warnDue says whether warn would log msg now.
func (l *Listener) warnDue(msg string) bool {
	l.warnMu.Lock()
	defer l.warnMu.Unlock()
	return time.Since(l.lastWarn[msg]) >= 10*time.Second
}

// census describes the connections held, for a warning: what the
// eviction rules had to choose from.
func (l *Listener) census() []any {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now().UnixNano()
	var busy, idle, unproven, evicting, idleProven1s int
	for c := range l.conns {
		t := c.idleSince.Load()
		switch {
		case c.evicting:
			evicting++
		case !c.proven.Load():
			unproven++
		case t == 0:
			busy++
		default:
			idle++
			if now-t >= int64(ProvenGrace) {
				idleProven1s++
			}
		}
	}
	most := 0
	for _, n := range l.byAddr {
		most = max(most, n)
	}
	return []any{"current_limit", l.limit, "open", l.open, "addresses", len(l.byAddr), "most_from_one_address", most,
		"busy", busy, "idle", idle, "idle_over_1s", idleProven1s, "unproven", unproven, "evicting", evicting}
}

// warn logs each message at most once every ten seconds.
func (l *Listener) warn(msg string, args ...any) {
	if l.cfg.Log == nil {
		return
	}
	l.warnMu.Lock()
	if l.lastWarn == nil {
		l.lastWarn = map[string]time.Time{}
	}
	if time.Since(l.lastWarn[msg]) < 10*time.Second {
		l.warnMu.Unlock()
		return
	}
	l.lastWarn[msg] = time.Now()
	l.warnMu.Unlock()
	l.cfg.Log.Warn(msg, args...)
}

// conn gives its slot back when closed.
type conn struct {
	net.Conn
	l         *Listener
	key       string
	once      sync.Once
	idleSince atomic.Int64 // unix nanoseconds; 0 while busy
	proven    atomic.Bool  // it said a valid hello: closed for newcomers last
	evicting  bool         // chosen to make room (guarded by the listener's mu)
	ready     bool         // Conn is set (guarded by the listener's mu)
}

func (c *conn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.l.bytesIn.Add(int64(n))
	return n, err
}

func (c *conn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.l.bytesOut.Add(int64(n))
	return n, err
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c) })
	return err
}

// Prove tells the listener that c (a connection it returned) has shown it
// speaks the protocol (a valid hello): when room must be made, connections
// that have not are closed first, and c only after ProvenGrace idle.
func Prove(c net.Conn) {
	if lc, ok := c.(*conn); ok {
		lc.proven.Store(true)
	}
}

// SetIdle tells the listener whether c (a connection it returned) waits
// for its client to say what it wants (idle, the state a connection starts
// in) or is being served (busy). Only idle connections are closed to make
// room. Other connections are ignored.
func SetIdle(c net.Conn, idle bool) {
	lc, ok := c.(*conn)
	if !ok {
		return
	}
	if !idle {
		lc.idleSince.Store(0)
	} else if lc.idleSince.Load() == 0 {
		lc.idleSince.Store(time.Now().UnixNano())
	}
}

// Unwrap returns the connection c (a connection a Listener returned)
// wraps, for socket options; other connections are returned as they are.
func Unwrap(c net.Conn) net.Conn {
	if lc, ok := c.(*conn); ok {
		return lc.Conn
	}
	return c
}
