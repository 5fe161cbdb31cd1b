package schedule

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

const mbit = 1_000_000 / 8 // bytes/s in 1 Mbit/s

// picks is a fake random source whose draws make uniform(·, n) return the
// listed slots in order.
type picks struct {
	n     int
	slots []int
	extra int // draws after slots ran out
}

func (p *picks) Uint64() uint64 {
	if len(p.slots) == 0 {
		p.extra++
		return 0
	}
	k := p.slots[0]
	p.slots = p.slots[1:]
	// The middle of bucket k: (2k+1)·2^64 / 2n.
	x, _ := bits.Div64(uint64(2*k+1), 0, uint64(2*p.n))
	return x
}

// fp returns a valid fingerprint made from i.
func fp(i int) string { return fmt.Sprintf("%040X", i) }

// TestWorkedExample reproduces prop 316 §3.2.1.2.1: 1 Gbit/s of measurer
// capacity, m = 2, 5 slots; the random picks 3, 2, 2 (rejected), 0, 2, 4, 4.
func TestWorkedExample(t *testing.T) {
	p := Params{
		Period:     5 * time.Minute,
		Slot:       time.Minute,
		Multiplier: 2,
		Capacity:   1000 * mbit,
	}
	sizes := []uint64{500, 300, 250, 200, 100, 50}
	var relays []Relay
	name := map[string]uint64{}
	for i, s := range sizes {
		r := Relay{Fingerprint: fp(i + 1), Capacity: s * mbit}
		relays = append(relays, r)
		name[r.Fingerprint] = s
	}
	// Input order must not matter.
	slices.Reverse(relays)
	src := &picks{n: 5, slots: []int{3, 2, 2, 0, 2, 4, 4}}
	s, err := Plan(p, relays, src)
	if err != nil {
		t.Fatal(err)
	}
	if len(src.slots) != 0 || src.extra != 0 {
		t.Fatalf("picks left %v, extra draws %d: the example's sequence was not followed", src.slots, src.extra)
	}
	want := [][]uint64{{250}, nil, {300, 200}, {500}, {100, 50}}
	wantReserved := []uint64{500, 0, 1000, 1000, 300}
	for i, sl := range s.Slots {
		var got []uint64
		for _, a := range sl {
			got = append(got, name[a.Fingerprint])
			if a.Demand != 2*name[a.Fingerprint]*mbit || a.Capped || a.Assumed {
				t.Errorf("%v: demand %d capped %v assumed %v", name[a.Fingerprint], a.Demand, a.Capped, a.Assumed)
			}
		}
		if !slices.Equal(got, want[i]) {
			t.Errorf("slot %d = %v, want %v", i, got, want[i])
		}
		if s.Reserved[i] != wantReserved[i]*mbit {
			t.Errorf("slot %d reserved %d, want %d Mbit/s", i, s.Reserved[i], wantReserved[i])
		}
	}
	if len(s.Unscheduled) != 0 || len(s.Capped) != 0 {
		t.Errorf("unscheduled %v capped %v", s.Unscheduled, s.Capped)
	}
}

