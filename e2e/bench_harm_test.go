package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/socks"
	"github.com/torbento/bento/internal/testutil"
	"github.com/torbento/bento/internal/torctl"
)

// cpuTicks is a process's user+system CPU time, in clock ticks (1/100 s).
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseInt(f[11], 10, 64)
	k, _ := strconv.ParseInt(f[12], 10, 64)
	return u + k
}

// functionsCPU is the CPU time all containers used, from their parent
// cgroup.
func functionsCPU() time.Duration {
	for _, p := range []string{"/sys/fs/cgroup/cpuacct/bento/cpuacct.usage", "/sys/fs/cgroup/cpu,cpuacct/bento/cpuacct.usage"} {
		if b, err := os.ReadFile(p); err == nil {
			v, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			return time.Duration(v)
		}
	}
	if b, err := os.ReadFile("/sys/fs/cgroup/bento/cpu.stat"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "usage_usec "); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				return time.Duration(n) * time.Microsecond
			}
		}
	}
	return 0
}

const spinnerManifest = `name = "spinner"
mode = "service"
apis = ["time"]
[resources]
cpu = 0.5
cpu_time = "60 s"
steps = 1000000000
lifetime = "10 minutes"
`

const spinnerCode = `def main(secs):
    t0 = bento.time()
    x = 0
    while bento.time() - t0 < secs:
        for i in range(20000):
            x += i
    return "%d" % x
`

