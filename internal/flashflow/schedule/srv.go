package schedule

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha3"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
	"time"
)

// DailySecretLabel is the domain-separation label of DailySecret.
const DailySecretLabel = "bento-flashflow-schedule-v1"

// DailySecret derives the seed of a period's schedule:
//
//	HMAC-SHA256(key = shared,
//	            msg = "bento-flashflow-schedule-v1" || srv || INT_8(period))
//
// where the label is the 27 ASCII bytes of DailySecretLabel (no length
// prefix, no terminator), srv is the 32 raw bytes of the shared random value
// (not its base64 form) and INT_8(period) is the period number (see
// PeriodOf) as 8 bytes, big-endian. The message is always 67 bytes.
//
// shared is a secret known only to the cooperating coordinators, so that
// relays cannot compute when they will be measured (the paper's "known only
// to the BWAuths"); srv makes the schedule change unpredictably every
// period. This is the DAILY_SECRET = H(SHARED_SECRET | SRV) asked for in
// review, keyed properly and bound to the period.
func DailySecret(shared []byte, srv [32]byte, period uint64) [32]byte {
	mac := hmac.New(sha256.New, shared)
	msg := make([]byte, 0, len(DailySecretLabel)+32+8)
	msg = append(msg, DailySecretLabel...)
	msg = append(msg, srv[:]...)
	msg = binary.BigEndian.AppendUint64(msg, period)
	mac.Write(msg)
	var out [32]byte
	mac.Sum(out[:0])
	return out
}

// SRV keywords in a consensus (dir-spec §3.4.1).
const (
	srvCurrentKeyword  = "shared-rand-current-value"
	srvPreviousKeyword = "shared-rand-previous-value"
)

// SRV is a shared random value from a consensus.
type SRV struct {
	// Previous is set for a shared-rand-previous-value line.
	Previous bool
	// NumReveals is the number of commit-reveal participants.
	NumReveals uint32
	// Value is the 256-bit shared random value.
	Value [32]byte
}

// String formats s as its consensus line (without newline).
func (s SRV) String() string {
	kw := srvCurrentKeyword
	if s.Previous {
		kw = srvPreviousKeyword
	}
	return kw + " " + strconv.FormatUint(uint64(s.NumReveals), 10) + " " +
		base64.StdEncoding.EncodeToString(s.Value[:])
}

// ErrSRV is wrapped by SRV parsing errors.
var ErrSRV = errors.New("schedule: bad shared random value")

// ParseSRVLine parses a consensus line
//
//	shared-rand-current-value <NumReveals> <Value>
//	shared-rand-previous-value <NumReveals> <Value>
//
// NumReveals is a decimal integer below 2^32; Value is 32 bytes in base64
// (tor writes it padded, 44 characters; the unpadded form is accepted too).
// Fields may be separated by spaces or tabs; a trailing CR/LF is ignored.
func ParseSRVLine(line string) (SRV, error) {
	line = strings.TrimRight(line, "\r\n")
	f := strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == '\t' })
	var s SRV
	if len(f) != 3 {
		return s, fmt.Errorf("%w: want 3 fields, got %d", ErrSRV, len(f))
	}
	switch f[0] {
	case srvCurrentKeyword:
	case srvPreviousKeyword:
		s.Previous = true
	default:
		return s, fmt.Errorf("%w: unknown keyword %q", ErrSRV, f[0])
	}
	n, err := strconv.ParseUint(f[1], 10, 32)
	if err != nil {
		return s, fmt.Errorf("%w: NumReveals %q", ErrSRV, f[1])
	}
	s.NumReveals = uint32(n)
	enc := base64.StdEncoding.Strict()
	if !strings.HasSuffix(f[2], "=") {
		enc = base64.RawStdEncoding.Strict()
	}
	v, err := enc.DecodeString(f[2])
	if err != nil || len(v) != 32 {
		return s, fmt.Errorf("%w: value %q is not 32 bytes of base64", ErrSRV, f[2])
	}
	copy(s.Value[:], v)
	return s, nil
}

// ConsensusSRV holds what a consensus says about shared randomness.
type ConsensusSRV struct {
	ValidAfter time.Time
	Current    *SRV // nil if the consensus has none
	Previous   *SRV // nil if the consensus has none
}

