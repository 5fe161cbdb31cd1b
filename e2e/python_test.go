package e2e

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/testutil"
)

// pythonPolicy offers the python image beside Starlark, with room for
// the 100 MB output of py-largedata and a loopback destination for the
// Browser.
const pythonPolicy = "Image starlark, python\nAllowAPI send,recv,log,time,sleep,random,storage,exit,net\nDestinationPolicy accept 127.0.0.1:*\nMaxMemory 384 MB\nMaxCPU 1\nMaxOutput 128 MB\nMaxInFlight 600 MB\nMaxDaemonMemory 2 GB\nTotalCPU 4\n"

// needPython fails under CI and skips elsewhere without Debian's python3
// and python3-requests (bash scripts/setup.sh --test installs them).
func needPython(t *testing.T) {
	t.Helper()
	for _, p := range []string{"/usr/bin/python3", "/usr/lib/python3/dist-packages/requests"} {
		if _, err := os.Stat(p); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is missing: bash scripts/setup.sh --test installs python3 and python3-requests", p)
			}
			t.Skipf("%s is missing (bash scripts/setup.sh --test installs it)", p)
		}
	}
}

// pyFunction writes a python function (bento.toml, main.py) to a
// temporary directory.
func pyFunction(t *testing.T, manifest, code string) string {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "bento.toml"), []byte(manifest), 0o644)
	os.WriteFile(filepath.Join(dir, "main.py"), []byte(code), 0o644)
	return dir
}

