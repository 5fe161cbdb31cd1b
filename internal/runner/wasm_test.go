package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/tetratelabs/wazero"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/wire"
)

// buildGo builds the Go program in dir (relative to the repository) with
// GOOS=wasip1 GOARCH=wasm, once per test binary.
func buildGo(t *testing.T, dir string) []byte {
	t.Helper()
	builtMu.Lock()
	defer builtMu.Unlock()
	if b, ok := built[dir]; ok {
		return b
	}
	tmp, err := os.MkdirTemp("", "wasm-build")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "main.wasm")
	cmd := exec.Command("go", "build", "-o", out, ".")
	cmd.Dir = filepath.Join("..", "..", dir)
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "GOFLAGS=-mod=mod")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s for wasip1: %v\n%s", dir, err, msg)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	built[dir] = b
	return b
}

var (
	builtMu sync.Mutex
	built   = map[string][]byte{}
)

// The same modules are compiled for test after test: once is enough.
func init() { compilationCache = wazero.NewCompilationCache() }

// startWasm starts a runner on the module code as main.wasm.
func startWasm(t *testing.T, code []byte, init proto.Init) (*fakeHost, *proto.Ready) {
	t.Helper()
	a, b := net.Pipe()
	go Serve(wire.NewConn(b))
	h := &fakeHost{t: t, conn: wire.NewConn(a)}
	t.Cleanup(func() { a.Close() })
	ents, body := proto.PackFiles(map[string][]byte{"main.wasm": code})
	init.Version, init.Image, init.Entry, init.Files = proto.HostAPIVersion, ImageWasm, "main.wasm", ents
	if init.Function == "" {
		init.Function = "_start"
	}
	if init.Name == "" {
		init.Name = "fn"
	}
	if err := h.conn.Send(proto.HInit, init, body); err != nil {
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

func TestWasmHello(t *testing.T) {
	h, r := startWasm(t, buildGo(t, "functions/hello-wasm"), proto.Init{Memory: 64 << 20})
	if r.Error != nil {
		t.Fatal(r.Error)
	}
	var out, stored, logged []string
	d, _, calls := h.invoke(`["ann"]`, func(c proto.Call, b []byte) (proto.Reply, []byte) {
		switch c.Name {
		case "storage.get":
			return proto.Reply{Result: json.RawMessage(`{"found":true}`)}, []byte("41")
		case "storage.put":
			stored = append(stored, string(c.Args)+"="+string(b))
		case "send":
			out = append(out, string(b))
		case "log":
			logged = append(logged, string(c.Args))
		}
		return proto.Reply{}, nil
	})
	if d.Error != nil || !d.None {
		t.Fatalf("done %+v", d)
	}
	if got := strings.Join(out, ""); got != "hello, ann! (greeting 42, from a wasm module)\n" {
		t.Errorf("output %q", got)
	}
	if strings.Join(stored, ",") != `{"key":"greetings"}=42` || strings.Join(logged, ",") != `{"msg":"greeted ann"}` {
		t.Errorf("stored %v, logged %v", stored, logged)
	}
	if strings.Join(calls, ",") != "storage.get,storage.put,log,send" {
		t.Errorf("calls %v", calls)
	}
	// A second invocation runs a fresh instance: a refused call fails it
	// with bentod's words on stderr.
	d, _, _ = h.invoke(`[]`, func(c proto.Call, b []byte) (proto.Reply, []byte) {
		if c.Name == "storage.get" {
			return proto.Reply{Error: "storage is not in the manifest's apis"}, nil
		}
		return proto.Reply{}, nil
	})
	if d.Error == nil || !strings.Contains(d.Error.Msg, "status 1") || !strings.Contains(d.Error.Msg, "storage.get: storage is not in the manifest's apis") {
		t.Errorf("refused call: %+v", d.Error)
	}
}

// TestWasmHostile runs each attack of e2e/testdata/wasm/hostile.
func TestWasmHostile(t *testing.T) {
	code := buildGo(t, "e2e/testdata/wasm/hostile")
	h, r := startWasm(t, code, proto.Init{Memory: 64 << 20, MaxBody: 256 << 10})
	if r.Error != nil {
		t.Fatal(r.Error)
	}
	tests := []struct {
		attack  string
		wantErr string   // in the invocation's error; "" for none
		wantOut []string // in its output
		cancel  bool     // bentod cancels it (its CPU time is up)
	}{
		{attack: "loop", cancel: true, wantErr: "CPU time limit (test) exceeded"},
		{attack: "grow", wantErr: "the module exited with status 2: fatal error: out of memory"},
		{attack: "flood", wantErr: "output limit exceeded"},
		{attack: "read", wantOut: []string{"read /etc/passwd: 0 bytes", "read /proc/self/environ: 0 bytes", "read /bento-runner: 0 bytes", "readdir /: 0 entries"}},
		{attack: "exec", wantOut: []string{"exec: fork/exec /bin/sh: Not implemented on wasip1"}},
		{attack: "fork", wantOut: []string{"fork: fork/exec /bento-runner: Not implemented on wasip1"}},
		{attack: "socket", wantOut: []string{"socket: Not implemented on wasip1"}},
		{attack: "dial", wantOut: []string{"dial: Not implemented on wasip1"}},
		{attack: "echo", wantOut: []string{"in1in2\necho: 6 bytes, <no error>"}},
		{attack: "denied", wantOut: []string{"fetch: http.fetch: http.fetch is not in the manifest's apis"}},
	}
	for _, tc := range tests {
		t.Run(tc.attack, func(t *testing.T) {
			sent, recvs := 0, 0
			var out bytes.Buffer
			if tc.cancel {
				time.AfterFunc(300*time.Millisecond, func() {
					h.conn.Send(proto.HCancel, proto.Cancel{Inv: 7, Reason: "CPU time limit (test) exceeded"}, nil)
				})
			}
			start := time.Now()
			d, _, _ := h.invoke(`["`+tc.attack+`"]`, func(c proto.Call, b []byte) (proto.Reply, []byte) {
				switch c.Name {
				case "send":
					if sent += len(b); sent > 1<<20 {
						return proto.Reply{Error: "output limit exceeded: 1 MB kept for clients"}, nil
					}
					out.Write(b)
				case "recv":
					if recvs++; recvs <= 2 {
						return proto.Reply{}, []byte(fmt.Sprintf("in%d", recvs))
					}
					return proto.Reply{Result: json.RawMessage(`{"eof":true}`)}, nil
				case "http.fetch":
					return proto.Reply{Error: "http.fetch is not in the manifest's apis"}, nil
				}
				return proto.Reply{}, nil
			})
			if el := time.Since(start); el > 20*time.Second {
				t.Errorf("took %s", el)
			}
			switch {
			case tc.wantErr == "" && d.Error != nil:
				t.Fatalf("error %v", d.Error)
			case tc.wantErr != "" && (d.Error == nil || !strings.Contains(d.Error.Msg, tc.wantErr)):
				t.Fatalf("error %+v, want %q", d.Error, tc.wantErr)
			}
			for _, w := range tc.wantOut {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output %q lacks %q", out.String(), w)
				}
			}
			if strings.Contains(out.String(), "root:") || strings.Contains(out.String(), "<nil>") {
				t.Errorf("an attack succeeded: %q", out.String())
			}
		})
	}
}

// Hand-assembled modules, for what Go cannot express.

func uleb(v uint64) []byte {
	var b []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v != 0 {
			b = append(b, c|0x80)
			continue
		}
		return append(b, c)
	}
}

