// Package defrag reassembles fragmented IPv4 and IPv6 datagrams for
// LightBox's middleboxes, bounded in memory and time: a fragment flood
// costs the attacker, never more than the reassembler's budget.
//
// Overlapping fragments are how an attacker shows an IDS one payload and
// the host behind it another (Ptacek and Newsham, 1998). The policy is
// explicit, and every overlap is counted and reported to the caller, with
// whether its bytes differed (a conflict):
//
//   - Linux (the default, and always for IPv6): as Linux's
//     inet_frag_queue_insert since 4.19, for IPv4 and IPv6 alike (RFC
//     5722 as amended by RFC 8200 §4.5 for IPv6): fragments form runs, a
//     fragment joining the last run only where it ends; one that lies
//     wholly inside a run is a duplicate, dropped (the bytes that came
//     first stand); any other overlap discards the whole datagram.
//   - First: the bytes that arrived first stand, as Snort frag3's
//     "first" policy, for hosts that reassemble that way.
//   - Last: the bytes that arrived last stand (frag3's "last").
//
// A discarded datagram is forgotten, as Linux forgets it: its later
// fragments start a new datagram, which completes only if all its
// fragments come again. A non-final IPv4 fragment whose length is not a
// multiple of 8 is cut to one, as Linux cuts it; such an IPv6 fragment is
// refused (RFC 8200 §4.5), its datagram kept.
//
// Bounds: at most MaxDatagrams in progress, MaxBytes held in all (what a
// piece holds is charged as its capacity plus a fixed overhead), at most
// MaxFragments pieces (runs) per datagram (by default as many as any
// datagram can have), no datagram beyond 65,535 bytes, and each datagram
// at most Timeout after its first fragment (packet time, as the capture's
// clock). Over a bound, the oldest datagram in progress gives way, and
// Result.Bound says so.
package defrag

import (
	"container/list"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"time"
)

// Policy is how overlapping IPv4 fragments are resolved.
type Policy uint8

// The IPv4 overlap policies.
const (
	Linux Policy = iota // a duplicate inside held bytes is dropped; any other overlap discards the datagram
	First               // the bytes that arrived first stand
	Last                // the bytes that arrived last stand
)

func (p Policy) String() string {
	switch p {
	case First:
		return "first"
	case Last:
		return "last"
	}
	return "linux"
}

// ParsePolicy reads "linux", "first" or "last".
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case "linux", "":
		return Linux, nil
	case "first":
		return First, nil
	case "last":
		return Last, nil
	}
	return Linux, fmt.Errorf("fragment overlap policy %q: want linux, first or last", s)
}

// Config bounds a Reassembler. Zero fields take the defaults.
type Config struct {
	MaxDatagrams int           // in progress at once (default 4,096)
	MaxBytes     int           // held in all, overhead included (default 8 MiB)
	MaxFragments int           // pieces (runs) of one datagram (default 8192)
	Timeout      time.Duration // from a datagram's first fragment (default 30 s, as Linux's ipfrag_time)
	Policy       Policy        // for IPv4 overlaps (IPv6 always takes Linux's)
}

// Defaults.
const (
	DefaultMaxDatagrams = 4096
	DefaultMaxBytes     = 8 << 20
	DefaultMaxFragments = 8192 // as many as a datagram of 8-byte fragments has: none is refused for its number
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
	Next   uint8  // IPv6: the fragment header's next header (the datagram's is the first fragment's)
	Data   []byte // the piece (after the IP header, or after the fragment header)
}

// Outcome is what Add made of a fragment.
type Outcome uint8

// Outcomes.
const (
	Held      Outcome = iota // kept, the datagram is not whole yet
	Complete                 // the datagram is whole: Add returned it
	Discarded                // refused, a duplicate, or its datagram discarded: see Stats
)

func (o Outcome) String() string {
	switch o {
	case Held:
		return "held"
	case Complete:
		return "complete"
	}
	return "discarded"
}

