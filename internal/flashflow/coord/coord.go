// Package coord is FlashFlow's coordinator (prop 316 §3.2.1): measurers
// connect to it (TLS, each measurer's certificate pinned); it connects to
// a target's bentod (TLS, the target's certificate pinned, its own
// certificate pinned by the target), asks for a measurement (PARAMS),
// tells the measurers where and how fast to send (MEASURE, GO), gathers
// the per-second reports of both sides and aggregates them (package
// aggregate) into a capacity estimate.
package coord

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/torbento/bento/internal/flashflow/aggregate"
	"github.com/torbento/bento/internal/flashflow/link"
	"github.com/torbento/bento/internal/flashflow/msg"
	"github.com/torbento/bento/internal/netlimit"
)

// Config configures a coordinator.
type Config struct {
	Identity  *link.Identity
	Measurers []string // pinned measurer certificate fingerprints
	// Duration of a measurement (default 30 s), background share r in
	// percent (no default: 0 is valid; prop 316 suggests
	// DefaultBGPercent), multiplier m (default 2.25), connections in
	// all (default 160, split among measurers), echo check bucket
	// (default 125: one chunk in 125 verified).
	Duration   time.Duration
	BGPercent  int
	Multiplier float64
	Conns      int
	Bucket     int
	// GroupWait bounds how long relays measured together wait for each
	// other, from the first one's PARAMS_OK (DefaultGroupWait).
	GroupWait time.Duration
	Log       *slog.Logger
}

// DefaultGroupWait: a target's clock runs from its PARAMS, 45 s by
// default for a 30 s measurement, and its PARAMS_OK and the measurers'
// setup come out of the 15 s left.
const DefaultGroupWait = 10 * time.Second

// DefaultBGPercent is prop 316's suggested r: at most 1.33× inflation.
const DefaultBGPercent = 25

// MinGroupConns is the fewest connections per measurer a relay gets when
// it is measured in a group (Config.Conns is split among the group).
const MinGroupConns = 8

// SetupTimeout bounds the time from MEASURE to every measurer's READY.
const SetupTimeout = 45 * time.Second

// Target is a relay to measure.
type Target struct {
	Fingerprint string // 40 hex digits: the relay's identity
	Addr        string // its bentod's FlashFlow address (host:port)
	Pin         string // its bentod's certificate fingerprint
	// Prior is the current estimate of its capacity in bytes/s (its
	// advertised bandwidth if it was never measured); the measurers send
	// Multiplier times this.
	Prior uint64
}

// Coordinator runs measurements.
type Coordinator struct {
	cfg    Config
	pinned map[string]bool

	mu        sync.Mutex
	measurers map[string]*measurerConn // by fingerprint
	measuring map[string]bool          // targets being measured, by fingerprint
	ids       map[uint32]bool          // ids of the measurements in progress
}

type measurerConn struct {
	c    *link.Conn
	fp   string
	done chan struct{}

	mu   sync.Mutex
	subs map[uint32]chan msg.Msg // messages read from it, by measurement
}

// subscribe returns the channel that gets the measurer's messages for
// measurement id, until unsubscribe.
func (m *measurerConn) subscribe(id uint32) chan msg.Msg {
	ch := make(chan msg.Msg, 2*msg.MaxDuration)
	m.mu.Lock()
	m.subs[id] = ch
	m.mu.Unlock()
	return ch
}

func (m *measurerConn) unsubscribe(id uint32) {
	m.mu.Lock()
	delete(m.subs, id)
	m.mu.Unlock()
}

// deliver hands a message to its measurement; messages of no measurement
// in progress are dropped. It reports false when the measurement's queue
// is full: a measurer sending more than a measurement's worth of messages
// at once is broken.
func (m *measurerConn) deliver(r msg.Msg) bool {
	m.mu.Lock()
	ch := m.subs[r.ID()]
	m.mu.Unlock()
	if ch == nil {
		return true
	}
	select {
	case ch <- r:
		return true
	default:
		return false
	}
}

