// Package schedule plans FlashFlow measurements (tor proposal 316): which
// relay is measured in which measurement slot of a measurement period, by
// which coordinator, and at what rate.
//
// # Short-term schedule (prop 316 §3.2.1.2)
//
// [Plan] divides a period (normally 24 h, aligned to the Unix epoch so that
// it starts at 00:00 UTC, like tor's shared random value) into slots
// (normally 60 s: a 30 s measurement plus set-up and tear-down). Relays are
// taken largest existing capacity estimate first, ties broken by
// fingerprint. Each relay needs demand = ceil(m·z) bytes/s of measurer
// capacity, where z is its estimate and m the multiplier (2.25). A relay
// without an estimate (Capacity 0) is assumed to have the 75th percentile of
// the known estimates. A relay is put in a uniformly random slot that still
// has enough spare capacity; after Params.MaxTries unlucky picks the slots
// are scanned from a random start, and if no slot fits the relay is
// reported as unscheduled (the planner never loops forever).
//
// A relay (or co-located group) whose demand alone exceeds the measurers'
// total capacity is capped at that capacity and placed in an empty slot: it
// is measured at the deployment's full capacity, so its result is only a
// lower bound of its real capacity.
//
// Co-located relays (same IP address; optionally the same IPv4 /24 or IPv6
// /48, see [Colocation]) are measured in the same slot, their demands
// summed, as prop 316 §5.2 asks: two relays sharing a host and measured at
// different times would each be credited with the host's whole capacity.
//
// # Multi-coordinator schedule (prop 316 §5.2)
//
// [PlanJoint] computes, from public inputs plus a secret shared by the
// cooperating coordinators, one schedule in which every relay is measured
// once by each coordinator, never by two coordinators in the same slot, and
// each coordinator's own capacity is respected in every slot. Every
// coordinator computes the same schedule without any communication: the
// random choices come from a ChaCha8 stream keyed with the period's
// [DailySecret] (HMAC-SHA256 of the shared secret over the consensus shared
// random value and the period number), and the inputs are sorted first so
// their order does not matter. Relays that appear during the period are
// added with [JointSchedule.AddNew] in the first slots with enough spare
// capacity.
//
// # Simulation
//
// [SyntheticNetwork] builds a consensus-sized relay list with a heavy-tailed
// capacity distribution, and [Simulate] reports how long one full pass over
// it takes when measurements are packed as early as possible.
//
// Units: every capacity and demand in this package is in bytes per second
// (1 Gbit/s = 125,000,000 bytes/s).
package schedule
