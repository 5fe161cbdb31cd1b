package schedule

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// threeGbit is the paper's measurement deployment: 3 measurers of 1 Gbit/s.
const threeGbit = 3 * 125_000_000

func TestSyntheticNetwork(t *testing.T) {
	seed := [32]byte{1}
	rs := SyntheticNetwork(SynthRelays, seed)
	if len(rs) != SynthRelays {
		t.Fatalf("%d relays", len(rs))
	}
	if !slices.Equal(rs, SyntheticNetwork(SynthRelays, seed)) {
		t.Fatal("not deterministic")
	}
	if slices.Equal(rs, SyntheticNetwork(SynthRelays, [32]byte{2})) {
		t.Fatal("seed ignored")
	}
	var known []uint64
	var sum float64
	perAddr := map[netip.Addr]int{}
	fps := map[string]bool{}
	for _, r := range rs {
		if _, err := normFingerprint(r.Fingerprint); err != nil || fps[r.Fingerprint] {
			t.Fatalf("fingerprint %q", r.Fingerprint)
		}
		fps[r.Fingerprint] = true
		perAddr[r.Addr]++
		if r.Capacity != 0 {
			known = append(known, r.Capacity)
			sum += float64(r.Capacity)
		}
	}
	slices.Sort(known)
	median := float64(known[len(known)/2]) * 8 / 1e6
	mean := sum / float64(len(known)) * 8 / 1e6
	total := mean * float64(len(rs)) / 1e3 // Gbit/s, unknown relays counted at the mean
	shared := 0
	for _, n := range perAddr {
		if n > 1 {
			shared += n
		}
		if n > 4 {
			t.Errorf("%d relays on one address", n)
		}
	}
	unknown := len(rs) - len(known)
	t.Logf("median %.1f Mbit/s, mean %.1f Mbit/s, total ≈ %.0f Gbit/s, max %.0f Mbit/s, %d on shared addresses, %d unknown",
		median, mean, total, float64(known[len(known)-1])*8/1e6, shared, unknown)
	checks := []struct {
		name     string
		got      float64
		lo, hi   float64
		unitName string
	}{
		{"median", median, 20, 40, "Mbit/s"},
		{"mean", mean, 85, 115, "Mbit/s"},
		{"total", total, 600, 800, "Gbit/s"},
		{"shared share", float64(shared) / float64(len(rs)), 0.15, 0.25, ""},
		{"unknown share", float64(unknown) / float64(len(rs)), 0.005, 0.02, ""},
	}
	for _, c := range checks {
		if c.got < c.lo || c.got > c.hi {
			t.Errorf("%s = %.3f %s, want within [%v, %v]", c.name, c.got, c.unitName, c.lo, c.hi)
		}
	}
	if known[0] < SynthMin || known[len(known)-1] > SynthMax {
		t.Errorf("range [%d, %d]", known[0], known[len(known)-1])
	}
	if SyntheticNetwork(0, seed) != nil || len(SyntheticNetwork(3, seed)) != 3 {
		t.Error("small sizes")
	}
}

func fullPass(slot time.Duration, seed byte) SimResult {
	p := DefaultParams(threeGbit)
	p.Slot = slot
	return Simulate(p, SyntheticNetwork(SynthRelays, [32]byte{seed}), DefaultMeasurement)
}

// TestFullPassWithinDay fails if one pass over a consensus-sized network
// with the paper's 3 Gbit/s of measurers does not fit in a day.
func TestFullPassWithinDay(t *testing.T) {
	for _, slot := range []time.Duration{60 * time.Second, 40 * time.Second, 36 * time.Second, 35 * time.Second} {
		r := fullPass(slot, 1)
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		t.Log(r)
		if r.Duration > 24*time.Hour || r.Unscheduled != 0 {
			t.Errorf("slot %v: one pass takes %v (%d unscheduled), more than a day", slot, r.Duration, r.Unscheduled)
		}
		// Packing is close to the volume bound; capped relays each need a
		// slot of their own, hence the slack.
		if r.Slots < r.IdealSlots || float64(r.Slots) > 1.1*float64(r.IdealSlots)+float64(r.Capped) {
			t.Errorf("slot %v: %d slots for a volume bound of %d", slot, r.Slots, r.IdealSlots)
		}
		if r.Utilisation <= 0 || r.Utilisation > 1 {
			t.Errorf("utilisation %v", r.Utilisation)
		}
	}
}

