package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/testutil"
)

const netPolicy = "AllowAPI send,recv,log,time,sleep,random,storage,exit,http.fetch,bento\nDestinationPolicy accept 127.0.0.1:*\n"

func TestHello(t *testing.T) {
	d := startBentod(t, "")
	r := bento(t, "", "run", d.Addr, fn("hello"), "Alice")
	if r.Code != 0 || r.Stdout != "hello, Alice!\nsent from a Bento box\n" {
		t.Fatalf("run hello: %s", r)
	}
}

func TestBrowserPadded(t *testing.T) {
	d := startBentod(t, netPolicy)
	body := page(10_000)
	base, port := webServer(t, body)
	for _, multiple := range []int{0, 4096, 1 << 20} {
		r := bento(t, "", "run", "--destinations", fmt.Sprintf("accept 127.0.0.1:%d", port), d.Addr, fn("browser"), base+"/page", fmt.Sprint(multiple))
		if r.Code != 0 {
			t.Fatalf("browser: %s", r)
		}
		if want := padded(body, multiple); !bytes.Equal([]byte(r.Stdout), want) {
			t.Errorf("multiple %d: got %d bytes, want %d (prefix %q)", multiple, len(r.Stdout), len(want), trunc(r.Stdout))
		}
	}
}

func testComposition(t *testing.T) {
	a := startBentod(t, netPolicy)
	b := startBentod(t, "")
	body := page(200_000)
	base, _ := webServer(t, body)
	dep := deployCLI(t, a, fn("browser-dropbox"), "--destinations", "accept 127.0.0.1:*")
	r := bento(t, "", "invoke", a.Addr, dep.InvocationToken, base+"/page", "65536", b.Addr, "2")
	if r.Code != 0 {
		t.Fatalf("browser-dropbox: %s", r)
	}
	var box struct {
		Server, InvocationToken, ShutdownToken string `json:"-"`
		S                                      string `json:"server"`
		Inv                                    string `json:"invocation_token"`
		Sd                                     string `json:"shutdown_token"`
		Bytes                                  int    `json:"bytes"`
	}
	if err := jsonUnmarshal(r.Stdout, &box); err != nil || box.Inv == "" {
		t.Fatalf("output %q: %v", r.Stdout, err)
	}
	// A is gone: its instance ended and its bentod stops.
	a.stop(t)
	want := padded(body, 65536)
	for i := 0; i < 2; i++ {
		g := bento(t, "", "invoke", b.Addr, box.Inv, "get")
		if g.Code != 0 || !bytes.Equal([]byte(g.Stdout), want) {
			t.Fatalf("get %d from B: %d bytes, want %d: %s", i, len(g.Stdout), len(want), g)
		}
	}
	// max_gets was 2: the data is deleted and the Dropbox has ended.
	g := bento(t, "", "invoke", b.Addr, box.Inv, "get")
	if g.Code != 5 {
		t.Fatalf("third get: want exit 5 (gone), got %s", g)
	}
}

func testReattach(t *testing.T) {
	d := startBentod(t, "")
	dep := deployCLI(t, d, fn("counter"))
	cl := client.New(d.Addr)
	s, err := cl.Invoke(ctx(t), dep.InvocationToken, 40, 0.02)
	if err != nil {
		t.Fatal(err)
	}
	var got []byte
	for len(got) < 30 {
		data, exit, err := s.Recv()
		if err != nil || exit != nil {
			t.Fatalf("early end: %v %v", exit, err)
		}
		got = append(got, data...)
	}
	offset := s.Offset
	s.Close() // disconnect mid-stream; the function keeps running
	time.Sleep(300 * time.Millisecond)
	// Reattach with the real CLI at the recorded offset.
	r := bento(t, "", "attach", d.Addr, dep.InvocationToken, s.ID, "--offset", fmt.Sprint(offset))
	if r.Code != 0 {
		t.Fatalf("attach: %s", r)
	}
	got = append(got, r.Stdout...)
	var want strings.Builder
	for i := 0; i < 40; i++ {
		fmt.Fprintf(&want, "line %d\n", i)
	}
	want.WriteString("done\n")
	if string(got) != want.String() {
		t.Fatalf("output after reattach:\n%q\nwant\n%q", got, want.String())
	}
	// A bad offset is refused clearly.
	r = bento(t, "", "attach", d.Addr, dep.InvocationToken, s.ID, "--offset", "3")
	if r.Code == 0 || !strings.Contains(r.Stderr, "record boundary") {
		t.Fatalf("attach at a bad offset: %s", r)
	}
	// At the very end of the finished session (the offset the server gave
	// with its exit) an attach returns the exit at once, again and again.
	s2, err := cl.Attach(ctx(t), dep.InvocationToken, s.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, exit, err := s2.Collect()
	s2.Close()
	if err != nil || exit == nil {
		t.Fatalf("collect: %v", err)
	}
	for i := 0; i < 3; i++ {
		start := time.Now()
		r = bento(t, "", "attach", d.Addr, dep.InvocationToken, s.ID, "--offset", fmt.Sprint(exit.Offset))
		if r.Code != 0 || r.Stdout != "" || time.Since(start) > 5*time.Second {
			t.Fatalf("attach at the end offset %d: %s after %v", exit.Offset, r, time.Since(start))
		}
	}
}

// testSessionIDFirst: the CLI names the session before any output, so a
// client killed outright can be reattached.
func testSessionIDFirst(t *testing.T) {
	d := startBentod(t, "")
	dep := deployCLI(t, d, fn("counter"))
	cmd := exec.Command(filepath.Join(testutil.Binaries(t), "bento"), "invoke", d.Addr, dep.InvocationToken, "50", "0.1")
	var errb syncBuffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var sid string
	for deadline := time.Now().Add(10 * time.Second); sid == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if m := regexp.MustCompile(`session (s-[0-9a-f]+) started`).FindStringSubmatch(errb.String()); m != nil {
			sid = m[1]
		}
	}
	cmd.Process.Kill() // as a killed client would be: no chance to print anything more
	cmd.Wait()
	if sid == "" {
		t.Fatalf("the CLI named no session: %q", errb.String())
	}
	r := bento(t, "", "attach", d.Addr, dep.InvocationToken, sid)
	if r.Code != 0 || !strings.HasPrefix(r.Stdout, "line 0\nline 1\n") || !strings.HasSuffix(r.Stdout, "done\n") {
		t.Fatalf("reattaching the killed client's session: %s", r)
	}
}

