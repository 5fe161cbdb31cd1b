package schedule

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

var testCoords = []Coordinator{
	{ID: "bwauth-a", Capacity: 3 * 125_000_000},
	{ID: "bwauth-b", Capacity: 2 * 125_000_000},
	{ID: "bwauth-c", Capacity: 125_000_000},
}

func shuffled[T any](s []T, seed uint64) []T {
	c := slices.Clone(s)
	rand.New(rand.NewPCG(seed, seed)).Shuffle(len(c), func(i, j int) { c[i], c[j] = c[j], c[i] })
	return c
}

func jointText(t *testing.T, j *JointSchedule) string {
	t.Helper()
	b, err := j.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// checkJoint verifies the joint invariants: for every coordinator the
// schedule is valid and covers every relay, and no relay's co-location group
// is measured by two coordinators in the same slot.
func checkJoint(t *testing.T, j *JointSchedule, relays []Relay) {
	t.Helper()
	owner := map[string]map[int]string{} // group key → slot → coordinator
	for _, c := range j.Coordinators() {
		s, ok := j.For(c.ID)
		if !ok {
			t.Fatalf("no schedule for %s", c.ID)
		}
		if s.Params.Capacity != c.Capacity || s.Coordinator != c.ID {
			t.Fatalf("schedule of %s has capacity %d, coordinator %q", c.ID, s.Params.Capacity, s.Coordinator)
		}
		checkSchedule(t, s, relays)
		idx := s.ByFingerprint()
		for _, r := range relays {
			a, ok := idx[strings.ToUpper(r.Fingerprint)]
			if !ok {
				continue
			}
			key := groupKey(strings.ToUpper(r.Fingerprint), r.Addr, s.Params.Colocation)
			if owner[key] == nil {
				owner[key] = map[int]string{}
			}
			if o, taken := owner[key][a.Slot]; taken && o != c.ID {
				t.Fatalf("relay %s (group %s) measured by %s and %s in slot %d", r.Fingerprint, key, o, c.ID, a.Slot)
			}
			owner[key][a.Slot] = c.ID
		}
	}
}

func TestPlanJointIndependentCoordinators(t *testing.T) {
	relays := SyntheticNetwork(SynthRelays, [32]byte{2})
	p := DefaultParams(0) // Capacity is per coordinator
	srv := [32]byte{0xa2, 0xb9}
	secret := DailySecret([]byte("shared between a, b and c"), srv, 20000)

	// Two coordinators compute the schedule from differently ordered
	// inputs, with no communication.
	ja, err := PlanJoint(p, testCoords, relays, secret)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := PlanJoint(p, shuffled(testCoords, 1), shuffled(relays, 2), secret)
	if err != nil {
		t.Fatal(err)
	}
	ta, tb := jointText(t, ja), jointText(t, jb)
	if ta != tb {
		t.Fatal("coordinators computed different schedules")
	}
	if ja.Digest() != jb.Digest() {
		t.Fatal("digests differ")
	}
	checkJoint(t, ja, relays)
	for _, c := range testCoords {
		s, _ := ja.For(c.ID)
		t.Logf("%s (%.0f Gbit/s): %d measured, %d capped, %d unscheduled",
			c.ID, float64(c.Capacity)*8/1e9, s.Len(), len(s.Capped), len(s.Unscheduled))
		if len(s.Unscheduled) != 0 {
			t.Errorf("%s: %d unscheduled", c.ID, len(s.Unscheduled))
		}
	}
	if _, ok := ja.For("nobody"); ok {
		t.Error("For(unknown) succeeded")
	}

	// The schedule depends only on the inputs: a third run agrees.
	jc, _ := PlanJoint(p, testCoords, relays, secret)
	if jointText(t, jc) != ta {
		t.Fatal("second run differs")
	}

	// A different SRV gives a different schedule.
	other := DailySecret([]byte("shared between a, b and c"), [32]byte{0xa2, 0xba}, 20000)
	jd, _ := PlanJoint(p, testCoords, relays, other)
	if jointText(t, jd) == ta {
		t.Fatal("different SRV gave the same schedule")
	}
	// So does a different set of coordinators.
	je, _ := PlanJoint(p, testCoords[:2], relays, secret)
	if jointText(t, je) == ta {
		t.Fatal("different coordinators gave the same schedule")
	}
}

func TestPlanJointSingleEqualsPlan(t *testing.T) {
	relays := SyntheticNetwork(2000, [32]byte{3})
	p := DefaultParams(125_000_000)
	secret := [32]byte{5}
	j, err := PlanJoint(p, []Coordinator{{ID: "only", Capacity: p.Capacity}}, relays, secret)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Plan(p, relays, rand.NewChaCha8(secret))
	if err != nil {
		t.Fatal(err)
	}
	s.Coordinator = "only"
	js, _ := j.For("only")
	b1, _ := s.MarshalText()
	b2, _ := js.MarshalText()
	if string(b1) != string(b2) {
		t.Fatal("PlanJoint with one coordinator differs from Plan")
	}
}

func TestPlanJointTight(t *testing.T) {
	// Few slots, co-located relays, capped relays: the constraints bite.
	p := Params{Period: 6 * time.Minute, Slot: time.Minute, Multiplier: 2}
	coords := []Coordinator{{ID: "x", Capacity: 100 * mbit}, {ID: "y", Capacity: 60 * mbit}, {ID: "z", Capacity: 100 * mbit}}
	ip := netip.MustParseAddr("203.0.113.9")
	var relays []Relay
	for i := range 12 {
		r := Relay{Fingerprint: fp(i), Capacity: uint64(5+7*i) * mbit}
		if i%4 == 0 {
			r.Addr = ip
		}
		relays = append(relays, r)
	}
	for seed := range 30 {
		j, err := PlanJoint(p, coords, relays, [32]byte{byte(seed)})
		if err != nil {
			t.Fatal(err)
		}
		checkJoint(t, j, relays)
	}
}

func TestCoordinatorValidation(t *testing.T) {
	p := DefaultParams(0)
	tests := []struct {
		name   string
		coords []Coordinator
		want   error
	}{
		{"none", nil, ErrInvalidParams},
		{"empty ID", []Coordinator{{ID: "", Capacity: 1}}, ErrInvalidRelay},
		{"space in ID", []Coordinator{{ID: "a b", Capacity: 1}}, ErrInvalidRelay},
		{"newline in ID", []Coordinator{{ID: "a\nb", Capacity: 1}}, ErrInvalidRelay},
		{"long ID", []Coordinator{{ID: strings.Repeat("x", 129), Capacity: 1}}, ErrInvalidRelay},
		{"zero capacity", []Coordinator{{ID: "a", Capacity: 0}}, ErrInvalidParams},
		{"duplicate", []Coordinator{{ID: "a", Capacity: 1}, {ID: "a", Capacity: 2}}, ErrInvalidRelay},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := PlanJoint(p, tt.coords, nil, [32]byte{})
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
	bad := p
	bad.Slot = 0
	if _, err := PlanJoint(bad, testCoords, nil, [32]byte{}); !errors.Is(err, ErrInvalidParams) {
		t.Fatalf("bad params: %v", err)
	}
}

func TestAddNew(t *testing.T) {
	p := Params{Period: 10 * time.Minute, Slot: time.Minute, Multiplier: 2}
	coords := []Coordinator{{ID: "b", Capacity: 100 * mbit}, {ID: "a", Capacity: 100 * mbit}}
	ip := netip.MustParseAddr("192.0.2.44")
	relays := []Relay{
		{Fingerprint: fp(1), Capacity: 30 * mbit, Addr: ip},
		{Fingerprint: fp(2), Capacity: 10 * mbit},
		{Fingerprint: fp(3), Capacity: 20 * mbit},
	}
	secret := [32]byte{77}
	periodStart := PeriodStart(1000, p.Period)
	now := periodStart.Add(3*time.Minute + 10*time.Second) // in slot 3

	build := func() *JointSchedule {
		j, err := PlanJoint(p, coords, relays, secret)
		if err != nil {
			t.Fatal(err)
		}
		return j
	}
	j1, j2 := build(), build()

	add := func(j *JointSchedule, r Relay) ([]Placement, error) {
		return j.AddNew(r, now)
	}
	newcomer := Relay{Fingerprint: strings.ToLower(fp(9)), Capacity: 40 * mbit}
	pl1, err := add(j1, newcomer)
	if err != nil {
		t.Fatal(err)
	}
	pl2, _ := add(j2, newcomer)
	if !slices.Equal(pl1, pl2) || jointText(t, j1) != jointText(t, j2) {
		t.Fatal("AddNew is not deterministic")
	}
	if len(pl1) != 2 || pl1[0].Coordinator != "a" || pl1[1].Coordinator != "b" {
		t.Fatalf("placements %+v", pl1)
	}
	for _, pl := range pl1 {
		if pl.Slot <= 3 || pl.Demand != 80*mbit || pl.Fingerprint != fp(9) {
			t.Errorf("placement %+v", pl)
		}
		// First fit: every earlier future slot lacked room (or was the
		// other coordinator's).
		s, _ := j1.For(pl.Coordinator)
		for k := 4; k < pl.Slot; k++ {
			if s.Reserved[k]+80*mbit <= 100*mbit && !(k == pl1[0].Slot && pl.Coordinator == "b") {
				t.Errorf("%s: slot %d had room before %d", pl.Coordinator, k, pl.Slot)
			}
		}
	}
	if pl1[0].Slot == pl1[1].Slot {
		t.Fatalf("both coordinators measure the new relay in slot %d", pl1[0].Slot)
	}
	all := append(slices.Clone(relays), newcomer)
	checkJoint(t, j1, all)

	if _, err := add(j1, newcomer); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := add(j1, relays[1]); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("planned relay re-added: %v", err)
	}
	if _, err := add(j1, Relay{Fingerprint: "nope"}); !errors.Is(err, ErrInvalidRelay) {
		t.Fatalf("bad fingerprint: %v", err)
	}
	if _, err := j1.AddNew(Relay{Fingerprint: fp(50)}, time.Unix(-5, 0)); err == nil {
		t.Fatal("time before epoch accepted")
	}

	// A relay co-located with relay 1 joins relay 1's slot when that slot is
	// still ahead and has room.
	s, _ := j1.For("a")
	a1, _ := s.Lookup(fp(1))
	early := periodStart // slot 0: every slot but 0 is ahead
	if a1.Slot > 0 {
		mate := Relay{Fingerprint: fp(10), Capacity: 1 * mbit, Addr: ip}
		pls, err := j1.AddNew(mate, early)
		if err != nil {
			t.Fatal(err)
		}
		if pls[0].Coordinator != "a" {
			t.Fatalf("placements %+v", pls)
		}
		if s.Reserved[a1.Slot]+2*mbit <= 100*mbit && pls[0].Slot != a1.Slot {
			t.Errorf("co-located newcomer in slot %d, group in %d", pls[0].Slot, a1.Slot)
		}
		all = append(all, mate)
		checkJoint(t, j1, all)
	}

	// Late in the period there is no room left.
	late := periodStart.Add(9*time.Minute + 59*time.Second)
	pls, err := j1.AddNew(Relay{Fingerprint: fp(11), Capacity: 5 * mbit}, late)
	var ue *UnscheduledError
	if !errors.As(err, &ue) || len(pls) != 0 || !slices.Equal(ue.Coordinators, []string{"a", "b"}) {
		t.Fatalf("late add: %+v, %v", pls, err)
	}
	for _, c := range []string{"a", "b"} {
		s, _ := j1.For(c)
		if !slices.Contains(s.Unscheduled, fp(11)) {
			t.Errorf("%s: late relay not reported unscheduled", c)
		}
	}
}

func TestAddNewCapped(t *testing.T) {
	p := Params{Period: 5 * time.Minute, Slot: time.Minute, Multiplier: 2.25}
	coords := []Coordinator{{ID: "a", Capacity: 100 * mbit}, {ID: "b", Capacity: 1000 * mbit}}
	j, err := PlanJoint(p, coords, nil, [32]byte{})
	if err != nil {
		t.Fatal(err)
	}
	pls, err := j.AddNew(Relay{Fingerprint: fp(1), Capacity: 100 * mbit}, PeriodStart(3, p.Period))
	if err != nil {
		t.Fatal(err)
	}
	// Demand 225 Mbit/s: capped at a's 100, not at b's 1000.
	if len(pls) != 2 || !pls[0].Capped || pls[0].Demand != 100*mbit || pls[1].Capped || pls[1].Demand != 225*mbit {
		t.Fatalf("%+v", pls)
	}
	if pls[0].Slot != 1 || pls[1].Slot != 2 {
		t.Fatalf("slots %d, %d; want 1, 2 (slot 0 has started, b avoids a's slot)", pls[0].Slot, pls[1].Slot)
	}
}