func TestParamsValidation(t *testing.T) {
	good := DefaultParams(375_000_000)
	tests := []struct {
		name string
		mod  func(*Params)
		want string // substring of the error, "" for none
	}{
		{"default", func(*Params) {}, ""},
		{"zero period", func(p *Params) { p.Period = 0 }, "period 0s is not positive"},
		{"negative slot", func(p *Params) { p.Slot = -time.Second }, "slot -1s is not positive"},
		{"slot longer than period", func(p *Params) { p.Slot = 25 * time.Hour }, "longer than period"},
		{"not integral", func(p *Params) { p.Slot = 7 * time.Second }, "not a whole number"},
		{"slot equals period", func(p *Params) { p.Slot = p.Period }, ""},
		{"too many slots", func(p *Params) { p.Slot = time.Millisecond }, "more than"},
		{"NaN multiplier", func(p *Params) { p.Multiplier = math.NaN() }, "not finite"},
		{"Inf multiplier", func(p *Params) { p.Multiplier = math.Inf(1) }, "not finite"},
		{"zero multiplier", func(p *Params) { p.Multiplier = 0 }, "not positive"},
		{"negative multiplier", func(p *Params) { p.Multiplier = -2 }, "not positive"},
		{"zero capacity", func(p *Params) { p.Capacity = 0 }, "capacity is zero"},
		{"negative tries", func(p *Params) { p.MaxTries = -1 }, "negative"},
		{"bad colocation", func(p *Params) { p.Colocation = 7 }, "unknown colocation"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := good
			tt.mod(&p)
			err := p.Validate()
			_, planErr := Plan(p, nil, rand.NewChaCha8([32]byte{}))
			if tt.want == "" {
				if err != nil || planErr != nil {
					t.Fatalf("Validate = %v, Plan = %v", err, planErr)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrInvalidParams) {
				t.Fatalf("Validate = %v, want %q", err, tt.want)
			}
			if planErr == nil {
				t.Fatal("Plan accepted invalid params")
			}
		})
	}
	if n := good.NumSlots(); n != 1440 {
		t.Errorf("NumSlots = %d, want 1440", n)
	}
}

func TestInvalidRelays(t *testing.T) {
	p := DefaultParams(375_000_000)
	tests := []struct {
		name   string
		relays []Relay
	}{
		{"short", []Relay{{Fingerprint: "ABCD"}}},
		{"not hex", []Relay{{Fingerprint: strings.Repeat("G", 40)}}},
		{"duplicate", []Relay{{Fingerprint: strings.Repeat("a", 40)}, {Fingerprint: strings.Repeat("A", 40)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Plan(p, tt.relays, rand.NewChaCha8([32]byte{}))
			if !errors.Is(err, ErrInvalidRelay) {
				t.Fatalf("err = %v", err)
			}
		})
	}
	if _, err := Plan(p, nil, nil); err == nil {
		t.Error("nil source accepted")
	}
}

func TestAssumedCapacity(t *testing.T) {
	tests := []struct {
		name    string
		caps    []uint64
		unknown uint64 // Params.UnknownCapacity
		want    uint64
	}{
		{"p75 of four", []uint64{10, 40, 0, 20, 30}, 0, 30},
		{"p75 of one", []uint64{0, 7}, 0, 7},
		{"p75 nearest rank of five", []uint64{1, 2, 3, 4, 5}, 0, 4},
		{"p75 of eight", []uint64{8, 7, 6, 5, 4, 3, 2, 1}, 0, 6},
		{"none known, configured", []uint64{0, 0}, 999, 999},
		{"none known, default", []uint64{0}, 0, DefaultUnknownCapacity},
		{"known wins over configured", []uint64{0, 5}, 999, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := DefaultParams(1 << 40)
			p.UnknownCapacity = tt.unknown
			var rs []Relay
			for i, c := range tt.caps {
				rs = append(rs, Relay{Fingerprint: fp(i), Capacity: c})
			}
			s, err := Plan(p, rs, rand.NewChaCha8([32]byte{1}))
			if err != nil {
				t.Fatal(err)
			}
			if s.AssumedCapacity != tt.want {
				t.Fatalf("assumed %d, want %d", s.AssumedCapacity, tt.want)
			}
			for i, c := range tt.caps {
				a, ok := s.Lookup(fp(i))
				if !ok {
					t.Fatalf("relay %d not scheduled", i)
				}
				if (c == 0) != a.Assumed || (c == 0 && a.Estimate != tt.want) || (c != 0 && a.Estimate != c) {
					t.Errorf("relay %d: %+v", i, a)
				}
			}
		})
	}
}