// BenchmarkTorHarm: does bentod under attack, or its functions at their
// ceilings, slow the relay it sits beside? On the private Tor network a
// client downloads a 4 MB page through one circuit whose exit is that
// relay, in five conditions taken in turn, round after round, so that each
// is compared with a baseline measured moments before:
//
//   - base: nothing else runs;
//   - sink: the heaviest attacks of the load suite (1,024 idle
//     connections from 64 addresses, 1,024 stalled 1 MB uploads), aimed at
//     a sink that turns every connection away at once: the attackers' own
//     cost (they come back as fast as they can);
//   - attack: the same attacks aimed at bentod;
//   - functions: three functions at their CPU ceilings (0.5 cores each:
//     TotalCPU, all the machine's cores less the 0.5 reserved for tor);
//   - all: the attacks on bentod and the functions at once.
//
// It reports each condition's median throughput as a ratio of the base's,
// and logs the CPU each part used (attackers, bentod, the exit relay, all
// tors, the functions).
//
//	go test -run '^$' -bench TorHarm -benchtime 1x ./e2e
func BenchmarkTorHarm(b *testing.B) {
	n := tornet(b)
	exit := n.Exits()[0]
	a := startTorBentodFrom(b, testutil.ReleaseBinaries(b), exit, "MaxInstances 16\n")
	pageSize := 4 << 20
	base, _ := webServer(b, page(pageSize))
	ctx := context.Background()

	// The test's own client tor leaves through the relay beside bentod.
	ctl, err := n.Control(ctx, n.Client())
	if err != nil {
		b.Fatal(err)
	}
	defer ctl.Close()
	setconf, _ := torctl.NewCommand("SETCONF", "ExitNodes="+exit.Fingerprint, "StrictNodes=1")
	if r, err := ctl.Do(ctx, setconf); err != nil || !r.OK() {
		b.Fatalf("SETCONF ExitNodes on the test's client: %v %v", r, err)
	}
	reset, _ := torctl.NewCommand("RESETCONF", "ExitNodes", "StrictNodes")
	defer ctl.Do(context.Background(), reset)
	d := &socks.Dialer{Proxy: n.Client().SocksAddr(), Username: "harm", Password: "x"}
	hc := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}, Timeout: 2 * time.Minute}
	download := func() (float64, error) {
		start := time.Now()
		resp, err := hc.Get(base + "/page")
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		got, err := io.Copy(io.Discard, resp.Body)
		if err != nil || got != int64(pageSize) {
			return 0, fmt.Errorf("got %d bytes: %v", got, err)
		}
		return float64(pageSize) / (1 << 20) / time.Since(start).Seconds(), nil
	}
	if _, err := download(); err != nil { // builds the circuit
		b.Fatal(err)
	}

	// The functions, deployed now and made to spin in their conditions.
	fnc := &client.Function{Manifest: []byte(spinnerManifest), Files: map[string][]byte{"main.star": []byte(spinnerCode)}}
	cl := client.New(a.Addr)
	var spinners []string
	for i := 0; i < 3; i++ {
		dep, err := cl.Deploy(ctx, fnc)
		if err != nil {
			b.Fatal(err)
		}
		spinners = append(spinners, dep.InvocationToken)
	}
	spin := func() func() {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for _, tok := range spinners {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := cl.Call(ctx, tok, 2); err != nil {
						b.Errorf("spinner: %v", err)
						return
					}
				}
			}()
		}
		return func() { close(stop); wg.Wait() }
	}
	sinkAddr := fmt.Sprintf("127.0.0.1:%d", freePort(b))
	attack := func(target string) func() {
		var procs []*attackProc
		if target == sinkAddr {
			sk := startAttackB(b, attackSpec{Kind: "sink", Target: sinkAddr})
			for !strings.Contains(sk.out.String(), "listening") {
				time.Sleep(20 * time.Millisecond)
			}
			procs = append(procs, sk)
		}
		procs = append(procs,
			startAttackB(b, attackSpec{Kind: "idle", Target: target, Sources: 64, Conns: 1024}),
			startAttackB(b, attackSpec{Kind: "slow-upload", Target: target, Sources: 64, Conns: 1024, Size: 1 << 20}))
		time.Sleep(3 * time.Second) // in full swing
		return func() {
			for i := len(procs) - 1; i >= 0; i-- {
				procs[i].stopB()
			}
		}
	}
	type condition struct {
		name  string
		start func() func()
	}
	conds := []condition{
		{"base", func() func() { return func() {} }},
		{"sink", func() func() { return attack(sinkAddr) }},
		{"attack", func() func() { return attack(a.Addr) }},
		{"functions", spin},
		{"all", func() func() { s := spin(); at := attack(a.Addr); return func() { at(); s() } }},
	}
	type cpuSample struct{ attackers, bentod, exitTor, tors, functions float64 }
	results := map[string][]float64{}
	cpu := map[string]*cpuSample{}
	rounds, perRound := 5, 3
	b.ResetTimer()
	for r := 0; r < rounds; r++ {
		for _, c := range conds {
			stop := c.start()
			t0 := time.Now()
			tick0 := map[string]int64{"bentod": cpuTicks(a.cmd.Process.Pid), "exit": cpuTicks(exit.PID())}
			var tors0 int64
			for _, nd := range n.Nodes {
				tors0 += cpuTicks(nd.PID())
			}
			att0 := attackersCPU()
			fn0 := functionsCPU()
			for k := 0; k < perRound; k++ {
				mbps, err := download()
				if err != nil {
					b.Fatalf("%s: %v", c.name, err)
				}
				results[c.name] = append(results[c.name], mbps)
			}
			secs := time.Since(t0).Seconds()
			var tors1 int64
			for _, nd := range n.Nodes {
				tors1 += cpuTicks(nd.PID())
			}
			s := cpu[c.name]
			if s == nil {
				s = &cpuSample{}
				cpu[c.name] = s
			}
			s.attackers += float64(attackersCPU()-att0) / 100 / secs / float64(rounds)
			s.bentod += float64(cpuTicks(a.cmd.Process.Pid)-tick0["bentod"]) / 100 / secs / float64(rounds)
			s.exitTor += float64(cpuTicks(exit.PID())-tick0["exit"]) / 100 / secs / float64(rounds)
			s.tors += float64(tors1-tors0) / 100 / secs / float64(rounds)
			s.functions += (functionsCPU() - fn0).Seconds() / secs / float64(rounds)
			stop()
			time.Sleep(3 * time.Second) // what a condition leaves behind ends before the next
		}
	}
	b.StopTimer()
	med := func(v []float64) float64 {
		v = append([]float64(nil), v...)
		sort.Float64s(v)
		return v[len(v)/2]
	}
	baseMed := med(results["base"])
	b.ReportMetric(baseMed, "base-MB/s")
	for _, c := range conds[1:] {
		b.ReportMetric(med(results[c.name])/baseMed, c.name+"-ratio")
	}
	for _, c := range conds {
		s := cpu[c.name]
		b.Logf("%-9s %5.2f MB/s (median of %d); CPU in cores: attackers %.2f, bentod %.2f, exit relay %.2f, all tors %.2f, functions %.2f",
			c.name, med(results[c.name]), len(results[c.name]), s.attackers, s.bentod, s.exitTor, s.tors, s.functions)
	}
}

