package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/server"
)

// devFn writes a function directory: its manifest and main.star.
func devFn(t *testing.T, manifest, code string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bento.toml"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "main.star"), []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// shipped is the directory of a function shipped in functions/.
func shipped(name string) string { return filepath.Join("..", "..", "functions", name) }

// devRun runs bento with args and stdin.
func devRun(args []string, stdin string) (stdout, stderr string, code int) {
	var out, errb bytes.Buffer
	code = run(args, strings.NewReader(stdin), &out, &errb)
	return out.String(), errb.String(), code
}

// deniedLog is bentod's own answer to a log() the manifest does not list.
func deniedLog(t *testing.T) string {
	t.Helper()
	m, err := manifest.Parse([]byte("name = \"a\"\napis = [\"send\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Parse("test", nil)
	if err != nil {
		t.Fatal(err)
	}
	err = server.CheckCall("log", m, p)
	if err == nil {
		t.Fatal("bentod allows log() without log in the apis")
	}
	return err.Error()
}

func TestDev(t *testing.T) {
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "page %s", r.URL.Path)
	}))
	defer web.Close()
	rcDir := t.TempDir()
	rc := filepath.Join(rcDir, "bentorc")
	os.WriteFile(rc, []byte("AllowAPI send, http.fetch, net, tor.fetch, bento\nTorSocksPort 127.0.0.1:9\nDestinationPolicy accept 127.0.0.1:*\n"), 0o644)
	storage := t.TempDir()
	// A TCP server answering a line with "pong:" and the line.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			line, _ := bufio.NewReader(c).ReadString('\n')
			fmt.Fprintf(c, "pong:%s", line)
			c.Close()
		}
	}()
	linePort := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	const dialCode = "def main(p):\n    c = net.dial(\"127.0.0.1\", int(p))\n    net.write(c, \"ping\\n\")\n    out = b\"\"\n    for i in range(100):\n        b = net.read(c, timeout=5)\n        if not b:\n            break\n        out += b\n    net.close(c)\n    return out\n"

	for _, tc := range []struct {
		name   string
		args   []string
		stdin  string
		code   int
		stdout string   // exactly, unless "*"
		stderr []string // lines (or parts of lines) that must appear
	}{
		{name: "hello", args: []string{"dev", shipped("hello"), "Alice"}, code: 0,
			stdout: "hello, Alice!\nsent from a Bento box\n"},
		{name: "echo -i", args: []string{"dev", "-i", shipped("echo")}, stdin: "one\ntwo\n", code: 0,
			stdout: "one\ntwo\nechoed 1 messages\n"},
		{name: "dropbox put", args: []string{"dev", "-i", "--storage", storage, shipped("dropbox"), "put"}, stdin: "the data", code: 0,
			stdout: "stored 8 bytes\n"},
		{name: "dropbox get, a second run", args: []string{"dev", shipped("dropbox"), "--storage", storage, "get"}, code: 0,
			stdout: "the data"},
		{name: "dropbox without its storage", args: []string{"dev", shipped("dropbox"), "get"}, code: 1,
			stdout: "", stderr: []string{"bento: function error: main.star:43:13: fail: this dropbox is empty", "  main.star:61:19: in main"}},
		{name: "denied api", args: []string{"dev", devFn(t, "name = \"a\"\napis = [\"send\"]\n", "def main():\n    bento.send(\"x\")\n    bento.log(\"y\")\n")}, code: 1,
			stdout: "x", stderr: []string{"bento: function error: main.star:3:14: " + deniedLog(t)}},
		{name: "log to stderr", args: []string{"dev", devFn(t, "name = \"a\"\napis = [\"log\"]\n", "def main():\n    print(\"one\\ntwo\")\n    bento.log(\"three\", 4)\n")}, code: 0,
			stdout: "", stderr: []string{"log: one", "log: two", "log: three 4"}},
		// 64 records of 1000+16 bytes fit in 64 KB; the 65th does not.
		{name: "output limit", args: []string{"dev", devFn(t, "name = \"a\"\napis = [\"send\"]\n[resources]\noutput = \"64 KB\"\n", "def main():\n    for i in range(100):\n        bento.send(\"x\" * 1000)\n")}, code: 6,
			stdout: strings.Repeat("x", 64000), stderr: []string{"bento: " + "function stopped: " + server.OutputLimitReason(64<<10)}},
		{name: "return value over the limit", args: []string{"dev", devFn(t, "name = \"a\"\n[resources]\noutput = \"64 KB\"\n", "def main():\n    return \"x\" * 70000\n")}, code: 6,
			stdout: "", stderr: []string{"bento: function stopped: output limit exceeded (64 KB held for clients at once)"}},
		{name: "function error", args: []string{"dev", devFn(t, "name = \"a\"\n", "def f(x):\n    return x // 0\n\ndef main():\n    return f(1)\n")}, code: 1,
			stdout: "", stderr: []string{"bento: function error: main.star:2:14: floored division by zero", "  main.star:5:13: in main", "  main.star:2:14: in f"}},
		{name: "fails to load", args: []string{"dev", devFn(t, "name = \"a\"\n", "x = 1 // 0\ndef main():\n    pass\n")}, code: 1,
			stdout: "", stderr: []string{"bento: function failed to load: main.star:1:7: floored division by zero"}},
		{name: "steps", args: []string{"dev", devFn(t, "name = \"a\"\n[resources]\nsteps = 10000\n", "def main():\n    while True:\n        pass\n")}, code: 1,
			stdout: "", stderr: []string{"execution step limit (10000 steps) exceeded"}},
		{name: "lifetime", args: []string{"dev", devFn(t, "name = \"a\"\napis = [\"sleep\"]\n[resources]\nlifetime = \"1 s\"\n", "def main():\n    bento.sleep(30)\n")}, code: 6,
			stdout: "", stderr: []string{"bento: function stopped: lifetime limit reached (1s)"}},
		{name: "storage limit", args: []string{"dev", devFn(t, "name = \"a\"\napis = [\"storage\"]\n[resources]\nstorage = \"1 KB\"\n", "def main():\n    storage.put(\"k\", \"v\" * 2000)\n")}, code: 1,
			stdout: "", stderr: []string{server.StorageFullError(1 << 10).Error()}},
		{name: "policy refuses", args: []string{"dev", devFn(t, "name = \"greedy\"\napis = [\"send\"]\n[resources]\nmemory = \"1 GB\"\nlifetime = \"1 hour\"\n", "def main():\n    pass\n")}, code: 3,
			stdout: "", stderr: []string{`bento: a server with this policy (built-in defaults) would refuse it: manifest of "greedy" asks for more than this node's policy allows (2 items)`,
				"  resources.memory: asks 1 GB, policy allows at most 64 MB", "  resources.lifetime: asks 1h0m0s, policy allows at most 10m0s"}},
		{name: "check first", args: []string{"dev", devFn(t, "name = \"a\"\n", "def main():\n    return nope\n")}, code: 9,
			stdout: "", stderr: []string{"main.star:2:12: undefined: nope"}},
		{name: "fetch", args: []string{"dev", "--policy", rc, devFn(t, "name = \"a\"\napis = [\"http.fetch\"]\ndestinations = [\"accept 127.0.0.1:*\"]\n", "def main(u):\n    return http.fetch(u).body\n"), web.URL + "/x"}, code: 0,
			stdout: "page /x"},
		{name: "fetch denied", args: []string{"dev", "--policy", rc, devFn(t, "name = \"a\"\napis = [\"http.fetch\"]\ndestinations = [\"accept 127.0.0.1:1\"]\n", "def main(u):\n    return http.fetch(u).body\n"), web.URL + "/x"}, code: 1,
			stdout: "", stderr: []string{"is rejected by the manifest's destinations"}},
		{name: "net", args: []string{"dev", "--policy", rc, devFn(t, "name = \"a\"\napis = [\"net\"]\ndestinations = [\"accept 127.0.0.1:"+linePort+"\"]\n", dialCode), linePort}, code: 0,
			stdout: "pong:ping\n"},
		{name: "net denied", args: []string{"dev", "--policy", rc, devFn(t, "name = \"a\"\napis = [\"net\"]\ndestinations = [\"accept 127.0.0.1:1\"]\n", dialCode), linePort}, code: 1,
			stdout: "", stderr: []string{"main.star:2:17: net.dial: destination 127.0.0.1:" + linePort + " denied: 127.0.0.1:" + linePort + " is rejected by the manifest's destinations"}},
		{name: "tor not emulated", args: []string{"dev", "--policy", rc, devFn(t, "name = \"a\"\napis = [\"tor.fetch\"]\ndestinations = [\"accept 127.0.0.1:80\"]\n", "def main():\n    return tor.fetch(\"http://127.0.0.1/\")\n")}, code: 1,
			stdout: "", stderr: []string{"bento: function error: main.star:2:21: tor.fetch: not emulated by bento dev: deploy to a server to use tor.*"}},
		{name: "remote not emulated", args: []string{"dev", "--policy", rc, devFn(t, "name = \"a\"\napis = [\"bento\"]\ndestinations = [\"accept 127.0.0.1:*\"]\n", "def main():\n    remote.shutdown(\"127.0.0.1:1\", \"t\")\n")}, code: 1,
			stdout: "", stderr: []string{"remote.shutdown: not emulated by bento dev: deploy to a server to use remote.*"}},
		{name: "recv without -i", args: []string{"dev", devFn(t, "name = \"a\"\napis = [\"recv\"]\n", "def main():\n    return repr(bento.recv(timeout=0.1))\n")}, stdin: "unread", code: 0,
			stdout: "None", stderr: []string{"bento: dev: recv() waits for input, and without -i none comes"}},
		{name: "json", args: []string{"dev", "--json", shipped("hello"), "--", "-1"}, code: 0,
			stdout: `{"output":"hello, -1!\nsent from a Bento box\n","session":"dev","status":"ok"}` + "\n"},
		{name: "usage", args: []string{"dev"}, code: 2, stdout: "", stderr: []string{"bento: dev takes [-i] [--policy BENTORC] [--storage DIR] DIR [ARG...]"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := devRun(tc.args, tc.stdin)
			if code != tc.code || (tc.stdout != "*" && stdout != tc.stdout) {
				t.Errorf("bento %s: exit %d, stdout %q\nstderr:\n%s\nwant exit %d, stdout %q", strings.Join(tc.args, " "), code, trunc(stdout), stderr, tc.code, trunc(tc.stdout))
			}
			for _, want := range tc.stderr {
				if !strings.Contains(stderr, want) {
					t.Errorf("bento %s: stderr lacks %q:\n%s", strings.Join(tc.args, " "), want, stderr)
				}
			}
		})
	}
}

