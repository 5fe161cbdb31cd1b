// Package flowstate is LightBox's flow-state manager: per-flow state for
// 100,000s of flows kept fast by a small trusted cache of the working set
// (CLOCK replacement, an LRU approximation), with every other flow's state
// sealed into an untrusted store.
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
// never reset, and stays in the trusted index) and put in the store. Bringing it back opens it against the
// version the index holds, so a stale, replayed, swapped or altered blob is
// detected. Idle flows expire by the caller's trusted clock, whether
// cached or stored.
package flowstate

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
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
}

// Errors from Lookup.
var (
	// ErrFreshness: the store returned a blob that is not the latest seal
	// of this flow (stale, replayed, swapped or altered). The flow is
	// dropped; its state is lost.
	ErrFreshness = errors.New("flowstate: stored state failed verification (stale, replayed, swapped or altered); flow dropped")
)

type entry struct {
	key     Key
	version uint64 // seals so far; the store's blob must be seal number version
	handle  uint64 // store slot, valid once hasBlob
	hasBlob bool
	cached  int32 // cache slot, or -1 when stored
	last    int64 // last access, trusted clock (ns)
	inUse   bool
}

// Manager tracks flow states. It is not safe for concurrent use: a
// middlebox runs it on its one processing goroutine.
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
	owner     []int32 // entry of each cache slot, -1 when free
	ref       []bool
	hand      int32
	freeSlots []int32

	aead       cipher.AEAD
	nonceCtr   uint64
	nextHandle uint64
	blob       []byte
	nonce      [12]byte
	aadBuf     []byte

	Stats Stats
}

// Stats count what the manager did.
type Stats struct {
	Hits, SwapIns, Creates, Evictions, Expired, Verifications uint64
}

