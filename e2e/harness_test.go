// Package e2e drives the real binaries: bentod with real runc containers,
// and the bento CLI, against loopback servers.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/testutil"
)

// daemon is a running bentod.
type daemon struct {
	Addr    string
	Policy  string // HTTP policy address
	DataDir string
	conf    string
	bin     string // directory of the binaries it runs
	cmd     *exec.Cmd
	log     *syncBuffer
	exited  chan struct{} // closed once cmd has exited and been waited for
	waitErr error         // cmd's exit, once exited is closed
	ended   bool          // the test ended it (stop, kill) or already reported its exit
}

// syncBuffer is a bytes.Buffer safe for the process-output copier and the
// test to use at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freePort(t testing.TB) int {
	t.Helper()
	portMu.Lock()
	defer portMu.Unlock()
	if nextPort == 0 {
		nextPort = portLow + rand.IntN(portHigh-portLow)
	}
	for range portHigh - portLow {
		p := nextPort
		if nextPort++; nextPort >= portHigh {
			nextPort = portLow
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		ln.Close()
		return p
	}
	t.Fatalf("no free loopback port in %d-%d", portLow, portHigh)
	return 0
}

// freePort hands out ports below the kernel's ephemeral range (32768 and
// up by default), one after the other, so that no outgoing connection
// (of tor, of a test running in parallel) is given the port between the
// check and the daemon's bind. A CI run lost TestFlashFlowPrivateNetwork
// to that once, when ports came from 127.0.0.1:0.
const portLow, portHigh = 20000, 32000

var (
	portMu   sync.Mutex
	nextPort int
)

// startBentod starts bentod (built with the race detector when the tests
// run with it) with the given extra bentorc lines.
func startBentod(t testing.TB, rc string) *daemon {
	t.Helper()
	testutil.RequireSandbox(t)
	return startBentodFrom(t, testutil.Binaries(t), rc)
}

// startBentodFrom starts the bentod found in directory bin.
func startBentodFrom(t testing.TB, bin, rc string) *daemon {
	t.Helper()
	testutil.RequireSandbox(t)
	dir := testutil.TempDir(t)
	d := &daemon{
		Addr:    fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		Policy:  fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		DataDir: filepath.Join(dir, "data"),
		log:     &syncBuffer{},
	}
	d.conf = filepath.Join(dir, "bentorc")
	full := fmt.Sprintf("ListenAddress %s\nPolicyAddress %s\nDataDirectory %s\nLog info\n%s\n", d.Addr, d.Policy, d.DataDir, rc)
	if err := os.WriteFile(d.conf, []byte(full), 0o644); err != nil {
		t.Fatal(err)
	}
	d.start(t, bin)
	t.Cleanup(func() { d.stop(t) })
	return d
}

