// Package target is the relay's side of a FlashFlow measurement, run by
// bentod beside the relay's tor (prop 316 §3.1, on stock tor).
//
// Two listeners: the control listener, where coordinators connect over
// TLS (package link) and are accepted only if their certificate is
// pinned; and the echo listener on the relay's loopback, which measurers
// reach through tor, on circuits whose last hop is this relay, exiting to
// 127.0.0.1 — so that every echoed byte crosses the relay's tor twice, in
// cells, under its bandwidth limits. An echo connection opens with
// ECHO_OPEN (a MAC under the measurement's echo key) and then every byte
// it sends comes back.
//
// One measurement at a time, at most two per coordinator in any
// MeasurementPeriod, each ended by MaxDuration after its PARAMS arrived
// (the proposal's FFMaxMeasurementDuration): then every echo connection
// is closed, whatever the coordinator does. Each second from the first
// echoed byte the target sends BG: the relay's background traffic, i.e.
// its tor's traffic counters (GETINFO traffic/read, traffic/written) less
// what the measurement itself made tor carry in that second.
package target

import (
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/torbento/bento/internal/flashflow/echo"
	"github.com/torbento/bento/internal/flashflow/link"
	"github.com/torbento/bento/internal/flashflow/msg"
	"github.com/torbento/bento/internal/netlimit"
)

// Counters reads the relay's cumulative traffic counters: bytes tor has
// read and written since it started.
type Counters func(ctx context.Context) (read, written uint64, err error)

// Config is the relay operator's FlashFlow configuration.
type Config struct {
	// Allowed turns measurements on (FFMeasurementsAllowed).
	Allowed bool
	// Coordinators are the pinned certificate fingerprints of the
	// coordinators allowed to measure (FFAllowedCoordinators).
	Coordinators []string
	// Period: no coordinator measures more than twice in any window of
	// this length (FFMeasurementPeriod, 1 hour to 1 month; default 1 day).
	Period time.Duration
	// MaxDuration bounds a measurement from its PARAMS to its end, the
	// handshake included (FFMaxMeasurementDuration, 10-120 s; default 45 s).
	MaxDuration time.Duration
	// EchoPort is the echo listener's port, told to coordinators.
	EchoPort uint16
	// Traffic reads tor's counters; LocalCounted says whether tor counts
	// connections to loopback (CountPrivateBandwidth 1), in which case
	// the echo connections' own bytes are in the counters too. It is asked
	// at each measurement (the operator may change tor's configuration).
	Traffic      Counters
	LocalCounted func(ctx context.Context) (bool, error)
	// MaxEchoConns bounds echo connections at once, authenticated or not
	// (default: 2 × the largest number PARAMS may announce).
	MaxEchoConns int
	Log          *slog.Logger
	Now          func() time.Time
}

// Target serves measurements.
type Target struct {
	cfg    Config
	id     *link.Identity
	pinned map[string]bool

	mu      sync.Mutex
	active  *measurement
	history map[string][]time.Time // coordinator → PARAMS_OK times
	echoes  int                    // echo connections open
}

// New returns a target with identity id (the certificate coordinators see).
func New(cfg Config, id *link.Identity) (*Target, error) {
	if cfg.Period == 0 {
		cfg.Period = 24 * time.Hour
	}
	if cfg.MaxDuration == 0 {
		cfg.MaxDuration = 45 * time.Second
	}
	if cfg.Period < time.Hour || cfg.Period > 31*24*time.Hour {
		return nil, fmt.Errorf("flashflow: measurement period %v outside [1h, 31 days]", cfg.Period)
	}
	if cfg.MaxDuration < 10*time.Second || cfg.MaxDuration > 120*time.Second {
		return nil, fmt.Errorf("flashflow: maximum measurement duration %v outside [10s, 120s]", cfg.MaxDuration)
	}
	if cfg.EchoPort == 0 {
		return nil, errors.New("flashflow: no echo port")
	}
	if cfg.Traffic == nil {
		return nil, errors.New("flashflow: no traffic counters (the target needs its tor's control port)")
	}
	if cfg.MaxEchoConns == 0 {
		cfg.MaxEchoConns = 2 * msg.MaxMeasurers * msg.MaxConns
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	t := &Target{cfg: cfg, id: id, pinned: map[string]bool{}, history: map[string][]time.Time{}}
	for _, fp := range cfg.Coordinators {
		n, err := link.ParseFingerprint(fp)
		if err != nil {
			return nil, err
		}
		t.pinned[n] = true
	}
	return t, nil
}

// measurement is the one in progress.
type measurement struct {
	id       uint32
	key      [msg.KeySize]byte
	conns    []uint16 // per measurer
	total    int      // their sum
	duration int
	used     map[[2]int]bool
	ctx      context.Context
	cancel   context.CancelFunc
	started  chan struct{}
	start    sync.Once
	in, out  atomic.Uint64 // echo bytes read from and written to measurers
	mu       sync.Mutex
	echo     map[net.Conn]bool
}

func (m *measurement) closeEcho() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for c := range m.echo {
		c.Close()
	}
	m.echo = nil
}