// attackPIDs are the attacker processes running now.
var attackPIDs struct {
	sync.Mutex
	m map[int]bool
}

func attackersCPU() int64 {
	attackPIDs.Lock()
	defer attackPIDs.Unlock()
	var t int64
	for pid := range attackPIDs.m {
		t += cpuTicks(pid)
	}
	return t
}

// startAttackB starts an attacker for a benchmark (see startAttack).
func startAttackB(b *testing.B, spec attackSpec) *attackProc {
	b.Helper()
	a, err := launchAttack(spec)
	if err != nil {
		b.Fatal(err)
	}
	attackPIDs.Lock()
	if attackPIDs.m == nil {
		attackPIDs.m = map[int]bool{}
	}
	attackPIDs.m[a.cmd.Process.Pid] = true
	attackPIDs.Unlock()
	b.Cleanup(func() { a.stopB() })
	return a
}

func (a *attackProc) stopB() {
	a.stop()
	attackPIDs.Lock()
	delete(attackPIDs.m, a.cmd.Process.Pid)
	attackPIDs.Unlock()
}

// percentile returns the p-th percentile (0-100) of d.
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(float64(len(s))*p/100))]
}

// soakLoad is the honest clients' record of one phase.
type soakLoad struct {
	mu       sync.Mutex
	calls    []time.Duration // Dropbox gets
	runs     []time.Duration // deploy + invoke + shutdown of hello
	errors   int
	errMsgs  map[string]int // errors by message (the first 20 kinds)
	deployed int
	start    time.Time
	errAt    map[int]int // errors by minute since start
}

func (l *soakLoad) add(dst *[]time.Duration, d time.Duration, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.errors++
		if l.errAt == nil {
			l.errAt = map[int]int{}
		}
		l.errAt[int(time.Since(l.start)/time.Minute)]++
		if l.errMsgs == nil {
			l.errMsgs = map[string]int{}
		}
		if _, ok := l.errMsgs[err.Error()]; ok || len(l.errMsgs) < 20 {
			l.errMsgs[err.Error()]++
		}
		return
	}
	*dst = append(*dst, d)
}

