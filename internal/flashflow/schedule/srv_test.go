package schedule

import (
	"encoding/hex"
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

// The SRV of the consensus fixture cited in the research notes (sbws
// tests/data/2020-02-29-10-00-00-consensus).
const fixtureSRVLine = "shared-rand-current-value 9 ornTOFLTj7AC+Q8MyY2oDcZeyZhEbBjpFIF33vlAya8="

func mustHex32(t *testing.T, s string) [32]byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 {
		t.Fatalf("bad hex %q", s)
	}
	return [32]byte(b)
}

func TestDailySecret(t *testing.T) {
	srv, err := ParseSRVLine(fixtureSRVLine)
	if err != nil {
		t.Fatal(err)
	}
	period := PeriodOf(time.Date(2020, 2, 29, 10, 0, 0, 0, time.UTC), 24*time.Hour)
	if period != 18321 {
		t.Fatalf("period %d", period)
	}
	// Computed independently with Python's hmac/hashlib:
	// hmac.new(key, b"bento-flashflow-schedule-v1" + srv + struct.pack(">Q", 18321), sha256).
	want := mustHex32(t, "618e26d4eb78a16dc52dcc95923865608d22e20ca488d1c2c0f681e7bcfed26b")
	key := []byte("bento test shared secret")
	if got := DailySecret(key, srv.Value, period); got != want {
		t.Fatalf("DailySecret = %x, want %x", got, want)
	}
	// Each input matters.
	other := srv.Value
	other[31] ^= 1
	for name, got := range map[string][32]byte{
		"key":    DailySecret([]byte("bento test shared secreT"), srv.Value, period),
		"srv":    DailySecret(key, other, period),
		"period": DailySecret(key, srv.Value, period+1),
	} {
		if got == want {
			t.Errorf("changing the %s did not change the secret", name)
		}
	}
}

func TestDisasterSRV(t *testing.T) {
	// Computed independently with Python's hashlib.sha3_256.
	tests := []struct {
		length time.Duration
		num    uint64
		want   string
	}{
		{24 * time.Hour, 18321, "ff76714f9027ae236ee7896421987d6086ae56c2b4dea624952bbd0618cafbfc"},
		{24*time.Hour + 30*time.Second, 0, "128649728ae12c7e3ff889767fbe76717fda04dfefacdd462d97139e1a35a8df"}, // minutes, truncated
	}
	for _, tt := range tests {
		if got := DisasterSRV(tt.length, tt.num); got != mustHex32(t, tt.want) {
			t.Errorf("DisasterSRV(%v, %d) = %x, want %s", tt.length, tt.num, got, tt.want)
		}
	}
}

