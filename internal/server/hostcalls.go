package server

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
	"net/netip"
	"net/url"
	"runtime/debug"
	"strings"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/exitpolicy"
	"github.com/torbento/bento/internal/fsprotect"
	"github.com/torbento/bento/internal/kvstore"
	"github.com/torbento/bento/internal/netcheck"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/runner"
	"github.com/torbento/bento/internal/socks"
	"github.com/torbento/bento/internal/torctl"
	"github.com/torbento/bento/internal/units"
	"github.com/torbento/bento/internal/wire"
)

// errStopped means the call's runtime stopped; no reply is sent.
var errStopped = errors.New("instance stopped")

// hostCall is one call being carried out. Bytes it holds (its argument
// frame, results read for it) are charged to the instance's budget until
// the reply is written; after runs then.
type hostCall struct {
	in    *Instance
	rt    *runtime
	s     *session
	args  json.RawMessage
	body  []byte
	after []func()
}

// hold charges n bytes to the instance until the reply is written.
func (h *hostCall) hold(ctx context.Context, n int64) error {
	if n <= 0 || n <= wire.FreeFrame {
		return nil
	}
	if err := h.in.budget.Acquire(ctx, n); err != nil {
		return fmt.Errorf("too much data in flight on this node; retry later")
	}
	h.after = append(h.after, func() { h.in.budget.Release(n) })
	return nil
}

