package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/torbento/bento/internal/exitpolicy"
	"github.com/torbento/bento/internal/fsprotect"
	"github.com/torbento/bento/internal/kvstore"
	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/netcheck"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/runner"
	"github.com/torbento/bento/internal/server"
	"github.com/torbento/bento/internal/units"
	"github.com/torbento/bento/internal/wire"
)

// bento dev DIR [ARG...] runs a function on the author's machine: the
// runner's own code, in this process, over a pipe to an emulator of the
// host API that checks what bentod checks (the manifest's apis and the
// policy, the output allowance, storage, steps, lifetime) and says what
// bentod says. No root, no runc, no server, and no sandbox: the code
// runs as the author, with no bound on its memory or CPU.

// devPolicyName names the policy of a dev run without --policy.
const devPolicyName = "built-in defaults"

// devInv is the one invocation of a dev run.
const devInv = 1

func (c *cli) dev(args []string) int {
	fs := c.newFlags("dev", "[-i] [--policy BENTORC] [--storage DIR] [--json] DIR [ARG...]")
	interactive := fs.Bool("i", false, "send standard input to the function's recv()")
	rc := fs.String("policy", "", "apply the policy of this bentorc (default: bentod's built-in defaults)")
	storeDir := fs.String("storage", "", "keep the function's storage in this directory, from run to run (default: a temporary one, removed at exit)")
	c.addJSON(fs)
	pos, code, err := c.parseFlags(fs, args)
	if err != nil {
		return code
	}
	if len(pos) < 1 {
		return c.usageErr("dev takes [-i] [--policy BENTORC] [--storage DIR] DIR [ARG...]")
	}
	dir := pos[0]
	fn, probs := checkDir(dir)
	if len(probs) > 0 {
		return c.reportProblems(dir, probs)
	}
	p, name, err := devPolicy(*rc)
	if err != nil {
		return c.errorf(exitUsage, nil, "--policy %s: %v", *rc, err)
	}
	m, err := manifest.Parse(fn.Manifest)
	if err != nil { // checkDir found nothing: not expected
		return c.errorf(exitProblems, nil, "%v", err)
	}
	m.Resolve(p)
	if vs := manifest.Check(m, p); len(vs) > 0 {
		msg := fmt.Sprintf("a server with this policy (%s) would refuse it: manifest of %q asks for more than this node's policy allows (%d items)", name, m.Name, len(vs))
		if c.json {
			c.jsonError(exitRefused, msg, map[string]any{"violations": vs})
			return exitRefused
		}
		fmt.Fprintf(c.stderr, "bento: %s\n", clean(msg))
		for _, v := range vs {
			fmt.Fprintf(c.stderr, "  %s\n", clean(v.String()))
		}
		return exitRefused
	}
	sdir := *storeDir
	if sdir == "" {
		if sdir, err = os.MkdirTemp("", "bento-dev-"); err != nil {
			return c.errorf(exitUsage, nil, "a temporary directory for the function's storage: %v", err)
		}
		defer os.RemoveAll(sdir)
	} else if err := os.MkdirAll(sdir, 0o700); err != nil {
		return c.errorf(exitUsage, nil, "--storage %s: %v", sdir, err)
	}
	// One run at a time on a store: a second one would write the same
	// file at once.
	lock, err := os.OpenFile(filepath.Join(sdir, "storage.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return c.errorf(exitUsage, nil, "--storage %s: %v", sdir, err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return c.errorf(exitUsage, nil, "--storage %s: another bento dev is using it (%v); one run at a time", sdir, err)
	}
	// The file bentod keeps an instance's storage in. A protected
	// function's (FS Protect) is sealed with a key of this run only, as
	// bentod's is of its own life: it starts empty every run, in a file of
	// its own, so the data of unprotected runs stays.
	opt, file := kvstore.Options{MaxBytes: m.Resources.Storage}, "storage.log"
	if m.Protect {
		k, err := fsprotect.NewKey()
		if err != nil {
			return c.errorf(exitUsage, nil, "an FS Protect key: %v", err)
		}
		opt.Seal, file = k, "storage.protected.log"
	}
	store, err := kvstore.Open(filepath.Join(sdir, file), opt)
	if err != nil {
		return c.errorf(exitUsage, nil, "--storage %s: %v", sdir, err)
	}
	defer store.Close()
	h := &devHost{c: c, m: m, p: p, store: store, interactive: *interactive, last: '\n'}
	return h.run(fn.Files, pos[1:])
}

// devPolicy returns the policy of a dev run and its name: the bentorc at
// path, or bentod's built-in defaults.
func devPolicy(path string) (*policy.Policy, string, error) {
	if path == "" {
		p, err := policy.Parse(devPolicyName, nil)
		return p, devPolicyName, err
	}
	p, err := policy.Load(path)
	return p, path, err
}

// devHost is the host API of a dev run: bentod's side of the runner's
// connection, for one invocation.
type devHost struct {
	c           *cli
	m           *manifest.Manifest
	p           *policy.Policy
	store       *kvstore.Store
	interactive bool
	conn        *wire.Conn
	ctx         context.Context // ends with the run
	start       time.Time
	input       chan []byte   // -i: standard input, in chunks
	eof         chan struct{} // closed at the end of standard input

	mu       sync.Mutex
	held     int64  // output allowance used: output records and log lines
	limitHit string // the limit that stops the invocation
	out      []byte // with --json: the output, printed at the end
	last     byte   // the output's last byte
	told     map[string]bool

	streams devStreams // net.* connections
}

// frameLimit is bentod's bound on a frame from the runner.
func (h *devHost) frameLimit() int64 { return policy.InstanceInFlight(h.m.Resources) / 2 }

func (h *devHost) run(files map[string][]byte, words []string) int {
	c := h.c
	defer h.streams.closeAll()
	var a io.ReadWriteCloser
	if h.m.Image == runner.ImagePython {
		// The python image's driver, run by the local python3 (not in a
		// sandbox: the author's own code on the author's machine).
		conn, err := startPythonDriver()
		if err != nil {
			return c.errorf(exitServer, nil, "starting python3: %v", err)
		}
		a = conn
	} else {
		p, b := net.Pipe()
		go func() {
			_ = runner.Serve(wire.NewConn(b))
			b.Close()
		}()
		a = p
	}
	defer a.Close()
	h.conn = wire.NewConn(a)
	h.conn.MaxFrame = int(h.frameLimit())
	ents, body := proto.PackFiles(files)
	init := proto.Init{Version: proto.HostAPIVersion, Name: h.m.Name, Entry: h.m.Entry, Function: h.m.Function,
		Steps: h.m.Resources.Steps, Files: ents, MaxBody: h.frameLimit() - 64<<10,
		Image: h.m.Image, Memory: h.m.Resources.Memory, APIs: h.m.APIs}
	if err := h.conn.Send(proto.HInit, init, body); err != nil {
		return c.errorf(exitServer, nil, "starting the runner: %v", err)
	}
	f, err := h.conn.Read()
	if err != nil {
		return c.errorf(exitServer, nil, "starting the runner: %v", err)
	}
	var ready proto.Ready
	if f.Type != proto.HReady || f.Unmarshal(&ready) != nil {
		return c.errorf(exitServer, nil, "starting the runner: frame type %d before ready", f.Type)
	}
	if fe := ready.Error; fe != nil {
		// What bentod refuses a deploy for (exit 8 there): here the
		// function's own error, with its place.
		if c.json {
			c.jsonError(exitFuncErr, "function failed to load: "+fe.Error(), map[string]any{"file": fe.File, "line": fe.Line, "col": fe.Col, "backtrace": fe.Backtrace})
			return exitFuncErr
		}
		fmt.Fprintf(c.stderr, "bento: function failed to load: %s\n", clean(fe.Error()))
		printBacktrace(c.stderr, fe.Backtrace)
		return exitFuncErr
	}

	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	h.ctx, h.start = ctx, time.Now()
	if h.interactive {
		h.input, h.eof = make(chan []byte), make(chan struct{})
		go h.readInput()
	}
	argsJSON, _ := json.Marshal(parseArgs(words))
	if err := h.conn.Send(proto.HInvoke, proto.HostInvoke{Inv: devInv, Args: argsJSON}, nil); err != nil {
		return c.errorf(exitServer, nil, "invoking the function: %v", err)
	}
	type frameOrErr struct {
		f   *wire.Frame
		err error
	}
	frames := make(chan frameOrErr)
	go func() {
		for {
			f, err := h.conn.Read()
			select {
			case frames <- frameOrErr{f, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	lifetime := time.NewTimer(h.m.Resources.Lifetime)
	defer lifetime.Stop()
	var exit proto.Exit
	for exit.Status == "" {
		select {
		case fe := <-frames:
			if fe.err != nil {
				return c.errorf(exitServer, nil, "the runner failed: %v", fe.err)
			}
			switch fe.f.Type {
			case proto.HCall:
				var call proto.Call
				if err := fe.f.Unmarshal(&call); err != nil {
					return c.errorf(exitServer, nil, "the runner sent a bad call: %v", err)
				}
				h.dispatch(call, fe.f.Body)
			case proto.HDone:
				var d proto.Done
				if err := fe.f.Unmarshal(&d); err != nil {
					return c.errorf(exitServer, nil, "the runner sent a bad result: %v", err)
				}
				exit = h.finish(d, fe.f.Body)
			default:
				return c.errorf(exitServer, nil, "the runner sent frame type %d", fe.f.Type)
			}
		case <-lifetime.C:
			exit = h.stop("lifetime limit reached (" + h.m.Resources.Lifetime.String() + ")")
		case <-c.ctx.Done():
			h.stop("interrupted")
			return c.interrupted("")
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if c.json {
		res := map[string]any{"session": "dev", "status": exit.Status}
		if utf8.Valid(h.out) {
			res["output"] = string(h.out)
		} else {
			res["output_base64"] = h.out
		}
		b, _ := json.Marshal(res)
		fmt.Fprintf(c.stdout, "%s\n", b)
	} else if c.terminal && h.last != '\n' {
		fmt.Fprintln(c.stdout)
	}
	return c.exitCode(&exit)
}

// stop ends the invocation for reason: the runner cancels it, and the
// calls waiting (recv, sleep, fetch) end.
func (h *devHost) stop(reason string) proto.Exit {
	h.mu.Lock()
	if h.limitHit == "" {
		h.limitHit = reason
	}
	reason = h.limitHit
	h.mu.Unlock()
	_ = h.conn.Send(proto.HCancel, proto.Cancel{Inv: devInv, Reason: reason}, nil)
	return proto.Exit{Status: proto.StatusKilled, Reason: reason}
}

// finish is the invocation's end, as bentod records it.
func (h *devHost) finish(d proto.Done, body []byte) proto.Exit {
	exit := proto.Exit{Status: proto.StatusOK}
	if d.Error != nil {
		d.Error.Truncate()
		exit = proto.Exit{Status: proto.StatusError, Error: d.Error}
	} else if !d.None && len(body) > 0 {
		_ = h.output(body) // over the limit, limitHit says why
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.limitHit != "" {
		exit = proto.Exit{Status: proto.StatusKilled, Reason: h.limitHit}
	}
	return exit
}

func printBacktrace(w io.Writer, bt string) {
	if bt == "" {
		return
	}
	for _, l := range strings.Split(strings.TrimSpace(bt), "\n") {
		fmt.Fprintf(w, "%s\n", clean(l))
	}
}

// readInput sends standard input to recv(), in chunks as bento invoke -i
// sends them.
func (h *devHost) readInput() {
	defer close(h.eof)
	buf := make([]byte, 32<<10)
	for {
		n, err := h.c.stdin.Read(buf)
		if n > 0 {
			select {
			case h.input <- append([]byte(nil), buf[:n]...):
			case <-h.ctx.Done():
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// output sends data to the caller within the output allowance, as
// bentod's Instance.output does; each record counts 16 bytes beyond its
// data.
func (h *devHost) output(data []byte) error {
	cost := int64(len(data)) + 16
	limit := h.m.Resources.Output
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held+cost > limit {
		reason := server.OutputLimitReason(limit)
		if h.limitHit == "" {
			h.limitHit = reason
		}
		return fmt.Errorf("output limit exceeded: %s", reason)
	}
	h.held += cost
	if len(data) == 0 {
		return nil
	}
	h.last = data[len(data)-1]
	if h.c.json {
		h.out = append(h.out, data...)
		return nil
	}
	if _, err := h.c.stdout.Write(data); err != nil {
		return fmt.Errorf("output could not be written: %v", err)
	}
	return nil
}

// log writes a line of the function's log to stderr, "log: " before
// each line, charged to the output allowance as bentod charges the log
// it keeps.
func (h *devHost) log(msg string) error {
	if len(msg) > 4096 {
		msg = msg[:4096] + "…"
	}
	cost := int64(len(time.Now().UTC().Format(time.RFC3339)) + 1 + len(msg) + 1)
	limit := h.m.Resources.Output
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held+cost > limit {
		return fmt.Errorf("output limit exceeded (%s)", units.FormatSize(limit))
	}
	h.held += cost
	for _, l := range strings.Split(msg, "\n") {
		fmt.Fprintf(h.c.stderr, "log: %s\n", clean(l))
	}
	return nil
}

// note tells the author something about the emulation, once per key.
func (h *devHost) note(key, format string, a ...any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.told[key] {
		return
	}
	if h.told == nil {
		h.told = map[string]bool{}
	}
	h.told[key] = true
	fmt.Fprintf(h.c.stderr, "bento: dev: "+format+"\n", a...)
}

// dispatch checks a host call as bentod does, then carries it out;
// calls that may block run on their own goroutine.
func (h *devHost) dispatch(call proto.Call, body []byte) {
	reply := func(res any, bulk []byte, err error) {
		rep := proto.Reply{ID: call.ID}
		if err != nil {
			rep.Error = err.Error()
		} else if res != nil {
			rep.Result, _ = json.Marshal(res)
		}
		_ = h.conn.Send(proto.HReply, rep, bulk)
	}
	if err := server.CheckCall(call.Name, h.m, h.p); err != nil {
		reply(nil, nil, err)
		return
	}
	if (call.Name == "send" || call.Name == "recv") && call.Inv != devInv {
		reply(nil, nil, fmt.Errorf("%s() can only be called during an invocation", call.Name))
		return
	}
	switch api := server.APIFor(call.Name); {
	case call.Name == "send":
		reply(nil, nil, h.output(body))
	case call.Name == "log":
		var a struct {
			Msg string `json:"msg"`
		}
		_ = json.Unmarshal(call.Args, &a)
		reply(nil, nil, h.log(a.Msg))
	case call.Name == "time":
		reply(map[string]float64{"now": float64(time.Now().UnixNano()) / 1e9}, nil, nil)
	case call.Name == "ends_at":
		end := h.start.Add(h.m.Resources.Lifetime)
		reply(map[string]any{"at": float64(end.UnixNano()) / 1e9, "box": false}, nil, nil)
	case call.Name == "random":
		var a struct {
			N int `json:"n"`
		}
		_ = json.Unmarshal(call.Args, &a)
		if a.N < 0 || a.N > 1<<20 {
			reply(nil, nil, fmt.Errorf("random: n must be 0-1048576"))
			return
		}
		b := make([]byte, a.N)
		_, _ = rand.Read(b)
		reply(nil, b, nil)
	case call.Name == "exit":
		// The instance would end once this invocation returns: a dev
		// run ends then anyway.
		reply(nil, nil, nil)
	case api == policy.APIStorage:
		reply(h.storage(call.Name, call.Args, body))
	case call.Name == "recv":
		go func() { reply(h.recv(call.Args)) }()
	case call.Name == "sleep":
		go func() { reply(h.sleep(call.Args)) }()
	case call.Name == "http.fetch":
		go func() { reply(h.fetch(call.Args, body)) }()
	case api == policy.APINet:
		go func() { reply(h.netCall(call.Name, call.Args, body)) }()
	case strings.HasPrefix(api, "tor."):
		h.note(call.Name, "%s() answered an error: tor.* is not emulated", call.Name)
		reply(nil, nil, fmt.Errorf("%s: not emulated by bento dev: deploy to a server to use tor.*", call.Name))
	case api == policy.APIBento:
		short := "remote." + strings.TrimPrefix(call.Name, "bento.")
		h.note(call.Name, "%s() answered an error: remote.* is not emulated", short)
		reply(nil, nil, fmt.Errorf("%s: not emulated by bento dev: deploy to a server to use remote.*", short))
	default:
		reply(nil, nil, fmt.Errorf("unknown host call %q", call.Name))
	}
}

// storage carries out the storage calls on the store in --storage, with
// bentod's checks and words.
func (h *devHost) storage(name string, args json.RawMessage, body []byte) (any, []byte, error) {
	var a struct {
		Key string `json:"key"`
	}
	_ = json.Unmarshal(args, &a)
	if name != "storage.keys" && (a.Key == "" || len(a.Key) > kvstore.MaxKeyLen) {
		return nil, nil, fmt.Errorf("storage: key must be 1-%d bytes", kvstore.MaxKeyLen)
	}
	switch name {
	case "storage.put":
		err := h.store.Put(a.Key, body)
		switch {
		case errors.Is(err, kvstore.ErrFull):
			return nil, nil, server.StorageFullError(h.m.Resources.Storage)
		case errors.Is(err, kvstore.ErrTooMany):
			return nil, nil, fmt.Errorf("storage limit exceeded: too many keys")
		case err != nil:
			return nil, nil, fmt.Errorf("storage: %v", err)
		}
		return nil, nil, nil
	case "storage.get":
		b, ok, err := h.store.Get(a.Key)
		if err != nil {
			return nil, nil, fmt.Errorf("storage: %v", err)
		}
		return map[string]bool{"found": ok}, b, nil
	case "storage.delete":
		if err := h.store.Delete(a.Key); err != nil {
			return nil, nil, fmt.Errorf("storage: %v", err)
		}
		return nil, nil, nil
	case "storage.keys":
		return nil, proto.EncodeKeys(h.store.Keys()), nil
	}
	return nil, nil, fmt.Errorf("unknown host call %q", name)
}

// errStopped answers calls the end of the run cut short; the runner
// hears of the cancellation, and the answer goes nowhere.
var errStopped = errors.New("the invocation was stopped")

// wait bounds a wait to most (bentod's bound on a timeout argument):
// a value out of range means most.
func wait(v float64, most time.Duration) time.Duration {
	if v > 0 && v < most.Seconds() {
		return time.Duration(v * float64(time.Second))
	}
	return most
}

func (h *devHost) recv(args json.RawMessage) (any, []byte, error) {
	var a struct {
		Timeout float64 `json:"timeout"`
	}
	_ = json.Unmarshal(args, &a)
	var timeout <-chan time.Time
	if a.Timeout > 0 {
		t := time.NewTimer(wait(a.Timeout, h.m.Resources.Lifetime))
		defer t.Stop()
		timeout = t.C
	}
	if !h.interactive {
		// As on a server invoked without -i: no input comes, and recv()
		// waits (for its timeout, or the lifetime).
		h.note("recv", "recv() waits for input, and without -i none comes: bento dev -i sends standard input to it")
		select {
		case <-timeout:
			return map[string]bool{"timeout": true}, nil, nil
		case <-h.ctx.Done():
			return nil, nil, errStopped
		}
	}
	select {
	case b := <-h.input:
		return nil, b, nil
	case <-h.eof:
		return map[string]bool{"eof": true}, nil, nil
	case <-timeout:
		return map[string]bool{"timeout": true}, nil, nil
	case <-h.ctx.Done():
		return nil, nil, errStopped
	}
}

func (h *devHost) sleep(args json.RawMessage) (any, []byte, error) {
	var a struct {
		Seconds float64 `json:"seconds"`
	}
	_ = json.Unmarshal(args, &a)
	d := h.m.Resources.Lifetime
	if a.Seconds >= 0 && a.Seconds < d.Seconds() {
		d = time.Duration(a.Seconds * float64(time.Second))
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil, nil, nil
	case <-h.ctx.Done():
		return nil, nil, errStopped
	}
}

// fetch carries out http.fetch as bentod does, from this machine: every
// connection, redirects included, to an address both the policy's
// DestinationPolicy and the manifest's destinations accept (netcheck,
// as bentod), the response at most the policy's MaxFetchSize. (A relay's
// exit policy, which bentod beside a relay applies too, is not known
// here.)
func (h *devHost) fetch(args json.RawMessage, body []byte) (any, []byte, error) {
	const name = "fetch"
	var a runner.FetchArgs
	if err := json.Unmarshal(args, &a); err != nil {
		return nil, nil, fmt.Errorf("%s: bad arguments", name)
	}
	u, err := url.Parse(a.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, nil, fmt.Errorf("%s: %q is not an http:// or https:// URL", name, cut(a.URL, 200))
	}
	timeout := 30 * time.Second
	if a.Timeout > 0 {
		timeout = wait(a.Timeout, 300*time.Second)
	}
	ctx, cancel := context.WithTimeout(h.ctx, timeout)
	defer cancel()
	dialer := &netcheck.Checked{Policies: []*exitpolicy.Policy{h.p.Destinations, h.m.Dest}}
	if _, err := dialer.Check(ctx, fetchHostPort(u)); err != nil {
		return nil, nil, fmt.Errorf("fetch: %w", err)
	}
	tr := &http.Transport{DialContext: dialer.DialContext, Proxy: nil, DisableKeepAlives: true,
		ResponseHeaderTimeout: timeout, MaxResponseHeaderBytes: 64 << 10}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if len(via) >= 5 {
			return errors.New("too many redirects")
		}
		return nil
	}}
	method := strings.ToUpper(a.Method)
	if method == "" {
		method = "GET"
	}
	var rb io.Reader
	if len(body) > 0 {
		rb = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.URL, rb)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %v", name, err)
	}
	if len(a.Headers) > 64 {
		return nil, nil, fmt.Errorf("%s: at most 64 headers", name)
	}
	for k, v := range a.Headers {
		req.Header.Set(k, v)
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "bento")
	}
	resp, err := cl.Do(req)
	if err != nil {
		var de *netcheck.DeniedError
		if errors.As(err, &de) {
			return nil, nil, fmt.Errorf("%s: %w", name, de)
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, nil, fmt.Errorf("%s %s: %v", name, u.Redacted(), err)
	}
	defer resp.Body.Close()
	limit := h.m.Resources.Fetch
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: reading body: %v", name, err)
	}
	if int64(len(data)) > limit {
		return nil, nil, fmt.Errorf("%s: response body exceeds %s (MaxFetchSize)", name, units.FormatSize(limit))
	}
	hdrs := map[string]string{}
	for k := range resp.Header {
		hdrs[strings.ToLower(k)] = resp.Header.Get(k)
	}
	return runner.FetchResult{Status: resp.StatusCode, Headers: hdrs}, data, nil
}

func fetchHostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "https" {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return net.JoinHostPort(u.Hostname(), "80")
}

func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
