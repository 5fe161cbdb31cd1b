package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/sandbox"
	"github.com/torbento/bento/internal/testutil"
)

func median(d []time.Duration) time.Duration {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2]
}

func reportMedian(b *testing.B, d []time.Duration) {
	b.ReportMetric(float64(median(d).Microseconds())/1000, "median-ms")
	b.ReportMetric(float64(d[len(d)*9/10].Microseconds())/1000, "p90-ms")
}

// BenchmarkUploadToFirstByte measures deploy + invoke of hello until the
// first output byte arrives at the client.
func BenchmarkUploadToFirstByte(b *testing.B) { uploadToFirstByte(b, fn("hello"), "") }

// BenchmarkUploadToFirstByteWasmGo is the same for the wasm image:
// functions/hello-wasm built with GOOS=wasip1 (a 3 MB module the runner
// compiles when the instance starts).
func BenchmarkUploadToFirstByteWasmGo(b *testing.B) {
	uploadToFirstByte(b, wasmFunction(b, "functions/hello-wasm", mustRead(b, filepath.Join(fn("hello-wasm"), "bento.toml"))), wasmPolicy)
}

// BenchmarkUploadToFirstByteWasmC: a C hello built with clang's
// wasm32-wasi target (160 KB).
func BenchmarkUploadToFirstByteWasmC(b *testing.B) {
	uploadToFirstByte(b, wasmFunction(b, "e2e/testdata/wasm/c-hello/main.c", cHelloManifest), wasmPolicy)
}

// BenchmarkUploadToFirstBytePython: functions/py-hello in the python
// image (Debian's CPython starting in the container, the driver loading
// the function).
func BenchmarkUploadToFirstBytePython(b *testing.B) {
	uploadToFirstByte(b, fn("py-hello"), "Image starlark, python\n")
}

const cHelloManifest = "name = \"c-hello\"\nimage = \"wasm\"\nmode = \"service\"\napis = [\"send\", \"storage\"]\n"

func uploadToFirstByte(b *testing.B, dir, rc string) {
	d := startBentod(b, "MaxInstances 512\nMaxInstancesPerClient 512\nTotalCPU 50\nConnectRatePerAddress 100000\n"+rc)
	fnc, err := client.LoadFunction(dir)
	if err != nil {
		b.Fatal(err)
	}
	cl := client.New(d.Addr)
	ctx := context.Background()
	var lat []time.Duration
	var tokens []string
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		dep, err := cl.Deploy(ctx, fnc)
		if err != nil {
			b.Fatal(err)
		}
		s, err := cl.Invoke(ctx, dep.InvocationToken, "bench")
		if err != nil {
			b.Fatal(err)
		}
		if data, _, err := s.Recv(); err != nil || len(data) == 0 {
			b.Fatalf("first output: %q %v", data, err)
		}
		lat = append(lat, time.Since(start))
		s.Close()
		tokens = append(tokens, dep.ShutdownToken)
	}
	b.StopTimer()
	reportMedian(b, lat)
	for _, t := range tokens {
		_ = cl.Shutdown(ctx, t)
	}
}

// BenchmarkRuncStartBaseline is the floor under the figure above: runc
// alone creating, starting and reaping a container from the same kind of
// bundle (the runner exits at once without its host-API channel).
func BenchmarkRuncStartBaseline(b *testing.B) {
	testutil.RequireSandbox(b)
	s, err := sandbox.New(sandbox.Config{Runtime: "runc", StateDir: testutil.TempDir(b), RunnerPath: filepath.Join(testutil.Binaries(b), "bento-runner")})
	if err != nil {
		b.Fatal(err)
	}
	devnull, _ := os.Open(os.DevNull)
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		c, err := s.Start(context.Background(), fmt.Sprintf("bench-%d", i), sandbox.Limits{Memory: 32 << 20, CPU: 0.25, CPUTime: 10 * time.Second, Processes: 16, Storage: 1 << 20}, devnull)
		if err != nil {
			b.Fatal(err)
		}
		<-c.Exited()
		lat = append(lat, time.Since(start))
		c.Remove()
	}
	b.StopTimer()
	reportMedian(b, lat)
}

