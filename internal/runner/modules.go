package runner

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"

	starlarkjson "go.starlark.net/lib/json"
	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"

	"github.com/torbento/bento/internal/proto"
)

// predeclared returns the names every function file sees: the host
// modules bento, storage, http and remote, and the json module.
func (r *Runner) predeclared() starlark.StringDict {
	b := func(name string, fn func(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error)) *starlark.Builtin {
		return starlark.NewBuiltin(name, func(th *starlark.Thread, _ *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			return fn(th, args, kw)
		})
	}
	module := func(name string, members starlark.StringDict) *starlarkstruct.Module {
		return &starlarkstruct.Module{Name: name, Members: members}
	}
	return starlark.StringDict{
		"json": starlarkjson.Module,
		"bento": module("bento", starlark.StringDict{
			"send":    b("send", r.send),
			"recv":    b("recv", r.recv),
			"log":     b("log", r.log),
			"time":    b("time", r.time),
			"ends_at": b("ends_at", r.endsAt),
			"sleep":   b("sleep", r.sleep),
			"random":  b("random", r.random),
			"exit":    b("exit", r.exit),
			"source":  b("source", r.source),
		}),
		"storage": module("storage", starlark.StringDict{
			"put":    b("put", r.storagePut),
			"get":    b("get", r.storageGet),
			"delete": b("delete", r.storageDelete),
			"keys":   b("keys", r.storageKeys),
		}),
		"http": module("http", starlark.StringDict{
			"fetch": b("fetch", r.fetcher("http.fetch")),
		}),
		"tor": module("tor", starlark.StringDict{
			"fetch":   b("fetch", r.fetcher("tor.fetch")),
			"control": b("control", r.torControl),
			"event":   b("event", r.torEvent),
			"listen":  b("listen", r.torListen),
			"accept":  b("accept", r.torAccept),
			"dial":    b("dial", r.torDial),
			"read":    b("read", r.streamRead("tor")),
			"write":   b("write", r.streamWrite("tor")),
			"close":   b("close", r.streamClose("tor")),
			"splice":  b("splice", r.torSplice),
		}),
		"net": module("net", starlark.StringDict{
			"dial":  b("dial", r.netDial),
			"read":  b("read", r.streamRead("net")),
			"write": b("write", r.streamWrite("net")),
			"close": b("close", r.streamClose("net")),
		}),
		"remote": module("remote", starlark.StringDict{
			"deploy":   b("deploy", r.remoteDeploy),
			"invoke":   b("invoke", r.remoteInvoke),
			"shutdown": b("shutdown", r.remoteShutdown),
			"choose":   b("choose", r.remoteChoose),
		}),
	}
}

func (r *Runner) send(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var data starlark.Value
	if err := starlark.UnpackArgs("send", args, kw, "data", &data); err != nil {
		return nil, err
	}
	bulk, err := bulkArg("send", data)
	if err != nil {
		return nil, err
	}
	if _, _, err := r.call(th, "send", nil, bulk); err != nil {
		return nil, err
	}
	return starlark.MakeInt(len(bulk)), nil
}

func (r *Runner) recv(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var timeout starlark.Value = starlark.None
	if err := starlark.UnpackArgs("recv", args, kw, "timeout?", &timeout); err != nil {
		return nil, err
	}
	var a struct {
		Timeout float64 `json:"timeout,omitempty"`
	}
	if f, ok := starlark.AsFloat(timeout); ok {
		a.Timeout = f
	}
	res, body, err := r.call(th, "recv", a, nil)
	if err != nil {
		return nil, err
	}
	var out struct {
		EOF     bool `json:"eof"`
		Timeout bool `json:"timeout"`
	}
	_ = json.Unmarshal(res, &out)
	if out.EOF || out.Timeout {
		return starlark.None, nil
	}
	return starlark.Bytes(body), nil
}