// BenchmarkSoak: honest clients alone (the baseline, a fifth of the time),
// then the same honest clients beside hostile ones for BENTO_SOAK (10
// minutes unless set), against one bentod as it ships (defaults, no race
// detector). Honest: four clients calling their Dropboxes in a loop, one
// deploying and running hello again and again. Hostile, all at once:
// 1,024 idle connections from 64 addresses, 512 stalled uploads, random
// garbage, a slow-headers flood on the policy endpoint, endless input to
// a function that never reads, clients that never read their output, one
// address hogging its connections, and functions hitting their memory,
// CPU and output limits in turn. It reports the honest calls' latency
// percentiles in both phases, bentod's peak memory and descriptors, and
// the instances and calls served.
//
//	BENTO_SOAK=10m go test -run '^$' -bench Soak -benchtime 1x -timeout 40m ./e2e
func BenchmarkSoak(b *testing.B) {
	mixed := 10 * time.Minute
	if v := os.Getenv("BENTO_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("BENTO_SOAK: %v", err)
		}
		mixed = d
	}
	baseline := mixed / 5
	// The honest Dropboxes must outlive the soak (their manifest says 10
	// minutes): a longer lifetime, which the policy allows.
	d := startBentodFrom(b, testutil.ReleaseBinaries(b), "TotalCPU 50\nMaxInstances 256\nMaxLifetime 3 hours\nAllowAPI send,recv,log,time,sleep,random,storage,exit\n")
	ctx := context.Background()
	cl := client.New(d.Addr)
	box, _ := client.LoadFunction(fn("dropbox"))
	box.Manifest = []byte(strings.Replace(string(box.Manifest), `lifetime = "10 minutes"`, `lifetime = "3 hours"`, 1))
	hello, _ := client.LoadFunction(fn("hello"))
	var boxes []string
	for i := 0; i < 4; i++ {
		dep, err := cl.Deploy(ctx, box)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := cl.CallWithInput(ctx, dep.InvocationToken, []byte(fmt.Sprintf("box %d", i)), "put"); err != nil {
			b.Fatal(err)
		}
		boxes = append(boxes, dep.InvocationToken)
	}
	// Each honest client has an address of its own, as users do.
	honest := func(l *soakLoad, stop <-chan struct{}) *sync.WaitGroup {
		var wg sync.WaitGroup
		for i, tok := range boxes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cl := from(d.Addr, fmt.Sprintf("127.0.1.%d", 10+i))
				for {
					select {
					case <-stop:
						return
					case <-time.After(20 * time.Millisecond):
					}
					start := time.Now()
					out, err := cl.Call(ctx, tok, "get")
					if err == nil && string(out) != fmt.Sprintf("box %d", i) {
						err = fmt.Errorf("got %q", out)
					}
					l.add(&l.calls, time.Since(start), err)
				}
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := from(d.Addr, "127.0.1.20")
			for {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
				start := time.Now()
				dep, err := cl.Deploy(ctx, hello)
				if err == nil {
					_, err = cl.Call(ctx, dep.InvocationToken, "soak")
					cl.Shutdown(ctx, dep.ShutdownToken)
					l.mu.Lock()
					l.deployed++
					l.mu.Unlock()
				}
				l.add(&l.runs, time.Since(start), err)
			}
		}()
		return &wg
	}
	run := func(l *soakLoad, dur time.Duration) {
		stop := make(chan struct{})
		wg := honest(l, stop)
		time.Sleep(dur)
		close(stop)
		wg.Wait()
	}

	u := watchUsage(d.cmd.Process.Pid)
	b.ResetTimer()
	base := &soakLoad{start: time.Now()}
	run(base, baseline)
	baseRSS, baseFDs := u.end()

	// The hostile side.
	_, policyPort, _ := strings.Cut(d.Policy, ":")
	quiet, _ := cl.Deploy(ctx, &client.Function{Manifest: []byte("name = \"quiet\"\nmode = \"service\"\napis = [\"sleep\"]\n[resources]\nlifetime = \"10 minutes\"\n"),
		Files: map[string][]byte{"main.star": []byte("def main():\n    bento.sleep(30)\n")}})
	big, _ := cl.Deploy(ctx, &client.Function{Manifest: []byte("name = \"big\"\nmode = \"service\"\napis = [\"send\"]\n[resources]\noutput = \"16 MB\"\nlifetime = \"10 minutes\"\n"),
		Files: map[string][]byte{"main.star": []byte("def main(n):\n    for i in range(n):\n        bento.send(\"z\" * 65536)\n")}})
	if quiet == nil || big == nil {
		b.Fatalf("deploying the hostile side's functions failed\n%s", d.log)
	}
	specs := []attackSpec{
		{Kind: "idle", Target: d.Addr, Sources: 64, Conns: 1024},
		{Kind: "slow-upload", Target: d.Addr, Sources: 64, Conns: 512, Size: 1 << 20},
		{Kind: "garbage", Target: d.Addr, Sources: 32, Conns: 32},
		{Kind: "slowloris", Target: "127.0.0.1:" + policyPort, Sources: 64, Conns: 256},
		{Kind: "input-flood", Target: d.Addr, Sources: 16, Conns: 16, Token: quiet.InvocationToken, Args: "[]"},
		{Kind: "slow-reader", Target: d.Addr, Sources: 8, Conns: 24, Token: big.InvocationToken, Args: "[64]"},
		{Kind: "hello-idle", Target: d.Addr, Sources: 1, Conns: 64, Every: 1000},
	}
	for _, s := range specs {
		startAttackB(b, s)
	}
	stopLimits := make(chan struct{})
	limitsDone := make(chan struct{})
	go func() {
		defer close(limitsDone)
		offenders := []string{"membomb", "spin", "flood", "storagefill"}
		cl := from(d.Addr, "127.0.1.30")
		for i := 0; ; i++ {
			select {
			case <-stopLimits:
				return
			default:
			}
			f, _ := client.LoadFunction(fn(offenders[i%len(offenders)]))
			if dep, err := cl.Deploy(ctx, f); err == nil {
				cl.Call(ctx, dep.InvocationToken)
				cl.Shutdown(ctx, dep.ShutdownToken)
			}
		}
	}()
	u = watchUsage(d.cmd.Process.Pid)
	mix := &soakLoad{start: time.Now()}
	run(mix, mixed)
	close(stopLimits)
	<-limitsDone
	mixRSS, mixFDs := u.end()
	b.StopTimer()

	for _, p := range []struct {
		name string
		l    *soakLoad
		rss  int64
		fds  int
	}{{"honest alone", base, baseRSS, baseFDs}, {"with hostile", mix, mixRSS, mixFDs}} {
		b.Logf("%-13s calls %6d: p50 %6.2f ms, p90 %6.2f ms, p99 %6.2f ms; hello runs %4d: p50 %6.1f ms; errors %d; bentod peak RSS %.1f MB, peak descriptors %d",
			p.name, len(p.l.calls), ms(percentile(p.l.calls, 50)), ms(percentile(p.l.calls, 90)), ms(percentile(p.l.calls, 99)),
			len(p.l.runs), ms(percentile(p.l.runs, 50)), p.l.errors, float64(p.rss)/(1<<20), p.fds)
		for m, n := range p.l.errMsgs {
			b.Logf("  honest error %d×: %s", n, m)
		}
		if len(p.l.errAt) > 0 {
			b.Logf("  honest errors by minute: %v", p.l.errAt)
		}
	}
	// What bentod warned about, by message (each is rate-limited in the log).
	warns := map[string]int{}
	for _, line := range strings.Split(d.log.String(), "\n") {
		if strings.Contains(line, "level=warn") || strings.Contains(line, "level=err") {
			msg := line
			if i := strings.Index(line, "msg="); i >= 0 {
				msg = line[i:]
				if j := strings.Index(msg, " "); j > 0 && !strings.HasPrefix(msg, `msg="`) {
					msg = msg[:j]
				} else if j := strings.Index(msg[5:], `"`); j > 0 {
					msg = msg[:j+6]
				}
			}
			warns[msg]++
		}
	}
	for m, n := range warns {
		b.Logf("  bentod warned %d× %s", n, m)
	}
	if f := os.Getenv("BENTO_SOAK_LOG"); f != "" {
		os.WriteFile(f, []byte(d.log.String()), 0o644)
	}
	// The connection census of the last refusals for want of room.
	var census []string
	for _, line := range strings.Split(d.log.String(), "\n") {
		if strings.Contains(line, "refusing connections") {
			census = append(census, line)
		}
	}
	for _, line := range census[max(0, len(census)-12):] {
		b.Logf("  %s", line)
	}
	b.ReportMetric(float64(percentile(mix.calls, 50))/float64(percentile(base.calls, 50)), "p50-ratio")
	b.ReportMetric(float64(percentile(mix.calls, 99))/float64(percentile(base.calls, 99)), "p99-ratio")
	b.ReportMetric(float64(mixRSS)/(1<<20), "peak-RSS-MB")
	b.ReportMetric(float64(mixFDs), "peak-fds")
	b.ReportMetric(float64(mix.deployed), "instances-served")
	b.ReportMetric(float64(mix.errors), "honest-errors")
	if err := unixKill0(d.cmd.Process.Pid); err != nil {
		b.Fatalf("bentod died during the soak: %v", err)
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
