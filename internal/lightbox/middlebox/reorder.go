package middlebox

import (
	"container/list"
	"net/netip"
	"time"

	"github.com/torbento/bento/internal/lightbox/flowstate"
)

// ReorderConfig bounds the out-of-order TCP data the IDS holds beyond a
// direction's in-state window (the reasmWindow bytes after the next byte
// expected), for a hole of many segments: a lost segment retransmitted
// late. Zero fields take the defaults.
type ReorderConfig struct {
	PerDirection int           // bytes held for one direction, each piece charged 64 more (default 256 KiB; at most 512 pieces)
	PerSource    int           // bytes held for the directions one sender sends (an IPv4 address, an IPv6 /64), charged alike (default MemCap/16)
	MemCap       int           // bytes held in all, each piece charged its bytes and 64 more (default 64 MiB)
	Idle         time.Duration // a direction's held data untouched this long is dropped (default 2 minutes, the flow table's idle timeout)
}

// Defaults, and the limit past which data is not a stream's at all.
const (
	DefaultReorderPerDirection = 256 << 10
	DefaultReorderMemCap       = 64 << 20
	DefaultReorderIdle         = 2 * time.Minute
	// MaxAhead: data starting further than this past the next byte
	// expected lies beyond any receive window a host offers (Linux's
	// largest by default is 6 MiB): a host drops it, and so does the IDS.
	MaxAhead = 8 << 20

	heldOverhead = 64
	// senderShare: one sender (dirKey.source) may hold 1/senderShare of
	// the reorder pool, and of the unacknowledged bytes kept.
	senderShare = 16
	// maxPieces bounds one direction's pieces, so that placing one costs
	// a bounded scan.
	maxPieces = 512
)

func (c ReorderConfig) withDefaults() ReorderConfig {
	if c.PerDirection <= 0 {
		c.PerDirection = DefaultReorderPerDirection
	}
	if c.MemCap <= 0 {
		c.MemCap = DefaultReorderMemCap
	}
	if c.PerSource <= 0 {
		c.PerSource = c.MemCap / senderShare
	}
	if c.Idle <= 0 {
		c.Idle = DefaultReorderIdle
	}
	return c
}

// dirKey names one direction of a flow.
type dirKey struct {
	k    flowstate.Key
	side uint8
}

// source is who sends the direction's data, as the pool shares its room:
// an IPv4 address, or an IPv6 /64 (what one host is usually given).
func (d dirKey) source() [16]byte {
	var a [16]byte
	copy(a[:], d.k[16*int(d.side):16*int(d.side)+16])
	if !netip.AddrFrom16(a).Is4In6() {
		clear(a[8:])
	}
	return a
}

type heldSeg struct {
	seq  uint32
	data []byte
}

// heldDir is one direction's data held beyond its window: pieces sorted
// by sequence number (relative to the direction's next byte, which only
// moves forward, so the order holds), neither overlapping.
type heldDir struct {
	key   dirKey
	src   [16]byte // key.source()
	segs  []heldSeg
	bytes int
	last  time.Time
	elem  *list.Element
}

// reorderPool holds every direction's data beyond its window, within
// ReorderConfig's bounds.
type reorderPool struct {
	cfg   ReorderConfig
	m     map[dirKey]*heldDir
	lru   *list.List // least recently touched first
	held  int        // bytes charged in all
	bySrc map[[16]byte]int
}

func newReorderPool(cfg ReorderConfig) *reorderPool {
	return &reorderPool{cfg: cfg.withDefaults(), m: map[dirKey]*heldDir{}, lru: list.New(), bySrc: map[[16]byte]int{}}
}

// charge adds n (negative: returns it) to what h's sender holds.
func (r *reorderPool) charge(h *heldDir, n int) {
	r.held += n
	if v := r.bySrc[h.src] + n; v > 0 {
		r.bySrc[h.src] = v
	} else {
		delete(r.bySrc, h.src)
	}
}

