package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/torbento/bento/internal/testutil"
)

// bentoctl runs the operator's command against a control socket.
func bentoctl(t testing.TB, sock string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(testutil.Binaries(t), "bentoctl"), append([]string{"-s", sock}, args...)...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{out.String(), errb.String(), code}
}

// scrape reads MetricsPort with Prometheus's own parser and returns each
// sample by "name{label=value,...}".
func scrape(t testing.TB, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scraping %s: %v", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("scraping %s: %s", addr, resp.Status)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("Prometheus's parser refuses bentod's metrics: %v", err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.Metric {
			var ls []string
			for _, l := range m.Label {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(ls)
			key := name
			if len(ls) > 0 {
				key += "{" + strings.Join(ls, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				out[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[key] = m.Gauge.GetValue()
			case m.Histogram != nil:
				out[key+"_count"] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return out
}

// waitFor polls cond every 50 ms for up to d.
func waitFor(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// TestOperatorControl runs bentod as an operator would and drives every
// operator command against it: systemd's notifications, the heartbeat,
// bentoctl's status, ls, end (the client is told the reason), drain,
// reload (a transition refused, a listener moved, a log file reopened
// after rotation), the live view in a real terminal (tmux), the metrics
// scraped with Prometheus's parser and guarded by MetricsPortPolicy, and
// bentoctl stop.
func TestOperatorControl(t *testing.T) {
	tmux, err := exec.LookPath("tmux")
	testutil.Require(t, err == nil, "tmux (apt-get install tmux)")
	dir := testutil.TempDir(t)
	sock := filepath.Join(dir, "run", "control")
	logFile := filepath.Join(dir, "log", "bentod.log")
	metrics := fmt.Sprintf("127.0.0.1:%d", freePort(t))

	// systemd's side of sd_notify: a datagram socket bentod is told of.
	notifyPath := filepath.Join(dir, "notify")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	notes := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := notify.Read(buf)
			if err != nil {
				close(notes)
				return
			}
			notes <- string(buf[:n])
		}
	}()
	t.Setenv("NOTIFY_SOCKET", notifyPath)
	t.Setenv("WATCHDOG_USEC", "1000000")
	expectNote := func(prefix string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case n := <-notes:
				if strings.HasPrefix(n, prefix) {
					return
				}
			case <-deadline:
				t.Fatalf("bentod did not notify %q", prefix)
			}
		}
	}

	rc := fmt.Sprintf("ControlSocket %s\nMetricsPort %s\nMetricsPortPolicy accept 127.0.0.1\nLog info file %s\nHeartbeatPeriod 1 second\nNickname opbox\n", sock, metrics, logFile)
	d := startBentod(t, rc)
	expectNote("READY=1")
	expectNote("WATCHDOG=1")
	if !waitFor(5*time.Second, func() bool { return strings.Contains(d.log.String(), "Heartbeat: bentod has been up for") }) {
		t.Errorf("no heartbeat within 5 s of a 1 s HeartbeatPeriod; log:\n%s", d.log)
	}
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o600 && st.Mode().Perm() != 0o660 {
		t.Errorf("control socket: %v, %v (want 0600, or 0660 with a group)", st, err)
	}

	// status and ls.
	r := bentoctl(t, sock, "status")
	if r.Code != 0 || !strings.Contains(r.Stdout, "opbox (bentod/") || !strings.Contains(r.Stdout, "instances: 0 of ") {
		t.Fatalf("bentoctl status: %s", r)
	}
	dep := deployCLI(t, d, fn("dropbox"))
	if r := bento(t, "kept", "invoke", "-i", d.Addr, dep.InvocationToken, "put"); r.Code != 0 {
		t.Fatalf("put: %s", r)
	}
	r = bentoctl(t, sock, "ls")
	if r.Code != 0 || !strings.Contains(r.Stdout, dep.Instance) || !strings.Contains(r.Stdout, "dropbox") || !strings.Contains(r.Stdout, "[scrubbed]") || !strings.Contains(r.Stdout, "running") {
		t.Fatalf("bentoctl ls: %s", r)
	}
	if strings.Contains(r.Stdout, dep.InvocationToken) || strings.Contains(r.Stdout, dep.ShutdownToken) || strings.Contains(r.Stdout, "127.0.0.1") {
		t.Errorf("bentoctl ls shows a token or a client's address: %s", r)
	}
	var list []struct {
		ID, Function string
		Storage      int64 `json:"storage_used_bytes"`
	}
	if r := bentoctl(t, sock, "--json", "ls"); r.Code != 0 || jsonUnmarshal(r.Stdout, &list) != nil || len(list) != 1 || list[0].Storage == 0 {
		t.Errorf("bentoctl --json ls: %s (%+v)", r, list)
	}
	checkCgroupPlacement(t, d, dep.Instance)

	// The live view, in a real terminal.
	tsock := filepath.Join(dir, "tmux.sock")
	exitFile := filepath.Join(dir, "top.exit")
	tm := func(args ...string) (string, error) {
		out, err := exec.Command(tmux, append([]string{"-S", tsock}, args...)...).CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() { tm("kill-server") })
	topCmd := fmt.Sprintf("%s -s %s top -i 200ms; echo $? > %s; sleep 60", filepath.Join(testutil.Binaries(t), "bentoctl"), sock, exitFile)
	if out, err := tm("new-session", "-d", "-x", "200", "-y", "40", topCmd); err != nil {
		t.Fatalf("tmux: %v %s", err, out)
	}
	var screen string
	if !waitFor(10*time.Second, func() bool {
		screen, _ = tm("capture-pane", "-p")
		return strings.Contains(screen, dep.Instance) && strings.Contains(screen, "bentoctl top") && strings.Contains(screen, "instances: 1 of")
	}) {
		t.Fatalf("bentoctl top does not show the instance; screen:\n%s", screen)
	}
	// It redraws: draining shows within a refresh.
	if r := bentoctl(t, sock, "drain"); r.Code != 0 || !strings.Contains(r.Stdout, "draining") {
		t.Fatalf("bentoctl drain: %s", r)
	}
	if !waitFor(5*time.Second, func() bool { screen, _ = tm("capture-pane", "-p"); return strings.Contains(screen, "DRAINING") }) {
		t.Errorf("bentoctl top did not redraw the draining state; screen:\n%s", screen)
	}
	tm("send-keys", "q")
	if !waitFor(5*time.Second, func() bool { b, _ := os.ReadFile(exitFile); return strings.TrimSpace(string(b)) == "0" }) {
		b, _ := os.ReadFile(exitFile)
		screen, _ = tm("capture-pane", "-p")
		t.Errorf("bentoctl top did not quit with 0 on q (exit file %q); screen:\n%s", b, screen)
	}

	// An upload's progress, drawn on the terminal while the tokens go to
	// a file.
	big := filepath.Join(dir, "big")
	os.MkdirAll(big, 0o755)
	for _, f := range []string{"bento.toml", "main.star"} {
		b, err := os.ReadFile(filepath.Join(fn("hello"), f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(big, f), b, 0o644)
	}
	os.WriteFile(filepath.Join(big, "pad.txt"), page(700<<10), 0o644)
	upExit, upOut := filepath.Join(dir, "up.exit"), filepath.Join(dir, "up.json")
	upCmd := fmt.Sprintf("%s deploy %s %s > %s; echo $? > %s; sleep 60", filepath.Join(testutil.Binaries(t), "bento"), d.Addr, big, upOut, upExit)
	if r := bentoctl(t, sock, "drain", "off"); r.Code != 0 {
		t.Fatalf("bentoctl drain off: %s", r)
	}
	if out, err := tm("new-session", "-d", "-s", "up", "-x", "200", "-y", "10", upCmd); err != nil {
		t.Fatalf("tmux: %v %s", err, out)
	}
	if !waitFor(30*time.Second, func() bool { b, _ := os.ReadFile(upExit); return strings.TrimSpace(string(b)) == "0" }) {
		t.Errorf("bento deploy in a terminal did not succeed")
	}
	screen, _ = tm("capture-pane", "-p", "-t", "up")
	if !strings.Contains(screen, "bento: uploading [##############################] 100%") {
		t.Errorf("no upload progress on the terminal; screen:\n%s", screen)
	}
	if b, _ := os.ReadFile(upOut); !strings.Contains(string(b), "shutdown_token") || strings.Contains(string(b), "uploading") {
		t.Errorf("the tokens' file: %q", b)
	}

	// Deploy and invoke at a terminal: words, not JSON; a call that
	// answers at once prints its answer, without the reattach hint (it
	// comes only for a session still running after 2 s).
	bentoBin := filepath.Join(testutil.Binaries(t), "bento")
	termCmd := fmt.Sprintf("%s deploy --no-store %s %s; %s invoke %s %s get; echo term-done; sleep 60", bentoBin, d.Addr, fn("hello"), bentoBin, d.Addr, dep.InvocationToken)
	if out, err := tm("new-session", "-d", "-s", "term", "-x", "200", "-y", "20", termCmd); err != nil {
		t.Fatalf("tmux: %v %s", err, out)
	}
	if !waitFor(30*time.Second, func() bool {
		screen, _ = tm("capture-pane", "-p", "-t", "term")
		return strings.Contains(screen, "term-done")
	}) {
		t.Errorf("deploy and invoke at a terminal did not finish; screen:\n%s", screen)
	}
	for _, want := range []string{"deployed hello as instance i-", "\n  invocation token  bento-inv-", "\n  shutdown token    bento-sd-", "next: bento invoke " + d.Addr + " bento-inv-", "\nkept\n"} {
		if !strings.Contains(screen, want) {
			t.Errorf("the terminal lacks %q; screen:\n%s", want, screen)
		}
	}
	if strings.Contains(screen, "reattach with") || strings.Contains(screen, `"shutdown_token"`) {
		t.Errorf("a terminal got JSON, or a reattach hint for a call that answered at once; screen:\n%s", screen)
	}
	if r := bentoctl(t, sock, "drain"); r.Code != 0 {
		t.Fatalf("bentoctl drain: %s", r)
	}

	// Draining refuses deploys with a reason; undrained, they are taken.
	r = bento(t, "", "deploy", d.Addr, fn("hello"))
	if r.Code == 0 || !strings.Contains(r.Stderr, "operator is draining it") {
		t.Errorf("deploy while draining: %s", r)
	}
	if r := bentoctl(t, sock, "drain", "off"); r.Code != 0 {
		t.Fatalf("bentoctl drain off: %s", r)
	}

	// The metrics, read with Prometheus's parser.
	m := scrape(t, metrics)
	for key, least := range map[string]float64{
		"bento_deploys_total{result=ok}":                  2,
		"bento_deploys_total{result=refused}":             1,
		"bento_instances{kind=running}":                   2,
		"bento_host_calls_total{api=storage}":             1,
		"bento_deploy_duration_seconds_count":             3,
		"bento_bytes_total{direction=in,listener=client}": 100,
		"bento_memory_bytes{kind=reserved}":               1 << 20,
		"bento_memory_bytes{kind=used}":                   1,
	} {
		if m[key] < least {
			t.Errorf("metric %s = %v, want at least %v", key, m[key], least)
		}
	}
	if m["bento_draining"] != 0 {
		t.Errorf("bento_draining = %v after drain off", m["bento_draining"])
	}
	// MetricsPortPolicy: another loopback address is refused.
	other := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext}}
	if resp, err := other.Get("http://" + metrics + "/metrics"); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("a scrape from 127.0.0.2, which MetricsPortPolicy does not accept: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	// Ending an instance: its client is told why.
	if r := bentoctl(t, sock, "end", dep.Instance, "abuse:", "scanning"); r.Code != 0 {
		t.Fatalf("bentoctl end: %s", r)
	}
	if r := bento(t, "", "invoke", d.Addr, dep.InvocationToken, "get"); r.Code == 0 || !strings.Contains(r.Stderr, "ended by the box's operator: abuse: scanning") {
		t.Errorf("invoke after bentoctl end: %s", r)
	}
	if r := bentoctl(t, sock, "end", "i-nosuch", "x"); r.Code != 1 || !strings.Contains(r.Stderr, `no instance "i-nosuch"`) {
		t.Errorf("bentoctl end of an unknown id: %s", r)
	}

	// A reload that changes what only a restart can: refused, nothing
	// changes, but the log file is reopened all the same (logrotate's
	// SIGHUP must never leave bentod writing to a rotated file).
	conf, err := os.ReadFile(d.conf)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(logFile, logFile+".1"); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(d.conf, append(conf, []byte("DataDirectory "+filepath.Join(dir, "elsewhere")+"\n")...), 0o644)
	if r := bentoctl(t, sock, "reload"); r.Code != 1 || !strings.Contains(r.Stderr, "changing DataDirectory is not allowed (transition not allowed)") {
		t.Errorf("reload with a new DataDirectory: %s", r)
	}
	if b, err := os.ReadFile(logFile); err != nil || !strings.Contains(string(b), "reload failed; keeping the old configuration") {
		t.Errorf("the log file was not reopened by a refused reload: %v %q", err, b)
	}
	// A reload whose log cannot be opened, with the metrics moved: refused
	// whole; the new port never served, the old one serves on, and no
	// listener is counted twice.
	metrics2 := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	os.WriteFile(d.conf, append(conf, []byte("MetricsPort "+metrics2+"\nLog info file /proc/no/such/dir/x.log\n")...), 0o644)
	if r := bentoctl(t, sock, "reload"); r.Code != 1 || !strings.Contains(r.Stderr, "/proc/no/such/dir/x.log") {
		t.Errorf("reload with a log that cannot be opened: %s", r)
	}
	if c, err := net.DialTimeout("tcp", metrics2, time.Second); err == nil {
		c.Close()
		t.Errorf("a refused reload left the new MetricsPort %s open", metrics2)
	}
	if m := scrape(t, metrics); m["bento_connections{listener=metrics}"] < 1 {
		t.Errorf("after a refused reload the old MetricsPort: %v", m)
	}
	var st struct {
		Listeners []struct{ Name string }
	}
	if r := bentoctl(t, sock, "--json", "status"); r.Code != 0 || jsonUnmarshal(r.Stdout, &st) != nil || len(st.Listeners) != 3 {
		t.Errorf("listeners after a refused reload (want client, policy, metrics): %s", r)
	}
	// SIGHUP with the metrics moved and the log file rotated: the new
	// port serves, the old does not, the log goes to a new file, and the
	// counters go on from the old listener's.
	before := scrape(t, metrics)
	os.WriteFile(d.conf, append(conf, []byte("MetricsPort "+metrics2+"\n")...), 0o644)
	if err := os.Rename(logFile, logFile+".2"); err != nil {
		t.Fatal(err)
	}
	reloads := strings.Count(d.log.String(), "policy reloaded")
	d.cmd.Process.Signal(syscall.SIGHUP)
	expectNote("RELOADING=1")
	if !waitFor(10*time.Second, func() bool { return strings.Count(d.log.String(), "policy reloaded") > reloads }) {
		t.Fatalf("no reload after SIGHUP; log:\n%s", d.log)
	}
	after := scrape(t, metrics2)
	if after["bento_instances{kind=max}"] == 0 {
		t.Errorf("the moved MetricsPort serves no metrics: %v", after)
	}
	if k := "bento_bytes_total{direction=out,listener=metrics}"; after[k] < before[k] {
		t.Errorf("%s went down across the move, from %v to %v", k, before[k], after[k])
	}
	if c, err := net.DialTimeout("tcp", metrics, time.Second); err == nil {
		c.Close()
		t.Errorf("the old MetricsPort %s still accepts connections", metrics)
	}
	if b, err := os.ReadFile(logFile); err != nil || !strings.Contains(string(b), "policy reloaded") {
		t.Errorf("the log file was not reopened after rotation: %v %q", err, b)
	}
	if b, _ := os.ReadFile(logFile + ".1"); !strings.Contains(string(b), "Heartbeat") || strings.Contains(string(b), "policy reloaded") {
		t.Errorf("the rotated file: %q", b)
	}

	// bentoctl stop ends bentod, which takes its socket with it.
	if r := bentoctl(t, sock, "stop"); r.Code != 0 || !strings.Contains(r.Stdout, "stopping") {
		t.Fatalf("bentoctl stop: %s", r)
	}
	select {
	case <-d.exited:
		d.ended = true
		if d.waitErr != nil {
			t.Errorf("bentod exited with %v after bentoctl stop", d.waitErr)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("bentod did not stop on bentoctl stop")
	}
	expectNote("STOPPING=1")
	if _, err := os.Stat(sock); err == nil {
		t.Error("the control socket outlives bentod")
	}
	if r := bentoctl(t, sock, "status"); r.Code != 3 || !strings.Contains(r.Stderr, "is bentod running") {
		t.Errorf("bentoctl status with bentod stopped: %s", r)
	}
}

// checkCgroupPlacement: bentod said once at start where the containers'
// cgroups go, and the instance's container is there: /bento/ID on this
// project's machines (cgroup v1), below the service's own cgroup on a
// delegated cgroup v2 (scripts/test-vm.sh checks that one, under systemd
// in a VM).
func checkCgroupPlacement(t *testing.T, d *daemon, id string) {
	t.Helper()
	m := regexp.MustCompile(`containers' cgroups: [^"]*" placement=(\w+) parent=(\S+)`).FindAllStringSubmatch(d.log.String(), -1)
	if len(m) != 1 {
		t.Fatalf("bentod said where the containers' cgroups go %d times, want once; log:\n%s", len(m), d.log)
	}
	want := m[0][2] + "/" + id
	pids, _ := filepath.Glob("/proc/[0-9]*/comm")
	var seen []string
	for _, comm := range pids {
		if b, _ := os.ReadFile(comm); strings.TrimSpace(string(b)) != "bento-runner" {
			continue
		}
		b, _ := os.ReadFile(filepath.Join(filepath.Dir(comm), "cgroup"))
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.SplitN(l, ":", 3); len(f) == 3 && f[2] == want {
				return
			}
		}
		seen = append(seen, strings.ReplaceAll(string(b), "\n", " "))
	}
	t.Errorf("no container process in cgroup %s (placement %s); bento-runner processes are in: %q", want, m[0][1], seen)
}
