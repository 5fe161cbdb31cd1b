package coord

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseTargets(t *testing.T) {
	fp, pin := strings.Repeat("AB", 20), strings.Repeat("cd", 32)
	got, err := ParseTargets(strings.NewReader("# relays\n\n$" + strings.ToLower(fp) + " 10.0.0.1:9251 " + pin + " 5000000 # fast\n" +
		strings.Repeat("12", 20) + " [::1]:9251 " + pin + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Fingerprint != fp || got[0].Prior != 5_000_000 || got[0].Pin != strings.ToUpper(pin) || got[1].Prior != 0 || got[1].Addr != "[::1]:9251" {
		t.Fatalf("got %+v", got)
	}
	for _, bad := range []string{
		fp + " a:1",
		"XYZ a:1 " + pin,
		fp + " a:1 " + pin[:10],
		fp + " a:1 " + pin + " 0",
		fp + " a:1 " + pin + " 1e9",
		fp + " a:1 " + pin + "\n" + fp + " b:2 " + pin,
		fp + " a:1 " + pin + " 5 extra",
	} {
		if _, err := ParseTargets(strings.NewReader(bad + "\n")); err == nil || !strings.Contains(err.Error(), "line") {
			t.Errorf("%q: %v, want an error naming the line", bad, err)
		}
	}
}

func FuzzParseTargets(f *testing.F) {
	f.Add(strings.Repeat("AB", 20) + " 10.0.0.1:9251 " + strings.Repeat("cd", 32) + " 5000000\n")
	f.Add("# nothing\n\n")
	f.Fuzz(func(t *testing.T, s string) {
		ts, err := ParseTargets(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, x := range ts {
			if len(x.Fingerprint) != 40 || len(x.Pin) != 64 || x.Prior > 1<<40 {
				t.Fatalf("accepted %+v", x)
			}
		}
	})
}

func TestStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "results.json")
	s, err := OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	for i, age := range []time.Duration{time.Hour, 8 * 24 * time.Hour} {
		if err := s.Put(Result{Fingerprint: strings.Repeat(string(rune('A'+i)), 40), Estimate: 1000, MeasuredAt: now.Add(-age)}); err != nil {
			t.Fatal(err)
		}
	}
	again, err := OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	recent := again.Recent(now, 7*24*time.Hour)
	if len(recent) != 1 || recent[0].Fingerprint != strings.Repeat("A", 40) || !recent[0].MeasuredAt.Equal(now.Add(-time.Hour)) {
		t.Fatalf("recent after reopening: %+v", recent)
	}
}
