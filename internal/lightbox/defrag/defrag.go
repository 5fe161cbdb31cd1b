// Package defrag reassembles fragmented IPv4 and IPv6 datagrams for
// LightBox's middleboxes, bounded in memory and time: a fragment flood
// costs the attacker, never more than the reassembler's budget.
//
// Overlapping fragments are how an attacker shows an IDS one payload and
// the host behind it another (Ptacek and Newsham, 1998). The policy is
// explicit and the overlap is always reported:
//
//   - IPv6: a datagram with any overlapping fragments is discarded whole,
//     as RFC 5722 requires of every IPv6 host; later fragments of it are
//     discarded too, until it times out.
//   - IPv4: First (the default) keeps the bytes that arrived first, as
//     Linux, the BSDs and Snort frag3's "first" policy do for most
//     overlaps; Last keeps the bytes that arrived last (frag3's "last").
//     Overlaps whose bytes differ are counted apart, as conflicts.
//
// Bounds: at most MaxDatagrams in progress, MaxBytes held in all (what a
// fragment holds is charged as its bytes plus a fixed overhead), at most
// MaxFragments pieces per datagram, no datagram beyond 65,535 bytes, and
// each datagram at most Timeout after its first fragment (packet time, as
// the capture's clock). Over a bound, the oldest datagram in progress
// gives way.
package defrag

import (
	"container/list"
	"fmt"
	"net/netip"
	"time"
)

// Policy is how overlapping IPv4 fragments are resolved.
type Policy uint8

// The IPv4 overlap policies.
const (
	First Policy = iota // the bytes that arrived first stand
	Last                // the bytes that arrived last stand
)

func (p Policy) String() string {
	if p == Last {
		return "last"
	}
	return "first"
}

// ParsePolicy reads "first" or "last".
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case "first", "":
		return First, nil
	case "last":
		return Last, nil
	}
	return First, fmt.Errorf("fragment overlap policy %q: want first or last", s)
}

// Config bounds a Reassembler. Zero fields take the defaults.
type Config struct {
	MaxDatagrams int           // in progress at once (default 4,096)
	MaxBytes     int           // held in all, overhead included (default 8 MiB)
	MaxFragments int           // pieces of one datagram (default 128)
	Timeout      time.Duration // from a datagram's first fragment (default 30 s, as Linux's ipfrag_time)
	Policy       Policy        // for IPv4 overlaps
}

// Defaults.
const (
	DefaultMaxDatagrams = 4096
	DefaultMaxBytes     = 8 << 20
	DefaultMaxFragments = 128
	DefaultTimeout      = 30 * time.Second
	// MaxDatagram is the largest datagram reassembled (IPv4's total
	// length; an IPv6 jumbogram is never fragmented).
	MaxDatagram = 65535
	// pieceOverhead is what each piece is charged beyond its bytes.
	pieceOverhead = 64
)

// Key names a datagram: its addresses, identification and protocol
// (IPv4, RFC 791) or addresses and identification (IPv6, whose protocol
// is the fragment header's next header and part of no key).
type Key struct {
	Src, Dst netip.Addr
	ID       uint32
	Proto    uint8
}

// Fragment is one piece of a datagram.
type Fragment struct {
	Key    Key
	IPv6   bool
	Offset int    // in bytes
	More   bool   // more fragments follow
	Data   []byte // the piece (after the IP header, or after the fragment header)
}

// Outcome is what Add made of a fragment.
type Outcome uint8

// Outcomes.
const (
	Held      Outcome = iota // kept, the datagram is not whole yet
	Complete                 // the datagram is whole: Add returned it
	Discarded                // refused or part of a discarded datagram: see Stats
)

// Stats counts what a Reassembler saw.
type Stats struct {
	Fragments   uint64 // fragments given to Add
	Reassembled uint64 // datagrams made whole
	Overlaps    uint64 // fragments that overlapped bytes already held
	Conflicts   uint64 // ... with different bytes (an evasion attempt, or a broken path)
	Invalid     uint64 // fragments refused: past 65,535 bytes, past a datagram's end, a non-final one not a multiple of 8 bytes, two different ends
	TimedOut    uint64 // datagrams dropped incomplete at their timeout
	Evicted     uint64 // datagrams dropped incomplete to stay within the bounds
	Discarded   uint64 // fragments dropped with their datagram (an IPv6 overlap, one piece too many, or a datagram already discarded)
}

