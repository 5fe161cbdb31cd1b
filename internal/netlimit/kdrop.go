package netlimit

import (
	"errors"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Dropping in the kernel. An address that opens connections faster than
// its rate is refused with a reset, and that costs the daemon an accept, a
// close and the kernel a handshake for every connection of a flood: at
// thousands a second from a few dozen addresses, that work alone slowed
// everybody else's requests. With Config.KernelDrop, such an address also
// has its handshakes dropped by the kernel for DropFor, before any
// handshake: a classic BPF filter on the listening socket (SO_ATTACH_FILTER,
// which needs no privilege) compares each SYN's source with the addresses
// dropped, as a firewall rule would, and the flood's dials wait for their
// retransmissions (a second, then three) instead of coming back at once.
// A connection accepted inherits the filter in force at its handshake
// (which cannot drop its own address, or the handshake would not have
// completed); it gives its copy up at once, so its packets are not run
// through it, and later drops, made in the listener's filter, never touch
// a connection already made.

// DropFor is how long an address over its connection rate has its new
// connections dropped in the kernel (with Config.KernelDrop). An honest
// client that went over its rate by mistake waits for one retransmission
// of its handshake.
const DropFor = time.Second

// The most addresses dropped at once (the filter's size grows with them:
// two instructions an IPv4 address, seven an IPv6 prefix, of the 4,096 a
// filter may have); beyond them, addresses over their rate are refused
// with a reset as without KernelDrop.
const (
	maxDropV4 = 1024
	maxDropV6 = 256
)

// dropRefresh bounds how often the filter is rebuilt.
const dropRefresh = 50 * time.Millisecond

// skfNetOff is SKF_NET_OFF: loads at this offset (plus n) read the
// packet's network header (the IP header) rather than the transport
// header a TCP socket's filter starts at.
const skfNetOff = -0x100000

// dropper keeps a listener's kernel filter.
type dropper struct {
	rc   syscall.RawConn // the listening socket's
	warn func(msg string, args ...any)

	mu      sync.Mutex
	until   map[netip.Prefix]time.Time
	timer   *time.Timer
	built   time.Time // last rebuild
	pending bool      // a rebuild is scheduled...
	due     time.Time // ... for then
	closed  bool

	ever     atomic.Bool  // a filter was attached once: accepted connections detach theirs
	periods  atomic.Int64 // drop periods started
	attached atomic.Int64 // prefixes in the filter attached now
}

func newDropper(rc syscall.RawConn, warn func(msg string, args ...any)) *dropper {
	return &dropper{rc: rc, warn: warn, until: map[netip.Prefix]time.Time{}}
}

// dropPrefix is what a drop covers of an address: the address for IPv4,
// its /56 for IPv6 (as AddrKey counts them).
func dropPrefix(a netip.Addr) (netip.Prefix, bool) {
	a = a.Unmap()
	switch {
	case a.Is4():
		return netip.PrefixFrom(a, 32), true
	case a.Is6():
		p, err := a.Prefix(56)
		return p, err == nil
	}
	return netip.Prefix{}, false
}

// add drops a's new connections for DropFor from now.
func (d *dropper) add(a netip.Addr, now time.Time) {
	p, ok := dropPrefix(a)
	if !ok {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	if u, ok := d.until[p]; ok && u.After(now) {
		return // dropped already; connections of it still queued are refused as usual
	}
	d.until[p] = now.Add(DropFor)
	d.periods.Add(1)
	d.scheduleLocked(max(0, dropRefresh-now.Sub(d.built)))
}

// scheduleLocked arranges a rebuild after wait, unless one is due sooner
// (a rebuild set for the next expiry is brought forward for a new drop).
func (d *dropper) scheduleLocked(wait time.Duration) {
	due := time.Now().Add(wait)
	if d.pending && !d.due.After(due) {
		return
	}
	d.pending, d.due = true, due
	if d.timer == nil {
		d.timer = time.AfterFunc(wait, d.rebuild)
	} else {
		d.timer.Reset(wait)
	}
}

// rebuild attaches a filter for the drops in force (or detaches it when
// none is), and schedules the next rebuild for the earliest expiry.
func (d *dropper) rebuild() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pending = false
	if d.closed {
		return
	}
	now := time.Now()
	d.built = now
	var v4, v6 []netip.Prefix
	var next time.Time
	for p, u := range d.until {
		if !u.After(now) {
			delete(d.until, p)
			continue
		}
		if next.IsZero() || u.Before(next) {
			next = u
		}
		if p.Addr().Is4() {
			v4 = append(v4, p)
		} else {
			v6 = append(v6, p)
		}
	}
	// Over the filter's room, the latest drops are left to the resets.
	keep := func(ps []netip.Prefix, n int) []netip.Prefix {
		if len(ps) <= n {
			return ps
		}
		sort.Slice(ps, func(i, j int) bool { return d.until[ps[i]].Before(d.until[ps[j]]) })
		return ps[:n]
	}
	v4, v6 = keep(v4, maxDropV4), keep(v6, maxDropV6)
	var err error
	if len(v4)+len(v6) == 0 {
		if d.ever.Load() {
			err = d.detach()
		}
	} else {
		d.ever.Store(true)
		err = d.attach(dropFilter(v4, v6))
	}
	if err != nil {
		d.warn("could not update the kernel filter that drops addresses over their rate; they are reset as they come", "err", err)
		v4, v6 = nil, nil
	}
	d.attached.Store(int64(len(v4) + len(v6)))
	if !next.IsZero() {
		d.scheduleLocked(max(next.Sub(now), dropRefresh))
	}
}

func (d *dropper) attach(prog []unix.SockFilter) error {
	var serr error
	err := d.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]})
	})
	return errors.Join(err, serr)
}

