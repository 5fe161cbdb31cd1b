package flowstate

import "hash/maphash"

// The index is a cuckoo hash over every tracked flow: two candidate
// buckets per key from one keyed hash, four slots per bucket, a bounded
// displacement chain, a small stash for keys that would not fit, and a
// doubling resize when the stash fills. The hash is keyed with a random
// per-process seed, so chosen 5-tuples cannot force collisions.
const (
	slotsPerBucket = 4
	maxKicks       = 500
	maxStash       = 8
)

// A slot is 8 bytes, so a bucket is half a cache line; the key itself is
// compared in the entry table, only when the tag matches.
type slot struct {
	tag uint32 // hash bits, never 0 in a used slot
	ent int32  // index into Manager.entries
}

func (s slot) used() bool { return s.tag != 0 }

type bucket [slotsPerBucket]slot

type index struct {
	seed    maphash.Seed
	buckets []bucket
	mask    uint64
	stash   []slot
	n       int
	keyOf   func(ent int32) *Key
	mem     *arena
}

func newIndex(mem *arena, capacity int, keyOf func(int32) *Key) *index {
	nb := 1
	for nb*slotsPerBucket < capacity*2 { // keep the load under ~50%
		nb <<= 1
	}
	return &index{seed: maphash.MakeSeed(), buckets: alloc[bucket](mem, nb), mask: uint64(nb - 1), keyOf: keyOf, mem: mem}
}

// sum is the keyed hash of k; the manager computes it once per lookup.
func (x *index) sum(k *Key) uint64 { return maphash.Bytes(x.seed, k[:]) }

func (x *index) split(h uint64) (b1, b2 uint64, tag uint32) {
	b1 = h & x.mask
	b2 = (h >> 32) & x.mask
	if b2 == b1 {
		b2 = b1 ^ 1&x.mask
	}
	return b1, b2, uint32(h>>40) | 1
}

// find returns the slot holding k (hash h), or nil.
func (x *index) find(k *Key, h uint64) *slot {
	b1, b2, tag := x.split(h)
	for _, b := range [2]uint64{b1, b2} {
		bk := &x.buckets[b]
		for i := range bk {
			if s := &bk[i]; s.tag == tag && *x.keyOf(s.ent) == *k {
				return s
			}
		}
	}
	for i := range x.stash {
		if *x.keyOf(x.stash[i].ent) == *k {
			return &x.stash[i]
		}
	}
	return nil
}

// candidate returns the entry of a slot in the two buckets of hash h whose
// tag matches, or -1, without reading the entry table: a swap-in starts
// the entry's, the stored state's and the victim's memory accesses
// together from it, then confirms the key with find. Both buckets are
// read before either is searched, so their cache misses overlap.
func (x *index) candidate(h uint64) int32 {
	b1, b2, tag := x.split(h)
	p, q := &x.buckets[b1], &x.buckets[b2]
	for i := range p {
		a, b := p[i], q[i]
		if a.tag == tag {
			return a.ent
		}
		if b.tag == tag {
			return b.ent
		}
	}
	return -1
}

// insert adds k → ent; k must be absent. Slots move during displacement,
// so callers keep no slot pointers across an insert.
func (x *index) insert(k Key, ent int32, h uint64) {
	b1, b2, tag := x.split(h)
	cur := slot{tag: tag, ent: ent}
	x.n++
	for _, b := range [2]uint64{b1, b2} {
		if x.place(b, cur) {
			return
		}
	}
	// Displace: evict a resident to its other bucket, up to maxKicks.
	b := b1
	for kick := 0; kick < maxKicks; kick++ {
		i := kick % slotsPerBucket
		cur, x.buckets[b][i] = x.buckets[b][i], cur
		o1, o2, _ := x.split(x.sum(x.keyOf(cur.ent)))
		if b == o1 {
			b = o2
		} else {
			b = o1
		}
		if x.place(b, cur) {
			return
		}
	}
	x.stash = append(x.stash, cur)
	if len(x.stash) > maxStash {
		x.grow()
	}
}

func (x *index) place(b uint64, s slot) bool {
	bk := &x.buckets[b]
	for i := range bk {
		if !bk[i].used() {
			bk[i] = s
			return true
		}
	}
	return false
}

// remove deletes k (hash h).
func (x *index) remove(k *Key, h uint64) bool {
	s := x.find(k, h)
	if s == nil {
		return false
	}
	x.n--
	for i := range x.stash {
		if &x.stash[i] == s {
			x.stash = append(x.stash[:i], x.stash[i+1:]...)
			return true
		}
	}
	*s = slot{}
	return true
}

// grow doubles the table and re-inserts everything.
func (x *index) grow() {
	old, stash := x.buckets, x.stash
	x.buckets = alloc[bucket](x.mem, 2*len(old))
	x.mask = uint64(len(x.buckets) - 1)
	x.stash, x.n = nil, 0
	for bi := range old {
		for _, s := range old[bi] {
			if s.used() {
				k := x.keyOf(s.ent)
				x.insert(*k, s.ent, x.sum(k))
			}
		}
	}
	for _, s := range stash {
		k := x.keyOf(s.ent)
		x.insert(*k, s.ent, x.sum(k))
	}
	release(x.mem, old)
}
