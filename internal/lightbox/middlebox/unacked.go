package middlebox

import (
	"container/list"
	"time"
)

// unacked keeps, for each direction, the bytes the IDS delivered in order
// that the peer has not acknowledged yet, so that a retransmission of
// them is compared byte for byte. This is what unmasks a decoy: a segment
// the IDS read but the host never did (a TTL too short to reach it, a
// checksum the IDS did not verify, a timestamp the host refused) is never
// acknowledged, and the real segment, sent again at the same sequence
// number, differs from it. Bytes the peer acknowledged are the host's:
// a retransmission of them is one the host ignores. Bounded per direction
// (the newest bytes stay), per sender (an IPv4 address or IPv6 /64 holds
// at most 1/16 of the whole: past it, its own least recently used
// direction gives way) and in all (the least recently used direction
// gives way). A direction that gave way has its retransmissions compared
// with the stream's tail only.
type unacked struct {
	perDir int
	perSrc int
	memCap int
	idle   time.Duration
	m      map[dirKey]*sentBuf
	lru    *list.List // least recently used first
	held   int        // bytes charged in all (capacities)
	bySrc  map[[16]byte]*srcUse
}

// srcUse is what one sender's directions hold.
type srcUse struct {
	held int
	lru  *list.List // its directions, least recently used first
}

type sentBuf struct {
	key     dirKey
	src     [16]byte // key.source()
	start   uint32   // the sequence number of data[0]
	data    []byte   // a window on its array, which trimming the front keeps
	charged int      // the array's size: what it keeps alive
	last    time.Time
	elem    *list.Element
	srcElem *list.Element
}

// Bounds of the unacknowledged bytes kept.
const (
	DefaultUnackedPerDirection = 64 << 10
	DefaultUnackedMemCap       = 64 << 20
)

func newUnacked(idle time.Duration) *unacked {
	return &unacked{perDir: DefaultUnackedPerDirection, perSrc: DefaultUnackedMemCap / senderShare, memCap: DefaultUnackedMemCap, idle: idle,
		m: map[dirKey]*sentBuf{}, lru: list.New(), bySrc: map[[16]byte]*srcUse{}}
}

// charge adds n bytes to what b keeps alive.
func (u *unacked) charge(b *sentBuf, n int) {
	b.charged += n
	u.held += n
	u.bySrc[b.src].held += n
}

// add records p, delivered in order from sequence number at, for
// direction k.
func (u *unacked) add(k dirKey, at uint32, p []byte, now time.Time) {
	u.expire(now)
	b := u.m[k]
	if b == nil {
		b = &sentBuf{key: k, src: k.source(), start: at}
		b.elem = u.lru.PushBack(b)
		su := u.bySrc[b.src]
		if su == nil {
			su = &srcUse{lru: list.New()}
			u.bySrc[b.src] = su
		}
		b.srcElem = su.lru.PushBack(b)
		u.m[k] = b
	}
	if at != b.start+uint32(len(b.data)) { // not where it left off (a hole skipped): start again
		b.data, b.start = b.data[:0], at
	}
	if len(p) > cap(b.data)-len(b.data) { // a new array, the live bytes moved to its start
		b.data = append(b.data, p...)
		u.charge(b, cap(b.data)-b.charged)
	} else {
		b.data = append(b.data, p...)
	}
	if over := len(b.data) - u.perDir; over > 0 { // the newest bytes stay
		b.start += uint32(over)
		b.data = b.data[over:]
		if b.charged > 2*u.perDir {
			b.data = append(make([]byte, 0, u.perDir), b.data...)
			u.charge(b, cap(b.data)-b.charged)
		}
	}
	b.last = now
	u.lru.MoveToBack(b.elem)
	su := u.bySrc[b.src]
	su.lru.MoveToBack(b.srcElem)
	for su.held > u.perSrc {
		e := su.lru.Front()
		if e.Value.(*sentBuf) == b {
			break
		}
		u.drop(e.Value.(*sentBuf).key)
	}
	for u.held > u.memCap {
		e := u.lru.Front()
		if e.Value.(*sentBuf) == b {
			break
		}
		u.drop(e.Value.(*sentBuf).key)
	}
}

// ack forgets direction k's bytes before ack, which the peer acknowledged.
func (u *unacked) ack(k dirKey, ack uint32) {
	b := u.m[k]
	if b == nil {
		return
	}
	n := int64(int32(ack - b.start))
	switch {
	case n <= 0:
	case n >= int64(len(b.data)): // all acknowledged: where, is still known
		b.start, b.data = ack, b.data[:0]
	default: // the array stays, charged, until an append moves the rest
		b.start += uint32(n)
		b.data = b.data[n:]
	}
}

// acked returns how many of the bytes from sequence number seq on the
// peer of direction k has acknowledged, as far as known.
func (u *unacked) acked(k dirKey, seq uint32) int {
	b := u.m[k]
	if b == nil {
		return 0
	}
	return max(0, int(int32(b.start-seq)))
}

// differs reports whether p, at sequence number seq, differs from the
// unacknowledged bytes kept for direction k where they overlap.
func (u *unacked) differs(k dirKey, seq uint32, p []byte) bool {
	b := u.m[k]
	if b == nil {
		return false
	}
	rel := int64(int32(seq - b.start)) // p's offset in data
	lo, hi := max(rel, 0), min(rel+int64(len(p)), int64(len(b.data)))
	return lo < hi && string(p[lo-rel:hi-rel]) != string(b.data[lo:hi])
}

// drop forgets direction k's bytes.
func (u *unacked) drop(k dirKey) {
	if b := u.m[k]; b != nil {
		u.charge(b, -b.charged)
		u.lru.Remove(b.elem)
		su := u.bySrc[b.src]
		su.lru.Remove(b.srcElem)
		if su.lru.Len() == 0 {
			delete(u.bySrc, b.src)
		}
		delete(u.m, k)
	}
}

// expire forgets the directions untouched for the idle time.
func (u *unacked) expire(now time.Time) {
	for e := u.lru.Front(); e != nil; e = u.lru.Front() {
		b := e.Value.(*sentBuf)
		if now.Sub(b.last) < u.idle {
			return
		}
		u.drop(b.key)
	}
}