func TestDemand(t *testing.T) {
	tests := []struct {
		m    float64
		z    uint64
		want uint64
	}{
		{2.25, 4, 9},
		{2.25, 1, 3}, // ceil(2.25)
		{2.25, 125_000_000, 281_250_000},
		{2, 62_500_000, 125_000_000},
		{1, 1, 1},
		{0.5, 3, 2},
		{1e30, 5, math.MaxUint64},
	}
	for _, tt := range tests {
		if got := demandOf(tt.m, tt.z); got != tt.want {
			t.Errorf("demandOf(%v, %d) = %d, want %d", tt.m, tt.z, got, tt.want)
		}
	}
}

func TestCappedRelayGetsEmptySlot(t *testing.T) {
	p := Params{Period: 4 * time.Minute, Slot: time.Minute, Multiplier: 2.25, Capacity: 100 * mbit}
	rs := []Relay{
		{Fingerprint: fp(1), Capacity: 80 * mbit}, // demand 180 > 100: capped
		{Fingerprint: fp(2), Capacity: 20 * mbit}, // 45
		{Fingerprint: fp(3), Capacity: 20 * mbit}, // 45
		{Fingerprint: fp(4), Capacity: 10 * mbit}, // 22.5
	}
	for seed := range 20 {
		s, err := Plan(p, rs, rand.NewChaCha8([32]byte{byte(seed)}))
		if err != nil {
			t.Fatal(err)
		}
		a, ok := s.Lookup(fp(1))
		if !ok || !a.Capped || a.Demand != p.Capacity {
			t.Fatalf("big relay: %+v %v", a, ok)
		}
		if got := s.Slots[a.Slot]; len(got) != 1 || s.Reserved[a.Slot] != p.Capacity {
			t.Fatalf("capped relay shares slot %d: %+v", a.Slot, got)
		}
		if !slices.Equal(s.Capped, []string{fp(1)}) || len(s.Unscheduled) != 0 {
			t.Fatalf("capped %v unscheduled %v", s.Capped, s.Unscheduled)
		}
		checkSchedule(t, s, rs)
	}
}

func TestUnschedulableNeverLoops(t *testing.T) {
	p := Params{Period: 3 * time.Minute, Slot: time.Minute, Multiplier: 2.25, Capacity: 100 * mbit, MaxTries: 1000}
	var rs []Relay
	for i := range 5 {
		rs = append(rs, Relay{Fingerprint: fp(i), Capacity: 1000 * mbit}) // all capped
	}
	s, err := Plan(p, rs, rand.NewChaCha8([32]byte{}))
	if err != nil {
		t.Fatal(err)
	}
	if s.Len() != 3 || len(s.Unscheduled) != 2 {
		t.Fatalf("scheduled %d, unscheduled %v", s.Len(), s.Unscheduled)
	}
	// Ties are broken by fingerprint: the two largest fingerprints lose.
	if !slices.Equal(s.Unscheduled, []string{fp(3), fp(4)}) {
		t.Errorf("unscheduled %v", s.Unscheduled)
	}
	checkSchedule(t, s, rs)
}

func TestFallbackScan(t *testing.T) {
	p := Params{Period: 4 * time.Minute, Slot: time.Minute, Multiplier: 1, Capacity: 100, MaxTries: 2}
	rs := []Relay{
		{Fingerprint: fp(1), Capacity: 100},
		{Fingerprint: fp(2), Capacity: 100},
	}
	// First relay: slot 1. Second: two random picks of the full slot 1, then
	// a scan starting at 1 finds slot 2.
	src := &picks{n: 4, slots: []int{1, 1, 1, 1}}
	s, err := Plan(p, rs, src)
	if err != nil {
		t.Fatal(err)
	}
	if src.extra != 0 || len(src.slots) != 0 {
		t.Fatalf("draws: left %v, extra %d", src.slots, src.extra)
	}
	a1, _ := s.Lookup(fp(1))
	a2, _ := s.Lookup(fp(2))
	if a1.Slot != 1 || a2.Slot != 2 {
		t.Fatalf("slots %d, %d; want 1, 2", a1.Slot, a2.Slot)
	}
	// A scan wraps around the end of the period.
	src = &picks{n: 4, slots: []int{3, 3, 3, 3}}
	s, _ = Plan(p, rs, src)
	a2, _ = s.Lookup(fp(2))
	if a2.Slot != 0 {
		t.Fatalf("wrapped scan gave slot %d, want 0", a2.Slot)
	}
}

