package flowstate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"
	"unsafe"
)

func key(i int) Key {
	return MakeKey(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), netip.MustParseAddr("192.0.2.1"), uint16(i), 80, 6)
}

// TestAgainstMap runs random operations on a Manager with a small cache
// (so states move between cache and store all the time) and on a plain
// map, and checks they always agree.
func TestAgainstMap(t *testing.T) {
	for _, storeName := range []string{"mem", "file"} {
		t.Run(storeName, func(t *testing.T) {
			const size = 48
			var store Store = NewMemStore()
			if storeName == "file" {
				fs, err := NewFileStore(filepath.Join(t.TempDir(), "store"), 12+size+16)
				if err != nil {
					t.Fatal(err)
				}
				defer fs.Close()
				store = fs
			}
			m, err := New(Config{StateSize: size, CacheEntries: 16, ExpectedFlows: 8, Store: store, IdleTimeout: 50 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			oracle := map[Key][]byte{}
			lastSeen := map[Key]time.Time{}
			rng := rand.New(rand.NewSource(7))
			now := time.Unix(1000, 0)
			for op := 0; op < 50000; op++ {
				k := key(rng.Intn(400))
				now = now.Add(time.Duration(rng.Intn(40)) * time.Millisecond)
				switch r := rng.Intn(100); {
				case r < 60: // read, compare, write
					st, created, err := m.Lookup(k, now)
					if err != nil {
						t.Fatal(err)
					}
					want, ok := oracle[k]
					if created == ok {
						t.Fatalf("op %d: created=%v but oracle has=%v", op, created, ok)
					}
					if !ok {
						want = make([]byte, size)
					}
					if !bytes.Equal(st, want) {
						t.Fatalf("op %d: state differs from the oracle", op)
					}
					rng.Read(st[:rng.Intn(size)])
					oracle[k] = append([]byte(nil), st...)
					lastSeen[k] = now
				case r < 70:
					_, ok := oracle[k]
					if m.Remove(k) != ok {
						t.Fatalf("op %d: Remove disagrees", op)
					}
					delete(oracle, k)
					delete(lastSeen, k)
				case r < 71:
					got := map[Key]bool{}
					m.Expire(now, func(k Key, st []byte) {
						if !bytes.Equal(st, oracle[k]) {
							t.Fatalf("op %d: expired state differs", op)
						}
						got[k] = true
					})
					for k, at := range lastSeen {
						if now.Sub(at) >= 50*time.Second != got[k] {
							t.Fatalf("op %d: flow idle %v expired=%v", op, now.Sub(at), got[k])
						}
						if got[k] {
							delete(oracle, k)
							delete(lastSeen, k)
						}
					}
				default: // idle time passes
					now = now.Add(time.Duration(rng.Intn(3000)) * time.Millisecond)
				}
				if op%97 == 0 {
					checkInvariants(t, m)
				}
				if m.Len() != len(oracle) {
					t.Fatalf("op %d: %d flows tracked, oracle has %d", op, m.Len(), len(oracle))
				}
			}
			if m.Stats.SwapIns == 0 || m.Stats.Evictions == 0 || m.Stats.Expired == 0 {
				t.Fatalf("the test did not exercise swapping and expiry: %+v", m.Stats)
			}
			t.Logf("%+v", m.Stats)
		})
	}
}

// checkInvariants checks that the cache table and the cache slots agree:
// every cached flow is found through the table, in the slot its entry
// names, and the table holds nothing else.
func checkInvariants(t *testing.T, m *Manager) {
	t.Helper()
	cached := 0
	for c := range m.slots {
		sl := &m.slots[c]
		if sl.ent < 0 {
			continue
		}
		cached++
		if e := &m.entries[sl.ent]; !e.inUse || e.cached != int32(c) || e.key != sl.key {
			t.Fatalf("cache slot %d and entry %d disagree", c, sl.ent)
		}
		if got := m.cfind(&sl.key, m.idx.sum(&sl.key)); got != int32(c) {
			t.Fatalf("cached flow in slot %d found in slot %d", c, got)
		}
	}
	words := 0
	for _, w := range m.ctab {
		if w != 0 {
			words++
		}
	}
	if words != cached || cached+len(m.freeSlots) != len(m.slots) {
		t.Fatalf("%d table words, %d cached states, %d free slots of %d", words, cached, len(m.freeSlots), len(m.slots))
	}
}

// An entry is one cache line.
func TestEntrySize(t *testing.T) {
	if n := unsafe.Sizeof(entry{}); n != 64 {
		t.Fatalf("entry is %d bytes", n)
	}
}

// TestFreshness plays the untrusted store: it replays an old seal of a
// flow, swaps two flows' seals, and alters one; each is detected.
func TestFreshness(t *testing.T) {
	setup := func() (*Manager, *MemStore) {
		st := NewMemStore()
		m, _ := New(Config{StateSize: 32, CacheEntries: 1, Store: st})
		return m, st
	}
	write := func(m *Manager, k Key, b byte) {
		s, _, err := m.Lookup(k, time.Unix(1, 0))
		if err != nil {
			t.Fatal(err)
		}
		s[0] = b
	}
	handleOf := func(m *Manager, k Key) uint64 { return uint64(m.idx.find(&k, m.idx.sum(&k)).ent) }
	a, b := key(1), key(2)

	// Replay: keep A's first seal, let A change and be sealed again, put
	// the old seal back.
	m, st := setup()
	write(m, a, 1)
	write(m, b, 1) // evicts A (seal 1)
	old := st.Raw(handleOf(m, a))
	write(m, a, 2) // A back in, B out
	write(m, b, 2) // A out again (seal 2)
	st.SetRaw(handleOf(m, a), old)
	if _, _, err := m.Lookup(a, time.Unix(2, 0)); !errors.Is(err, ErrFreshness) {
		t.Fatalf("replayed state: %v", err)
	}

	// Swap: give A the seal of B.
	m, st = setup()
	write(m, a, 1)
	write(m, b, 1)
	write(m, key(3), 1) // both A and B are now sealed
	st.SetRaw(handleOf(m, a), st.Raw(handleOf(m, b)))
	if _, _, err := m.Lookup(a, time.Unix(2, 0)); !errors.Is(err, ErrFreshness) {
		t.Fatalf("swapped state: %v", err)
	}

	// Alter one bit.
	m, st = setup()
	write(m, a, 1)
	write(m, b, 1)
	blob := st.Raw(handleOf(m, a))
	blob[20] ^= 1
	st.SetRaw(handleOf(m, a), blob)
	if _, _, err := m.Lookup(a, time.Unix(2, 0)); !errors.Is(err, ErrFreshness) {
		t.Fatalf("altered state: %v", err)
	}
	// The flow was dropped; the manager goes on.
	if _, created, err := m.Lookup(a, time.Unix(3, 0)); err != nil || !created {
		t.Fatalf("after a detected attack: created=%v err=%v", created, err)
	}

	// A new incarnation of the same flow cannot be fed its predecessor's
	// seal (versions never restart for a slot).
	m, st = setup()
	write(m, a, 7)
	write(m, b, 1) // A sealed (version 1)
	firstHandle := handleOf(m, a)
	first := st.Raw(firstHandle)
	m.Remove(b)
	m.Remove(a)
	write(m, a, 8) // the same 5-tuple again, reusing its own entry and slot
	if handleOf(m, a) != firstHandle {
		t.Fatal("the test must reuse A's store slot")
	}
	write(m, b, 2) // sealed as the next version
	st.SetRaw(handleOf(m, a), first)
	if _, _, err := m.Lookup(a, time.Unix(4, 0)); !errors.Is(err, ErrFreshness) {
		t.Fatalf("previous incarnation's state accepted: %v", err)
	}
}

// TestIndexGrows inserts far more flows than the index was sized for and
// checks every one is still found.
func TestIndexGrows(t *testing.T) {
	m, _ := New(Config{StateSize: 8, CacheEntries: 64, ExpectedFlows: 64})
	const n = 20000
	for i := 0; i < n; i++ {
		st, _, err := m.Lookup(key(i), time.Unix(0, 0))
		if err != nil {
			t.Fatal(err)
		}
		st[0] = byte(i)
	}
	for i := 0; i < n; i++ {
		st, created, err := m.Lookup(key(i), time.Unix(0, 0))
		if err != nil || created || st[0] != byte(i) {
			t.Fatalf("flow %d: created=%v err=%v state=%d", i, created, err, st[0])
		}
	}
	if m.Len() != n {
		t.Fatalf("Len = %d", m.Len())
	}
}

func TestKey(t *testing.T) {
	k := MakeKey(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("2001:db8::1"), 1234, 443, 6)
	if k.Reverse().Reverse() != k || k.Reverse() == k {
		t.Fatal("Reverse")
	}
}

// TestLargeTables uses tables big enough to live in their own mappings
// (huge pages), grows the entry table and the index past their first
// size, and checks every flow.
func TestLargeTables(t *testing.T) {
	const n = 150_000
	m, err := New(Config{StateSize: 64, CacheEntries: 1 << 16, ExpectedFlows: 70_000})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if len(m.mem.maps) == 0 {
		t.Fatal("no table was mapped")
	}
	now := time.Unix(0, 0)
	for pass := 0; pass < 2; pass++ {
		for i := 0; i < n; i++ {
			st, created, err := m.Lookup(key(i), now)
			if err != nil || created != (pass == 0) {
				t.Fatalf("pass %d flow %d: created=%v err=%v", pass, i, created, err)
			}
			if pass == 0 {
				binary.BigEndian.PutUint32(st, uint32(i))
			} else if got := binary.BigEndian.Uint32(st); got != uint32(i) {
				t.Fatalf("flow %d has the state of flow %d", i, got)
			}
		}
	}
	if m.Len() != n || m.Stats.SwapIns == 0 {
		t.Fatalf("Len %d, %+v", m.Len(), m.Stats)
	}
	checkInvariants(t, m)
}

// TestClassTimeouts: an established flow stays for EstablishedTimeout,
// the others for IdleTimeout, cached or stored; a reused entry starts in
// the default class.
func TestClassTimeouts(t *testing.T) {
	for _, cache := range []int{1, 8} { // 1: most states live in the store
		m, err := New(Config{StateSize: 16, CacheEntries: cache, IdleTimeout: time.Minute, EstablishedTimeout: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Unix(1_000_000, 0)
		key := func(i byte) Key { var k Key; k[0], k[36] = i, 6; return k }
		for i := byte(1); i <= 4; i++ {
			if _, _, err := m.Lookup(key(i), t0); err != nil {
				t.Fatal(err)
			}
		}
		if !m.SetClass(key(2), ClassEstablished) || !m.SetClass(key(3), ClassEstablished) {
			t.Fatal("SetClass missed a tracked flow")
		}
		if m.SetClass(key(9), ClassEstablished) {
			t.Fatal("SetClass found an untracked flow")
		}
		m.SetClass(key(3), ClassDefault) // closed again
		var gone []byte
		m.Expire(t0.Add(2*time.Minute), func(k Key, _ []byte) { gone = append(gone, k[0]) })
		slices.Sort(gone)
		if !slices.Equal(gone, []byte{1, 3, 4}) {
			t.Errorf("cache %d: after 2 idle minutes %v expired, want 1 3 4", cache, gone)
		}
		if n := m.Expire(t0.Add(59*time.Minute), nil); n != 0 || m.Len() != 1 {
			t.Errorf("cache %d: the established flow expired before its hour (%d expired, %d left)", cache, n, m.Len())
		}
		if n := m.Expire(t0.Add(61*time.Minute), nil); n != 1 || m.Len() != 0 {
			t.Errorf("cache %d: the established flow outlived its hour (%d expired, %d left)", cache, n, m.Len())
		}
		// The entry is reused: the new flow is in the default class.
		if _, _, err := m.Lookup(key(2), t0.Add(62*time.Minute)); err != nil {
			t.Fatal(err)
		}
		if n := m.Expire(t0.Add(64*time.Minute), nil); n != 1 {
			t.Errorf("cache %d: a new flow on a reused entry kept the old class", cache)
		}
	}
}

// TestMaxFlows: a full table makes room for a new flow by displacing one
// that is not an established connection (its state seen by OnEvict), and
// refuses the new flow when all it looked at are established.
func TestMaxFlows(t *testing.T) {
	for _, cache := range []int{2, 16} { // 2: most states live in the store
		var evicted []byte
		m, err := New(Config{StateSize: 16, CacheEntries: cache, MaxFlows: 8, IdleTimeout: time.Minute,
			OnEvict: func(k Key, st []byte) {
				if st[0] != k[0] {
					t.Errorf("evicted flow %d with the state of flow %d", k[0], st[0])
				}
				evicted = append(evicted, k[0])
			}})
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Unix(1_000_000, 0)
		key := func(i int) Key { var k Key; k[0], k[1], k[36] = byte(i), byte(i>>8), 6; return k }
		for i := 1; i <= 8; i++ {
			st, _, err := m.Lookup(key(i), t0.Add(time.Duration(i)*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			st[0] = byte(i)
			if i <= 4 {
				m.SetClass(key(i), ClassEstablished)
			}
		}
		for i := 9; i <= 40; i++ {
			st, _, err := m.Lookup(key(i), t0.Add(time.Duration(i)*time.Millisecond))
			if err != nil {
				t.Fatalf("cache %d: new flow %d: %v", cache, i, err)
			}
			st[0] = byte(i)
			if m.Len() != 8 {
				t.Fatalf("cache %d: %d flows in a table of 8", cache, m.Len())
			}
		}
		for i := 1; i <= 4; i++ {
			if st, created, err := m.Lookup(key(i), t0.Add(time.Second)); err != nil || created || st[0] != byte(i) {
				t.Fatalf("cache %d: established flow %d: created %v, state %d, %v", cache, i, created, st[0], err)
			}
		}
		if len(evicted) != 32 || evicted[0] != 5 || m.Stats.Displaced != 32 {
			t.Errorf("cache %d: evicted %v (%d displaced), want 32 flows, the oldest new one (5) first", cache, evicted, m.Stats.Displaced)
		}
		// Established everywhere: a new flow is refused, the others stay.
		for i := 37; i <= 40; i++ {
			m.SetClass(key(i), ClassEstablished)
		}
		if _, _, err := m.Lookup(key(99), t0.Add(2*time.Second)); !errors.Is(err, ErrFull) {
			t.Fatalf("cache %d: a new flow in a table full of established connections: %v, want ErrFull", cache, err)
		}
		if m.Len() != 8 || m.Stats.Refused != 1 {
			t.Errorf("cache %d: %d flows, %d refused after a refusal", cache, m.Len(), m.Stats.Refused)
		}
		m.Remove(key(40))
		if _, created, err := m.Lookup(key(99), t0.Add(3*time.Second)); err != nil || !created {
			t.Errorf("cache %d: with room again, a new flow: created %v, %v", cache, created, err)
		}
	}
}
