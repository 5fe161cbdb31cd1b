package runner

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"

	"github.com/torbento/bento/internal/proto"
)

// ImageWasm is the image whose functions are WebAssembly modules
// (docs/wasm.md): WASI preview 1 commands, compiled by wazero inside the
// same sandbox as Starlark, a fresh instance of the compiled
// module for each invocation.
const ImageWasm = "wasm"

// OwnProcess is set by bento-runner, whose process serves one instance:
// the runner may then set process-wide limits (Go's memory limit) from the
// manifest. bento dev, which serves in its own process, leaves it unset.
var OwnProcess bool

// Bounds of the wasm image.
const (
	// MaxWasmModule bounds the module the runner compiles (the policy's
	// upload bound is normally far smaller).
	MaxWasmModule = 64 << 20
	// MaxWasmName and MaxWasmArgs bound a bento.call's host-call name and
	// its JSON arguments.
	MaxWasmName = 64
	MaxWasmArgs = 64 << 10
	// maxStderrLine is the longest line of stderr sent as one log call.
	maxStderrLine = 4 << 10
	// stderrTail is how much of its stderr a failed module's error quotes.
	stderrTail = 512
	// wasmPage is WebAssembly's page size.
	wasmPage = 64 << 10
	// wasmReserve is the part of the memory resource kept for the runner
	// itself (its Go runtime, the compiler's work, the compiled code)
	// before linear memory is counted.
	wasmReserve = 8 << 20
)

// Status codes of bento.call (docs/wasm.md).
const (
	wasmOK      = 0  // the call succeeded: its result and data wait
	wasmRefused = 1  // bentod refused it or it failed: the message waits as the result
	wasmBadArgs = -1 // a pointer or length outside memory, a name or arguments too long
)

// WasmPages is the linear-memory bound of a module under a memory
// resource of memory bytes: half of what is left after the runner's own
// reserve, in 64 KiB pages (at least 16 pages, at most 65536). Each
// invocation's instance has its own memory, so that two running at once
// may hold all of it; the cgroup's limit stays the backstop.
func WasmPages(memory int64) uint32 {
	if memory <= 0 {
		memory = 32 << 20
	}
	p := (memory - wasmReserve) / 2 / wasmPage
	return uint32(min(max(p, 16), 65536))
}

// wasmFunc is a function's compiled module.
type wasmFunc struct {
	rt    wazero.Runtime
	mod   wazero.CompiledModule
	start string // the export each invocation calls
	init  bool   // the module exports _initialize (a reactor): called first
	clock bool   // the manifest asks for "time": the real clocks
}

// wasmConfig is the runtime every module runs in: wazero's compiler where
// it has one (amd64, arm64; its interpreter elsewhere), execution ended
// when the invocation's context is (bentod's cancel, a failed output), and
// linear memory bounded.
//
// The compiler, not the interpreter: the interpreter holds about 20 bytes
// of instructions for each byte of code (70 MB for a 3 MB Go module, over
// the default per-function memory), and runs Go's runtime start-up several
// times slower; the compiler needs 12 MB for the same module and compiles
// it in 1-3 s on the project's machine. The code it generates is mapped
// writable, then executable (never both: mmap and mprotect, already in the
// seccomp allow-list); a flaw in it would give a module the runner, which
// holds no authority and is treated as hostile anyway (docs/SECURITY.md).
func wasmConfig(pages uint32) wazero.RuntimeConfig {
	cfg := wazero.NewRuntimeConfig().
		WithCloseOnContextDone(true).
		WithMemoryLimitPages(pages).
		WithCoreFeatures(api.CoreFeaturesV2)
	if compilationCache != nil {
		cfg = cfg.WithCompilationCache(compilationCache)
	}
	return cfg
}

// compilationCache, when set, keeps compiled modules across runtimes in
// this process. bento-runner compiles one module per process and leaves
// it nil; the tests, which compile the same modules over and over (a
// Go module is seconds of compiling under the race detector), set it.
var compilationCache wazero.CompilationCache

