// Package flowstate is LightBox's flow-state manager: per-flow state for
// 100,000s of flows kept fast by a small trusted cache of the working set
// (CLOCK replacement, an LRU approximation, with its own small lookup
// table so that a hit touches little memory), with every other flow's
// state sealed into an untrusted store.
//
// Trust boundary. A Manager and everything it points to — the cache of
// states, the cuckoo index over all flows with each flow's version
// counter, the sealing key and nonce counter — is the trusted side (an
// enclave's memory; in Bento, the function's memory). The Store is the
// untrusted side: it sees only sealed, fixed-size blobs under opaque
// handles, and may lose, corrupt, replay or swap them.
//
// Each state is a fixed-size, pointer-free byte record. When the cache is
// full, a state not used recently is sealed with AES-256-GCM (nonce: a
// 96-bit counter that never repeats; additional data: the flow key, its
// store slot and the slot's version, which increments at every seal, is
// never reset, and stays in the trusted index) and put in the store.
// Bringing it back opens it against the version the index holds, so a
// stale, replayed, swapped or altered blob is detected. Idle flows expire by the caller's trusted clock, whether
// cached or stored.
package flowstate

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"runtime"
	"time"
)

// Key identifies a flow: source and destination address (16 bytes each,
// IPv4 as IPv4-mapped IPv6), source and destination port, protocol.
type Key [37]byte

// MakeKey builds a flow key.
func MakeKey(src, dst netip.Addr, sport, dport uint16, proto uint8) Key {
	var k Key
	s, d := src.As16(), dst.As16()
	copy(k[0:16], s[:])
	copy(k[16:32], d[:])
	binary.BigEndian.PutUint16(k[32:], sport)
	binary.BigEndian.PutUint16(k[34:], dport)
	k[36] = proto
	return k
}

// Reverse returns the key of the flow's other direction.
func (k Key) Reverse() Key {
	var r Key
	copy(r[0:16], k[16:32])
	copy(r[16:32], k[0:16])
	copy(r[32:34], k[34:36])
	copy(r[34:36], k[32:34])
	r[36] = k[36]
	return r
}

// Config sets a Manager up.
type Config struct {
	StateSize     int           // bytes of state per flow
	CacheEntries  int           // states kept in the trusted cache (LightBox: 4096)
	ExpectedFlows int           // initial index capacity (it grows as needed)
	Store         Store         // untrusted store; default a MemStore
	IdleTimeout   time.Duration // flows idle this long expire (0: never)
	// EstablishedTimeout is how long a flow of ClassEstablished may stay
	// idle (0: IdleTimeout). Real stacks keep an idle connection open for
	// hours (Linux: days); a middlebox that forgot it sooner would drop
	// or misread its next packet.
	EstablishedTimeout time.Duration
	// MaxFlows bounds the flows tracked (0: no bound). A new flow in a
	// full table takes the place of the flow idle longest among the next
	// DropSample entries that is not an established connection, as Linux
	// conntrack's early drop does; if all of those are established, the
	// new flow is refused (ErrFull). A flood of new flows thus displaces
	// other new flows, not live connections.
	MaxFlows int
	// OnEvict, if not nil, sees each flow displaced for a new one, with
	// its state, before it goes (as Expire's onExpire does). It must not
	// call the Manager.
	OnEvict func(Key, []byte)
}

// DropSample is how many entries a full table looks at for a flow to
// give way to a new one.
const DropSample = 64

// Class says which idle timeout applies to a flow; the middlebox sets it
// as the flow's state changes (SetClass).
type Class uint8

const (
	// ClassDefault: IdleTimeout. New flows, handshakes, teardowns, UDP.
	ClassDefault Class = iota
	// ClassEstablished: EstablishedTimeout. A TCP connection whose
	// handshake completed and which neither side has closed.
	ClassEstablished
)

// Errors from Lookup.
var (
	// ErrFreshness: the store returned a blob that is not the latest seal
	// of this flow (stale, replayed, swapped or altered). The flow is
	// dropped; its state is lost.
	ErrFreshness = errors.New("flowstate: stored state failed verification (stale, replayed, swapped or altered); flow dropped")
	// ErrFull: the table holds MaxFlows flows and none it looked at could
	// give way; the new flow is not tracked.
	ErrFull = errors.New("flowstate: flow table full (MaxFlows) of established connections; the new flow is not tracked")
)

