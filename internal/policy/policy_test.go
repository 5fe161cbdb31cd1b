package policy

import (
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/internal/testutil"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestDefaults(t *testing.T) {
	p, err := Parse("empty", nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.APIs[APIHTTPFetch] || p.APIs[APIBento] {
		t.Error("default policy allows network calls")
	}
	if p.Destinations.AcceptsAny() {
		t.Error("default policy accepts destinations")
	}
	if p.Max.Memory != 64<<20 || !p.SafeLogging || p.Runtime != "runc" {
		t.Errorf("unexpected defaults: %+v", p)
	}
}

func TestParse(t *testing.T) {
	dir := t.TempDir()
	inc := filepath.Join(dir, "bentorc.d")
	if err := os.Mkdir(inc, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(inc, "10-net"), []byte("AllowAPI http.fetch\nDestinationPolicy accept 127.0.0.1:8000-9000\n"), 0o644)
	os.WriteFile(filepath.Join(inc, ".hidden"), []byte("Bogus 1\n"), 0o644)
	rc := filepath.Join(dir, "bentorc")
	os.WriteFile(rc, []byte(`# Bento node policy
Nickname   relay1
ListenAddress 127.0.0.1:9999
DataDirectory /tmp/bento   # comment
allowapi send,recv \
   log
MaxMemory 128 MB
MaxCPU 1.5
MaxLifetime 5 minutes
DestinationPolicy reject 127.0.0.1:8888
%include bentorc.d
ReserveMemory 1 GB
MaxInstances 10
`), 0o644)
	p, err := Load(rc)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(p.AllowedAPIs(), ","); got != "http.fetch,log,recv,send" {
		t.Errorf("APIs = %s", got)
	}
	if p.Max.Memory != 128<<20 || p.Max.CPU != 1.5 || p.Max.Lifetime != 5*time.Minute {
		t.Errorf("limits = %+v", p.Max)
	}
	if p.Destinations.Allows(netip.MustParseAddr("127.0.0.1"), 8888) {
		t.Error("first DestinationPolicy line must win")
	}
	if !p.Destinations.Allows(netip.MustParseAddr("127.0.0.1"), 8080) {
		t.Error("included DestinationPolicy lost")
	}
	if p.ListenAddress != "127.0.0.1:9999" || p.Nickname != "relay1" || p.Aggregate.Instances != 10 {
		t.Errorf("settings = %+v", p)
	}
	b, _ := json.Marshal(p.PublicView())
	if strings.Contains(string(b), "/tmp/bento") || strings.Contains(string(b), "9999") {
		t.Errorf("public view leaks daemon settings: %s", b)
	}
}

func TestParseErrors(t *testing.T) {
	tests := map[string]string{
		"Bogus 1":                     "unknown keyword",
		"\n\nMaxMemory lots":          "empty:3: MaxMemory",
		"AllowAPI exec":               "unknown host call",
		"DestinationPolicy allow *:*": "DestinationPolicy",
		"Runtime docker":              "want runc",
		"DataDirectory relative":      "absolute",
		"MaxMemory 1 MB":              "below 16 MB",
		"ListenAddress 8888":          "HOST:PORT",
		"Image java":                  "not built in",
		"MaxCPU -1":                   "number of cores",
		"SafeLogging yes":             "0 or 1",
		"AllowFSProtect yes":          "AllowFSProtect takes 0 or 1",
	}
	for in, want := range tests {
		_, err := Parse("empty", []byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want error containing %q", in, err, want)
		}
	}
}

func TestFromPublic(t *testing.T) {
	p, err := Parse("x", []byte("AllowAPI send,http.fetch\nDestinationPolicy accept 127.0.0.1:80, reject *:*\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(p.PublicView())
	var pub Public
	if err := json.Unmarshal(b, &pub); err != nil {
		t.Fatal(err)
	}
	q, err := FromPublic(&pub)
	if err != nil {
		t.Fatal(err)
	}
	if !q.APIs[APIHTTPFetch] || !q.Destinations.Allows(netip.MustParseAddr("127.0.0.1"), 80) || q.Max != p.Max {
		t.Errorf("round trip lost data: %+v", q)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("AllowAPI send\nMaxMemory 64 MB\nDestinationPolicy accept *:80\n"))
	f.Add([]byte("Log info\nSafeLogging 0\nMaxLifetime 1 hour \\\n\nImage starlark\n"))
	f.Add([]byte("ReserveCPU 0.5\nTotalMemory 2 GB\nMaxInstances 3\n# c\n"))
	f.Add([]byte("Log info-warn file /var/log/x\nMetricsPortPolicy accept 10.0.0.0/8\nBoxEndsAt 2030-01-01 00:00:00\nHeartbeatPeriod 1.5s\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("fuzz", data)
		if err != nil {
			return
		}
		if len(p.Images) == 0 {
			t.Fatal("accepted a policy with no image")
		}
		if _, err := json.Marshal(p.PublicView()); err != nil {
			t.Fatal(err)
		}
		roundTrip(t, "fuzz", p, true)
	})
}

// TestSampleGolden parses docs/bentorc.sample and compares the public
// policy with testdata/sample.golden.json (go test -update rewrites it).
func TestSampleGolden(t *testing.T) {
	p, err := Load("../../docs/bentorc.sample")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.MarshalIndent(p.PublicView(), "", "  ")
	golden := "testdata/sample.golden.json"
	if *update {
		os.WriteFile(golden, got, 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Errorf("public policy of the sample differs from %s:\n%s", golden, got)
	}
}

func TestFlashFlowKeywords(t *testing.T) {
	fp := strings.Repeat("ab", 32)
	p, err := Parse("bentorc", []byte("FFListenAddress 0.0.0.0:9251\nFFEchoAddress 127.0.0.1:9300\nFFMeasurementsAllowed 1\n"+
		"FFAllowedCoordinators "+fp+", "+strings.Repeat("CD", 32)+"\nFFMeasurementPeriod 2 hours\nFFMaxMeasurementDuration 60 seconds\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := FlashFlow{Allowed: true, Listen: "0.0.0.0:9251", Echo: "127.0.0.1:9300",
		Coordinators: []string{strings.ToUpper(fp), strings.Repeat("CD", 32)}, Period: 2 * time.Hour, MaxDuration: time.Minute}
	if !reflect.DeepEqual(p.FlashFlow, want) {
		t.Fatalf("got %+v\nwant %+v", p.FlashFlow, want)
	}
	if d := Default().FlashFlow; d.Allowed || d.Listen != "" || d.Period != 24*time.Hour || d.MaxDuration != 45*time.Second {
		t.Fatalf("defaults: %+v", d)
	}
}

// TestNumbersFiniteAndInRange: every number bentorc takes is finite and in
// range, and the error says which line and what is wanted.
func TestNumbersFiniteAndInRange(t *testing.T) {
	for _, line := range []string{
		"TotalCPU nan", "MaxCPU inf", "ReserveCPU -0.5", "MaxCPU 0.005", "MaxCPU 1e-300", "TotalCPU 0.015",
		"MaxConnections 0", "MaxConnections 1e9", "MaxConnectionsPerAddress -3", "IdleTimeout 0",
		"HandshakeTimeout 1 day", "MaxSteps 5", "ConnectRatePerAddress nan", "Nice 40", "OnionMaxStreams 70000",
		"MaxInFlight 1 KB", "MaxCPUTime 0",
		"FFMeasurementsAllowed 2", "FFMeasurementPeriod 10 minutes", "FFMaxMeasurementDuration 5 seconds",
		"FFMaxMeasurementDuration 10 minutes", "FFEchoAddress 10.0.0.1:9252", "FFEchoAddress 127.0.0.1:0", "FFEchoAddress [::1]:9252", "FFEchoAddress 127.0.0.2:9252",
		"FFAllowedCoordinators abc", "FFListenAddress nowhere",
	} {
		_, err := Parse("bentorc", []byte(line+"\n"))
		if err == nil {
			t.Errorf("%q was accepted", line)
			continue
		}
		if !strings.Contains(err.Error(), "bentorc:1:") && !strings.Contains(err.Error(), "MaxInFlight") {
			t.Errorf("%q: the error names no line: %v", line, err)
		}
	}
	p, err := Parse("bentorc", []byte("MaxCPU 0.75\nTotalCPU 1.5\nConnectRatePerAddress 2.5\n"))
	if err != nil || p.Max.CPU != 0.75 || MilliCores(p.Aggregate.CPU) != 1500 || p.Daemon.ConnectRate != 2.5 {
		t.Fatalf("valid numbers: %+v %v", p, err)
	}
}

func TestBoxKeywords(t *testing.T) {
	p, err := Parse("bentorc", []byte("BoxEndsAt 2026-12-02 18:30:00\nBoxDrainPeriod 5 minutes\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := (Box{EndsAt: time.Date(2026, 12, 2, 18, 30, 0, 0, time.UTC), Drain: 5 * time.Minute}); p.Box != want {
		t.Fatalf("got %+v, want %+v", p.Box, want)
	}
	p, err = Parse("bentorc", []byte("BoxEndsAt 2026-12-02T20:30:00+02:00\n"))
	if err != nil || !p.Box.EndsAt.Equal(time.Date(2026, 12, 2, 18, 30, 0, 0, time.UTC)) || p.Box.Drain != DefaultDrain {
		t.Fatalf("RFC 3339 with an offset: %+v %v", p.Box, err)
	}
	if p, err = Parse("bentorc", []byte("BoxLifetime 6 hours\n")); err != nil || p.Box.Lifetime != 6*time.Hour {
		t.Fatalf("BoxLifetime: %+v %v", p.Box, err)
	}
	if d := Default().Box; !d.EndsAt.IsZero() || d.Lifetime != 0 || d.Drain != DefaultDrain {
		t.Fatalf("defaults: %+v", d)
	}
	for _, tc := range []struct{ in, want string }{
		{"BoxEndsAt tomorrow", "bentorc:1: BoxEndsAt: \"tomorrow\" is not a time"},
		{"BoxEndsAt 1970-01-01T00:00:00Z", "outside the years"},
		{"BoxEndsAt 2026-13-02T00:00:00Z", "is not a time"},
		{"BoxLifetime 10 seconds", "BoxLifetime"},
		{"BoxLifetime 20 years", "BoxLifetime"},
		{"BoxDrainPeriod 2 weeks", "BoxDrainPeriod"},
		{"BoxEndsAt 2026-12-02T00:00:00Z\nBoxLifetime 1 hour", "keep one"},
		{"BoxLifetime 1 hour\nBoxDrainPeriod 2 hours", "never accept a function"},
	} {
		if _, err := Parse("bentorc", []byte(tc.in+"\n")); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error containing %q", tc.in, err, tc.want)
		}
	}
}

// TestParseLinear: a bentorc's parse costs work linear in its size, and
// what it says of a bad one stays short.
func TestParseLinear(t *testing.T) {
	testutil.Linear(t, 2000, 4096, map[string]func(int) []byte{
		"unknown keywords": func(n int) []byte { return []byte(strings.Repeat("NoSuchOption 1\n", n)) },
		"repeated lines":   func(n int) []byte { return []byte(strings.Repeat("MaxInstances 4\n", n)) },
		"long value":       func(n int) []byte { return []byte("Nickname " + strings.Repeat("a", 64*n) + "\n") },
		"policy items": func(n int) []byte {
			return []byte("DestinationPolicy " + strings.Repeat("accept 1.2.3.4:80, ", n) + "reject *:*\n")
		},
		"bad numbers": func(n int) []byte { return []byte(strings.Repeat("TotalCPU 1e999999\n", n)) },
		"garbage":     func(n int) []byte { return []byte(strings.Repeat("\x00\xff\"#", n)) },
	}, func(b []byte) error { _, err := Parse("bentorc", b); return err })
}

func TestFSProtectPublic(t *testing.T) {
	for _, tc := range []struct {
		rc   string
		want string
	}{{"", ""}, {"AllowFSProtect 0", ""}, {"AllowFSProtect 1", KeyHolderMemory}} {
		p, err := Parse("rc", []byte(tc.rc))
		if err != nil {
			t.Fatal(err)
		}
		if got := p.PublicView().FSProtect; got != tc.want {
			t.Errorf("%q: public fs_protect %q, want %q", tc.rc, got, tc.want)
		}
		if q, _ := FromPublic(p.PublicView()); q.FSProtect != p.FSProtect {
			t.Errorf("%q: FromPublic gives FSProtect %v", tc.rc, q.FSProtect)
		}
	}
}