func (r *Runner) log(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	if len(kw) > 0 {
		return nil, fmt.Errorf("log: unexpected keyword arguments")
	}
	msg := ""
	for i, a := range args {
		if i > 0 {
			msg += " "
		}
		if s, ok := a.(starlark.String); ok {
			msg += string(s)
		} else {
			msg += a.String()
		}
	}
	_, _, err := r.call(th, "log", map[string]string{"msg": msg}, nil)
	return starlark.None, err
}

// endsAt returns when the instance ends at the latest, in seconds since
// the epoch (as bento.time()): its lifetime's end, or its box's when the
// box ends first. A function keeping work for an offline user can hand
// it over before then.
func (r *Runner) endsAt(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	if err := starlark.UnpackArgs("ends_at", args, kw); err != nil {
		return nil, err
	}
	res, _, err := r.call(th, "ends_at", nil, nil)
	if err != nil {
		return nil, err
	}
	var out struct {
		At float64 `json:"at"`
	}
	if err := json.Unmarshal(res, &out); err != nil {
		return nil, err
	}
	return starlark.Float(out.At), nil
}

func (r *Runner) time(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	if err := starlark.UnpackArgs("time", args, kw); err != nil {
		return nil, err
	}
	res, _, err := r.call(th, "time", nil, nil)
	if err != nil {
		return nil, err
	}
	var out struct {
		Now float64 `json:"now"`
	}
	if err := json.Unmarshal(res, &out); err != nil {
		return nil, err
	}
	return starlark.Float(out.Now), nil
}

func (r *Runner) sleep(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var secs starlark.Value
	if err := starlark.UnpackArgs("sleep", args, kw, "seconds", &secs); err != nil {
		return nil, err
	}
	f, ok := starlark.AsFloat(secs)
	if !ok || f < 0 {
		return nil, fmt.Errorf("sleep: want a non-negative number of seconds")
	}
	_, _, err := r.call(th, "sleep", map[string]float64{"seconds": f}, nil)
	return starlark.None, err
}

func (r *Runner) random(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var n int
	if err := starlark.UnpackArgs("random", args, kw, "n", &n); err != nil {
		return nil, err
	}
	_, body, err := r.call(th, "random", map[string]int{"n": n}, nil)
	if err != nil {
		return nil, err
	}
	return starlark.Bytes(body), nil
}

func (r *Runner) exit(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	if err := starlark.UnpackArgs("exit", args, kw); err != nil {
		return nil, err
	}
	_, _, err := r.call(th, "exit", nil, nil)
	return starlark.None, err
}

// source returns a file of the function's own bundle, for composition.
func (r *Runner) source(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var name string
	if err := starlark.UnpackArgs("source", args, kw, "name", &name); err != nil {
		return nil, err
	}
	b, ok := r.files[name]
	if !ok {
		return nil, fmt.Errorf("source: no file %q in the function bundle", name)
	}
	return starlark.String(b), nil
}

func (r *Runner) storagePut(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var key string
	var val starlark.Value
	if err := starlark.UnpackArgs("put", args, kw, "key", &key, "value", &val); err != nil {
		return nil, err
	}
	bulk, err := bulkArg("storage.put", val)
	if err != nil {
		return nil, err
	}
	_, _, err = r.call(th, "storage.put", map[string]string{"key": key}, bulk)
	return starlark.None, err
}

func (r *Runner) storageGet(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var key string
	if err := starlark.UnpackArgs("get", args, kw, "key", &key); err != nil {
		return nil, err
	}
	res, body, err := r.call(th, "storage.get", map[string]string{"key": key}, nil)
	if err != nil {
		return nil, err
	}
	var out struct {
		Found bool `json:"found"`
	}
	_ = json.Unmarshal(res, &out)
	if !out.Found {
		return starlark.None, nil
	}
	return starlark.Bytes(body), nil
}

func (r *Runner) storageDelete(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var key string
	if err := starlark.UnpackArgs("delete", args, kw, "key", &key); err != nil {
		return nil, err
	}
	_, _, err := r.call(th, "storage.delete", map[string]string{"key": key}, nil)
	return starlark.None, err
}