// New returns a coordinator.
func New(cfg Config) (*Coordinator, error) {
	if cfg.Duration == 0 {
		cfg.Duration = 30 * time.Second
	}
	if cfg.Multiplier == 0 {
		cfg.Multiplier = 2.25
	}
	if cfg.Conns == 0 {
		cfg.Conns = 160
	}
	if cfg.Bucket == 0 {
		cfg.Bucket = 125
	}
	if cfg.GroupWait == 0 {
		cfg.GroupWait = DefaultGroupWait
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	d := int(cfg.Duration / time.Second)
	switch {
	case cfg.Duration%time.Second != 0 || d < msg.MinDuration || d > msg.MaxDuration:
		return nil, fmt.Errorf("flashflow: duration %v: want whole seconds from %d to %d", cfg.Duration, msg.MinDuration, msg.MaxDuration)
	case cfg.BGPercent < 0 || cfg.BGPercent > msg.MaxBGPercent:
		return nil, fmt.Errorf("flashflow: background percent %d outside [0, %d]", cfg.BGPercent, msg.MaxBGPercent)
	case math.IsNaN(cfg.Multiplier) || cfg.Multiplier < 1 || cfg.Multiplier > 100:
		return nil, fmt.Errorf("flashflow: multiplier %v outside [1, 100]", cfg.Multiplier)
	case cfg.Conns < 1 || cfg.Conns > msg.MaxMeasurers*msg.MaxConns:
		return nil, fmt.Errorf("flashflow: %d connections outside [1, %d]", cfg.Conns, msg.MaxMeasurers*msg.MaxConns)
	case cfg.GroupWait < 0:
		return nil, fmt.Errorf("flashflow: group wait %v is negative", cfg.GroupWait)
	case cfg.Bucket < msg.MinBucket || cfg.Bucket > msg.MaxBucket:
		return nil, fmt.Errorf("flashflow: bucket %d outside [%d, %d]", cfg.Bucket, msg.MinBucket, msg.MaxBucket)
	}
	c := &Coordinator{cfg: cfg, pinned: map[string]bool{}, measurers: map[string]*measurerConn{}, measuring: map[string]bool{}, ids: map[uint32]bool{}}
	for _, fp := range cfg.Measurers {
		n, err := link.ParseFingerprint(fp)
		if err != nil {
			return nil, err
		}
		c.pinned[n] = true
	}
	if len(c.pinned) == 0 {
		return nil, errors.New("flashflow: no measurer certificate pinned")
	}
	return c, nil
}

// ServeMeasurers accepts measurers on ln until ctx ends. Only pinned
// measurers are kept, one connection each (a new one replaces the old);
// the listener is bounded (package netlimit) and connections that have
// not shown a pinned certificate are the first closed for newcomers.
func (c *Coordinator) ServeMeasurers(ctx context.Context, ln net.Listener) error {
	lim := netlimit.New(ln, netlimit.Config{Name: "flashflow measurers", Total: 4*len(c.pinned) + 4, PerAddr: 8, Rate: 2, Burst: 8, Log: c.cfg.Log})
	return link.AcceptLoop(ctx, lim, c.cfg.Log, "a measurer", func(nc net.Conn) {
		go func() {
			lc, err := link.ServerTimeout(nc, c.cfg.Identity, 5*time.Second)
			if err != nil {
				return
			}
			fp := lc.Peer()
			if !c.pinned[fp] {
				lc.Send(&msg.Err{Code: msg.ErrUntrusted})
				lc.Close()
				return
			}
			netlimit.Prove(nc)
			mc := &measurerConn{c: lc, fp: fp, done: make(chan struct{}), subs: map[uint32]chan msg.Msg{}}
			c.mu.Lock()
			if old := c.measurers[fp]; old != nil {
				old.c.Close()
			}
			c.measurers[fp] = mc
			c.mu.Unlock()
			c.cfg.Log.Info("flashflow: measurer connected", "measurer", fp[:16])
			defer func() {
				lc.Close()
				close(mc.done)
				c.mu.Lock()
				if c.measurers[fp] == mc {
					delete(c.measurers, fp)
				}
				c.mu.Unlock()
			}()
			for {
				m, err := lc.Recv(24 * time.Hour)
				if err != nil {
					return
				}
				if !mc.deliver(m) {
					return
				}
			}
		}()
	})
}

// Measurers returns the number of measurers connected.
func (c *Coordinator) Measurers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.measurers)
}

