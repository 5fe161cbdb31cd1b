package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/exitpolicy"
	"github.com/torbento/bento/internal/netcheck"
	"github.com/torbento/bento/internal/runner"
	"github.com/torbento/bento/internal/socks"
	"github.com/torbento/bento/internal/torctl"
	"github.com/torbento/bento/internal/units"
)

// errStopped means the call stopped the instance; no reply is sent.
var errStopped = errors.New("instance stopped")

// hostCall is one call being carried out.
type hostCall struct {
	in   *Instance
	s    *session
	args json.RawMessage
	body []byte
}

// ctx returns a context cancelled when the instance ends.
func (h hostCall) ctx(timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	go func() {
		select {
		case <-h.in.c.Exited():
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

func (h hostCall) blocking(name string) (any, []byte, error) {
	switch name {
	case "recv":
		return h.recv()
	case "sleep":
		var a struct {
			Seconds float64 `json:"seconds"`
		}
		_ = json.Unmarshal(h.args, &a)
		d := time.Duration(a.Seconds * float64(time.Second))
		if d < 0 || d > h.in.m.Resources.Lifetime {
			d = h.in.m.Resources.Lifetime
		}
		select {
		case <-time.After(d):
			return nil, nil, nil
		case <-h.in.c.Exited():
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
	case "tor.listen", "tor.accept", "tor.dial", "tor.read", "tor.write", "tor.close", "tor.splice":
		return h.torStream(name)
	case "bento.deploy", "bento.invoke", "bento.shutdown":
		return h.remote(name)
	}
	return nil, nil, fmt.Errorf("unknown host call %q", name)
}

func (h hostCall) recv() (any, []byte, error) {
	var a struct {
		Timeout float64 `json:"timeout"`
	}
	_ = json.Unmarshal(h.args, &a)
	var timeout <-chan time.Time
	if a.Timeout > 0 {
		t := time.NewTimer(time.Duration(a.Timeout * float64(time.Second)))
		defer t.Stop()
		timeout = t.C
	}
	select {
	case b := <-h.s.input:
		return nil, b, nil
	default:
	}
	select {
	case b := <-h.s.input:
		return nil, b, nil
	case <-h.s.eof:
		select {
		case b := <-h.s.input:
			return nil, b, nil
		default:
		}
		return map[string]bool{"eof": true}, nil, nil
	case <-timeout:
		return map[string]bool{"timeout": true}, nil, nil
	case <-h.in.c.Exited():
		return nil, nil, errStopped
	}
}

// checked returns a dialer that enforces the node's and the manifest's
// destination policies.
func (h hostCall) checked() *netcheck.Checked {
	pols := []*exitpolicy.Policy{h.in.srv.policy().Destinations, h.in.m.Dest}
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

// torDialer returns a dialer through the node's TorSocksPort. Each instance
// gets its own SOCKS credentials, so tor (IsolateSOCKSAuth, on by default)
// never puts two instances' streams on one circuit.
func (h hostCall) torDialer() (*socks.Dialer, error) {
	p := h.in.srv.policy().TorSocksPort
	if p == "" {
		return nil, errors.New("this node has no Tor SOCKS port (TorSocksPort)")
	}
	return &socks.Dialer{Proxy: p, Username: h.in.socksUser(), Password: "bento"}, nil
}

// fetch carries out http.fetch (direct, checked against the destination
// policies) or tor.fetch (through Tor, where the exit relay's policy
// decides).
func (h hostCall) fetch(viaTor bool) (any, []byte, error) {
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
		return nil, nil, fmt.Errorf("%s: %q is not an http:// or https:// URL", name, a.URL)
	}
	timeout := 30 * time.Second
	if viaTor {
		timeout = 60 * time.Second
	}
	if a.Timeout > 0 && a.Timeout < 300 {
		timeout = time.Duration(a.Timeout * float64(time.Second))
	}
	ctx, cancel := h.ctx(timeout)
	defer cancel()
	var dial func(ctx context.Context, network, addr string) (net.Conn, error)
	if viaTor {
		td, err := h.torDialer()
		if err != nil {
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
		body = strings.NewReader(string(h.body))
	}
	req, err := http.NewRequestWithContext(ctx, method, a.URL, body)
	if err != nil {
		return nil, nil, fmt.Errorf("fetch: %v", err)
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
			return nil, nil, fmt.Errorf("fetch: %w", de)
		}
		return nil, nil, fmt.Errorf("%s %s: %v", name, u.Redacted(), unwrapURLError(err))
	}
	defer resp.Body.Close()
	limit := h.in.m.Resources.Fetch
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, nil, fmt.Errorf("fetch: reading body: %v", err)
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
		return u.Hostname() + ":443"
	}
	return u.Hostname() + ":80"
}

// remote carries out composition calls on another Bento server.
func (h hostCall) remote(name string) (any, []byte, error) {
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
	ctx, cancel := h.ctx(h.in.m.Resources.Lifetime)
	defer cancel()
	cl := &client.Client{Addr: a.Server}
	if host, _, _ := net.SplitHostPort(a.Server); strings.HasSuffix(strings.ToLower(host), ".onion") {
		// A server published as an onion service is reached through Tor.
		td, err := h.torDialer()
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %s is an onion service: %w", name, a.Server, err)
		}
		cl.Dialer = td
	} else {
		dialer := h.checked()
		if _, err := dialer.Check(ctx, a.Server); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
		cl.Dialer = dialer
	}
	switch name {
	case "bento.deploy":
		fn := &client.Function{Manifest: []byte(a.Manifest), Files: map[string][]byte{}}
		for k, v := range a.Files {
			fn.Files[k] = []byte(v)
		}
		d, err := cl.Deploy(ctx, fn)
		if err != nil {
			return nil, nil, fmt.Errorf("remote.deploy on %s: %w", a.Server, err)
		}
		return d, nil, nil
	case "bento.invoke":
		var args []any
		if len(a.Args) > 0 {
			if err := json.Unmarshal(a.Args, &args); err != nil {
				return nil, nil, fmt.Errorf("remote.invoke: args must be a list")
			}
		}
		out, err := cl.CallWithInput(ctx, a.Token, h.body, args...)
		if err != nil {
			return nil, nil, fmt.Errorf("remote.invoke on %s: %w", a.Server, err)
		}
		return nil, out, nil
	default:
		if err := cl.Shutdown(ctx, a.Token); err != nil {
			return nil, nil, fmt.Errorf("remote.shutdown on %s: %w", a.Server, err)
		}
		return nil, nil, nil
	}
}

// torControl passes one command line through the control-port firewall.
func (h hostCall) torControl() (any, []byte, error) {
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
func (h hostCall) torEvent() (any, []byte, error) {
	var a struct {
		Timeout float64 `json:"timeout"`
	}
	_ = json.Unmarshal(h.args, &a)
	if a.Timeout <= 0 || a.Timeout > 300 {
		a.Timeout = 300
	}
	sess, err := h.in.control()
	if err != nil {
		return nil, nil, fmt.Errorf("tor.event: %w", err)
	}
	ctx, cancel := h.ctx(time.Duration(a.Timeout * float64(time.Second)))
	defer cancel()
	r := sess.NextEvent(ctx)
	if r == nil {
		select {
		case <-h.in.c.Exited():
			return nil, nil, errStopped
		default:
		}
		return runner.ControlResult{}, nil, nil
	}
	return controlResult(r), nil, nil
}
