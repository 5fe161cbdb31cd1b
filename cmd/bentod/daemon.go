package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/user"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/torbento/bento/internal/metrics"
	"github.com/torbento/bento/internal/netlimit"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/safelog"
	"github.com/torbento/bento/internal/sdnotify"
	"github.com/torbento/bento/internal/server"
	"github.com/torbento/bento/internal/torlink"
)

// confSource is where bentod's configuration comes from.
type confSource struct {
	path     string
	explicit bool // given with -f: a missing file is an error
}

// load reads the configuration. Without -f, a missing default file means
// the built-in defaults (builtin true).
func (c confSource) load() (p *policy.Policy, builtin bool, err error) {
	if !c.explicit {
		if _, err := os.Stat(c.path); errors.Is(err, os.ErrNotExist) {
			p, err := policy.Parse("built-in defaults", nil)
			return p, true, err
		}
	}
	p, err = policy.Load(c.path)
	return p, false, err
}

// daemon is a running bentod around its server: the listeners a reload
// may move, the logs it reopens, and the operator's ways in (signals, the
// control socket, MetricsPort).
type daemon struct {
	cfg     confSource
	log     *slog.Logger
	router  *safelog.Router
	srv     *server.Server
	started time.Time
	stopReq chan string

	link     *torlink.Link
	stopLink context.CancelFunc
	box      *boxAnnouncer
	ff       interface {
		SetAccess(allowed bool, coordinators []string) error
	}

	mu       sync.Mutex // serialises reloads; guards what follows
	pol      *policy.Policy
	client   *slot // ListenAddress
	policyL  *slot // PolicyAddress
	metricsL *slot // MetricsPort
	beat     chan struct{}
	wdOnce   sync.Once
}

// slot is one listener a reload may replace, with the HTTP server on it
// (for the policy and the metrics).
type slot struct {
	addr string
	ln   *netlimit.Listener
	hs   *http.Server
}

func (d *daemon) clientAddr() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.client.ln.Addr().String()
}

// openListeners opens the listeners of p at start.
func (d *daemon) openListeners(p *policy.Policy) error {
	c, pl, ml, err := d.open(p, nil, nil, nil)
	if err != nil {
		return err
	}
	d.client, d.policyL, d.metricsL = c, pl, ml
	return nil
}

// open opens what p asks for that the current slots do not already
// serve; the slots that stay are returned as they are. On error, what it
// opened is closed again.
func (d *daemon) open(p *policy.Policy, cur, curP, curM *slot) (c, pl, ml *slot, err error) {
	var opened []*slot
	defer func() {
		if err != nil {
			for _, s := range opened {
				s.close()
			}
		}
	}()
	c = curLookup(cur, p.ListenAddress)
	if c == nil {
		raw, err := netlimit.Listen(p.ListenAddress)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("ListenAddress %s: %w", p.ListenAddress, err)
		}
		c = &slot{addr: p.ListenAddress, ln: d.srv.LimitListener(raw, false)}
		opened = append(opened, c)
	}
	if pl = curLookup(curP, p.PolicyAddress); pl == nil && p.PolicyAddress != "" {
		raw, err := netlimit.Listen(p.PolicyAddress)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("PolicyAddress %s: %w", p.PolicyAddress, err)
		}
		pl = &slot{addr: p.PolicyAddress, ln: d.srv.LimitPolicyListener(raw), hs: d.srv.PolicyServer()}
		opened = append(opened, pl)
	}
	if ml = curLookup(curM, p.MetricsPort); ml == nil && p.MetricsPort != "" {
		raw, err := netlimit.Listen(p.MetricsPort)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("MetricsPort %s: %w", p.MetricsPort, err)
		}
		ml = &slot{addr: p.MetricsPort, ln: d.srv.LimitHTTPListener(raw, "metrics"), hs: d.metricsServer()}
		opened = append(opened, ml)
	}
	for _, s := range opened {
		d.serve(s)
	}
	return c, pl, ml, nil
}