func sleb(v int64) []byte {
	var b []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

func vec(items ...[]byte) []byte {
	out := uleb(uint64(len(items)))
	for _, it := range items {
		out = append(out, it...)
	}
	return out
}

func name(s string) []byte { return append(uleb(uint64(len(s))), s...) }

func section(id byte, content []byte) []byte {
	return append(append([]byte{id}, uleb(uint64(len(content)))...), content...)
}

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

// tinyModule: memory of pages pages holding data at 0, an import of
// impMod.impName with bento.call's signature, and export with body.
func tinyModule(pages uint64, impMod, impName, export string, data, body []byte) []byte {
	i32 := byte(0x7f)
	types := section(1, vec(
		[]byte{0x60, 6, i32, i32, i32, i32, i32, i32, 1, i32},
		[]byte{0x60, 0, 0},
	))
	imports := section(2, vec(cat(name(impMod), name(impName), []byte{0x00, 0x00})))
	funcs := section(3, vec([]byte{0x01}))
	mem := section(5, vec(cat([]byte{0x00}, uleb(pages))))
	exports := section(7, vec(cat(name(export), []byte{0x00, 0x01}), cat(name("memory"), []byte{0x02, 0x00})))
	fbody := cat([]byte{0x00}, body, []byte{0x0b})
	code := section(10, vec(cat(uleb(uint64(len(fbody))), fbody)))
	datas := section(11, vec(cat([]byte{0x00, 0x41, 0x00, 0x0b}, name(string(data)))))
	return cat([]byte("\x00asm\x01\x00\x00\x00"), types, imports, funcs, mem, exports, code, datas)
}

func i32c(v int64) []byte { return append([]byte{0x41}, sleb(v)...) }

// callWant calls bento.call with the six arguments and traps unless it
// returns want.
func callWant(want int64, args ...int64) []byte {
	var b []byte
	for _, a := range args {
		b = append(b, i32c(a)...)
	}
	b = append(b, 0x10, 0x00) // call 0
	b = append(b, i32c(want)...)
	return append(b, 0x47, 0x04, 0x40, 0x00, 0x0b) // i32.ne; if; unreachable; end
}

func TestWasmABI(t *testing.T) {
	tests := []struct {
		name  string
		body  []byte
		reply string // the host's error for every call, if any
		calls string // the host calls that reach bentod
	}{
		{"send", callWant(0, 0, 4, 0, 0, 4, 2), "", "send"},
		{"refused", callWant(1, 0, 4, 0, 0, 4, 2), "no", "send"},
		{"data outside memory", callWant(-1, 0, 4, 0, 0, 65530, 100), "", ""},
		{"name outside memory", callWant(-1, 65535, 4, 0, 0, 0, 0), "", ""},
		{"name too long", callWant(-1, 0, MaxWasmName+1, 0, 0, 0, 0), "", ""},
		{"empty name", callWant(-1, 0, 0, 0, 0, 0, 0), "", ""},
		{"args too long", callWant(-1, 0, 4, 0, MaxWasmArgs+1, 0, 0), "", ""},
		{"args not JSON", callWant(-1, 0, 4, 0, 2, 0, 0), "", ""},
		{"huge lengths", callWant(-1, 0, 4, 0, 0, -1, -1), "", ""},
		{"memory bomb refused", cat(i32c(60000), []byte{0x40, 0x00}, i32c(-1), []byte{0x47, 0x04, 0x40, 0x00, 0x0b}), "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code := tinyModule(1, "bento", "call", "_start", []byte("sendhi"), tc.body)
			h, r := startWasm(t, code, proto.Init{Memory: 64 << 20})
			if r.Error != nil {
				t.Fatal(r.Error)
			}
			d, _, calls := h.invoke(`[]`, func(c proto.Call, b []byte) (proto.Reply, []byte) {
				if c.Name != "send" || string(b) != "hi" {
					t.Errorf("call %s %q", c.Name, b)
				}
				return proto.Reply{Error: tc.reply}, nil
			})
			if d.Error != nil {
				t.Fatalf("the module trapped (bento.call's status was not the one expected): %v", d.Error)
			}
			if strings.Join(calls, ",") != tc.calls {
				t.Errorf("calls %v, want %q", calls, tc.calls)
			}
		})
	}
}