// loadWasm compiles the entry module and checks, without running any of
// it, that it can be instantiated here: its imports are WASI preview 1's
// and the bento module's, its memory fits the bound, and the function to
// call is exported without parameters or results.
func (r *Runner) loadWasm() *proto.FuncError {
	if OwnProcess && r.init.Memory > 0 {
		// The runner's own garbage (the compiler's above all) is
		// collected before it could take the cgroup over its limit.
		debug.SetMemoryLimit(r.init.Memory * 3 / 4)
	}
	entry := r.init.Entry
	code, ok := r.files[entry]
	if !ok {
		return &proto.FuncError{File: entry, Msg: fmt.Sprintf("the entry file %s is not in the function bundle (set \"entry\" in bento.toml)", entry)}
	}
	w, fe := compileWasm(context.Background(), entry, r.init.Function, code, WasmPages(r.init.Memory))
	if fe != nil {
		return fe
	}
	for _, a := range r.init.APIs {
		if a == "time" {
			w.clock = true
		}
	}
	r.wasm = w
	if OwnProcess {
		// What compiling took (several times the module) goes back to
		// the kernel now, not when Go's scavenger gets to it: an idle
		// instance holds its compiled code, not the compiler's garbage.
		debug.FreeOSMemory()
	}
	return nil
}

// compileWasm compiles and checks a module.
func compileWasm(ctx context.Context, entry, function string, code []byte, pages uint32) (*wasmFunc, *proto.FuncError) {
	bad := func(format string, a ...any) (*wasmFunc, *proto.FuncError) {
		return nil, &proto.FuncError{File: entry, Msg: fmt.Sprintf(format, a...)}
	}
	switch {
	case len(code) > MaxWasmModule:
		return bad("%d bytes: a module may have at most %d", len(code), MaxWasmModule)
	case !bytes.HasPrefix(code, []byte("\x00asm")):
		return bad("not a WebAssembly module (it does not start with \\0asm); build it with GOOS=wasip1 GOARCH=wasm, or clang --target=wasm32-wasi (docs/wasm.md)")
	}
	// wazero sizes its tables by what the module declares: first check
	// that what it declares is there.
	if err := scanWasm(code); err != nil {
		return bad("invalid module: %v", err)
	}
	rt := wazero.NewRuntimeWithConfig(ctx, wasmConfig(pages))
	ok := false
	defer func() {
		if !ok {
			rt.Close(ctx)
		}
	}()
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, rt); err != nil {
		return bad("wasi: %v", err)
	}
	if _, err := hostModule(rt).Instantiate(ctx); err != nil {
		return bad("bento host module: %v", err)
	}
	mod, err := rt.CompileModule(ctx, code)
	if err != nil {
		return bad("invalid module: %v", err)
	}
	for _, im := range mod.ImportedMemories() {
		m, n, _ := im.Import()
		return bad("imports memory %s.%s: a module here must define its own memory", m, n)
	}
	for _, f := range mod.ImportedFunctions() {
		m, n, _ := f.Import()
		if m != wasi_snapshot_preview1.ModuleName && m != "bento" {
			return bad("imports %s.%s: only WASI preview 1 (%s) and the bento module are offered", m, n, wasi_snapshot_preview1.ModuleName)
		}
	}
	exp := mod.ExportedFunctions()
	fn, found := exp[function]
	if !found {
		var names []string
		for n := range exp {
			names = append(names, n)
		}
		hint := "a WASI command exports _start (Go: GOOS=wasip1 GOARCH=wasm go build)"
		if len(names) > 0 && len(names) <= 16 {
			hint = "it exports " + strings.Join(names, ", ")
		}
		return bad("no exported function %q (set \"function\" in bento.toml; %s)", function, hint)
	}
	if len(fn.ParamTypes()) != 0 || len(fn.ResultTypes()) != 0 {
		return bad("exported function %q takes %d parameters and returns %d results; it must take and return none", function, len(fn.ParamTypes()), len(fn.ResultTypes()))
	}
	// Instantiate once without running anything: imports resolve, data
	// segments fit, the initial memory is within the bound.
	inst, err := rt.InstantiateModule(experimental.WithMemoryAllocator(ctx, mmapAllocator), mod, wazero.NewModuleConfig().WithName("").WithStartFunctions())
	if err != nil {
		return bad("cannot be instantiated here: %v (linear memory is bounded to %d pages of 64 KiB by the memory resource)", err, pages)
	}
	inst.Close(ctx)
	_, reactor := exp["_initialize"]
	ok = true
	return &wasmFunc{rt: rt, mod: mod, start: function, init: reactor && function != "_start"}, nil
}

