package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torbento/bento/client/compat"
	"github.com/torbento/bento/internal/testutil"
)

// compatEcho is the original's continuousInput in spirit, written
// against the original's function API (api.send, api.recv, the return
// value): it greets, then echoes each input until "stop", and returns
// "bye".
const compatEcho = `
def echo(greeting, n, extra):
    api.send("%s %d %s\n" % (greeting, n, extra["k"][0]))
    while True:
        msg = api.recv()
        if msg == b"" or msg == b"stop":
            return "bye"
        api.send(msg)


def fails():
    raise ValueError("it went wrong")
`

const compatManifest = `image = "python"
apis = ["send", "recv"]

[resources]
lifetime = "2 minutes"
memory = "64 MB"
`

// compatStarlark is the same in Starlark, under a manifest for the
// starlark image: the listener knows no image of its own.
const compatStarlark = `
def echo(greeting, n, extra):
    bento.send("%s %d %s\n" % (greeting, n, extra["k"][0]))
    while True:
        msg = bento.recv()
        if msg == None or msg == b"stop":
            return "bye"
        bento.send(msg)
`

// compatDaemon starts bentod with the compat listener on, under
// manifest, and returns it and the listener's address.
func compatDaemon(t *testing.T, manifest string) (*daemon, string) {
	t.Helper()
	return compatDaemonRC(t, manifest, "")
}

// compatDaemonRC is compatDaemon with more bentorc lines.
func compatDaemonRC(t *testing.T, manifest, extra string) (*daemon, string) {
	t.Helper()
	dir := testutil.TempDir(t)
	mf := filepath.Join(dir, "compat.toml")
	if err := os.WriteFile(mf, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	d := startBentod(t, fmt.Sprintf("Image starlark, python\nAllowAPI send,recv\nMaxUploadSize 64 KB\nHandshakeTimeout 2 seconds\nCompatListenAddress %s\nCompatManifest %s\n", addr, mf)+extra)
	return d, addr
}

// dialCompat connects with a receive buffer of rcvbuf bytes (0: the
// kernel's), so that the server's unacknowledged bytes stay in its send
// queue.
func dialCompat(t *testing.T, addr string, rcvbuf int) *compat.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 10 * time.Second}
	if rcvbuf > 0 {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf) })
			return errors.Join(err, serr)
		}
	}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	return compat.New(nc)
}

func recvMsg(t *testing.T, c *compat.Conn, want uint8) []byte {
	t.Helper()
	data, typ, err := c.RecvOutput()
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	if typ != want {
		t.Fatalf("recv: message of type %d (%q), want %d", typ, trunc(string(data)), want)
	}
	return data
}

