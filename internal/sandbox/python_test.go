package sandbox

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/wire"
)

// needPython skips without Debian's python3, except under CI.
func needPython(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(PythonBinary); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is missing (bash scripts/setup.sh --test installs it)", PythonBinary)
		}
		t.Skipf("%s is missing", PythonBinary)
	}
}

// pyDriver runs the driver on the host (no container: its protocol is
// tested here, the sandbox in e2e) with one end of a socketpair as fd 3.
type pyDriver struct {
	t      *testing.T
	conn   *wire.Conn
	host   *os.File
	exited chan struct{}
	err    error
	cmd    *exec.Cmd
	logs   []string
}

func startDriver(t *testing.T, files map[string]string, entry, fn string) (*pyDriver, *proto.Ready) {
	t.Helper()
	needPython(t)
	dir := t.TempDir()
	drv := filepath.Join(dir, "driver.py")
	if err := os.WriteFile(drv, pythonDriver, 0o644); err != nil {
		t.Fatal(err)
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	host, guest := os.NewFile(uintptr(fds[0]), "host"), os.NewFile(uintptr(fds[1]), "guest")
	cmd := exec.Command(PythonBinary, "-I", "-S", "-B", drv)
	cmd.ExtraFiles = []*os.File{guest}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	guest.Close()
	d := &pyDriver{t: t, conn: wire.NewConn(host), host: host, cmd: cmd, exited: make(chan struct{})}
	go func() { d.err = cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() {
		host.Close()
		select {
		case <-d.exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-d.exited
		}
	})
	b := map[string][]byte{}
	for k, v := range files {
		b[k] = []byte(v)
	}
	ents, body := proto.PackFiles(b)
	init := proto.Init{Version: proto.HostAPIVersion, Name: "t", Entry: entry, Function: fn, Files: ents, MaxBody: 1 << 20, Image: ImagePython}
	if err := d.conn.Send(proto.HInit, init, body); err != nil {
		t.Fatal(err)
	}
	f := d.read()
	if f.Type != proto.HReady {
		t.Fatalf("frame type %d before ready", f.Type)
	}
	var ready proto.Ready
	if err := f.Unmarshal(&ready); err != nil {
		t.Fatal(err)
	}
	return d, &ready
}

func (d *pyDriver) read() *wire.Frame {
	d.t.Helper()
	type res struct {
		f   *wire.Frame
		err error
	}
	ch := make(chan res, 1)
	go func() { f, err := d.conn.Read(); ch <- res{f, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			d.t.Fatalf("reading from the driver: %v", r.err)
		}
		return r.f
	case <-time.After(20 * time.Second):
		d.t.Fatal("the driver sent nothing for 20 s")
	}
	return nil
}

// invoke runs one invocation, answering its host calls with answer
// (which returns the reply's error, result and body); it returns the
// output sent and the Done.
func (d *pyDriver) invoke(inv uint64, args string, answer func(c proto.Call, body []byte) (string, any, []byte)) (string, proto.Done, []byte) {
	d.t.Helper()
	if err := d.conn.Send(proto.HInvoke, proto.HostInvoke{Inv: inv, Args: json.RawMessage(args)}, nil); err != nil {
		d.t.Fatal(err)
	}
	var out strings.Builder
	for {
		f := d.read()
		switch f.Type {
		case proto.HCall:
			var c proto.Call
			if err := f.Unmarshal(&c); err != nil {
				d.t.Fatal(err)
			}
			rep := proto.Reply{ID: c.ID}
			var body []byte
			switch c.Name {
			case "send":
				if c.Inv != inv {
					d.t.Errorf("send of invocation %d during invocation %d", c.Inv, inv)
				}
				out.Write(f.Body)
			case "log":
				var a struct{ Msg string }
				json.Unmarshal(c.Args, &a)
				d.logs = append(d.logs, a.Msg)
			default:
				if answer == nil {
					d.t.Fatalf("unexpected host call %s", c.Name)
				}
				var res any
				rep.Error, res, body = answer(c, f.Body)
				if res != nil {
					rep.Result, _ = json.Marshal(res)
				}
			}
			if err := d.conn.Send(proto.HReply, rep, body); err != nil {
				d.t.Fatal(err)
			}
		case proto.HDone:
			var done proto.Done
			if err := f.Unmarshal(&done); err != nil {
				d.t.Fatal(err)
			}
			return out.String(), done, f.Body
		default:
			d.t.Fatalf("unexpected frame type %d", f.Type)
		}
	}
}

func TestPythonDriverHello(t *testing.T) {
	src := `import json
import helper

def main(name="world", n=1):
    for i in range(n):
        api.send("hello, %s! (%d)\n" % (name, i))
    print("greeted", name)
    return {"greeted": helper.shout(name)}
`
	d, ready := startDriver(t, map[string]string{"main.py": src, "helper.py": "def shout(s):\n    return s.upper()\n"}, "main.py", "main")
	if ready.Error != nil {
		t.Fatalf("load: %v", ready.Error)
	}
	out, done, body := d.invoke(1, `["ann", 2]`, nil)
	if out != "hello, ann! (0)\nhello, ann! (1)\n" || done.Error != nil || string(body) != `{"greeted":"ANN"}` {
		t.Fatalf("got output %q, done %+v, body %q", out, done, body)
	}
	// A thread the function starts sends within its invocation.
	d3, _ := startDriver(t, map[string]string{"main.py": "import threading\ndef main():\n    t = threading.Thread(target=api.send, args=('from a thread\\n',))\n    t.start()\n    t.join()\n"}, "main.py", "main")
	out3, _, _ := d3.invoke(5, `[]`, nil)
	if out3 != "from a thread\n" {
		t.Errorf("a thread's send: %q", out3)
	}
	out, done, body = d.invoke(2, `["ann", 2]`, nil)
	if out != "hello, ann! (0)\nhello, ann! (1)\n" || done.Error != nil || string(body) != `{"greeted":"ANN"}` {
		t.Fatalf("got output %q, done %+v, body %q", out, done, body)
	}
	if len(d.logs) != 2 || d.logs[0] != "greeted ann" {
		t.Errorf("print went to the log as %q", d.logs)
	}
	// Bytes as they are, None as no output.
	d2, _ := startDriver(t, map[string]string{"f.py": "def f(x):\n    return None if x else b'\\x00\\xff'\n"}, "f.py", "f")
	if _, done, body := d2.invoke(1, `[false]`, nil); done.None || string(body) != "\x00\xff" {
		t.Errorf("bytes: %+v %q", done, body)
	}
	if _, done, body := d2.invoke(2, `[true]`, nil); !done.None || len(body) != 0 {
		t.Errorf("None: %+v %q", done, body)
	}
}

func TestPythonDriverErrors(t *testing.T) {
	// A syntax error: at its line, with the file named.
	_, ready := startDriver(t, map[string]string{"main.py": "def main():\n    x = (1,\n    return x\n"}, "main.py", "main")
	if ready.Error == nil || ready.Error.File != "main.py" || ready.Error.Line < 2 || !strings.Contains(ready.Error.Msg, "SyntaxError") {
		t.Fatalf("syntax error: %+v", ready.Error)
	}
	// A missing function.
	_, ready = startDriver(t, map[string]string{"main.py": "x = 1\n"}, "main.py", "main")
	if ready.Error == nil || !strings.Contains(ready.Error.Msg, `no function 'main' defined`) {
		t.Fatalf("missing function: %+v", ready.Error)
	}
	// A runtime error: the innermost frame of the function's own code.
	src := "import lib\n\ndef main():\n    return lib.div(1, 0)\n"
	d, ready := startDriver(t, map[string]string{"main.py": src, "lib.py": "def div(a, b):\n    x = a\n    return x / b\n"}, "main.py", "main")
	if ready.Error != nil {
		t.Fatal(ready.Error)
	}
	_, done, _ := d.invoke(1, `[]`, nil)
	e := done.Error
	if e == nil || e.File != "lib.py" || e.Line != 3 || !strings.Contains(e.Msg, "ZeroDivisionError") || !strings.Contains(e.Backtrace, `File "main.py", line 4, in main`) {
		t.Fatalf("runtime error: %+v", e)
	}
	// A refused host call is an exception the function may catch.
	d, _ = startDriver(t, map[string]string{"main.py": "import bento\ndef main():\n    try:\n        bento.storage.put('k', 'v')\n    except bento.Error as e:\n        return 'caught: %s' % e\n"}, "main.py", "main")
	_, done, body := d.invoke(1, `[]`, func(c proto.Call, _ []byte) (string, any, []byte) {
		return "storage.put: not in the manifest", nil, nil
	})
	if done.Error != nil || string(body) != "caught: storage.put: not in the manifest" {
		t.Fatalf("refused call: %+v %q", done, body)
	}
}

func TestPythonDriverInput(t *testing.T) {
	src := `def main():
    got = []
    if api.poll():
        got.append(api.recv())
    got.append(api.recv())
    if not api.poll():
        got.append(b"none pending")
    return b"|".join(got)
`
	d, _ := startDriver(t, map[string]string{"main.py": src}, "main.py", "main")
	n := 0
	_, done, body := d.invoke(1, `[]`, func(c proto.Call, _ []byte) (string, any, []byte) {
		var a struct {
			Poll bool `json:"poll"`
		}
		json.Unmarshal(c.Args, &a)
		n++
		switch {
		case c.Name != "recv":
			return "unexpected " + c.Name, nil, nil
		case n == 1 && a.Poll:
			return "", nil, []byte("first")
		case n == 2 && !a.Poll:
			return "", nil, []byte("second")
		case n == 3 && a.Poll:
			return "", map[string]bool{"timeout": true}, nil
		}
		return "unexpected call", nil, nil
	})
	if done.Error != nil || string(body) != "first|second|none pending" {
		t.Fatalf("got %+v %q", done, body)
	}
}

func TestPythonDriverCancel(t *testing.T) {
	d, _ := startDriver(t, map[string]string{"main.py": "def main():\n    while True:\n        pass\n"}, "main.py", "main")
	if err := d.conn.Send(proto.HInvoke, proto.HostInvoke{Inv: 7, Args: json.RawMessage(`[]`)}, nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if err := d.conn.Send(proto.HCancel, proto.Cancel{Inv: 7, Reason: "cpu time limit exceeded"}, nil); err != nil {
		t.Fatal(err)
	}
	f := d.read()
	var done proto.Done
	if f.Type != proto.HDone || f.Unmarshal(&done) != nil || done.Error == nil || done.Error.Msg != "cpu time limit exceeded" || (done.Error.Line != 2 && done.Error.Line != 3) {
		t.Fatalf("frame %d: %+v", f.Type, done.Error)
	}
}

// TestPythonDriverBadFrames: a frame longer than the driver's bound ends
// it, before it allocates anything of that size.
func TestPythonDriverBadFrames(t *testing.T) {
	d, _ := startDriver(t, map[string]string{"main.py": "def main():\n    pass\n"}, "main.py", "main")
	// A length of 1 GB, then nothing.
	if _, err := d.host.Write([]byte{0x40, 0, 0, 0, proto.HReply}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.exited:
		if d.err == nil {
			t.Fatal("the driver accepted a 1 GB frame")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the driver did not end after a 1 GB frame")
	}
}

// TestFindPython: what the python image mounts of this host, and the
// refusal without python3.
func TestFindPython(t *testing.T) {
	needPython(t)
	img, err := FindPython()
	if err != nil {
		t.Fatal(err)
	}
	targets := map[string]bindMount{}
	for _, m := range img.Mounts {
		targets[m.Target] = m
		if strings.HasPrefix(m.Source, "/root") || strings.Contains(m.Source, "pyenv") {
			t.Errorf("mounts %s from a home directory", m.Source)
		}
	}
	for _, want := range []string{img.Binary, "/usr/lib/python3.11", "/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libc.so.6",
		"/lib/x86_64-linux-gnu/libssl.so.3", "/usr/lib/python3/dist-packages/requests", "/usr/lib/python3/dist-packages/urllib3", caBundle} {
		if _, ok := targets[want]; !ok {
			t.Errorf("%s is not mounted", want)
		}
	}
	if img.Binary != "/usr/bin/python3.11" {
		t.Errorf("the interpreter is %s", img.Binary)
	}
	for _, not := range []string{"/usr/lib/python3/dist-packages", "/etc", "/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu/libdbus-1.so.3"} {
		if _, ok := targets[not]; ok {
			t.Errorf("%s is mounted whole", not)
		}
	}
	for _, m := range img.ociMounts() {
		if m.Type != "bind" || !slices.Contains(m.Options, "ro") || !slices.Contains(m.Options, "nosuid") || !slices.Contains(m.Options, "nodev") {
			t.Errorf("mount %+v is not a read-only bind without devices and set-uid", m)
		}
	}
	// The container's process is the interpreter with the driver, under
	// its own seccomp list.
	s := &Sandbox{python: img, rootfs: "/x"}
	spec := s.buildSpec("x", Limits{CPU: 1, Memory: 64 << 20, Image: ImagePython})
	if strings.Join(spec.Process.Args, " ") != img.Binary+" -I -S -B /bento/driver.py" {
		t.Errorf("args %q", spec.Process.Args)
	}
	var clone, clone3, sock bool
	for _, r := range spec.Linux.Seccomp.Syscalls {
		switch {
		case slices.Contains(r.Names, "clone"):
			clone = r.Action == "SCMP_ACT_ALLOW" && len(r.Args) == 1 && r.Args[0].Op == "SCMP_CMP_MASKED_EQ" && r.Args[0].Value == cloneThread|cloneNewNS && r.Args[0].ValueTwo == cloneThread
		case slices.Contains(r.Names, "clone3"):
			clone3 = r.Action == "SCMP_ACT_ERRNO" && r.ErrnoRet != nil && *r.ErrnoRet == 38
		case slices.Contains(r.Names, "socket"):
			sock = len(r.Args) == 1 && r.Args[0].Index == 0 && r.Args[0].Value == 1 && r.Args[0].Op == "SCMP_CMP_EQ"
		}
		for _, n := range r.Names {
			if r.Action == "SCMP_ACT_ALLOW" && len(r.Args) == 0 && slices.Contains([]string{"fork", "vfork", "connect", "bind", "ptrace", "mount", "socket", "clone", "kill", "setuid",
				"fcntl", "sendto", "recvfrom", "sendmsg", "recvmsg", "ioctl", "unshare", "setns", "io_uring_setup", "memfd_create", "execveat", "personality", "process_vm_writev", "sendmmsg", "recvmmsg", "flock"}, n) {
				t.Errorf("%s allowed without condition", n)
			}
		}
	}
	if !clone || !clone3 || !sock {
		t.Errorf("seccomp rules: clone %v, clone3 %v, socket %v", clone, clone3, sock)
	}
	// The host's activity counters, readable by a python function's
	// open(), are masked.
	for _, p := range []string{"/proc/softirqs", "/proc/vmstat", "/proc/pressure", "/proc/sys/fs/file-nr", "/proc/loadavg"} {
		if !slices.Contains(spec.Linux.MaskedPaths, p) {
			t.Errorf("%s is not masked", p)
		}
	}
	// A starlark container's spec is unchanged.
	if spec := s.buildSpec("x", Limits{CPU: 1, Memory: 64 << 20}); spec.Process.Args[0] != "/bento-runner" || len(spec.Mounts) != 3 {
		t.Errorf("a starlark container: %q, %d mounts", spec.Process.Args, len(spec.Mounts))
	}

	old := PythonBinary
	PythonBinary = "/nonexistent/python3"
	defer func() { PythonBinary = old }()
	if _, err := FindPython(); err == nil || !strings.Contains(err.Error(), "apt-get install python3 python3-requests") || !strings.Contains(err.Error(), "remove python from Image") {
		t.Errorf("without python3: %v", err)
	}
}

// FuzzPythonDriverFrames feeds the driver, once loaded, arbitrary bytes
// as frames from bentod: it answers with well-formed frames or ends, and
// ends within seconds once its input ends; it never hangs on a frame that
// announces more than it sends or more than its bound. (Each input
// starts an interpreter: slow, but the driver's decoder is Python.)
func FuzzPythonDriverFrames(f *testing.F) {
	frame := func(typ uint8, hdr string, body string) []byte {
		return (&wire.Frame{Type: typ, Header: []byte(hdr), Body: []byte(body)}).Encode(nil)
	}
	f.Add(frame(proto.HInvoke, `{"inv":1,"args":["x"]}`, ""))
	f.Add(frame(proto.HInvoke, `{"inv":1,"args":{"a":1}}`, ""))
	f.Add(frame(proto.HReply, `{"id":99,"error":"no such call"}`, "body"))
	f.Add(frame(proto.HCancel, `{"inv":5,"reason":"x"}`, ""))
	f.Add(frame(proto.HInvoke, `[1,2]`, ""))
	f.Add(frame(proto.HInvoke, `{"inv":1e400}`, ""))
	f.Add(frame(proto.HInvoke, `{"inv":NaN}`, ""))
	f.Add(frame(proto.HInvoke, `{"inv":"x"}`, ""))
	f.Add([]byte{0, 0, 0, 9, proto.HInvoke, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4})
	f.Add([]byte{0x7f, 0xff, 0xff, 0xff, proto.HReply})
	f.Add(frame(99, `{}`, ""))
	f.Fuzz(func(t *testing.T, in []byte) {
		d, ready := startDriver(t, map[string]string{"main.py": "def main(*a):\n    return repr(a)\n"}, "main.py", "main")
		if ready.Error != nil {
			t.Fatal(ready.Error)
		}
		// The descriptor is taken here, not in the writer: the test's
		// clean-up closes the file, and the writer is waited for below.
		fd := int(d.host.Fd())
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			d.host.Write(in)
			// Then nothing more: the driver must end.
			syscall.Shutdown(fd, syscall.SHUT_WR)
		}()
		defer func() {
			// A driver that stopped reading would hold the writer: end it.
			d.cmd.Process.Kill()
			<-wrote
		}()
		read := make(chan error, 1)
		go func() {
			for {
				fr, err := d.conn.Read()
				if err != nil {
					read <- nil
					return
				}
				if fr.Type != proto.HDone && fr.Type != proto.HCall {
					read <- fmt.Errorf("the driver sent frame type %d", fr.Type)
					return
				}
				var m map[string]any
				if err := fr.Unmarshal(&m); err != nil {
					read <- fmt.Errorf("the driver sent a bad header: %v", err)
					return
				}
			}
		}()
		select {
		case <-d.exited:
		case <-time.After(15 * time.Second):
			t.Fatal("the driver did not end after its input ended")
		}
		if err := <-read; err != nil {
			t.Fatal(err)
		}
	})
}

// TestPythonDriverHostileErrors: an exception whose message cannot be
// read, a recursion without end, a return value that is not JSON: each
// an error of the invocation, the driver serving the next.
func TestPythonDriverHostileErrors(t *testing.T) {
	src := `class Bad(Exception):
    def __str__(self):
        raise RuntimeError("no")

def main(what):
    if what == "bad":
        raise Bad()
    if what == "deep":
        return main(what)
    if what == "set":
        return {1, 2}
    return "fine"
`
	d, _ := startDriver(t, map[string]string{"main.py": src}, "main.py", "main")
	for _, tc := range []struct{ arg, want string }{
		{"bad", "Bad"},
		{"deep", "RecursionError: maximum recursion depth exceeded"},
		{"set", "return value: Object of type set is not JSON serializable"},
	} {
		_, done, _ := d.invoke(1, `["`+tc.arg+`"]`, nil)
		if done.Error == nil || !strings.Contains(done.Error.Msg, tc.want) {
			t.Errorf("%s: %+v", tc.arg, done.Error)
		}
		if _, done, body := d.invoke(2, `["ok"]`, nil); done.Error != nil || string(body) != "fine" {
			t.Fatalf("after %s: %+v %q", tc.arg, done.Error, body)
		}
	}
}

// seccompAllows evaluates an OCI seccomp profile as libseccomp does for
// one call: allowed when some rule naming it allows it with all of its
// argument conditions met.
func seccompAllows(p *ociSeccomp, name string, args map[uint]uint64) bool {
	for _, r := range p.Syscalls {
		if !slices.Contains(r.Names, name) || r.Action != "SCMP_ACT_ALLOW" {
			continue
		}
		ok := true
		for _, a := range r.Args {
			v := args[a.Index]
			switch a.Op {
			case "SCMP_CMP_EQ":
				ok = ok && v == a.Value
			case "SCMP_CMP_NE":
				ok = ok && v != a.Value
			case "SCMP_CMP_MASKED_EQ":
				ok = ok && v&a.Value == a.ValueTwo
			default:
				panic("operator " + a.Op)
			}
		}
		if ok {
			return true
		}
	}
	return p.DefaultAction == "SCMP_ACT_ALLOW"
}

// TestPythonSeccompArgs checks the python image's argument rules call by
// call, as a function's native code (ctypes) could make them: with any
// arguments, upper bits of 32-bit ones included.
func TestPythonSeccompArgs(t *testing.T) {
	const (
		cloneVM, cloneFS, cloneFiles, cloneSighand = 0x100, 0x200, 0x400, 0x800
		thread                                     = cloneVM | cloneFS | cloneFiles | cloneSighand | cloneThread | 0x00080000 | 0x00100000 | 0x00200000 | 0x01000000 // glibc's pthread_create
		fSetlease, fNotify, fDupfdCloexec          = 1024, 1026, 1030
		fGetfl, fSetfl, fSetlk, fOFDSetlk          = 3, 4, 6, 37
		msgPeek, msgDontwait, msgNosignal          = 2, 0x40, 0x4000
	)
	p := pythonSeccompProfile()
	for _, tc := range []struct {
		name string
		args map[uint]uint64
		want bool
	}{
		{"clone", map[uint]uint64{0: thread}, true},
		{"clone", map[uint]uint64{0: 0x01200011}, false},          // fork: CLONE_CHILD_SETTID|CLONE_CHILD_CLEARTID|SIGCHLD
		{"clone", map[uint]uint64{0: thread | 0x40000000}, false}, // CLONE_NEWNET
		{"clone", map[uint]uint64{0: thread | 0x10000000}, false}, // CLONE_NEWUSER
		{"clone", map[uint]uint64{0: thread | 0x00020000}, false}, // CLONE_NEWNS
		{"clone3", nil, false},
		{"unshare", map[uint]uint64{0: 0x40000000}, false},
		{"setns", nil, false},
		{"fcntl", map[uint]uint64{1: fGetfl}, true},
		{"fcntl", map[uint]uint64{1: fSetfl}, true},
		{"fcntl", map[uint]uint64{1: fSetlk}, true},
		{"fcntl", map[uint]uint64{1: fOFDSetlk}, true},
		{"fcntl", map[uint]uint64{1: fDupfdCloexec}, true},
		{"fcntl", map[uint]uint64{1: fSetlease}, false},
		{"fcntl", map[uint]uint64{1: 1<<32 | fSetlease}, false}, // the kernel reads the lower half only
		{"fcntl", map[uint]uint64{1: 1<<32 | fGetfl}, false},
		{"fcntl", map[uint]uint64{1: fNotify}, false},
		{"sendto", map[uint]uint64{3: msgNosignal}, true},
		{"sendto", map[uint]uint64{3: msgNosignal | msgOOB}, false},
		{"sendto", map[uint]uint64{3: 1<<40 | msgOOB}, false},
		{"recvfrom", map[uint]uint64{3: msgPeek | msgDontwait}, true},
		{"recvfrom", map[uint]uint64{3: msgOOB}, false},
		{"sendmsg", map[uint]uint64{2: 0}, false}, // descriptors (SCM_RIGHTS) travel with it alone
		{"recvmsg", map[uint]uint64{2: msgPeek}, true},
		{"sendmsg", map[uint]uint64{2: msgOOB}, false},
		{"recvmsg", map[uint]uint64{2: msgOOB | msgPeek}, false},
		{"sendmmsg", nil, false},
		{"socket", map[uint]uint64{0: afUnix}, true},
		{"socket", map[uint]uint64{0: 1<<32 | afUnix}, false},
		{"socket", map[uint]uint64{0: 2}, false}, // AF_INET
		{"socketpair", map[uint]uint64{0: 2}, false},
		{"ioctl", map[uint]uint64{1: ioctlFIONBIO}, true},
		{"ioctl", map[uint]uint64{1: 0x5412}, false}, // TIOCSTI
		{"io_uring_setup", nil, false},
		{"memfd_create", nil, false},
		{"execveat", nil, false},
		{"ptrace", nil, false},
		{"process_vm_writev", nil, false},
		{"personality", nil, false},
		{"flock", nil, false},
		{"sysinfo", nil, false}, // the host's uptime, load and memory
	} {
		if got := seccompAllows(p, tc.name, tc.args); got != tc.want {
			t.Errorf("%s %#x: allowed %v, want %v", tc.name, tc.args, got, tc.want)
		}
	}
}