// ParseConsensusSRV extracts the valid-after time and the shared random
// values from a consensus (or its header). Duplicate lines and a missing
// valid-after are errors.
func ParseConsensusSRV(consensus []byte) (ConsensusSRV, error) {
	var c ConsensusSRV
	sc := bufio.NewScanner(bytes.NewReader(consensus))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		kw, rest := line, ""
		if i := strings.IndexAny(line, " \t"); i >= 0 {
			kw, rest = line[:i], line[i+1:]
		}
		switch kw {
		case "valid-after":
			if !c.ValidAfter.IsZero() {
				return c, fmt.Errorf("%w: duplicate valid-after", ErrSRV)
			}
			t, err := time.Parse(time.DateTime, strings.TrimSpace(rest))
			if err != nil {
				return c, fmt.Errorf("%w: valid-after %q", ErrSRV, rest)
			}
			c.ValidAfter = t.UTC()
		case srvCurrentKeyword, srvPreviousKeyword:
			s, err := ParseSRVLine(line)
			if err != nil {
				return c, err
			}
			dst := &c.Current
			if s.Previous {
				dst = &c.Previous
			}
			if *dst != nil {
				return c, fmt.Errorf("%w: duplicate %s", ErrSRV, kw)
			}
			*dst = &s
		}
	}
	if err := sc.Err(); err != nil {
		return c, fmt.Errorf("%w: %v", ErrSRV, err)
	}
	if c.ValidAfter.IsZero() {
		return c, fmt.Errorf("%w: no valid-after line", ErrSRV)
	}
	return c, nil
}

// ForPeriod returns the SRV to feed DailySecret for the period containing
// the consensus's valid-after: the current shared random value, or, if the
// consensus has none (the protocol run failed), DisasterSRV for that period.
// It also returns the period number.
//
// Tor's SRV changes at 00:00 UTC, so every consensus of one period yields
// the same value as long as period divides 24 h (with DefaultPeriod: the
// SRV made at the period's start). Coordinators must use a consensus from
// the period they plan: one from the previous day carries the previous
// day's SRV and the previous period number.
func (c ConsensusSRV) ForPeriod(period time.Duration) (srv [32]byte, periodNum uint64, disaster bool) {
	periodNum = PeriodOf(c.ValidAfter, period)
	if c.Current != nil {
		return c.Current.Value, periodNum, false
	}
	return DisasterSRV(period, periodNum), periodNum, true
}

// DisasterSRV is the fallback used when a consensus has no shared random
// value, in the style of rend-spec-v3 §2.3.1:
//
//	SHA3-256("shared-random-disaster" | INT_8(period_length) | INT_8(period_num))
//
// with period_length in minutes (as tor does; sub-minute remainders are
// dropped) and INT_8 an 8-byte big-endian integer. It is public and
// predictable, so a schedule's secrecy then rests entirely on the shared
// secret given to DailySecret.
func DisasterSRV(periodLength time.Duration, periodNum uint64) [32]byte {
	b := make([]byte, 0, 22+16)
	b = append(b, "shared-random-disaster"...)
	b = binary.BigEndian.AppendUint64(b, uint64(periodLength/time.Minute))
	b = binary.BigEndian.AppendUint64(b, periodNum)
	return sha3.Sum256(b)
}

// sinceEpoch returns t - 1970-01-01T00:00:00Z in nanoseconds as a 128-bit
// number, or ok == false if t is before the epoch.
func sinceEpoch(t time.Time) (hi, lo uint64, ok bool) {
	sec := t.Unix()
	if sec < 0 {
		return 0, 0, false
	}
	hi, lo = bits.Mul64(uint64(sec), 1e9)
	var carry uint64
	lo, carry = bits.Add64(lo, uint64(t.Nanosecond()), 0)
	hi += carry
	return hi, lo, true
}

// PeriodOf returns the number of the period containing t, periods being
// aligned to the Unix epoch: period k covers [k·period, (k+1)·period) after
// 1970-01-01 00:00 UTC, so 24 h periods start at 00:00 UTC, like tor's SRV.
// Times before the epoch give 0. It panics if period is not positive.
func PeriodOf(t time.Time, period time.Duration) uint64 {
	if period <= 0 {
		panic("schedule: PeriodOf with non-positive period")
	}
	hi, lo, ok := sinceEpoch(t)
	if !ok {
		return 0
	}
	if hi >= uint64(period) {
		return math.MaxUint64
	}
	q, _ := bits.Div64(hi, lo, uint64(period))
	return q
}

// PeriodStart returns the start of period n (the inverse of PeriodOf), in
// UTC. It panics if period is not positive.
func PeriodStart(n uint64, period time.Duration) time.Time {
	if period <= 0 {
		panic("schedule: PeriodStart with non-positive period")
	}
	hi, lo := bits.Mul64(n, uint64(period))
	if hi >= 1e9 {
		hi, lo = 1e9-1, math.MaxUint64 // far beyond any real date; clamp
	}
	sec, nsec := bits.Div64(hi, lo, 1e9)
	if sec > math.MaxInt64 {
		sec = math.MaxInt64
	}
	return time.Unix(int64(sec), int64(nsec)).UTC()
}

// slotAt returns the index of the slot containing t within its period.
func slotAt(t time.Time, period, slot time.Duration) (int, error) {
	hi, lo, ok := sinceEpoch(t)
	if !ok {
		return 0, fmt.Errorf("schedule: time %v is before the Unix epoch", t)
	}
	off := bits.Rem64(hi, lo, uint64(period))
	return int(off / uint64(slot)), nil
}
