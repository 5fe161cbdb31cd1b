package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/client"
)

// TestLimits runs each limit's offender beside a healthy instance and
// checks that the offender is stopped with the right reason while bentod
// and the neighbour keep working.
func TestLimits(t *testing.T) {
	d := startBentod(t, "")
	nb := newNeighbour(t, d)
	tests := []struct {
		fn, reason string
		deploy     bool // the limit bites while loading
	}{
		{"membomb", "memory limit exceeded", false},
		{"spin", "cpu time limit exceeded", false},
		{"storagefill", "storage limit exceeded", false},
		{"flood", "output limit exceeded", false},
		{"sleeper", "lifetime limit reached", false},
		{"threads", "process limit exceeded", true},
	}
	for _, tc := range tests {
		t.Run(tc.fn, func(t *testing.T) {
			start := time.Now()
			// The neighbour's calls are timed before and during the attack.
			r := nb.during(t, func() result { return bento(t, "", "run", d.Addr, fn(tc.fn)) })
			want := 6
			if tc.deploy {
				want = 8
			}
			if r.Code != want || !strings.Contains(r.Stderr, tc.reason) {
				t.Fatalf("want exit %d with %q, got %s", want, tc.reason, r)
			}
			t.Logf("%s stopped after %v: %s", tc.fn, time.Since(start).Round(time.Millisecond), strings.TrimSpace(r.Stderr))
			nb.call(t)
		})
	}
	if r := bento(t, "", "run", d.Addr, fn("hello")); r.Code != 0 {
		t.Fatalf("bentod after the limits: %s", r)
	}
	p, err := client.New(d.Addr).Policy(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if p.Free.Instances != 128-1 {
		t.Errorf("free instance slots = %d: resources of stopped instances were not released", p.Free.Instances)
	}
}

func TestBusy(t *testing.T) {
	d := startBentod(t, "MaxInstances 1\n")
	dep := deployCLI(t, d, fn("dropbox"))
	r := bento(t, "", "deploy", d.Addr, fn("dropbox"))
	if r.Code != 7 || !strings.Contains(r.Stderr, "busy, retry later") {
		t.Fatalf("second deploy: %s", r)
	}
	if r := bento(t, "", "shutdown", d.Addr, dep.ShutdownToken); r.Code != 0 {
		t.Fatal(r)
	}
	if r := bento(t, "", "run", d.Addr, fn("hello")); r.Code != 0 {
		t.Fatalf("after the slot was freed: %s", r)
	}
}