// TestWasmCancelLoop: a loop without calls stops when bentod cancels it,
// and the runner serves the next invocation.
func TestWasmCancelLoop(t *testing.T) {
	loop := []byte{0x03, 0x40, 0x0c, 0x00, 0x0b} // loop; br 0; end
	h, r := startWasm(t, tinyModule(1, "bento", "call", "_start", nil, loop), proto.Init{})
	if r.Error != nil {
		t.Fatal(r.Error)
	}
	for i := 0; i < 2; i++ {
		time.AfterFunc(200*time.Millisecond, func() {
			h.conn.Send(proto.HCancel, proto.Cancel{Inv: 7, Reason: "CPU time limit exceeded"}, nil)
		})
		d, _, _ := h.invoke(`[]`, func(proto.Call, []byte) (proto.Reply, []byte) { return proto.Reply{}, nil })
		if d.Error == nil || d.Error.Msg != "CPU time limit exceeded" {
			t.Fatalf("run %d: %+v", i, d.Error)
		}
	}
}

func TestWasmLoadErrors(t *testing.T) {
	nop := []byte{0x01}
	tests := []struct {
		name  string
		code  []byte
		init  proto.Init
		wants string
	}{
		{"not wasm", []byte("def main(): pass"), proto.Init{}, "not a WebAssembly module"},
		{"truncated", []byte("\x00asm\x01\x00\x00\x00\x01\x05"), proto.Init{}, "invalid module"},
		{"foreign import", tinyModule(1, "env", "system", "_start", nil, nop), proto.Init{}, "imports env.system: only WASI preview 1"},
		{"unknown bento import", tinyModule(1, "bento", "exec", "_start", nil, nop), proto.Init{}, "cannot be instantiated here"},
		{"no such export", tinyModule(1, "bento", "call", "run", nil, nop), proto.Init{}, `no exported function "_start"`},
		{"other export", tinyModule(1, "bento", "call", "run", nil, nop), proto.Init{Function: "run"}, ""},
		{"memory over the bound", tinyModule(2000, "bento", "call", "_start", nil, nop), proto.Init{Memory: 64 << 20}, "over limit of 448 pages"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, r := startWasm(t, tc.code, tc.init)
			switch {
			case tc.wants == "" && r.Error != nil:
				t.Fatal(r.Error)
			case tc.wants != "" && (r.Error == nil || !strings.Contains(r.Error.Msg, tc.wants) || r.Error.File != "main.wasm"):
				t.Fatalf("error %+v, want %q", r.Error, tc.wants)
			}
			fn := tc.init.Function
			if fn == "" {
				fn = "_start"
			}
			fes := Check(ImageWasm, "main.wasm", fn, tc.init.Memory, map[string][]byte{"main.wasm": tc.code})
			if (len(fes) == 0) != (tc.wants == "") {
				t.Errorf("Check: %v", fes)
			}
		})
	}
}

