package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/shard"
	"github.com/torbento/bento/internal/wire"
)

// tempFile writes content to a new file and returns its path.
func tempFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// shardManifest writes the manifest of a small file placed on servers
// (one share each, any 2 rebuild it) and returns its path.
func shardManifest(t *testing.T, servers ...string) string {
	t.Helper()
	m, _, err := shard.Split([]byte("a small secret"), "small.txt", len(servers), 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range servers {
		m.Shares[i].Server = s
		m.Shares[i].InvocationToken = "bento-inv-" + strings.Repeat("A", 43)
		m.Shares[i].ShutdownToken = "bento-sd-" + strings.Repeat("B", 43)
	}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return tempFile(t, string(b))
}

func TestShardUsage(t *testing.T) {
	file := tempFile(t, "x")
	manifest := shardManifest(t, "127.0.0.1:9", "127.0.0.2:9", "127.0.0.3:9")
	manifestBytes, _ := os.ReadFile(manifest)
	fifo := filepath.Join(t.TempDir(), "fifo") // no writer: reading it would wait for ever
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no subcommand", []string{"shard"}, exitUsage, "bento shard put FILE"},
		{"help", []string{"shard", "--help"}, exitOK, ""},
		{"unknown", []string{"shard", "cp"}, exitUsage, `unknown shard command "cp"`},
		{"no boxes", []string{"shard", "put", file}, exitUsage, "--boxes SERVER,SERVER,... or --choose"},
		{"both", []string{"shard", "put", file, "--choose", "--boxes", "a,b"}, exitUsage, "--boxes SERVER,SERVER,... or --choose"},
		{"choose without tor", []string{"shard", "put", file, "--choose"}, exitUsage, "finding boxes needs Tor"},
		{"one box twice, once with its pin", []string{"shard", "put", file, "--boxes", "a:1,b:1,A:1#sha256:" + strings.Repeat("0", 64)}, exitUsage, "--boxes names a:1 twice (as box 1 and 3)"},
		{"k above n", []string{"shard", "put", file, "--boxes", "a:1,b:1", "-k", "3"}, exitUsage, "k = 3: want from 1 to n = 2"},
		{"one box", []string{"shard", "put", file, "--boxes", "a:1"}, exitUsage, "n = 1: want from 2 to 32"},
		{"no file", []string{"shard", "put", file + ".nope", "--boxes", "a:1,b:1"}, exitUsage, "no such file"},
		{"a directory", []string{"shard", "put", t.TempDir(), "--boxes", "a:1,b:1"}, exitUsage, "want a regular file"},
		{"bad lifetime", []string{"shard", "put", file, "--boxes", "a:1,b:1", "--lifetime", "soon"}, exitUsage, "--lifetime"},
		{"not a function", []string{"shard", "put", file, "--boxes", "a:1,b:1", "--function", t.TempDir()}, exitUsage, "is not a function directory"},
		{"get without -o", []string{"shard", "get", file}, exitUsage, "shard get takes MANIFEST -o OUT"},
		{"get of no file", []string{"shard", "get", file + ".nope", "-o", "x"}, exitUsage, "no such file"},
		{"rm of a non-manifest", []string{"shard", "rm", file}, exitUsage, "not a shard manifest"},
		{"get of a directory", []string{"shard", "get", t.TempDir(), "-o", "x"}, exitUsage, "not a shard manifest: want a regular file"},
		{"rm of a pipe", []string{"shard", "rm", fifo}, exitUsage, "not a shard manifest: want a regular file"},
		{"get onto the manifest", []string{"shard", "get", manifest, "-o", manifest}, exitUsage, "is the manifest: the file would replace the only copy of its key and tokens"},
		{"get onto the manifest by another name", []string{"shard", "get", manifest, "-o", filepath.Join(filepath.Dir(manifest), ".", filepath.Base(manifest))}, exitUsage, "is the manifest"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			done := make(chan int, 1)
			go func() { done <- run(c.args, strings.NewReader(""), &out, &errb) }()
			var code int
			select {
			case code = <-done:
			case <-time.After(20 * time.Second):
				t.Fatalf("bento %s still runs after 20 s", strings.Join(c.args, " "))
			}
			if code != c.code || !strings.Contains(errb.String(), c.want) {
				t.Errorf("bento %s: exit %d, stderr %q; want %d and %q", strings.Join(c.args, " "), code, errb.String(), c.code, c.want)
			}
		})
	}
	// Nothing was written beside the file by the refusals.
	if _, err := os.Stat(file + ".shard"); err == nil {
		t.Error("a refused put wrote a manifest")
	}
	if b, _ := os.ReadFile(manifest); !bytes.Equal(b, manifestBytes) {
		t.Error("a refused get changed the manifest")
	}
}