// start runs bentod and waits until it listens.
func (d *daemon) start(t testing.TB, bin string) {
	t.Helper()
	d.bin = bin
	args := []string{"-f", d.conf}
	if dir := os.Getenv("BENTO_E2E_PROFILE"); dir != "" {
		// A debugging aid: each bentod writes a CPU profile there.
		args = append(args, "--cpu-profile", filepath.Join(dir, fmt.Sprintf("bentod-%d.prof", time.Now().UnixNano())))
	}
	d.cmd = exec.Command(filepath.Join(bin, "bentod"), args...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	// Wait returns once bentod has exited, even if something it started
	// still holds its output.
	d.cmd.WaitDelay = 5 * time.Second
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// One goroutine waits for the process; everyone else watches exited.
	// (Its /proc state cannot tell: bentod re-executes itself at start,
	// and its first thread shows as a zombie for a moment meanwhile.)
	cmd, exited := d.cmd, make(chan struct{})
	d.exited, d.ended = exited, false
	go func() { d.waitErr = cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("tcp", d.Addr); err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			d.ended = true
			t.Fatalf("bentod exited before it listened (%v); log:\n%s", d.waitErr, d.log)
		default:
		}
		if time.Now().After(deadline) {
			d.kill()
			t.Fatalf("bentod did not start listening in 10 s; log:\n%s", d.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// restart starts bentod again on the same configuration and data.
func (d *daemon) restart(t testing.TB) {
	t.Helper()
	d.start(t, d.bin)
}

// stop ends bentod and checks it left nothing behind.
func (d *daemon) stop(t testing.TB) {
	if d.ended {
		return
	}
	d.ended = true
	select {
	case <-d.exited:
		// Nobody asked it to: a crash, or an exit bentod chose.
		t.Errorf("bentod exited before the test stopped it (%v)", d.waitErr)
	default:
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(20 * time.Second):
			d.kill()
			t.Errorf("bentod did not exit on SIGTERM; log:\n%s", d.log)
		}
	}
	if strings.Contains(d.log.String(), "WARNING: DATA RACE") {
		t.Errorf("bentod reported a data race")
	}
	out, _ := exec.Command("runc", "--root", filepath.Join(d.DataDir, "runtime"), "list", "-q").Output()
	if s := strings.TrimSpace(string(out)); s != "" {
		t.Errorf("containers left behind: %s", s)
	}
	if ents, _ := os.ReadDir(filepath.Join(d.DataDir, "bundles")); len(ents) > 0 {
		t.Errorf("%d bundles left behind", len(ents))
	}
	// No cgroup of any instance this bentod started, and no mount under
	// its data directory.
	for _, id := range instanceRE.FindAllString(d.log.String(), -1) {
		for _, cg := range []string{"/sys/fs/cgroup/memory/bento", "/sys/fs/cgroup/pids/bento", "/sys/fs/cgroup/cpu/bento", "/sys/fs/cgroup/bento"} {
			if _, err := os.Stat(filepath.Join(cg, strings.TrimPrefix(id, "instance="))); err == nil {
				t.Errorf("cgroup %s/%s left behind", cg, id)
			}
		}
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(mi), d.DataDir) {
		t.Errorf("mounts under %s left behind", d.DataDir)
	}
	if t.Failed() {
		t.Logf("bentod log:\n%s", d.log)
	}
}

var instanceRE = regexp.MustCompile(`instance=i-[0-9a-f]+`)

// kill ends bentod at once, as a crash would.
func (d *daemon) kill() {
	d.ended = true
	d.cmd.Process.Kill()
	<-d.exited
}

// result is a finished bento CLI run.
type result struct {
	Stdout, Stderr string
	Code           int
}

// cliTimeout bounds one run of the CLI.
const cliTimeout = 5 * time.Minute

// cliNice, when set, is the priority the CLI runs at: 19 while a siege
// case runs, whose runs of the CLI are the attacker's, like its attack
// processes (attackSpec).
var cliNice atomic.Int32

// bento runs the CLI.
func bento(t testing.TB, stdin string, args ...string) result {
	t.Helper()
	// No run of the CLI in these tests takes minutes: one that hangs is
	// a failure, not a stalled suite.
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	argv := append([]string{filepath.Join(testutil.Binaries(t), "bento")}, args...)
	if n := cliNice.Load(); n != 0 {
		argv = append([]string{"nice", "-n", strconv.Itoa(int(n))}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Stdin = strings.NewReader(stdin)
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	code := 0
	if ctx.Err() != nil {
		t.Errorf("bento %s: still running after %v, killed", strings.Join(args, " "), cliTimeout)
		code = -1
	} else if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{out.String(), errb.String(), code}
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout: %q\nstderr: %s", r.Code, trunc(r.Stdout), r.Stderr)
}

func trunc(s string) string {
	if len(s) > 300 {
		return s[:300] + "…"
	}
	return s
}

// fn returns the path of a shipped function or a test function.
func fn(name string) string {
	if p := filepath.Join(testutil.RepoRoot(), "functions", name); exists(p) {
		return p
	}
	return filepath.Join(testutil.RepoRoot(), "e2e", "testdata", "functions", name)
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// portOf returns the port of a URL's or an address's host:port.
func portOf(s string) string {
	s = strings.TrimPrefix(strings.TrimPrefix(s, "http://"), "https://")
	if i := strings.IndexByte(s, '/'); i >= 0 {
		s = s[:i]
	}
	_, port, _ := net.SplitHostPort(s)
	return port
}

// webServer serves body at /page and returns its base URL and port.
func webServer(t testing.TB, body []byte) (string, int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/page" {
			http.NotFound(w, r)
			return
		}
		w.Write(body)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String(), ln.Addr().(*net.TCPAddr).Port
}

// page returns n deterministic bytes.
func page(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + (i*7+i/13)%26)
	}
	return b
}

// padded is Browser's output for body padded to a multiple.
func padded(body []byte, multiple int) []byte {
	out := append([]byte(fmt.Sprintf("%016d", len(body))), body...)
	if multiple > 0 && len(out)%multiple != 0 {
		out = append(out, make([]byte, multiple-len(out)%multiple)...)
	}
	return out
}

func deployCLI(t testing.TB, d *daemon, dir string, extra ...string) client.Deployed {
	t.Helper()
	r := bento(t, "", append([]string{"deploy", d.Addr, dir}, extra...)...)
	if r.Code != 0 {
		t.Fatalf("deploy %s: %s", dir, r)
	}
	var dep client.Deployed
	if err := jsonUnmarshal(r.Stdout, &dep); err != nil {
		t.Fatalf("deploy output %q: %v", r.Stdout, err)
	}
	return dep
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

type redirector struct{ url, port string }

// httpRedirect serves a redirect to target.
func httpRedirect(t testing.TB, target string) redirector {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.RedirectHandler(target, http.StatusFound)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return redirector{url: "http://" + ln.Addr().String() + "/", port: fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)}
}