// TestCompat drives bentod's compat listener as the original Bento
// client does: store, execute, open, input and output, an abrupt
// disconnect and a reattach that loses nothing, the function's end
// ("function dead", and its instance gone), and the refusals, each with
// its error in the original's frame.
func TestCompat(t *testing.T) {
	needPython(t)
	d, addr := compatDaemon(t, compatManifest)
	// A client that says nothing: closed after HandshakeTimeout (2 s),
	// checked at the end.
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	silentAt := time.Now()

	c := dialCompat(t, addr, 4096)
	tok, err := c.Store("echo", compatEcho)
	if err != nil || len(tok) != 36 {
		t.Fatalf("store: %q %v", tok, err)
	}
	id, err := c.Execute(`echo('hi', 3, {'k': [True]})`, tok)
	if err != nil || len(id) != 36 {
		t.Fatalf("execute: %q %v", id, err)
	}
	if err := c.Open(id); err != nil {
		t.Fatal(err)
	}
	if got := string(recvMsg(t, c, compat.Output)); got != "hi 3 True\n" {
		t.Fatalf("greeting %q", got)
	}
	if err := c.SendInput(id, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if got := string(recvMsg(t, c, compat.Output)); got != "hello" {
		t.Fatalf("echo %q", got)
	}
	// More messages than the listener's ledger keeps before it counts
	// the acknowledged ones delivered.
	for i := range 70 {
		msg := fmt.Sprintf("m%d", i)
		if err := c.SendInput(id, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		if got := string(recvMsg(t, c, compat.Output)); got != msg {
			t.Fatalf("echo %d: %q", i, got)
		}
	}
	// Two large echoes: the first read whole, the second's first bytes
	// only, then the connection dies without a Close (a reset). The
	// second was not all acknowledged by the client's TCP (its receive
	// buffer is 4 KB): a later Open sends it again, whole.
	big1, big2 := bytes.Repeat([]byte("x"), 48<<10), bytes.Repeat([]byte("y"), 48<<10)
	if err := c.SendInput(id, big1); err != nil {
		t.Fatal(err)
	}
	if err := c.SendInput(id, big2); err != nil {
		t.Fatal(err)
	}
	if got := recvMsg(t, c, compat.Output); !bytes.Equal(got, big1) {
		t.Fatalf("first echo: %d bytes", len(got))
	}
	time.Sleep(300 * time.Millisecond) // the second echo is under way
	tc := c.NetConn().(*net.TCPConn)
	tc.SetLinger(0)
	tc.Close()

	c2 := dialCompat(t, addr, 0)
	if err := c2.Open(id); err != nil {
		t.Fatal(err)
	}
	if got := recvMsg(t, c2, compat.Output); !bytes.Equal(got, big2) {
		t.Fatalf("after the reattach: %d bytes (%.20q), want the second echo whole", len(got), got)
	}
	if err := c2.SendInput(id, []byte("stop")); err != nil {
		t.Fatal(err)
	}
	if got := string(recvMsg(t, c2, compat.Output)); got != "bye" {
		t.Fatalf("return value %q", got)
	}
	if got := string(recvMsg(t, c2, compat.FunctionErr)); got != "function dead" {
		t.Fatalf("end %q", got)
	}
	// Its end delivered, the function is gone: a Close, and an Open of it
	// is told so.
	c2.Close(id)
	c2.Open(id)
	if got := string(recvMsg(t, c2, compat.FunctionErr)); !strings.HasPrefix(got, "no function exists with id: "+id) {
		t.Fatalf("open of a dead function: %q", got)
	}
	// ... and its instance with its retained output (the first started).
	inst := regexp.MustCompile(`instance started.* instance=(i-[0-9a-f]+)`).FindStringSubmatch(d.log.String())
	if inst == nil {
		t.Fatalf("no instance in the log:\n%s", d.log)
	}
	if !waitFor(10*time.Second, func() bool { return !exists(filepath.Join(d.DataDir, "instances", inst[1])) }) {
		t.Errorf("the dead function's instance %s is still kept; log:\n%s", inst[1], d.log)
	}

	// The function's error: an Error message, then "function dead".
	c3 := dialCompat(t, addr, 0)
	id, err = c3.Execute("fails()", tok)
	if err != nil {
		t.Fatal(err)
	}
	c3.Open(id)
	if got := string(recvMsg(t, c3, compat.Error)); !strings.Contains(got, "ValueError: it went wrong") {
		t.Fatalf("error text %q", got)
	}
	if got := string(recvMsg(t, c3, compat.FunctionErr)); got != "function dead" {
		t.Fatalf("end %q", got)
	}
	c3.Close(id)

	// Refusals, each in the original's error response.
	refused := func(what string, err error, want string) {
		t.Helper()
		var se *compat.ServerError
		if !errors.As(err, &se) || !strings.Contains(se.Msg, want) {
			t.Errorf("%s: %v, want a server error saying %q", what, err, want)
		}
	}
	_, err = c3.Execute("echo('x', 1, {'k': [1]})", "00000000-0000-4000-8000-000000000000")
	refused("a bad token", err, "invalid token")
	for call, want := range map[string]string{
		"__import__('os').system('id')": "attribute access",
		"echo(open('/etc/passwd'), 1)":  "a call is not a literal",
		"echo(x, 1)":                    `the name "x" is a name`,
		"echo(lambda: 1)":               "a lambda is not a literal",
		"echo(1e999)":                   "does not parse",
		"echo(" + strings.Repeat("[", 40) + strings.Repeat("]", 40) + ")": "nests",
	} {
		_, err = c3.Execute(call, tok)
		refused(call, err, want)
	}
	_, err = c3.Store("big", strings.Repeat("#", 65<<10))
	refused("code over MaxUploadSize", err, "exceeds this node's MaxUploadSize of 64 KB")
	// Code that does not load, or lacks the function called: as in the
	// original, the execute succeeds and the error is its output.
	bad, err := c3.Store("syntax", "def f(:\n    pass\n")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ call, token, want string }{
		{"f()", bad, "SyntaxError"},
		{"missing()", tok, "missing"},
	} {
		id, err := c3.Execute(tc.call, tc.token)
		if err != nil {
			t.Fatalf("execute %s: %v", tc.call, err)
		}
		c3.Open(id)
		if got := string(recvMsg(t, c3, compat.Error)); !strings.HasPrefix(got, "function failed to load: ") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: error %q", tc.call, got)
		}
		if got := string(recvMsg(t, c3, compat.FunctionErr)); got != "function dead" {
			t.Errorf("%s: end %q", tc.call, got)
		}
		c3.Close(id)
		c3.Open(id)
		if got := string(recvMsg(t, c3, compat.FunctionErr)); !strings.HasPrefix(got, "no function exists with id: ") {
			t.Errorf("%s: a second open: %q", tc.call, got)
		}
	}

	// An unknown request after a valid one: answered, and the
	// connection goes on, as the original's.
	c3.NetConn().Write([]byte{9, 0, 0, 0, 2, 'h', 'i'})
	if _, err := c3.Store("again", "x = 1\n"); err == nil || !strings.Contains(err.Error(), "invalid request: type 9") {
		t.Errorf("an unknown request: %v", err)
	}
	if _, err := c3.Store("again", "x = 1\n"); err != nil {
		t.Errorf("a store after an unknown request: %v", err)
	}

	// Oversized frames: refused on their header, with the error, and
	// the connection closed.
	raw := func(frame []byte, response bool) []byte {
		t.Helper()
		nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		nc.Write(frame)
		var all bytes.Buffer
		all.ReadFrom(nc)
		return all.Bytes()
	}
	if got := raw([]byte{0, 0x7f, 0xff, 0xff, 0xff}, true); len(got) < 6 || got[0] != 0 || got[1] != 1 || !bytes.Contains(got, []byte("exceeds this node's bound")) {
		t.Errorf("a 2 GB store: %q", got)
	}
	if got := raw([]byte{9, 0, 0, 0, 0}, true); len(got) < 6 || got[1] != 1 || !bytes.Contains(got, []byte("invalid request")) {
		t.Errorf("an unknown request: %q", got)
	}
	// In a function's messages: an input frame of 1 GB.
	c4 := dialCompat(t, addr, 0)
	id, err = c4.Execute(`echo('hi', 1, {'k': ['x']})`, tok)
	if err != nil {
		t.Fatal(err)
	}
	c4.Open(id)
	recvMsg(t, c4, compat.Output)
	c4.NetConn().Write([]byte{7, 0x40, 0, 0, 0})
	if got := string(recvMsg(t, c4, compat.FunctionErr)); !strings.Contains(got, "message too large") {
		t.Errorf("a 1 GB input: %q", got)
	}
	if _, _, err := c4.RecvOutput(); err == nil {
		t.Error("the connection stays open after a 1 GB input")
	}
	// ... and an unknown message type: answered, the connection goes on.
	c5 := dialCompat(t, addr, 0)
	c5.Open(id)
	c5.NetConn().Write([]byte{0x9, 0, 0, 0, 2, 'h', 'i'})
	if got := string(recvMsg(t, c5, compat.FunctionErr)); got != "invalid msg type" {
		t.Errorf("an unknown message: %q", got)
	}
	c5.SendInput(id, []byte("stop"))
	if got := string(recvMsg(t, c5, compat.Output)); got != "bye" {
		t.Errorf("after the unknown message: %q", got)
	}

	// A Python client framing the protocol as the original's does.
	script := filepath.Join(testutil.RepoRoot(), "e2e", "testdata", "compat", "client.py")
	codeFile := filepath.Join(testutil.TempDir(t), "echo.py")
	os.WriteFile(codeFile, []byte(compatEcho), 0o644)
	host, port, _ := net.SplitHostPort(addr)
	pctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	out, err := exec.CommandContext(pctx, "/usr/bin/python3", script, host, port, codeFile).CombinedOutput()
	cancel()
	if want := "6:py 7 client\n|6:ping|6:bye|4:function dead\n"; err != nil || string(out) != want {
		t.Errorf("the Python client: %v, %q, want %q", err, out, want)
	}

	// The silent client is gone by now (and was not told anything).
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := silent.Read(make([]byte, 1)); err == nil || n != 0 || time.Since(silentAt) > 10*time.Second {
		t.Errorf("a client saying nothing: read %d, %v after %v", n, err, time.Since(silentAt))
	}

	// The CLI's way: bento compat.
	file := codeFile
	if r := bento(t, "a\nstop\n", "compat", "-i", addr, file, "echo('cli', 2, {'k': [None]})"); r.Code != 0 || r.Stdout != "cli 2 None\nabye" || !strings.Contains(r.Stderr, "function id ") {
		t.Errorf("bento compat: %s", r)
	}
	if r := bento(t, "", "compat", addr, file, "fails()"); r.Code != 1 || !strings.Contains(r.Stderr, "it went wrong") {
		t.Errorf("bento compat of a failing function: %s", r)
	}
	if r := bento(t, "", "compat", addr, file, "os.system('id')"); r.Code != 3 || !strings.Contains(r.Stderr, "server refused the execute: call expression calls an attribute access (.system)") {
		t.Errorf("bento compat with code as the call: %s", r)
	}
}