// TestDevJSONErrors: with --json, a refusal is one JSON object with its
// violations, and a function error carries its place.
func TestDevJSONErrors(t *testing.T) {
	dir := devFn(t, "name = \"greedy\"\n[resources]\nmemory = \"1 GB\"\n", "def main():\n    pass\n")
	_, stderr, code := devRun([]string{"dev", "--json", dir}, "")
	var e struct {
		Error      string               `json:"error"`
		Code       int                  `json:"code"`
		Violations []manifest.Violation `json:"violations"`
	}
	if err := json.Unmarshal([]byte(stderr), &e); err != nil || code != 3 || e.Code != 3 || len(e.Violations) != 1 || e.Violations[0].Item != "resources.memory" {
		t.Errorf("exit %d, stderr %s (%v)", code, stderr, err)
	}
	dir = devFn(t, "name = \"a\"\n", "def main():\n    fail(\"no\")\n")
	stdout, stderr, code := devRun([]string{"dev", "--json", dir}, "")
	var f struct {
		Code int    `json:"code"`
		File string `json:"file"`
		Line int    `json:"line"`
	}
	if err := json.Unmarshal([]byte(stderr), &f); err != nil || code != 1 || f.Code != 1 || f.File != "main.star" || f.Line != 2 || !strings.Contains(stdout, `"status":"error"`) {
		t.Errorf("exit %d, stdout %s, stderr %s (%v)", code, stdout, stderr, err)
	}
}