func (r *Runner) storageKeys(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	if err := starlark.UnpackArgs("keys", args, kw); err != nil {
		return nil, err
	}
	_, body, err := r.call(th, "storage.keys", nil, nil)
	if err != nil {
		return nil, err
	}
	keys, err := proto.DecodeKeys(body)
	if err != nil {
		return nil, err
	}
	l := make([]starlark.Value, len(keys))
	for i, k := range keys {
		l[i] = starlark.String(k)
	}
	return starlark.NewList(l), nil
}

// FetchArgs are the arguments of http.fetch, as sent to bentod.
type FetchArgs struct {
	URL     string            `json:"url"`
	Method  string            `json:"method"`
	Headers map[string]string `json:"headers,omitempty"`
	Timeout float64           `json:"timeout,omitempty"`
}

// FetchResult is what bentod returns for http.fetch (the body is the
// frame's body).
type FetchResult struct {
	Status  int               `json:"status"`
	Headers map[string]string `json:"headers"`
}

// fetcher returns http.fetch or tor.fetch: the same call, carried out by
// bentod directly or through Tor.
func (r *Runner) fetcher(call string) func(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	return func(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
		return r.fetch(th, call, args, kw)
	}
}

func (r *Runner) fetch(th *starlark.Thread, call string, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var a FetchArgs
	var headers *starlark.Dict
	var body starlark.Value = starlark.None
	var timeout starlark.Value = starlark.None
	raise := true
	a.Method = "GET"
	if err := starlark.UnpackArgs("fetch", args, kw, "url", &a.URL, "method?", &a.Method, "headers?", &headers, "body?", &body, "timeout?", &timeout, "raise_error?", &raise); err != nil {
		return nil, err
	}
	if headers != nil {
		a.Headers = map[string]string{}
		for _, it := range headers.Items() {
			k, ok1 := starlark.AsString(it[0])
			v, ok2 := starlark.AsString(it[1])
			if !ok1 || !ok2 {
				return nil, fmt.Errorf("fetch: headers must map str to str")
			}
			a.Headers[k] = v
		}
	}
	if f, ok := starlark.AsFloat(timeout); ok {
		a.Timeout = f
	}
	var bulk []byte
	if body != starlark.None {
		var err error
		if bulk, err = bulkArg("fetch body", body); err != nil {
			return nil, err
		}
	}
	res, rbody, err := r.call(th, call, a, bulk)
	if err != nil {
		if !raise {
			// Starlark has no try/except: a function that retries
			// (Prefetch) tests for None.
			return starlark.None, nil
		}
		return nil, err
	}
	var out FetchResult
	if err := json.Unmarshal(res, &out); err != nil {
		return nil, err
	}
	h := starlark.NewDict(len(out.Headers))
	for k, v := range out.Headers {
		h.SetKey(starlark.String(k), starlark.String(v))
	}
	return starlarkstruct.FromStringDict(starlarkstruct.Default, starlark.StringDict{
		"status":  starlark.MakeInt(out.Status),
		"headers": h,
		"body":    starlark.Bytes(rbody),
	}), nil
}

// RemoteDeployArgs are the arguments of remote.deploy as sent to bentod;
// the files travel in the frame's body.
type RemoteDeployArgs struct {
	Server   string            `json:"server"`
	Manifest string            `json:"manifest"`
	Files    map[string]string `json:"files"`
}

func (r *Runner) remoteDeploy(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var a RemoteDeployArgs
	var files *starlark.Dict
	if err := starlark.UnpackArgs("deploy", args, kw, "server", &a.Server, "manifest", &a.Manifest, "files", &files); err != nil {
		return nil, err
	}
	a.Files = map[string]string{}
	for _, it := range files.Items() {
		k, ok1 := starlark.AsString(it[0])
		v, ok2 := starlark.AsString(it[1])
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("deploy: files must map file names to str")
		}
		a.Files[k] = v
	}
	res, _, err := r.call(th, "bento.deploy", a, nil)
	if err != nil {
		return nil, err
	}
	var out struct {
		Instance        string `json:"instance"`
		InvocationToken string `json:"invocation_token"`
		ShutdownToken   string `json:"shutdown_token"`
	}
	if err := json.Unmarshal(res, &out); err != nil {
		return nil, err
	}
	return starlarkstruct.FromStringDict(starlarkstruct.Default, starlark.StringDict{
		"instance":         starlark.String(out.Instance),
		"invocation_token": starlark.String(out.InvocationToken),
		"shutdown_token":   starlark.String(out.ShutdownToken),
	}), nil
}