func TestSimulateSmall(t *testing.T) {
	p := Params{Period: 3 * time.Minute, Slot: time.Minute, Multiplier: 2, Capacity: 100}
	rs := []Relay{
		{Fingerprint: fp(1), Capacity: 30}, // 60
		{Fingerprint: fp(2), Capacity: 25}, // 50
		{Fingerprint: fp(3), Capacity: 20}, // 40
		{Fingerprint: fp(4), Capacity: 80}, // 160: capped to 100
		{Fingerprint: fp(5), Capacity: 5},  // 10
		{Fingerprint: fp(6), Capacity: 0},  // assumed p75 = 30 → 60
	}
	// Order: 4 (est. 80), 1 (30), 6 (30 assumed; ties by fingerprint),
	// 2 (25), 3 (20), 5 (5). First fit: 4 → slot 0 (100, capped); 1 → 1
	// (60); 6 → 2 (60); 2 → 3 (50); 3 → 1 (100); 5 → 2 (70). Slot 3 is
	// past the 3-slot period, so relay 2 counts as unscheduled.
	r := Simulate(p, rs, 30*time.Second)
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	want := SimResult{
		Relays: 6, Groups: 6, Slots: 4, Slot: time.Minute, Measurement: 30 * time.Second,
		Duration: 4 * time.Minute, LastEnd: 3*time.Minute + 30*time.Second,
		IdealSlots: 4, Capacity: 100, TotalEstimate: 190, TotalDemand: 320,
		Utilisation: 0.8, AssumedCapacity: 30, Assumed: 1, Capped: 1, CappedGroups: 1, Unscheduled: 1,
	}
	if r != want {
		t.Fatalf("got  %+v\nwant %+v", r, want)
	}
	bad := []struct {
		name string
		p    Params
		m    time.Duration
		rs   []Relay
	}{
		{"zero measurement", p, 0, rs},
		{"measurement longer than slot", p, 2 * time.Minute, rs},
		{"bad params", Params{}, time.Second, rs},
		{"no relays", p, time.Second, nil},
		{"bad relay", p, time.Second, []Relay{{Fingerprint: "x"}}},
	}
	for _, b := range bad {
		if r := Simulate(b.p, b.rs, b.m); r.Err == nil {
			t.Errorf("%s: no error", b.name)
		} else if r.String() == "" {
			t.Errorf("%s: empty String", b.name)
		}
	}
}

// TestFullPassReport prints the simulation for the slot lengths compared in
// the design notes (go test -run FullPassReport -v).
func TestFullPassReport(t *testing.T) {
	if testing.Short() {
		t.Skip("report only")
	}
	for _, slot := range []time.Duration{60 * time.Second, 40 * time.Second, 36 * time.Second, 35 * time.Second} {
		for seed := byte(1); seed <= 3; seed++ {
			r := fullPass(slot, seed)
			t.Logf("seed %d: %v", seed, r)
		}
	}
	// Sensitivity: no relay above 1 Gbit/s (nothing capped by size alone),
	// and m = 2 instead of 2.25.
	relays := SyntheticNetwork(SynthRelays, [32]byte{1})
	small := slices.Clone(relays)
	for i := range small {
		small[i].Capacity = min(small[i].Capacity, 125_000_000)
	}
	for _, slot := range []time.Duration{60 * time.Second, 35 * time.Second} {
		p := DefaultParams(threeGbit)
		p.Slot = slot
		t.Logf("relays capped at 1 Gbit/s: %v", Simulate(p, small, DefaultMeasurement))
		p.Multiplier = 2
		t.Logf("m = 2: %v", Simulate(p, relays, DefaultMeasurement))
	}
	// The same with ColocatePrefix, and the spread-out daily Plan for
	// comparison.
	p := DefaultParams(threeGbit)
	p.Colocation = ColocatePrefix
	t.Logf("prefix grouping, 60s: %v", Simulate(p, relays, DefaultMeasurement))
	s, err := Plan(DefaultParams(threeGbit), relays, rand.NewChaCha8([32]byte{}))
	if err != nil {
		t.Fatal(err)
	}
	busy := 0
	var reserved float64
	for i, sl := range s.Slots {
		if len(sl) > 0 {
			busy++
		}
		reserved += float64(s.Reserved[i])
	}
	t.Logf("daily Plan, 60s slots: %d relays in %d of %d slots, mean load of busy slots %.0f%%, %d capped, %d unscheduled",
		s.Len(), busy, s.NumSlots(), 100*reserved/float64(busy)/threeGbit, len(s.Capped), len(s.Unscheduled))
}

func BenchmarkFullPass(b *testing.B) {
	relays := SyntheticNetwork(SynthRelays, [32]byte{1})
	for _, slot := range []time.Duration{60 * time.Second, 40 * time.Second, 36 * time.Second, 35 * time.Second} {
		b.Run(slot.String(), func(b *testing.B) {
			p := DefaultParams(threeGbit)
			p.Slot = slot
			var r SimResult
			for b.Loop() {
				r = Simulate(p, relays, DefaultMeasurement)
			}
			if r.Err != nil {
				b.Fatal(r.Err)
			}
			b.ReportMetric(r.Duration.Hours(), "pass-hours")
			b.ReportMetric(float64(r.Slots), "slots")
			b.ReportMetric(100*r.Utilisation, "util-%")
			b.ReportMetric(float64(r.Capped), "capped")
			b.Log(r)
		})
	}
}

func BenchmarkPlan(b *testing.B) {
	relays := SyntheticNetwork(SynthRelays, [32]byte{1})
	p := DefaultParams(threeGbit)
	for b.Loop() {
		if _, err := Plan(p, relays, rand.NewChaCha8([32]byte{})); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPlanJoint(b *testing.B) {
	relays := SyntheticNetwork(SynthRelays, [32]byte{1})
	p := DefaultParams(0)
	for b.Loop() {
		if _, err := PlanJoint(p, testCoords, relays, [32]byte{}); err != nil {
			b.Fatal(err)
		}
	}
}
