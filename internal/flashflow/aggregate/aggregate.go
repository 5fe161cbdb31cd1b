// Package aggregate turns one FlashFlow measurement's per-second reports
// into a capacity estimate, as the coordinator does in tor proposal 316
// §3.2.1.1.
//
// For every second i of a d-second measurement:
//
//	M_i  = Σ over measurers of the verified echoed bytes in second i
//	B_i  = min(Sent_i, Recv_i) from the target's MEAS_BG report
//	B'_i = min(B_i, ⌊M_i·p/(100−p)⌋)     p = background percent (r = p/100)
//	T_i  = M_i + B'_i
//
// and the estimate is the median of T_i over the complete seconds. B'_i
// is the most background traffic the ratio r allows next to M_i of
// measurement traffic (B/(M+B) <= r ⇔ B <= M·r/(1−r)); a target that
// claims more is clamped, so whatever it reports, T_i <= M_i/(1−r) and
// a lying target gains at most a factor 1/(1−r) (1.33 at r = 25%,
// §3.3.1).
//
// # Units
//
// All byte counts of one measurement must be in the same unit. The
// target's MEAS_BG counts are bytes on its connections; measurers should
// therefore convert verified echoed stream bytes to cell bytes (see
// echo.CellBytes) before reporting them. The estimate is in that unit
// per second.
//
// # Integer arithmetic
//
// The ratio is an integer percent p in [0, 99], like the
// FFBackgroundTrafficPercent parameter, so that B'_i is exact: M_i·p is
// computed in 128 bits and divided by 100−p, rounding down. Sums that
// would overflow a uint64 saturate at math.MaxUint64 instead of
// wrapping, so a huge (bogus) count can never wrap around to a small one
// or vice versa.
//
// # Seconds and missing reports
//
// Seconds are numbered 1..d by the measurement's clock (the second field
// of MEAS_BG); callers must number the measurers' reports the same way.
// A report for a second outside 1..d, for an unknown measurer, or a
// second report for the same (measurer, second) or the same BG second is
// an error: it means a bug or a misbehaving party, and no estimate is
// made from such input.
//
// A second is complete when every measurer reported it. Incomplete
// seconds are dropped (listed in Result.Missing) rather than counting the
// absent measurer as 0: measurers are the deployment's own machines and
// report every second, including seconds in which they received nothing
// (they must report 0 then, not skip the report); a missing report is
// therefore our failure, not the target's, and must not lower the
// target's estimate, nor can the target cause it. If fewer than
// Params.MinSeconds seconds are complete the measurement fails with
// ErrIncomplete, naming each measurer's missing seconds.
//
// A missing MEAS_BG report is the target's doing, so it never helps the
// target: the second still counts, with B_i = 0 (listed in
// Result.MissingBG). Dropping such seconds instead would let a target
// choose which seconds enter the median by withholding reports for its
// slow seconds.
//
// # Median
//
// For an even number of complete seconds the estimate is the lower of
// the two middle values: an estimate is never rounded up, so a relay is
// never credited with a throughput it did not sustain for at least half
// the counted seconds.
//
// # Connections
//
// As §3.1.3 requires, the measurement fails (ErrConns) if any measurer
// opened fewer than half the connections it wanted.
package aggregate

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"strings"
)

// Ranges of parameters.
const (
	MaxDuration  = 600 // seconds, as MEAS_PARAMS's meas_duration
	MaxBGPercent = 99  // as FFBackgroundTrafficPercent
	MaxMeasurers = 10  // as MEAS_PARAMS's num_measurers
)

// Errors. Every error Aggregate returns wraps exactly one of these; the
// message says what was wrong and with which measurer or second.
var (
	// ErrParams: Params or the measurers' connection counts are invalid
	// (a caller bug).
	ErrParams = errors.New("invalid aggregation parameters")
	// ErrConns: a measurer opened fewer than half its connections; the
	// measurement failed (prop 316 §3.1.3) and should be retried later.
	ErrConns = errors.New("measurer opened fewer than half its connections")
	// ErrReport: a report is out of range or duplicated; the input cannot
	// be trusted and no estimate is made.
	ErrReport = errors.New("invalid report")
	// ErrIncomplete: too few seconds had a report from every measurer;
	// the measurement failed and should be retried later.
	ErrIncomplete = errors.New("too few complete seconds")
)

// Params describes one measurement.
type Params struct {
	// Duration is the measurement's length d in seconds, 1..MaxDuration.
	Duration int
	// BGPercent is the background traffic ratio r as an integer percent,
	// 0..MaxBGPercent (r = BGPercent/100), the value the target was told.
	BGPercent int
	// Measurers is the number of measurers, 1..MaxMeasurers. They are
	// numbered 0..Measurers-1.
	Measurers int
	// MinSeconds is the fewest complete seconds that make an estimate,
	// 1..Duration; 0 means ⌈5·Duration/6⌉ (25 of 30, as the paper's
	// prototype).
	MinSeconds int
}