func curLookup(s *slot, addr string) *slot {
	if s != nil && s.addr == addr {
		return s
	}
	return nil
}

// serve starts serving a newly opened slot.
func (d *daemon) serve(s *slot) {
	addr := s.ln.Addr().String() // the operator's own address: not scrubbed
	switch {
	case s.hs == nil:
		go func() {
			if err := d.srv.Serve(s.ln); err != nil && !errors.Is(err, net.ErrClosed) {
				d.log.Error("the client listener stopped", "addr", addr, "err", err)
			}
		}()
		safelog.Notice(d.log, "bentod listening", "addr", addr, "version", server.Version)
	default:
		go func() {
			if err := s.hs.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				d.log.Error("an HTTP endpoint stopped", "addr", addr, "err", err)
			}
		}()
		what := "serving the node policy"
		if s.ln.Name() == "metrics" {
			what = "serving the metrics (MetricsPort)"
		}
		safelog.Notice(d.log, what, "addr", addr)
	}
}

// close stops the slot's listener; connections it already took go on.
func (s *slot) close() {
	if s == nil {
		return
	}
	if s.hs != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s.hs.Shutdown(ctx)
		cancel()
	}
	s.ln.Close()
}

func (d *daemon) closeListeners() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, s := range []*slot{d.client, d.policyL, d.metricsL} {
		s.close()
	}
}

// reload reads the configuration again (SIGHUP, bentoctl reload). It is
// all or nothing, as tor's: a configuration that does not parse, changes
// an option only a restart can, or names a listener or log that cannot be
// opened leaves everything as it was, and says why.
func (d *daemon) reload() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, _ = sdnotify.Reloading()
	defer d.notifyReady()
	fail := func(err error) error {
		d.log.Warn("reload failed; keeping the old configuration", "err", err)
		return err
	}
	np, _, err := d.cfg.load()
	if err != nil {
		return fail(err)
	}
	for _, w := range np.Warnings {
		d.log.Warn("configuration: " + w)
	}
	if err := policy.Transition(d.pol, np); err != nil {
		return fail(err)
	}
	c, pl, ml, err := d.open(np, d.client, d.policyL, d.metricsL)
	if err != nil {
		return fail(err)
	}
	if err := d.router.Apply(np.Logs); err != nil {
		for _, s := range []struct{ n, o *slot }{{c, d.client}, {pl, d.policyL}, {ml, d.metricsL}} {
			if s.n != s.o {
				s.n.close()
			}
		}
		return fail(err)
	}
	// Committed from here on.
	for _, s := range []struct{ n, o *slot }{{c, d.client}, {pl, d.policyL}, {ml, d.metricsL}} {
		if s.o != nil && s.n != s.o {
			s.o.close()
			d.srv.Untrack(s.o.ln)
			safelog.Notice(d.log, "closed "+s.o.ln.Name()+" listener", "addr", s.o.ln.Addr().String())
		}
	}
	d.client, d.policyL, d.metricsL = c, pl, ml
	d.srv.SetPolicy(np)
	safelog.SetSafe(np.SafeLogging)
	if np.Daemon.MaxMemory > 0 {
		debug.SetMemoryLimit(np.Daemon.MaxMemory)
	}
	if d.ff != nil {
		// Who may measure, and whether anyone may; the listeners'
		// addresses need a restart.
		if err := d.ff.SetAccess(np.FlashFlow.Allowed, np.FlashFlow.Coordinators); err != nil {
			d.log.Warn("flashflow: keeping the old coordinators", "err", err)
		}
	}
	if np.ControlSocket != "" && np.ControlSocketGroup != d.pol.ControlSocketGroup {
		d.log.Warn("ControlSocketGroup changes when bentod restarts (the socket's group is set when it is made)")
	}
	if np.HeartbeatPeriod != d.pol.HeartbeatPeriod && d.beat != nil {
		select {
		case d.beat <- struct{}{}:
		default:
		}
	}
	d.pol = np
	safelog.Notice(d.log, "policy reloaded")
	return nil
}