// remoteChoose asks bentod for a box from the directory of boxes that can
// take a function with this manifest now (docs/boxes.md): its policy
// covers it, its remaining life covers the function's, it is not
// draining, and this function may reach it. It returns "ADDRESS:PORT".
func (r *Runner) remoteChoose(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var manifestText string
	if err := starlark.UnpackArgs("choose", args, kw, "manifest", &manifestText); err != nil {
		return nil, err
	}
	res, _, err := r.call(th, "bento.choose", map[string]string{"manifest": manifestText}, nil)
	if err != nil {
		return nil, err
	}
	var out struct {
		Server string `json:"server"`
	}
	if err := json.Unmarshal(res, &out); err != nil {
		return nil, err
	}
	return starlark.String(out.Server), nil
}

func (r *Runner) remoteInvoke(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var server, token string
	var fargs *starlark.List
	var input starlark.Value = starlark.None
	if err := starlark.UnpackArgs("invoke", args, kw, "server", &server, "token", &token, "args?", &fargs, "input?", &input); err != nil {
		return nil, err
	}
	var bulk []byte
	if input != starlark.None {
		var err error
		if bulk, err = bulkArg("invoke input", input); err != nil {
			return nil, err
		}
	}
	var argsJSON json.RawMessage = []byte("[]")
	if fargs != nil {
		enc, err := starlark.Call(th, starlarkjson.Module.Members["encode"], starlark.Tuple{fargs}, nil)
		if err != nil {
			return nil, err
		}
		argsJSON = []byte(enc.(starlark.String))
	}
	_, body, err := r.call(th, "bento.invoke", map[string]any{"server": server, "token": token, "args": argsJSON}, bulk)
	if err != nil {
		return nil, err
	}
	return starlark.Bytes(body), nil
}

func (r *Runner) remoteShutdown(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var server, token string
	if err := starlark.UnpackArgs("shutdown", args, kw, "server", &server, "token", &token); err != nil {
		return nil, err
	}
	_, _, err := r.call(th, "bento.shutdown", map[string]string{"server": server, "token": token}, nil)
	return starlark.None, err
}

// ControlResult is bentod's answer to tor.control: the reply as tor (or the
// firewall) gave it.
type ControlResult struct {
	Status int      `json:"status"`
	Lines  []string `json:"lines"`
	// Data holds the data blocks of "+" lines, by line index.
	Data map[int]string `json:"data,omitempty"`
}

func controlValue(res ControlResult) starlark.Value {
	lines := make([]starlark.Value, len(res.Lines))
	for i, l := range res.Lines {
		lines[i] = starlark.String(l)
	}
	data := starlark.NewDict(len(res.Data))
	for i, d := range res.Data {
		data.SetKey(starlark.MakeInt(i), starlark.String(d))
	}
	return starlarkstruct.FromStringDict(starlarkstruct.Default, starlark.StringDict{
		"status": starlark.MakeInt(res.Status),
		"ok":     starlark.Bool(res.Status >= 200 && res.Status < 300),
		"lines":  starlark.NewList(lines),
		"data":   data,
	})
}

// torControl sends one control-port command line through bentod's
// firewall: tor.control("EXTENDCIRCUIT 0") returns a struct with status,
// ok, lines and data.
func (r *Runner) torControl(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var line string
	if err := starlark.UnpackArgs("control", args, kw, "command", &line); err != nil {
		return nil, err
	}
	res, _, err := r.call(th, "tor.control", map[string]string{"command": line}, nil)
	if err != nil {
		return nil, err
	}
	var out ControlResult
	if err := json.Unmarshal(res, &out); err != nil {
		return nil, err
	}
	return controlValue(out), nil
}