func TestParseSRVLine(t *testing.T) {
	fixture := mustHex32(t, "a2b9d33852d38fb002f90f0cc98da80dc65ec998446c18e9148177def940c9af")
	tests := []struct {
		name string
		line string
		want SRV
		err  bool
	}{
		{"current", fixtureSRVLine, SRV{NumReveals: 9, Value: fixture}, false},
		{"previous", strings.Replace(fixtureSRVLine, "current", "previous", 1), SRV{Previous: true, NumReveals: 9, Value: fixture}, false},
		{"CRLF", fixtureSRVLine + "\r\n", SRV{NumReveals: 9, Value: fixture}, false},
		{"unpadded", strings.TrimSuffix(fixtureSRVLine, "="), SRV{NumReveals: 9, Value: fixture}, false},
		{"tabs", strings.ReplaceAll(fixtureSRVLine, " ", "\t"), SRV{NumReveals: 9, Value: fixture}, false},
		{"max reveals", "shared-rand-current-value 4294967295 " + strings.Fields(fixtureSRVLine)[2], SRV{NumReveals: math.MaxUint32, Value: fixture}, false},
		{"empty", "", SRV{}, true},
		{"two fields", "shared-rand-current-value 9", SRV{}, true},
		{"four fields", fixtureSRVLine + " extra", SRV{}, true},
		{"keyword", strings.Replace(fixtureSRVLine, "current", "next", 1), SRV{}, true},
		{"negative", strings.Replace(fixtureSRVLine, " 9 ", " -9 ", 1), SRV{}, true},
		{"plus", strings.Replace(fixtureSRVLine, " 9 ", " +9 ", 1), SRV{}, true},
		{"too many reveals", strings.Replace(fixtureSRVLine, " 9 ", " 4294967296 ", 1), SRV{}, true},
		{"hex value", "shared-rand-current-value 9 " + hex.EncodeToString(fixture[:]), SRV{}, true},
		{"short value", "shared-rand-current-value 9 AAAA", SRV{}, true},
		{"long value", "shared-rand-current-value 9 " + strings.Repeat("A", 48), SRV{}, true},
		{"non-canonical padding bits", "shared-rand-current-value 9 ornTOFLTj7AC+Q8MyY2oDcZeyZhEbBjpFIF33vlAya9=", SRV{}, true},
		{"bad character", "shared-rand-current-value 9 ornTOFLTj7AC+Q8MyY2oDcZeyZhEbBjpFIF33vlAy!8=", SRV{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSRVLine(tt.line)
			if tt.err {
				if err == nil || !errors.Is(err, ErrSRV) {
					t.Fatalf("got %+v, %v; want an ErrSRV", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
	s, _ := ParseSRVLine(fixtureSRVLine)
	if s.String() != fixtureSRVLine {
		t.Errorf("String() = %q", s.String())
	}
}

const consensusHead = `network-status-version 3
vote-status consensus
consensus-method 28
valid-after 2020-02-29 10:00:00
fresh-until 2020-02-29 11:00:00
valid-until 2020-02-29 13:00:00
shared-rand-previous-value 9 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
`

func TestParseConsensusSRV(t *testing.T) {
	c, err := ParseConsensusSRV([]byte(consensusHead + fixtureSRVLine + "\nr foo AAAA\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !c.ValidAfter.Equal(time.Date(2020, 2, 29, 10, 0, 0, 0, time.UTC)) || c.Current == nil || c.Previous == nil || c.Previous.Value != [32]byte{} {
		t.Fatalf("%+v", c)
	}
	srv, num, disaster := c.ForPeriod(24 * time.Hour)
	if disaster || num != 18321 || srv != c.Current.Value {
		t.Fatalf("ForPeriod = %x, %d, %v", srv, num, disaster)
	}

	// No current SRV: the disaster SRV of the period.
	c, err = ParseConsensusSRV([]byte(consensusHead))
	if err != nil {
		t.Fatal(err)
	}
	srv, num, disaster = c.ForPeriod(24 * time.Hour)
	if !disaster || num != 18321 || srv != DisasterSRV(24*time.Hour, 18321) {
		t.Fatalf("fallback = %x, %d, %v", srv, num, disaster)
	}

	for name, doc := range map[string]string{
		"no valid-after":  "shared-rand-current-value 1 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
		"bad valid-after": "valid-after yesterday\n",
		"two valid-after": consensusHead + "valid-after 2020-02-29 11:00:00\n",
		"two current":     consensusHead + fixtureSRVLine + "\n" + fixtureSRVLine + "\n",
		"bad current":     consensusHead + "shared-rand-current-value x y\n",
	} {
		if _, err := ParseConsensusSRV([]byte(doc)); !errors.Is(err, ErrSRV) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func TestPeriodOf(t *testing.T) {
	day := 24 * time.Hour
	tests := []struct {
		t      time.Time
		period time.Duration
		want   uint64
	}{
		{time.Unix(0, 0), day, 0},
		{time.Unix(86399, 999999999), day, 0},
		{time.Unix(86400, 0), day, 1},
		{time.Date(2020, 2, 29, 0, 0, 0, 0, time.UTC), day, 18321},
		{time.Date(2020, 2, 29, 23, 59, 59, 0, time.UTC), day, 18321},
		{time.Date(2020, 2, 29, 1, 0, 0, 0, time.FixedZone("x", 2*3600)), day, 18320}, // 2020-02-28 23:00 UTC
		{time.Unix(-1, 0), day, 0},
		{time.Unix(3600*5+1, 0), time.Hour, 5},
		{time.Unix(10, 500), time.Nanosecond, 10_000_000_500},
		{time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC), time.Nanosecond, math.MaxUint64}, // overflows: saturates
	}
	for _, tt := range tests {
		if got := PeriodOf(tt.t, tt.period); got != tt.want {
			t.Errorf("PeriodOf(%v, %v) = %d, want %d", tt.t, tt.period, got, tt.want)
		}
	}
	for _, n := range []uint64{0, 1, 18321, 100000} {
		start := PeriodStart(n, day)
		if PeriodOf(start, day) != n || n > 0 && PeriodOf(start.Add(-1), day) != n-1 {
			t.Errorf("PeriodStart(%d) = %v", n, start)
		}
		if start.Hour() != 0 || start.Minute() != 0 || start.Location() != time.UTC {
			t.Errorf("PeriodStart(%d) = %v, want midnight UTC", n, start)
		}
	}
	if got := PeriodStart(math.MaxUint64, day); got.Year() < 3000 {
		t.Errorf("huge PeriodStart clamped to %v", got)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("PeriodOf(_, 0) did not panic")
			}
		}()
		PeriodOf(time.Now(), 0)
	}()
}

func TestSlotAt(t *testing.T) {
	start := PeriodStart(18321, 24*time.Hour)
	tests := []struct {
		off  time.Duration
		want int
	}{
		{0, 0}, {59 * time.Second, 0}, {time.Minute, 1}, {24*time.Hour - 1, 1439}, {24 * time.Hour, 0},
	}
	for _, tt := range tests {
		got, err := slotAt(start.Add(tt.off), 24*time.Hour, time.Minute)
		if err != nil || got != tt.want {
			t.Errorf("slotAt(+%v) = %d, %v; want %d", tt.off, got, err, tt.want)
		}
	}
}

func FuzzParseSRV(f *testing.F) {
	f.Add(fixtureSRVLine)
	f.Add(strings.Replace(fixtureSRVLine, "current", "previous", 1))
	f.Add("shared-rand-current-value 0 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	f.Add("shared-rand-current-value 99999999999 x")
	f.Add("")
	f.Fuzz(func(t *testing.T, line string) {
		s, err := ParseSRVLine(line)
		if err != nil {
			if !errors.Is(err, ErrSRV) {
				t.Fatalf("error %v does not wrap ErrSRV", err)
			}
			return
		}
		// A parsed value formats to a canonical line that parses back to
		// the same value.
		again, err := ParseSRVLine(s.String())
		if err != nil || again != s {
			t.Fatalf("round trip of %q: %q -> %+v, %v", line, s.String(), again, err)
		}
		// And the consensus scanner agrees.
		c, err := ParseConsensusSRV([]byte("valid-after 2020-02-29 10:00:00\n" + s.String() + "\n"))
		if err != nil {
			t.Fatal(err)
		}
		got := c.Current
		if s.Previous {
			got = c.Previous
		}
		if got == nil || *got != s {
			t.Fatalf("consensus scan gave %+v", c)
		}
	})
}