// New returns a Manager.
func New(cfg Config) (*Manager, error) {
	if cfg.StateSize <= 0 || cfg.CacheEntries <= 0 {
		return nil, fmt.Errorf("flowstate: StateSize and CacheEntries must be positive")
	}
	if cfg.Store == nil {
		cfg.Store = NewMemStore()
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
	m := &Manager{
		cfg: cfg, aead: g,
		states: make([]byte, cfg.CacheEntries*cfg.StateSize),
		owner:  make([]int32, cfg.CacheEntries), ref: make([]bool, cfg.CacheEntries),
		entries: make([]entry, 0, cfg.ExpectedFlows),
	}
	m.idx = newIndex(cfg.ExpectedFlows, func(ei int32) *Key { return &m.entries[ei].key })
	for i := cfg.CacheEntries - 1; i >= 0; i-- {
		m.owner[i] = -1
		m.freeSlots = append(m.freeSlots, int32(i))
	}
	return m, nil
}

// BlobSize is the size of one sealed state in the store.
func (m *Manager) BlobSize() int { return 12 + m.cfg.StateSize + 16 }

// Len is the number of flows tracked.
func (m *Manager) Len() int { return m.idx.n }

func (m *Manager) state(slot int32) []byte {
	off := int(slot) * m.cfg.StateSize
	return m.states[off : off+m.cfg.StateSize : off+m.cfg.StateSize]
}

// Lookup returns the state of flow k, creating a zeroed one if the flow is
// new (created is then true). The slice stays valid until the next call
// of any Manager method; writes to it are the flow's new state. now is the
// trusted clock.
func (m *Manager) Lookup(k Key, now time.Time) (state []byte, created bool, err error) {
	s := m.idx.find(&k)
	if s == nil {
		ei := m.newEntry(k)
		slot, err := m.takeSlot()
		if err != nil {
			m.dropEntry(ei)
			return nil, false, err
		}
		m.idx.insert(k, ei)
		m.attach(ei, slot)
		st := m.state(slot)
		clear(st)
		m.entries[ei].last = now.UnixNano()
		m.Stats.Creates++
		return st, true, nil
	}
	ei := s.ent
	e := &m.entries[ei]
	e.last = now.UnixNano()
	if e.cached >= 0 {
		m.Stats.Hits++
		m.ref[e.cached] = true
		return m.state(e.cached), false, nil
	}
	// Swap in: make room, then open the sealed state into the slot.
	slot, err := m.takeSlot()
	if err != nil {
		return nil, false, err
	}
	if err := m.load(ei, slot); err != nil {
		m.freeSlots = append(m.freeSlots, slot)
		m.idx.remove(&k)
		m.dropEntry(ei)
		return nil, false, err
	}
	m.attach(ei, slot)
	m.Stats.SwapIns++
	return m.state(slot), false, nil
}

// Remove stops tracking flow k (a FIN or RST, say).
func (m *Manager) Remove(k Key) bool {
	s := m.idx.find(&k)
	if s == nil {
		return false
	}
	ei := s.ent
	m.idx.remove(&k)
	if e := &m.entries[ei]; e.hasBlob && e.cached < 0 {
		_ = m.cfg.Store.Delete(e.handle)
	}
	if c := m.entries[ei].cached; c >= 0 {
		m.owner[c] = -1
		m.freeSlots = append(m.freeSlots, c)
	}
	m.dropEntry(ei)
	return true
}

// Expire removes every flow idle for IdleTimeout at trusted time now,
// cached or stored, calling onExpire (if not nil) with each one's state
// first; stored states are verified and opened for it. It returns how many
// flows expired.
func (m *Manager) Expire(now time.Time, onExpire func(Key, []byte)) int {
	if m.cfg.IdleTimeout <= 0 {
		return 0
	}
	limit := now.Add(-m.cfg.IdleTimeout).UnixNano()
	n := 0
	var tmp []byte
	for ei := range m.entries {
		e := &m.entries[ei]
		if !e.inUse || e.last > limit {
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
	e := entry{key: k, cached: -1, inUse: true}
	if n := len(m.freeEnt); n > 0 {
		ei := m.freeEnt[n-1]
		m.freeEnt = m.freeEnt[:n-1]
		// Reuse the store slot, and keep counting its versions: the pair
		// (handle, version) is never sealed twice, even across flows.
		old := m.entries[ei]
		e.handle, e.hasBlob, e.version = old.handle, old.hasBlob, old.version
		m.entries[ei] = e
		return ei
	}
	m.entries = append(m.entries, e)
	return int32(len(m.entries) - 1)
}

// dropEntry frees an entry; its store slot stays with the entry for reuse.
func (m *Manager) dropEntry(ei int32) {
	e := &m.entries[ei]
	e.inUse, e.cached = false, -1
	m.freeEnt = append(m.freeEnt, ei)
}

// takeSlot returns a free cache slot, evicting a state not used since the
// hand last passed (CLOCK) into the store if the cache is full.
func (m *Manager) takeSlot() (int32, error) {
	if n := len(m.freeSlots); n > 0 {
		s := m.freeSlots[n-1]
		m.freeSlots = m.freeSlots[:n-1]
		return s, nil
	}
	victim := m.hand
	for m.ref[victim] {
		m.ref[victim] = false
		victim = (victim + 1) % int32(len(m.owner))
	}
	m.hand = (victim + 1) % int32(len(m.owner))
	ei := m.owner[victim]
	if err := m.seal(ei, m.state(victim)); err != nil {
		return -1, err
	}
	m.owner[victim] = -1
	m.entries[ei].cached = -1
	m.Stats.Evictions++
	return victim, nil
}

// seal writes state as the next version of entry ei into the store.
func (m *Manager) seal(ei int32, state []byte) error {
	e := &m.entries[ei]
	if !e.hasBlob {
		e.handle, e.hasBlob = m.nextHandle, true
		m.nextHandle++
	}
	e.version++
	m.nonceCtr++
	binary.BigEndian.PutUint64(m.nonce[4:], m.nonceCtr)
	m.blob = append(m.blob[:0], m.nonce[:]...)
	m.blob = m.aead.Seal(m.blob, m.nonce[:], state, m.aad(e))
	return m.cfg.Store.Put(e.handle, m.blob)
}

// aad binds a sealed state to its flow, its store slot and its version.
func (m *Manager) aad(e *entry) []byte {
	a := append(m.aadBuf[:0], e.key[:]...)
	a = binary.BigEndian.AppendUint64(a, e.handle)
	m.aadBuf = binary.BigEndian.AppendUint64(a, e.version)
	return m.aadBuf
}

// open fetches and verifies entry ei's sealed state, appending it to into.
func (m *Manager) open(ei int32, into []byte) ([]byte, error) {
	e := &m.entries[ei]
	var err error
	m.blob, err = m.cfg.Store.Get(e.handle, m.blob[:0])
	if err != nil || len(m.blob) != m.BlobSize() {
		return nil, ErrFreshness
	}
	m.Stats.Verifications++
	out, err := m.aead.Open(into, m.blob[:12], m.blob[12:], m.aad(e))
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

func (m *Manager) attach(ei int32, slot int32) {
	m.owner[slot] = ei
	m.entries[ei].cached = slot
	m.ref[slot] = true
}