func TestWasmPages(t *testing.T) {
	for _, tc := range []struct {
		mem  int64
		want uint32
	}{{0, 192}, {16 << 20, 64}, {64 << 20, 448}, {1 << 40, 65536}, {1, 16}} {
		if got := WasmPages(tc.mem); got != tc.want {
			t.Errorf("WasmPages(%d) = %d, want %d", tc.mem, got, tc.want)
		}
	}
}

func TestWasmArgs(t *testing.T) {
	got, err := wasmArgs(json.RawMessage(`["a b", 1, {"k": [true, null]}, null]`))
	if err != nil || strings.Join(got, "|") != `a b|1|{"k":[true,null]}|null` {
		t.Fatalf("%q %v", got, err)
	}
	if _, err := wasmArgs(json.RawMessage(`{"a":1}`)); err == nil {
		t.Fatal("an object was taken for arguments")
	}
}

func FuzzWasmArgs(f *testing.F) {
	f.Add([]byte(`["x", 2, [3]]`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, b []byte) {
		args, err := wasmArgs(b)
		if err == nil && len(args) > len(b) {
			t.Fatalf("%d arguments from %d bytes", len(args), len(b))
		}
	})
}

// FuzzCompileWasm: whatever bytes come as a module, the check answers
// with a located error or a module, and never panics.
func FuzzCompileWasm(f *testing.F) {
	f.Add(tinyModule(1, "bento", "call", "_start", []byte("sendhi"), callWant(0, 0, 4, 0, 0, 4, 2)))
	f.Add(tinyModule(1, "env", "x", "_start", nil, []byte{0x01}))
	f.Add([]byte("\x00asm\x01\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, code []byte) {
		w, fe := compileWasm(context.Background(), "main.wasm", "_start", code, 64)
		if fe != nil {
			if fe.File != "main.wasm" || fe.Msg == "" {
				t.Fatalf("unlocated error %+v", fe)
			}
			return
		}
		w.rt.Close(context.Background())
	})
}

// TestScanWasm: modules whose counts and lengths ask for more than they
// hold are refused before wazero allocates by them (a 124-byte module
// made the runner ask for 28 GB: FuzzCompileWasm); real modules pass.
func TestScanWasm(t *testing.T) {
	hdr := []byte("\x00asm\x01\x00\x00\x00")
	huge := []byte{0xb8, 0xb8, 0xb8, 0xb8, 0x01}
	for _, tc := range []struct {
		name string
		mod  []byte
		want string // "" for accepted
	}{
		{"tiny", tinyModule(1, "bento", "call", "_start", []byte("hi"), nil), ""},
		{"code count", cat(hdr, section(10, huge)), "beyond"},
		{"code entry size", cat(hdr, section(10, cat([]byte{1}, huge))), "beyond"},
		{"locals", cat(hdr, section(10, vec(cat([]byte{6, 1}, uleb(maxWasmLocals+1), []byte{0x7f, 0x0b})))), "locals"},
		{"export name", cat(hdr, section(7, cat([]byte{1}, huge, []byte("x")))), "beyond"},
		{"data bytes", cat(hdr, section(11, cat([]byte{1, 1}, huge))), "beyond"},
		{"section size", cat(hdr, []byte{0}, huge), "beyond"},
		{"type params", cat(hdr, section(1, cat([]byte{1, 0x60}, huge))), "beyond"},
		{"expression", cat(hdr, section(6, vec([]byte{0x7f, 0, 0x10, 0x0b}))), "constant expression"},
		{"unknown section", cat(hdr, section(42, nil)), "unknown section"},
	} {
		err := scanWasm(tc.mod)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: refused: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}
