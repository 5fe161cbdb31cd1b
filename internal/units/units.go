// Package units parses and formats the byte sizes and durations used in
// bentorc and in function manifests, accepting tor's spellings ("64 MB",
// "10 minutes") as well as compact ones ("64MiB", "10m").
//
// As in tor, KB, MB and GB are powers of 1024.
package units

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
)

var sizeUnits = map[string]int64{
	"": 1, "b": 1, "byte": 1, "bytes": 1,
	"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "kbyte": 1 << 10, "kbytes": 1 << 10,
	"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20, "mbyte": 1 << 20, "mbytes": 1 << 20,
	"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "gbyte": 1 << 30, "gbytes": 1 << 30,
	"t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}

var durationUnits = map[string]time.Duration{
	"ms": time.Millisecond, "msec": time.Millisecond, "millisecond": time.Millisecond, "milliseconds": time.Millisecond,
	"": time.Second, "s": time.Second, "sec": time.Second, "second": time.Second, "seconds": time.Second,
	"m": time.Minute, "min": time.Minute, "minute": time.Minute, "minutes": time.Minute,
	"h": time.Hour, "hour": time.Hour, "hours": time.Hour,
	"d": 24 * time.Hour, "day": 24 * time.Hour, "days": 24 * time.Hour,
}

func split(s string) (num, unit string) {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return !(unicode.IsDigit(r) || r == '.') })
	if i < 0 {
		return s, ""
	}
	return strings.TrimSpace(s[:i]), strings.ToLower(strings.TrimSpace(s[i:]))
}

// ParseSize parses a byte count such as "64 MB", "1.5GiB" or "4096".
func ParseSize(s string) (int64, error) {
	num, unit := split(s)
	mult, ok := sizeUnits[unit]
	if !ok || num == "" {
		return 0, fmt.Errorf("size %q: want a number and a unit such as bytes, KB, MB or GB", s)
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 || f*float64(mult) > 1<<62 {
		return 0, fmt.Errorf("size %q: number out of range", s)
	}
	return int64(f * float64(mult)), nil
}

// ParseDuration parses a duration such as "10 minutes", "1h" or "30"
// (seconds, as in tor). Go duration strings ("1m30s") are accepted too.
func ParseDuration(s string) (time.Duration, error) {
	if d, err := time.ParseDuration(strings.TrimSpace(s)); err == nil && d >= 0 {
		return d, nil
	}
	num, unit := split(s)
	mult, ok := durationUnits[unit]
	if !ok || num == "" {
		return 0, fmt.Errorf("duration %q: want a number and a unit such as seconds, minutes or hours", s)
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 || f*float64(mult) > float64(1<<62) {
		return 0, fmt.Errorf("duration %q: number out of range", s)
	}
	return time.Duration(f * float64(mult)), nil
}

// FormatSize renders n bytes in the largest whole binary unit.
func FormatSize(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// FormatDuration renders d in the largest whole unit ParseDuration reads
// ("10 minutes", "6 hours", "1500 milliseconds"), so it parses back to d.
func FormatDuration(d time.Duration) string {
	for _, u := range []struct {
		d    time.Duration
		name string
	}{{24 * time.Hour, "days"}, {time.Hour, "hours"}, {time.Minute, "minutes"}, {time.Second, "seconds"}, {time.Millisecond, "milliseconds"}} {
		if d >= u.d && d%u.d == 0 {
			return fmt.Sprintf("%d %s", d/u.d, u.name)
		}
	}
	if d == 0 {
		return "0 seconds"
	}
	return d.String()
}