// TestCompatStarlark: the same listener with a manifest of the starlark
// image runs Starlark functions (the image is the operator's choice).
func TestCompatStarlark(t *testing.T) {
	_, addr := compatDaemon(t, "apis = [\"send\", \"recv\"]\n")
	c := dialCompat(t, addr, 0)
	tok, err := c.Store("echo", compatStarlark)
	if err != nil {
		t.Fatal(err)
	}
	id, err := c.Execute("echo('star', 1, {'k': [False]})", tok)
	if err != nil {
		t.Fatal(err)
	}
	c.Open(id)
	if got := string(recvMsg(t, c, compat.Output)); got != "star 1 False\n" {
		t.Fatalf("greeting %q", got)
	}
	// Another connection opens it while the first still holds it (its
	// client reconnected, say, and the first connection is silently
	// dead): it takes the function over, and the first is closed.
	c2 := dialCompat(t, addr, 0)
	c2.Open(id)
	if _, _, err := c.RecvOutput(); err == nil {
		t.Error("the connection the function was taken from is still open")
	}
	c2.SendInput(id, []byte("again"))
	if got := string(recvMsg(t, c2, compat.Output)); got != "again" {
		t.Fatalf("after the take-over %q", got)
	}
	c = c2
	c.SendInput(id, []byte("stop"))
	if got := string(recvMsg(t, c, compat.Output)); got != "bye" {
		t.Fatalf("return value %q", got)
	}
	if got := string(recvMsg(t, c, compat.FunctionErr)); got != "function dead" {
		t.Fatalf("end %q", got)
	}
}