// EchoPort is the echo endpoint's port, as PARAMS_OK tells it.
func (t *Target) EchoPort() uint16 { return t.cfg.EchoPort }

// ServeControl accepts coordinators on ln until ctx ends. The listener
// is bounded as bentod's client listener is (package netlimit): a few
// connections at once, two per address, a connection rate per address,
// and connections that have not completed the TLS handshake of a pinned
// coordinator closed first for newcomers, so that idle sockets cannot
// keep a coordinator out.
func (t *Target) ServeControl(ctx context.Context, ln net.Listener) error {
	lim := netlimit.New(ln, netlimit.Config{Name: "flashflow", Total: 16, PerAddr: 2, Rate: 1, Burst: 4, Log: t.cfg.Log})
	return link.AcceptLoop(ctx, lim, t.cfg.Log, "a coordinator", func(nc net.Conn) { go t.handleControl(ctx, nc) })
}

func (t *Target) refuse(c *link.Conn, id uint32, code msg.ErrCode, exts ...msg.Ext) {
	t.cfg.Log.Debug("flashflow: measurement refused", "meas_id", id, "reason", code.String())
	c.Send(&msg.Err{Header: msg.Header{MeasID: id, Exts: exts}, Code: code})
}

func (t *Target) handleControl(ctx context.Context, nc net.Conn) {
	c, err := link.ServerTimeout(nc, t.id, handshakeTimeout)
	if err != nil {
		return
	}
	defer c.Close()
	allowed, pinned := t.settings(c.Peer())
	if !pinned {
		t.refuse(c, 0, msg.ErrUntrusted)
		return
	}
	netlimit.Prove(nc)
	if !allowed {
		t.refuse(c, 0, msg.ErrNotAllowed)
		return
	}
	m, err := c.Recv(link.DefaultTimeout)
	var ve *msg.VersionError
	switch {
	case errors.As(err, &ve):
		t.refuse(c, 0, msg.ErrBadVersion)
		return
	case err != nil:
		t.refuse(c, 0, msg.ErrProtocol)
		return
	}
	p, ok := m.(*msg.Params)
	if !ok {
		t.refuse(c, m.ID(), msg.ErrProtocol)
		return
	}
	// The measurement and its handshake must fit in MaxDuration: keep
	// five seconds for the measurers to open their connections.
	if time.Duration(p.Duration)*time.Second+5*time.Second > t.cfg.MaxDuration {
		t.refuse(c, p.MeasID, msg.ErrBadParams)
		return
	}
	meas, code, retry := t.begin(ctx, c.Peer(), p)
	if code != 0 {
		var exts []msg.Ext
		if retry > 0 {
			exts = append(exts, msg.U32Ext(msg.ExtRetryAfter, uint32(retry/time.Second)+1))
		}
		t.refuse(c, p.MeasID, code, exts...)
		return
	}
	defer t.end(meas)
	if err := c.Send(&msg.ParamsOK{Header: msg.Header{MeasID: p.MeasID, Exts: []msg.Ext{msg.PortExt(t.cfg.EchoPort)}}}); err != nil {
		return
	}
	t.cfg.Log.Info("flashflow: measurement accepted", "meas_id", p.MeasID, "duration", p.Duration, "measurers", len(p.Measurers))
	// The coordinator may end the measurement (ERR) or hang up.
	go func() {
		for {
			m, err := c.Recv(t.cfg.MaxDuration)
			if err != nil {
				meas.cancel()
				return
			}
			if e, ok := m.(*msg.Err); ok {
				t.cfg.Log.Info("flashflow: coordinator ended the measurement", "meas_id", p.MeasID, "reason", e.Code.String())
				meas.cancel()
				return
			}
		}
	}()
	select {
	case <-meas.started:
	case <-meas.ctx.Done():
		t.refuse(c, p.MeasID, msg.ErrTimeout)
		return
	}
	if err := t.report(meas, c); err != nil {
		t.cfg.Log.Info("flashflow: measurement ended early", "meas_id", p.MeasID, "err", err)
		return
	}
	t.cfg.Log.Info("flashflow: measurement done", "meas_id", p.MeasID)
}