// ctx returns a context cancelled when the call's runtime ends.
func (h *hostCall) ctx(timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	go func() {
		select {
		case <-h.rt.exited():
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// dispatch checks a host call against the manifest and the policy, then
// carries it out. Calls that may block run on their own goroutine.
func (in *Instance) dispatch(rt *runtime, call proto.Call, f *wire.Frame) {
	h := &hostCall{in: in, rt: rt, args: call.Args, body: f.Body}
	h.after = append(h.after, f.Release, func() { rt.calls.Add(-1) })
	reply := func(err error, result any, bulk []byte) {
		rep := proto.Reply{ID: call.ID}
		if err != nil {
			rep.Error = err.Error()
		} else if result != nil {
			rep.Result, _ = json.Marshal(result)
		}
		_ = rt.send(proto.HReply, rep, bulk)
	}
	finish := func(res any, bulk []byte, err error) {
		if err != errStopped {
			reply(err, res, bulk)
		}
		for _, a := range h.after {
			a()
		}
	}
	api := APIFor(call.Name)
	in.srv.met.hostCalls.With(hostCallLabel(api)).Inc()
	if err := CheckCall(call.Name, in.mf(), in.srv.policy()); err != nil {
		if policy.KnownAPI(api) && !in.mf().Has(api) {
			in.log.Info("host call denied", "instance", in.id, "call", call.Name, "why", "not in manifest")
		}
		finish(nil, nil, err)
		return
	}
	in.mu.Lock()
	h.s = in.byInv[call.Inv]
	in.mu.Unlock()
	if (call.Name == "send" || call.Name == "recv") && h.s == nil {
		finish(nil, nil, fmt.Errorf("%s() can only be called during an invocation", call.Name))
		return
	}
	switch call.Name {
	case "send":
		finish(nil, nil, in.output(h.s, h.body))
	case "log":
		var a struct {
			Msg string `json:"msg"`
		}
		_ = json.Unmarshal(call.Args, &a)
		finish(nil, nil, in.appendLog(a.Msg))
	case "time":
		finish(map[string]float64{"now": float64(time.Now().UnixNano()) / 1e9}, nil, nil)
	case "ends_at":
		end, box := in.endsAt()
		finish(map[string]any{"at": float64(end.UnixNano()) / 1e9, "box": box}, nil, nil)
	case "random":
		var a struct {
			N int `json:"n"`
		}
		_ = json.Unmarshal(call.Args, &a)
		if a.N < 0 || a.N > 1<<20 {
			finish(nil, nil, fmt.Errorf("random: n must be 0-1048576"))
			return
		}
		ctx, cancel := h.ctx(30 * time.Second)
		err := h.hold(ctx, int64(a.N))
		cancel()
		if err != nil {
			finish(nil, nil, fmt.Errorf("random: %w", err))
			return
		}
		b := make([]byte, a.N)
		_, _ = rand.Read(b)
		finish(nil, b, nil)
	case "exit":
		// The instance ends when the calling invocation finishes; no new
		// invocation is accepted meanwhile.
		in.mu.Lock()
		in.exiting = true
		in.mu.Unlock()
		finish(nil, nil, nil)
	case "storage.put", "storage.get", "storage.delete", "storage.keys":
		res, bulk, err := h.storage(call.Name)
		finish(res, bulk, err)
	case "recv", "sleep", "http.fetch", "tor.fetch", "tor.control", "tor.event", "bento.deploy", "bento.invoke", "bento.shutdown", "bento.choose",
		"tor.listen", "tor.accept", "tor.dial", "tor.read", "tor.write", "tor.close", "tor.splice",
		"net.dial", "net.read", "net.write", "net.close":
		go func() {
			defer func() {
				if r := recover(); r != nil {
					in.srv.log.Error("internal error in a host call (a bug: please report it)", "call", call.Name, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
					finish(nil, nil, fmt.Errorf("bentod failed while carrying out %s; retry later", call.Name))
				}
			}()
			res, bulk, err := h.blocking(call.Name)
			finish(res, bulk, err)
		}()
	default:
		finish(nil, nil, fmt.Errorf("unknown host call %q", truncate(call.Name, 40)))
	}
}

// storage implements the key/value host calls on the instance's store.
// Errors name no path: they reach the function and its callers.
func (h *hostCall) storage(name string) (any, []byte, error) {
	in := h.in
	var a struct {
		Key string `json:"key"`
	}
	_ = json.Unmarshal(h.args, &a)
	if name != "storage.keys" && (a.Key == "" || len(a.Key) > kvstore.MaxKeyLen) {
		return nil, nil, fmt.Errorf("storage: key must be 1-%d bytes", kvstore.MaxKeyLen)
	}
	internal := func(err error) error {
		in.log.Warn("storage", "instance", in.id, "call", name, "err", err)
		return fmt.Errorf("storage: bentod could not %s (its disk?); retry later", strings.TrimPrefix(name, "storage."))
	}
	switch name {
	case "storage.put":
		err := in.store.Put(a.Key, h.body)
		switch {
		case errors.Is(err, kvstore.ErrFull):
			return nil, nil, StorageFullError(in.mf().Resources.Storage)
		case errors.Is(err, kvstore.ErrTooMany):
			return nil, nil, fmt.Errorf("storage limit exceeded: too many keys")
		case errors.Is(err, fsprotect.ErrExhausted):
			// Not the disk, and a retry cannot help.
			return nil, nil, fmt.Errorf("storage: %w", err)
		case err != nil:
			return nil, nil, internal(err)
		}
		return nil, nil, nil
	case "storage.get":
		n, ok := in.store.Size(a.Key)
		if !ok {
			return map[string]bool{"found": false}, nil, nil
		}
		ctx, cancel := h.ctx(30 * time.Second)
		defer cancel()
		if err := h.hold(ctx, int64(n)); err != nil {
			return nil, nil, fmt.Errorf("storage: %w", err)
		}
		b, ok, err := in.store.Get(a.Key)
		if errors.Is(err, fsprotect.ErrTampered) {
			in.log.Warn("storage: a sealed record failed its integrity check", "instance", in.id)
			return nil, nil, fmt.Errorf("storage: %w", err)
		}
		if err != nil {
			return nil, nil, internal(err)
		}
		return map[string]bool{"found": ok}, b, nil
	case "storage.delete":
		if err := in.store.Delete(a.Key); err != nil {
			return nil, nil, internal(err)
		}
		return nil, nil, nil
	default: // keys: in the body, charged to the instance
		keys := in.store.Keys()
		n := 0
		for _, k := range keys {
			n += 2 + len(k)
		}
		ctx, cancel := h.ctx(30 * time.Second)
		defer cancel()
		if err := h.hold(ctx, int64(n)); err != nil {
			return nil, nil, fmt.Errorf("storage: %w", err)
		}
		return nil, proto.EncodeKeys(keys), nil
	}
}

func (h *hostCall) blocking(name string) (any, []byte, error) {
	switch name {
	case "recv":
		return h.recv()
	case "sleep":
		var a struct {
			Seconds float64 `json:"seconds"`
		}
		_ = json.Unmarshal(h.args, &a)
		d := h.in.mf().Resources.Lifetime
		if a.Seconds >= 0 && a.Seconds < d.Seconds() {
			d = time.Duration(a.Seconds * float64(time.Second))
		}
		select {
		case <-time.After(d):
			return nil, nil, nil
		case <-h.rt.exited():
			return nil, nil, errStopped
		}
	case "http.fetch":
		return h.fetch(false)
	case "tor.fetch":
		return h.fetch(true)
	case "tor.control":
		return h.torControl()
	case "tor.event":
		return h.torEvent()
	case "tor.listen", "tor.accept", "tor.dial", "tor.read", "tor.write", "tor.close", "tor.splice",
		"net.dial", "net.read", "net.write", "net.close":
		return h.torStream(name)
	case "bento.deploy", "bento.invoke", "bento.shutdown":
		return h.remote(name)
	case "bento.choose":
		return h.choose()
	}
	return nil, nil, fmt.Errorf("unknown host call %q", name)
}

// seconds turns a timeout argument into a duration within (0, most]; a
// value out of range (negative, NaN, huge) means most.
func seconds(v float64, most time.Duration) time.Duration {
	if v > 0 && v < most.Seconds() {
		return time.Duration(v * float64(time.Second))
	}
	return most
}

func (h *hostCall) recv() (any, []byte, error) {
	var a struct {
		Timeout float64 `json:"timeout"`
		// Poll: do not wait; {"timeout": true} at once when no input is
		// pending (the python image's api.poll()).
		Poll bool `json:"poll"`
	}
	_ = json.Unmarshal(h.args, &a)
	var timeout <-chan time.Time
	if a.Timeout > 0 && !a.Poll {
		t := time.NewTimer(seconds(a.Timeout, h.in.mf().Resources.Lifetime))
		defer t.Stop()
		timeout = t.C
	}
	give := func(f *wire.Frame) (any, []byte, error) {
		// The client's bytes stay charged to it until the reply is sent.
		h.after = append(h.after, f.Release)
		return nil, f.Body, nil
	}
	select {
	case f := <-h.s.input:
		return give(f)
	default:
	}
	if a.Poll {
		select {
		case <-h.s.eof:
			return map[string]bool{"eof": true}, nil, nil
		default:
			return map[string]bool{"timeout": true}, nil, nil
		}
	}
	select {
	case f := <-h.s.input:
		return give(f)
	case <-h.s.eof:
		select {
		case f := <-h.s.input:
			return give(f)
		default:
		}
		return map[string]bool{"eof": true}, nil, nil
	case <-timeout:
		return map[string]bool{"timeout": true}, nil, nil
	case <-h.rt.exited():
		return nil, nil, errStopped
	}
}

// policies returns the node's destination policy and the manifest's: every
// destination a function reaches, directly or through Tor, must meet both.
func (h *hostCall) policies() []*exitpolicy.Policy {
	return []*exitpolicy.Policy{h.in.srv.policy().Destinations, h.in.mf().Dest}
}

// checked returns a dialer for direct connections: the destination
// policies and, beside a relay, the relay's own exit policy.
func (h *hostCall) checked() *netcheck.Checked {
	pols := h.policies()
	if t := h.in.srv.tor; t != nil {
		// Beside a relay, functions reach directly only what the relay's
		// exit policy accepts; until tor told us, nothing.
		ep := t.ExitPolicy()
		if ep == nil {
			ep = &exitpolicy.Policy{}
		}
		pols = append(pols, ep)
	}
	return &netcheck.Checked{
		Policies: pols,
		Dialer:   h.in.srv.transport,
		Resolver: h.in.srv.resolver,
	}
}

// torDialer returns a dialer through the node's TorSocksPort that checks
// every destination against the destination policies first (the exit or
// the onion service resolves the name: the name is what is checked). Each
// instance gets its own SOCKS credentials, so tor (IsolateSOCKSAuth, on by
// default) never puts two instances' streams on one circuit. On a node
// without a TorSocksPort the dialer still checks, and then refuses to dial:
// a destination the policies reject is refused as such everywhere.
func (h *hostCall) torDialer() *checkedTor {
	c := &checkedTor{pols: h.policies(), own: h.in.srv.Onion()}
	if p := h.in.srv.policy().TorSocksPort; p != "" {
		c.d = &socks.Dialer{Proxy: p, Username: h.in.socksUser(), Password: "bento"}
	}
	return c
}

// errNoTorSocks is the answer of a node that cannot reach Tor.
var errNoTorSocks = errors.New("this node has no Tor SOCKS port (TorSocksPort)")

// checkedTor is a SOCKS dialer that refuses destinations the policies
// reject, and this bentod's own onion service (a function reaches its own
// box with remote.*, which charges what it starts to its client).
type checkedTor struct {
	d    *socks.Dialer // nil: no TorSocksPort
	pols []*exitpolicy.Policy
	own  string // bentod's onion service, host:port
}

// ready tells whether the node can dial through Tor at all.
func (c *checkedTor) ready() error {
	if c.d == nil {
		return errNoTorSocks
	}
	return nil
}

func (c *checkedTor) check(addr string) error {
	if err := netcheck.CheckTor(c.pols, addr); err != nil {
		return err
	}
	if host, _, _ := net.SplitHostPort(addr); c.own != "" {
		ownHost, _, _ := net.SplitHostPort(c.own)
		o1, ok1, _ := netcheck.CanonicalOnion(host)
		o2, _, _ := netcheck.CanonicalOnion(ownHost)
		if ok1 && o1 == o2 {
			return &netcheck.DeniedError{Dest: addr, Why: "it is this box's own onion service (use remote.* to reach this box)"}
		}
	}
	return nil
}

func (c *checkedTor) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if err := c.check(addr); err != nil {
		return nil, err
	}
	if err := c.ready(); err != nil {
		return nil, err
	}
	return c.d.DialContext(ctx, network, addr)
}

// fetch carries out http.fetch (direct, checked against the destination
// policies and the relay's exit policy) or tor.fetch (through Tor, checked
// against the destination policies; the exit relay's policy decides too).
func (h *hostCall) fetch(viaTor bool) (any, []byte, error) {
	name := "fetch"
	if viaTor {
		name = "tor.fetch"
	}
	var a runner.FetchArgs
	if err := json.Unmarshal(h.args, &a); err != nil {
		return nil, nil, fmt.Errorf("%s: bad arguments", name)
	}
	u, err := url.Parse(a.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, nil, fmt.Errorf("%s: %q is not an http:// or https:// URL", name, truncate(a.URL, 200))
	}
	timeout := 30 * time.Second
	if viaTor {
		timeout = 60 * time.Second
	}
	if a.Timeout > 0 {
		timeout = seconds(a.Timeout, 300*time.Second)
	}
	ctx, cancel := h.ctx(timeout)
	defer cancel()
	var dial func(ctx context.Context, network, addr string) (net.Conn, error)
	if viaTor {
		td := h.torDialer()
		if err := td.check(hostPort(u)); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
		if err := td.ready(); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
		dial = td.DialContext
	} else {
		dialer := h.checked()
		// Check up front for a clear error; the transport checks again on
		// every dial (redirects included) and dials only checked addresses.
		if _, err := dialer.Check(ctx, hostPort(u)); err != nil {
			return nil, nil, fmt.Errorf("fetch: %w", err)
		}
		dial = dialer.DialContext
	}
	tr := &http.Transport{DialContext: dial, Proxy: nil, DisableKeepAlives: true,
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
	var body io.Reader
	if len(h.body) > 0 {
		body = bytes.NewReader(h.body)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.URL, body)
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
		return nil, nil, fmt.Errorf("%s %s: %v", name, u.Redacted(), unwrapURLError(err))
	}
	defer resp.Body.Close()
	data, err := h.readLimited(ctx, resp.Body, h.in.mf().Resources.Fetch)
	if errors.Is(err, errTooBig) {
		return nil, nil, fmt.Errorf("%s: response body exceeds %s (MaxFetchSize)", name, units.FormatSize(h.in.mf().Resources.Fetch))
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%s: reading body: %v", name, err)
	}
	hdrs := map[string]string{}
	for k := range resp.Header {
		hdrs[strings.ToLower(k)] = resp.Header.Get(k)
	}
	return runner.FetchResult{Status: resp.StatusCode, Headers: hdrs}, data, nil
}

var errTooBig = errors.New("too big")

// readLimited reads r to its end, at most limit bytes, growing its buffer
// only as bytes arrive and charging them to the instance.
func (h *hostCall) readLimited(ctx context.Context, r io.Reader, limit int64) ([]byte, error) {
	var buf []byte
	chunk := int64(32 << 10)
	for {
		if int64(len(buf)) == int64(cap(buf)) {
			grow := min(max(chunk, int64(cap(buf))), limit+1-int64(len(buf)))
			if grow <= 0 {
				return nil, errTooBig
			}
			if err := h.hold(ctx, grow); err != nil {
				return nil, err
			}
			nb := make([]byte, len(buf), int64(cap(buf))+grow)
			copy(nb, buf)
			buf = nb
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if werr := h.in.io.wait(ctx, n); werr != nil {
			return nil, werr
		}
		if int64(len(buf)) > limit {
			return nil, errTooBig
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "https" {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return net.JoinHostPort(u.Hostname(), "80")
}

// remote carries out composition calls on another Bento server, or on this
// one. Every destination meets the destination policies (an onion server
// is reached through Tor and checked by name); a call onto this very
// bentod is served in process and charged to this function's client; the
// server is told how deep in composition the call is; the output is
// charged to the instance and cut at its MaxFetchSize; and at most
// MaxCompositionCalls calls of one root are in progress at once.
func (h *hostCall) remote(name string) (any, []byte, error) {
	var a struct {
		Server   string            `json:"server"`
		Token    string            `json:"token"`
		Manifest string            `json:"manifest"`
		Files    map[string]string `json:"files"`
		Args     json.RawMessage   `json:"args"`
	}
	if err := json.Unmarshal(h.args, &a); err != nil {
		return nil, nil, fmt.Errorf("%s: bad arguments", name)
	}
	short := "remote." + strings.TrimPrefix(name, "bento.")
	done, err := h.in.srv.beginCall(h.in.root)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", short, err)
	}
	defer done()
	ctx, cancel := h.ctx(h.in.mf().Resources.Lifetime)
	defer cancel()
	host, _, err := net.SplitHostPort(a.Server)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: server %q is not HOST:PORT", short, truncate(a.Server, 100))
	}
	in := h.in
	cl := &client.Client{Addr: a.Server, Budget: in.budget, Hops: in.depth + 1, MaxOutput: in.mf().Resources.Fetch,
		MaxFrame: int(hostFrameLimit(in.mf().Resources))}
	if strings.HasSuffix(strings.ToLower(host), ".onion") {
		// A server published as an onion service is reached through Tor
		// (this bentod's own: in process).
		td := h.torDialer()
		if err := netcheck.CheckTor(td.pols, a.Server); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", short, err)
		}
		if own := in.srv.Onion(); own != "" && netcheck.SameOnionService(own, a.Server) {
			cl.Dialer = selfDialer{in}
		} else if err := td.ready(); err != nil {
			return nil, nil, fmt.Errorf("%s: %s is an onion service: %w", short, a.Server, err)
		} else {
			cl.Dialer = td
		}
	} else {
		dialer := h.checked()
		addrs, err := dialer.Check(ctx, a.Server)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", short, err)
		}
		// The addresses checked are the ones dialled: no second lookup
		// (DNS rebinding) between the check and the connection.
		cl.Dialer = pinnedDialer{addrs: addrs, next: in.srv.transport}
		for _, ap := range addrs {
			if in.srv.self.is(ap) {
				cl.Dialer = selfDialer{in}
			}
		}
	}
	switch name {
	case "bento.deploy":
		fn := &client.Function{Manifest: []byte(a.Manifest), Files: map[string][]byte{}}
		for k, v := range a.Files {
			fn.Files[k] = []byte(v)
		}
		d, err := cl.Deploy(ctx, fn)
		if err != nil {
			return nil, nil, fmt.Errorf("%s on %s: %w", short, a.Server, err)
		}
		return d, nil, nil
	case "bento.invoke":
		var args []any
		if len(a.Args) > 0 {
			if err := json.Unmarshal(a.Args, &args); err != nil {
				return nil, nil, fmt.Errorf("%s: args must be a list", short)
			}
		}
		out, err := h.collect(ctx, cl, a.Token, args)
		if err != nil {
			return nil, nil, fmt.Errorf("%s on %s: %w", short, a.Server, err)
		}
		return nil, out, nil
	default:
		if err := cl.Shutdown(ctx, a.Token); err != nil {
			return nil, nil, fmt.Errorf("%s on %s: %w", short, a.Server, err)
		}
		return nil, nil, nil
	}
}

// collect invokes a remote function with the call's input and gathers its
// output, charged to the instance, at most its MaxFetchSize.
func (h *hostCall) collect(ctx context.Context, cl *client.Client, token string, args []any) ([]byte, error) {
	s, err := cl.Invoke(ctx, token, args...)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	if len(h.body) > 0 {
		if err := s.Send(h.body); err != nil {
			return nil, &client.ConnError{Err: err}
		}
	}
	if err := s.CloseInput(); err != nil {
		return nil, &client.ConnError{Err: err}
	}
	var out []byte
	limit := h.in.mf().Resources.Fetch
	for {
		data, exit, err := s.Recv()
		if err != nil {
			return nil, err
		}
		if exit != nil {
			if exit.Status != client.StatusOK {
				return nil, &client.ExitError{Exit: exit}
			}
			return out, nil
		}
		if err := h.in.io.wait(ctx, len(data)); err != nil {
			return nil, err
		}
		need := int64(len(out) + len(data))
		if need > limit {
			return nil, fmt.Errorf("its output exceeds %s (MaxFetchSize)", units.FormatSize(limit))
		}
		if need > int64(cap(out)) {
			// Grow by doubling, each new buffer charged before it exists.
			size := min(max(need, 2*int64(cap(out)), 64<<10), limit)
			if err := h.hold(ctx, size); err != nil {
				return nil, err
			}
			nb := make([]byte, len(out), size)
			copy(nb, out)
			out = nb
		}
		out = append(out, data...)
	}
}

// pinnedDialer dials only the addresses a check accepted, whatever
// address it is asked for.
type pinnedDialer struct {
	addrs []netip.AddrPort
	next  netcheck.Dialer
}

func (d pinnedDialer) DialContext(ctx context.Context, network, _ string) (net.Conn, error) {
	var last error
	for _, a := range d.addrs {
		c, err := d.next.DialContext(ctx, "tcp", a.String())
		if err == nil {
			return c, nil
		}
		last = err
	}
	return nil, last
}

// selfDialer connects a function to this very bentod, in process.
type selfDialer struct{ in *Instance }

func (d selfDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	select {
	case <-d.in.srv.closed:
		return nil, errors.New("bentod is shutting down")
	default:
	}
	return d.in.srv.selfConn(d.in), nil
}

// torControl passes one command line through the control-port firewall.
func (h *hostCall) torControl() (any, []byte, error) {
	var a struct {
		Command string `json:"command"`
	}
	if err := json.Unmarshal(h.args, &a); err != nil {
		return nil, nil, errors.New("tor.control: bad arguments")
	}
	sess, err := h.in.control()
	if err != nil {
		return nil, nil, fmt.Errorf("tor.control: %w", err)
	}
	ctx, cancel := h.ctx(60 * time.Second)
	defer cancel()
	r, err := sess.Do(ctx, a.Command)
	if err != nil {
		return nil, nil, fmt.Errorf("tor.control: %w", err)
	}
	h.in.log.Debug("tor.control", "instance", h.in.id, "status", r.Status)
	return controlResult(r), nil, nil
}

func controlResult(r *torctl.Reply) runner.ControlResult {
	out := runner.ControlResult{Status: r.Status}
	for i, l := range r.Lines {
		out.Lines = append(out.Lines, l.Text)
		if l.Sep == '+' {
			if out.Data == nil {
				out.Data = map[int]string{}
			}
			out.Data[i] = string(l.Data)
		}
	}
	return out
}

// torEvent waits for the function's next control-port event.
func (h *hostCall) torEvent() (any, []byte, error) {
	var a struct {
		Timeout float64 `json:"timeout"`
	}
	_ = json.Unmarshal(h.args, &a)
	sess, err := h.in.control()
	if err != nil {
		return nil, nil, fmt.Errorf("tor.event: %w", err)
	}
	ctx, cancel := h.ctx(seconds(a.Timeout, 300*time.Second))
	defer cancel()
	r := sess.NextEvent(ctx)
	if r == nil {
		select {
		case <-h.rt.exited():
			return nil, nil, errStopped
		default:
		}
		return runner.ControlResult{}, nil, nil
	}
	return controlResult(r), nil, nil
}