// Result is what Add made of one fragment.
type Result struct {
	Outcome Outcome
	// Data is the whole datagram (the transport header on, or for IPv6
	// the headers after the fragment header on), when Outcome is
	// Complete; valid until the next call to Add.
	Data []byte
	// Next is the datagram's IPv6 next header, from its first fragment
	// (offset 0), when Outcome is Complete.
	Next uint8
	// Overlap: this fragment overlapped bytes already held; Conflict:
	// with different bytes, which a host and a middlebox may resolve
	// differently (an evasion attempt, or a broken path).
	Overlap, Conflict bool
	// Bound: a datagram in progress (this one, or the oldest) was
	// dropped to stay within the bounds, which a host with more memory
	// might have reassembled.
	Bound bool
}

// Stats counts what a Reassembler saw.
type Stats struct {
	Fragments   uint64 // fragments given to Add
	Reassembled uint64 // datagrams made whole
	Overlaps    uint64 // fragments that overlapped bytes already held (duplicates included)
	Conflicts   uint64 // ... with different bytes (an evasion attempt, or a broken path)
	Duplicates  uint64 // fragments dropped as lying inside bytes already held
	Invalid     uint64 // fragments refused: past 65,535 bytes, past a datagram's end, empty, two different ends, a non-final IPv6 one not a multiple of 8 bytes (which alone keeps its datagram)
	Trimmed     uint64 // non-final IPv4 fragments cut to a multiple of 8 bytes
	Discarded   uint64 // datagrams discarded whole: an overlap (Linux policy, IPv6), an invalid fragment, more than MaxFragments pieces
	Bounded     uint64 // ... of those, for more than MaxFragments pieces
	TimedOut    uint64 // datagrams dropped incomplete at their timeout
	Evicted     uint64 // datagrams dropped incomplete to stay within the bounds
}

func (s Stats) String() string {
	return fmt.Sprintf("fragments: %d seen, %d datagrams reassembled, %d overlaps (%d with different bytes, %d duplicates dropped), %d invalid, %d trimmed; datagrams: %d discarded, %d timed out, %d evicted",
		s.Fragments, s.Reassembled, s.Overlaps, s.Conflicts, s.Duplicates, s.Invalid, s.Trimmed, s.Discarded, s.TimedOut, s.Evicted)
}

type piece struct {
	off, end int
	data     []byte
}

type datagram struct {
	key      Key
	first    time.Time
	pieces   []piece // sorted by offset, not overlapping (Linux: its runs; else merged when adjacent)
	meat     int     // bytes the pieces hold
	total    int     // the datagram's length once its last fragment came (-1 before)
	next     uint8   // IPv6: the first fragment's next header
	haveNext bool    // ... known
	charged  int
	elem     *list.Element
}