func TestInteractive(t *testing.T) {
	d := startBentod(t, "")
	r := bento(t, "ping\n", "run", "-i", d.Addr, fn("echo"))
	if r.Code != 0 || r.Stdout != "ping\nechoed 1 messages\n" {
		t.Fatalf("echo: %s", r)
	}
}

func testSharedTokenAndShutdown(t *testing.T) {
	d := startBentod(t, "")
	dep := deployCLI(t, d, fn("dropbox"))
	// The owner shares the invocation token; another client puts and gets.
	if r := bento(t, "secret data", "invoke", "-i", d.Addr, dep.InvocationToken, "put"); r.Code != 0 {
		t.Fatalf("put by another client: %s", r)
	}
	if r := bento(t, "", "invoke", d.Addr, dep.InvocationToken, "get"); r.Code != 0 || r.Stdout != "secret data" {
		t.Fatalf("get: %s", r)
	}
	// The invocation token cannot end the instance: the CLI says so
	// without asking, and the server refuses it anyway.
	if r := bento(t, "", "shutdown", d.Addr, dep.InvocationToken); r.Code != 2 || !strings.Contains(r.Stderr, "this is the invocation token") {
		t.Fatalf("shutdown with the invocation token: %s", r)
	}
	if err := client.New(d.Addr).Shutdown(ctx(t), dep.InvocationToken); !client.IsCode(err, client.CodeNotFound) {
		t.Fatalf("the server on a shutdown with the invocation token: %v", err)
	}
	if r := bento(t, "", "invoke", d.Addr, dep.InvocationToken, "get"); r.Code != 0 {
		t.Fatalf("instance must survive a shutdown with the wrong token: %s", r)
	}
	// A guessed token is refused.
	if r := bento(t, "", "shutdown", d.Addr, "bento-sd-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"); r.Code != 5 {
		t.Fatalf("shutdown with a guessed token: %s", r)
	}
	if r := bento(t, "", "shutdown", d.Addr, dep.ShutdownToken); r.Code != 0 {
		t.Fatalf("shutdown: %s", r)
	}
	if r := bento(t, "", "invoke", d.Addr, dep.InvocationToken, "get"); r.Code != 5 {
		t.Fatalf("invoke after shutdown: %s", r)
	}
	if strings.Contains(d.log.String(), dep.InvocationToken) || strings.Contains(d.log.String(), dep.ShutdownToken) {
		t.Fatal("a token reached bentod's log")
	}
	// Clients' addresses are scrubbed; bentod's own listeners are the
	// operator's, named as tor names its own.
	for _, line := range strings.Split(d.log.String(), "\n") {
		if strings.Contains(line, "127.0.0.1:") && !strings.Contains(line, "listening") && !strings.Contains(line, "serving the node policy") {
			t.Fatalf("an address reached bentod's log under SafeLogging: %s", line)
		}
	}
}

