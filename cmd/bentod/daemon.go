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
	"sync/atomic"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/compat"
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

// reload reads the configuration again. A bentod that started from a
// file needs it still: a file missing for a moment (an editor's save, a
// package upgrade) is an error, not a return to the built-in defaults.
func (c confSource) reload(fromFile bool) (*policy.Policy, error) {
	if fromFile {
		return policy.Load(c.path)
	}
	p, _, err := c.load()
	return p, err
}

// daemon is a running bentod around its server: the listeners a reload
// may move, the logs it reopens, and the operator's ways in (signals, the
// control socket, MetricsPort).
type daemon struct {
	cfg      confSource
	fromFile bool // the configuration at start came from a file: a reload needs it
	log      *slog.Logger
	router   *safelog.Router
	srv      *server.Server
	started  time.Time
	stopReq  chan string

	link     *torlink.Link
	stopLink context.CancelFunc
	box      *boxAnnouncer
	compat   *compat.Listener // CompatListenAddress's protocol (nil without CompatManifest)
	ff       interface {
		SetAccess(allowed bool, coordinators []string) error
	}

	pol atomic.Pointer[policy.Policy] // the configuration in force; readers never wait for a reload

	mu     sync.Mutex // serialises reloads; guards what follows
	slots  [nSlots]*slot
	beat   chan struct{}
	wdOnce sync.Once
	wdSeen atomic.Int64 // the client listener's connections at the last watchdog test
}

// The listeners a reload may move.
const (
	slotClient  = iota // ListenAddress
	slotPolicy         // PolicyAddress
	slotMetrics        // MetricsPort
	slotCompat         // CompatListenAddress
	nSlots
)

var slotOption = [nSlots]string{"ListenAddress", "PolicyAddress", "MetricsPort", "CompatListenAddress"}

func slotAddr(p *policy.Policy, i int) string {
	switch i {
	case slotClient:
		return p.ListenAddress
	case slotPolicy:
		return p.PolicyAddress
	case slotCompat:
		return p.CompatListenAddress
	}
	return p.MetricsPort
}

// compatBackend is the server as the compat listener uses it.
type compatBackend struct{ *server.Server }

func (b compatBackend) ClientBudget(remote net.Addr) (compat.Budget, func()) {
	return b.Server.ClientBudget(remote)
}

// setCompat loads CompatManifest for the compat listener (made the first
// time): a manifest that does not fit p is refused with why.
func (d *daemon) setCompat(p *policy.Policy) error {
	if p.CompatManifest == "" {
		return nil
	}
	t, err := compat.LoadTemplate(p.CompatManifest, p)
	if err != nil {
		return err
	}
	if d.compat == nil {
		d.compat = compat.New(compatBackend{d.srv}, t, d.log)
	} else {
		d.compat.SetTemplate(t)
	}
	return nil
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
	return d.slots[slotClient].ln.Addr().String()
}

// listen opens a socket for each listener whose address p gives and the
// current slots do not serve, without serving it yet: a reload that fails
// after this closes them again and nobody was served on them. On error,
// what it opened is closed again.
func (d *daemon) listen(p *policy.Policy) (raws [nSlots]net.Listener, err error) {
	defer func() {
		if err != nil {
			closeRaw(raws)
		}
	}()
	for i := range raws {
		addr := slotAddr(p, i)
		if addr == "" || d.slots[i] != nil && d.slots[i].addr == addr {
			continue
		}
		raw, err := netlimit.Listen(addr)
		if err != nil {
			return raws, fmt.Errorf("%s %s: %w", slotOption[i], addr, err)
		}
		raws[i] = raw
	}
	return raws, nil
}

func closeRaw(raws [nSlots]net.Listener) {
	for _, r := range raws {
		if r != nil {
			r.Close()
		}
	}
}

// commit serves the sockets listen opened and closes the listeners p no
// longer has (their open connections go on).
func (d *daemon) commit(p *policy.Policy, raws [nSlots]net.Listener) {
	for i, raw := range raws {
		old := d.slots[i]
		switch {
		case raw != nil:
			d.slots[i] = d.serve(i, slotAddr(p, i), raw)
		case slotAddr(p, i) == "":
			d.slots[i] = nil
		default:
			continue // unchanged
		}
		if old != nil {
			old.close()
			d.srv.Untrack(old.ln)
			safelog.Notice(d.log, "closed "+old.ln.Name()+" listener", "addr", old.ln.Addr().String())
		}
	}
}