// TestShardTooLarge: a share bigger than the Dropbox holds, or shares
// beyond shard's limits, are refused before any box is asked, and before
// the file is read (a careless put of a large file does not hold it in
// memory, several times over, only to refuse it).
func TestShardTooLarge(t *testing.T) {
	big := filepath.Join(t.TempDir(), "big")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	// Sparse: 1 GiB of nothing on disk.
	if err := f.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-k", "2"}, "each share would be 512 MB, and the Dropbox holds at most 15 MB: give a larger -k"},
		{[]string{"-n", "3", "-k", "1", "--boxes", "127.0.0.3:9"}, "at most 2147483648 (2 GiB); give a larger k or a smaller n"},
	} {
		var out, errb bytes.Buffer
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		code := run(append([]string{"shard", "put", big, "--boxes", "127.0.0.1:9,127.0.0.2:9"}, c.args...), strings.NewReader(""), &out, &errb)
		runtime.ReadMemStats(&after)
		if code != exitUsage || !strings.Contains(errb.String(), c.want) {
			t.Errorf("%v: exit %d, %q; want %q", c.args, code, errb.String(), c.want)
		}
		if d := after.TotalAlloc - before.TotalAlloc; d > 16<<20 {
			t.Errorf("%v: %d MB allocated to refuse a 1 GiB file", c.args, d>>20)
		}
	}
}

// TestShardDropbox: the Dropbox bento carries is functions/dropbox, and
// --lifetime replaces its lifetime only.
func TestShardDropbox(t *testing.T) {
	fn, err := dropboxFunction("", "")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"bento.toml": string(fn.Manifest), "main.star": string(fn.Files["main.star"])} {
		b, err := os.ReadFile(filepath.Join("..", "..", "functions", "dropbox", name))
		if err != nil || string(b) != want {
			t.Errorf("the embedded %s differs from functions/dropbox's (%v)", name, err)
		}
	}
	long, err := dropboxFunction("", "2h")
	if err != nil {
		t.Fatal(err)
	}
	f, _ := checkDir(shipped("dropbox"))
	if f == nil || !strings.Contains(string(long.Manifest), `lifetime = "2h"`) || !strings.Contains(string(long.Manifest), `storage = "16 MB"`) {
		t.Errorf("with --lifetime 2h:\n%s", long.Manifest)
	}
	j, _ := json.Marshal(long.Files)
	if !bytes.Contains(j, []byte("main.star")) {
		t.Error("the code went missing")
	}
}

// stallServer says its welcome, starts every session asked for, and then
// sends nothing: a hostile box holding a get.
func stallServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				conn := wire.NewConn(c)
				if f, err := conn.Read(); err == nil {
					f.Release()
					conn.Send(proto.TWelcome, proto.Welcome{Version: proto.Version, Server: "stall"}, nil)
				}
				if f, err := conn.Read(); err == nil {
					f.Release()
					conn.Send(proto.TSession, proto.Session{Session: "s-1"}, nil)
				}
				<-done
			}()
		}
	}()
	return ln.Addr().String()
}

// TestShardGetStalled: boxes that start a session and then say nothing
// cannot hold a get for ever.
func TestShardGetStalled(t *testing.T) {
	m := shardManifest(t, stallServer(t), stallServer(t), stallServer(t))
	start := time.Now()
	var out, errb bytes.Buffer
	code := run([]string{"shard", "get", m, "-o", filepath.Join(t.TempDir(), "out"), "--timeout", "1s"}, strings.NewReader(""), &out, &errb)
	if code != exitConnect || !strings.Contains(errb.String(), "only 0 of the 3 shares could be fetched") || strings.Count(errb.String(), "treated as missing") != 3 {
		t.Errorf("exit %d, %s", code, errb.String())
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the get took %s; each share is given 1 s and its bytes at 20 KB/s", d)
	}
}

