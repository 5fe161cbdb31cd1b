package aggregate

import (
	"errors"
	"math"
	"math/big"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// meas builds connection counts for n measurers that opened everything.
func meas(n int) []Measurer {
	ms := make([]Measurer, n)
	for i := range ms {
		ms[i] = Measurer{ConnsWanted: 16, ConnsOpened: 16}
	}
	return ms
}

// uniform builds reports where, every second, the n measurers together
// verified m bytes (split as evenly as possible) and the target claims bg.
func uniform(d, n int, m, bg uint64) ([]MeasurerReport, []BGReport) {
	var rs []MeasurerReport
	var bs []BGReport
	for s := 1; s <= d; s++ {
		left := m
		for j := range n {
			share := left / uint64(n-j)
			left -= share
			rs = append(rs, MeasurerReport{Measurer: j, Second: s, Bytes: share})
		}
		bs = append(bs, BGReport{Second: s, Sent: bg, Recv: bg})
	}
	return rs, bs
}

// TestInflation is prop 316 §3.3.1: at r = 25%, a relay with 100 units of
// capacity that carries no background traffic, echoes 100 units and
// claims 33 gets 133; claiming more is clamped to 33.
func TestInflation(t *testing.T) {
	p := Params{Duration: 30, BGPercent: 25, Measurers: 3}
	for _, tc := range []struct {
		name     string
		m, bg    uint64
		want     uint64
		clamped  bool
		wantBPri uint64
	}{
		{"honest: 75 echoed, 25 background", 75, 25, 100, false, 25},
		{"lies: 100 echoed, claims 33", 100, 33, 133, false, 33},
		{"lies: 100 echoed, claims 34", 100, 34, 133, true, 33},
		{"lies: 100 echoed, claims 1000", 100, 1000, 133, true, 33},
		{"lies: 100 echoed, claims max", 100, math.MaxUint64, 133, true, 33},
		{"no background", 100, 0, 100, false, 0},
		{"nothing echoed", 0, 50, 0, true, 0},
		{"Mbit/s scale", 12_500_000, 1e9, 12_500_000 + 4_166_666, true, 4_166_666},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs, bs := uniform(p.Duration, p.Measurers, tc.m, tc.bg)
			res, err := Aggregate(p, meas(3), rs, bs)
			if err != nil {
				t.Fatal(err)
			}
			if res.Estimate != tc.want {
				t.Errorf("Estimate = %d, want %d", res.Estimate, tc.want)
			}
			wantClamped := 0
			if tc.clamped {
				wantClamped = 30
			}
			if res.Clamped != wantClamped || res.Complete != 30 || len(res.Missing) != 0 || len(res.MissingBG) != 0 {
				t.Errorf("Clamped %d Complete %d Missing %v MissingBG %v", res.Clamped, res.Complete, res.Missing, res.MissingBG)
			}
			s := res.Seconds[7]
			if s.Second != 8 || s.M != tc.m || s.B != tc.bg || s.BPrime != tc.wantBPri || s.T != tc.want || s.Clamped != tc.clamped || !s.Complete {
				t.Errorf("second 8: %+v", s)
			}
		})
	}
}

// TestMaxGainAt25 checks that a target claiming unbounded background
// traffic gets exactly M/(1−r) = 4M/3 at r = 25% whenever that is an
// integer, and ⌊4M/3⌋ otherwise.
func TestMaxGainAt25(t *testing.T) {
	p := Params{Duration: 5, BGPercent: 25, Measurers: 1}
	for _, m := range []uint64{0, 1, 2, 3, 299, 300, 3e9, 1 << 40, math.MaxUint64 / 4 * 3} {
		rs, bs := uniform(5, 1, m, math.MaxUint64)
		res, err := Aggregate(p, meas(1), rs, bs)
		if err != nil {
			t.Fatal(err)
		}
		want := m + m/3 // ⌊4m/3⌋ as m + ⌊m/3⌋
		if res.Estimate != want {
			t.Errorf("M=%d: Estimate %d, want %d", m, res.Estimate, want)
		}
		if m%3 == 0 && res.Estimate*3 != m*4 {
			t.Errorf("M=%d: gain %d/%d is not exactly 4/3", m, res.Estimate, m)
		}
	}
}