// torEvent waits for the next control-port event the function subscribed
// to with SETEVENTS, as far as the firewall lets it see; None on timeout.
func (r *Runner) torEvent(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var tv starlark.Value = starlark.None
	if err := starlark.UnpackArgs("event", args, kw, "timeout?", &tv); err != nil {
		return nil, err
	}
	timeout, err := seconds("event", tv, 10)
	if err != nil {
		return nil, err
	}
	res, _, err := r.call(th, "tor.event", map[string]float64{"timeout": timeout}, nil)
	if err != nil {
		return nil, err
	}
	var out ControlResult
	if err := json.Unmarshal(res, &out); err != nil {
		return nil, err
	}
	if out.Status == 0 {
		return starlark.None, nil
	}
	return controlValue(out), nil
}

// StreamResult is bentod's answer to the tor stream calls.
type StreamResult struct {
	Conn    int    `json:"conn,omitempty"`
	Onion   string `json:"onion,omitempty"`
	EOF     bool   `json:"eof,omitempty"`
	Timeout bool   `json:"timeout,omitempty"`
}

// ReadResult is the answer to a stream read (tor.read, net.read) that
// read n bytes of buf and ended with err: the bytes, the end of the
// stream, a timeout, or an error naming the call.
func ReadResult(call string, buf []byte, n int, err error) (StreamResult, []byte, error) {
	if n > 0 {
		return StreamResult{}, buf[:n], nil
	}
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return StreamResult{Timeout: true}, nil, nil
	case errors.Is(err, io.EOF):
		return StreamResult{EOF: true}, []byte{}, nil
	}
	return StreamResult{}, nil, fmt.Errorf("%s: %v", call, err)
}

func (r *Runner) stream(th *starlark.Thread, call string, args any, bulk []byte) (StreamResult, []byte, error) {
	var out StreamResult
	res, body, err := r.call(th, call, args, bulk)
	if err != nil {
		return out, nil, err
	}
	if len(res) > 0 {
		if err := json.Unmarshal(res, &out); err != nil {
			return out, nil, err
		}
	}
	return out, body, nil
}

// torListen publishes an onion service on virtual port port whose
// connections the function takes with tor.accept; returns "xyz.onion".
func (r *Runner) torListen(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var port int
	if err := starlark.UnpackArgs("listen", args, kw, "port", &port); err != nil {
		return nil, err
	}
	res, _, err := r.stream(th, "tor.listen", map[string]int{"port": port}, nil)
	if err != nil {
		return nil, err
	}
	return starlark.String(res.Onion), nil
}

// torAccept waits for a connection to one of the function's onion
// services and returns its handle, or None on timeout.
func (r *Runner) torAccept(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var tv starlark.Value = starlark.None
	if err := starlark.UnpackArgs("accept", args, kw, "timeout?", &tv); err != nil {
		return nil, err
	}
	timeout, err := seconds("accept", tv, 0)
	if err != nil {
		return nil, err
	}
	res, _, err := r.stream(th, "tor.accept", map[string]float64{"timeout": timeout}, nil)
	if err != nil {
		return nil, err
	}
	if res.Timeout {
		return starlark.None, nil
	}
	return starlark.MakeInt(res.Conn), nil
}

// torDial opens a stream through Tor to host:port (.onion included) and
// returns its handle; with circuit, on that circuit of the function's own
// (built with tor.control("EXTENDCIRCUIT 0 ...")).
func (r *Runner) torDial(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var host string
	var port int
	var tv starlark.Value = starlark.None
	raise := true
	circuit := ""
	if err := starlark.UnpackArgs("dial", args, kw, "host", &host, "port", &port, "timeout?", &tv, "raise_error?", &raise, "circuit?", &circuit); err != nil {
		return nil, err
	}
	timeout, err := seconds("dial", tv, 60)
	if err != nil {
		return nil, err
	}
	res, _, err := r.stream(th, "tor.dial", map[string]any{"host": host, "port": port, "timeout": timeout, "circuit": circuit}, nil)
	if err != nil {
		if !raise {
			// Starlark has no try/except: a load balancer skips a dead
			// replica by testing for None.
			return starlark.None, nil
		}
		return nil, err
	}
	return starlark.MakeInt(res.Conn), nil
}