// compatFlood sends n messages of 100,000 bytes, each beginning with
// its index (six digits), when told to.
const compatFlood = `
def flood(n):
    bento.recv()
    for i in range(n):
        s = str(i)
        bento.send("0" * (6 - len(s)) + s + "x" * 99994)
`

// TestCompatSlowReader: a client that stops reading mid-output is
// dropped after WriteTimeout; it has whole messages, then the end of the
// connection (never a message cut short followed by more), and a later
// Open delivers the rest: nothing lost.
func TestCompatSlowReader(t *testing.T) {
	_, addr := compatDaemonRC(t, "apis = [\"send\", \"recv\"]\n[resources]\noutput = \"12 MB\"\n", "WriteTimeout 1 s\n")
	const n = 100
	c := dialCompat(t, addr, 4096)
	tok, err := c.Store("flood", compatFlood)
	if err != nil {
		t.Fatal(err)
	}
	id, err := c.Execute(fmt.Sprintf("flood(%d)", n), tok)
	if err != nil {
		t.Fatal(err)
	}
	c.Open(id)
	c.SendInput(id, []byte("go"))
	time.Sleep(3 * time.Second) // reading nothing, beyond WriteTimeout
	// What the first connection carried: whole messages of the function,
	// in order, then its end, at most one message cut short by it.
	nc := c.NetConn()
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	raw, err := io.ReadAll(nc)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the connection was not closed after WriteTimeout (%d bytes read)", len(raw))
	}
	index := func(msg []byte) int {
		var i int
		if len(msg) != 100000 || strings.Trim(string(msg[6:]), "x") != "" {
			t.Fatalf("a message of %d bytes is not one of the function's", len(msg))
		}
		if _, err := fmt.Sscanf(string(msg[:6]), "%06d", &i); err != nil {
			t.Fatalf("a message beginning %q is not one of the function's", msg[:6])
		}
		return i
	}
	k := 0 // whole messages the first connection carried
	for len(raw) >= 5 {
		size := int(binary.BigEndian.Uint32(raw[1:5]))
		if raw[0] != compat.Output || size != 36+100000 {
			t.Fatalf("a message of type %d, %d bytes, on the dropped connection: the stream went on after a message cut short", raw[0], size)
		}
		if len(raw) < 5+size {
			break // cut by the connection's end
		}
		if string(raw[5:5+36]) != id || index(raw[5+36:5+size]) != k {
			t.Fatalf("message %d on the dropped connection is not the function's %d-th", k, k)
		}
		k++
		raw = raw[5+size:]
	}
	if k == n {
		t.Fatalf("all %d messages went through a client reading nothing: the test shows nothing", n)
	}
	// The rest, at a later Open: from at most where the first connection
	// stopped (again what its TCP may not have acknowledged), in order.
	c2 := dialCompat(t, addr, 0)
	c2.Open(id)
	next := -1
	for {
		data, typ, err := c2.RecvOutput()
		if err != nil {
			t.Fatalf("after the reopen, at message %d: %v", next, err)
		}
		if typ == compat.FunctionErr {
			if string(data) != "function dead" {
				t.Fatalf("after the reopen: %q", data)
			}
			break
		}
		if typ != compat.Output {
			t.Fatalf("after the reopen: a message of type %d (%q)", typ, trunc(string(data)))
		}
		i := index(data)
		switch {
		case next < 0 && i > k:
			t.Fatalf("the reopen starts at message %d: %d..%d lost (the dropped connection carried %d)", i, k, i-1, k)
		case next >= 0 && i != next:
			t.Fatalf("after the reopen: message %d, want %d", i, next)
		}
		next = i + 1
	}
	if next != n {
		t.Fatalf("the reopen ended at message %d of %d", next, n)
	}
	t.Logf("the dropped connection carried %d whole messages; the reopen sent the rest", k)
}