func TestMaxBG(t *testing.T) {
	for _, tc := range []struct {
		m       uint64
		percent int
		want    uint64
	}{
		{100, 0, 0},
		{100, 25, 33},
		{99, 25, 33},
		{3, 25, 1},
		{2, 25, 0},
		{100, 50, 100},
		{100, 75, 300},
		{100, 99, 9900},
		{math.MaxUint64, 0, 0},
		{math.MaxUint64, 50, math.MaxUint64},
		{math.MaxUint64, 25, math.MaxUint64 / 3},
		{math.MaxUint64, 99, math.MaxUint64},
		{1 << 61, 94, math.MaxUint64}, // 2^61·94/6 > 2^64
		{3 << 58, 94, 47 << 58},       // 3·2^58·94/6, exactly, over 2^64 before dividing
	} {
		if got := MaxBG(tc.m, tc.percent); got != tc.want {
			t.Errorf("MaxBG(%d, %d) = %d, want %d", tc.m, tc.percent, got, tc.want)
		}
	}
	// Against math/big over random inputs.
	rng := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		m := rng.Uint64() >> rng.IntN(64)
		pc := rng.IntN(100)
		want := new(big.Int).SetUint64(m)
		want.Mul(want, big.NewInt(int64(pc)))
		want.Quo(want, big.NewInt(int64(100-pc)))
		if !want.IsUint64() {
			want.SetUint64(math.MaxUint64)
		}
		if got := MaxBG(m, pc); got != want.Uint64() {
			t.Fatalf("MaxBG(%d, %d) = %d, want %d", m, pc, got, want)
		}
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		totals []uint64
		want   uint64
	}{
		{[]uint64{7}, 7},
		{[]uint64{5, 1}, 1}, // even: lower middle
		{[]uint64{3, 1, 2}, 2},
		{[]uint64{4, 1, 3, 2}, 2},
		{[]uint64{10, 10, 1, 1}, 1},
		{[]uint64{9, 1, 8, 2, 7}, 7},
		{[]uint64{6, 5, 4, 3, 2, 1}, 3},
	} {
		var rs []MeasurerReport
		var bs []BGReport
		for i, v := range tc.totals {
			rs = append(rs, MeasurerReport{Measurer: 0, Second: i + 1, Bytes: v})
			bs = append(bs, BGReport{Second: i + 1})
		}
		p := Params{Duration: len(tc.totals), BGPercent: 25, Measurers: 1, MinSeconds: len(tc.totals)}
		res, err := Aggregate(p, meas(1), rs, bs)
		if err != nil {
			t.Fatal(err)
		}
		if res.Estimate != tc.want {
			t.Errorf("median of %v = %d, want %d", tc.totals, res.Estimate, tc.want)
		}
	}
	if LowerMedian(nil) != 0 {
		t.Error("LowerMedian(nil) != 0")
	}
	v := []uint64{3, 2, 1}
	LowerMedian(v)
	if v[0] != 3 {
		t.Error("LowerMedian modified its input")
	}
}

// TestMedianOverCompleteOnly: the median is over complete seconds, an odd
// or even number of them.
func TestMedianOverCompleteOnly(t *testing.T) {
	p := Params{Duration: 6, BGPercent: 0, Measurers: 2, MinSeconds: 3}
	// Per second totals 10, 20, 30, 40, 50, 60; measurer 1 misses some.
	full := func(skip map[int]bool) []MeasurerReport {
		var rs []MeasurerReport
		for s := 1; s <= 6; s++ {
			rs = append(rs, MeasurerReport{Measurer: 0, Second: s, Bytes: uint64(5 * s)})
			if !skip[s] {
				rs = append(rs, MeasurerReport{Measurer: 1, Second: s, Bytes: uint64(5 * s)})
			}
		}
		return rs
	}
	var bs []BGReport
	for s := 1; s <= 6; s++ {
		bs = append(bs, BGReport{Second: s})
	}
	for _, tc := range []struct {
		skip map[int]bool
		want uint64
	}{
		{nil, 30},                                     // 10..60: lower middle 30
		{map[int]bool{6: true}, 30},                   // 10..50: 30
		{map[int]bool{1: true}, 40},                   // 20..60: 40
		{map[int]bool{1: true, 2: true}, 40},          // 30..60: lower middle 40
		{map[int]bool{5: true, 6: true}, 20},          // 10..40: lower middle 20
		{map[int]bool{1: true, 6: true}, 30},          // 20..50: 30
		{map[int]bool{2: true, 4: true}, 30},          // 10,30,50,60: 30
		{map[int]bool{3: true, 4: true}, 20},          // 10,20,50,60: 20
		{map[int]bool{1: true, 3: true, 5: true}, 40}, // 20,40,60: 40
	} {
		res, err := Aggregate(p, meas(2), full(tc.skip), bs)
		if err != nil {
			t.Fatal(err)
		}
		if res.Estimate != tc.want || res.Complete != 6-len(tc.skip) {
			t.Errorf("skip %v: Estimate %d Complete %d, want %d", tc.skip, res.Estimate, res.Complete, tc.want)
		}
		for _, s := range res.Missing {
			if !tc.skip[s] {
				t.Errorf("skip %v: second %d reported missing", tc.skip, s)
			}
			if sec := res.Seconds[s-1]; sec.Complete || len(sec.MissingFrom) != 1 || sec.MissingFrom[0] != 1 || sec.M != uint64(5*s) {
				t.Errorf("second %d: %+v", s, sec)
			}
		}
	}
}

