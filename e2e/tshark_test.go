package e2e

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/torbento/bento/internal/lightbox/tracegen"
	"github.com/torbento/bento/internal/testutil"
)

// tsharkRules are the IDS rules of TestLightboxAgainstTshark: patterns
// that occur often in the corpus and cross segment boundaries.
var tsharkRules = []struct {
	sid     int
	content string
	nocase  bool
}{
	{1, "HTTP/1.", false},
	{2, "GET /", false},
	{3, "BANDWIDTH", true},
	{4, "evil-payload", false},
}

// tsharkDifferences are the corpus's cases, by name, where the
// middleboxes differ from tshark by design, and why.
var tsharkDifferences = map[string]string{
	"a SYN in the middle": "tshark starts a new TCP stream (a new conversation) at a SYN with a new sequence number " +
		"in the middle of a connection; a host discards that SYN, and so do the middleboxes: one flow, the request whole",
	"IPv4 fragments, a partial overlap with other bytes": "Linux discards the datagram, and so does the IDS; tshark reassembles it anyway",
	"IPv6 fragments, overlapping with other bytes":       "RFC 5722 (and Linux) discard the datagram, and so does the IDS; tshark reassembles it anyway",
}

// differing holds the client addresses of the cases tsharkDifferences
// names (filled from the corpus).
var differing = map[netip.Addr]bool{}

// TestLightboxAgainstTshark checks the middleboxes, through the real
// binaries, against tshark (Wireshark's dissectors) on the corpus of
// captures the project generates (tracegen's named captures, and
// tracegen.Corpus: evasions, encapsulations and tunnels, Linux cooked and
// NFLOG link types):
// per capture, the monitor's TCP and UDP flows are tshark's TCP and UDP
// conversations, and each IDS rule fires on each flow as often as its
// pattern occurs in tshark's reassembled streams of that flow (follow
// tcp), but for the flows tsharkDifferences documents. The LAN capture
// is compared on flows only: following its 3,000 streams one by one
// would take tshark minutes.
//
// It times nothing: it runs in the parallel phase, after the sequential
// tests (some of which time a neighbour against a baseline).
func TestLightboxAgainstTshark(t *testing.T) {
	t.Parallel()
	tshark, err := exec.LookPath("tshark")
	testutil.Require(t, err == nil, "tshark (Wireshark's command line), the reference")
	corpus, err := tracegen.Corpus()
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, cc := range corpus {
		for _, c := range cc.Cases {
			if tsharkDifferences[c.Name] != "" {
				differing[c.Client] = true
				found++
			}
		}
	}
	if found != len(tsharkDifferences) {
		t.Fatalf("%d of the %d documented differences name a case of the corpus", found, len(tsharkDifferences))
	}
	dir := t.TempDir()
	var paths []string
	for _, cc := range corpus {
		paths = append(paths, filepath.Join(dir, cc.Name))
		os.WriteFile(paths[len(paths)-1], cc.Data, 0o644)
	}
	for _, c := range testutil.Captures(t) {
		paths = append(paths, c.Path)
	}
	rules := filepath.Join(dir, "rules")
	var rb strings.Builder
	for _, r := range tsharkRules {
		nc := ""
		if r.nocase {
			nc = " nocase;"
		}
		fmt.Fprintf(&rb, "alert tcp any any <> any any (msg:\"%d\"; content:\"%s\";%s sid:%d;)\n", r.sid, r.content, nc, r.sid)
	}
	os.WriteFile(rules, []byte(rb.String()), 0o644)
	for _, path := range paths {
		name := filepath.Base(path)
		t.Run(name, func(t *testing.T) {
			// Flows.
			report := filepath.Join(dir, name+".monitor")
			runLightbox(t, path, []string{"-run", "monitor", "-report", report}, nil)
			b, _ := os.ReadFile(report)
			var ours int
			for _, l := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(l, "flow tcp ") || strings.HasPrefix(l, "flow udp ") {
					if f := strings.Fields(l); !documented(f[2]) && !documented(f[4]) {
						ours++
					}
				}
			}
			conv := tsharkRun(t, tshark, path, "-q", "-z", "conv,tcp", "-z", "conv,udp")
			theirs := 0
			for _, l := range strings.Split(conv, "\n") {
				if f := strings.Fields(l); len(f) > 2 && f[1] == "<->" && !documented(f[0]) && !documented(f[2]) {
					theirs++
				}
			}
			if ours != theirs || ours == 0 {
				t.Errorf("the monitor reports %d TCP and UDP flows, tshark %d conversations", ours, theirs)
			}
			if name == tracegen.LAN {
				t.Logf("%d flows, as tshark", ours)
				return
			}
			// IDS alerts, per flow and rule.
			report = filepath.Join(dir, name+".ids")
			runLightbox(t, path, []string{"-run", "ids", "-rules", rules, "-report", report}, nil)
			b, _ = os.ReadFile(report)
			got := map[string]int{}
			for _, l := range strings.Split(string(b), "\n") {
				var sid int
				if _, err := fmt.Sscanf(l, "alert sid %d", &sid); err != nil || sid == 0 {
					continue // the IDS's own alerts on overlaps are not tshark's business
				}
				f := strings.Fields(l[strings.LastIndex(l, "\"")+1:]) // SRC -> DST
				if k := flowKey(f[0], f[2]); k != "" {
					got[fmt.Sprintf("%s sid %d", k, sid)]++
				}
			}
			want := tsharkPatterns(t, tshark, path)
			var diffs []string
			for k := range union(got, want) {
				if got[k] != want[k] {
					diffs = append(diffs, fmt.Sprintf("%s: the IDS %d, tshark %d", k, got[k], want[k]))
				}
			}
			sort.Strings(diffs)
			if len(diffs) > 0 {
				t.Errorf("%d differences:\n%s", len(diffs), strings.Join(diffs, "\n"))
			}
			total := 0
			for _, n := range want {
				total += n
			}
			t.Logf("%d flows and %d pattern occurrences, as tshark", ours, total)
		})
	}
}