// wasmInv is one wasm invocation's state: what its host calls left to be
// read, its stderr line, how it ends.
type wasmInv struct {
	r      *Runner
	ctx    context.Context
	cancel context.CancelCauseFunc
	inv    uint64

	mu     sync.Mutex
	result []byte // the last bento.call's JSON result, or its error message
	data   []byte // the last bento.call's bulk data
	line   []byte // stderr since the last newline
	tail   []byte // the last stderrTail bytes of stderr
	// headline is the line of stderr an error quotes: the last that says
	// why a program dies ("panic: ...", "fatal error: ...", as Go's
	// runtime and others say), else the last line.
	headline string
	dying    bool
	eof      bool // recv said the input ended
}

type invKey struct{}

func (w *wasmInv) fail(err error) { w.cancel(err) }

// stdout sends what the module writes as output, in pieces a host call
// may carry.
type wasmStdout struct{ w *wasmInv }

func (o wasmStdout) Write(p []byte) (int, error) {
	w := o.w
	step := int(w.r.init.MaxBody)
	if step <= 0 {
		step = 1 << 20
	}
	for off := 0; off < len(p); off += step {
		end := min(off+step, len(p))
		if _, _, err := w.r.callInv(w.ctx, w.inv, "send", nil, p[off:end]); err != nil {
			w.fail(err)
			return off, err
		}
	}
	return len(p), nil
}

// wasmStderr sends what the module writes to stderr to the instance log,
// a line per log call (long lines in pieces).
type wasmStderr struct{ w *wasmInv }

func (e wasmStderr) Write(p []byte) (int, error) {
	w := e.w
	w.mu.Lock()
	w.tail = append(w.tail, p...)
	if len(w.tail) > stderrTail {
		w.tail = append([]byte(nil), w.tail[len(w.tail)-stderrTail:]...)
	}
	w.line = append(w.line, p...)
	var lines []string
	for {
		i := bytes.IndexByte(w.line, '\n')
		if i < 0 && len(w.line) < maxStderrLine {
			break
		}
		if i < 0 || i > maxStderrLine {
			i = maxStderrLine
			lines = append(lines, string(w.line[:i]))
			w.line = w.line[i:]
			continue
		}
		lines = append(lines, string(w.line[:i]))
		w.line = w.line[i+1:]
	}
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "panic: ") || strings.HasPrefix(l, "fatal error: "):
			w.headline = strings.ToValidUTF8(l, "")
			w.dying = true
		case !w.dying && strings.TrimSpace(l) != "":
			w.headline = strings.ToValidUTF8(l, "")
		}
	}
	w.line = append([]byte(nil), w.line...)
	w.mu.Unlock()
	for _, l := range lines {
		if err := w.log(l); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (w *wasmInv) log(msg string) error {
	if _, _, err := w.r.callInv(w.ctx, w.inv, "log", map[string]string{"msg": msg}, nil); err != nil {
		w.fail(err)
		return err
	}
	return nil
}

// wasmStdin reads the client's input through recv: one input frame at a
// time, EOF when the client says the input ended.
type wasmStdin struct {
	w   *wasmInv
	buf []byte
}

func (in *wasmStdin) Read(p []byte) (int, error) {
	if len(in.buf) == 0 {
		w := in.w
		w.mu.Lock()
		eof := w.eof
		w.mu.Unlock()
		if eof {
			return 0, io.EOF
		}
		res, body, err := w.r.callInv(w.ctx, w.inv, "recv", nil, nil)
		if err != nil {
			return 0, err
		}
		var out struct {
			EOF     bool `json:"eof"`
			Timeout bool `json:"timeout"`
		}
		_ = json.Unmarshal(res, &out)
		if out.EOF {
			w.mu.Lock()
			w.eof = true
			w.mu.Unlock()
			return 0, io.EOF
		}
		in.buf = body
	}
	n := copy(p, in.buf)
	in.buf = in.buf[n:]
	return n, nil
}

// invokeWasm runs one invocation in a fresh instance of the module:
// argv[0] is the function's name and the invocation's arguments follow
// (strings as they are, other values as JSON), stdin is the client's
// input, stdout its output, stderr the instance log.
func (r *Runner) invokeWasm(ctx context.Context, inv proto.HostInvoke) {
	ctx, cancel := context.WithCancelCause(ctx)
	done := proto.Done{Inv: inv.Inv}
	if fe := r.runWasm(ctx, cancel, inv); fe != nil {
		done.Error = fe
	} else {
		done.None = true
	}
	done.Error.Truncate()
	// Forgotten before bentod hears of the end, which may reuse nothing
	// but must find no stale entry either.
	cancel(nil)
	r.mu.Lock()
	delete(r.cancels, inv.Inv)
	r.mu.Unlock()
	_ = r.conn.Send(proto.HDone, done, nil)
}

func (r *Runner) runWasm(ctx context.Context, cancel context.CancelCauseFunc, inv proto.HostInvoke) *proto.FuncError {
	args, err := wasmArgs(inv.Args)
	if err != nil {
		return &proto.FuncError{Msg: "bad invocation arguments: " + err.Error()}
	}
	w := &wasmInv{r: r, ctx: ctx, cancel: cancel, inv: inv.Inv}
	ctx = context.WithValue(ctx, invKey{}, w)
	ctx = experimental.WithMemoryAllocator(ctx, mmapAllocator)
	f := r.wasm
	cfg := wazero.NewModuleConfig().
		WithName("").
		WithStartFunctions().
		WithArgs(append([]string{r.init.Name}, args...)...).
		WithEnv("BENTO_FUNCTION", r.init.Name).
		WithEnv("BENTO_INVOCATION", strconv.FormatUint(inv.Inv, 10)).
		WithStdin(&wasmStdin{w: w}).
		WithStdout(wasmStdout{w}).
		WithStderr(wasmStderr{w}).
		WithRandSource(rand.Reader).
		WithNanosleep(func(ns int64) {
			t := time.NewTimer(time.Duration(ns))
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
			}
		})
	if f.clock {
		cfg = cfg.WithSysWalltime().WithSysNanotime()
	}
	mod, err := f.rt.InstantiateModule(ctx, f.mod, cfg)
	if err == nil {
		defer mod.Close(context.Background())
		if f.init {
			_, err = mod.ExportedFunction("_initialize").Call(ctx)
		}
		if err == nil {
			_, err = mod.ExportedFunction(f.start).Call(ctx)
		}
	}
	// What is left of stderr goes to the log (unless the invocation is
	// already failing).
	w.mu.Lock()
	rest := string(w.line)
	w.line = nil
	w.mu.Unlock()
	if rest != "" && ctx.Err() == nil {
		_ = w.log(rest)
	}
	return w.outcome(err)
}

