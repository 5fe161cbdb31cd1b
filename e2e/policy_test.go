package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/internal/testutil"
)

// TestPolicyServed fetches the policy from the well-known HTTP port, as a
// client deciding before uploading anything would.
func TestPolicyServed(t *testing.T) {
	d := startBentod(t, "Nickname relay7\nAllowAPI send,http.fetch\nDestinationPolicy accept 127.0.0.1:80\nMaxMemory 40 MB\n")
	resp, err := http.Get("http://" + d.Policy + "/policy")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p struct {
		Nickname     string   `json:"nickname"`
		APIs         []string `json:"apis"`
		Destinations []string `json:"destinations"`
		Max          struct {
			Memory int64 `json:"memory_bytes"`
		} `json:"max"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
		t.Fatal(err)
	}
	if p.Nickname != "relay7" || strings.Join(p.APIs, ",") != "http.fetch,send" ||
		strings.Join(p.Destinations, ",") != "accept 127.0.0.1:80" || p.Max.Memory != 40<<20 {
		t.Fatalf("policy = %+v", p)
	}
	if strings.Contains(fmt.Sprint(p), d.DataDir) {
		t.Fatal("the public policy reveals the data directory")
	}
	r := bento(t, "", "policy", d.Addr)
	if r.Code != 0 || !strings.Contains(r.Stdout, "destinations accept 127.0.0.1:80") {
		t.Fatalf("bento policy: %s", r)
	}
}

// TestVerifyConfig checks bentod --verify-config on good and bad files.
func TestVerifyConfig(t *testing.T) {
	bin := filepath.Join(testutil.Binaries(t), "bentod")
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	os.WriteFile(good, []byte("DataDirectory /tmp/x\nDestinationPolicy accept *:443\n"), 0o644)
	out, err := exec.Command(bin, "-f", good, "--verify-config").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Configuration was valid") {
		t.Fatalf("good config: %v\n%s", err, out)
	}
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("# ok\nMaxMemory 64 MB\nDestinationPolicy accept 1.2.3.4/40:80\n"), 0o644)
	out, err = exec.Command(bin, "-f", bad, "--verify-config").CombinedOutput()
	if err == nil || !strings.Contains(string(out), bad+":3: DestinationPolicy") || !strings.Contains(string(out), "mask /40") {
		t.Fatalf("bad config: %v\n%s", err, out)
	}
}

// TestExactResources checks that an instance gets what its manifest asked
// for, not the policy's ceiling, by reading its real cgroup.
func TestExactResources(t *testing.T) {
	d := startBentod(t, "MaxMemory 128 MB\nMaxProcesses 64\nMaxCPU 1\n")
	dep := deployCLI(t, d, fn("dropbox")) // asks 48 MB, 0.25 cores, default 16 processes
	id := dep.Instance
	read := func(paths ...string) int64 {
		for _, p := range paths {
			if b, err := os.ReadFile(p); err == nil {
				v, _ := strconv.ParseInt(strings.Fields(string(b))[0], 10, 64)
				return v
			}
		}
		t.Fatalf("none of %v readable", paths)
		return 0
	}
	if mem := read("/sys/fs/cgroup/memory/bento/"+id+"/memory.limit_in_bytes", "/sys/fs/cgroup/bento/"+id+"/memory.max"); mem != 48<<20 {
		t.Errorf("memory limit %d, want 48 MB", mem)
	}
	if pids := read("/sys/fs/cgroup/pids/bento/"+id+"/pids.max", "/sys/fs/cgroup/bento/"+id+"/pids.max"); pids != 16 {
		t.Errorf("pids limit %d, want 16", pids)
	}
	if quota := read("/sys/fs/cgroup/cpu/bento/"+id+"/cpu.cfs_quota_us", "/sys/fs/cgroup/bento/"+id+"/cpu.max"); quota != 25000 {
		t.Errorf("cpu quota %d µs per 100 ms, want 25000", quota)
	}
	// Functions yield the CPU to tor: an eighth of a normal process's
	// weight (cpu.shares 128; cpu.weight 5 where runc maps it onto v2).
	if w := read("/sys/fs/cgroup/cpu/bento/"+id+"/cpu.shares", "/sys/fs/cgroup/bento/"+id+"/cpu.weight"); w != 128 && w != 5 {
		t.Errorf("cpu weight %d, want shares 128 (weight 5)", w)
	}
	// And all functions together, against tor.
	if w := read("/sys/fs/cgroup/cpu/bento/cpu.shares", "/sys/fs/cgroup/bento/cpu.weight"); w != 128 && w != 5 {
		t.Errorf("the functions' parent cgroup has cpu weight %d, want shares 128 (weight 5)", w)
	}
}

// TestDropboxExpiry checks that a Dropbox deletes its data after expires_in.
func TestDropboxExpiry(t *testing.T) {
	d := startBentod(t, "")
	dep := deployCLI(t, d, fn("dropbox"))
	// Expiry is 4 s: ample for a put and a get even under the race
	// detector on a loaded machine.
	start := time.Now()
	if r := bento(t, "short-lived", "invoke", "-i", d.Addr, dep.InvocationToken, "put", "0", "4"); r.Code != 0 {
		t.Fatal(r)
	}
	if r := bento(t, "", "invoke", d.Addr, dep.InvocationToken, "get"); r.Code != 0 || r.Stdout != "short-lived" {
		t.Fatalf("get %v after the put, before expiry: %s", time.Since(start), r)
	}
	time.Sleep(time.Until(start.Add(4500 * time.Millisecond)))
	if r := bento(t, "", "invoke", d.Addr, dep.InvocationToken, "get"); r.Code != 1 || !strings.Contains(r.Stderr, "expired and was deleted") {
		t.Fatalf("get after expiry: %s", r)
	}
	if r := bento(t, "", "invoke", d.Addr, dep.InvocationToken, "get"); r.Code != 5 {
		t.Fatalf("the expired Dropbox must have ended: %s", r)
	}
}
