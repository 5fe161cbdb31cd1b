package safelog

import (
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseSink(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Sink
		err  string
	}{
		{"notice", Sink{"notice", "err", "stderr", ""}, ""},
		{"notice stderr", Sink{"notice", "err", "stderr", ""}, ""},
		{"INFO stdout", Sink{"info", "err", "stdout", ""}, ""},
		{"info-warn file /var/log/bento/x.log", Sink{"info", "warn", "file", "/var/log/bento/x.log"}, ""},
		{"debug-debug file /tmp/a/../b.log", Sink{"debug", "debug", "file", "/tmp/b.log"}, ""},
		{"warn syslog", Sink{"warn", "err", "syslog", ""}, ""},
		{"notice journald", Sink{"notice", "err", "journald", ""}, ""},
		{"", Sink{}, "a severity and a destination are needed"},
		{"loud stderr", Sink{}, "severity is one of"},
		{"warn-info stderr", Sink{}, "first severity is above its last"},
		{"notice file", Sink{}, "takes one absolute path"},
		{"notice file relative.log", Sink{}, "must be an absolute path"},
		{"notice file /a b", Sink{}, "takes one absolute path"},
		{"notice printer", Sink{}, "is not stderr, stdout, syslog, journald or file PATH"},
		{"notice stderr extra", Sink{}, "unexpected"},
	} {
		got, err := ParseSink(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseSink(%q) = %v, %v; want error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseSink(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			continue
		}
		// String renders what parses back to the same sink.
		if again, err := ParseSink(got.String()); err != nil || again != got {
			t.Errorf("ParseSink(%q.String() = %q) = %+v, %v", tc.in, got.String(), again, err)
		}
	}
}

func FuzzParseSink(f *testing.F) {
	for _, s := range []string{"notice", "info-warn file /x", "err syslog", "debug journald", "x y z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		s, err := ParseSink(v)
		if err != nil {
			return
		}
		again, err := ParseSink(s.String())
		if err != nil || again != s {
			t.Fatalf("%q: %+v renders as %q, which parses to %+v, %v", v, s, s.String(), again, err)
		}
		if ParseLevel(s.Min) > ParseLevel(s.Max) {
			t.Fatalf("%q: range %s-%s", v, s.Min, s.Max)
		}
	})
}

func TestRouterFilesAndRanges(t *testing.T) {
	dir := t.TempDir()
	all, warnOnly := filepath.Join(dir, "all.log"), filepath.Join(dir, "sub", "warn.log")
	r := NewRouter()
	if err := r.Apply([]Sink{{"debug", "notice", "file", all}, {"warn", "err", "file", warnOnly}}); err != nil {
		t.Fatal(err)
	}
	log := r.Logger().With("component", "test")
	log.Debug("d1")
	Notice(log, "n1")
	log.Warn("w1", "addr", Addr("192.0.2.1:9"))
	read := func(p string) string {
		b, _ := os.ReadFile(p)
		return string(b)
	}
	if s := read(all); !strings.Contains(s, "msg=d1") || !strings.Contains(s, "level=notice msg=n1 component=test") || strings.Contains(s, "w1") {
		t.Errorf("debug-notice file: %q", s)
	}
	if s := read(warnOnly); !strings.Contains(s, "level=warn msg=w1 component=test addr=[scrubbed]") || strings.Contains(s, "n1") {
		t.Errorf("warn file: %q", s)
	}
	// Rotation: the file is renamed, Apply (SIGHUP) opens a new one, and
	// a logger made before keeps its attributes.
	if err := os.Rename(all, all+".1"); err != nil {
		t.Fatal(err)
	}
	if err := r.Apply([]Sink{{"info", "err", "file", all}}); err != nil {
		t.Fatal(err)
	}
	log.Debug("d2")
	log.Info("i2")
	if s := read(all); !strings.Contains(s, "msg=i2 component=test") || strings.Contains(s, "d2") {
		t.Errorf("after rotation: %q", s)
	}
	if s := read(all + ".1"); strings.Contains(s, "i2") {
		t.Errorf("the rotated file still written: %q", s)
	}
	if s := read(warnOnly); strings.Contains(s, "i2") {
		t.Errorf("a sink no longer configured still written: %q", s)
	}
	// A sink that cannot open leaves the current ones in place.
	if err := r.Apply([]Sink{{"info", "err", "file", "/proc/no/such/x.log"}}); err == nil || !strings.Contains(err.Error(), "/proc/no/such/x.log") {
		t.Errorf("Apply with an unwritable file: %v", err)
	}
	log.Info("i3")
	if s := read(all); !strings.Contains(s, "msg=i3") {
		t.Errorf("a failed Apply dropped the sinks in use: %q", s)
	}
	if !r.Logger().Enabled(t.Context(), 0) || r.Logger().Enabled(t.Context(), -4) {
		t.Error("Enabled does not follow the sinks' lowest severity (info)")
	}
}

func TestRouterSyslog(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "log")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	syslogSocket = sock
	defer func() { syslogSocket = "" }()
	r := NewRouter()
	if err := r.Apply([]Sink{{"info", "err", "syslog", ""}}); err != nil {
		t.Fatal(err)
	}
	log := r.Logger()
	log.Warn("disk low", "free", 3)
	log.Debug("not sent")
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	// <28>: facility daemon (3) * 8 + warning (4).
	if got := string(buf[:n]); !strings.HasPrefix(got, "<28>") || !strings.Contains(got, "bentod") || !strings.HasSuffix(strings.TrimSpace(got), `msg="disk low" free=3`) {
		t.Errorf("syslog datagram = %q", got)
	}
	conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := conn.Read(buf); err == nil {
		t.Errorf("a debug message reached an info sink: %q", buf[:n])
	}
	syslogSocket = filepath.Join(t.TempDir(), "none")
	if err := r.Apply([]Sink{{"info", "err", "syslog", ""}}); err == nil || !strings.Contains(err.Error(), "no syslog to write to") {
		t.Errorf("Apply without a syslog: %v", err)
	}
}

func TestJournaldPrefix(t *testing.T) {
	var b strings.Builder
	lg := slog.New(textHandler(&journald{w: &b}))
	lg.Error("e")
	lg.Warn("w")
	Notice(lg, "n")
	lg.Info("i")
	lg.Debug("d")
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	want := []string{"<3>", "<4>", "<5>", "<6>", "<7>"}
	if len(lines) != len(want) {
		t.Fatalf("lines = %q", lines)
	}
	for i, l := range lines {
		if !strings.HasPrefix(l, want[i]) {
			t.Errorf("line %d = %q, want prefix %s", i, l, want[i])
		}
	}
}
