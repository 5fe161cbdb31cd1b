package schedule

import (
	"cmp"
	"fmt"
	"math"
	"math/bits"
	"net/netip"
	"slices"
	"strings"
)

// Relay is a relay to be measured.
//
// Only relays that are in the consensus (and, in the short-term deployment,
// that opted in) should be planned; a relay that is offline when its slot
// comes is simply not measured that period (prop 316 §3.2.1.2).
type Relay struct {
	// Fingerprint is the relay's RSA identity fingerprint, 40 hex digits
	// (either case; schedules use upper case).
	Fingerprint string
	// Capacity is the existing capacity estimate z in bytes/s; 0 means
	// unknown.
	Capacity uint64
	// Addr is the relay's OR address, used for co-location. The zero
	// Addr (or an unspecified one) puts the relay in a group of its own.
	Addr netip.Addr
}

// member is one relay ready to be placed.
type member struct {
	fp       string
	estimate uint64 // z, or the assumed estimate
	assumed  bool
	demand   uint64 // ceil(m·z), uncapped
}

// group is a set of co-located relays placed together.
type group struct {
	key      string
	members  []member // estimate descending, then fingerprint
	estimate uint64   // saturating sum of the members' estimates
	demand   uint64   // saturating sum of the members' demands, uncapped
}

// normFingerprint checks that fp is 40 hex digits and returns it in upper
// case.
func normFingerprint(fp string) (string, error) {
	if len(fp) != 40 {
		return "", fmt.Errorf("%w: fingerprint %q is not 40 hex digits", ErrInvalidRelay, fp)
	}
	for i := 0; i < len(fp); i++ {
		c := fp[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return "", fmt.Errorf("%w: fingerprint %q is not 40 hex digits", ErrInvalidRelay, fp)
		}
	}
	return strings.ToUpper(fp), nil
}

// groupKey returns the co-location key of a relay. Relays without a usable
// address get a key of their own.
func groupKey(fp string, a netip.Addr, c Colocation) string {
	if !a.IsValid() || a.IsUnspecified() {
		return "fp:" + fp
	}
	a = a.Unmap().WithZone("")
	if c == ColocatePrefix {
		n := 48
		if a.Is4() {
			n = 24
		}
		p, err := a.Prefix(n)
		if err == nil {
			return "net:" + p.String()
		}
	}
	return "ip:" + a.String()
}

// demandOf returns ceil(m·z), saturating at the largest uint64.
func demandOf(m float64, z uint64) uint64 {
	f := math.Ceil(m * float64(z))
	if f >= math.MaxUint64 {
		return math.MaxUint64
	}
	return uint64(f)
}

func addSat(a, b uint64) uint64 {
	s, c := bits.Add64(a, b, 0)
	if c != 0 {
		return math.MaxUint64
	}
	return s
}

// percentile75 returns the 75th percentile of the non-zero values by the
// nearest-rank method: the ceil(0.75·n)-th smallest. It returns 0 if there
// are none.
func percentile75(vals []uint64) uint64 {
	known := make([]uint64, 0, len(vals))
	for _, v := range vals {
		if v != 0 {
			known = append(known, v)
		}
	}
	if len(known) == 0 {
		return 0
	}
	slices.Sort(known)
	rank := (3*len(known) + 3) / 4 // ceil(0.75·n), n ≥ 1
	return known[rank-1]
}

// assumedCapacity is the estimate given to relays without one.
func assumedCapacity(p Params, relays []Relay) uint64 {
	caps := make([]uint64, len(relays))
	for i, r := range relays {
		caps[i] = r.Capacity
	}
	if z := percentile75(caps); z != 0 {
		return z
	}
	return p.UnknownCapacity
}

// prepare validates and normalises relays, groups co-located ones and
// returns the groups in placement order: largest summed estimate first,
// then largest summed demand, then smallest fingerprint. The result does
// not depend on the order of relays. p must be normalised.
func prepare(p Params, relays []Relay) (groups []*group, assumed uint64, err error) {
	rs := make([]Relay, len(relays))
	for i, r := range relays {
		fp, err := normFingerprint(r.Fingerprint)
		if err != nil {
			return nil, 0, err
		}
		r.Fingerprint = fp
		rs[i] = r
	}
	slices.SortFunc(rs, func(a, b Relay) int { return strings.Compare(a.Fingerprint, b.Fingerprint) })
	for i := 1; i < len(rs); i++ {
		if rs[i].Fingerprint == rs[i-1].Fingerprint {
			return nil, 0, fmt.Errorf("%w: duplicate fingerprint %s", ErrInvalidRelay, rs[i].Fingerprint)
		}
	}
	assumed = assumedCapacity(p, rs)

	byKey := make(map[string]*group)
	for _, r := range rs {
		m := member{fp: r.Fingerprint, estimate: r.Capacity}
		if m.estimate == 0 {
			m.estimate, m.assumed = assumed, true
		}
		m.demand = demandOf(p.Multiplier, m.estimate)
		k := groupKey(r.Fingerprint, r.Addr, p.Colocation)
		g := byKey[k]
		if g == nil {
			g = &group{key: k}
			byKey[k] = g
			groups = append(groups, g) // in fingerprint order of first member
		}
		g.members = append(g.members, m)
		g.estimate = addSat(g.estimate, m.estimate)
		g.demand = addSat(g.demand, m.demand)
	}
	for _, g := range groups {
		slices.SortStableFunc(g.members, func(a, b member) int {
			return cmp.Compare(b.estimate, a.estimate) // fingerprint order kept for ties
		})
	}
	slices.SortFunc(groups, func(a, b *group) int {
		if c := cmp.Compare(b.estimate, a.estimate); c != 0 {
			return c
		}
		if c := cmp.Compare(b.demand, a.demand); c != 0 {
			return c
		}
		return strings.Compare(minFP(a), minFP(b))
	})
	return groups, assumed, nil
}

func minFP(g *group) string {
	m := g.members[0].fp
	for _, x := range g.members[1:] {
		if x.fp < m {
			m = x.fp
		}
	}
	return m
}

// allot returns what a group reserves in a slot of a coordinator with the
// given capacity, and each member's share (the rate the measurers send it).
// A group whose demand exceeds the capacity is capped: it reserves the whole
// capacity, which only fits an empty slot, and the members' shares are
// scaled down proportionally (rounded down).
func allot(g *group, capacity uint64) (reserve uint64, shares []uint64, capped bool) {
	shares = make([]uint64, len(g.members))
	if g.demand <= capacity {
		for i, m := range g.members {
			shares[i] = m.demand
		}
		return g.demand, shares, false
	}
	for i, m := range g.members {
		hi, lo := bits.Mul64(m.demand, capacity)
		shares[i], _ = bits.Div64(hi, lo, g.demand) // hi < g.demand since m.demand ≤ g.demand
	}
	return capacity, shares, true
}
