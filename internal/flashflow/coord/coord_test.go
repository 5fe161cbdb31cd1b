package coord_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/torbento/bento/internal/flashflow/aggregate"
	"github.com/torbento/bento/internal/flashflow/coord"
	"github.com/torbento/bento/internal/flashflow/link"
	"github.com/torbento/bento/internal/flashflow/measurer"
	"github.com/torbento/bento/internal/flashflow/msg"
	"github.com/torbento/bento/internal/flashflow/schedule"
	"github.com/torbento/bento/internal/flashflow/target"
	"github.com/torbento/bento/internal/flashflow/v3bw"
)

// The roles over loopback, without tor: measurers connect straight to the
// target's echo port (the end-to-end test in e2e/ goes through tor).

func ident(t *testing.T, dir, name string) *link.Identity {
	t.Helper()
	id, err := link.LoadOrCreate(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"), name)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// direct opens echo connections without tor (to the echo port on
// 127.0.0.1), optionally through a function that may alter the echo.
type direct struct {
	alter func(net.Conn) net.Conn
	slow  func(port uint16) time.Duration // how long opening streams to port takes
}

func (d direct) Streams(ctx context.Context, via []string, target string, port uint16, n int) ([]net.Conn, []string, error) {
	if d.slow != nil {
		select {
		case <-time.After(d.slow(port)):
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
	var out []net.Conn
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
		if err != nil {
			return out, nil, err
		}
		if d.alter != nil {
			c = d.alter(c)
		}
		out = append(out, c)
	}
	return out, nil, nil
}

func (direct) CloseCircuits([]string) {}

type world struct {
	coord    *coord.Coordinator
	target   coord.Target
	tgt      *target.Target
	coordID  *link.Identity
	targetID *link.Identity
}

type options struct {
	pinCoordinator bool
	traffic        target.Counters
	alter          func(net.Conn) net.Conn
	measurers      int
	bucket         int
	notAllowed     bool
	conns          int // in all (default 8)
	groupWait      time.Duration
	slow           func(port uint16) time.Duration
}

func setup(t *testing.T, o options) *world {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w := &world{coordID: ident(t, dir, "coordinator"), targetID: ident(t, dir, "target")}
	listen := func() net.Listener {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return ln
	}
	measLn := listen()
	w.target, w.tgt = startTarget(t, ctx, o, w.coordID, w.targetID, strings.Repeat("AB", 20))
	if o.measurers == 0 {
		o.measurers = 2
	}
	var mpins []string
	var mids []*link.Identity
	for i := 0; i < o.measurers; i++ {
		id := ident(t, dir, fmt.Sprintf("measurer%d", i))
		mids = append(mids, id)
		mpins = append(mpins, id.Fingerprint)
	}
	if o.bucket == 0 {
		o.bucket = 10
	}
	if o.conns == 0 {
		o.conns = 8
	}
	c, err := coord.New(coord.Config{Identity: w.coordID, Measurers: mpins, Duration: 3 * time.Second, BGPercent: coord.DefaultBGPercent, Conns: o.conns, Bucket: o.bucket, GroupWait: o.groupWait})
	if err != nil {
		t.Fatal(err)
	}
	w.coord = c
	go c.ServeMeasurers(ctx, measLn)
	for _, id := range mids {
		go measurer.Run(ctx, measurer.Config{Coordinator: measLn.Addr().String(), CoordinatorPin: []string{w.coordID.Fingerprint},
			Identity: id, Paths: direct{alter: o.alter, slow: o.slow}, Via: []string{"x"}})
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := c.WaitMeasurers(wctx, o.measurers); err != nil {
		t.Fatal(err)
	}
	return w
}

// startTarget starts a target's bentod side on loopback: its control
// listener and its echo endpoint.
func startTarget(t *testing.T, ctx context.Context, o options, coordID, id *link.Identity, fp string) (coord.Target, *target.Target) {
	t.Helper()
	listen := func() net.Listener {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return ln
	}
	echoLn, ctlLn := listen(), listen()
	if o.traffic == nil {
		o.traffic = func(context.Context) (uint64, uint64, error) { return 0, 0, nil }
	}
	var pins []string
	if o.pinCoordinator {
		pins = append(pins, coordID.Fingerprint)
	}
	tgt, err := target.New(target.Config{Allowed: !o.notAllowed, Coordinators: pins, MaxDuration: 15 * time.Second,
		EchoPort: uint16(echoLn.Addr().(*net.TCPAddr).Port), Traffic: o.traffic}, id)
	if err != nil {
		t.Fatal(err)
	}
	go tgt.ServeEcho(ctx, echoLn)
	go tgt.ServeControl(ctx, ctlLn)
	return coord.Target{Fingerprint: fp, Addr: ctlLn.Addr().String(), Pin: id.Fingerprint, Prior: 1 << 20}, tgt
}

// TestMeasureGroupSlowRelay: a relay whose measurement is not ready
// GroupWait after the first target accepted is left out (its target's
// clock would run out), and the others are measured without waiting for
// it.
func TestMeasureGroupSlowRelay(t *testing.T) {
	var slowPort atomic.Uint32
	w := setup(t, options{pinCoordinator: true, groupWait: time.Second, slow: func(port uint16) time.Duration {
		if uint32(port) == slowPort.Load() {
			return 6 * time.Second
		}
		return 0
	}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	second, tgt2 := startTarget(t, ctx, options{pinCoordinator: true}, w.coordID, ident(t, t.TempDir(), "target2"), strings.Repeat("CD", 20))
	slowPort.Store(uint32(tgt2.EchoPort()))
	began := time.Now()
	ms, errs := w.coord.MeasureGroup(context.Background(), []coord.Target{w.target, second})
	if errs[0] != nil {
		t.Fatalf("the prompt relay: %v", errs[0])
	}
	if errs[1] == nil || !strings.Contains(errs[1].Error(), "not ready within") {
		t.Fatalf("the slow relay: %v, want left out", errs[1])
	}
	if d := ms[0].Start.Sub(began); d > 4*time.Second {
		t.Errorf("the prompt relay started %v after the group began, want within the 1 s group wait (and setup)", d)
	}
}

// TestMeasureAllColocated: relays whose bentods share a host are
// measured at the same time, the others one after another.
func TestMeasureAllColocated(t *testing.T) {
	w := setup(t, options{pinCoordinator: true})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	second, _ := startTarget(t, ctx, options{pinCoordinator: true}, w.coordID, ident(t, dir, "target2"), strings.Repeat("CD", 20))
	store, err := coord.OpenStore(coord.DefaultResultsPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	svc := &coord.Service{Coord: w.coord, Store: store, Dir: &v3bw.Dir{Path: dir}, Started: time.Now()}
	if errs := svc.MeasureAll(context.Background(), []coord.Target{w.target, second}); len(errs) != 0 {
		t.Fatal(errs)
	}
	a, _ := store.Get(w.target.Fingerprint)
	b, _ := store.Get(second.Fingerprint)
	if d := a.MeasuredAt.Sub(b.MeasuredAt).Abs(); d > 500*time.Millisecond {
		t.Errorf("two relays on 127.0.0.1 measured %v apart, want together", d)
	}
	// On different hosts (as far as their bentods' addresses say): one
	// after the other.
	second.Addr = strings.Replace(second.Addr, "127.0.0.1", "localhost", 1)
	if errs := svc.MeasureAll(context.Background(), []coord.Target{w.target, second}); len(errs) != 0 {
		t.Fatal(errs)
	}
	a, _ = store.Get(w.target.Fingerprint)
	b, _ = store.Get(second.Fingerprint)
	if d := a.MeasuredAt.Sub(b.MeasuredAt).Abs(); d < 3*time.Second {
		t.Errorf("relays on two hosts measured %v apart, want one after the other", d)
	}
}

// TestMeasureGroup: relays measured together (a slot's, or relays
// sharing a host) run over the same seconds, each with its own
// measurement, rate and share of the connections.
func TestMeasureGroup(t *testing.T) {
	w := setup(t, options{pinCoordinator: true, conns: 64})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	second, _ := startTarget(t, ctx, options{pinCoordinator: true}, w.coordID, ident(t, dir, "target2"), strings.Repeat("CD", 20))
	second.Prior = 1 << 19
	ms, errs := w.coord.MeasureGroup(context.Background(), []coord.Target{w.target, second, w.target})
	for i, err := range errs[:2] {
		if err != nil {
			t.Fatalf("relay %d: %v", i, err)
		}
	}
	if errs[2] == nil || !strings.Contains(errs[2].Error(), "already being measured") {
		t.Fatalf("the same relay twice in a group: %v, want refused", errs[2])
	}
	if d := ms[0].Start.Sub(ms[1].Start).Abs(); d > 500*time.Millisecond {
		t.Errorf("measurements started %v apart, want together", d)
	}
	if ms[0].ID == ms[1].ID {
		t.Errorf("both measurements have id %d", ms[0].ID)
	}
	// Each paced at 2.25 × its own prior over loopback.
	for i, m := range ms[:2] {
		want := 2.25 * float64([]uint64{w.target.Prior, second.Prior}[i]) * 514 / 498
		if e := float64(m.Result.Estimate); e < 0.8*want || e > 1.2*want {
			t.Errorf("relay %d: estimate %.0f bytes/s, want about %.0f", i, e, want)
		}
		for _, mm := range m.Measurers {
			if mm.ConnsWanted != 16 {
				t.Errorf("relay %d: %d connections per measurer, want 16 (64 split over 2 measurers and 2 relays)", i, mm.ConnsWanted)
			}
		}
	}
	// And the coordinator is free again; a group never splits below
	// MinGroupConns per measurer.
	ms, errs = w.coord.MeasureGroup(context.Background(), []coord.Target{second, w.target, {Fingerprint: strings.Repeat("EF", 20), Addr: "127.0.0.1:1", Pin: w.targetID.Fingerprint}})
	for i, err := range errs[:2] {
		if err != nil {
			t.Fatalf("relay %d: %v", i, err)
		}
		if got := ms[i].Measurers[0].ConnsWanted; got != 10 {
			t.Errorf("relay %d in a group of 3: %d connections per measurer, want 32/3 = 10", i, got)
		}
	}
	if errs[2] == nil {
		t.Error("a relay whose bentod does not answer was measured")
	}
}

func TestMeasureHonest(t *testing.T) {
	w := setup(t, options{pinCoordinator: true})
	m, err := w.coord.Measure(context.Background(), w.target)
	if err != nil {
		t.Fatal(err)
	}
	// Paced at 2.25 × 1 MiB/s over loopback: every byte comes back.
	sent := 2.25 * float64(1<<20) * 514 / 498
	if e := float64(m.Result.Estimate); e < 0.8*sent || e > 1.2*sent {
		t.Fatalf("estimate %.0f bytes/s, want about %.0f (paced rate as cells)", e, sent)
	}
	if m.Result.Complete < 3 || m.Result.Clamped != 0 {
		t.Fatalf("complete %d clamped %d", m.Result.Complete, m.Result.Clamped)
	}
	for _, s := range m.Result.Seconds {
		if s.B != 0 {
			t.Fatalf("second %d: background %d from a tor that carried none", s.Second, s.B)
		}
	}
}

// A coordinator whose certificate the target does not pin is refused
// with ErrUntrusted.
func TestUntrustedCoordinator(t *testing.T) {
	w := setup(t, options{pinCoordinator: false})
	_, err := w.coord.Measure(context.Background(), w.target)
	var f *coord.Failed
	if !errors.As(err, &f) || f.Err.Code != msg.ErrUntrusted {
		t.Fatalf("got %v, want the target's ERR untrusted", err)
	}
}

// A relay that does not allow measurements says so.
func TestMeasurementsNotAllowed(t *testing.T) {
	w := setup(t, options{pinCoordinator: true, notAllowed: true})
	_, err := w.coord.Measure(context.Background(), w.target)
	var f *coord.Failed
	if !errors.As(err, &f) || f.Err.Code != msg.ErrNotAllowed {
		t.Fatalf("got %v, want the target's ERR not allowed", err)
	}
}

// A target that lies about its background traffic gains at most
// 1/(1-r): here it claims a gigabyte a second and the estimate is the
// measured traffic times 4/3 (r = 25%).
func TestLyingTargetGainsAtMostOneOverOneMinusR(t *testing.T) {
	var n atomic.Uint64
	lie := func(context.Context) (uint64, uint64, error) {
		v := n.Add(1 << 30)
		return v, v, nil
	}
	w := setup(t, options{pinCoordinator: true, traffic: lie})
	m, err := w.coord.Measure(context.Background(), w.target)
	if err != nil {
		t.Fatal(err)
	}
	var ms []uint64
	for _, s := range m.Result.Seconds {
		if !s.Complete {
			continue
		}
		if !s.Clamped || s.BPrime > s.M/3+1 {
			t.Fatalf("second %d: claimed %d, counted %d of measured %d: not clamped to r/(1-r)", s.Second, s.B, s.BPrime, s.M)
		}
		ms = append(ms, s.M)
	}
	// Against what it really echoed, the gain is bounded exactly.
	if mm := aggregate.LowerMedian(ms); m.Result.Estimate > mm*4/3+1 {
		t.Fatalf("estimate %d exceeds 4/3 of the median measured traffic %d", m.Result.Estimate, mm)
	}
	honest := setup(t, options{pinCoordinator: true})
	h, err := honest.coord.Measure(context.Background(), honest.target)
	if err != nil {
		t.Fatal(err)
	}
	gain := float64(m.Result.Estimate) / float64(h.Result.Estimate)
	t.Logf("lying target: %d bytes/s, honest: %d bytes/s, gain %.3f", m.Result.Estimate, h.Result.Estimate, gain)
	if gain > 4.0/3*1.1 {
		t.Fatalf("lying target gained %.2f×, more than 1/(1-r) = 1.33×", gain)
	}
}

// alterAfter flips one byte of the echo after n bytes have come back.
type alterAfter struct {
	net.Conn
	mu   sync.Mutex
	n    int
	done bool
}

func (a *alterAfter) Read(p []byte) (int, error) {
	k, err := a.Conn.Read(p)
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.done && a.n >= 0 {
		if a.n < k {
			p[a.n] ^= 0xFF
			a.done = true
		} else {
			a.n -= k
		}
	}
	return k, err
}

// A measurer that sees altered echo data fails the measurement. Every
// chunk is checked (bucket 1) so that one altered byte is certain to be
// found; with the default bucket the chance is the proposal's.
func TestAlteredEchoFailsMeasurement(t *testing.T) {
	var first atomic.Bool
	w := setup(t, options{pinCoordinator: true, measurers: 1, bucket: 1, alter: func(c net.Conn) net.Conn {
		if first.CompareAndSwap(false, true) {
			// Past the ECHO_OK frame, into the echoed data.
			return &alterAfter{Conn: c, n: 100_000}
		}
		return c
	}})
	_, err := w.coord.Measure(context.Background(), w.target)
	var f *coord.Failed
	if !errors.As(err, &f) || f.Err.Code != msg.ErrEchoMismatch {
		t.Fatalf("got %v, want ERR echo mismatch from the measurer", err)
	}
}

// The target accepts at most two measurements per coordinator and period.
func TestTargetRateLimit(t *testing.T) {
	w := setup(t, options{pinCoordinator: true})
	for i := 0; i < 2; i++ {
		if _, err := w.coord.Measure(context.Background(), w.target); err != nil {
			t.Fatal(err)
		}
	}
	_, err := w.coord.Measure(context.Background(), w.target)
	var f *coord.Failed
	if !errors.As(err, &f) || f.Err.Code != msg.ErrRateLimited {
		t.Fatalf("third measurement: %v, want ERR rate limited", err)
	}
	if v, ok := f.Err.Ext(msg.ExtRetryAfter); !ok || len(v) != 4 {
		t.Fatal("no retry-after")
	}
}

// Run measures a relay it never measured at once, plans each period and
// keeps the bandwidth file, until its context ends.
func TestServiceRun(t *testing.T) {
	w := setup(t, options{pinCoordinator: true})
	dir := t.TempDir()
	store, err := coord.OpenStore(coord.DefaultResultsPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	svc := &coord.Service{Coord: w.coord, Store: store, Dir: &v3bw.Dir{Path: dir}, Started: time.Now()}
	p := schedule.DefaultParams(100 << 20)
	p.Period, p.Slot = 4*time.Second, 2*time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Second)
	defer cancel()
	planned := 0
	err = svc.Run(ctx, func() ([]coord.Target, error) { return []coord.Target{w.target}, nil }, p,
		func(uint64) [32]byte { planned++; return [32]byte{byte(planned)} })
	if err != nil {
		t.Fatal(err)
	}
	if planned < 2 {
		t.Errorf("%d periods planned in 12 s of 4-second periods", planned)
	}
	r, ok := store.Get(w.target.Fingerprint)
	if !ok || r.Estimate == 0 {
		t.Fatalf("no result stored: %+v", r)
	}
	f, err := v3bw.ReadFile(filepath.Join(dir, "v3bw"))
	if err != nil || len(f.Relays) != 1 || f.Relays[0].NodeID != w.target.Fingerprint {
		t.Fatalf("bandwidth file: %+v %v", f, err)
	}
}

// TestServiceRunJoint: one of two coordinators sharing a joint schedule
// measures the relay only in its own slots, never at start-up, and reads
// the shared random value each period.
func TestServiceRunJoint(t *testing.T) {
	w := setup(t, options{pinCoordinator: true})
	dir := t.TempDir()
	store, err := coord.OpenStore(coord.DefaultResultsPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	joint := &coord.Joint{Self: "a", Secret: []byte(strings.Repeat("s", 32)),
		Coordinators: []schedule.Coordinator{{ID: "a", Capacity: 100 << 20}, {ID: "b", Capacity: 100 << 20}}}
	srvs := 0
	svc := &coord.Service{Coord: w.coord, Store: store, Dir: &v3bw.Dir{Path: dir}, Started: time.Now(), Joint: joint,
		SRV: func(context.Context) ([32]byte, error) { srvs++; return [32]byte{9}, nil }}
	p := schedule.DefaultParams(100 << 20)
	p.Period, p.Slot = 8*time.Second, 4*time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 18*time.Second)
	defer cancel()
	err = svc.Run(ctx, func() ([]coord.Target, error) { return []coord.Target{w.target}, nil }, p,
		func(uint64) [32]byte { t.Error("a joint schedule used the single-coordinator seed"); return [32]byte{} })
	if err != nil {
		t.Fatal(err)
	}
	if srvs < 2 {
		t.Errorf("the shared random value was read %d times in 18 s of 8-second periods", srvs)
	}
	r, ok := store.Get(w.target.Fingerprint)
	if !ok {
		t.Fatal("the relay was never measured")
	}
	period := schedule.PeriodOf(r.MeasuredAt, p.Period)
	_, mine, err := joint.Plan(p, coord.JointRelays([]coord.Target{w.target}), [32]byte{9}, period)
	if err != nil {
		t.Fatal(err)
	}
	a, ok := mine.Lookup(w.target.Fingerprint)
	if !ok {
		t.Fatalf("the relay is not in a's schedule: %+v", mine)
	}
	start := mine.SlotStart(schedule.PeriodStart(period, p.Period), a.Slot)
	if r.MeasuredAt.Before(start) || !r.MeasuredAt.Before(start.Add(p.Slot)) {
		t.Errorf("measured at %s, outside a's slot %d [%s, +%v)", r.MeasuredAt.Format("15:04:05.000"), a.Slot, start.Format("15:04:05.000"), p.Slot)
	}
}