// TestCompatManifestRefused: bentod refuses to start with a
// CompatManifest the policy does not allow, saying why.
func TestCompatManifestRefused(t *testing.T) {
	dir := testutil.TempDir(t)
	mf := filepath.Join(dir, "compat.toml")
	os.WriteFile(mf, []byte("apis = [\"send\"]\n[resources]\nmemory = \"1 GB\"\n"), 0o644)
	rc := filepath.Join(dir, "bentorc")
	os.WriteFile(rc, []byte(fmt.Sprintf("DataDirectory %s\nMaxMemory 64 MB\nAllowAPI send\nCompatListenAddress 127.0.0.1:1\nCompatManifest %s\n", filepath.Join(dir, "data"), mf)), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(testutil.Binaries(t), "bentod"), "-f", rc, "--verify-config").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "asks for more than this node's policy allows") || !strings.Contains(string(out), "resources.memory") {
		t.Errorf("bentod with a CompatManifest over the policy: %v\n%s", err, out)
	}
	os.WriteFile(mf, []byte("name = \"x\"\n"), 0o644)
	out, err = exec.CommandContext(ctx, filepath.Join(testutil.Binaries(t), "bentod"), "-f", rc, "--verify-config").CombinedOutput()
	if err == nil || !strings.Contains(string(out), `"name" is set by each Execute`) {
		t.Errorf("bentod with a CompatManifest naming the function: %v\n%s", err, out)
	}
}