// Measurer is what one measurer did about connections.
type Measurer struct {
	ConnsWanted int // connections it was asked to open, >= 1
	ConnsOpened int // connections it opened, 0..ConnsWanted
}

// MeasurerReport is one measurer's report for one second.
type MeasurerReport struct {
	Measurer int    // 0..Params.Measurers-1
	Second   int    // 1..Params.Duration
	Bytes    uint64 // verified echoed bytes in that second
}

// BGReport is the target's MEAS_BG report for one second.
type BGReport struct {
	Second     int    // 1..Params.Duration
	Sent, Recv uint64 // background bytes sent and received in that second
}

// Second is the computation for one second.
type Second struct {
	Second int    // 1..d
	M      uint64 // sum of the measurers' bytes (partial if !Complete)
	B      uint64 // min(Sent, Recv) claimed by the target; 0 if BGMissing
	BPrime uint64 // B clamped to M·r/(1−r): the background traffic counted
	T      uint64 // M + BPrime
	// Clamped: the target claimed more background traffic than allowed.
	Clamped bool
	// Complete: every measurer reported this second, so it counts.
	Complete bool
	// BGMissing: the target sent no report for this second.
	BGMissing bool
	// MissingFrom lists the measurers that did not report this second.
	MissingFrom []int
}

// Result is a measurement's outcome.
type Result struct {
	// Estimate is the median of T over the complete seconds (the lower
	// middle one for an even count), in bytes per second.
	Estimate uint64
	// Seconds has one entry per second of the measurement, Seconds[i-1]
	// for second i, complete or not.
	Seconds []Second
	// Clamped counts the complete seconds whose B was clamped.
	Clamped int
	// Complete counts the complete seconds: those the median is over.
	Complete int
	// Missing lists the incomplete (dropped) seconds, ascending.
	Missing []int
	// MissingBG lists the seconds without a BG report, ascending; they
	// count (if complete) with B = 0.
	MissingBG []int
}

// DefaultMinSeconds is MinSeconds's default for a duration of d seconds:
// ⌈5d/6⌉.
func DefaultMinSeconds(d int) int { return (5*d + 5) / 6 }

// Aggregate computes the capacity estimate of one measurement from the
// measurers' connection counts (measurers[j] for measurer j), their
// per-second reports and the target's per-second BG reports, in any
// order.
//
// On error, Estimate is 0 and must not be used. For ErrIncomplete the
// rest of the Result (Seconds, Complete, Missing, MissingBG) is filled in
// for diagnosis; for the other errors it is empty.
func Aggregate(p Params, measurers []Measurer, reports []MeasurerReport, bg []BGReport) (Result, error) {
	minSeconds, err := check(p, measurers)
	if err != nil {
		return Result{}, err
	}

	d, n := p.Duration, p.Measurers
	// got[(s-1)*n+j]: measurer j reported second s.
	got := make([]bool, d*n)
	m := make([]uint64, d)
	for _, r := range reports {
		if r.Measurer < 0 || r.Measurer >= n {
			return Result{}, fmt.Errorf("aggregate: %w: report from unknown measurer %d (measurers are 0..%d)", ErrReport, r.Measurer, n-1)
		}
		if r.Second < 1 || r.Second > d {
			return Result{}, fmt.Errorf("aggregate: %w: measurer %d reported second %d, outside 1..%d", ErrReport, r.Measurer, r.Second, d)
		}
		k := (r.Second-1)*n + r.Measurer
		if got[k] {
			return Result{}, fmt.Errorf("aggregate: %w: measurer %d reported second %d twice", ErrReport, r.Measurer, r.Second)
		}
		got[k] = true
		m[r.Second-1] = addSat(m[r.Second-1], r.Bytes)
	}
	b := make([]uint64, d)
	gotBG := make([]bool, d)
	for _, r := range bg {
		if r.Second < 1 || r.Second > d {
			return Result{}, fmt.Errorf("aggregate: %w: target reported background traffic for second %d, outside 1..%d", ErrReport, r.Second, d)
		}
		if gotBG[r.Second-1] {
			return Result{}, fmt.Errorf("aggregate: %w: target reported background traffic for second %d twice", ErrReport, r.Second)
		}
		gotBG[r.Second-1] = true
		b[r.Second-1] = min(r.Sent, r.Recv)
	}

	res := Result{Seconds: make([]Second, d)}
	totals := make([]uint64, 0, d)
	for i := range d {
		s := Second{Second: i + 1, M: m[i], B: b[i], Complete: true, BGMissing: !gotBG[i]}
		for j := range n {
			if !got[i*n+j] {
				s.Complete = false
				s.MissingFrom = append(s.MissingFrom, j)
			}
		}
		allowed := MaxBG(s.M, p.BGPercent)
		s.BPrime = min(s.B, allowed)
		s.Clamped = s.B > allowed
		s.T = addSat(s.M, s.BPrime)
		if s.BGMissing {
			res.MissingBG = append(res.MissingBG, s.Second)
		}
		if s.Complete {
			res.Complete++
			if s.Clamped {
				res.Clamped++
			}
			totals = append(totals, s.T)
		} else {
			res.Missing = append(res.Missing, s.Second)
		}
		res.Seconds[i] = s
	}

	if res.Complete < minSeconds {
		return res, fmt.Errorf("aggregate: %w: %d of %d seconds complete, need at least %d; missing reports: %s",
			ErrIncomplete, res.Complete, d, minSeconds, describeMissing(res.Seconds, n))
	}
	res.Estimate = LowerMedian(totals)
	return res, nil
}

