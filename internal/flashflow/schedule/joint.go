package schedule

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"
)

// Coordinator is one FlashFlow deployment taking part in a joint schedule.
type Coordinator struct {
	// ID is the coordinator's public identity, e.g. its bandwidth
	// authority's fingerprint: 1 to 128 printable ASCII characters, no
	// spaces. Coordinators are ordered by ID (byte-wise).
	ID string
	// Capacity is this deployment's total measurer capacity, bytes/s.
	Capacity uint64
}

func checkCoordinators(coords []Coordinator) ([]Coordinator, error) {
	if len(coords) == 0 {
		return nil, fmt.Errorf("%w: no coordinators", ErrInvalidParams)
	}
	cs := slices.Clone(coords)
	for _, c := range cs {
		if len(c.ID) == 0 || len(c.ID) > 128 {
			return nil, fmt.Errorf("%w: coordinator ID %q must be 1 to 128 characters", ErrInvalidRelay, c.ID)
		}
		for i := 0; i < len(c.ID); i++ {
			if c.ID[i] <= ' ' || c.ID[i] > '~' {
				return nil, fmt.Errorf("%w: coordinator ID %q is not printable ASCII without spaces", ErrInvalidRelay, c.ID)
			}
		}
		if c.Capacity == 0 {
			return nil, fmt.Errorf("%w: coordinator %s has zero capacity", ErrInvalidParams, c.ID)
		}
	}
	slices.SortFunc(cs, func(a, b Coordinator) int { return strings.Compare(a.ID, b.ID) })
	for i := 1; i < len(cs); i++ {
		if cs[i].ID == cs[i-1].ID {
			return nil, fmt.Errorf("%w: duplicate coordinator %s", ErrInvalidRelay, cs[i].ID)
		}
	}
	return cs, nil
}

// JointSchedule is the schedule shared by several coordinators for one
// period. It is safe for concurrent use.
type JointSchedule struct {
	mu sync.Mutex
	e  *engine
}

// PlanJoint computes the non-interactive multi-coordinator schedule of prop
// 316 §5.2. Every coordinator that calls it with the same p, the same set of
// coordinators, the same set of relays and the same secret gets the same
// schedule; the order of the slices does not matter (they are sorted by ID
// and fingerprint).
//
// The algorithm is Plan's, run once for all coordinators: groups of
// co-located relays are taken in Plan's order and, for each, every
// coordinator in ID order picks a slot (random picks, then a scan) that has
// spare capacity for it in that coordinator's own slots and in which no
// other coordinator measures the group. The random stream is
// rand.NewChaCha8(secret); with a single coordinator PlanJoint therefore
// gives exactly Plan(p with that coordinator's capacity, relays,
// rand.NewChaCha8(secret)).
//
// p.Capacity is ignored: each coordinator's own Capacity is used, and the
// demand of a relay is capped per coordinator. secret should be
// DailySecret(sharedSecret, srv, period): derived from a secret the
// coordinators share, so that relays cannot predict when they will be
// measured, and from the period's shared random value, so that it changes
// every period.
func PlanJoint(p Params, coordinators []Coordinator, relays []Relay, secret [32]byte) (*JointSchedule, error) {
	p, n, err := p.normalize(false)
	if err != nil {
		return nil, err
	}
	cs, err := checkCoordinators(coordinators)
	if err != nil {
		return nil, err
	}
	groups, assumed, err := prepare(p, relays)
	if err != nil {
		return nil, err
	}
	e := newEngine(p, n, cs, assumed)
	e.placeAll(rand.NewChaCha8(secret), groups)
	return &JointSchedule{e: e}, nil
}

// Coordinators returns the coordinators, sorted by ID.
func (j *JointSchedule) Coordinators() []Coordinator {
	j.mu.Lock()
	defer j.mu.Unlock()
	cs := make([]Coordinator, len(j.e.grids))
	for i, g := range j.e.grids {
		cs[i] = g.coord
	}
	return cs
}

// NumSlots returns the number of slots in the period.
func (j *JointSchedule) NumSlots() int { return j.e.n }

// AssumedCapacity returns the estimate given to relays without one.
func (j *JointSchedule) AssumedCapacity() uint64 { return j.e.assumed }

// For returns a copy of the schedule of the coordinator with the given ID.
func (j *JointSchedule) For(coordID string) (*Schedule, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for i, g := range j.e.grids {
		if g.coord.ID == coordID {
			return j.e.schedule(i), true
		}
	}
	return nil, false
}