// fakeBox is a box for shard put and rm that does as a test says: it
// deploys (or refuses to), answers a put (honestly unless putAnswer),
// and counts shutdowns (refusing them with shutdownErr).
type fakeBox struct {
	addr        string
	deployErr   string                         // refuse the deploy with this message
	instance    string                         // the instance it deploys (default "i-fake")
	putAnswer   func(conn *wire.Conn, got int) // answers a put of got bytes
	shutdownErr string
	stall       bool // answer no shutdown (until bento hangs up)
	// stalling, when set, counts the stalled shutdowns waiting at once
	// (shared by several boxes), and peak the most ever at once.
	stalling, peak *atomic.Int32
	shutdowns      atomic.Int32
	sent           atomic.Int64 // output bytes putAnswer got out
}

func startFakeBox(t *testing.T, setup func(*fakeBox)) *fakeBox {
	t.Helper()
	b := &fakeBox{instance: "i-fake"}
	if setup != nil {
		setup(b)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = ln.Addr().String()
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go b.serve(c)
		}
	}()
	return b
}

func (b *fakeBox) serve(c net.Conn) {
	defer c.Close()
	conn := wire.NewConn(c)
	f, err := conn.Read()
	if err != nil {
		return
	}
	f.Release()
	conn.Send(proto.TWelcome, proto.Welcome{Version: proto.Version, Server: "fake"}, nil)
	if f, err = conn.Read(); err != nil {
		return
	}
	typ := f.Type
	f.Release()
	switch typ {
	case proto.TDeploy:
		if b.deployErr != "" {
			conn.Send(proto.TError, proto.Error{Code: proto.CodeRefused, Message: b.deployErr}, nil)
			return
		}
		conn.Send(proto.TDeployed, proto.Deployed{Instance: b.instance, InvocationToken: "bento-inv-" + strings.Repeat("A", 43),
			ShutdownToken: "bento-sd-" + strings.Repeat("B", 43), Resources: json.RawMessage(`{"lifetime_ns":600000000000}`)}, nil)
	case proto.TInvoke:
		conn.Send(proto.TSession, proto.Session{Session: "s-1"}, nil)
		got := 0
		for {
			f, err := conn.Read()
			if err != nil {
				return
			}
			typ := f.Type
			got += len(f.Body)
			f.Release()
			if typ == proto.TInputEOF {
				break
			}
		}
		if b.putAnswer != nil {
			b.putAnswer(conn, got)
			return
		}
		out := fmt.Sprintf("stored %d bytes\n", got)
		conn.Send(proto.TOutput, proto.Output{Offset: int64(len(out))}, []byte(out))
		conn.Send(proto.TExit, proto.Exit{Status: proto.StatusOK, Offset: int64(len(out))}, nil)
	case proto.TShutdown:
		b.shutdowns.Add(1)
		if b.stall {
			if b.stalling != nil {
				n := b.stalling.Add(1)
				for p := b.peak.Load(); n > p && !b.peak.CompareAndSwap(p, n); p = b.peak.Load() {
				}
				defer b.stalling.Add(-1)
			}
			conn.Read()
			return
		}
		if b.shutdownErr != "" {
			conn.Send(proto.TError, proto.Error{Code: proto.CodeInternal, Message: b.shutdownErr}, nil)
			return
		}
		conn.Send(proto.TOK, nil, nil)
	}
}

// TestShardPutAnswerBounded: a box that answers the put with endless
// output is cut off at once (bento does not gather it into memory), and
// the put fails with every share placed shut down.
func TestShardPutAnswerBounded(t *testing.T) {
	flood := startFakeBox(t, func(b *fakeBox) {
		b.putAnswer = func(conn *wire.Conn, got int) {
			chunk := make([]byte, 1<<20)
			for off := int64(0); off < 256<<20; off += int64(len(chunk)) {
				if err := conn.Send(proto.TOutput, proto.Output{Offset: off + int64(len(chunk))}, chunk); err != nil {
					return
				}
				b.sent.Add(int64(len(chunk)))
			}
			conn.Send(proto.TExit, proto.Exit{Status: proto.StatusOK, Offset: 256 << 20}, nil)
		}
	})
	honest := []*fakeBox{startFakeBox(t, nil), startFakeBox(t, nil)}
	file := tempFile(t, "a small secret")
	var out, errb bytes.Buffer
	code := run([]string{"shard", "put", file, "--boxes", flood.addr + "," + honest[0].addr + "," + honest[1].addr, "--timeout", "10s"}, strings.NewReader(""), &out, &errb)
	if code == exitOK || !strings.Contains(errb.String(), "the Dropbox answered the put with more than 1 KB") || !strings.Contains(errb.String(), "the shares placed were shut down") {
		t.Errorf("exit %d, %s", code, errb.String())
	}
	if n := flood.sent.Load(); n > 64<<20 {
		t.Errorf("the box got %d MB of its answer out before bento hung up", n>>20)
	}
	for i, b := range append([]*fakeBox{flood}, honest...) {
		if b.shutdowns.Load() != 1 {
			t.Errorf("box %d: %d shutdowns, want 1", i, b.shutdowns.Load())
		}
	}
	if _, err := os.Stat(file + ".shard"); err == nil {
		t.Error("a failed put wrote a manifest")
	}
}