func TestColocation(t *testing.T) {
	addr := netip.MustParseAddr
	tests := []struct {
		name     string
		mode     Colocation
		a, b     netip.Addr
		together bool
	}{
		{"same IPv4", ColocateAddr, addr("192.0.2.1"), addr("192.0.2.1"), true},
		{"IPv4-mapped IPv6", ColocateAddr, addr("192.0.2.1"), addr("::ffff:192.0.2.1"), true},
		{"same IPv6 with zone", ColocateAddr, addr("fe80::1%eth0"), addr("fe80::1"), true},
		{"same /24, addr mode", ColocateAddr, addr("192.0.2.1"), addr("192.0.2.2"), false},
		{"same /24, prefix mode", ColocatePrefix, addr("192.0.2.1"), addr("192.0.2.200"), true},
		{"different /24, prefix mode", ColocatePrefix, addr("192.0.2.1"), addr("192.0.3.1"), false},
		{"same /48, prefix mode", ColocatePrefix, addr("2001:db8:1:2::1"), addr("2001:db8:1:ffff::2"), true},
		{"different /48, prefix mode", ColocatePrefix, addr("2001:db8:1::1"), addr("2001:db8:2::1"), false},
		{"no address", ColocateAddr, netip.Addr{}, netip.Addr{}, false},
		{"unspecified", ColocateAddr, addr("0.0.0.0"), addr("0.0.0.0"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Params{Period: 100 * time.Minute, Slot: time.Minute, Multiplier: 2, Capacity: 1000 * mbit, Colocation: tt.mode}
			rs := []Relay{
				{Fingerprint: fp(1), Capacity: 100 * mbit, Addr: tt.a},
				{Fingerprint: fp(2), Capacity: 50 * mbit, Addr: tt.b},
			}
			coincide := 0
			for seed := range 10 {
				s, err := Plan(p, rs, rand.NewChaCha8([32]byte{byte(seed)}))
				if err != nil {
					t.Fatal(err)
				}
				a1, _ := s.Lookup(fp(1))
				a2, _ := s.Lookup(fp(2))
				if a1.Slot == a2.Slot {
					coincide++
				}
				if tt.together && (a1.Slot != a2.Slot || s.Reserved[a1.Slot] != 300*mbit) {
					t.Fatalf("co-located relays in slots %d and %d, reserved %d", a1.Slot, a2.Slot, s.Reserved[a1.Slot])
				}
			}
			// Independent relays share one of 100 slots by chance only.
			if !tt.together && coincide > 2 {
				t.Fatalf("independent relays shared a slot for %d of 10 seeds", coincide)
			}
		})
	}
}