// documented reports whether endpoint (ADDR:PORT, an IPv6 address in
// brackets or, as tshark's conversations print it, not) is of a flow
// tsharkDifferences explains.
func documented(endpoint string) bool {
	i := strings.LastIndex(endpoint, ":")
	if i < 0 {
		return false
	}
	a, err := netip.ParseAddr(strings.Trim(endpoint[:i], "[]"))
	return err == nil && differing[a]
}

// flowKey names a flow by its two endpoints in order ("" for a flow
// tsharkDifferences explains).
func flowKey(a, b string) string {
	if documented(a) || documented(b) {
		return ""
	}
	if b < a {
		a, b = b, a
	}
	return a + " " + b
}

func union(a, b map[string]int) map[string]bool {
	u := map[string]bool{}
	for k := range a {
		u[k] = true
	}
	for k := range b {
		u[k] = true
	}
	return u
}

// tsharkRun runs tshark on a capture and returns its output.
func tsharkRun(t *testing.T, tshark, path string, args ...string) string {
	t.Helper()
	cmd := exec.Command(tshark, append([]string{"-n", "-r", path}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	// A capture cut short makes tshark exit 2 after reading what it
	// could, as it should.
	if err != nil && !strings.Contains(stderr.String(), "cut short") {
		t.Fatalf("tshark %v: %v\n%s", args, err, stderr.String())
	}
	return string(out)
}

// tsharkPatterns follows every TCP stream of a capture with tshark and
// counts each rule's pattern in each direction's reassembled bytes, by
// flow and rule.
func tsharkPatterns(t *testing.T, tshark, path string) map[string]int {
	t.Helper()
	streams := map[int]bool{}
	for _, l := range strings.Fields(tsharkRun(t, tshark, path, "-T", "fields", "-e", "tcp.stream", "-Y", "tcp")) {
		if n, err := strconv.Atoi(l); err == nil {
			streams[n] = true
		}
	}
	var args []string
	for n := range streams {
		args = append(args, "-z", fmt.Sprintf("follow,tcp,raw,%d", n))
	}
	out := tsharkRun(t, tshark, path, append([]string{"-q"}, args...)...)
	counts := map[string]int{}
	for _, block := range strings.Split(out, "\n===================================================================\n") {
		var node [2]string
		var data [2][]byte
		for _, l := range strings.Split(block, "\n") {
			switch {
			case strings.HasPrefix(l, "Node 0: "):
				node[0] = strings.TrimPrefix(l, "Node 0: ")
			case strings.HasPrefix(l, "Node 1: "):
				node[1] = strings.TrimPrefix(l, "Node 1: ")
			case node[1] != "" && l != "" && !strings.HasPrefix(l, "="):
				side, h := 0, l
				if strings.HasPrefix(l, "\t") {
					side, h = 1, l[1:]
				}
				b, err := hex.DecodeString(h)
				if err != nil {
					t.Fatalf("tshark follow: %q: %v", l, err)
				}
				data[side] = append(data[side], b...)
			}
		}
		k := flowKey(node[0], node[1])
		if node[1] == "" || k == "" {
			continue
		}
		for _, r := range tsharkRules {
			for _, d := range data {
				pat := []byte(r.content)
				if r.nocase {
					d, pat = bytes.ToLower(d), bytes.ToLower(pat)
				}
				if n := bytes.Count(d, pat); n > 0 {
					counts[fmt.Sprintf("%s sid %d", k, r.sid)] += n
				}
			}
		}
	}
	return counts
}
