package schedule

import (
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"strings"
	"time"
)

// Figures the synthetic network is built from. They are order-of-magnitude
// values for the public Tor network in 2023-2024 (Tor Metrics "Relays and
// bridges" and "Total relay bandwidth" graphs: about 7,000 relays, total
// advertised bandwidth of the order of 600-800 Gbit/s, a heavy-tailed
// distribution in which most relays are small and a few hundred carry most
// of the capacity, single tor processes rarely advertising more than about
// 1 Gbit/s). The log-normal below is fitted to those figures rather than to
// a particular consensus: median 30 Mbit/s and σ = 1.62 give a mean of
// about 100 Mbit/s after the cap and floor, hence about 700 Gbit/s for 7,000
// relays. The co-location and unknown-estimate shares are assumptions of
// this simulation, not measured figures.
const (
	// SynthRelays is the consensus size SyntheticNetwork is meant for.
	SynthRelays = 7000
	// SynthMedian is the median relay capacity, bytes/s (30 Mbit/s).
	SynthMedian = 30e6 / 8
	// SynthSigma is the σ of ln(capacity).
	SynthSigma = 1.62
	// SynthMax caps capacities (1.5 Gbit/s): 2.25 × this exceeds 3 Gbit/s,
	// so the very largest relays exercise capping.
	SynthMax = 1.5e9 / 8
	// SynthMin floors capacities (1 Mbit/s).
	SynthMin = 1e6 / 8
	// SynthShared is the share of relays placed on an address shared with
	// 1 to 3 other relays (operators running several tor processes on one
	// host).
	SynthShared = 0.20
	// SynthUnknown is the share of relays without an estimate (new
	// relays).
	SynthUnknown = 0.01
)

// SyntheticNetwork returns n relays (use SynthRelays for a consensus-sized
// network) with log-normal capacities (SynthMedian, SynthSigma, clamped to
// [SynthMin, SynthMax]), random fingerprints and IPv4 addresses, about
// SynthShared of them sharing an address with 1 to 3 others and about
// SynthUnknown with an unknown capacity (0). The result depends only on n
// and seed (up to the last bits of math.Log/Exp/Cos across platforms).
func SyntheticNetwork(n int, seed [32]byte) []Relay {
	if n <= 0 {
		return nil
	}
	rng := rand.NewChaCha8(seed)
	unit := func() float64 { return float64(rng.Uint64()>>11) / (1 << 53) } // [0, 1)
	normal := func() float64 {                                              // Box–Muller
		u1 := 1 - unit() // (0, 1]
		u2 := unit()
		return math.Sqrt(-2*math.Log(u1)) * math.Cos(2*math.Pi*u2)
	}
	randAddr := func() netip.Addr {
		for {
			x := uint32(rng.Uint64())
			a := netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)})
			if b := a.As4()[0]; b != 0 && b != 10 && b != 127 && b < 224 {
				return a
			}
		}
	}
	relays := make([]Relay, 0, n)
	for len(relays) < n {
		// A host with k relays: k = 1, or 2-4 for a SynthShared share of
		// relays. With host-size h ~ U{2,3,4} (mean 3), picking a shared
		// host with probability q gives a share 3q/(3q + (1-q)) = SynthShared.
		q := SynthShared / (3 - 2*SynthShared)
		k := 1
		if unit() < q {
			k = 2 + int(uniform(rng, 3))
		}
		addr := randAddr()
		for range k {
			if len(relays) == n {
				break
			}
			var fp [20]byte
			for i := 0; i < 20; i += 8 {
				v := rng.Uint64()
				for j := 0; j < 8 && i+j < 20; j++ {
					fp[i+j] = byte(v >> (8 * j))
				}
			}
			c := SynthMedian * math.Exp(SynthSigma*normal())
			c = min(max(c, SynthMin), SynthMax)
			r := Relay{
				Fingerprint: strings.ToUpper(hex.EncodeToString(fp[:])),
				Capacity:    uint64(c),
				Addr:        addr,
			}
			if unit() < SynthUnknown {
				r.Capacity = 0
			}
			relays = append(relays, r)
		}
	}
	return relays
}