// TestShardBoxWordsCleaned: what hostile boxes say (a refusal, an
// instance name, a failed shutdown) reaches the terminal with its
// control characters quoted, in put's failure and undo and in rm.
func TestShardBoxWordsCleaned(t *testing.T) {
	refuses := startFakeBox(t, func(b *fakeBox) { b.deployErr = "\x1b[2Jrefused" })
	sly := startFakeBox(t, func(b *fakeBox) {
		b.instance = "i-\x1b]0;pwned\a"
		b.shutdownErr = "\x1b[31mno"
	})
	honest := startFakeBox(t, nil)
	file := tempFile(t, "a small secret")
	var out, errb bytes.Buffer
	code := run([]string{"shard", "put", file, "--boxes", sly.addr + "," + refuses.addr + "," + honest.addr, "--timeout", "10s"}, strings.NewReader(""), &out, &errb)
	// The sly box's instance name is refused as its deploy's answer (its
	// share is the first failure, exit 8) and it is shut down.
	if code != exitServer || strings.ContainsAny(errb.String(), "\x1b\a") ||
		!strings.Contains(errb.String(), `\x1b[2Jrefused`) || !strings.Contains(errb.String(), `instance i-\x1b]0;pwned\a: the box refused: \x1b[31mno`) {
		t.Errorf("put: exit %d, %q", code, errb.String())
	}
	if sly.shutdowns.Load() != 1 || honest.shutdowns.Load() != 1 {
		t.Errorf("shutdowns: %d and %d, want 1 each", sly.shutdowns.Load(), honest.shutdowns.Load())
	}
	errb.Reset()
	code = run([]string{"shard", "rm", shardManifest(t, sly.addr, honest.addr, refuses.addr)}, strings.NewReader(""), &out, &errb)
	if code != exitConnect || strings.ContainsAny(errb.String(), "\x1b\a") || !strings.Contains(errb.String(), `the box refused: \x1b[31mno`) {
		t.Errorf("rm: exit %d, %q", code, errb.String())
	}
}

// TestShardUndoAtOnce: a failed put shuts down the shares it placed all
// at once, so boxes that stall cost one request's time, not one each.
func TestShardUndoAtOnce(t *testing.T) {
	var boxes []string
	var stalled []*fakeBox
	var stalling, peak atomic.Int32
	for range 3 {
		b := startFakeBox(t, func(b *fakeBox) { b.stall, b.stalling, b.peak = true, &stalling, &peak })
		stalled = append(stalled, b)
		boxes = append(boxes, b.addr)
	}
	boxes = append(boxes, startFakeBox(t, func(b *fakeBox) { b.deployErr = "full" }).addr)
	var out, errb bytes.Buffer
	code := run([]string{"shard", "put", tempFile(t, "x"), "--boxes", strings.Join(boxes, ","), "--timeout", "1s"}, strings.NewReader(""), &out, &errb)
	if code != exitRefused || strings.Count(errb.String(), "it ends when its lifetime does") != 3 {
		t.Errorf("exit %d, %s", code, errb.String())
	}
	for i, b := range stalled {
		if b.shutdowns.Load() != 1 {
			t.Errorf("box %d: %d shutdowns, want 1", i, b.shutdowns.Load())
		}
	}
	// At once, the three stalled shutdowns wait together; one after the
	// other (each given up after --timeout), never more than one does.
	if p := peak.Load(); p != 3 {
		t.Errorf("at most %d of the three stalled shutdowns waited at once: they were not made at once", p)
	}
}

