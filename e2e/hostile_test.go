package e2e

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/wire"
)

// TestMalformedClients sends bentod garbage, oversized frames, the wrong
// protocol version and bad requests, and checks each gets a clear error (or
// a closed connection) while bentod keeps serving.
func TestMalformedClients(t *testing.T) {
	s := newSiege(t, "MaxUploadSize 64 KB\n")
	s.while(t, func() { malformedClients(t, s.d) })
}

func malformedClients(t *testing.T, d *daemon) {
	dirs, _ := os.ReadDir(d.DataDir + "/instances")
	dial := func() (*wire.Conn, net.Conn) {
		nc, err := net.Dial("tcp", d.Addr)
		if err != nil {
			t.Fatal(err)
		}
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		return wire.NewConn(nc), nc
	}
	hello := func() (*wire.Conn, net.Conn) {
		c, nc := dial()
		c.Send(proto.THello, proto.Hello{Version: proto.Version}, nil)
		if f, err := c.Read(); err != nil || f.Type != proto.TWelcome {
			t.Fatalf("hello: %v %v", f, err)
		}
		return c, nc
	}
	errorOf := func(c *wire.Conn) string {
		f, err := c.Read()
		if err != nil {
			return "closed: " + err.Error()
		}
		var e proto.Error
		f.Unmarshal(&e)
		return e.Code + ": " + e.Message
	}

	// HTTP instead of Bento.
	_, nc := dial()
	nc.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	b, _ := io.ReadAll(nc)
	if len(b) > 0 && !bytes.Contains(b, []byte("too_large")) && !bytes.Contains(b, []byte("hello")) {
		t.Errorf("HTTP request got %q", b)
	}
	nc.Close()

	// Wrong protocol version.
	c, nc := dial()
	c.Send(proto.THello, proto.Hello{Version: 99}, nil)
	if e := errorOf(c); !strings.Contains(e, "version 99 not supported") {
		t.Errorf("wrong version: %s", e)
	}
	nc.Close()

	// A frame announcing 1 GB.
	c, nc = hello()
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], 1<<30)
	nc.Write(hdr[:])
	if e := errorOf(c); !strings.Contains(e, "too_large") {
		t.Errorf("oversized frame: %s", e)
	}
	nc.Close()

	// An upload over MaxUploadSize.
	c, nc = hello()
	ents, body := proto.PackFiles(map[string][]byte{"main.star": bytes.Repeat([]byte("#"), 100<<10)})
	c.Send(proto.TDeploy, proto.Deploy{Manifest: "name = \"big\"\n", Files: ents}, body)
	if e := errorOf(c); !strings.Contains(e, "too_large") || !strings.Contains(e, "MaxUploadSize") {
		t.Errorf("oversized upload: %s", e)
	}
	nc.Close()

	// Files whose sizes do not match the data, and a path in a name.
	for _, files := range [][]proto.FileEntry{{{Name: "main.star", Size: 999}}, {{Name: "../../etc/passwd", Size: 1}}} {
		c, nc = hello()
		c.Send(proto.TDeploy, proto.Deploy{Manifest: "name = \"x\"\n", Files: files}, []byte("x"))
		if e := errorOf(c); !strings.HasPrefix(e, "bad_request") {
			t.Errorf("bad bundle %v: %s", files, e)
		}
		nc.Close()
	}

	// Malformed JSON header and an unknown frame type.
	c, nc = hello()
	c.Write(&wire.Frame{Type: proto.TInvoke, Header: []byte("{not json")})
	if e := errorOf(c); !strings.HasPrefix(e, "bad_request") {
		t.Errorf("bad JSON: %s", e)
	}
	nc.Close()
	c, nc = hello()
	c.Send(200, nil, nil)
	if e := errorOf(c); !strings.Contains(e, "unexpected frame type 200") {
		t.Errorf("unknown frame: %s", e)
	}
	nc.Close()

	// A client that vanishes mid-upload.
	_, nc = hello()
	binary.BigEndian.PutUint32(hdr[:], 50<<10)
	nc.Write(hdr[:])
	nc.Write([]byte{proto.TDeploy, 0, 0, 0, 2, '{', '}'})
	nc.Close()

	// bentod still serves, and no instance was left half-made.
	if r := bento(t, "", "run", d.Addr, fn("hello")); r.Code != 0 {
		t.Fatalf("after the hostile clients: %s", r)
	}
	if ents, _ := os.ReadDir(d.DataDir + "/instances"); len(ents) > len(dirs) {
		t.Errorf("%d instance directories remain, %d before", len(ents), len(dirs))
	}
}

// testReload narrows the policy with SIGHUP and checks that running
// functions meet the new policy at their next host call.
func testReload(t *testing.T) {
	body := []byte("page")
	base, port := webServer(t, body)
	d := startBentod(t, netPolicy)
	dir := t.TempDir()
	os.WriteFile(dir+"/bento.toml", []byte("name = \"fetchsvc\"\nmode = \"service\"\napis = [\"http.fetch\"]\ndestinations = [\"accept 127.0.0.1:*\"]\n"), 0o644)
	os.WriteFile(dir+"/main.star", []byte("def main(url):\n    return http.fetch(url).body\n"), 0o644)
	dep := deployCLI(t, d, dir)
	if r := bento(t, "", "invoke", d.Addr, dep.InvocationToken, base+"/page"); r.Code != 0 || r.Stdout != "page" {
		t.Fatalf("before reload: %s", r)
	}
	// First match wins: the new reject goes before the accept.
	rc, _ := os.ReadFile(d.conf)
	os.WriteFile(d.conf, []byte(strings.Replace(string(rc), "DestinationPolicy accept 127.0.0.1:*", "DestinationPolicy reject 127.0.0.1:"+strconv.Itoa(port)+", accept 127.0.0.1:*", 1)), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(d.log.String(), "policy reloaded") {
		if time.Now().After(deadline) {
			t.Fatal("no reload logged")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if r := bento(t, "", "invoke", d.Addr, dep.InvocationToken, base+"/page"); r.Code != 1 || !strings.Contains(r.Stderr, "node's DestinationPolicy") {
		t.Fatalf("after reload: %s", r)
	}
	// A broken file is reported and the running policy kept.
	os.WriteFile(d.conf, []byte("Bogus 1\n"), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	time.Sleep(300 * time.Millisecond)
	if !strings.Contains(d.log.String(), "reload failed") {
		t.Fatal("a broken configuration was not reported")
	}
	if r := bento(t, "", "run", d.Addr, fn("hello")); r.Code != 0 {
		t.Fatalf("after a failed reload: %s", r)
	}
}
