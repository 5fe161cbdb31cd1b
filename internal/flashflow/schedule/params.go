package schedule

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Defaults from prop 316 §3.2 and §3.2.1.2.
const (
	// DefaultPeriod is the measurement period: every relay is measured once
	// per period.
	DefaultPeriod = 24 * time.Hour
	// DefaultSlot is the length of a measurement slot (a 30 s measurement
	// plus pre- and post-measurement work): 1,440 slots a day.
	DefaultSlot = 60 * time.Second
	// DefaultMeasurement is the measurement duration d.
	DefaultMeasurement = 30 * time.Second
	// DefaultMultiplier is the bandwidth multiplier m: measurers send m·z
	// to a relay whose existing estimate is z.
	DefaultMultiplier = 2.25
	// DefaultMaxTries is the number of uniformly random slot picks made for
	// a relay before falling back to a scan of all slots.
	DefaultMaxTries = 64
	// DefaultMaxPerSlot is the number of relays measured in one slot at
	// most: a slot's relays are measured at the same time, and a measurer
	// carries at most this many measurements at once
	// (measurer.MaxConcurrent).
	DefaultMaxPerSlot = 256
	// DefaultUnknownCapacity (100 Mbit/s) is assumed for relays without an
	// estimate when no planned relay has one and Params.UnknownCapacity is
	// zero. It errs on the high side: measuring with too much capacity
	// costs measurer time, measuring with too little underestimates.
	DefaultUnknownCapacity uint64 = 12_500_000
	// MaxSlots bounds Period/Slot so that a mistaken Slot (say 1 ns)
	// cannot make the planner allocate gigabytes.
	MaxSlots = 1 << 20
)

// Colocation selects which relays are treated as sharing a host and are
// therefore measured together in one slot.
type Colocation int

const (
	// ColocateAddr groups relays with the same IP address (IPv4-mapped
	// IPv6 addresses are unmapped, zones are ignored). This is the
	// default, and the minimum prop 316 §5.2 asks for.
	ColocateAddr Colocation = iota
	// ColocatePrefix groups relays in the same IPv4 /24 or IPv6 /48, the
	// wider grouping prop 316 §5.2 suggests. It can build large groups at
	// hosting providers; a group whose summed demand exceeds the
	// measurers' capacity is capped like a single relay.
	ColocatePrefix
)

func (c Colocation) String() string {
	switch c {
	case ColocateAddr:
		return "addr"
	case ColocatePrefix:
		return "prefix"
	}
	return fmt.Sprintf("Colocation(%d)", int(c))
}

// Params are a deployment's scheduling parameters.
type Params struct {
	// Period is the measurement period (DefaultPeriod). It must be a whole
	// multiple of Slot: a remainder would be a slot that cannot hold a
	// measurement, so it is rejected rather than rounded.
	Period time.Duration
	// Slot is the length of one measurement slot (DefaultSlot).
	Slot time.Duration
	// Multiplier is m (DefaultMultiplier); finite and positive.
	Multiplier float64
	// Capacity is the total measurer capacity in bytes/s available in
	// each slot. PlanJoint ignores it and uses each Coordinator's.
	Capacity uint64
	// MaxTries is the number of random slot picks per relay before the
	// fallback scan; 0 means DefaultMaxTries.
	MaxTries int
	// UnknownCapacity is the estimate assumed for relays with Capacity 0
	// when none of the planned relays has an estimate (otherwise the 75th
	// percentile of the known estimates is used); 0 means
	// DefaultUnknownCapacity.
	UnknownCapacity uint64
	// Colocation selects the co-location grouping (default ColocateAddr).
	Colocation Colocation
	// MaxPerSlot bounds the relays in one slot; 0 means
	// DefaultMaxPerSlot. A co-location group larger than that cannot be
	// scheduled.
	MaxPerSlot int
}

// DefaultParams returns prop 316's parameters (24 h period, 60 s slots,
// m = 2.25) for a deployment with the given total measurer capacity in
// bytes/s.
func DefaultParams(capacity uint64) Params {
	return Params{
		Period:     DefaultPeriod,
		Slot:       DefaultSlot,
		Multiplier: DefaultMultiplier,
		Capacity:   capacity,
	}
}

// ErrInvalidParams is wrapped by every parameter validation error.
var ErrInvalidParams = errors.New("schedule: invalid parameters")

// ErrInvalidRelay is wrapped by errors about a malformed or duplicated relay
// or coordinator.
var ErrInvalidRelay = errors.New("schedule: invalid relay")

func paramErr(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidParams}, a...)...)
}

// NumSlots returns Period/Slot, or 0 if they are not valid.
func (p Params) NumSlots() int {
	_, n, err := p.normalize(false)
	if err != nil {
		return 0
	}
	return n
}

// Validate reports whether p can be used by Plan.
func (p Params) Validate() error {
	_, _, err := p.normalize(true)
	return err
}

// normalize validates p, fills in defaults and returns the number of slots.
// Capacity is checked only if needCapacity is set.
func (p Params) normalize(needCapacity bool) (Params, int, error) {
	switch {
	case p.Period <= 0:
		return p, 0, paramErr("period %v is not positive", p.Period)
	case p.Slot <= 0:
		return p, 0, paramErr("slot %v is not positive", p.Slot)
	case p.Slot > p.Period:
		return p, 0, paramErr("slot %v is longer than period %v", p.Slot, p.Period)
	case p.Period%p.Slot != 0:
		return p, 0, paramErr("period %v is not a whole number of %v slots", p.Period, p.Slot)
	case p.Period/p.Slot > MaxSlots:
		return p, 0, paramErr("%d slots per period (period %v / slot %v), more than %d",
			p.Period/p.Slot, p.Period, p.Slot, MaxSlots)
	case math.IsNaN(p.Multiplier) || math.IsInf(p.Multiplier, 0):
		return p, 0, paramErr("multiplier %v is not finite", p.Multiplier)
	case p.Multiplier <= 0:
		return p, 0, paramErr("multiplier %v is not positive", p.Multiplier)
	case needCapacity && p.Capacity == 0:
		return p, 0, paramErr("measurer capacity is zero")
	case p.MaxTries < 0:
		return p, 0, paramErr("max tries %d is negative", p.MaxTries)
	case p.MaxPerSlot < 0:
		return p, 0, paramErr("max relays per slot %d is negative", p.MaxPerSlot)
	case p.Colocation != ColocateAddr && p.Colocation != ColocatePrefix:
		return p, 0, paramErr("unknown colocation %v", p.Colocation)
	}
	if p.MaxTries == 0 {
		p.MaxTries = DefaultMaxTries
	}
	if p.MaxPerSlot == 0 {
		p.MaxPerSlot = DefaultMaxPerSlot
	}
	if p.UnknownCapacity == 0 {
		p.UnknownCapacity = DefaultUnknownCapacity
	}
	return p, int(p.Period / p.Slot), nil
}