func TestMissingSeconds(t *testing.T) {
	p := Params{Duration: 30, BGPercent: 25, Measurers: 3}
	rs, bs := uniform(30, 3, 300, 100)
	drop := func(rs []MeasurerReport, j int, secs ...int) []MeasurerReport {
		var out []MeasurerReport
		for _, r := range rs {
			keep := true
			for _, s := range secs {
				if r.Measurer == j && r.Second == s {
					keep = false
				}
			}
			if keep {
				out = append(out, r)
			}
		}
		return out
	}

	// 5 incomplete seconds: 25 of 30 remain, exactly the default minimum.
	r5 := drop(drop(rs, 0, 3, 4, 5), 2, 5, 9, 30)
	res, err := Aggregate(p, meas(3), r5, bs)
	if err != nil {
		t.Fatal(err)
	}
	if res.Complete != 25 || res.Estimate != 400 || !slices.Equal(res.Missing, []int{3, 4, 5, 9, 30}) {
		t.Errorf("Complete %d Estimate %d Missing %v", res.Complete, res.Estimate, res.Missing)
	}
	if got := res.Seconds[4].MissingFrom; !slices.Equal(got, []int{0, 2}) {
		t.Errorf("second 5 missing from %v", got)
	}

	// 6 incomplete seconds: fails, naming who missed what.
	r6 := drop(r5, 1, 17)
	res, err = Aggregate(p, meas(3), r6, bs)
	if !errors.Is(err, ErrIncomplete) {
		t.Fatalf("err = %v, want ErrIncomplete", err)
	}
	for _, want := range []string{"24 of 30 seconds complete", "at least 25", "measurer 0: seconds 3-5", "measurer 1: second 17", "measurer 2: seconds 5,9,30"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if res.Estimate != 0 || res.Complete != 24 || len(res.Seconds) != 30 || len(res.Missing) != 6 {
		t.Errorf("on ErrIncomplete: %+v", res)
	}
	// A lower minimum accepts it.
	p2 := p
	p2.MinSeconds = 24
	if _, err := Aggregate(p2, meas(3), r6, bs); err != nil {
		t.Error(err)
	}

	// A measurer that reported nothing at all.
	res, err = Aggregate(p, meas(3), drop(rs, 1, seq(1, 30)...), bs)
	if !errors.Is(err, ErrIncomplete) || !strings.Contains(err.Error(), "0 of 30") || !strings.Contains(err.Error(), "measurer 1: seconds 1-30") {
		t.Errorf("err = %v", err)
	}
	if len(res.Missing) != 30 {
		t.Errorf("Missing %v", res.Missing)
	}

	// No reports at all.
	if _, err := Aggregate(p, meas(3), nil, nil); !errors.Is(err, ErrIncomplete) {
		t.Errorf("err = %v", err)
	}
}

// TestMissingBG: a missing BG report counts the second with B = 0; it
// never drops it (that would let the target pick the counted seconds).
func TestMissingBG(t *testing.T) {
	p := Params{Duration: 5, BGPercent: 25, Measurers: 1}
	var rs []MeasurerReport
	for s, v := range []uint64{300, 300, 300, 30, 30} {
		rs = append(rs, MeasurerReport{Second: s + 1, Bytes: v})
	}
	// The target reports only its fast seconds; the slow ones still count.
	bs := []BGReport{{Second: 1, Sent: 100, Recv: 100}, {Second: 2, Sent: 100, Recv: 100}}
	res, err := Aggregate(p, meas(1), rs, bs)
	if err != nil {
		t.Fatal(err)
	}
	// Totals 400, 400, 300, 30, 30: median 300.
	if res.Estimate != 300 || res.Complete != 5 || !slices.Equal(res.MissingBG, []int{3, 4, 5}) || len(res.Missing) != 0 {
		t.Errorf("%+v", res)
	}
	if s := res.Seconds[2]; !s.BGMissing || s.B != 0 || s.T != 300 || !s.Complete {
		t.Errorf("second 3: %+v", s)
	}
	// No BG reports at all: estimate is the median of M.
	res, err = Aggregate(p, meas(1), rs, nil)
	if err != nil || res.Estimate != 300 || len(res.MissingBG) != 5 {
		t.Errorf("%+v %v", res, err)
	}
}

// TestBGMinOfSentRecv: B is the smaller of sent and received.
func TestBGMinOfSentRecv(t *testing.T) {
	p := Params{Duration: 1, BGPercent: 50, Measurers: 1}
	rs := []MeasurerReport{{Second: 1, Bytes: 100}}
	for _, tc := range []struct{ sent, recv, want uint64 }{
		{10, 20, 110}, {20, 10, 110}, {0, 1000, 100}, {1000, 500, 200},
	} {
		res, err := Aggregate(p, meas(1), rs, []BGReport{{Second: 1, Sent: tc.sent, Recv: tc.recv}})
		if err != nil || res.Estimate != tc.want {
			t.Errorf("sent %d recv %d: %d %v, want %d", tc.sent, tc.recv, res.Estimate, err, tc.want)
		}
	}
}

func TestConns(t *testing.T) {
	p := Params{Duration: 3, BGPercent: 25, Measurers: 3}
	rs, bs := uniform(3, 3, 90, 0)
	for _, tc := range []struct {
		ms   []Measurer
		err  error
		want []string
	}{
		{[]Measurer{{10, 10}, {10, 5}, {11, 6}}, nil, nil},
		{[]Measurer{{1, 1}, {2, 1}, {3, 2}}, nil, nil},
		{[]Measurer{{10, 10}, {10, 4}, {11, 6}}, ErrConns, []string{"measurer 1 opened 4 of 10"}},
		{[]Measurer{{11, 5}, {10, 10}, {1, 0}}, ErrConns, []string{"measurer 0 opened 5 of 11", "measurer 2 opened 0 of 1"}},
		{[]Measurer{{10, 11}, {10, 10}, {10, 10}}, ErrParams, []string{"measurer 0 opened 11 of 10"}},
		{[]Measurer{{0, 0}, {10, 10}, {10, 10}}, ErrParams, []string{"measurer 0"}},
		{[]Measurer{{10, -1}, {10, 10}, {10, 10}}, ErrParams, []string{"measurer 0"}},
		{[]Measurer{{10, 10}, {10, 10}}, ErrParams, []string{"connection counts for 2 measurers, want 3"}},
	} {
		_, err := Aggregate(p, tc.ms, rs, bs)
		if tc.err == nil {
			if err != nil {
				t.Errorf("%v: %v", tc.ms, err)
			}
			continue
		}
		if !errors.Is(err, tc.err) {
			t.Errorf("%v: err = %v, want %v", tc.ms, err, tc.err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %q lacks %q", tc.ms, err, w)
			}
		}
	}
}

func TestBadReports(t *testing.T) {
	p := Params{Duration: 3, BGPercent: 25, Measurers: 2}
	rs, bs := uniform(3, 2, 90, 0)
	for _, tc := range []struct {
		name string
		rs   []MeasurerReport
		bs   []BGReport
		want string
	}{
		{"duplicate", append(rs[:len(rs):len(rs)], MeasurerReport{Measurer: 1, Second: 2, Bytes: 0}), bs, "measurer 1 reported second 2 twice"},
		{"second 0", append(rs[:len(rs):len(rs)], MeasurerReport{Measurer: 0, Second: 0}), bs, "measurer 0 reported second 0, outside 1..3"},
		{"second d+1", append(rs[:len(rs):len(rs)], MeasurerReport{Measurer: 1, Second: 4}), bs, "second 4, outside 1..3"},
		{"negative measurer", append(rs[:len(rs):len(rs)], MeasurerReport{Measurer: -1, Second: 1}), bs, "unknown measurer -1"},
		{"unknown measurer", append(rs[:len(rs):len(rs)], MeasurerReport{Measurer: 2, Second: 1}), bs, "unknown measurer 2 (measurers are 0..1)"},
		{"duplicate bg", rs, append(bs[:len(bs):len(bs)], BGReport{Second: 3}), "background traffic for second 3 twice"},
		{"bg second 0", rs, append(bs[:len(bs):len(bs)], BGReport{Second: 0}), "second 0, outside 1..3"},
		{"bg second d+1", rs, append(bs[:len(bs):len(bs)], BGReport{Second: 4}), "second 4, outside 1..3"},
	} {
		_, err := Aggregate(p, meas(2), tc.rs, tc.bs)
		if !errors.Is(err, ErrReport) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want ErrReport with %q", tc.name, err, tc.want)
		}
	}
}