// handshakeTimeout bounds a coordinator's TLS handshake.
const handshakeTimeout = 5 * time.Second

// settings reads the operator's current choices for a coordinator.
func (t *Target) settings(coord string) (allowed, pinned bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.cfg.Allowed, t.pinned[coord]
}

// SetAccess changes whether measurements are allowed and which
// coordinators are pinned (bentod calls it when bentorc is reloaded). A
// measurement in progress runs to its end.
func (t *Target) SetAccess(allowed bool, coordinators []string) error {
	pinned := map[string]bool{}
	for _, fp := range coordinators {
		n, err := link.ParseFingerprint(fp)
		if err != nil {
			return err
		}
		pinned[n] = true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cfg.Allowed, t.pinned = allowed, pinned
	return nil
}

// begin registers a measurement, or says why not.
func (t *Target) begin(ctx context.Context, coord string, p *msg.Params) (*measurement, msg.ErrCode, time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.active != nil {
		return nil, msg.ErrBusy, 0
	}
	now := t.cfg.Now()
	var recent []time.Time
	for _, at := range t.history[coord] {
		if now.Sub(at) < t.cfg.Period {
			recent = append(recent, at)
		}
	}
	t.history[coord] = recent
	if len(recent) >= 2 {
		return nil, msg.ErrRateLimited, recent[0].Add(t.cfg.Period).Sub(now)
	}
	t.history[coord] = append(recent, now)
	mctx, cancel := context.WithTimeout(ctx, t.cfg.MaxDuration)
	m := &measurement{id: p.MeasID, key: p.EchoKey, duration: int(p.Duration), used: map[[2]int]bool{},
		ctx: mctx, cancel: cancel, started: make(chan struct{}), echo: map[net.Conn]bool{}}
	for _, mi := range p.Measurers {
		m.conns = append(m.conns, mi.Conns)
		m.total += int(mi.Conns)
	}
	t.active = m
	// At the deadline every echo connection closes, whatever happens.
	context.AfterFunc(mctx, m.closeEcho)
	return m, 0, 0
}

func (t *Target) end(m *measurement) {
	m.cancel()
	m.closeEcho()
	t.mu.Lock()
	if t.active == m {
		t.active = nil
	}
	t.mu.Unlock()
}

// report sends one BG a second, duration times.
func (t *Target) report(m *measurement, c *link.Conn) error {
	local := false
	if t.cfg.LocalCounted != nil {
		var err error
		if local, err = t.cfg.LocalCounted(m.ctx); err != nil {
			t.refuse(c, m.id, msg.ErrTorUnavailable)
			return err
		}
	}
	r0, w0, err := t.cfg.Traffic(m.ctx)
	if err != nil {
		t.refuse(c, m.id, msg.ErrTorUnavailable)
		return err
	}
	in0, out0 := m.in.Load(), m.out.Load()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for sec := 1; sec <= m.duration; sec++ {
		select {
		case <-tick.C:
		case <-m.ctx.Done():
			t.refuse(c, m.id, msg.ErrTimeout, msg.U16Ext(msg.ExtSecond, uint16(sec)))
			return m.ctx.Err()
		}
		r1, w1, err := t.cfg.Traffic(m.ctx)
		if err != nil {
			t.refuse(c, m.id, msg.ErrTorUnavailable, msg.U16Ext(msg.ExtSecond, uint16(sec)))
			return err
		}
		in1, out1 := m.in.Load(), m.out.Load()
		sent, recv := Background(r1-r0, w1-w0, in0, in1, out0, out1, local)
		t.cfg.Log.Debug("flashflow: second", "meas_id", m.id, "second", sec, "tor_read", r1-r0, "tor_written", w1-w0,
			"echo_in", in1-in0, "echo_out", out1-out0, "bg_sent", sent, "bg_recv", recv)
		if err := c.Send(&msg.BG{Header: msg.Header{MeasID: m.id}, Second: uint16(sec), Sent: sent, Recv: recv}); err != nil {
			return err
		}
		r0, w0, in0, out0 = r1, w1, in1, out1
	}
	return nil
}

// Background is the relay's background traffic in one second: what tor
// read and wrote (dr, dw) less what the measurement made it carry, given
// the cumulative echo bytes bentod had read from measurers and written
// back at the second's start (in0, out0) and end (in1, out1).
// Tor received the measurers' data in cells and wrote it to the echo
// connection; it read the echo back and sent it in cells; each direction
// of data also makes the other side send flow-control cells (SENDMEs).
// Counters run at different instants, so a second can come out slightly
// negative: it is floored at zero.
func Background(dr, dw, in0, in1, out0, out1 uint64, localCounted bool) (sent, recv uint32) {
	cells := func(a, b uint64) uint64 { return echo.CellBytes(b) - echo.CellBytes(a) }
	sendmes := func(a, b uint64) uint64 { return echo.SendmeBytes(b) - echo.SendmeBytes(a) }
	in, out := in1-in0, out1-out0
	measRead := cells(in0, in1) + sendmes(out0, out1)
	measWritten := cells(out0, out1) + sendmes(in0, in1)
	if localCounted {
		measRead += out
		measWritten += in
	}
	sat := func(a, b uint64) uint32 {
		if a <= b {
			return 0
		}
		if a-b > 1<<32-1 {
			return 1<<32 - 1
		}
		return uint32(a - b)
	}
	return sat(dw, measWritten), sat(dr, measRead)
}

// ServeEcho accepts echo connections on ln until ctx ends.
func (t *Target) ServeEcho(ctx context.Context, ln net.Listener) error {
	return link.AcceptLoop(ctx, ln, t.cfg.Log, "an echo connection", func(nc net.Conn) {
		// Anyone on Tor can reach the echo port through the relay: only
		// while a measurement runs, and only as many connections as it
		// announced (and a few more), are they kept.
		t.mu.Lock()
		if t.active == nil || t.echoes >= min(t.active.total+echoSlack, t.cfg.MaxEchoConns) {
			t.mu.Unlock()
			nc.Close()
			return
		}
		t.echoes++
		t.mu.Unlock()
		go func() {
			defer func() {
				nc.Close()
				t.mu.Lock()
				t.echoes--
				t.mu.Unlock()
			}()
			t.echo(nc)
		}()
	})
}

// echoSlack: echo connections beyond those announced that may wait for
// their ECHO_OPEN (a measurer's retries, strangers).
const echoSlack = 16

// echoOpenTimeout bounds the wait for an echo connection's ECHO_OPEN.
const echoOpenTimeout = 3 * time.Second

func (t *Target) echo(nc net.Conn) {
	nc.SetDeadline(time.Now().Add(echoOpenTimeout))
	var buf [msg.MaxFrame]byte
	p, err := msg.ReadFrame(nc, buf[:])
	if err != nil {
		return
	}
	m, err := msg.Decode(p)
	if err != nil {
		return
	}
	open, ok := m.(*msg.EchoOpen)
	if !ok {
		return
	}
	fail := func(code msg.ErrCode) {
		b, _ := msg.Frame(&msg.Err{Header: msg.Header{MeasID: open.MeasID}, Code: code})
		nc.Write(b)
	}
	t.mu.Lock()
	meas := t.active
	t.mu.Unlock()
	if meas == nil || meas.id != open.MeasID {
		fail(msg.ErrUnknownMeas)
		return
	}
	if want := msg.EchoMAC(meas.key, open.MeasID, open.Measurer, open.Conn); !hmac.Equal(open.MAC[:], want[:]) {
		fail(msg.ErrEchoAuth)
		return
	}
	meas.mu.Lock()
	slot := [2]int{int(open.Measurer), int(open.Conn)}
	if int(open.Measurer) >= len(meas.conns) || open.Conn >= meas.conns[open.Measurer] || meas.used[slot] || meas.echo == nil {
		meas.mu.Unlock()
		fail(msg.ErrEchoAuth)
		return
	}
	meas.used[slot] = true
	meas.echo[nc] = true
	meas.mu.Unlock()
	ok2, _ := msg.Frame(&msg.EchoOK{Header: msg.Header{MeasID: open.MeasID}})
	if _, err := nc.Write(ok2); err != nil {
		return
	}
	nc.SetDeadline(time.Time{})
	// Echo until the measurement ends: closeEcho closes nc at its end or
	// deadline, so no idle deadline is needed (an echo connection waits
	// for GO while the others open). A measurer that stops reading holds
	// its connection until then, no longer.
	buf2 := make([]byte, 32<<10)
	for {
		n, err := nc.Read(buf2)
		if n > 0 {
			meas.start.Do(func() { close(meas.started) })
			meas.in.Add(uint64(n))
			w, werr := nc.Write(buf2[:n])
			meas.out.Add(uint64(w))
			if werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