func (d *daemon) policy() *policy.Policy {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pol
}

// notifyReady tells systemd bentod serves (Type=notify), and starts its
// watchdog the first time.
func (d *daemon) notifyReady() {
	sent, err := sdnotify.Ready()
	if err != nil {
		d.log.Warn("telling systemd bentod is ready", "err", err)
	}
	if sent {
		d.wdOnce.Do(func() {
			if iv := sdnotify.WatchdogInterval(); iv > 0 {
				go sdnotify.Watchdog(iv, d.alive, d.srv.Done())
			}
		})
	}
}

// alive is the watchdog's test: bentod's reload lock is free within a
// second and its client listener answers.
func (d *daemon) alive() bool {
	got := make(chan struct{})
	go func() {
		d.mu.Lock()
		addr := d.client.ln.Addr().String()
		d.mu.Unlock()
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			close(got)
		}
	}()
	select {
	case <-got:
		return true
	case <-time.After(2 * time.Second):
		return false
	}
}

// shutdown ends bentod: listeners first, then every instance, then the
// box's announcement and the tor link.
func (d *daemon) shutdown(why string) {
	_, _ = sdnotify.Stopping()
	safelog.Notice(d.log, "shutting down", "why", why)
	d.closeListeners()
	d.srv.Close()
	if d.box != nil {
		d.box.withdraw(d.link)
	}
	if d.stopLink != nil {
		d.stopLink()
	}
}

// heartbeat logs a line every HeartbeatPeriod, as tor's heartbeat: how
// long bentod has been up, its instances and what it holds, and what
// happened since the last line.
func (d *daemon) heartbeat() {
	d.mu.Lock()
	d.beat = make(chan struct{}, 1)
	beat := d.beat
	d.mu.Unlock()
	for {
		period := d.policy().HeartbeatPeriod
		var tick <-chan time.Time
		var t *time.Timer
		if period > 0 {
			t = time.NewTimer(period)
			tick = t.C
		}
		select {
		case <-d.srv.Done():
			return
		case <-beat:
			if t != nil {
				t.Stop()
			}
			continue
		case <-tick:
		}
		d.logHeartbeat()
	}
}

func (d *daemon) logHeartbeat() {
	st := d.srv.Status()
	var open, refused int64
	for _, l := range st.Listeners {
		open += int64(l.Open)
		refused += l.RefusedTotal + l.RefusedPerAddr + l.RefusedRate
	}
	safelog.Notice(d.log, "Heartbeat: bentod has been up for "+time.Since(d.started).Round(time.Second).String()+".",
		"instances", st.Instances, "connections", open, "connections_refused", refused,
		"in_flight_bytes", st.InFlight, "draining", d.srv.Draining())
}

// metricsServer serves MetricsPort: the metrics to the addresses
// MetricsPortPolicy accepts, nothing to anyone else.
func (d *daemon) metricsServer() *http.Server {
	reg := d.srv.Metrics()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ap, err := netip.ParseAddrPort(r.RemoteAddr)
		if err != nil || !d.policy().MetricsAllowed(ap.Addr()) {
			http.Error(w, "refused by this bentod's MetricsPortPolicy", http.StatusForbidden)
			return
		}
		if r.URL.Path != "/metrics" && r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", metrics.ContentType)
		reg.WriteTo(w)
	})
	hs := d.srv.PolicyServer()
	hs.Handler = h
	return hs
}

// groupName names the control socket's group for the log.
func groupName(gid int, asked string) string {
	if gid < 0 {
		if asked != "" {
			return "none (group " + asked + " does not exist: root and bentod's user only)"
		}
		return "none (root and bentod's user only)"
	}
	if g, err := user.LookupGroupId(strconv.Itoa(gid)); err == nil {
		return g.Name
	}
	return strconv.Itoa(gid)
}
