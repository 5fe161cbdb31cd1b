package units

import (
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	tests := map[string]int64{
		"64 MB": 64 << 20, "64MiB": 64 << 20, "1.5 GB": 3 << 29, "4096": 4096, "10 KBytes": 10 << 10, "0": 0,
	}
	for in, want := range tests {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MB", "-1 MB", "12 parsecs", "1e99 GB"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted bad input", in)
		}
	}
}

func TestParseDuration(t *testing.T) {
	tests := map[string]time.Duration{
		"10 minutes": 10 * time.Minute, "1h": time.Hour, "30": 30 * time.Second, "1m30s": 90 * time.Second,
		"250 ms": 250 * time.Millisecond, "2 days": 48 * time.Hour,
	}
	for in, want := range tests {
		got, err := ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "soon", "-5 s", "5 fortnights"} {
		if _, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q) accepted bad input", in)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{64 << 20: "64 MB", 1 << 30: "1 GB", 1536: "1536 bytes", 2048: "2 KB"} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{0: "0 seconds", 10 * time.Minute: "10 minutes", 6 * time.Hour: "6 hours",
		48 * time.Hour: "2 days", 90 * time.Second: "90 seconds", 1500 * time.Millisecond: "1500 milliseconds", 1500 * time.Microsecond: "1.5ms"} {
		if got := FormatDuration(d); got != want {
			t.Errorf("FormatDuration(%v) = %q, want %q", d, got, want)
		}
		if back, err := ParseDuration(FormatDuration(d)); err != nil || back != d {
			t.Errorf("ParseDuration(FormatDuration(%v)) = %v, %v", d, back, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"64 MB", "1.5GiB", "10 minutes", "1h30m", "30", "", "1e9 GB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if n, err := ParseSize(s); err == nil && n < 0 {
			t.Fatalf("ParseSize(%q) = %d", s, n)
		}
		if d, err := ParseDuration(s); err == nil && d < 0 {
			t.Fatalf("ParseDuration(%q) = %v", s, d)
		} else if err == nil {
			if back, err := ParseDuration(FormatDuration(d)); err != nil || back != d {
				t.Fatalf("ParseDuration(FormatDuration(%v)) = %v, %v", d, back, err)
			}
		}
		if n, err := ParseSize(s); err == nil {
			if back, err := ParseSize(FormatSize(n)); err != nil || back != n {
				t.Fatalf("ParseSize(FormatSize(%d)) = %d, %v", n, back, err)
			}
		}
	})
}