func (d *dropper) detach() error {
	var serr error
	err := d.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DETACH_FILTER, 0)
	})
	if errors.Is(serr, unix.ENOENT) {
		serr = nil
	}
	return errors.Join(err, serr)
}

// release gives up an accepted connection's copy of the filter.
func (d *dropper) release(fd int) {
	if d.ever.Load() {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DETACH_FILTER, 0)
	}
}

// close stops the rebuilds.
func (d *dropper) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	if d.timer != nil {
		d.timer.Stop()
	}
}

// dropFilter assembles a socket filter that drops packets from the
// prefixes given (IPv4 /32s, IPv6 /56s) and keeps every other.
func dropFilter(v4, v6 []netip.Prefix) []unix.SockFilter {
	const keepAll = 0xffffffff
	ld := func(size uint16, off int) unix.SockFilter {
		return unix.SockFilter{Code: unix.BPF_LD | size | unix.BPF_ABS, K: uint32(int32(skfNetOff + off))}
	}
	jeq := func(k uint32, jt, jf uint8) unix.SockFilter {
		return unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: k, Jt: jt, Jf: jf}
	}
	ret := func(k uint32) unix.SockFilter { return unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: k} }

	var b4 []unix.SockFilter
	if len(v4) > 0 {
		b4 = append(b4, ld(unix.BPF_W, 12)) // the source address
		for _, p := range v4 {
			a := p.Addr().As4()
			b4 = append(b4, jeq(uint32(a[0])<<24|uint32(a[1])<<16|uint32(a[2])<<8|uint32(a[3]), 0, 1), ret(0))
		}
	}
	b4 = append(b4, ret(keepAll))

	var b6 []unix.SockFilter
	for _, p := range v6 {
		a := p.Addr().As16() // the source address is at 8 in the header; a /56 is its first 7 bytes
		b6 = append(b6,
			ld(unix.BPF_W, 8), jeq(uint32(a[0])<<24|uint32(a[1])<<16|uint32(a[2])<<8|uint32(a[3]), 0, 5),
			ld(unix.BPF_H, 12), jeq(uint32(a[4])<<8|uint32(a[5]), 0, 3),
			ld(unix.BPF_B, 14), jeq(uint32(a[6]), 0, 1),
			ret(0))
	}
	b6 = append(b6, ret(keepAll))

	prog := []unix.SockFilter{
		ld(unix.BPF_B, 0), // version and header length
		{Code: unix.BPF_ALU | unix.BPF_RSH | unix.BPF_K, K: 4},
		jeq(4, 1, 0),
		{Code: unix.BPF_JMP | unix.BPF_JA, K: uint32(len(b4))}, // not IPv4: over the IPv4 block
	}
	prog = append(prog, b4...)
	// IPv6 only past this point; anything else is kept.
	prog = append(prog, jeq(6, 1, 0), ret(keepAll))
	return append(prog, b6...)
}