func TestManifestRefused(t *testing.T) {
	d := startBentod(t, "AllowAPI send\nMaxMemory 32 MB\n")
	dir := t.TempDir()
	os.WriteFile(dir+"/bento.toml", []byte(`name = "greedy"
apis = ["send", "http.fetch"]
destinations = ["accept *:443"]
[resources]
memory = "64 MB"
lifetime = "1 hour"
`), 0o644)
	os.WriteFile(dir+"/main.star", []byte("def main():\n    return 1\n"), 0o644)
	r := bento(t, "", "deploy", d.Addr, dir)
	if r.Code != 3 {
		t.Fatalf("want exit 3, got %s", r)
	}
	for _, want := range []string{
		"apis: asks http.fetch, policy allows only send",
		"resources.memory: asks 64 MB, policy allows at most 32 MB",
		"resources.lifetime: asks 1h0m0s, policy allows at most 10m0s",
		"destinations: asks accept *:443, policy allows nothing",
	} {
		if !strings.Contains(r.Stderr, want) {
			t.Errorf("refusal lacks %q:\n%s", want, r.Stderr)
		}
	}
	// The client can learn the same before uploading.
	r = bento(t, "", "policy", d.Addr, "--check", dir)
	if r.Code != 3 || !strings.Contains(r.Stdout, "resources.memory") {
		t.Fatalf("policy --check: %s", r)
	}
}

func TestAPIDeniedAtRunTime(t *testing.T) {
	d := startBentod(t, netPolicy)
	base, _ := webServer(t, []byte("x"))
	r := bento(t, "", "run", d.Addr, fn("fetcher"), base+"/page")
	if r.Code != 1 || !strings.Contains(r.Stderr, `permission denied: http.fetch() needs "http.fetch" in the manifest's apis`) ||
		!strings.Contains(r.Stderr, "main.star:2") {
		t.Fatalf("want a located permission error, got %s", r)
	}
}

func TestDestinationDenied(t *testing.T) {
	body := []byte("hello")
	base, port := webServer(t, body)
	_, other := webServer(t, body)
	// The manifest allows only `other`; the node allows all of loopback.
	// (Each bentod has the siege's neighbour, timed throughout.)
	s := newSiege(t, "")
	s.while(t, func() {
		r := bento(t, "", "run", "--destinations", fmt.Sprintf("accept 127.0.0.1:%d", other), s.d.Addr, fn("browser"), base+"/page")
		if r.Code != 1 || !strings.Contains(r.Stderr, "rejected by the manifest's destinations") {
			t.Errorf("destination outside the manifest: %s", r)
		}
	})
	// The node rejects the port even though the manifest asks for it: the
	// upload is refused up front.
	s2 := newSiegeRC(t, strings.Replace(siegeRC, "DestinationPolicy accept 127.0.0.1:*", fmt.Sprintf("DestinationPolicy reject 127.0.0.1:%d, accept 127.0.0.1:*", port), 1))
	d2 := s2.d
	s2.while(t, func() {
		r := bento(t, "", "run", "--destinations", fmt.Sprintf("accept 127.0.0.1:%d", port), d2.Addr, fn("browser"), base+"/page")
		if r.Code != 3 {
			t.Errorf("manifest destination the node rejects: %s", r)
		}
		// A redirect from an accepted destination to one the node rejects
		// is caught when bentod dials it.
		redirector := httpRedirect(t, base+"/page")
		r = bento(t, "", "run", "--destinations", "accept 127.0.0.1:"+redirector.port, d2.Addr, fn("browser"), redirector.url)
		if r.Code != 1 || !strings.Contains(r.Stderr, "rejected by the node's DestinationPolicy") {
			t.Errorf("redirect to a rejected destination: %s", r)
		}
	})
}

func TestFunctionErrors(t *testing.T) {
	d := startBentod(t, "")
	r := bento(t, "", "deploy", d.Addr, fn("syntaxerr"))
	if r.Code != 8 || !strings.Contains(r.Stderr, "main.star:2:") {
		t.Fatalf("syntax error: %s", r)
	}
	r = bento(t, "", "run", d.Addr, fn("runtimeerr"))
	if r.Code != 1 || !strings.Contains(r.Stderr, "main.star:2:") || !strings.Contains(r.Stderr, "missing") {
		t.Fatalf("runtime error: %s", r)
	}
}

// testManyInvocations invokes one service instance more times than it may
// run sessions at once: finished sessions must not count.
func testManyInvocations(t *testing.T) {
	// One client calling as fast as it can: more than the default 50
	// connections a second one address may open.
	d := startBentod(t, "ConnectRatePerAddress 100000\n")
	dir := t.TempDir()
	os.WriteFile(dir+"/bento.toml", []byte("name = \"ping\"\nmode = \"service\"\n"), 0o644)
	os.WriteFile(dir+"/main.star", []byte("def main(x):\n    return x\n"), 0o644)
	dep := deployCLI(t, d, dir)
	cl := client.New(d.Addr)
	for i := 0; i < 600; i++ {
		out, err := cl.Call(ctx(t), dep.InvocationToken, fmt.Sprint(i))
		if err != nil || string(out) != fmt.Sprint(i) {
			t.Fatalf("call %d: %q %v", i, out, err)
		}
	}
	// Finished sessions keep their output on disk, not open descriptors.
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", d.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if len(fds) > 64 {
		t.Fatalf("bentod holds %d descriptors after 600 finished sessions", len(fds))
	}
}

