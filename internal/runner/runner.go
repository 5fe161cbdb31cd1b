// Package runner is the program inside each sandbox: it loads a function's
// Starlark code, runs invocations, and turns the function's host calls into
// requests to bentod over the host-API channel. It holds no authority of its
// own: bentod checks and carries out every call. Nothing here is trusted.
package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"

	starlarkjson "go.starlark.net/lib/json"
	"go.starlark.net/starlark"
	"go.starlark.net/syntax"

	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/wire"
)

// Runner serves one instance over one host-API connection.
type Runner struct {
	conn  *wire.Conn
	init  proto.Init
	files map[string][]byte
	fn    starlark.Callable

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan *wire.Frame
	threads map[uint64]*starlark.Thread        // running invocations
	wasm    *wasmFunc                          // the compiled module (image wasm)
	cancels map[uint64]context.CancelCauseFunc // running wasm invocations
	err     error                              // set when the connection failed
}

// Serve runs the runner on conn until bentod closes it.
func Serve(conn *wire.Conn) error {
	r := &Runner{conn: conn, pending: map[uint64]chan *wire.Frame{}, threads: map[uint64]*starlark.Thread{}, cancels: map[uint64]context.CancelCauseFunc{}}
	f, err := conn.Read()
	if err != nil {
		return fmt.Errorf("reading init: %w", err)
	}
	if f.Type != proto.HInit {
		return fmt.Errorf("first frame has type %d, want init", f.Type)
	}
	if err := f.Unmarshal(&r.init); err != nil {
		return err
	}
	if r.init.Version != proto.HostAPIVersion {
		return fmt.Errorf("host API version %d not supported", r.init.Version)
	}
	r.files, err = proto.UnpackFiles(r.init.Files, f.Body, func(string) bool { return true })
	if err != nil {
		return err
	}
	var ready proto.Ready
	if r.init.Image == ImageWasm {
		ready.Error = r.loadWasm()
	} else {
		ready.Error = r.load()
	}
	ready.Error.Truncate()
	if err := conn.Send(proto.HReady, ready, nil); err != nil {
		return err
	}
	if ready.Error != nil {
		// bentod reads the error and then ends the container: the runner
		// waits for that instead of exiting at once, since its exit closes
		// bentod's end of the channel, which could happen before bentod
		// read the frame (the author then got "sandbox ended during
		// start-up" instead of the error at its line).
		for {
			f, err := conn.Read()
			if err != nil {
				return nil
			}
			f.Release()
		}
	}
	for {
		f, err := conn.Read()
		if err != nil {
			r.fail(err)
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		switch f.Type {
		case proto.HInvoke:
			var inv proto.HostInvoke
			if err := f.Unmarshal(&inv); err != nil {
				return err
			}
			if r.wasm != nil {
				ctx, cancel := context.WithCancelCause(context.Background())
				r.mu.Lock()
				r.cancels[inv.Inv] = cancel
				r.mu.Unlock()
				go r.invokeWasm(ctx, inv)
				continue
			}
			th := r.thread(inv.Inv)
			r.mu.Lock()
			r.threads[inv.Inv] = th
			r.mu.Unlock()
			go r.invoke(th, inv)
		case proto.HCancel:
			var c proto.Cancel
			if err := f.Unmarshal(&c); err != nil {
				return err
			}
			r.mu.Lock()
			th := r.threads[c.Inv]
			cancel := r.cancels[c.Inv]
			r.mu.Unlock()
			if th != nil {
				th.Cancel(c.Reason)
			}
			if cancel != nil {
				cancel(errors.New(c.Reason))
			}
		case proto.HReply:
			var rep proto.Reply
			if err := f.Unmarshal(&rep); err != nil {
				return err
			}
			r.mu.Lock()
			ch := r.pending[rep.ID]
			delete(r.pending, rep.ID)
			r.mu.Unlock()
			if ch != nil {
				ch <- f
			}
		default:
			return fmt.Errorf("unexpected frame type %d", f.Type)
		}
	}
}

func (r *Runner) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.err = err
	for id, ch := range r.pending {
		close(ch)
		delete(r.pending, id)
	}
}

// fileOptions enables the Python features functions are likely to use.
var fileOptions = &syntax.FileOptions{While: true, Recursion: true, TopLevelControl: true, GlobalReassign: true, Set: true}