// outcome turns the end of a run into the invocation's error, if any.
func (w *wasmInv) outcome(err error) *proto.FuncError {
	if cause := context.Cause(w.ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return &proto.FuncError{Msg: cause.Error()}
	}
	if err == nil {
		return nil
	}
	var exit *sys.ExitError
	if errors.As(err, &exit) {
		if exit.ExitCode() == 0 {
			return nil
		}
		msg := fmt.Sprintf("the module exited with status %d", exit.ExitCode())
		w.mu.Lock()
		tail := strings.TrimSpace(strings.ToValidUTF8(string(w.tail), ""))
		headline := w.headline
		w.mu.Unlock()
		if headline != "" {
			msg += ": " + headline
		}
		// The end of stderr (also in the instance log) as its backtrace.
		return &proto.FuncError{Msg: msg, Backtrace: tail}
	}
	// A trap: wazero's message, then its wasm stack trace.
	msg, trace, _ := strings.Cut(err.Error(), "\n")
	return &proto.FuncError{Msg: msg, Backtrace: trace}
}

// wasmArgs decodes the invocation's JSON array into argv strings.
func wasmArgs(raw json.RawMessage) ([]string, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	var vals []json.RawMessage
	if err := json.Unmarshal(raw, &vals); err != nil {
		return nil, fmt.Errorf("want a JSON array: %v", err)
	}
	out := make([]string, len(vals))
	for i, v := range vals {
		var s string
		if len(v) > 0 && v[0] == '"' && json.Unmarshal(v, &s) == nil {
			out[i] = s
			continue
		}
		var c bytes.Buffer
		if err := json.Compact(&c, v); err != nil {
			return nil, err
		}
		out[i] = c.String()
	}
	return out, nil
}

