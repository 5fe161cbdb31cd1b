package server

import (
	"strings"
	"testing"

	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/policy"
)

// TestCompositionCallsPerClient: MaxCompositionCalls bounds a client's
// calls over all its roots, not each root's: a client with many instances
// gets no more calls at once than one with one. A client arriving through
// Tor (no address) is bounded per root.
func TestCompositionCallsPerClient(t *testing.T) {
	p := policy.Default()
	p.Composition.MaxCalls = 3
	p.Aggregate.Memory, p.Aggregate.CPU, p.Aggregate.Instances = 1<<30, 4, 100
	s := &Server{roots: map[string]*root{}, ownerCalls: map[string]int{}, perClient: map[string]int{}}
	s.pol.Store(p)
	m := &manifest.Manifest{}
	m.Resources.Memory, m.Resources.CPU = 1<<20, 0.1
	for _, id := range []string{"a1", "a2", "b1", "t1", "t2"} {
		owner := map[byte]string{'a': "127.0.0.2", 'b': "127.0.0.3", 't': ""}[id[0]]
		if _, perr := s.admit(m, origin{owner: owner}, id); perr != nil {
			t.Fatalf("admit %s: %v", id, perr)
		}
	}
	var ends []func()
	call := func(id string) error {
		end, err := s.beginCall(id)
		if err == nil {
			ends = append(ends, end)
		}
		return err
	}
	// Client a: three calls over its two roots, then no more on either.
	for _, id := range []string{"a1", "a2", "a1"} {
		if err := call(id); err != nil {
			t.Fatalf("call %d of client a (%s): %v", len(ends)+1, id, err)
		}
	}
	for _, id := range []string{"a1", "a2"} {
		if err := call(id); err == nil || !strings.Contains(err.Error(), "MaxCompositionCalls") {
			t.Fatalf("a fourth call of client a on %s: %v", id, err)
		}
	}
	// Client b has its own three; Tor clients' roots three each.
	for _, id := range []string{"b1", "b1", "b1", "t1", "t1", "t1", "t2"} {
		if err := call(id); err != nil {
			t.Fatalf("call on %s: %v", id, err)
		}
	}
	if err := call("t1"); err == nil {
		t.Fatal("a fourth call on one root through Tor was allowed")
	}
	// Calls that end give their room back.
	for _, end := range ends {
		end()
	}
	if err := call("a2"); err != nil {
		t.Fatalf("after the calls ended: %v", err)
	}
	if len(s.ownerCalls) != 1 || s.ownerCalls["127.0.0.2"] != 1 {
		t.Fatalf("calls by client after the ends: %v", s.ownerCalls)
	}
}
