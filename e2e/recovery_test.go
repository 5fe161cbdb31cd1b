package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCrashRecovery kills bentod with SIGKILL while an instance runs and
// checks that a restarted bentod reaps the orphaned container and that the
// instance's client gets a clear error.
func TestCrashRecovery(t *testing.T) {
	d := startBentod(t, "RestoreInstances 0\n")
	dep := deployCLI(t, d, fn("dropbox"))
	if r := bento(t, "x", "invoke", "-i", d.Addr, dep.InvocationToken, "put"); r.Code != 0 {
		t.Fatal(r)
	}
	pidFile := filepath.Join(d.DataDir, "bundles", dep.Instance, "pid")
	pidData, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	d.kill()
	var pid int
	for _, c := range strings.TrimSpace(string(pidData)) {
		pid = pid*10 + int(c-'0')
	}
	if syscall.Kill(pid, 0) != nil {
		t.Fatalf("the orphaned container process %d is already gone; the test proves nothing", pid)
	}
	d.restart(t)
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		// A zombie reparented to init counts as gone once it is not running.
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && strings.Contains(string(st), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("orphaned container process %d still runs after restart", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The restarted bentod serves at once and reaps in the background.
	for deadline := time.Now().Add(10 * time.Second); ; {
		out, _ := exec.Command("runc", "--root", filepath.Join(d.DataDir, "runtime"), "list", "-q").Output()
		if strings.TrimSpace(string(out)) == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("runc still lists %s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, cg := range []string{"/sys/fs/cgroup/memory/bento", "/sys/fs/cgroup/pids/bento", "/sys/fs/cgroup/bento"} {
		if _, err := os.Stat(filepath.Join(cg, dep.Instance)); err == nil {
			t.Fatalf("the orphaned container's cgroup %s remains", cg)
		}
	}
	r := bento(t, "", "invoke", d.Addr, dep.InvocationToken, "get")
	if r.Code != 5 || !strings.Contains(r.Stderr, "the instance ended: bentod restarted") {
		t.Fatalf("client of a lost instance: %s", r)
	}
	if ents, _ := os.ReadDir(filepath.Join(d.DataDir, "instances")); len(ents) != 0 {
		t.Fatalf("%d instance directories (stored data) remain with RestoreInstances 0", len(ents))
	}
	if !strings.Contains(d.log.String(), "removed containers left by an earlier bentod") {
		t.Fatalf("restart did not report the reaping:\n%s", d.log)
	}
}

// TestRestoreInstances: with RestoreInstances 1 a Dropbox keeps its tokens
// and its data across a restart of bentod, whether bentod was stopped or
// killed.
func TestRestoreInstances(t *testing.T) {
	for _, how := range []string{"SIGTERM", "SIGKILL"} {
		t.Run(how, func(t *testing.T) {
			d := startBentod(t, "RestoreInstances 1\n")
			dep := deployCLI(t, d, fn("dropbox"))
			if r := bento(t, "kept across restarts", "invoke", "-i", d.Addr, dep.InvocationToken, "put", "2"); r.Code != 0 {
				t.Fatal(r)
			}
			if how == "SIGKILL" {
				d.kill()
			} else {
				d.stop(t)
			}
			d.restart(t)
			if !strings.Contains(d.log.String(), "restored=1") {
				t.Errorf("restart did not report the restored instance:\n%s", d.log)
			}
			for i := 0; i < 2; i++ {
				if r := bento(t, "", "invoke", d.Addr, dep.InvocationToken, "get"); r.Code != 0 || r.Stdout != "kept across restarts" {
					t.Fatalf("get %d after the restart: %s", i, r)
				}
			}
			// max_gets was 2: it ended for good, as it would have anyway.
			if r := bento(t, "", "invoke", d.Addr, dep.InvocationToken, "get"); r.Code != 5 {
				t.Fatalf("third get: %s", r)
			}
		})
	}
}