// BenchmarkWarmInvoke measures invocations of an already running service
// instance, one client after another and from 4 clients at once.
func BenchmarkWarmInvoke(b *testing.B) {
	d := startBentod(b, "ConnectRatePerAddress 100000\n")
	dir := b.TempDir()
	os.WriteFile(dir+"/bento.toml", []byte("name = \"ping\"\nmode = \"service\"\n[resources]\nlifetime = \"10 minutes\"\n"), 0o644)
	os.WriteFile(dir+"/main.star", []byte("def main(x):\n    return x\n"), 0o644)
	fnc, _ := client.LoadFunction(dir)
	cl := client.New(d.Addr)
	dep, err := cl.Deploy(context.Background(), fnc)
	if err != nil {
		b.Fatal(err)
	}
	for _, par := range []int{1, 4} {
		b.Run(fmt.Sprintf("clients=%d", par), func(b *testing.B) {
			var wg sync.WaitGroup
			per := (b.N + par - 1) / par
			b.ResetTimer()
			for p := 0; p < par; p++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < per; i++ {
						out, err := cl.Call(context.Background(), dep.InvocationToken, "ping")
						if err != nil || string(out) != "ping" {
							b.Errorf("call: %q %v", out, err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(per*par)/b.Elapsed().Seconds(), "invocations/s")
		})
	}
}

// BenchmarkProtocolRoundTripBaseline is a request that touches no
// container (fetching the policy) over the same connection set-up.
func BenchmarkProtocolRoundTripBaseline(b *testing.B) {
	d := startBentod(b, "ConnectRatePerAddress 100000\n")
	cl := client.New(d.Addr)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := cl.Policy(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "requests/s")
}

// BenchmarkIdleInstances starts 100 idle service instances and reports the
// memory each costs: its cgroup's charge (the runner's memory and kernel
// memory) and the runner's resident set, against an idle bentod's own RSS.
func BenchmarkIdleInstances(b *testing.B) { idleInstances(b, fn("dropbox"), 100, "") }

// BenchmarkIdleInstancesWasmGo: 20 idle instances of functions/hello-wasm
// (each compiles its 3 MB module when it starts: 100 would take minutes).
func BenchmarkIdleInstancesWasmGo(b *testing.B) {
	idleInstances(b, wasmFunction(b, "functions/hello-wasm", mustRead(b, filepath.Join(fn("hello-wasm"), "bento.toml"))), 20, wasmPolicy)
}

// BenchmarkIdleInstancesWasmC: 100 idle instances of the C hello.
func BenchmarkIdleInstancesWasmC(b *testing.B) {
	idleInstances(b, wasmFunction(b, "e2e/testdata/wasm/c-hello/main.c", cHelloManifest), 100, wasmPolicy)
}

// BenchmarkIdleInstancesPython: 100 idle instances of py-hello in
// service mode (an interpreter each, with the driver and the function
// loaded).
func BenchmarkIdleInstancesPython(b *testing.B) {
	dir := testutil.TempDir(b)
	m := strings.Replace(mustRead(b, filepath.Join(fn("py-hello"), "bento.toml")), "apis =", "mode = \"service\"\napis =", 1)
	os.WriteFile(filepath.Join(dir, "bento.toml"), []byte(m), 0o644)
	os.WriteFile(filepath.Join(dir, "main.py"), []byte(mustRead(b, filepath.Join(fn("py-hello"), "main.py"))), 0o644)
	idleInstances(b, dir, 100, "Image starlark, python\n")
}

func idleInstances(b *testing.B, dir string, n int, rc string) {
	for i := 0; i < b.N; i++ {
		d := startBentod(b, "MaxInstances 200\nMaxInstancesPerClient 200\nTotalCPU 50\n"+rc)
		base := rssKB(d.cmd.Process.Pid)
		fnc, _ := client.LoadFunction(dir)
		cl := client.New(d.Addr)
		var ids []string
		for j := 0; j < n; j++ {
			dep, err := cl.Deploy(context.Background(), fnc)
			if err != nil {
				b.Fatalf("instance %d: %v", j, err)
			}
			ids = append(ids, dep.Instance)
		}
		time.Sleep(2 * time.Second) // let them settle
		var cg, rss int64
		for _, id := range ids {
			cg += cgroupMemory(id)
			pid, _ := os.ReadFile(filepath.Join(d.DataDir, "bundles", id, "pid"))
			p, _ := strconv.Atoi(strings.TrimSpace(string(pid)))
			rss += rssKB(p)
		}
		daemon := rssKB(d.cmd.Process.Pid) - base
		b.ReportMetric(float64(cg)/float64(n)/(1<<20), "cgroup-MB/instance")
		b.ReportMetric(float64(rss)/float64(n)/1024, "runner-RSS-MB/instance")
		b.ReportMetric(float64(daemon)/float64(n)/1024, "bentod-MB/instance")
		b.ReportMetric(float64(base)/1024, "bentod-idle-MB")
		d.stop(b)
	}
}

func rssKB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			f := strings.Fields(rest)
			v, _ := strconv.ParseInt(f[0], 10, 64)
			return v
		}
	}
	return 0
}

func cgroupMemory(id string) int64 {
	for _, p := range []string{"/sys/fs/cgroup/memory/bento/" + id + "/memory.usage_in_bytes", "/sys/fs/cgroup/bento/" + id + "/memory.current"} {
		if b, err := os.ReadFile(p); err == nil {
			v, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			return v
		}
	}
	return 0
}