func TestParams(t *testing.T) {
	ok := Params{Duration: 30, BGPercent: 25, Measurers: 1}
	for _, tc := range []struct {
		mod  func(*Params)
		want string
	}{
		{func(p *Params) { p.Duration = 0 }, "duration 0 s outside 1..600"},
		{func(p *Params) { p.Duration = 601 }, "duration 601"},
		{func(p *Params) { p.BGPercent = -1 }, "background percent -1 outside 0..99"},
		{func(p *Params) { p.BGPercent = 100 }, "background percent 100"},
		{func(p *Params) { p.Measurers = 0 }, "0 measurers, outside 1..10"},
		{func(p *Params) { p.Measurers = 11 }, "11 measurers"},
		{func(p *Params) { p.MinSeconds = 31 }, "minimum of 31 complete seconds"},
		{func(p *Params) { p.MinSeconds = -1 }, "minimum of -1"},
	} {
		p := ok
		tc.mod(&p)
		_, err := Aggregate(p, meas(p.Measurers), nil, nil)
		if !errors.Is(err, ErrParams) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err = %v, want ErrParams with %q", p, err, tc.want)
		}
	}
	for d, want := range map[int]int{1: 1, 2: 2, 6: 5, 7: 6, 12: 10, 30: 25, 31: 26, 600: 500} {
		if got := DefaultMinSeconds(d); got != want {
			t.Errorf("DefaultMinSeconds(%d) = %d, want %d", d, got, want)
		}
	}
	// Extremes are accepted.
	for _, p := range []Params{
		{Duration: 1, BGPercent: 0, Measurers: 1},
		{Duration: 600, BGPercent: 99, Measurers: 10, MinSeconds: 600},
	} {
		rs, bs := uniform(p.Duration, p.Measurers, 1000, 1000)
		res, err := Aggregate(p, meas(p.Measurers), rs, bs)
		if err != nil {
			t.Fatalf("%+v: %v", p, err)
		}
		want := uint64(1000)
		if p.BGPercent == 99 {
			want = 2000
		}
		if res.Estimate != want {
			t.Errorf("%+v: Estimate %d, want %d", p, res.Estimate, want)
		}
	}
}