// hostModule builds the "bento" host module (docs/wasm.md):
//
//	call(name_ptr, name_len, args_ptr, args_len, data_ptr, data_len i32) -> i32
//	result(buf_ptr, buf_cap i32) -> i32
//	data(buf_ptr, buf_cap i32) -> i32
//
// call carries out a host call; result and data copy what the last call
// left (its JSON result or error message, its bulk data) into the buffer,
// as much as fits, and return the whole length.
func hostModule(rt wazero.Runtime) wazero.HostModuleBuilder {
	i32 := api.ValueTypeI32
	b := rt.NewHostModuleBuilder("bento")
	b.NewFunctionBuilder().
		WithGoModuleFunction(api.GoModuleFunc(func(ctx context.Context, m api.Module, st []uint64) {
			st[0] = api.EncodeI32(wasmCall(ctx, m, st))
		}), []api.ValueType{i32, i32, i32, i32, i32, i32}, []api.ValueType{i32}).
		WithParameterNames("name_ptr", "name_len", "args_ptr", "args_len", "data_ptr", "data_len").
		Export("call")
	for _, part := range []string{"result", "data"} {
		b.NewFunctionBuilder().
			WithGoModuleFunction(api.GoModuleFunc(func(ctx context.Context, m api.Module, st []uint64) {
				st[0] = api.EncodeI32(wasmCopyOut(ctx, m, part, st))
			}), []api.ValueType{i32, i32}, []api.ValueType{i32}).
			WithParameterNames("buf_ptr", "buf_cap").
			Export(part)
	}
	return b
}

// read copies len bytes at ptr out of the module's memory.
func read(m api.Module, ptr, n uint32) ([]byte, bool) {
	if n == 0 {
		return nil, true
	}
	b, ok := m.Memory().Read(ptr, n)
	if !ok {
		return nil, false
	}
	return bytes.Clone(b), true
}

func wasmCall(ctx context.Context, m api.Module, st []uint64) int32 {
	w, _ := ctx.Value(invKey{}).(*wasmInv)
	if w == nil {
		return wasmBadArgs
	}
	set := func(result, data []byte) {
		w.mu.Lock()
		w.result, w.data = result, data
		w.mu.Unlock()
	}
	badArgs := func(msg string) int32 {
		set([]byte(msg), nil)
		return wasmBadArgs
	}
	nameLen, argsLen := api.DecodeU32(st[1]), api.DecodeU32(st[3])
	switch {
	case nameLen == 0 || nameLen > MaxWasmName:
		return badArgs(fmt.Sprintf("bento.call: a host-call name has 1 to %d bytes", MaxWasmName))
	case argsLen > MaxWasmArgs:
		return badArgs(fmt.Sprintf("bento.call: arguments of %d bytes, at most %d", argsLen, MaxWasmArgs))
	}
	name, ok1 := read(m, api.DecodeU32(st[0]), nameLen)
	args, ok2 := read(m, api.DecodeU32(st[2]), argsLen)
	data, ok3 := read(m, api.DecodeU32(st[4]), api.DecodeU32(st[5]))
	if !ok1 || !ok2 || !ok3 {
		return badArgs("bento.call: a pointer and length reach outside the module's memory")
	}
	var raw any
	if len(args) > 0 {
		if !json.Valid(args) {
			return badArgs("bento.call: the arguments are not JSON")
		}
		raw = json.RawMessage(args)
	}
	res, body, err := w.r.callInv(w.ctx, w.inv, string(name), raw, data)
	if err != nil {
		set([]byte(err.Error()), nil)
		return wasmRefused
	}
	set(res, body)
	return wasmOK
}

func wasmCopyOut(ctx context.Context, m api.Module, part string, st []uint64) int32 {
	w, _ := ctx.Value(invKey{}).(*wasmInv)
	if w == nil {
		return wasmBadArgs
	}
	w.mu.Lock()
	src := w.result
	if part == "data" {
		src = w.data
	}
	w.mu.Unlock()
	ptr, n := api.DecodeU32(st[0]), api.DecodeU32(st[1])
	n = min(n, uint32(len(src)))
	if n > 0 && !m.Memory().Write(ptr, src[:n]) {
		return wasmBadArgs
	}
	return int32(len(src))
}

// heapMemory is a linear memory in one Go slice of its maximum size.
func heapMemory(_, max uint64) experimental.LinearMemory {
	return &sliceMemory{buf: make([]byte, max)}
}

type sliceMemory struct{ buf []byte }

func (m *sliceMemory) Reallocate(size uint64) []byte {
	if size > uint64(len(m.buf)) {
		return nil
	}
	return m.buf[:size]
}

func (m *sliceMemory) Free() { m.buf = nil }
