package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/client"
)

// TestLimits runs each limit's offender beside a healthy instance and
// checks that the offender is stopped with the right reason while bentod
// and the neighbour keep working (the siege's invariants).
func TestLimits(t *testing.T) {
	s := newSiege(t, "")
	d := s.d
	// Each limit ends what reached it: the invocation (exit 6, "function
	// stopped"), a failed host call (exit 1, a function error), or the
	// deploy (exit 8) when the limit bites while loading.
	tests := []struct {
		fn, reason string
		code       int
	}{
		{"membomb", "memory limit exceeded", 6},
		{"spin", "cpu time limit exceeded", 6},
		{"storagefill", "storage limit exceeded", 1},
		{"flood", "output limit exceeded", 6},
		{"sleeper", "lifetime limit reached", 6},
		{"threads", "process limit exceeded", 8},
	}
	for _, tc := range tests {
		t.Run(tc.fn, func(t *testing.T) {
			start := time.Now()
			var r result
			// Played again until 20 of the neighbour's calls overlapped
			// the runs: a run lasts 0.1-0.3 s, and a median of the 5 calls
			// one run overlaps was the noise of a moment (1.0-2.2x from run
			// to run). Back to back, the runs' container starts and
			// removals cost the neighbour 1.1-1.9x (docs/SECURITY.md, known
			// limits).
			s.while(t, func() {
				r = bento(t, "", "run", d.Addr, fn(tc.fn))
				if r.Code != tc.code || !strings.Contains(r.Stderr, tc.reason) {
					t.Fatalf("want exit %d with %q, got %s", tc.code, tc.reason, r)
				}
			})
			t.Logf("%s stopped after %v: %s", tc.fn, time.Since(start).Round(time.Millisecond), strings.TrimSpace(r.Stderr))
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

// TestBusy fills the box (the neighbour holds one of its two slots):
// deploys are told to retry later, the running instances are untouched,
// and a freed slot serves again.
func TestBusy(t *testing.T) {
	s := newSiege(t, "MaxInstances 2\nMaxInstancesPerClient 2\n")
	d := s.d
	s.while(t, func() {
		dep := deployCLI(t, d, fn("dropbox"))
		for i := 0; i < 20; i++ {
			r := bento(t, "", "deploy", d.Addr, fn("dropbox"))
			if r.Code != 7 || !strings.Contains(r.Stderr, "busy, retry later") {
				t.Fatalf("deploy on a full box: %s", r)
			}
		}
		if r := bento(t, "", "shutdown", d.Addr, dep.ShutdownToken); r.Code != 0 {
			t.Fatal(r)
		}
		if r := bento(t, "", "run", d.Addr, fn("hello")); r.Code != 0 {
			t.Fatalf("after the slot was freed: %s", r)
		}
	})
}
