package schedule

import (
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Assignment is one relay's measurement in one slot.
type Assignment struct {
	Fingerprint string // upper-case hex
	Slot        int    // 0 ≤ Slot < NumSlots
	// Estimate is the capacity estimate z used, in bytes/s: the relay's
	// own, or the assumed one if Assumed is set.
	Estimate uint64
	// Demand is the rate, in bytes/s, the measurers should send to the
	// relay in aggregate: ceil(m·z), or a share of the measurers' capacity
	// if Capped is set.
	Demand  uint64
	Assumed bool
	// Capped is set when the relay's (or its co-located group's) demand
	// exceeded the measurers' capacity: the relay is measured with all the
	// slot's capacity (shared with its group) and the result is a lower
	// bound.
	Capped bool
}

// Schedule is one coordinator's measurement schedule for one period.
type Schedule struct {
	// Coordinator is the coordinator's ID ("" for Plan).
	Coordinator string
	// Params are the normalised parameters; Capacity is this
	// coordinator's measurer capacity.
	Params Params
	// AssumedCapacity is the estimate given to relays without one.
	AssumedCapacity uint64
	// Slots[i] lists the measurements in slot i, in placement order.
	Slots [][]Assignment
	// Reserved[i] is the measurer capacity reserved in slot i, bytes/s;
	// never more than Params.Capacity.
	Reserved []uint64
	// Unscheduled lists, sorted, the relays no slot could take.
	Unscheduled []string
	// Capped lists, sorted, the relays measured at capped demand.
	Capped []string
}

// NumSlots returns the number of slots in the period.
func (s *Schedule) NumSlots() int { return len(s.Slots) }

// Len returns the number of scheduled measurements.
func (s *Schedule) Len() int {
	n := 0
	for _, sl := range s.Slots {
		n += len(sl)
	}
	return n
}

// ByFingerprint returns every assignment keyed by fingerprint.
func (s *Schedule) ByFingerprint() map[string]Assignment {
	m := make(map[string]Assignment, s.Len())
	for _, sl := range s.Slots {
		for _, a := range sl {
			m[a.Fingerprint] = a
		}
	}
	return m
}

// Lookup returns the assignment of the relay with the given fingerprint
// (either case). It scans the schedule; use ByFingerprint for many
// look-ups.
func (s *Schedule) Lookup(fingerprint string) (Assignment, bool) {
	fp := strings.ToUpper(fingerprint)
	for _, sl := range s.Slots {
		for _, a := range sl {
			if a.Fingerprint == fp {
				return a, true
			}
		}
	}
	return Assignment{}, false
}

// SlotStart returns when slot i of the period starting at periodStart
// begins (see PeriodStart).
func (s *Schedule) SlotStart(periodStart time.Time, i int) time.Time {
	return periodStart.Add(time.Duration(i) * s.Params.Slot)
}

// MarshalText returns a canonical text form of the schedule: two runs with
// the same inputs give the same bytes. The format is line based:
//
//	flashflow-schedule 1
//	coordinator <id or ->
//	params period=<ns> slot=<ns> multiplier=<m> capacity=<B/s> assumed=<B/s> slots=<n>
//	a <slot> <fingerprint> <estimate> <demand> <flags>    (flags: -, assumed, capped, assumed,capped)
//	unscheduled <fingerprint>
func (s *Schedule) MarshalText() ([]byte, error) {
	var b []byte
	b = s.appendText(b)
	return b, nil
}

func (s *Schedule) appendText(b []byte) []byte {
	id := s.Coordinator
	if id == "" {
		id = "-"
	}
	b = append(b, "flashflow-schedule 1\ncoordinator "...)
	b = append(b, id...)
	b = fmt.Appendf(b, "\nparams period=%d slot=%d multiplier=%s capacity=%d assumed=%d slots=%d\n",
		int64(s.Params.Period), int64(s.Params.Slot),
		strconv.FormatFloat(s.Params.Multiplier, 'g', -1, 64),
		s.Params.Capacity, s.AssumedCapacity, len(s.Slots))
	for _, sl := range s.Slots {
		for _, a := range sl {
			flags := "-"
			switch {
			case a.Assumed && a.Capped:
				flags = "assumed,capped"
			case a.Assumed:
				flags = "assumed"
			case a.Capped:
				flags = "capped"
			}
			b = fmt.Appendf(b, "a %d %s %d %d %s\n", a.Slot, a.Fingerprint, a.Estimate, a.Demand, flags)
		}
	}
	for _, fp := range s.Unscheduled {
		b = append(b, "unscheduled "...)
		b = append(b, fp...)
		b = append(b, '\n')
	}
	return b
}

// uniform returns a uniformly distributed integer in [0, n), n > 0, from
// src. The derivation is part of the schedule's reproducibility contract, so
// it is spelled out rather than left to math/rand/v2 (whose bounded-integer
// algorithms are not promised to stay the same): x = src.Uint64(), and
// (hi, lo) = x·n as a 128-bit product; if lo < (2^64 mod n), x is redrawn;
// the result is hi (Lemire's multiply-shift with rejection).
func uniform(src rand.Source, n uint64) uint64 {
	hi, lo := bits.Mul64(src.Uint64(), n)
	if lo < n {
		thresh := -n % n
		for lo < thresh {
			hi, lo = bits.Mul64(src.Uint64(), n)
		}
	}
	return hi
}

// pick chooses a slot for which fits is true: up to tries uniformly random
// slots, then a scan of all n slots from a random start. It returns -1 if
// no slot fits.
func pick(src rand.Source, n, tries int, fits func(int) bool) int {
	for range tries {
		if s := int(uniform(src, uint64(n))); fits(s) {
			return s
		}
	}
	start := int(uniform(src, uint64(n)))
	for i := range n {
		if s := (start + i) % n; fits(s) {
			return s
		}
	}
	return -1
}

// grid is one coordinator's slots.
type grid struct {
	coord       Coordinator
	used        []uint64
	slots       [][]Assignment
	unscheduled []string
	capped      []string
}

// engine places groups for one or more coordinators. With a single
// coordinator it is exactly the short-term algorithm.
type engine struct {
	p       Params
	n       int
	assumed uint64
	grids   []*grid
	// groupSlots[key][c] lists the slots in which coordinator c measures
	// members of the co-location group key; used to keep coordinators out
	// of each other's slots for the same host.
	groupSlots map[string][][]int
	known      map[string]bool // fingerprints already planned (or tried)
}

func newEngine(p Params, n int, coords []Coordinator, assumed uint64) *engine {
	e := &engine{
		p:          p,
		n:          n,
		assumed:    assumed,
		groupSlots: make(map[string][][]int),
		known:      make(map[string]bool),
	}
	for _, c := range coords {
		e.grids = append(e.grids, &grid{
			coord: c,
			used:  make([]uint64, n),
			slots: make([][]Assignment, n),
		})
	}
	return e
}

// conflict reports whether a coordinator other than c measures a member of
// group key in slot s.
func (e *engine) conflict(key string, c, s int) bool {
	for other, ss := range e.groupSlots[key] {
		if other != c && slices.Contains(ss, s) {
			return true
		}
	}
	return false
}

func (e *engine) fits(key string, c, s int, reserve uint64, size int) bool {
	g := e.grids[c]
	return g.used[s] <= g.coord.Capacity-reserve && len(g.slots[s])+size <= e.p.MaxPerSlot && !e.conflict(key, c, s)
}

func (e *engine) commit(key string, c, s int, reserve uint64, as []Assignment) {
	g := e.grids[c]
	g.used[s] += reserve
	g.slots[s] = append(g.slots[s], as...)
	ss := e.groupSlots[key]
	if ss == nil {
		ss = make([][]int, len(e.grids))
		e.groupSlots[key] = ss
	}
	if !slices.Contains(ss[c], s) {
		ss[c] = append(ss[c], s)
	}
	for _, a := range as {
		if a.Capped {
			g.capped = append(g.capped, a.Fingerprint)
		}
	}
}

// placeAll places every group for every coordinator, in order.
func (e *engine) placeAll(src rand.Source, groups []*group) {
	for _, gr := range groups {
		for _, m := range gr.members {
			e.known[m.fp] = true
		}
		for c, g := range e.grids {
			reserve, shares, capped := allot(gr, g.coord.Capacity)
			s := pick(src, e.n, e.p.MaxTries, func(s int) bool { return e.fits(gr.key, c, s, reserve, len(gr.members)) })
			if s < 0 {
				for _, m := range gr.members {
					g.unscheduled = append(g.unscheduled, m.fp)
				}
				continue
			}
			as := make([]Assignment, len(gr.members))
			for i, m := range gr.members {
				as[i] = Assignment{
					Fingerprint: m.fp, Slot: s, Estimate: m.estimate,
					Demand: shares[i], Assumed: m.assumed, Capped: capped,
				}
			}
			e.commit(gr.key, c, s, reserve, as)
		}
	}
}

// schedule returns a copy of coordinator c's schedule.
func (e *engine) schedule(c int) *Schedule {
	g := e.grids[c]
	p := e.p
	p.Capacity = g.coord.Capacity
	s := &Schedule{
		Coordinator:     g.coord.ID,
		Params:          p,
		AssumedCapacity: e.assumed,
		Slots:           make([][]Assignment, e.n),
		Reserved:        slices.Clone(g.used),
		Unscheduled:     slices.Clone(g.unscheduled),
		Capped:          slices.Clone(g.capped),
	}
	for i, sl := range g.slots {
		if len(sl) > 0 {
			s.Slots[i] = slices.Clone(sl)
		}
	}
	slices.Sort(s.Unscheduled)
	slices.Sort(s.Capped)
	return s
}

// Plan computes the short-term schedule (prop 316 §3.2.1.2) for one
// deployment with p.Capacity bytes/s of measurer capacity per slot.
//
// src supplies the randomness; for a schedule reproducible from a secret
// use rand.NewChaCha8(secret) (for example with secret = DailySecret(...)).
// The result depends only on p, the set of relays (not their order) and
// the Uint64 stream of src.
//
// Relays no slot can take are listed in Schedule.Unscheduled; that is not
// an error. Errors are returned for invalid parameters, malformed or
// duplicate fingerprints, and a nil src.
func Plan(p Params, relays []Relay, src rand.Source) (*Schedule, error) {
	p, n, err := p.normalize(true)
	if err != nil {
		return nil, err
	}
	if src == nil {
		return nil, errors.New("schedule: nil random source")
	}
	groups, assumed, err := prepare(p, relays)
	if err != nil {
		return nil, err
	}
	e := newEngine(p, n, []Coordinator{{Capacity: p.Capacity}}, assumed)
	e.placeAll(src, groups)
	return e.schedule(0), nil
}