// TestDevStorageKept: --storage keeps the store between runs, in the
// directory given; without it nothing is left behind.
func TestDevStorageKept(t *testing.T) {
	code := "def main(op):\n    if op == \"put\":\n        storage.put(\"k\", \"v1\")\n        return None\n    return storage.get(\"k\")\n"
	dir := devFn(t, "name = \"a\"\napis = [\"storage\"]\n", code)
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	if _, stderr, code := devRun([]string{"dev", dir, "put"}, ""); code != 0 {
		t.Fatalf("put: exit %d: %s", code, stderr)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("a dev run without --storage left %d entries in TMPDIR", len(ents))
	}
	if stdout, _, code := devRun([]string{"dev", dir, "get"}, ""); code != 0 || stdout != "" {
		t.Errorf("get from a fresh store: exit %d, %q", code, stdout)
	}
	store := filepath.Join(t.TempDir(), "new", "store")
	devRun([]string{"dev", "--storage", store, dir, "put"}, "")
	if stdout, _, code := devRun([]string{"dev", "--storage", store, dir, "get"}, ""); code != 0 || stdout != "v1" {
		t.Errorf("get from --storage: exit %d, %q", code, stdout)
	}
	if _, err := os.Stat(filepath.Join(store, "storage.log")); err != nil {
		t.Error(err)
	}
}