// An entry is one tracked flow in the trusted index: 64 bytes, one cache
// line. Its store slot is its own position in the entry table, so a slot
// and its version counter stay together for good: the pair (slot, version)
// is never sealed twice, even when the entry is reused for another flow.
type entry struct {
	key     Key  // 37 bytes
	inUse   bool //
	class   Class
	_       [1]byte
	cached  int32  // cache slot, or -1 when the state is in the store
	version uint64 // seals so far; the store's blob must be seal number version
	last    int64  // last access (ns, trusted clock); while cached, the cache's copy is current
}

// A cslot describes what one trusted cache slot holds.
type cslot struct {
	key  Key // the cached flow, compared on every hit
	ent  int32
	hash uint32 // the flow's hash>>32: its word (and home) in the cache table
	last int64  // last access (ns, trusted clock)
}

// Manager tracks flow states. It is not safe for concurrent use: a
// middlebox runs it on its one processing goroutine.
//
// A lookup hashes the flow key once. A hit is answered by the cache
// alone: a small open-addressed table from flow to cache slot (8 bytes a
// slot, sized for the cache, so it stays in the CPU's caches), the slot's
// description (key and last access) and the state. Only a miss goes to the
// cuckoo index over every flow, the entry table and the store.
type Manager struct {
	cfg     Config
	idx     *index
	entries []entry
	freeEnt []int32

	// The trusted cache: CacheEntries states, replaced by CLOCK (second
	// chance), an LRU approximation whose hit costs one store: a hit sets
	// the slot's reference bit; eviction sweeps the hand past referenced
	// slots, clearing their bits, and takes the first unreferenced one.
	states    []byte
	slots     []cslot
	ref       []bool
	hand      int32
	freeSlots []int32
	dropHand  int // where the next early drop starts looking
	// ctab maps cached flows to their slots, linear probing: each word is
	// hash>>32 << 32 | slot+1, 0 when empty; a word's home is (hash>>32) &
	// cmask, so moving words never needs the slots' descriptions.
	ctab  []uint64
	cmask uint64

	mem      *arena // where the large tables live
	ownStore *MemStore
	aead     cipher.AEAD
	nonceCtr uint64
	blob     []byte
	nonce    [12]byte
	aadBuf   []byte
	sink     byte // where prefetch's loads go

	Stats Stats
}

// Stats count what the manager did.
type Stats struct {
	Hits, SwapIns, Creates, Evictions, Expired, Verifications uint64
	// Displaced: flows that gave way to new ones in a full table;
	// Refused: lookups of new flows that found no room (each packet of
	// a flow refused asks again).
	Displaced, Refused uint64
}