// SimResult is the outcome of Simulate.
type SimResult struct {
	Relays int // relays simulated
	Groups int // co-location groups (measured as one)
	// Slots is the number of slots one full pass uses when every
	// measurement is packed as early as possible.
	Slots       int
	Slot        time.Duration
	Measurement time.Duration
	// Duration is Slots × Slot: the time one full pass over the network
	// takes.
	Duration time.Duration
	// LastEnd is when the last measurement ends:
	// (Slots-1) × Slot + Measurement.
	LastEnd time.Duration
	// IdealSlots is ceil(TotalDemand / Capacity), a lower bound on Slots.
	IdealSlots int
	// Capacity is the measurer capacity per slot, bytes/s.
	Capacity uint64
	// TotalEstimate sums the estimates used (assumed ones included),
	// bytes/s.
	TotalEstimate uint64
	// TotalDemand sums the capacity reserved in all slots, bytes/s.
	TotalDemand uint64
	// Utilisation is TotalDemand / (Slots × Capacity).
	Utilisation float64
	// AssumedCapacity is the estimate given to relays without one.
	AssumedCapacity uint64
	Assumed         int // relays whose estimate was assumed
	Capped          int // relays measured at capped demand
	// CappedGroups counts the co-location groups (or lone relays) that
	// were capped; each fills a slot by itself.
	CappedGroups int
	// Unscheduled counts relays that would fall beyond the end of one
	// Period (0 when Duration ≤ Period).
	Unscheduled int
	// Err is set if the parameters or relays were invalid.
	Err error
}

// String summarises r on one line.
func (r SimResult) String() string {
	if r.Err != nil {
		return "simulation failed: " + r.Err.Error()
	}
	return fmt.Sprintf("%d relays (%d groups), slot %v: %d slots = %v (last measurement ends %v; ideal %d slots = %v), "+
		"estimates %.1f Gbit/s, demand %.1f Gbit/s, capacity %.2f Gbit/s, utilisation %.1f%%, "+
		"%d assumed at %.1f Mbit/s, %d capped (%d slots), %d unscheduled",
		r.Relays, r.Groups, r.Slot, r.Slots, r.Duration, r.LastEnd, r.IdealSlots,
		time.Duration(r.IdealSlots)*r.Slot,
		float64(r.TotalEstimate)*8/1e9, float64(r.TotalDemand)*8/1e9, float64(r.Capacity)*8/1e9,
		100*r.Utilisation, r.Assumed, float64(r.AssumedCapacity)*8/1e6, r.Capped, r.CappedGroups, r.Unscheduled)
}

// Simulate measures one full pass over relays by a coordinator with
// p.Capacity bytes/s of measurer capacity that, instead of spreading
// measurements over the period, packs them as early as possible: groups in
// Plan's order (largest first), each in the first slot with enough spare
// capacity (first-fit decreasing), with Plan's demand, co-location and
// capping rules. measurement is the measurement duration d; it must be
// positive and no longer than p.Slot. p.Period is only used to count
// relays that would not fit in one period; unlike Plan, Simulate accepts a
// Period that is not a multiple of Slot and ignores the partial last slot.
func Simulate(p Params, relays []Relay, measurement time.Duration) SimResult {
	res := SimResult{Relays: len(relays), Slot: p.Slot, Measurement: measurement, Capacity: p.Capacity}
	if p.Slot > 0 && p.Period >= p.Slot {
		p.Period -= p.Period % p.Slot // only used to count relays past one period
	}
	p, nPeriod, err := p.normalize(true)
	if err != nil {
		res.Err = err
		return res
	}
	if measurement <= 0 || measurement > p.Slot {
		res.Err = fmt.Errorf("%w: measurement %v must be positive and at most the slot %v", ErrInvalidParams, measurement, p.Slot)
		return res
	}
	groups, assumed, err := prepare(p, relays)
	if err != nil {
		res.Err = err
		return res
	}
	if len(groups) == 0 {
		res.Err = errors.New("schedule: no relays to simulate")
		return res
	}
	res.Groups = len(groups)
	res.AssumedCapacity = assumed

	var used []uint64
	for _, g := range groups {
		reserve, _, capped := allot(g, p.Capacity)
		s := 0
		for s < len(used) && used[s] > p.Capacity-reserve {
			s++
		}
		if s == len(used) {
			used = append(used, 0)
		}
		used[s] += reserve
		res.TotalDemand = addSat(res.TotalDemand, reserve)
		if capped {
			res.CappedGroups++
		}
		for _, m := range g.members {
			res.TotalEstimate = addSat(res.TotalEstimate, m.estimate)
			if m.assumed {
				res.Assumed++
			}
			if capped {
				res.Capped++
			}
			if s >= nPeriod {
				res.Unscheduled++
			}
		}
	}
	res.Slots = len(used)
	res.Duration = time.Duration(res.Slots) * p.Slot
	res.LastEnd = time.Duration(res.Slots-1)*p.Slot + measurement
	res.IdealSlots = int(res.TotalDemand / p.Capacity)
	if res.TotalDemand%p.Capacity != 0 {
		res.IdealSlots++
	}
	res.Utilisation = float64(res.TotalDemand) / (float64(res.Slots) * float64(p.Capacity))
	return res
}
