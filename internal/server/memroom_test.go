package server

import (
	"testing"

	"github.com/torbento/bento/internal/policy"
)

// TestTotalMemoryWithinTheServiceCgroup: on a delegated cgroup v2 the
// service's memory.max bounds bentod and the functions together, so the
// functions are admitted only into what it leaves beside bentod's own
// ceiling, whatever TotalMemory says; elsewhere TotalMemory alone.
func TestTotalMemoryWithinTheServiceCgroup(t *testing.T) {
	p := policy.Default()
	p.Aggregate.Memory = 2 << 30
	for _, c := range []struct {
		room, want int64
	}{
		{-1, 2 << 30},      // no bound: TotalMemory
		{1 << 30, 1 << 30}, // less room than TotalMemory
		{4 << 30, 2 << 30}, // more room: TotalMemory
		{0, 0},             // none left beside bentod: nothing
	} {
		s := &Server{memRoom: c.room, memBounded: c.room >= 0}
		if got := s.totalMemory(p); got != c.want {
			t.Errorf("room %d: functions get %d, want %d", c.room, got, c.want)
		}
	}
}