// WaitMeasurers waits until n measurers are connected.
func (c *Coordinator) WaitMeasurers(ctx context.Context, n int) error {
	for c.Measurers() < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("flashflow: %d of %d measurers connected: %w", c.Measurers(), n, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// Measurement is the outcome of one measurement.
type Measurement struct {
	Target    Target
	ID        uint32
	Start     time.Time
	Result    aggregate.Result
	Measurers []aggregate.Measurer
}

// Failed is returned when a party ended the measurement with ERR.
type Failed struct {
	Party string
	Err   *msg.Err
}

func (f *Failed) Error() string {
	return fmt.Sprintf("flashflow: measurement %d failed at the %s: %v", f.Err.MeasID, f.Party, f.Err.Code)
}

// Measure measures one relay with every connected measurer.
func (c *Coordinator) Measure(ctx context.Context, t Target) (*Measurement, error) {
	ms, errs := c.MeasureGroup(ctx, []Target{t})
	return ms[0], errs[0]
}

// MeasureGroup measures relays at the same time, each with every
// connected measurer: a slot's relays, which share the slot's measurer
// capacity, and relays sharing a host, which must share it while they
// are measured (prop 316 §5.2: measured one after the other, each would
// be credited with the whole host). Each relay gets its own measurement
// (its own id, target connection, rate from its prior and its share of
// the connections); the GO goes out to all of them once every one is
// ready or has failed, so that they run over the same seconds.
// Results and errors are in the order of ts.
func (c *Coordinator) MeasureGroup(ctx context.Context, ts []Target) ([]*Measurement, []error) {
	res := make([]*Measurement, len(ts))
	errs := make([]error, len(ts))
	c.mu.Lock()
	var ms []*measurerConn
	for _, m := range c.measurers {
		ms = append(ms, m)
	}
	var mine []string
	for i, t := range ts {
		if c.measuring[t.Fingerprint] {
			errs[i] = fmt.Errorf("flashflow: relay %s is already being measured", t.Fingerprint)
			continue
		}
		c.measuring[t.Fingerprint] = true
		mine = append(mine, t.Fingerprint)
	}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		for _, fp := range mine {
			delete(c.measuring, fp)
		}
		c.mu.Unlock()
	}()
	if len(ms) == 0 {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = errors.New("flashflow: no measurer connected")
			}
		}
		return res, errs
	}
	if len(ms) > msg.MaxMeasurers {
		ms = ms[:msg.MaxMeasurers]
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].fp < ms[j].fp })
	// The connections are split among the group, so that opening them
	// takes about as long as for one relay, but each relay keeps at least
	// MinGroupConns circuits per measurer: enough to keep it busy, few
	// enough that a slot's 256 relays need a few thousand circuits.
	per := max(1, c.cfg.Conns/len(ms))
	conns := max(min(per, MinGroupConns), per/max(1, len(mine)))
	conns = min(conns, msg.MaxConns)
	start := make(chan struct{})
	firstOK := make(chan struct{})
	paramsOK := sync.OnceFunc(func() { close(firstOK) })
	var ready, done sync.WaitGroup
	for i, t := range ts {
		if errs[i] != nil {
			continue
		}
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			res[i], errs[i] = c.measure(ctx, t, ms, conns, paramsOK, sync.OnceFunc(ready.Done), start)
		}()
	}
	// GO when every relay is ready, or GroupWait after the first target
	// accepted: each target's clock runs from its PARAMS (FFMaxDuration,
	// 45 s by default, for a 30 s measurement), so one slow relay must not
	// hold the others past it. Those not ready by then are aborted.
	allReady := make(chan struct{})
	go func() { ready.Wait(); close(allReady) }()
	select {
	case <-allReady:
	case <-firstOK:
		wait := time.NewTimer(c.cfg.GroupWait)
		select {
		case <-allReady:
		case <-wait.C:
		}
		wait.Stop()
	}
	close(start)
	done.Wait()
	return res, errs
}

