package runner

import (
	"encoding/json"
	"net"
	"strings"
	"testing"

	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/wire"
)

// fakeHost plays bentod: it loads files, then answers host calls with
// handle until the invocation is done.
type fakeHost struct {
	t    *testing.T
	conn *wire.Conn
}

func startRunner(t *testing.T, files map[string]string, steps uint64) (*fakeHost, *proto.Ready) {
	t.Helper()
	a, b := net.Pipe()
	go Serve(wire.NewConn(b))
	h := &fakeHost{t: t, conn: wire.NewConn(a)}
	t.Cleanup(func() { a.Close() })
	fs := map[string][]byte{}
	for k, v := range files {
		fs[k] = []byte(v)
	}
	ents, body := proto.PackFiles(fs)
	if err := h.conn.Send(proto.HInit, proto.Init{Version: proto.HostAPIVersion, Entry: "main.star", Function: "main", Steps: steps, Files: ents}, body); err != nil {
		t.Fatal(err)
	}
	f, err := h.conn.Read()
	if err != nil || f.Type != proto.HReady {
		t.Fatalf("ready: %v %v", f, err)
	}
	var r proto.Ready
	f.Unmarshal(&r)
	return h, &r
}

// invoke runs one invocation; handle answers each host call.
func (h *fakeHost) invoke(args string, handle func(c proto.Call, body []byte) (proto.Reply, []byte)) (proto.Done, []byte, []string) {
	h.t.Helper()
	h.conn.Send(proto.HInvoke, proto.HostInvoke{Inv: 7, Args: json.RawMessage(args)}, nil)
	var calls []string
	for {
		f, err := h.conn.Read()
		if err != nil {
			h.t.Fatal(err)
		}
		switch f.Type {
		case proto.HCall:
			var c proto.Call
			f.Unmarshal(&c)
			if c.Inv != 7 {
				h.t.Fatalf("call for invocation %d", c.Inv)
			}
			calls = append(calls, c.Name)
			rep, body := handle(c, f.Body)
			rep.ID = c.ID
			h.conn.Send(proto.HReply, rep, body)
		case proto.HDone:
			var d proto.Done
			f.Unmarshal(&d)
			return d, f.Body, calls
		}
	}
}

func TestInvokeAndHostCalls(t *testing.T) {
	h, r := startRunner(t, map[string]string{
		"main.star": `load("lib.star", "twice")
def main(n, s):
    bento.send(twice(s))
    v = storage.get("k")
    x = bento.recv()
    return {"n": n + 1, "stored": str(v), "got": str(x)}
`,
		"lib.star": "def twice(s):\n    return s + s\n",
	}, 0)
	if r.Error != nil {
		t.Fatal(r.Error)
	}
	var sent []byte
	d, body, calls := h.invoke(`[41, "ab"]`, func(c proto.Call, b []byte) (proto.Reply, []byte) {
		switch c.Name {
		case "send":
			sent = b
		case "storage.get":
			return proto.Reply{Result: json.RawMessage(`{"found":true}`)}, []byte("val")
		case "recv":
			return proto.Reply{}, []byte("input")
		}
		return proto.Reply{}, nil
	})
	if d.Error != nil {
		t.Fatal(d.Error)
	}
	if string(sent) != "abab" || strings.Join(calls, ",") != "send,storage.get,recv" {
		t.Errorf("sent %q, calls %v", sent, calls)
	}
	if string(body) != `{"got":"input","n":42,"stored":"val"}` {
		t.Errorf("return value %s", body)
	}
}

func TestDeniedCallIsLocatedError(t *testing.T) {
	h, _ := startRunner(t, map[string]string{"main.star": "def main():\n    x = 1\n    http.fetch(\"http://x/\")\n"}, 0)
	d, _, _ := h.invoke(`[]`, func(c proto.Call, b []byte) (proto.Reply, []byte) {
		return proto.Reply{Error: "permission denied: nope"}, nil
	})
	if d.Error == nil || d.Error.Line != 3 || d.Error.File != "main.star" || !strings.Contains(d.Error.Msg, "permission denied") {
		t.Fatalf("error = %+v", d.Error)
	}
}

func TestLoadErrors(t *testing.T) {
	tests := map[string]string{
		"def main(:\n":                 "main.star:1",
		"x = 1\n":                      `no function "main"`,
		"main = 3\n":                   "not a function",
		"load(\"nope.star\", \"x\")\n": "no such file",
		"def main():\n    return 1\nfail(\"at load\")\n": "at load",
	}
	for src, want := range tests {
		_, r := startRunner(t, map[string]string{"main.star": src}, 0)
		if r.Error == nil || !strings.Contains(r.Error.Error(), want) {
			t.Errorf("%q: error %v, want %q", src, r.Error, want)
		}
	}
}

func TestStepLimit(t *testing.T) {
	h, _ := startRunner(t, map[string]string{"main.star": "def main():\n    while True:\n        pass\n"}, 10000)
	d, _, _ := h.invoke(`[]`, nil)
	if d.Error == nil || !strings.Contains(d.Error.Msg, "step limit (10000 steps) exceeded") {
		t.Fatalf("error = %+v", d.Error)
	}
}

func TestReturnValues(t *testing.T) {
	tests := []struct{ expr, want string }{
		{`"text"`, "text"}, {`b"\x00\x01"`, "\x00\x01"}, {`[1, 2.5, None, True]`, `[1,2.5,null,true]`},
	}
	for _, tc := range tests {
		h, _ := startRunner(t, map[string]string{"main.star": "def main():\n    return " + tc.expr + "\n"}, 0)
		_, body, _ := h.invoke(`[]`, nil)
		if string(body) != tc.want {
			t.Errorf("return %s = %q, want %q", tc.expr, body, tc.want)
		}
	}
	h, _ := startRunner(t, map[string]string{"main.star": "def main():\n    return None\n"}, 0)
	if d, _, _ := h.invoke(`[]`, nil); !d.None {
		t.Error("None return not flagged")
	}
}

func TestBadArgs(t *testing.T) {
	h, _ := startRunner(t, map[string]string{"main.star": "def main():\n    return 1\n"}, 0)
	d, _, _ := h.invoke(`{"not":"a list"}`, nil)
	if d.Error == nil || !strings.Contains(d.Error.Msg, "bad invocation arguments") {
		t.Fatalf("error = %+v", d.Error)
	}
}

func FuzzArgsFromJSON(f *testing.F) {
	f.Add([]byte(`["x", 1, 2.5, null, true, [1, {"a": []}]]`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"a":1}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		args, err := argsFromJSON(raw)
		if err != nil {
			return
		}
		for _, a := range args {
			if a == nil {
				t.Fatal("nil Starlark value")
			}
			_ = a.String()
		}
	})
}