func TestSaturation(t *testing.T) {
	p := Params{Duration: 2, BGPercent: 25, Measurers: 3}
	rs := []MeasurerReport{
		{0, 1, math.MaxUint64}, {1, 1, math.MaxUint64}, {2, 1, 5},
		{0, 2, math.MaxUint64 - 10}, {1, 2, 5}, {2, 2, 5},
	}
	bs := []BGReport{{1, math.MaxUint64, math.MaxUint64}, {2, 100, 100}}
	res, err := Aggregate(p, meas(3), rs, bs)
	if err != nil {
		t.Fatal(err)
	}
	if s := res.Seconds[0]; s.M != math.MaxUint64 || s.T != math.MaxUint64 {
		t.Errorf("second 1: %+v", s)
	}
	if s := res.Seconds[1]; s.M != math.MaxUint64 || s.BPrime != 100 || s.T != math.MaxUint64 || s.Clamped {
		t.Errorf("second 2: %+v", s)
	}
}

// TestProperties checks over random inputs that the estimate is at most
// median(M)/(1−r) (+1 for rounding), that honest targets are never
// clamped, and that each second's numbers follow the definitions.
func TestProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for trial := range 3000 {
		d := 1 + rng.IntN(40)
		n := 1 + rng.IntN(MaxMeasurers)
		pc := rng.IntN(MaxBGPercent + 1)
		honest := rng.IntN(2) == 0
		p := Params{Duration: d, BGPercent: pc, Measurers: n, MinSeconds: 1 + rng.IntN(d)}
		scale := uint64(1) << (1 + rng.IntN(45)) // keeps sums far from saturation
		var rs []MeasurerReport
		var bs []BGReport
		for s := 1; s <= d; s++ {
			var m uint64
			for j := range n {
				if rng.IntN(20) == 0 {
					continue // missing report
				}
				v := rng.Uint64N(scale)
				m += v
				rs = append(rs, MeasurerReport{Measurer: j, Second: s, Bytes: v})
			}
			if rng.IntN(20) == 0 {
				continue // missing BG report
			}
			var sent, recv uint64
			if honest {
				// The target keeps B/(M+B) <= r: B <= ⌊M·r/(1−r)⌋.
				limit := m * uint64(pc) / uint64(100-pc)
				sent = rng.Uint64N(limit + 1)
				recv = sent + rng.Uint64N(scale)
				if rng.IntN(2) == 0 {
					sent, recv = recv, sent
				}
			} else {
				sent, recv = rng.Uint64N(scale*100), rng.Uint64N(scale*100)
			}
			bs = append(bs, BGReport{Second: s, Sent: sent, Recv: recv})
		}
		rng.Shuffle(len(rs), func(i, k int) { rs[i], rs[k] = rs[k], rs[i] })
		rng.Shuffle(len(bs), func(i, k int) { bs[i], bs[k] = bs[k], bs[i] })

		res, err := Aggregate(p, meas(n), rs, bs)
		if errors.Is(err, ErrIncomplete) {
			if res.Complete >= p.MinSeconds {
				t.Fatalf("trial %d: ErrIncomplete with %d complete >= %d", trial, res.Complete, p.MinSeconds)
			}
			continue
		}
		if err != nil {
			t.Fatalf("trial %d: %v", trial, err)
		}
		var ms []uint64
		clamped := 0
		for _, s := range res.Seconds {
			if s.BPrime != min(s.B, MaxBG(s.M, pc)) || s.T != s.M+s.BPrime || s.Clamped != (s.B > s.BPrime) {
				t.Fatalf("trial %d: second %+v", trial, s)
			}
			// T <= M/(1−r) = 100M/(100−p), exactly.
			if s.T*uint64(100-pc) > s.M*100 {
				t.Fatalf("trial %d: second %d: T %d > M/(1-r) with M %d r %d%%", trial, s.Second, s.T, s.M, pc)
			}
			if s.Complete {
				ms = append(ms, s.M)
				if s.Clamped {
					clamped++
				}
			}
			if honest && s.Clamped {
				t.Fatalf("trial %d: honest second clamped: %+v (r %d%%)", trial, s, pc)
			}
		}
		if clamped != res.Clamped || len(ms) != res.Complete || res.Complete+len(res.Missing) != d {
			t.Fatalf("trial %d: counts %+v", trial, res)
		}
		medM := LowerMedian(ms)
		bound := medM*100/uint64(100-pc) + 1
		if res.Estimate > bound {
			t.Fatalf("trial %d: Estimate %d > median(M)/(1-r)+1 = %d", trial, res.Estimate, bound)
		}
		if res.Estimate < medM {
			t.Fatalf("trial %d: Estimate %d < median(M) %d", trial, res.Estimate, medM)
		}
	}
}

func TestRanges(t *testing.T) {
	for _, tc := range []struct {
		v    []int
		want string
	}{
		{[]int{1}, "1"},
		{[]int{1, 2}, "1-2"},
		{[]int{1, 3}, "1,3"},
		{[]int{1, 2, 3, 5, 7, 8, 30}, "1-3,5,7-8,30"},
	} {
		if got := ranges(tc.v); got != tc.want {
			t.Errorf("ranges(%v) = %q, want %q", tc.v, got, tc.want)
		}
	}
}

func seq(a, b int) []int {
	var v []int
	for i := a; i <= b; i++ {
		v = append(v, i)
	}
	return v
}