// measure carries out one relay's measurement in a group: it calls ready
// once its measurers are ready (or it failed) and sends GO when start is
// closed.
func (c *Coordinator) measure(ctx context.Context, t Target, ms []*measurerConn, conns int, paramsOK, ready func(), start <-chan struct{}) (*Measurement, error) {
	defer ready()
	fpb, err := hex.DecodeString(t.Fingerprint)
	if err != nil || len(fpb) != 20 {
		return nil, fmt.Errorf("flashflow: relay fingerprint %q: want 40 hex digits", t.Fingerprint)
	}
	pin, err := link.ParseFingerprint(t.Pin)
	if err != nil {
		return nil, err
	}
	var idb [4]byte
	var id uint32
	// Unique among the measurements in progress: messages are routed by
	// id.
	c.mu.Lock()
	for id == 0 || c.ids[id] {
		rand.Read(idb[:])
		id = binary.BigEndian.Uint32(idb[:])
	}
	c.ids[id] = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.ids, id)
		c.mu.Unlock()
	}()
	var key [msg.KeySize]byte
	rand.Read(key[:])
	d := int(c.cfg.Duration / time.Second)
	in := make([]chan msg.Msg, len(ms))
	for i, m := range ms {
		in[i] = m.subscribe(id)
		defer m.unsubscribe(id)
	}
	params := &msg.Params{Header: msg.Header{MeasID: id}, Duration: uint16(d), BGPercent: uint8(c.cfg.BGPercent), EchoKey: key}
	for range ms {
		// The target has no use for the measurers' addresses (stock tor
		// has no DoS whitelist to put them in) and every relay measured
		// would learn where the bandwidth authority's machines are: an
		// opaque tag of a type tor-spec does not define stands for each.
		tag := make([]byte, 8)
		rand.Read(tag)
		params.Measurers = append(params.Measurers, msg.MeasurerInfo{Conns: uint16(conns), Specs: []msg.LinkSpec{{Type: msg.SpecOpaque, Data: tag}}})
	}
	log := c.cfg.Log.With("meas_id", id, "relay", t.Fingerprint[:8])
	tc, err := link.Dial(ctx, t.Addr, c.cfg.Identity, pin)
	if err != nil {
		return nil, err
	}
	defer tc.Close()
	if err := tc.Send(params); err != nil {
		return nil, err
	}
	r, err := tc.Recv(0)
	if err != nil {
		return nil, fmt.Errorf("flashflow: waiting for PARAMS_OK: %w", err)
	}
	var ok *msg.ParamsOK
	switch r := r.(type) {
	case *msg.ParamsOK:
		ok = r
		paramsOK()
	case *msg.Err:
		return nil, &Failed{Party: "target", Err: r}
	default:
		return nil, fmt.Errorf("flashflow: target answered %v to PARAMS", r.Command())
	}
	abort := func(code msg.ErrCode) {
		e := &msg.Err{Header: msg.Header{MeasID: id}, Code: code}
		tc.Send(e)
		for _, m := range ms {
			m.c.Send(e)
		}
	}
	rate := uint64(float64(t.Prior) * c.cfg.Multiplier / float64(len(ms)))
	rate = min(rate, msg.MaxRate)
	for i, m := range ms {
		err := m.c.Send(&msg.Measure{Header: msg.Header{MeasID: id}, Measurer: uint8(i), Duration: uint16(d), Conns: uint16(conns),
			Rate: rate, Bucket: uint16(c.cfg.Bucket), Target: []msg.LinkSpec{msg.RSAIDSpec([20]byte(fpb))},
			EchoPort: ok.EchoPort(), EchoKey: key})
		if err != nil {
			abort(msg.ErrAborted)
			return nil, fmt.Errorf("flashflow: measurer %s: %w", m.fp[:16], err)
		}
	}
	// READY from each, within one deadline for all; messages of earlier
	// measurements are dropped.
	res := &Measurement{Target: t, ID: id, Measurers: make([]aggregate.Measurer, len(ms))}
	readyBy := time.After(SetupTimeout)
	for i, m := range ms {
		res.Measurers[i].ConnsWanted = conns
	wait:
		for {
			select {
			case r := <-in[i]:
				switch r := r.(type) {
				case *msg.Ready:
					res.Measurers[i].ConnsOpened = int(r.Conns)
					log.Info("flashflow: measurer ready", "measurer", i, "conns", r.Conns)
					break wait
				case *msg.Err:
					abort(msg.ErrAborted)
					return nil, &Failed{Party: "measurer", Err: r}
				default:
					abort(msg.ErrProtocol)
					return nil, fmt.Errorf("flashflow: measurer %d answered %v to MEASURE", i, r.Command())
				}
			case <-m.done:
				abort(msg.ErrAborted)
				return nil, fmt.Errorf("flashflow: measurer %d disconnected", i)
			case <-start:
				// The group started without this relay: its target's
				// clock runs from its PARAMS, and the others' would run
				// out waiting for it.
				abort(msg.ErrTimeout)
				return nil, fmt.Errorf("flashflow: measurer %d not ready within %v of the group's first PARAMS_OK", i, c.cfg.GroupWait)
			case <-readyBy:
				abort(msg.ErrTimeout)
				return nil, fmt.Errorf("flashflow: measurer %d did not open its connections within %v", i, SetupTimeout)
			case <-ctx.Done():
				abort(msg.ErrAborted)
				return nil, ctx.Err()
			}
		}
		if 2*res.Measurers[i].ConnsOpened < conns {
			abort(msg.ErrTooFewConns)
			return nil, fmt.Errorf("flashflow: measurer %d opened %d of %d connections (fewer than half)", i, res.Measurers[i].ConnsOpened, conns)
		}
	}
	ready()
	select {
	case <-start:
	case <-ctx.Done():
		abort(msg.ErrAborted)
		return nil, ctx.Err()
	}
	for _, m := range ms {
		m.c.Send(&msg.Go{Header: msg.Header{MeasID: id}})
	}
	res.Start = time.Now()
	// Gather: BG from the target, REPORT from measurers, until every
	// party has reported every second or the deadline.
	type item struct {
		from int // -1: target
		m    msg.Msg
		err  error
	}
	items := make(chan item, 64)
	gctx, cancel := context.WithTimeout(ctx, time.Duration(d+15)*time.Second)
	defer cancel()
	go func() {
		// A target gets d BG reports and a few more frames: one that
		// floods is not read further (its missing seconds count as no
		// background).
		for n := 0; n < d+8 && gctx.Err() == nil; n++ {
			r, err := tc.Recv(time.Duration(d+15) * time.Second)
			select {
			case items <- item{from: -1, m: r, err: err}:
			case <-gctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	for i, m := range ms {
		go func() {
			for {
				select {
				case r := <-in[i]:
					select {
					case items <- item{from: i, m: r}:
					case <-gctx.Done():
						return
					}
				case <-m.done:
					select {
					case items <- item{from: i, err: errors.New("disconnected")}:
					case <-gctx.Done():
					}
					return
				case <-gctx.Done():
					return
				}
			}
		}()
	}
	// One slot per second and party: duplicates cannot grow anything.
	var reports []aggregate.MeasurerReport
	got := make([][]bool, len(ms))
	for i := range got {
		got[i] = make([]bool, d+1)
	}
	bgAt := make([]*msg.BG, d+1)
	bgDup := make([]bool, d+1)
	count := make([]int, len(ms))
	bgCount := 0
	targetGone := false
	done := func() bool {
		if bgCount < d && !targetGone {
			return false
		}
		for _, n := range count {
			if n < d {
				return false
			}
		}
		return true
	}
	for !done() {
		select {
		case it := <-items:
			if it.err != nil {
				if it.from < 0 {
					// The target hangs up after its last BG; seconds it
					// did not report count as no background traffic.
					targetGone = true
					continue
				}
				abort(msg.ErrAborted)
				return nil, fmt.Errorf("flashflow: measurer %d: %w", it.from, it.err)
			}
			if it.m.ID() != id {
				continue // a message of an earlier measurement
			}
			if e, ok := it.m.(*msg.Err); ok {
				party := "target"
				if it.from >= 0 {
					party = fmt.Sprintf("measurer %d", it.from)
				}
				abort(msg.ErrAborted)
				return nil, &Failed{Party: party, Err: e}
			}
			switch r := it.m.(type) {
			case *msg.BG:
				// A second reported twice loses its claim (no background
				// counted), so that a target cannot fail a measurement
				// that goes badly for it by sending a duplicate.
				if it.from >= 0 || int(r.Second) > d {
					continue
				}
				if bgAt[r.Second] != nil {
					bgDup[r.Second] = true
					continue
				}
				bgAt[r.Second] = r
				bgCount++
			case *msg.Report:
				if it.from < 0 || int(r.Second) > d || got[it.from][r.Second] {
					continue
				}
				got[it.from][r.Second] = true
				reports = append(reports, aggregate.MeasurerReport{Measurer: it.from, Second: int(r.Second), Bytes: r.Bytes})
				count[it.from]++
			}
		case <-gctx.Done():
			log.Warn("flashflow: reports missing at the deadline", "bg", bgCount, "reports", fmt.Sprint(count))
			goto aggregateNow
		}
	}
aggregateNow:
	tc.Close()
	var bgs []aggregate.BGReport
	for sec, r := range bgAt {
		if r != nil && !bgDup[sec] {
			bgs = append(bgs, aggregate.BGReport{Second: sec, Sent: uint64(r.Sent), Recv: uint64(r.Recv)})
		}
	}
	agg, err := aggregate.Aggregate(aggregate.Params{Duration: d, BGPercent: c.cfg.BGPercent, Measurers: len(ms)}, res.Measurers, reports, bgs)
	if err != nil {
		return nil, err
	}
	if agg.Estimate == 0 {
		return nil, errors.New("flashflow: no echo traffic came back verified: the measurement failed")
	}
	res.Result = agg
	var mvals, bvals []string
	for _, s := range agg.Seconds {
		mvals = append(mvals, strconv.FormatUint(s.M, 10))
		bvals = append(bvals, strconv.FormatUint(s.B, 10))
	}
	log.Info("flashflow: measured", "estimate_bytes_per_s", agg.Estimate, "complete_seconds", agg.Complete, "clamped", agg.Clamped,
		"measured", strings.Join(mvals, ","), "background", strings.Join(bvals, ","))
	return res, nil
}

// ShortFP abbreviates a certificate fingerprint for logs.
func ShortFP(fp string) string { return strings.ToUpper(fp[:min(len(fp), 16)]) }