// netDial opens a direct TCP connection to host:port, which both the
// node's destination policy and the manifest must accept, and returns its
// handle (None with raise_error=False when it fails).
func (r *Runner) netDial(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var host string
	var port int
	var tv starlark.Value = starlark.None
	raise := true
	if err := starlark.UnpackArgs("dial", args, kw, "host", &host, "port", &port, "timeout?", &tv, "raise_error?", &raise); err != nil {
		return nil, err
	}
	timeout, err := seconds("dial", tv, 60)
	if err != nil {
		return nil, err
	}
	res, _, err := r.stream(th, "net.dial", map[string]any{"host": host, "port": port, "timeout": timeout}, nil)
	if err != nil {
		if !raise {
			return starlark.None, nil
		}
		return nil, err
	}
	return starlark.MakeInt(res.Conn), nil
}

// Starlark builtins have one signature; the stream calls of the tor and
// net modules differ only in their prefix.
type builtinFunc = func(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error)

// streamRead reads up to n bytes: b"" at end of stream, None on timeout.
func (r *Runner) streamRead(prefix string) builtinFunc {
	return func(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
		return r.readStream(th, prefix+".read", args, kw)
	}
}

func (r *Runner) streamWrite(prefix string) builtinFunc {
	return func(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
		return r.writeStream(th, prefix+".write", args, kw)
	}
}

func (r *Runner) streamClose(prefix string) builtinFunc {
	return func(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
		var conn int
		if err := starlark.UnpackArgs("close", args, kw, "conn", &conn); err != nil {
			return nil, err
		}
		_, _, err := r.stream(th, prefix+".close", map[string]int{"conn": conn}, nil)
		return starlark.None, err
	}
}

func (r *Runner) readStream(th *starlark.Thread, call string, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var conn int
	n := 65536
	var tv starlark.Value = starlark.None
	if err := starlark.UnpackArgs("read", args, kw, "conn", &conn, "n?", &n, "timeout?", &tv); err != nil {
		return nil, err
	}
	timeout, err := seconds("read", tv, 0)
	if err != nil {
		return nil, err
	}
	res, body, err := r.stream(th, call, map[string]any{"conn": conn, "n": n, "timeout": timeout}, nil)
	if err != nil {
		return nil, err
	}
	if res.Timeout {
		return starlark.None, nil
	}
	return starlark.Bytes(body), nil
}

func (r *Runner) writeStream(th *starlark.Thread, call string, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var conn int
	var data starlark.Value
	if err := starlark.UnpackArgs("write", args, kw, "conn", &conn, "data", &data); err != nil {
		return nil, err
	}
	bulk, err := bulkArg("write", data)
	if err != nil {
		return nil, err
	}
	if _, _, err := r.stream(th, call, map[string]int{"conn": conn}, bulk); err != nil {
		return nil, err
	}
	return starlark.None, nil
}

// torSplice hands two streams to bentod, which copies each way until one
// side ends, then closes both. It returns at once.
func (r *Runner) torSplice(th *starlark.Thread, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var a, b int
	if err := starlark.UnpackArgs("splice", args, kw, "a", &a, "b", &b); err != nil {
		return nil, err
	}
	_, _, err := r.stream(th, "tor.splice", map[string]int{"a": a, "b": b}, nil)
	return starlark.None, err
}

// seconds reads a timeout given as an int, a float or None (def).
func seconds(fn string, v starlark.Value, def float64) (float64, error) {
	if v == starlark.None {
		return def, nil
	}
	f, ok := starlark.AsFloat(v)
	if !ok || f < 0 {
		return 0, fmt.Errorf("%s: timeout must be a non-negative number of seconds, got %s", fn, v.Type())
	}
	return f, nil
}