// check validates p and measurers and returns the effective MinSeconds.
func check(p Params, measurers []Measurer) (int, error) {
	if p.Duration < 1 || p.Duration > MaxDuration {
		return 0, fmt.Errorf("aggregate: %w: duration %d s outside 1..%d", ErrParams, p.Duration, MaxDuration)
	}
	if p.BGPercent < 0 || p.BGPercent > MaxBGPercent {
		return 0, fmt.Errorf("aggregate: %w: background percent %d outside 0..%d", ErrParams, p.BGPercent, MaxBGPercent)
	}
	if p.Measurers < 1 || p.Measurers > MaxMeasurers {
		return 0, fmt.Errorf("aggregate: %w: %d measurers, outside 1..%d", ErrParams, p.Measurers, MaxMeasurers)
	}
	minSeconds := p.MinSeconds
	if minSeconds == 0 {
		minSeconds = DefaultMinSeconds(p.Duration)
	}
	if minSeconds < 1 || minSeconds > p.Duration {
		return 0, fmt.Errorf("aggregate: %w: minimum of %d complete seconds outside 1..%d (the duration), or 0 for the default", ErrParams, p.MinSeconds, p.Duration)
	}
	if len(measurers) != p.Measurers {
		return 0, fmt.Errorf("aggregate: %w: connection counts for %d measurers, want %d", ErrParams, len(measurers), p.Measurers)
	}
	var few []string
	for j, ms := range measurers {
		if ms.ConnsWanted < 1 || ms.ConnsOpened < 0 || ms.ConnsOpened > ms.ConnsWanted {
			return 0, fmt.Errorf("aggregate: %w: measurer %d opened %d of %d wanted connections (want 0 <= opened <= wanted, wanted >= 1)",
				ErrParams, j, ms.ConnsOpened, ms.ConnsWanted)
		}
		if 2*ms.ConnsOpened < ms.ConnsWanted {
			few = append(few, fmt.Sprintf("measurer %d opened %d of %d", j, ms.ConnsOpened, ms.ConnsWanted))
		}
	}
	if len(few) > 0 {
		return 0, fmt.Errorf("aggregate: %w: %s", ErrConns, strings.Join(few, "; "))
	}
	return minSeconds, nil
}

// MaxBG is the most background traffic counted next to m bytes of
// measurement traffic at a ratio of percent/100: ⌊m·percent/(100−percent)⌋,
// computed exactly, saturating at math.MaxUint64. percent must be in
// 0..MaxBGPercent.
func MaxBG(m uint64, percent int) uint64 {
	if percent < 0 || percent > MaxBGPercent {
		panic("aggregate: MaxBG: percent out of range")
	}
	hi, lo := bits.Mul64(m, uint64(percent))
	div := uint64(100 - percent)
	if hi >= div {
		return math.MaxUint64 // the quotient needs more than 64 bits
	}
	q, _ := bits.Div64(hi, lo, div)
	return q
}

// LowerMedian returns the median of v, the lower of the two middle values
// if len(v) is even, or 0 if v is empty. v is not modified.
func LowerMedian(v []uint64) uint64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

func addSat(a, b uint64) uint64 {
	s, carry := bits.Add64(a, b, 0)
	if carry != 0 {
		return math.MaxUint64
	}
	return s
}

// describeMissing says, per measurer, which seconds it did not report,
// as ranges: "measurer 0: seconds 3-7,9; measurer 2: second 30".
func describeMissing(secs []Second, n int) string {
	per := make([][]int, n)
	for _, s := range secs {
		for _, j := range s.MissingFrom {
			per[j] = append(per[j], s.Second)
		}
	}
	var parts []string
	for j, ss := range per {
		if len(ss) == 0 {
			continue
		}
		word := "seconds"
		if len(ss) == 1 {
			word = "second"
		}
		parts = append(parts, fmt.Sprintf("measurer %d: %s %s", j, word, ranges(ss)))
	}
	return strings.Join(parts, "; ")
}

// ranges formats ascending ints as "1-3,5,7-8".
func ranges(v []int) string {
	var sb strings.Builder
	for i := 0; i < len(v); {
		j := i
		for j+1 < len(v) && v[j+1] == v[j]+1 {
			j++
		}
		if sb.Len() > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(strconv.Itoa(v[i]))
		if j > i {
			sb.WriteByte('-')
			sb.WriteString(strconv.Itoa(v[j]))
		}
		i = j + 1
	}
	return sb.String()
}