// TestPythonImage runs the original Bento's test functions, written in its
// API for the python image (functions/py-*), through the real binaries,
// and the hostile python function's attacks: each contained. One bentod.
func TestPythonImage(t *testing.T) {
	needPython(t)
	d := startBentod(t, pythonPolicy)

	t.Run("hello", func(t *testing.T) {
		start := time.Now()
		r := bento(t, "", "run", d.Addr, fn("py-hello"), "ann")
		if r.Code != 0 || r.Stdout != "hello, ann!\nsent from a Python function\n" {
			t.Fatalf("py-hello: %s", r)
		}
		t.Logf("deploy and first invocation in %v", time.Since(start).Round(time.Millisecond))
	})

	t.Run("syntax-error", func(t *testing.T) {
		r := bento(t, "", "deploy", d.Addr, fn("py-syntaxerr"))
		if r.Code == 0 || !strings.Contains(r.Stderr, "main.py:6:") || !strings.Contains(r.Stderr, "SyntaxError") {
			t.Fatalf("py-syntaxerr deployed, or without its line: %s", r)
		}
	})

	t.Run("runtime-error", func(t *testing.T) {
		dir := pyFunction(t, "name = \"boom\"\nimage = \"python\"\napis = [\"send\"]\n", "def helper(x):\n    return {}[x]\n\n\ndef main():\n    api.send('before\\n')\n    return helper('missing')\n")
		r := bento(t, "", "run", d.Addr, dir)
		if r.Code != 1 || r.Stdout != "before\n" || !strings.Contains(r.Stderr, "main.py:2:") || !strings.Contains(r.Stderr, "KeyError: 'missing'") {
			t.Fatalf("a runtime error: %s", r)
		}
	})

	t.Run("bento-module", func(t *testing.T) {
		// The host API as a Python module: storage kept between
		// invocations of a service instance, print() and bento.log in the
		// instance log, a refused call an exception the function catches.
		dir := pyFunction(t, "name = \"counter\"\nimage = \"python\"\nmode = \"service\"\napis = [\"send\", \"storage\", \"log\"]\n", `import bento
from bento import storage


def main(who):
    n = int(storage.get("n") or b"0") + 1
    storage.put("n", str(n))
    print("visit", n, "by", who)
    try:
        bento.http.fetch("http://127.0.0.1:1/")
    except bento.Error as e:
        bento.log("refused:", str(e))
    return {"visits": n, "keys": storage.keys()}
`)
		dep := deployCLI(t, d, dir)
		for i, who := range []string{"ann", "bob"} {
			want := fmt.Sprintf(`{"visits":%d,"keys":["n"]}`, i+1)
			if r := bento(t, "", "invoke", d.Addr, dep.InvocationToken, who); r.Code != 0 || strings.TrimSpace(r.Stdout) != want {
				t.Fatalf("invoke %d: %s, want %s", i, r, want)
			}
		}
		r := bento(t, "", "logs", d.Addr, dep.ShutdownToken)
		if r.Code != 0 || !strings.Contains(r.Stdout, "visit 1 by ann") || !strings.Contains(r.Stdout, "visit 2 by bob") || !strings.Contains(r.Stdout, `refused: permission denied: http.fetch() needs "http.fetch" in the manifest's apis`) {
			t.Fatalf("the instance log: %s", r)
		}
	})

	t.Run("deep-args", func(t *testing.T) {
		// A client's arguments nested past CPython's recursion limit took
		// the driver down as it decoded them, and every invocation of
		// the instance with it: bentod refuses them, and another client's
		// invocation runs on.
		dir := pyFunction(t, "name = \"deep\"\nimage = \"python\"\nmode = \"service\"\napis = [\"send\"]\n", `import time


def main(*a):
    if a and a[0] == "slow":
        time.sleep(3)
        return "slow done\n"
    return "depth %d\n" % len(a)
`)
		dep := deployCLI(t, d, dir)
		cl := client.New(d.Addr)
		slow, err := cl.Invoke(ctx(t), dep.InvocationToken, "slow")
		if err != nil {
			t.Fatal(err)
		}
		defer slow.Close()
		time.Sleep(300 * time.Millisecond)
		deep := json.RawMessage(strings.Repeat("[", 2000) + strings.Repeat("]", 2000))
		if s, err := cl.Invoke(ctx(t), dep.InvocationToken, deep); err == nil || !strings.Contains(err.Error(), "arguments nest 2001 deep, more than the 100 allowed") {
			if err == nil {
				s.Close()
			}
			t.Fatalf("arguments 2000 deep: %v", err)
		}
		var out []byte
		for {
			data, exit, err := slow.Recv()
			if err != nil {
				t.Fatalf("the other invocation: %v (output %q)", err, out)
			}
			out = append(out, data...)
			if exit != nil {
				if exit.Status != "ok" || string(out) != "slow done\n" {
					t.Fatalf("the other invocation ended %+v with %q", exit, out)
				}
				break
			}
		}
		if r := bento(t, "", "invoke", d.Addr, dep.InvocationToken, "x"); r.Code != 0 || r.Stdout != "depth 1\n" {
			t.Fatalf("after: %s", r)
		}
	})

	t.Run("poll-loop", func(t *testing.T) {
		// api.poll() in a loop is a host call each time, some 80 µs of
		// bentod's own CPU: unpaced, a function made bentod spend more
		// than the function's quota. bentod carries out 2000 calls a
		// second per core of the function's (a second's worth ahead).
		dir := pyFunction(t, "name = \"poller\"\nimage = \"python\"\napis = [\"send\", \"recv\"]\n[resources]\ncpu = 1\n", `import time


def main():
    n = 0
    end = time.time() + 2
    while time.time() < end:
        api.poll()
        n += 1
    return str(n)
`)
		r := bento(t, "", "run", d.Addr, dir)
		n, err := strconv.Atoi(r.Stdout)
		if r.Code != 0 || err != nil {
			t.Fatalf("the poll loop: %s", r)
		}
		if n > 6600 { // 2000 ahead, 2000 a second for 2 s, and a tenth
			t.Fatalf("%d polls in 2 s, more than bentod's pace (2000 a second per core, 2000 ahead) allows", n)
		}
		t.Logf("%d polls in 2 s", n)
	})

	t.Run("https", func(t *testing.T) {
		// TLS is Python's own ssl over the shim's socket: http.client
		// here, against a loopback server with a certificate of its own.
		srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "secret page for %s", r.URL.Path)
		}))
		defer srv.Close()
		u, _ := url.Parse(srv.URL)
		dir := pyFunction(t, fmt.Sprintf("name = \"tls\"\nimage = \"python\"\napis = [\"send\", \"net\"]\ndestinations = [\"accept %s\"]\n[resources]\nmemory = \"64 MB\"\n", u.Host), `import http.client
import ssl


def main(host, port):
    c = http.client.HTTPSConnection(host, int(port), timeout=10, context=ssl._create_unverified_context())
    c.request("GET", "/tls")
    r = c.getresponse()
    return "%d %s" % (r.status, r.read().decode())
`)
		r := bento(t, "", "run", d.Addr, dir, u.Hostname(), u.Port())
		if r.Code != 0 || r.Stdout != "200 secret page for /tls" {
			t.Fatalf("https through the shim: %s", r)
		}
	})

	t.Run("periodic-reattach", func(t *testing.T) {
		// Output comes while the function runs and survives a disconnect:
		// the rest is read after reattaching, nothing lost or repeated.
		dep := deployCLI(t, d, fn("py-periodic"))
		cl := client.New(d.Addr)
		s, err := cl.Invoke(ctx(t), dep.InvocationToken, 8, 0.2)
		if err != nil {
			t.Fatal(err)
		}
		var got []byte
		start := time.Now()
		for !bytes.Contains(got, []byte("tick 1\n")) {
			data, exit, err := s.Recv()
			if err != nil || exit != nil {
				t.Fatalf("early end: %v %v", exit, err)
			}
			got = append(got, data...)
		}
		if time.Since(start) > 5*time.Second {
			t.Errorf("the first ticks took %v: output is not streamed", time.Since(start))
		}
		offset := s.Offset
		s.Close()
		time.Sleep(500 * time.Millisecond)
		r := bento(t, "", "attach", d.Addr, dep.InvocationToken, s.ID, "--offset", fmt.Sprint(offset))
		if r.Code != 0 {
			t.Fatalf("attach: %s", r)
		}
		got = append(got, r.Stdout...)
		var want strings.Builder
		for i := 0; i < 8; i++ {
			fmt.Fprintf(&want, "tick %d\n", i)
		}
		want.WriteString("done after 8 ticks\n")
		if string(got) != want.String() {
			t.Fatalf("output after reattach:\n%q\nwant\n%q", got, want.String())
		}
	})

	t.Run("echo-until-stop", func(t *testing.T) {
		r := bento(t, "one\ntwo\nstop\nnever\n", "run", "-i", d.Addr, fn("py-echo"))
		if r.Code != 0 || !strings.HasPrefix(r.Stdout, "echo: one\necho: two\n") || !strings.HasSuffix(r.Stdout, "stopped after 2 messages\n") || strings.Contains(r.Stdout, "never") {
			t.Fatalf("py-echo: %s", r)
		}
	})

	t.Run("100MB", func(t *testing.T) {
		start := time.Now()
		out := filepath.Join(t.TempDir(), "out")
		f, err := os.Create(out)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(filepath.Join(testutil.Binaries(t), "bento"), "run", d.Addr, fn("py-largedata"))
		var errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = f, &errb
		err = cmd.Run()
		f.Close()
		if err != nil {
			t.Fatalf("py-largedata: %v: %s", err, errb.String())
		}
		st, _ := os.Stat(out)
		const want = 100*1000*1000 + len("\nsent 100000000 bytes\n")
		if st.Size() != int64(want) {
			t.Fatalf("py-largedata sent %d bytes, want %d: %s", st.Size(), want, errb.String())
		}
		t.Logf("100 MB in %v", time.Since(start).Round(time.Millisecond))
	})

	t.Run("browser", func(t *testing.T) {
		page := bytes.Repeat([]byte("<p>a page fetched through bentod</p>\n"), 200)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(page) })}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		port := ln.Addr().(*net.TCPAddr).Port
		// The shipped Browser, its destinations narrowed to this page.
		m := strings.Replace(mustRead(t, filepath.Join(fn("py-browser"), "bento.toml")), `destinations = ["accept *:80", "accept *:443"]`, fmt.Sprintf(`destinations = ["accept 127.0.0.1:%d"]`, port), 1)
		dir := pyFunction(t, m, mustRead(t, filepath.Join(fn("py-browser"), "main.py")))
		r := bento(t, "", "run", d.Addr, dir, fmt.Sprintf("http://127.0.0.1:%d/index.html", port), "65536")
		if r.Code != 0 {
			t.Fatalf("py-browser: %s", r)
		}
		out := []byte(r.Stdout)
		if len(out) != 65536 {
			t.Fatalf("py-browser sent %d bytes, want them padded to 65536", len(out))
		}
		n := binary.BigEndian.Uint32(out)
		zr, err := zlib.NewReader(bytes.NewReader(out[4 : 4+n]))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(zr)
		if err != nil || !bytes.Equal(got, page) {
			t.Fatalf("the page unpacked: %v, %d bytes, want %d", err, len(got), len(page))
		}
		// A destination the manifest does not accept: requests fails with
		// bentod's refusal.
		other, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		r = bento(t, "", "run", d.Addr, dir, "http://127.0.0.1:"+strconv.Itoa(other.Addr().(*net.TCPAddr).Port)+"/", "0")
		if r.Code != 1 || !strings.Contains(r.Stderr, "rejected by the manifest's destinations") || !strings.Contains(r.Stderr, "main.py:13:") {
			t.Fatalf("py-browser outside its destinations: %s", r)
		}
		// The shipped manifest asks for the web (ports 80 and 443), which
		// this node's DestinationPolicy (loopback only) does not give.
		r = bento(t, "", "run", d.Addr, fn("py-browser"), "http://example.com/", "0")
		if r.Code != 3 || !strings.Contains(r.Stderr, "destinations") {
			t.Fatalf("py-browser's own manifest under a loopback-only policy: %s", r)
		}
		t.Logf("refused: %s", strings.TrimSpace(r.Stderr))
	})

	// The hostile python function's attacks, one invocation each on one
	// service instance; a neighbour is served after each. Each has its row
	// in docs/SECURITY.md's sandbox table.
	hostile := pyFunction(t, hostilePython, mustRead(t, filepath.Join(testutil.RepoRoot(), "e2e", "testdata", "python", "hostile", "main.py")))
	hdep := deployCLI(t, d, hostile)
	neighbour := pyFunction(t, "name = \"neighbour\"\nimage = \"python\"\nmode = \"service\"\napis = [\"send\"]\n", "def main(name):\n    return 'hello, %s!\\n' % name\n")
	ndep := deployCLI(t, d, neighbour)
	attacks := []imageAttack{
		{"fork", 0, "fork: PermissionError: [Errno 1] Operation not permitted"},
		{"subprocess", 0, "subprocess: PermissionError: [Errno 1] Operation not permitted"},
		{"spawn", 0, "spawn: PermissionError: [Errno 1] Operation not permitted"},
		{"passwd", 0, "passwd: FileNotFoundError: [Errno 2] No such file or directory: '/etc/passwd'"},
		{"environ", 0, "environ: succeeded: b'PATH=/usr/bin\\x00LANG=C.UTF-8\\x00HOME=/\\x00'"},
		{"root", 0, "root: FileNotFoundError"},
		{"writeroot", 0, "writeroot: OSError: [Errno 30] Read-only file system: '/usr/lib/evil'"},
		{"exec", 0, "exec: FileNotFoundError: [Errno 2] No such file or directory"},
		{"hostroot", 0, "hostroot: succeeded: ['bento', 'bento-runner', 'dev', 'etc', 'lib', 'lib64', 'proc', 'tmp', 'usr']"},
		{"raw", 0, "raw: PermissionError: [Errno 1] Operation not permitted"},
		{"inet", 0, "inet: PermissionError: [Errno 1] Operation not permitted"},
		{"inet6", 0, "inet6: PermissionError: [Errno 1] Operation not permitted"},
		{"netlink", 0, "netlink: PermissionError: [Errno 1] Operation not permitted"},
		{"connect", 0, `connect: ConnectionRefusedError: [Errno 111] 127.0.0.1:22: permission denied: net.dial() needs "net" in the manifest's apis`},
		{"lease", 0, "lease: PermissionError: [Errno 1] Operation not permitted"},
		{"oob", 0, "oob: PermissionError: [Errno 1] Operation not permitted"},
		{"scmrights", 0, "scmrights: PermissionError: [Errno 1] Operation not permitted"},
		{"hostinfo", 0, "hostinfo: Contained: nothing of the host's activity is readable"},
		{"cpubomb", 6, "cpu time limit exceeded"},
		{"flood", 6, "output limit exceeded"},
		{"membomb", 6, "memory limit"},
		// Last: bentod may stop the runtime for its threads once the
		// invocation has returned.
		{"threads", 0, "threads: RuntimeError: can't start new thread|process limit exceeded (32 processes/threads)"},
	}
	runImageAttacks(t, d, hdep.InvocationToken, ndep.InvocationToken, attacks)
}

// hostilePython is e2e/testdata/python/hostile's manifest: a service
// instance with small limits.
const hostilePython = `name = "hostile-python"
image = "python"
mode = "service"
apis = ["send", "log"]
[resources]
memory = "64 MB"
cpu = 1
cpu_time = "2 s"
output = "1 MB"
processes = 32
`