// add holds p, at sequence number seq, for direction k whose next byte
// expected is next (seq lies after next). The bytes of p that some piece
// already holds are not stored again: the first copy stands, and conflict
// reports that they differed. add refuses (ok false, nothing held) when
// the new bytes would pass the direction's, its sender's or the pool's
// bound: one sender filling the pool cannot force holes on everyone
// else's streams.
func (r *reorderPool) add(k dirKey, next, seq uint32, p []byte, now time.Time) (ok, conflict bool) {
	r.expire(now)
	h := r.m[k]
	var segs []heldSeg
	if h != nil {
		segs = h.segs
	}
	// The parts of p no piece holds, and whether held parts differ.
	var fresh []heldSeg
	lo, end := int64(int32(seq-next)), int64(int32(seq-next))+int64(len(p))
	at := lo // the first byte of p not yet accounted for
	for _, s := range segs {
		slo := int64(int32(s.seq - next))
		shi := slo + int64(len(s.data))
		if shi <= at || slo >= end {
			continue
		}
		if slo > at {
			fresh = append(fresh, heldSeg{seq: seq + uint32(at-lo), data: p[at-lo : slo-lo]})
		}
		a, b := max(at, slo), min(end, shi)
		if string(p[a-lo:b-lo]) != string(s.data[a-slo:b-slo]) {
			conflict = true
		}
		at = max(at, shi)
	}
	if at < end {
		fresh = append(fresh, heldSeg{seq: seq + uint32(at-lo), data: p[at-lo:]})
	}
	n, charge := 0, 0
	for _, f := range fresh {
		n += len(f.data)
		charge += len(f.data) + heldOverhead
	}
	if n == 0 {
		if h != nil {
			h.last = now
			r.lru.MoveToBack(h.elem)
		}
		return true, conflict
	}
	have, pieces := 0, 0
	if h != nil {
		have, pieces = h.bytes+len(h.segs)*heldOverhead, len(h.segs)
	}
	src := k.source()
	if have+charge > r.cfg.PerDirection || pieces+len(fresh) > maxPieces || r.held+charge > r.cfg.MemCap || r.bySrc[src]+charge > r.cfg.PerSource {
		return false, conflict
	}
	if h == nil {
		h = &heldDir{key: k, src: src}
		h.elem = r.lru.PushBack(h)
		r.m[k] = h
	}
	for _, f := range fresh {
		f.data = append([]byte(nil), f.data...) // p belongs to the caller
		rel := int32(f.seq - next)
		i := len(h.segs)
		for i > 0 && int32(h.segs[i-1].seq-next) > rel {
			i--
		}
		h.segs = append(h.segs, heldSeg{})
		copy(h.segs[i+1:], h.segs[i:])
		h.segs[i] = f
	}
	h.bytes += n
	r.charge(h, charge)
	h.last = now
	r.lru.MoveToBack(h.elem)
	return true, conflict
}

// touch marks direction k as alive at now (its flow sent a packet), so
// that what it holds is not dropped as idle.
func (r *reorderPool) touch(k dirKey, now time.Time) {
	if h := r.m[k]; h != nil {
		h.last = now
		r.lru.MoveToBack(h.elem)
	}
}

// front returns direction k's first held piece.
func (r *reorderPool) front(k dirKey) (seq uint32, data []byte, ok bool) {
	h := r.m[k]
	if h == nil {
		return 0, nil, false
	}
	return h.segs[0].seq, h.segs[0].data, true
}

// has reports whether direction k holds anything.
func (r *reorderPool) has(k dirKey) bool { return r.m[k] != nil }

// consume drops the first n bytes of direction k's first piece.
func (r *reorderPool) consume(k dirKey, n int) {
	h := r.m[k]
	s := &h.segs[0]
	s.seq += uint32(n)
	s.data = s.data[n:]
	h.bytes -= n
	r.charge(h, -n)
	if len(s.data) == 0 {
		r.charge(h, -heldOverhead)
		h.segs = h.segs[1:]
		if len(h.segs) == 0 {
			r.remove(h)
		}
	}
}

// drop forgets what direction k holds.
func (r *reorderPool) drop(k dirKey) {
	if h := r.m[k]; h != nil {
		for _, s := range h.segs {
			r.charge(h, -(len(s.data) + heldOverhead))
		}
		r.remove(h)
	}
}

func (r *reorderPool) remove(h *heldDir) {
	r.lru.Remove(h.elem)
	delete(r.m, h.key)
}

// expire drops the directions untouched for the idle time: their flows
// have ended or gone quiet with a hole no retransmission filled, whose
// later bytes no host delivers either.
func (r *reorderPool) expire(now time.Time) {
	for e := r.lru.Front(); e != nil; e = r.lru.Front() {
		h := e.Value.(*heldDir)
		if now.Sub(h.last) < r.cfg.Idle {
			return
		}
		r.drop(h.key)
	}
}