func (s Stats) String() string {
	return fmt.Sprintf("fragments: %d seen, %d datagrams reassembled, %d overlaps (%d with different bytes), %d invalid, %d datagrams timed out, %d evicted, %d fragments discarded",
		s.Fragments, s.Reassembled, s.Overlaps, s.Conflicts, s.Invalid, s.TimedOut, s.Evicted, s.Discarded)
}

type piece struct {
	off, end int
	data     []byte
}

type datagram struct {
	key     Key
	first   time.Time
	pieces  []piece // sorted by offset, not overlapping
	total   int     // the datagram's length once its last fragment came (-1 before)
	charged int
	dead    bool // discarded: its later fragments are dropped until it times out
	elem    *list.Element
}

// Reassembler reassembles datagrams. It is not safe for concurrent use.
type Reassembler struct {
	cfg   Config
	m     map[Key]*datagram
	order *list.List // datagrams by their first fragment, oldest first
	held  int        // bytes charged in all
	out   []byte     // the last datagram made whole

	Stats Stats
}

// New returns a Reassembler bounded by cfg.
func New(cfg Config) *Reassembler {
	if cfg.MaxDatagrams <= 0 {
		cfg.MaxDatagrams = DefaultMaxDatagrams
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.MaxFragments <= 0 {
		cfg.MaxFragments = DefaultMaxFragments
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	return &Reassembler{cfg: cfg, m: map[Key]*datagram{}, order: list.New()}
}

// InProgress is how many datagrams are held incomplete, and the bytes
// charged for them.
func (r *Reassembler) InProgress() (datagrams, bytes int) { return len(r.m), r.held }

// Add takes fragment f, seen at now. When f completes its datagram, Add
// returns Complete and the datagram's bytes (the transport header on),
// valid until the next call to Add. overlap reports that f overlapped
// bytes already held.
func (r *Reassembler) Add(f *Fragment, now time.Time) (out Outcome, data []byte, overlap bool) {
	r.Stats.Fragments++
	r.expire(now)
	end := f.Offset + len(f.Data)
	if f.Offset < 0 || end > MaxDatagram || (f.More && len(f.Data)%8 != 0) || (f.More && len(f.Data) == 0) {
		r.Stats.Invalid++
		if d := r.m[f.Key]; d != nil {
			r.kill(d)
		}
		return Discarded, nil, false
	}
	d := r.m[f.Key]
	if d == nil {
		d = &datagram{key: f.Key, first: now, total: -1}
		d.elem = r.order.PushBack(d)
		r.m[f.Key] = d
	}
	if d.dead {
		r.Stats.Discarded++
		return Discarded, nil, false
	}
	if !f.More {
		if (d.total >= 0 && d.total != end) || (len(d.pieces) > 0 && d.pieces[len(d.pieces)-1].end > end) {
			r.Stats.Invalid++
			r.kill(d)
			return Discarded, nil, false
		}
		d.total = end
	} else if d.total >= 0 && end > d.total {
		r.Stats.Invalid++
		r.kill(d)
		return Discarded, nil, false
	}
	overlap, conflict := r.insert(d, f.Offset, f.Data)
	if overlap {
		r.Stats.Overlaps++
		if conflict {
			r.Stats.Conflicts++
		}
		if f.IPv6 { // RFC 5722
			r.kill(d)
			r.Stats.Discarded++
			return Discarded, nil, true
		}
	}
	if len(d.pieces) > r.cfg.MaxFragments {
		r.kill(d)
		r.Stats.Discarded++
		return Discarded, nil, overlap
	}
	if r.whole(d) {
		r.out = r.out[:0]
		for _, p := range d.pieces {
			r.out = append(r.out, p.data...)
		}
		r.remove(d)
		r.Stats.Reassembled++
		return Complete, r.out, overlap
	}
	r.bound(d)
	if r.m[f.Key] != d { // it gave way itself
		r.Stats.Discarded++
		return Discarded, nil, overlap
	}
	return Held, nil, overlap
}

// insert puts [off, off+len(b)) into d by the policy, and reports whether
// it overlapped bytes held and whether those differed.
func (r *Reassembler) insert(d *datagram, off int, b []byte) (overlap, conflict bool) {
	end := off + len(b)
	if len(b) == 0 {
		return false, false
	}
	var keep []piece
	var add []piece
	cur := off // the next byte of b not yet placed (First)
	for _, p := range d.pieces {
		if p.end <= off || p.off >= end {
			keep = append(keep, p)
			continue
		}
		overlap = true
		lo, hi := max(p.off, off), min(p.end, end)
		if string(p.data[lo-p.off:hi-p.off]) != string(b[lo-off:hi-off]) {
			conflict = true
		}
		if r.cfg.Policy == First {
			keep = append(keep, p)
			if lo > cur {
				add = append(add, r.piece(cur, b[cur-off:lo-off]))
			}
			cur = max(cur, hi)
			continue
		}
		// Last: the old piece keeps only what lies outside the new one.
		if p.off < off {
			keep = append(keep, r.trim(d, p, p.off, off))
		}
		if p.end > end {
			keep = append(keep, r.trim(d, p, end, p.end))
		}
		r.release(d, p)
	}
	if r.cfg.Policy == First {
		if cur < end {
			add = append(add, r.piece(cur, b[cur-off:]))
		}
	} else {
		add = append(add, r.piece(off, b))
	}
	for _, p := range add {
		d.charged += len(p.data) + pieceOverhead
		r.held += len(p.data) + pieceOverhead
	}
	d.pieces = merge(keep, add)
	return overlap, conflict
}

// piece copies b as a piece at off.
func (r *Reassembler) piece(off int, b []byte) piece {
	return piece{off: off, end: off + len(b), data: append([]byte(nil), b...)}
}

// trim keeps [lo, hi) of p as a new piece, charged to d.
func (r *Reassembler) trim(d *datagram, p piece, lo, hi int) piece {
	n := r.piece(lo, p.data[lo-p.off:hi-p.off])
	d.charged += len(n.data) + pieceOverhead
	r.held += len(n.data) + pieceOverhead
	return n
}

// release uncharges piece p of d.
func (r *Reassembler) release(d *datagram, p piece) {
	d.charged -= len(p.data) + pieceOverhead
	r.held -= len(p.data) + pieceOverhead
}

// merge returns a and b, both sorted and not overlapping each other, as
// one sorted slice.
func merge(a, b []piece) []piece {
	out := make([]piece, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		if j == len(b) || (i < len(a) && a[i].off < b[j].off) {
			out = append(out, a[i])
			i++
		} else {
			out = append(out, b[j])
			j++
		}
	}
	return out
}

// whole reports whether d's pieces cover it from 0 to its end.
func (r *Reassembler) whole(d *datagram) bool {
	if d.total < 0 {
		return false
	}
	at := 0
	for _, p := range d.pieces {
		if p.off != at {
			return false
		}
		at = p.end
	}
	return at == d.total
}

// kill discards d's bytes and keeps it, dead, until it times out, so its
// later fragments are dropped rather than started afresh.
func (r *Reassembler) kill(d *datagram) {
	r.held -= d.charged
	d.charged = 0
	d.pieces = nil
	d.dead = true
}

// remove forgets d.
func (r *Reassembler) remove(d *datagram) {
	r.held -= d.charged
	r.order.Remove(d.elem)
	delete(r.m, d.key)
}

// expire drops the datagrams whose time is up.
func (r *Reassembler) expire(now time.Time) {
	for e := r.order.Front(); e != nil; e = r.order.Front() {
		d := e.Value.(*datagram)
		if now.Sub(d.first) < r.cfg.Timeout {
			return
		}
		if !d.dead {
			r.Stats.TimedOut++
		}
		r.remove(d)
	}
}

// bound drops the oldest datagrams while over a bound (d, just grown,
// included: a datagram alone over the budget gives way itself).
func (r *Reassembler) bound(d *datagram) {
	for len(r.m) > r.cfg.MaxDatagrams || r.held > r.cfg.MaxBytes {
		e := r.order.Front()
		if e == nil {
			return
		}
		o := e.Value.(*datagram)
		if !o.dead {
			r.Stats.Evicted++
		}
		r.remove(o)
	}
}