// New returns a Manager.
func New(cfg Config) (*Manager, error) {
	if cfg.StateSize <= 0 || cfg.CacheEntries <= 0 {
		return nil, fmt.Errorf("flowstate: StateSize and CacheEntries must be positive")
	}
	var own *MemStore
	if cfg.Store == nil {
		own = NewMemStore()
		cfg.Store = own
	}
	if cfg.ExpectedFlows < cfg.CacheEntries {
		cfg.ExpectedFlows = cfg.CacheEntries
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	blk, _ := aes.NewCipher(key)
	g, _ := cipher.NewGCM(blk)
	nt := 1
	for nt < 2*cfg.CacheEntries { // load at most 1/2: short probes
		nt <<= 1
	}
	mem := &arena{}
	m := &Manager{
		cfg: cfg, aead: g, mem: mem, ownStore: own,
		states: alloc[byte](mem, cfg.CacheEntries*cfg.StateSize),
		slots:  alloc[cslot](mem, cfg.CacheEntries), ref: make([]bool, cfg.CacheEntries),
		ctab: alloc[uint64](mem, nt), cmask: uint64(nt - 1),
		entries: alloc[entry](mem, cfg.ExpectedFlows)[:0],
	}
	m.idx = newIndex(mem, cfg.ExpectedFlows, func(ei int32) *Key { return &m.entries[ei].key })
	runtime.AddCleanup(m, func(a *arena) { a.free() }, mem)
	for i := cfg.CacheEntries - 1; i >= 0; i-- {
		m.slots[i].ent = -1
		m.freeSlots = append(m.freeSlots, int32(i))
	}
	return m, nil
}

// Close releases the manager's memory (and that of the store it made
// itself, if Config.Store was nil). States it handed out become invalid;
// the manager must not be used again. A manager that is not closed
// releases its memory when the garbage collector finds it unreachable.
func (m *Manager) Close() {
	m.mem.free()
	m.states, m.slots, m.ctab, m.entries = nil, nil, nil, nil
	m.idx.buckets = nil
	if m.ownStore != nil {
		m.ownStore.Close()
	}
}

// BlobSize is the size of one sealed state in the store.
func (m *Manager) BlobSize() int { return 12 + m.cfg.StateSize + 16 }

// Len is the number of flows tracked.
func (m *Manager) Len() int { return m.idx.n }

func (m *Manager) state(slot int32) []byte {
	off := int(slot) * m.cfg.StateSize
	return m.states[off : off+m.cfg.StateSize : off+m.cfg.StateSize]
}

// cfind returns the cache slot holding flow k (hash h), or -1.
func (m *Manager) cfind(k *Key, h uint64) int32 {
	tag := h >> 32 << 32
	for i := (h >> 32) & m.cmask; ; i = (i + 1) & m.cmask {
		w := m.ctab[i]
		if w == 0 {
			return -1
		}
		if w&^0xffffffff == tag {
			if s := int32(uint32(w)) - 1; m.slots[s].key == *k {
				return s
			}
		}
	}
}

func (m *Manager) cinsert(h uint64, slot int32) {
	i := (h >> 32) & m.cmask
	for m.ctab[i] != 0 {
		i = (i + 1) & m.cmask
	}
	m.ctab[i] = h>>32<<32 | uint64(slot+1)
}

// cdelete removes slot's flow from the cache table, shifting back the
// words after it that would otherwise be cut off from their home.
func (m *Manager) cdelete(slot int32) {
	i := uint64(m.slots[slot].hash) & m.cmask
	for uint32(m.ctab[i]) != uint32(slot+1) {
		i = (i + 1) & m.cmask
	}
	for j := (i + 1) & m.cmask; m.ctab[j] != 0; j = (j + 1) & m.cmask {
		home := (m.ctab[j] >> 32) & m.cmask
		// Move j's word into the hole at i unless its home lies in (i, j].
		if (j-home)&m.cmask >= (j-i)&m.cmask {
			m.ctab[i] = m.ctab[j]
			i = j
		}
	}
	m.ctab[i] = 0
}

// Lookup returns the state of flow k, creating a zeroed one if the flow is
// new (created is then true). The slice stays valid until the next call
// of any Manager method; writes to it are the flow's new state. now is the
// trusted clock.
func (m *Manager) Lookup(k Key, now time.Time) (state []byte, created bool, err error) {
	h := m.idx.sum(&k)
	if c := m.cfind(&k, h); c >= 0 {
		m.Stats.Hits++
		m.slots[c].last = now.UnixNano()
		m.ref[c] = true
		return m.state(c), false, nil
	}
	victim := m.nextVictim()
	if ei := m.idx.candidate(h); ei >= 0 {
		m.prefetch(ei, victim)
	}
	s := m.idx.find(&k, h)
	if s == nil {
		if m.cfg.MaxFlows > 0 && m.idx.n >= m.cfg.MaxFlows {
			if !m.earlyDrop() {
				m.Stats.Refused++
				return nil, false, ErrFull
			}
			victim = m.nextVictim() // the flow that went may have freed a slot
		}
		ei := m.newEntry(k)
		slot, err := m.takeSlot(victim)
		if err != nil {
			m.dropEntry(ei)
			return nil, false, err
		}
		m.idx.insert(k, ei, h)
		m.attach(ei, slot, h, now)
		st := m.state(slot)
		clear(st)
		m.Stats.Creates++
		return st, true, nil
	}
	// Swap in: make room, then open the sealed state into the slot.
	ei := s.ent
	slot, err := m.takeSlot(victim)
	if err != nil {
		return nil, false, err
	}
	if err := m.load(ei, slot); err != nil {
		m.freeSlots = append(m.freeSlots, slot)
		m.idx.remove(&k, h)
		m.dropEntry(ei)
		return nil, false, err
	}
	m.attach(ei, slot, h, now)
	m.Stats.SwapIns++
	return m.state(slot), false, nil
}

// Remove stops tracking flow k (a FIN or RST, say).
func (m *Manager) Remove(k Key) bool {
	h := m.idx.sum(&k)
	s := m.idx.find(&k, h)
	if s == nil {
		return false
	}
	ei := s.ent
	m.idx.remove(&k, h)
	if c := m.entries[ei].cached; c >= 0 {
		m.detach(c)
		m.freeSlots = append(m.freeSlots, c)
	} else {
		_ = m.cfg.Store.Delete(uint64(ei))
	}
	m.dropEntry(ei)
	return true
}

// earlyDrop removes, of the next DropSample entries, the flow idle
// longest that is not an established connection, and reports whether
// there was one.
func (m *Manager) earlyDrop() bool {
	n := len(m.entries)
	best, bestLast := int32(-1), int64(math.MaxInt64)
	for i := 0; i < DropSample && i < n; i++ {
		ei := int32((m.dropHand + i) % n)
		e := &m.entries[ei]
		if !e.inUse || e.class == ClassEstablished {
			continue
		}
		last := e.last
		if e.cached >= 0 {
			last = m.slots[e.cached].last
		}
		if last < bestLast {
			best, bestLast = ei, last
		}
	}
	m.dropHand = (m.dropHand + DropSample) % max(n, 1)
	if best < 0 {
		return false
	}
	e := &m.entries[best]
	if m.cfg.OnEvict != nil {
		if e.cached >= 0 {
			m.cfg.OnEvict(e.key, m.state(e.cached))
		} else if st, err := m.open(best, make([]byte, 0, m.cfg.StateSize)); err == nil {
			m.cfg.OnEvict(e.key, st)
		}
	}
	m.Remove(e.key)
	m.Stats.Displaced++
	return true
}

// Full reports whether the table holds MaxFlows flows.
func (m *Manager) Full() bool { return m.cfg.MaxFlows > 0 && m.idx.n >= m.cfg.MaxFlows }

// Has reports whether flow k is tracked, without touching it.
func (m *Manager) Has(k Key) bool { return m.idx.find(&k, m.idx.sum(&k)) != nil }

// SetClass sets flow k's class, which chooses its idle timeout. It
// reports whether the flow is tracked.
func (m *Manager) SetClass(k Key, c Class) bool {
	h := m.idx.sum(&k)
	s := m.idx.find(&k, h)
	if s == nil {
		return false
	}
	m.entries[s.ent].class = c
	return true
}

// Expire removes every flow idle for its class's timeout at trusted time
// now, cached or stored, calling onExpire (if not nil) with each one's
// state first; stored states are verified and opened for it. It returns
// how many flows expired.
func (m *Manager) Expire(now time.Time, onExpire func(Key, []byte)) int {
	if m.cfg.IdleTimeout <= 0 {
		return 0
	}
	limit := now.Add(-m.cfg.IdleTimeout).UnixNano()
	estLimit := limit
	if m.cfg.EstablishedTimeout > 0 {
		estLimit = now.Add(-m.cfg.EstablishedTimeout).UnixNano()
	}
	n := 0
	var tmp []byte
	for ei := range m.entries {
		e := &m.entries[ei]
		if !e.inUse {
			continue
		}
		last := e.last
		if e.cached >= 0 {
			last = m.slots[e.cached].last
		}
		lim := limit
		if e.class == ClassEstablished {
			lim = estLimit
		}
		if last > lim {
			continue
		}
		if onExpire != nil {
			if e.cached >= 0 {
				onExpire(e.key, m.state(e.cached))
			} else {
				if tmp == nil {
					tmp = make([]byte, m.cfg.StateSize)
				}
				if st, err := m.open(int32(ei), tmp[:0]); err == nil {
					onExpire(e.key, st)
				}
			}
		}
		m.Remove(e.key)
		n++
	}
	m.Stats.Expired += uint64(n)
	return n
}

func (m *Manager) newEntry(k Key) int32 {
	if n := len(m.freeEnt); n > 0 {
		ei := m.freeEnt[n-1]
		m.freeEnt = m.freeEnt[:n-1]
		// Keep counting the slot's versions: the pair (slot, version) is
		// never sealed twice, even across flows.
		e := &m.entries[ei]
		e.key, e.inUse, e.cached, e.class = k, true, -1, ClassDefault
		return ei
	}
	m.entries = append(grow(m.mem, m.entries), entry{key: k, inUse: true, cached: -1})
	return int32(len(m.entries) - 1)
}

// dropEntry frees an entry; its store slot and version stay with it.
func (m *Manager) dropEntry(ei int32) {
	e := &m.entries[ei]
	e.inUse, e.cached = false, -1
	m.freeEnt = append(m.freeEnt, ei)
}

// nextVictim returns -1 if a cache slot is free, or else the slot to
// evict: the first one the CLOCK hand finds not used since it last passed.
func (m *Manager) nextVictim() int32 {
	if len(m.freeSlots) > 0 {
		return -1
	}
	victim := m.hand
	for m.ref[victim] {
		m.ref[victim] = false
		victim = (victim + 1) % int32(len(m.slots))
	}
	m.hand = (victim + 1) % int32(len(m.slots))
	return victim
}

// prefetch reads, all at once, the memory a swap-in of entry ei over the
// victim slot (if not -1) is about to use: the entry and its sealed state
// in the store; the victim's state, entry, store slot and cache table
// word. At a million flows each of these is a cache miss; Go has no
// prefetch instruction, but independent loads whose results are combined
// let the CPU wait for all of them in the time of one, where the swap-in
// alone would take them one by one.
func (m *Manager) prefetch(ei, victim int32) {
	x := m.entries[ei].key[0]
	p, _ := m.cfg.Store.(prefetcher)
	if victim >= 0 {
		v := &m.slots[victim]
		x ^= byte(m.entries[v.ent].version) ^ byte(m.ctab[uint64(v.hash)&m.cmask])
		x ^= touch(m.state(victim))
		if p != nil {
			x ^= p.prefetch(uint64(v.ent))
		}
	}
	if p != nil {
		x ^= p.prefetch(uint64(ei))
	}
	m.sink = x
}

// maxTouch bounds the cache lines prefetch reads of one state or blob; the
// hardware's stream prefetcher brings in the rest of a long one.
const maxTouch = 16

func touch(b []byte) byte {
	var x byte
	for i := 0; i < len(b) && i < maxTouch*64; i += 64 {
		x ^= b[i]
	}
	return x
}

// takeSlot returns a free cache slot if victim is -1, or else empties
// victim, sealing its state into the store.
func (m *Manager) takeSlot(victim int32) (int32, error) {
	if victim < 0 {
		n := len(m.freeSlots)
		s := m.freeSlots[n-1]
		m.freeSlots = m.freeSlots[:n-1]
		return s, nil
	}
	ei := m.slots[victim].ent
	if err := m.seal(ei, m.state(victim)); err != nil {
		return -1, err
	}
	m.entries[ei].last = m.slots[victim].last
	m.detach(victim)
	m.Stats.Evictions++
	return victim, nil
}

// seal writes state as the next version of entry ei into the store.
func (m *Manager) seal(ei int32, state []byte) error {
	e := &m.entries[ei]
	e.version++
	m.nonceCtr++
	binary.BigEndian.PutUint64(m.nonce[4:], m.nonceCtr)
	m.blob = append(m.blob[:0], m.nonce[:]...)
	m.blob = m.aead.Seal(m.blob, m.nonce[:], state, m.aad(ei))
	return m.cfg.Store.Put(uint64(ei), m.blob)
}

// aad binds a sealed state to its flow, its store slot and its version.
func (m *Manager) aad(ei int32) []byte {
	e := &m.entries[ei]
	a := append(m.aadBuf[:0], e.key[:]...)
	a = binary.BigEndian.AppendUint64(a, uint64(ei))
	m.aadBuf = binary.BigEndian.AppendUint64(a, e.version)
	return m.aadBuf
}

// open fetches and verifies entry ei's sealed state, appending it to into.
func (m *Manager) open(ei int32, into []byte) ([]byte, error) {
	var err error
	m.blob, err = m.cfg.Store.Get(uint64(ei), m.blob[:0])
	if err != nil || len(m.blob) != m.BlobSize() {
		return nil, ErrFreshness
	}
	m.Stats.Verifications++
	out, err := m.aead.Open(into, m.blob[:12], m.blob[12:], m.aad(ei))
	if err != nil {
		return nil, ErrFreshness
	}
	return out, nil
}

// load opens entry ei's sealed state into cache slot.
func (m *Manager) load(ei int32, slot int32) error {
	_, err := m.open(ei, m.state(slot)[:0])
	return err
}

// attach puts entry ei (hash h) into cache slot.
func (m *Manager) attach(ei int32, slot int32, h uint64, now time.Time) {
	e := &m.entries[ei]
	e.cached = slot
	m.slots[slot] = cslot{key: e.key, ent: ei, hash: uint32(h >> 32), last: now.UnixNano()}
	m.cinsert(h, slot)
	m.ref[slot] = true
}

// detach empties cache slot; the caller reuses or frees it.
func (m *Manager) detach(slot int32) {
	m.cdelete(slot)
	m.entries[m.slots[slot].ent].cached = -1
	m.slots[slot].ent = -1
	m.ref[slot] = false
}