// TestVersionsAndHelp: the real binaries say their version, and answer
// --help with exit 0; bento's and bentod's versions agree.
func TestVersionsAndHelp(t *testing.T) {
	r := bento(t, "", "--version")
	if r.Code != 0 || !strings.HasPrefix(r.Stdout, "bento ") {
		t.Fatalf("bento --version: %s", r)
	}
	out, err := exec.Command(filepath.Join(testutil.Binaries(t), "bentod"), "--version").Output()
	if err != nil || strings.TrimPrefix(string(out), "bentod ") != strings.TrimPrefix(r.Stdout, "bento ") {
		t.Fatalf("bentod --version: %q, %v (bento says %q)", out, err, r.Stdout)
	}
	if err := exec.Command(filepath.Join(testutil.Binaries(t), "bentod"), "--help").Run(); err != nil {
		t.Errorf("bentod --help: %v", err)
	}
	for _, cmd := range []string{"policy", "deploy", "invoke", "attach", "shutdown", "run", "boxes", "dust"} {
		if r := bento(t, "", cmd, "--help"); r.Code != 0 {
			t.Errorf("bento %s --help: %s", cmd, r)
		}
	}
	// bentod's option list and configuration dump, as tor's: the dump of
	// a bentorc parses back to the same configuration (its own dump).
	bentod := filepath.Join(testutil.Binaries(t), "bentod")
	if out, err := exec.Command(bentod, "--list-options").Output(); err != nil || !strings.Contains(string(out), "MetricsPortPolicy POLICY,POLICY...") {
		t.Errorf("bentod --list-options: %v\n%s", err, out)
	}
	rc := filepath.Join(testutil.TempDir(t), "bentorc")
	os.WriteFile(rc, []byte("Nickname dumped\nLog info file /var/log/bento/x.log\nMaxMemory 32 MB\n"), 0o644)
	short, err := exec.Command(bentod, "-f", rc, "--dump-config", "short").Output()
	if err != nil || string(short) != "Nickname dumped\nLog info file /var/log/bento/x.log\nMaxMemory 32 MB\n" {
		t.Errorf("bentod --dump-config short: %v\n%s", err, short)
	}
	full, err := exec.Command(bentod, "-f", rc, "--dump-config", "full").Output()
	os.WriteFile(rc, full, 0o644)
	again, err2 := exec.Command(bentod, "-f", rc, "--dump-config", "full").Output()
	if err != nil || err2 != nil || string(full) != string(again) || !strings.Contains(string(full), "DataDirectory /var/lib/bento\n") {
		t.Errorf("bentod --dump-config full does not parse back to itself: %v %v\n%s\n---\n%s", err, err2, full, again)
	}
	if r := exec.Command(bentod, "--dump-config", "long"); r.Run() == nil || r.ProcessState.ExitCode() != 2 {
		t.Errorf("bentod --dump-config long: exit %d, want 2", r.ProcessState.ExitCode())
	}
	if r := bentoctl(t, "/nonexistent/control", "--help"); r.Code != 0 || !strings.Contains(r.Stdout, "usage: bentoctl") {
		t.Errorf("bentoctl --help: %s", r)
	}
	// The author's offline commands with the real binary: a new function
	// passes check; a broken one is located; completion is made.
	fnDir := filepath.Join(testutil.TempDir(t), "greeter")
	if r := bento(t, "", "new", fnDir, "--template", "echo"); r.Code != 0 {
		t.Fatalf("bento new: %s", r)
	}
	if r := bento(t, "", "check", fnDir); r.Code != 0 {
		t.Errorf("bento check of a new function: %s", r)
	}
	os.WriteFile(filepath.Join(fnDir, "main.star"), []byte("def main():\n    return nope\n"), 0o644)
	if r := bento(t, "", "check", fnDir); r.Code != 9 || !strings.Contains(r.Stderr, "main.star:2:") || !strings.Contains(r.Stderr, "undefined: nope") {
		t.Errorf("bento check of a broken function: %s", r)
	}
	if r := bento(t, "", "completion", "bash"); r.Code != 0 || !strings.Contains(r.Stdout, "complete -o default -F _bento bento") {
		t.Errorf("bento completion bash: %s", r)
	}
}