// serve wraps a socket in its listener's limits and serves it.
func (d *daemon) serve(i int, addr string, raw net.Listener) *slot {
	s := &slot{addr: addr}
	switch i {
	case slotClient:
		s.ln = d.srv.LimitListener(raw, false)
	case slotPolicy:
		s.ln, s.hs = d.srv.LimitPolicyListener(raw), d.srv.PolicyServer()
	case slotCompat:
		s.ln = d.srv.LimitNamedListener(raw, "compat", compat.Refusal)
		at := s.ln.Addr().String()
		go func() {
			if err := d.compat.Serve(s.ln); !errors.Is(err, net.ErrClosed) {
				d.log.Error("the compat listener stopped", "addr", at, "err", err)
			}
		}()
		safelog.Notice(d.log, "serving the original Bento's client protocol (CompatListenAddress)", "addr", at, "manifest", d.policy().CompatManifest)
		return s
	default:
		s.ln, s.hs = d.srv.LimitHTTPListener(raw, "metrics"), d.metricsServer()
	}
	at := s.ln.Addr().String() // the operator's own address: not scrubbed
	if s.hs == nil {
		go func() {
			if err := d.srv.Serve(s.ln); err != nil && !errors.Is(err, net.ErrClosed) {
				d.log.Error("the client listener stopped", "addr", at, "err", err)
			}
		}()
		safelog.Notice(d.log, "bentod listening", "addr", at, "version", server.Version)
		return s
	}
	go func() {
		if err := s.hs.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			d.log.Error("an HTTP endpoint stopped", "addr", at, "err", err)
		}
	}()
	what := "serving the node policy"
	if i == slotMetrics {
		what = "serving the metrics (MetricsPort)"
	}
	safelog.Notice(d.log, what, "addr", at)
	return s
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
	for _, s := range d.slots {
		s.close()
	}
}

// reload reads the configuration again (SIGHUP, bentoctl reload). It is
// all or nothing, as tor's: a configuration that does not parse, changes
// an option only a restart can, or names a listener or log that cannot be
// opened leaves everything as it was, and says why. The log files are
// reopened either way (logrotate's SIGHUP).
func (d *daemon) reload() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, _ = sdnotify.Reloading()
	defer d.notifyReady()
	old := d.pol.Load()
	fail := func(err error) error {
		// The sinks in force, reopened: a rotated file is let go even
		// when the new configuration is refused.
		if rerr := d.router.Apply(old.Logs); rerr != nil {
			d.log.Warn("reopening the logs", "err", rerr)
		}
		d.log.Warn("reload failed; keeping the old configuration", "err", err)
		return err
	}
	np, err := d.cfg.reload(d.fromFile)
	if err != nil {
		return fail(err)
	}
	for _, w := range np.Warnings {
		d.log.Warn("configuration: " + w)
	}
	if err := policy.Transition(old, np); err != nil {
		return fail(err)
	}
	if err := d.setCompatCheck(np); err != nil {
		return fail(err)
	}
	raws, err := d.listen(np)
	if err != nil {
		return fail(err)
	}
	// Addresses are scrubbed (or not) as the new configuration says from
	// the first line the new sinks write.
	safelog.SetSafe(np.SafeLogging)
	if err := d.router.Apply(np.Logs); err != nil {
		closeRaw(raws)
		safelog.SetSafe(old.SafeLogging)
		return fail(err)
	}
	// Committed from here on.
	d.pol.Store(np)
	_ = d.setCompat(np) // checked above
	d.commit(np, raws)
	d.srv.SetPolicy(np)
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
	if np.HeartbeatPeriod != old.HeartbeatPeriod && d.beat != nil {
		select {
		case d.beat <- struct{}{}:
		default:
		}
	}
	safelog.Notice(d.log, "policy reloaded")
	return nil
}

func (d *daemon) policy() *policy.Policy { return d.pol.Load() }

// setCompatCheck refuses a reload whose CompatManifest does not fit its
// policy.
func (d *daemon) setCompatCheck(p *policy.Policy) error {
	if p.CompatManifest == "" {
		return nil
	}
	_, err := compat.LoadTemplate(p.CompatManifest, p)
	return err
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

// alive is the watchdog's test. bentod's own locks must be free within a
// second (no reload or server lock stuck), and its client listener must
// serve: a policy request answered over loopback, or, when that fails
// (a local flood has the kernel drop loopback for a moment, say), its
// counters moving since the last test, which shows its accept loop at
// work.
func (d *daemon) alive() bool {
	type snapshot struct {
		addr string
		st   server.Status
	}
	locks := make(chan snapshot, 1)
	go func() {
		d.mu.Lock()
		addr := d.slots[slotClient].ln.Addr().String()
		d.mu.Unlock()
		locks <- snapshot{addr, d.srv.Status()}
	}()
	var snap snapshot
	select {
	case snap = <-locks:
	case <-time.After(time.Second):
		d.log.Warn("watchdog: bentod's locks were not free within a second")
		return false
	}
	moved := false
	var seen int64
	for _, l := range snap.st.Listeners {
		if l.Name == "client" {
			seen += l.Accepted + l.RefusedTotal + l.RefusedPerAddr + l.RefusedRate
		}
	}
	if last := d.wdSeen.Swap(seen); seen != last {
		moved = true
	}
	cl := client.New(snap.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := cl.Policy(ctx)
	var pe *client.Error
	if err == nil || errors.As(err, &pe) || moved {
		return true // an answer, a refusal (busy) included, or accepts since the last test
	}
	d.log.Warn("watchdog: the client listener did not answer", "err", err)
	return false
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