func TestColocatedGroupCapped(t *testing.T) {
	p := Params{Period: 10 * time.Minute, Slot: time.Minute, Multiplier: 2, Capacity: 100 * mbit}
	ip := netip.MustParseAddr("198.51.100.7")
	rs := []Relay{
		{Fingerprint: fp(1), Capacity: 40 * mbit, Addr: ip}, // 80
		{Fingerprint: fp(2), Capacity: 10 * mbit, Addr: ip}, // 20
		{Fingerprint: fp(3), Capacity: 50 * mbit, Addr: ip}, // 100: sum 200 > 100
		{Fingerprint: fp(4), Capacity: 1 * mbit},
	}
	s, err := Plan(p, rs, rand.NewChaCha8([32]byte{9}))
	if err != nil {
		t.Fatal(err)
	}
	a3, _ := s.Lookup(fp(3))
	sl := s.Slots[a3.Slot]
	if len(sl) != 3 || s.Reserved[a3.Slot] != p.Capacity {
		t.Fatalf("group slot: %+v reserved %d", sl, s.Reserved[a3.Slot])
	}
	want := map[string]uint64{fp(3): 50 * mbit, fp(1): 40 * mbit, fp(2): 10 * mbit} // halved
	var sum uint64
	for _, a := range sl {
		if !a.Capped || a.Demand != want[a.Fingerprint] {
			t.Errorf("%+v, want demand %d", a, want[a.Fingerprint])
		}
		sum += a.Demand
	}
	// Members are in estimate order within the slot.
	if sl[0].Fingerprint != fp(3) || sl[1].Fingerprint != fp(1) || sl[2].Fingerprint != fp(2) {
		t.Errorf("order %v", sl)
	}
	if sum > p.Capacity || len(s.Capped) != 3 {
		t.Errorf("sum %d capped %v", sum, s.Capped)
	}
}

// checkSchedule verifies a schedule's invariants: every relay is either
// scheduled once or unscheduled, slot reservations are within capacity and
// match the assignments, and co-located relays share a slot.
func checkSchedule(t *testing.T, s *Schedule, relays []Relay) {
	t.Helper()
	seen := map[string]int{}
	for i, sl := range s.Slots {
		var sum uint64
		for _, a := range sl {
			if a.Slot != i {
				t.Fatalf("assignment %+v in slot %d", a, i)
			}
			seen[a.Fingerprint]++
			sum += a.Demand
		}
		if s.Reserved[i] > s.Params.Capacity {
			t.Fatalf("slot %d reserved %d > capacity %d", i, s.Reserved[i], s.Params.Capacity)
		}
		if sum > s.Reserved[i] {
			t.Fatalf("slot %d demands %d > reserved %d", i, sum, s.Reserved[i])
		}
	}
	for _, fp := range s.Unscheduled {
		seen[fp]++
	}
	bySlotAddr := map[netip.Addr]int{}
	idx := s.ByFingerprint()
	for _, r := range relays {
		f := strings.ToUpper(r.Fingerprint)
		if seen[f] != 1 {
			t.Fatalf("relay %s appears %d times", f, seen[f])
		}
		a, ok := idx[f]
		if !ok || !r.Addr.IsValid() || s.Params.Colocation != ColocateAddr {
			continue
		}
		if prev, dup := bySlotAddr[r.Addr]; dup && prev != a.Slot {
			t.Fatalf("co-located relays at %v in slots %d and %d", r.Addr, prev, a.Slot)
		}
		bySlotAddr[r.Addr] = a.Slot
	}
	if len(seen) != len(relays) {
		t.Fatalf("%d relays in schedule, %d given", len(seen), len(relays))
	}
}

func TestPlanNetwork(t *testing.T) {
	relays := SyntheticNetwork(SynthRelays, [32]byte{1})
	p := DefaultParams(3 * 125_000_000)
	secret := [32]byte{42}
	s1, err := Plan(p, relays, rand.NewChaCha8(secret))
	if err != nil {
		t.Fatal(err)
	}
	checkSchedule(t, s1, relays)
	if len(s1.Unscheduled) != 0 {
		t.Errorf("%d unscheduled", len(s1.Unscheduled))
	}
	t.Logf("1 day, 1440 slots: %d relays scheduled, %d capped, assumed %d B/s", s1.Len(), len(s1.Capped), s1.AssumedCapacity)

	// Same secret, shuffled input: same schedule.
	shuffled := slices.Clone(relays)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	s2, err := Plan(p, shuffled, rand.NewChaCha8(secret))
	if err != nil {
		t.Fatal(err)
	}
	b1, _ := s1.MarshalText()
	b2, _ := s2.MarshalText()
	if string(b1) != string(b2) {
		t.Fatal("schedule depends on input order")
	}
	s3, _ := Plan(p, relays, rand.NewChaCha8([32]byte{43}))
	b3, _ := s3.MarshalText()
	if string(b1) == string(b3) {
		t.Fatal("different secrets gave the same schedule")
	}
}