// TestCompatReload: a reload opens the compat listener, takes a new
// CompatManifest (the next Execute runs under it), and closes the
// listener again.
func TestCompatReload(t *testing.T) {
	dir := testutil.TempDir(t)
	sock := filepath.Join(dir, "control")
	d := startBentod(t, "ControlSocket "+sock+"\nAllowAPI send,recv\n")
	conf, err := os.ReadFile(d.conf)
	if err != nil {
		t.Fatal(err)
	}
	mf := filepath.Join(dir, "compat.toml")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	reload := func(extra string) {
		t.Helper()
		os.WriteFile(d.conf, append(append([]byte{}, conf...), extra...), 0o644)
		if r := bentoctl(t, sock, "reload"); r.Code != 0 {
			t.Fatalf("reload: %s", r)
		}
	}
	run := func() string {
		t.Helper()
		c := dialCompat(t, addr, 0)
		defer c.Disconnect()
		tok, err := c.Store("echo", compatStarlark)
		if err != nil {
			t.Fatal(err)
		}
		id, err := c.Execute("echo('r', 1, {'k': [2]})", tok)
		if err != nil {
			return err.Error()
		}
		c.Open(id)
		return string(recvMsg(t, c, compat.Output))
	}
	os.WriteFile(mf, []byte("apis = [\"send\", \"recv\"]\n"), 0o644)
	reload(fmt.Sprintf("CompatListenAddress %s\nCompatManifest %s\n", addr, mf))
	if got := run(); got != "r 1 2\n" {
		t.Fatalf("after the reload that opened the listener: %q", got)
	}
	// A manifest without recv: the function's recv is refused now.
	os.WriteFile(mf, []byte("apis = [\"send\"]\n"), 0o644)
	reload(fmt.Sprintf("CompatListenAddress %s\nCompatManifest %s\n", addr, mf))
	c := dialCompat(t, addr, 0)
	tok, _ := c.Store("echo", compatStarlark)
	id, err := c.Execute("echo('r', 1, {'k': [2]})", tok)
	if err != nil {
		t.Fatal(err)
	}
	c.Open(id)
	recvMsg(t, c, compat.Output)
	if got := string(recvMsg(t, c, compat.Error)); !strings.Contains(got, "recv") {
		t.Errorf("recv under a manifest without it: %q", got)
	}
	c.Disconnect()
	reload("")
	if nc, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		nc.Close()
		t.Error("the compat listener still listens after a reload without CompatListenAddress")
	}
}