// load executes the entry file and finds the function to call.
func (r *Runner) load() *proto.FuncError {
	cache := map[string]starlark.StringDict{}
	loading := map[string]bool{}
	loadFn := func(th *starlark.Thread, name string) (starlark.StringDict, error) {
		if g, ok := cache[name]; ok {
			return g, nil
		}
		if loading[name] {
			return nil, fmt.Errorf("load cycle through %q", name)
		}
		src, ok := r.files[name]
		if !ok {
			return nil, fmt.Errorf("load(%q): no such file in the function bundle", name)
		}
		loading[name] = true
		g, err := starlark.ExecFileOptions(fileOptions, th, name, src, r.predeclared())
		loading[name] = false
		if err != nil {
			return nil, err
		}
		cache[name] = g
		return g, nil
	}
	th := r.thread(0)
	th.Load = loadFn
	g, err := loadFn(th, r.init.Entry)
	if err != nil {
		return funcError(err)
	}
	v, ok := g[r.init.Function]
	if !ok {
		return &proto.FuncError{File: r.init.Entry, Msg: fmt.Sprintf("no function %q defined (set \"function\" in bento.toml)", r.init.Function)}
	}
	fn, ok := v.(starlark.Callable)
	if !ok {
		return &proto.FuncError{File: r.init.Entry, Msg: fmt.Sprintf("%q is a %s, not a function", r.init.Function, v.Type())}
	}
	r.fn = fn
	return nil
}

func (r *Runner) thread(inv uint64) *starlark.Thread {
	th := &starlark.Thread{Name: fmt.Sprintf("inv%d", inv)}
	th.SetLocal("inv", inv)
	th.Print = func(th *starlark.Thread, msg string) {
		// print() is the log host call; a denial surfaces as an error.
		if _, _, err := r.call(th, "log", map[string]string{"msg": msg}, nil); err != nil {
			th.Cancel(err.Error())
		}
	}
	if r.init.Steps > 0 {
		th.SetMaxExecutionSteps(r.init.Steps)
		th.OnMaxSteps = func(th *starlark.Thread) {
			th.Cancel(fmt.Sprintf("execution step limit (%d steps) exceeded", r.init.Steps))
		}
	}
	return th
}

func (r *Runner) invoke(th *starlark.Thread, inv proto.HostInvoke) {
	defer func() {
		r.mu.Lock()
		delete(r.threads, inv.Inv)
		r.mu.Unlock()
	}()
	done := proto.Done{Inv: inv.Inv}
	var body []byte
	args, err := argsFromJSON(inv.Args)
	if err != nil {
		done.Error = &proto.FuncError{Msg: "bad invocation arguments: " + err.Error()}
	} else {
		v, err := starlark.Call(th, r.fn, args, nil)
		switch {
		case err != nil:
			done.Error = funcError(err)
		case v == starlark.None:
			done.None = true
		default:
			if body, err = encodeValue(v); err != nil {
				done.Error = &proto.FuncError{Msg: "return value: " + err.Error()}
			} else if max := r.init.MaxBody; max > 0 && int64(len(body)) > max {
				done.Error = &proto.FuncError{Msg: fmt.Sprintf("output limit exceeded: the return value has %d bytes, more than the %d one piece of output may have here", len(body), max)}
				body = nil
			}
		}
	}
	done.Error.Truncate()
	_ = r.conn.Send(proto.HDone, done, body)
}

// call sends a host call of the Starlark thread's invocation and waits
// for the reply.
func (r *Runner) call(th *starlark.Thread, name string, args any, bulk []byte) (json.RawMessage, []byte, error) {
	inv, _ := th.Local("inv").(uint64)
	return r.callInv(context.Background(), inv, name, args, bulk)
}