// TestShardPutSays: a put that succeeds says until when the file can be
// rebuilt (a share lasts only as long as its Dropbox: 10 minutes for the
// shipped one), and keeps any file name in its manifest.
func TestShardPutSays(t *testing.T) {
	var boxes []string
	for range 3 {
		boxes = append(boxes, startFakeBox(t, nil).addr)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "a\nb")
	if err := os.WriteFile(file, []byte("a small secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	start := time.Now()
	code := run([]string{"shard", "put", file, "--boxes", strings.Join(boxes, ","), "-o", filepath.Join(dir, "m.shard")}, strings.NewReader(""), &out, &errb)
	if code != exitOK || !strings.Contains(out.String(), "the file can be rebuilt until ") || !strings.Contains(out.String(), " from now; --lifetime for longer") {
		t.Fatalf("exit %d, %s %s", code, out.String(), errb.String())
	}
	m, err := readShardManifest(filepath.Join(dir, "m.shard"))
	if err != nil || m.Name != "a?b" {
		t.Fatalf("manifest: %v %+v", err, m)
	}
	if st, _ := os.Stat(filepath.Join(dir, "m.shard")); st.Mode().Perm() != 0o600 {
		t.Errorf("manifest mode %v", st.Mode())
	}
	out.Reset()
	code = run([]string{"shard", "put", file, "--boxes", strings.Join(boxes, ","), "-o", filepath.Join(dir, "m2.shard"), "--json"}, strings.NewReader(""), &out, &errb)
	var res struct{ Until time.Time }
	if code != exitOK || json.Unmarshal(out.Bytes(), &res) != nil || res.Until.Before(start.Add(10*time.Minute-time.Second)) || res.Until.After(time.Now().Add(10*time.Minute)) {
		t.Errorf("--json: exit %d, %s", code, out.String())
	}
}

func TestShardUntil(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := func(min int, res string) placed {
		return placed{d: &client.Deployed{Resources: json.RawMessage(res)}, at: at.Add(time.Duration(min) * time.Minute)}
	}
	life := func(min int) string { return fmt.Sprintf(`{"lifetime_ns":%d}`, time.Duration(min)*time.Minute) }
	for _, c := range []struct {
		ps   []placed
		k    int
		want time.Time
	}{
		{[]placed{p(0, life(10)), p(0, life(60)), p(0, life(30))}, 2, at.Add(30 * time.Minute)},
		{[]placed{p(0, life(10)), p(0, life(60)), p(0, life(30))}, 3, at.Add(10 * time.Minute)},
		{[]placed{p(0, life(10)), p(0, life(60)), p(0, life(30))}, 1, at.Add(60 * time.Minute)},
		{[]placed{p(5, life(10)), p(0, life(10))}, 2, at.Add(10 * time.Minute)},
		{[]placed{p(0, life(10)), p(0, `{}`)}, 1, time.Time{}},
		{[]placed{p(0, life(10)), p(0, `not json`)}, 1, time.Time{}},
		{[]placed{p(0, life(10))}, 2, time.Time{}},
	} {
		if got := shardUntil(c.ps, c.k); !got.Equal(c.want) {
			t.Errorf("k %d: %v, want %v", c.k, got, c.want)
		}
	}
}

// TestShardPutNeverOverwrites: a manifest that comes to exist while the
// shares are placed (another put to the same -o) is left as it is, and
// this put's shares are shut down.
func TestShardPutNeverOverwrites(t *testing.T) {
	dir := t.TempDir()
	mpath := filepath.Join(dir, "m.shard")
	honest := func(conn *wire.Conn, got int) {
		out := fmt.Sprintf("stored %d bytes\n", got)
		conn.Send(proto.TOutput, proto.Output{Offset: int64(len(out))}, []byte(out))
		conn.Send(proto.TExit, proto.Exit{Status: proto.StatusOK, Offset: int64(len(out))}, nil)
	}
	var boxes []*fakeBox
	var addrs []string
	for i := range 3 {
		b := startFakeBox(t, func(b *fakeBox) {
			if i == 0 {
				b.putAnswer = func(conn *wire.Conn, got int) {
					os.WriteFile(mpath, []byte("another put's manifest"), 0o600)
					honest(conn, got)
				}
			}
		})
		boxes = append(boxes, b)
		addrs = append(addrs, b.addr)
	}
	var out, errb bytes.Buffer
	code := run([]string{"shard", "put", tempFile(t, "a small secret"), "--boxes", strings.Join(addrs, ","), "-o", mpath}, strings.NewReader(""), &out, &errb)
	if code != exitUsage || !strings.Contains(errb.String(), "m.shard was created while the shares were placed") || !strings.Contains(errb.String(), "the shares placed were shut down") {
		t.Errorf("exit %d, %s", code, errb.String())
	}
	if b, _ := os.ReadFile(mpath); string(b) != "another put's manifest" {
		t.Errorf("the manifest was replaced: %q", b)
	}
	for i, b := range boxes {
		if b.shutdowns.Load() != 1 {
			t.Errorf("box %d: %d shutdowns, want 1", i, b.shutdowns.Load())
		}
	}
}

// TestShardGetFramesBounded: boxes that answer a get of a small share
// with one huge frame are hung up on at its header, not read to its end.
func TestShardGetFramesBounded(t *testing.T) {
	var boxes []string
	huge := make([]byte, 16<<20) // allocated before the count below
	for range 3 {
		b := startFakeBox(t, func(b *fakeBox) {
			b.putAnswer = func(conn *wire.Conn, got int) {
				if conn.Send(proto.TOutput, proto.Output{Offset: 16 << 20}, huge) == nil {
					b.sent.Add(16 << 20)
				}
			}
		})
		boxes = append(boxes, b.addr)
	}
	m := shardManifest(t, boxes...)
	var out, errb bytes.Buffer
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	code := run([]string{"shard", "get", m, "-o", filepath.Join(t.TempDir(), "out"), "--timeout", "5s"}, strings.NewReader(""), &out, &errb)
	runtime.ReadMemStats(&after)
	if code == exitOK || strings.Count(errb.String(), "treated as missing") != 3 {
		t.Errorf("exit %d, %s", code, errb.String())
	}
	if d := after.TotalAlloc - before.TotalAlloc; d > 8<<20 {
		t.Errorf("%d MB allocated to refuse three 16 MB frames for shares of %d bytes", d>>20, (len("a small secret")+16+1)/2)
	}
}

// TestShardPutFailsJSON: with --json a failed put says so in one JSON
// object on stderr, every failed share and the undo in it.
func TestShardPutFailsJSON(t *testing.T) {
	honest := startFakeBox(t, nil)
	full := startFakeBox(t, func(b *fakeBox) { b.deployErr = "full" })
	gone := startFakeBox(t, func(b *fakeBox) { b.deployErr = "no room" })
	var out, errb bytes.Buffer
	code := run([]string{"shard", "put", tempFile(t, "x"), "--boxes", honest.addr + "," + full.addr + "," + gone.addr, "--json"}, strings.NewReader(""), &out, &errb)
	var res struct {
		Code         int
		Error        string
		SharesFailed map[string]string `json:"shares_failed"`
		Placed       string
	}
	if err := json.Unmarshal(errb.Bytes(), &res); err != nil || code != exitRefused || res.Code != exitRefused {
		t.Fatalf("exit %d, stderr not one JSON object (%v): %q", code, err, errb.String())
	}
	if res.Error != "server refused: full" || res.SharesFailed["1"] != "the box refused: full" || res.SharesFailed["2"] != "the box refused: no room" || len(res.SharesFailed) != 2 || res.Placed != "the shares placed were shut down" {
		t.Errorf("%+v", res)
	}
	if honest.shutdowns.Load() != 1 || out.Len() != 0 {
		t.Errorf("%d shutdowns of the share placed; stdout %q", honest.shutdowns.Load(), out.String())
	}
}

// TestShardPutMalformedDeploy: a box whose deploy answer could not go
// into the manifest fails its own share, before the share is sent, and
// the put says which box.
func TestShardPutMalformedDeploy(t *testing.T) {
	sent := atomic.Int32{}
	odd := startFakeBox(t, func(b *fakeBox) {
		b.instance = strings.Repeat("i", 600)
		b.putAnswer = func(conn *wire.Conn, got int) { sent.Add(1) }
	})
	honest := []*fakeBox{startFakeBox(t, nil), startFakeBox(t, nil)}
	var out, errb bytes.Buffer
	code := run([]string{"shard", "put", tempFile(t, "x"), "--boxes", honest[0].addr + "," + odd.addr + "," + honest[1].addr}, strings.NewReader(""), &out, &errb)
	if code != exitServer || !strings.Contains(errb.String(), "Share 1 on "+odd.addr) || !strings.Contains(errb.String(), "the box's answer to the deploy cannot go into a manifest: share 1: instance is 600 bytes") {
		t.Errorf("exit %d, %s", code, errb.String())
	}
	if sent.Load() != 0 {
		t.Error("the share was sent to a box whose deploy answer was refused")
	}
	for i, b := range []*fakeBox{honest[0], odd, honest[1]} {
		if b.shutdowns.Load() != 1 {
			t.Errorf("box %d: %d shutdowns, want 1", i, b.shutdowns.Load())
		}
	}
}