// TestDevInterrupted: Ctrl-C ends the run at once, exit 130, even in a
// host call that waits.
func TestDevInterrupted(t *testing.T) {
	dir := devFn(t, "name = \"a\"\napis = [\"sleep\"]\n", "def main():\n    bento.sleep(30)\n")
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	var out, errb bytes.Buffer
	start := time.Now()
	code := runCtx(ctx, func() {}, []string{"dev", dir}, strings.NewReader(""), &out, &errb)
	if code != exitInterrupted || !strings.HasPrefix(errb.String(), "bento: interrupted") || time.Since(start) > 10*time.Second {
		t.Errorf("exit %d after %s, stderr %q", code, time.Since(start), errb.String())
	}
}

// TestDevStorageBusy: two runs on one --storage at once: the second is
// refused rather than let write the same file.
func TestDevStorageBusy(t *testing.T) {
	store := t.TempDir()
	dir := devFn(t, "name = \"a\"\napis = [\"sleep\", \"storage\"]\n", "def main():\n    storage.put(\"k\", \"v\")\n    bento.sleep(2)\n")
	done := make(chan int)
	go func() {
		_, _, code := devRun([]string{"dev", "--storage", store, dir}, "")
		done <- code
	}()
	// The first run holds the lock from before it opens the store until
	// it ends, two seconds after its put.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, _ := os.ReadFile(filepath.Join(store, "storage.log")); len(b) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first run stored nothing in 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, stderr, code := devRun([]string{"dev", "--storage", store, dir}, ""); code != exitUsage || !strings.Contains(stderr, "another bento dev is using it") {
		t.Errorf("a second run on the same storage: exit %d, %s", code, stderr)
	}
	if code := <-done; code != 0 {
		t.Errorf("first run: exit %d", code)
	}
}

func trunc(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}