// callInv sends a host call of invocation inv and waits for the reply, or
// for ctx to end (a cancelled wasm invocation stops waiting; the late
// reply is dropped).
func (r *Runner) callInv(ctx context.Context, inv uint64, name string, args any, bulk []byte) (json.RawMessage, []byte, error) {
	var raw json.RawMessage
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return nil, nil, err
		}
		raw = b
	}
	if max := r.init.MaxBody; max > 0 && int64(len(bulk)) > max {
		return nil, nil, fmt.Errorf("%s: %d bytes of data, more than the %d a host call may carry here", name, len(bulk), max)
	}
	ch := make(chan *wire.Frame, 1)
	r.mu.Lock()
	if r.err != nil {
		r.mu.Unlock()
		return nil, nil, fmt.Errorf("host connection lost: %v", r.err)
	}
	r.nextID++
	id := r.nextID
	r.pending[id] = ch
	r.mu.Unlock()
	if err := r.conn.Send(proto.HCall, proto.Call{ID: id, Inv: inv, Name: name, Args: raw}, bulk); err != nil {
		return nil, nil, err
	}
	var f *wire.Frame
	var ok bool
	select {
	case f, ok = <-ch:
	case <-ctx.Done():
		return nil, nil, context.Cause(ctx)
	}
	if !ok {
		return nil, nil, errors.New("host connection lost")
	}
	var rep proto.Reply
	if err := f.Unmarshal(&rep); err != nil {
		return nil, nil, err
	}
	if rep.Error != "" {
		return nil, nil, errors.New(rep.Error)
	}
	return rep.Result, f.Body, nil
}

// funcError turns a Starlark error into a located FuncError.
func funcError(err error) *proto.FuncError {
	var serr syntax.Error
	if errors.As(err, &serr) {
		return &proto.FuncError{File: serr.Pos.Filename(), Line: int(serr.Pos.Line), Col: int(serr.Pos.Col), Msg: serr.Msg}
	}
	var eerr *starlark.EvalError
	if errors.As(err, &eerr) {
		fe := &proto.FuncError{Msg: eerr.Msg, Backtrace: eerr.Backtrace()}
		// The innermost frame that is in the function's own code.
		for i := len(eerr.CallStack) - 1; i >= 0; i-- {
			pos := eerr.CallStack[i].Pos
			if pos.Filename() != "<builtin>" && pos.Line > 0 {
				fe.File, fe.Line, fe.Col = pos.Filename(), int(pos.Line), int(pos.Col)
				break
			}
		}
		var inner *starlark.EvalError
		if errors.As(eerr.Unwrap(), &inner) && inner != eerr {
			return funcError(inner)
		}
		return fe
	}
	return &proto.FuncError{Msg: err.Error()}
}

// argsFromJSON decodes a JSON array into Starlark values.
func argsFromJSON(raw json.RawMessage) (starlark.Tuple, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	var vals []any
	if err := json.Unmarshal(raw, &vals); err != nil {
		return nil, fmt.Errorf("want a JSON array: %v", err)
	}
	out := make(starlark.Tuple, len(vals))
	for i, v := range vals {
		sv, err := toStarlark(v)
		if err != nil {
			return nil, err
		}
		out[i] = sv
	}
	return out, nil
}

func toStarlark(v any) (starlark.Value, error) {
	switch v := v.(type) {
	case nil:
		return starlark.None, nil
	case bool:
		return starlark.Bool(v), nil
	case float64:
		if v == float64(int64(v)) && v < 1<<53 && v > -(1<<53) {
			return starlark.MakeInt64(int64(v)), nil
		}
		return starlark.Float(v), nil
	case string:
		return starlark.String(v), nil
	case []any:
		l := make([]starlark.Value, len(v))
		for i, e := range v {
			sv, err := toStarlark(e)
			if err != nil {
				return nil, err
			}
			l[i] = sv
		}
		return starlark.NewList(l), nil
	case map[string]any:
		d := starlark.NewDict(len(v))
		for k, e := range v {
			sv, err := toStarlark(e)
			if err != nil {
				return nil, err
			}
			d.SetKey(starlark.String(k), sv)
		}
		return d, nil
	}
	return nil, fmt.Errorf("unsupported JSON value %T", v)
}

// encodeValue turns a return value into output bytes: strings and bytes as
// they are, anything else as JSON.
func encodeValue(v starlark.Value) ([]byte, error) {
	switch v := v.(type) {
	case starlark.String:
		return []byte(v), nil
	case starlark.Bytes:
		return []byte(v), nil
	}
	th := &starlark.Thread{}
	enc := starlarkjson.Module.Members["encode"]
	s, err := starlark.Call(th, enc, starlark.Tuple{v}, nil)
	if err != nil {
		return nil, err
	}
	return []byte(s.(starlark.String)), nil
}

// bulkArg accepts str or bytes.
func bulkArg(fn string, v starlark.Value) ([]byte, error) {
	switch v := v.(type) {
	case starlark.String:
		return []byte(v), nil
	case starlark.Bytes:
		return []byte(v), nil
	}
	return nil, fmt.Errorf("%s: want str or bytes, got %s", fn, v.Type())
}
