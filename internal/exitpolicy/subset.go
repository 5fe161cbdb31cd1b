package exitpolicy

import "net/netip"

// region is a set of destinations: every address in Prefix on every port in
// [Min, Max].
type region struct {
	Prefix   netip.Prefix
	Min, Max uint16
}

// AcceptsAll reports whether p accepts every destination in pfx on every
// port in [pmin, pmax]. The answer is exact: the region is split as rules
// cover parts of it, and any part reached by a reject rule, or by no rule at
// all, makes the answer false.
func (p *Policy) AcceptsAll(pfx netip.Prefix, pmin, pmax uint16) bool {
	pending := []region{{pfx.Masked(), pmin, pmax}}
	if p == nil {
		return false
	}
	for _, r := range p.Rules {
		if r.Name != "" {
			continue // onion rules hold no addresses
		}
		if len(pending) > maxRegions {
			return false // too intricate to decide cheaply: say no
		}
		var next []region
		for _, q := range pending {
			if !overlaps(r, q) {
				next = append(next, q)
				continue
			}
			if r.Action == Reject {
				return false
			}
			next = append(next, subtract(q, r)...)
		}
		pending = next
		if len(pending) == 0 {
			return true
		}
	}
	return len(pending) == 0
}

// maxRegions bounds the work of one AcceptsAll: a policy whose rules split
// a region into more pieces than this gets a conservative "no".
const maxRegions = 1 << 16

// AcceptsAllNames reports whether p accepts the destination name on every
// port in [pmin, pmax], where name is one onion address, WildOnion (every
// onion service) or "" (every destination given by name). For WildOnion a
// reject rule for one onion service on those ports makes the answer "no".
func (p *Policy) AcceptsAllNames(name string, pmin, pmax uint16) bool {
	if p == nil {
		return false
	}
	type span struct{ lo, hi uint16 }
	pending := []span{{pmin, pmax}}
	for _, r := range p.Rules {
		var covers, partial bool
		switch {
		case r.AnyHost:
			covers = true
		case r.Name == "":
			continue
		case name == "":
			partial = true // an onion rule covers only part of all names
		case r.Name == WildOnion:
			covers = true
		case name == WildOnion:
			partial = true // a rule for one onion service
		default:
			covers = r.Name == name
		}
		if !covers && !partial {
			continue
		}
		var next []span
		for _, q := range pending {
			if r.PortMax < q.lo || r.PortMin > q.hi {
				next = append(next, q)
				continue
			}
			if r.Action == Reject {
				return false
			}
			if partial {
				next = append(next, q)
				continue
			}
			if q.lo < r.PortMin {
				next = append(next, span{q.lo, r.PortMin - 1})
			}
			if q.hi > r.PortMax {
				next = append(next, span{r.PortMax + 1, q.hi})
			}
		}
		pending = next
		if len(pending) == 0 {
			return true
		}
	}
	return false
}

// Covers reports whether every destination q accepts is accepted by p too.
// Rules of q are checked one by one (reject rules of q are not used to carve
// out exceptions), so the answer may be a conservative "no". A "*" rule of
// q is checked for addresses only: at run time a destination given by name
// must still be accepted by both policies' name rules.
func (p *Policy) Covers(q *Policy) []string {
	var uncovered []string
	seen := map[string]bool{}
	for _, r := range q.Rules {
		if r.Action != Accept {
			continue
		}
		var ok bool
		switch {
		case r.Name != "":
			ok = p.AcceptsAllNames(r.Name, r.PortMin, r.PortMax)
		default:
			ok = p.AcceptsAll(r.Prefix, r.PortMin, r.PortMax)
		}
		if !ok && !seen[r.Source] {
			seen[r.Source] = true
			uncovered = append(uncovered, r.Source)
		}
	}
	return uncovered
}

func overlaps(r Rule, q region) bool {
	if r.Name != "" || r.Prefix.Addr().Is4() != q.Prefix.Addr().Is4() {
		return false
	}
	if r.PortMax < q.Min || r.PortMin > q.Max {
		return false
	}
	return r.Prefix.Overlaps(q.Prefix)
}

// subtract returns q minus the part of it that r covers, as disjoint regions.
// Prefixes either nest or are disjoint, and overlaps(r, q) holds.
func subtract(q region, r Rule) []region {
	var out []region
	// Ports of q outside r's port range keep all of q's addresses.
	if q.Min < r.PortMin {
		out = append(out, region{q.Prefix, q.Min, r.PortMin - 1})
	}
	if q.Max > r.PortMax {
		out = append(out, region{q.Prefix, r.PortMax + 1, q.Max})
	}
	lo, hi := max(q.Min, r.PortMin), min(q.Max, r.PortMax)
	if r.Prefix.Bits() <= q.Prefix.Bits() {
		return out // r covers all of q's addresses on the shared ports
	}
	// r is a strict sub-prefix of q: the shared ports stay pending for the
	// addresses of q outside r, a chain of sibling prefixes.
	bits := q.Prefix.Bits()
	addr := r.Prefix.Addr()
	for b := bits; b < r.Prefix.Bits(); b++ {
		// The sibling at depth b+1 of the path towards r.
		sib, _ := flipBit(addr, b).Prefix(b + 1)
		out = append(out, region{sib, lo, hi})
	}
	return out
}

func flipBit(a netip.Addr, bit int) netip.Addr {
	if a.Is4() {
		b := a.As4()
		b[bit/8] ^= 0x80 >> (bit % 8)
		return netip.AddrFrom4(b)
	}
	b := a.As16()
	b[bit/8] ^= 0x80 >> (bit % 8)
	return netip.AddrFrom16(b)
}