// TestDevProtected: a protected function (FS Protect) under bento dev
// needs a policy that offers it, reads back what it stored within a run,
// starts empty at the next run (its key was the run's), and leaves the
// unprotected store of --storage alone.
func TestDevProtected(t *testing.T) {
	code := "def main(op):\n    if op == \"put\":\n        storage.put(\"k\", \"DEV-PROTECTED-SECRET\")\n        return storage.get(\"k\")\n    return storage.get(\"k\")\n"
	dir := devFn(t, "name = \"a\"\napis = [\"storage\"]\nprotect = true\n", code)
	if _, stderr, code := devRun([]string{"dev", dir, "put"}, ""); code != exitRefused || !strings.Contains(stderr, "protect: asks true (FS Protect)") {
		t.Fatalf("without AllowFSProtect: exit %d: %s", code, stderr)
	}
	rc := filepath.Join(t.TempDir(), "bentorc")
	if err := os.WriteFile(rc, []byte("AllowFSProtect 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	store := t.TempDir()
	plain := []byte("plain data of an unprotected run")
	if err := os.WriteFile(filepath.Join(store, "storage.log"), plain, 0o600); err != nil {
		t.Fatal(err)
	}
	if stdout, stderr, code := devRun([]string{"dev", "--policy", rc, "--storage", store, dir, "put"}, ""); code != 0 || stdout != "DEV-PROTECTED-SECRET" {
		t.Fatalf("put and get in one run: exit %d, %q %s", code, stdout, stderr)
	}
	b, err := os.ReadFile(filepath.Join(store, "storage.protected.log"))
	if err != nil || len(b) == 0 || bytes.Contains(b, []byte("DEV-PROTECTED-SECRET")) {
		t.Errorf("the protected store: %d bytes, %v, plaintext in it: %v", len(b), err, bytes.Contains(b, []byte("DEV-PROTECTED-SECRET")))
	}
	if stdout, stderr, code := devRun([]string{"dev", "--policy", rc, "--storage", store, dir, "get"}, ""); code != 0 || stdout != "" {
		t.Errorf("the next run: exit %d, %q %s (want nothing: the key was the last run's)", code, stdout, stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(store, "storage.log")); !bytes.Equal(b, plain) {
		t.Errorf("the unprotected store changed: %q", b)
	}
}

// TestDevWasm: bento dev runs a wasm module (functions/hello-wasm, built
// here with GOOS=wasip1) behind the same emulator, and bento check
// compiles it.
func TestDevWasm(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"bento.toml", "main.go", "go.mod"} {
		b, err := os.ReadFile(filepath.Join(shipped("hello-wasm"), f))
		if err != nil {
			t.Fatal(err)
		}
		if f == "go.mod" { // the SDK, from this repository
			abs, _ := filepath.Abs(filepath.Join("..", "..", "sdk", "go"))
			b = bytes.ReplaceAll(b, []byte("../../sdk/go"), []byte(abs))
		}
		os.WriteFile(filepath.Join(dir, f), b, 0o644)
	}
	if _, stderr, code := devRun([]string{"check", dir}, ""); code == 0 || !strings.Contains(stderr, "the entry module main.wasm is not in the function directory: build it (GOOS=wasip1 GOARCH=wasm go build -o main.wasm .)") {
		t.Fatalf("check before building: exit %d\n%s", code, stderr)
	}
	cmd := exec.Command("go", "build", "-o", "main.wasm", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if _, stderr, code := devRun([]string{"check", dir}, ""); code != 0 {
		t.Fatalf("check: exit %d\n%s", code, stderr)
	}
	// The built-in policy offers only starlark: the box's operator opts in.
	if _, stderr, code := devRun([]string{"dev", dir, "Alice"}, ""); code != 3 || !strings.Contains(stderr, "image: asks wasm, policy allows one of starlark") {
		t.Fatalf("dev under the default policy: exit %d\n%s", code, stderr)
	}
	rc := filepath.Join(t.TempDir(), "bentorc")
	os.WriteFile(rc, []byte("Image starlark, wasm\nMaxUploadSize 8 MB\n"), 0o644)
	stdout, stderr, code := devRun([]string{"dev", "--policy", rc, "--storage", t.TempDir(), dir, "Alice"}, "")
	if code != 0 || stdout != "hello, Alice! (greeting 1, from a wasm module)\n" || !strings.Contains(stderr, "greeted Alice") {
		t.Fatalf("dev: exit %d\nstdout %q\nstderr %s", code, stdout, stderr)
	}
}

// TestDevPython: bento check and bento dev run a python function with
// the local python3 and the image's driver; a syntax error is found
// offline with its line.
func TestDevPython(t *testing.T) {
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("/usr/bin/python3 is missing (bash scripts/setup.sh --test installs it)")
		}
		t.Skip(err)
	}
	fns := filepath.Join("..", "..", "functions")
	if _, stderr, code := devRun([]string{"check", filepath.Join(fns, "py-echo")}, ""); code != 0 {
		t.Fatalf("check: exit %d\n%s", code, stderr)
	}
	if _, stderr, code := devRun([]string{"check", filepath.Join(fns, "py-syntaxerr")}, ""); code == 0 || !strings.Contains(stderr, "main.py:6:13: SyntaxError: '(' was never closed") {
		t.Fatalf("check of py-syntaxerr: exit %d\n%s", code, stderr)
	}
	rc := filepath.Join(t.TempDir(), "bentorc")
	os.WriteFile(rc, []byte("Image starlark, python\n"), 0o644)
	stdout, stderr, code := devRun([]string{"dev", "-i", "--policy", rc, filepath.Join(fns, "py-echo")}, "one\nstop\n")
	if code != 0 || stdout != "echo: one\nstopped after 1 messages\n" {
		t.Fatalf("dev: exit %d\nstdout %q\nstderr %s", code, stdout, stderr)
	}
}