// Reassembler reassembles datagrams. It is not safe for concurrent use.
type Reassembler struct {
	cfg   Config
	m     map[Key]*datagram
	order *list.List // datagrams by their first fragment, oldest first
	held  int        // bytes charged in all
	out   []byte     // the last datagram made whole from several runs

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

// Add takes fragment f, seen at now.
func (r *Reassembler) Add(f *Fragment, now time.Time) Result {
	r.Stats.Fragments++
	r.expire(now)
	data := f.Data
	if f.More && len(data)%8 != 0 {
		if f.IPv6 { // RFC 8200 §4.5: this fragment is discarded, its datagram kept
			r.Stats.Invalid++
			return Result{Outcome: Discarded}
		}
		data = data[:len(data)&^7] // as Linux: cut to a multiple of 8
		r.Stats.Trimmed++
	}
	d := r.m[f.Key]
	end := f.Offset + len(data)
	if f.IPv6 && end > MaxDatagram { // as Linux: this fragment is discarded, its datagram kept
		r.Stats.Invalid++
		return Result{Outcome: Discarded}
	}
	invalid := f.Offset < 0 || end > MaxDatagram || len(data) == 0
	if !invalid && d != nil {
		if !f.More {
			// Two different ends, or bytes held past this end.
			invalid = (d.total >= 0 && d.total != end) || (len(d.pieces) > 0 && d.pieces[len(d.pieces)-1].end > end)
		} else {
			invalid = d.total >= 0 && end > d.total
		}
	}
	if invalid {
		r.Stats.Invalid++
		if d != nil {
			r.discard(d)
		}
		return Result{Outcome: Discarded}
	}
	if d == nil {
		d = &datagram{key: f.Key, first: now, total: -1}
		d.elem = r.order.PushBack(d)
		r.m[f.Key] = d
	}
	if !f.More {
		d.total = end
	}
	pol := r.cfg.Policy
	if f.IPv6 {
		pol = Linux
	}
	res := Result{Outcome: Held}
	var keep bool
	keep, res.Overlap, res.Conflict = r.insert(d, f.Offset, data, pol)
	if res.Overlap {
		r.Stats.Overlaps++
		if res.Conflict {
			r.Stats.Conflicts++
		}
	}
	switch {
	case !keep && pol == Linux && res.Overlap && r.contains(d, f.Offset, end):
		r.Stats.Duplicates++
		res.Outcome = Discarded
		return res
	case !keep:
		r.discard(d)
		res.Outcome = Discarded
		return res
	}
	if f.Offset == 0 && (!d.haveNext || pol == Last) {
		d.next, d.haveNext = f.Next, true // the first fragment's next header, by the policy
	}
	if len(d.pieces) > r.cfg.MaxFragments {
		r.discard(d)
		r.Stats.Bounded++
		res.Outcome, res.Bound = Discarded, true
		return res
	}
	if data, ok := r.whole(d); ok {
		r.remove(d)
		r.Stats.Reassembled++
		res.Outcome, res.Data, res.Next = Complete, data, d.next
		return res
	}
	if r.bound() {
		res.Bound = true
	}
	if r.m[f.Key] != d { // it gave way itself (counted as evicted)
		res.Outcome = Discarded
	}
	return res
}

// whole returns d's bytes if its pieces cover it from 0 to its end: as
// they lie apart and within it, when they hold as many bytes as it has
// (Linux's "meat").
func (r *Reassembler) whole(d *datagram) ([]byte, bool) {
	if d.total < 0 || d.meat != d.total {
		return nil, false
	}
	if len(d.pieces) == 1 {
		return d.pieces[0].data, true
	}
	r.out = r.out[:0]
	for _, p := range d.pieces {
		r.out = append(r.out, p.data...)
	}
	return r.out, true
}

// contains reports whether one piece of d holds all of [off, end).
func (r *Reassembler) contains(d *datagram, off, end int) bool {
	for _, p := range d.pieces {
		if p.off <= off && end <= p.end {
			return true
		}
	}
	return false
}

// insert puts [off, off+len(b)) into d by the policy. It reports whether
// the bytes were kept (false: under the Linux policy, a duplicate dropped
// or an overlap that discards the datagram, d unchanged), whether they
// overlapped bytes held, and whether those differed.
func (r *Reassembler) insert(d *datagram, off int, b []byte, pol Policy) (keep, overlap, conflict bool) {
	end := off + len(b)
	if pol == Linux {
		return r.insertLinux(d, off, b)
	}
	var keepP, add []piece
	cur := off // the next byte of b not yet placed (First)
	for _, p := range d.pieces {
		if p.end <= off || p.off >= end {
			keepP = append(keepP, p)
			continue
		}
		overlap = true
		lo, hi, differ := compare(p, off, b)
		conflict = conflict || differ
		if pol == First {
			keepP = append(keepP, p)
			if lo > cur {
				add = append(add, piece{off: cur, end: lo, data: b[cur-off : lo-off]})
			}
			cur = max(cur, hi)
			continue
		}
		// Last: the old piece keeps only what lies outside the new one.
		r.release(d, p)
		if p.off < off {
			keepP = append(keepP, r.charge(d, trim(p, p.off, off)))
		}
		if p.end > end {
			keepP = append(keepP, r.charge(d, trim(p, end, p.end)))
		}
	}
	switch {
	case pol == First:
		if cur < end {
			add = append(add, piece{off: cur, end: end, data: b[cur-off:]})
		}
	default:
		add = append(add, piece{off: off, end: end, data: b})
	}
	for i := range add {
		add[i].data = clone(add[i].data) // b belongs to the caller
		r.charge(d, add[i])
	}
	d.pieces = r.coalesce(d, merge(keepP, add))
	d.meat = 0
	for _, p := range d.pieces {
		d.meat += len(p.data)
	}
	return true, overlap, conflict
}

// insertLinux is insert as Linux does it (inet_frag_queue_insert): the
// pieces are Linux's runs. A fragment that starts where the last run ends
// joins it; any other that overlaps nothing is a run of its own, even
// next to another; one inside a run is a duplicate, and any other overlap
// discards the datagram (both: not kept, d unchanged).
func (r *Reassembler) insertLinux(d *datagram, off int, b []byte) (keep, overlap, conflict bool) {
	end := off + len(b)
	// The pieces are sorted and apart: those it overlaps follow the
	// first that ends after off (a binary search, so a datagram of
	// thousands of runs costs no scan per fragment).
	for i := sort.Search(len(d.pieces), func(i int) bool { return d.pieces[i].end > off }); i < len(d.pieces) && d.pieces[i].off < end; i++ {
		overlap = true
		_, _, differ := compare(d.pieces[i], off, b)
		conflict = conflict || differ
	}
	if overlap {
		return false, overlap, conflict
	}
	d.meat += len(b)
	if n := len(d.pieces); n > 0 && d.pieces[n-1].end == off {
		last := &d.pieces[n-1]
		r.release(d, *last)
		last.data = append(last.data, b...) // amortised: a run grows by doubling
		last.end = end
		r.charge(d, *last)
		return true, false, false
	}
	i := sort.Search(len(d.pieces), func(i int) bool { return d.pieces[i].off > off })
	d.pieces = slices.Insert(d.pieces, i, r.charge(d, piece{off: off, end: end, data: clone(b)}))
	return true, false, false
}

// compare returns where piece p and bytes b at off overlap, [lo, hi),
// and whether their bytes there differ.
func compare(p piece, off int, b []byte) (lo, hi int, differ bool) {
	lo, hi = max(p.off, off), min(p.end, off+len(b))
	return lo, hi, string(p.data[lo-p.off:hi-p.off]) != string(b[lo-off:hi-off])
}

// A piece is charged its capacity plus pieceOverhead. Its spare capacity
// is its own (appending to it never overwrites another piece), and the
// memory it keeps alive is at most twice its charge.

// charge charges piece p to d, and returns it.
func (r *Reassembler) charge(d *datagram, p piece) piece {
	d.charged += cap(p.data) + pieceOverhead
	r.held += cap(p.data) + pieceOverhead
	return p
}

// release uncharges piece p of d.
func (r *Reassembler) release(d *datagram, p piece) {
	d.charged -= cap(p.data) + pieceOverhead
	r.held -= cap(p.data) + pieceOverhead
}

// clone copies b into memory of exactly its length.
func clone(b []byte) []byte {
	c := make([]byte, len(b))
	copy(c, b)
	return c
}

// trim returns [lo, hi) of p. It shares p's memory when it keeps at least
// half of it (capped, so that appending to it reallocates), and copies
// otherwise: what it keeps alive stays within twice its charge, and the
// copying a run of splits costs stays within the bytes the splits keep.
func trim(p piece, lo, hi int) piece {
	b := p.data[lo-p.off : hi-p.off : hi-p.off]
	if 2*len(b) < cap(p.data) {
		b = clone(b)
	}
	return piece{off: lo, end: hi, data: b}
}

// coalesce merges adjacent pieces of ps (sorted, not overlapping) into
// one, so that a datagram's pieces are its runs and only its holes count
// against MaxFragments.
func (r *Reassembler) coalesce(d *datagram, ps []piece) []piece {
	out := ps[:0]
	for _, p := range ps {
		if n := len(out); n > 0 && out[n-1].end == p.off {
			r.release(d, out[n-1])
			r.release(d, p)
			q := &out[n-1]
			q.data = append(q.data, p.data...) // amortised: a run grows by doubling
			q.end = p.end
			r.charge(d, *q)
			continue
		}
		out = append(out, p)
	}
	return out
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

// discard forgets d, counting it discarded.
func (r *Reassembler) discard(d *datagram) {
	r.Stats.Discarded++
	r.remove(d)
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
		r.Stats.TimedOut++
		r.remove(d)
	}
}

// bound drops the oldest datagrams while over a bound (the one just grown
// included: a datagram alone over the budget gives way itself), and
// reports whether it dropped any.
func (r *Reassembler) bound() bool {
	evicted := false
	for len(r.m) > r.cfg.MaxDatagrams || r.held > r.cfg.MaxBytes {
		e := r.order.Front()
		if e == nil {
			break
		}
		r.Stats.Evicted++
		r.remove(e.Value.(*datagram))
		evicted = true
	}
	return evicted
}