func TestUniform(t *testing.T) {
	src := rand.NewChaCha8([32]byte{7})
	const n, draws = 7, 70000
	var counts [n]int
	for range draws {
		counts[uniform(src, n)]++
	}
	for i, c := range counts {
		if c < draws/n*9/10 || c > draws/n*11/10 {
			t.Errorf("bucket %d: %d draws", i, c)
		}
	}
	// n = 1 always gives 0; a draw that would be biased is rejected.
	if uniform(src, 1) != 0 {
		t.Error("uniform(1) != 0")
	}
	// For n = 3, 2^64 mod 3 = 1: x = 0 gives lo = 0 < 1 and is redrawn.
	f := &picks{n: 3, slots: []int{2}}
	seq := &seqSource{vals: []uint64{0}, next: f}
	if got := uniform(seq, 3); got != 2 {
		t.Errorf("rejection: got %d, want 2", got)
	}
}

type seqSource struct {
	vals []uint64
	next rand.Source
}

func (s *seqSource) Uint64() uint64 {
	if len(s.vals) > 0 {
		v := s.vals[0]
		s.vals = s.vals[1:]
		return v
	}
	return s.next.Uint64()
}

func TestChaCha8Stable(t *testing.T) {
	// The schedule's reproducibility rests on rand.ChaCha8's output stream
	// (C2SP chacha8rand) staying the same across Go releases; pin the
	// start of one stream so a change is noticed.
	src := rand.NewChaCha8([32]byte{})
	got := []uint64{uniform(src, 1440), uniform(src, 1440), uniform(src, 1440), uniform(src, 1440)}
	src2 := rand.NewChaCha8([32]byte{})
	first := src2.Uint64()
	want := []uint64{970, 606, 172, 655}
	if !slices.Equal(got, want) || first != 0xac8a366dce7e87d9 {
		t.Fatalf("ChaCha8 stream changed: slots %v (want %v), first %#x (want %#x)", got, want, first, uint64(0xac8a366dce7e87d9))
	}
}

// TestMaxPerSlot: a slot never holds more relays than the measurers can
// measure at once, however small they are.
func TestMaxPerSlot(t *testing.T) {
	p := DefaultParams(1 << 40) // capacity is no limit
	p.Period, p.Slot = 4*time.Minute, time.Minute
	p.MaxPerSlot = 5
	var relays []Relay
	for i := range 18 {
		relays = append(relays, Relay{Fingerprint: fmt.Sprintf("%040X", i+1), Capacity: 1000})
	}
	s, err := Plan(p, relays, rand.NewPCG(1, 2))
	if err != nil {
		t.Fatal(err)
	}
	for i, sl := range s.Slots {
		if len(sl) > 5 {
			t.Errorf("slot %d holds %d relays, want at most 5", i, len(sl))
		}
	}
	if s.Len() != 18 || len(s.Unscheduled) != 0 {
		t.Errorf("%d scheduled, %d unscheduled; want all 18 in 4 slots of 5", s.Len(), len(s.Unscheduled))
	}
	relays = append(relays, Relay{Fingerprint: fmt.Sprintf("%040X", 99), Capacity: 1000}, Relay{Fingerprint: fmt.Sprintf("%040X", 100), Capacity: 1000}, Relay{Fingerprint: fmt.Sprintf("%040X", 101), Capacity: 1000})
	s, err = Plan(p, relays, rand.NewPCG(1, 2))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Unscheduled) != 1 {
		t.Errorf("21 relays in 4 slots of 5: %d unscheduled, want 1", len(s.Unscheduled))
	}
	p.MaxPerSlot = -1
	if _, err := Plan(p, relays, rand.NewPCG(1, 2)); err == nil {
		t.Error("a negative MaxPerSlot was accepted")
	}
}