// MarshalText returns the canonical text form of the whole schedule: a
// "flashflow-joint-schedule 1" line followed by every coordinator's
// Schedule.MarshalText, in ID order.
func (j *JointSchedule) MarshalText() ([]byte, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	b := []byte("flashflow-joint-schedule 1\n")
	for i := range j.e.grids {
		b = j.e.schedule(i).appendText(b)
	}
	return b, nil
}

// Digest returns SHA-256 of MarshalText. Coordinators can log or publish it
// to check that they computed the same schedule without revealing it.
func (j *JointSchedule) Digest() [32]byte {
	b, _ := j.MarshalText()
	return sha256.Sum256(b)
}

// Placement is where AddNew put a new relay for one coordinator.
type Placement struct {
	Coordinator string
	Assignment
}

// ErrDuplicate is returned by AddNew for a relay already in the schedule.
var ErrDuplicate = errors.New("schedule: relay already scheduled")

// UnscheduledError is returned by AddNew when some coordinators have no slot
// left with enough capacity for the new relay in this period.
type UnscheduledError struct {
	Fingerprint  string
	Coordinators []string
}

func (e *UnscheduledError) Error() string {
	return fmt.Sprintf("schedule: no slot left for new relay %s at %s", e.Fingerprint, strings.Join(e.Coordinators, ", "))
}

// AddNew adds a relay that appeared during the period (prop 316 §5.2: "it
// is measured separately by each BWAuth in the first slots with sufficient
// unallocated capacity"). For each coordinator in ID order it takes the
// first slot that starts after now and has enough spare capacity, no other
// coordinator measuring the relay's co-location group, preferring a later
// slot in which this coordinator already measures the group. No
// randomness is used.
//
// The period is taken to be the one containing now, with periods aligned to
// the Unix epoch (see PeriodOf); the slot containing now has already
// started and is not used. A relay with Capacity 0 gets AssumedCapacity.
//
// AddNew is deterministic given the schedule's state, so coordinators stay
// in agreement only if they add the same relays, in the same order, with
// the same now: use the valid-after time of the consensus in which the
// relays first appear, and add that consensus's new relays in fingerprint
// order.
//
// It returns the placements made; if some coordinators could not place the
// relay it also returns an *UnscheduledError naming them. A relay that was
// already planned or added (even if unscheduled) gives ErrDuplicate.
func (j *JointSchedule) AddNew(r Relay, now time.Time) ([]Placement, error) {
	fp, err := normFingerprint(r.Fingerprint)
	if err != nil {
		return nil, err
	}
	cur, err := slotAt(now, j.e.p.Period, j.e.p.Slot)
	if err != nil {
		return nil, err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	e := j.e
	if e.known[fp] {
		return nil, fmt.Errorf("%w: %s", ErrDuplicate, fp)
	}
	e.known[fp] = true
	z, assumed := r.Capacity, false
	if z == 0 {
		z, assumed = e.assumed, true
	}
	d := demandOf(e.p.Multiplier, z)
	key := groupKey(fp, r.Addr, e.p.Colocation)

	var out []Placement
	var missing []string
	for c, g := range e.grids {
		reserve, capped := d, false
		if reserve > g.coord.Capacity {
			reserve, capped = g.coord.Capacity, true
		}
		s := -1
		if ss := e.groupSlots[key]; ss != nil {
			for _, gs := range ss[c] {
				if gs > cur && e.fits(key, c, gs, reserve, 1) {
					s = gs
					break
				}
			}
		}
		for t := cur + 1; s < 0 && t < e.n; t++ {
			if e.fits(key, c, t, reserve, 1) {
				s = t
			}
		}
		if s < 0 {
			g.unscheduled = append(g.unscheduled, fp)
			missing = append(missing, g.coord.ID)
			continue
		}
		a := Assignment{Fingerprint: fp, Slot: s, Estimate: z, Demand: reserve, Assumed: assumed, Capped: capped}
		e.commit(key, c, s, reserve, []Assignment{a})
		out = append(out, Placement{Coordinator: g.coord.ID, Assignment: a})
	}
	if len(missing) > 0 {
		return out, &UnscheduledError{Fingerprint: fp, Coordinators: missing}
	}
	return out, nil
}
