package sandbox

import (
	"os"
	"path/filepath"
	"testing"
)

// TestSwapLimitable: containers' swap is limited (to none) wherever the
// kernel accounts it, cgroup v1 or v2, so what a function holds in memory
// (FS Protect's values, its code, its /tmp) never reaches a swap device;
// and nowhere else, where the runtime would refuse the limit.
func TestSwapLimitable(t *testing.T) {
	cases := []struct {
		name  string
		v2    bool
		files []string
		want  bool
	}{
		{"v1 with memsw", false, []string{"memory/memory.memsw.limit_in_bytes", "memory/memory.limit_in_bytes"}, true},
		{"v1 without swap accounting", false, []string{"memory/memory.limit_in_bytes"}, false},
		{"v2 with swap accounting", true, []string{"cgroup.controllers", "system.slice/memory.max", "system.slice/memory.swap.max"}, true},
		{"v2 without swap accounting", true, []string{"cgroup.controllers", "system.slice/memory.max"}, false},
		{"v2, no cgroup below the root", true, []string{"cgroup.controllers"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			for _, f := range c.files {
				p := filepath.Join(root, f)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if got := swapLimitable(root, c.v2); got != c.want {
				t.Errorf("swapLimitable = %v, want %v", got, c.want)
			}
		})
	}
	// Where it can be limited, the spec gives memory+swap equal to memory:
	// no swap.
	l := Limits{Memory: 64 << 20, CPU: 1, Processes: 16}
	if sw := (&Sandbox{memsw: true}).buildSpec("x", l).Linux.Resources.Memory.Swap; sw == nil || *sw != l.Memory {
		t.Errorf("swap %v with swap accounting, want %d (none)", sw, l.Memory)
	}
	if sw := (&Sandbox{}).buildSpec("x", l).Linux.Resources.Memory.Swap; sw != nil {
		t.Errorf("swap %d without swap accounting, want none set", *sw)
	}
}
