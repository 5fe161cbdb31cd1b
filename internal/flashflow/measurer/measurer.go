// Package measurer is FlashFlow's measurer (prop 316 §3.2.2) on stock
// tor. It stays connected to its coordinator (TLS, the coordinator's
// certificate pinned) and, told to measure a relay, opens many streams to
// the relay's echo endpoint, each on a two-hop circuit of its own whose
// last hop is the relay and whose first is a relay of the measurer's
// deployment (-via); it sends unpredictable data at the rate it was told,
// checks the echo by random sampling (package echo, prop 316 Appendix A)
// and reports the verified bytes of each second, counted as the cells the
// relay carried.
package measurer

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/torbento/bento/internal/flashflow/echo"
	"github.com/torbento/bento/internal/flashflow/link"
	"github.com/torbento/bento/internal/flashflow/msg"
)

// Config configures a measurer.
type Config struct {
	Coordinator    string   // host:port
	CoordinatorPin []string // its certificate fingerprint(s)
	Identity       *link.Identity
	// Paths opens the echo connections: *Tor in production; tests may
	// connect directly.
	Paths Paths
	Via   []string // first-hop relay fingerprints
	Log   *slog.Logger
}

// Paths opens connections to a target's echo endpoint.
type Paths interface {
	// Streams opens n connections to the echo port of the relay whose
	// fingerprint is target, through the first hops via, and returns
	// those it could open and the circuits to close afterwards.
	Streams(ctx context.Context, via []string, target string, port uint16, n int) ([]net.Conn, []string, error)
	CloseCircuits(ids []string)
}

// Run serves the coordinator until ctx ends, reconnecting after failures.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	var pins []string
	for _, p := range cfg.CoordinatorPin {
		pin, err := link.ParseFingerprint(p)
		if err != nil {
			return err
		}
		pins = append(pins, pin)
	}
	if len(pins) == 0 {
		return errors.New("flashflow: no coordinator certificate pinned")
	}
	backoff := time.Second
	for ctx.Err() == nil {
		c, err := link.Dial(ctx, cfg.Coordinator, cfg.Identity, pins...)
		if err != nil {
			cfg.Log.Warn("flashflow: cannot reach the coordinator", "err", err, "retry_in", backoff)
		} else {
			backoff = time.Second
			cfg.Log.Info("flashflow: connected to the coordinator")
			err = serve(ctx, cfg, c)
			c.Close()
			if ctx.Err() == nil {
				cfg.Log.Warn("flashflow: coordinator connection ended", "err", err)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Minute)
	}
	return nil
}

// MaxConcurrent is the number of measurements a measurer carries out at
// once. A coordinator measures a slot's relays together (prop 316
// §3.2.1.2: they share the slot's measurer capacity), and relays that
// share a host must be measured at the same time, or each would be
// credited with the whole host. It matches the schedule's
// schedule.DefaultMaxPerSlot.
const MaxConcurrent = 256

func serve(ctx context.Context, cfg Config, c *link.Conn) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // before the Wait: measurements end with the connection
	type measurement struct {
		in     chan msg.Msg // its GO and ERR
		cancel context.CancelFunc
	}
	var mu sync.Mutex
	active := map[uint32]measurement{}
	for {
		// The coordinator may stay quiet for hours between measurements.
		m, err := c.Recv(24 * time.Hour)
		if err != nil {
			return err
		}
		switch m := m.(type) {
		case *msg.Measure:
			mu.Lock()
			_, dup := active[m.MeasID]
			if dup || len(active) >= MaxConcurrent {
				mu.Unlock()
				c.Send(&msg.Err{Header: msg.Header{MeasID: m.MeasID}, Code: msg.ErrBusy})
				continue
			}
			mctx, mcancel := context.WithCancel(ctx)
			in := make(chan msg.Msg, 4)
			active[m.MeasID] = measurement{in, mcancel}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					mcancel()
					mu.Lock()
					delete(active, m.MeasID)
					mu.Unlock()
				}()
				if err := Measure(mctx, cfg, c, m, in); err != nil {
					cfg.Log.Warn("flashflow: measurement failed", "meas_id", m.MeasID, "err", err)
				}
			}()
		case *msg.Go, *msg.Err:
			// For a measurement in progress; an ERR for one that already
			// ended is an abort that came too late: nothing to do.
			mu.Lock()
			a, ok := active[m.ID()]
			mu.Unlock()
			if ok {
				select {
				case a.in <- m:
				default: // the measurement has what it needs
				}
				if _, abort := m.(*msg.Err); abort {
					// Stop at once, also while its circuits and streams
					// are still being opened.
					a.cancel()
				}
			}
		default:
			c.Send(&msg.Err{Header: msg.Header{MeasID: m.ID()}, Code: msg.ErrProtocol})
			return fmt.Errorf("unexpected %v", m.Command())
		}
	}
}

// chunk is the size of one write: whole cells' worth of data.
const chunk = 32 * echo.CellData

// Measure carries out one measurement: it opens the connections, says
// READY, waits for GO and reports each second. in carries the
// coordinator's GO and ERR for this measurement.
func Measure(ctx context.Context, cfg Config, c *link.Conn, m *msg.Measure, in <-chan msg.Msg) error {
	fail := func(code msg.ErrCode, err error, exts ...msg.Ext) error {
		c.Send(&msg.Err{Header: msg.Header{MeasID: m.MeasID, Exts: exts}, Code: code})
		return err
	}
	fp, _ := msg.RSAID(m.Target)
	// Everything before READY fits the coordinator's SetupTimeout (45 s).
	setup, cancel := context.WithTimeout(ctx, 40*time.Second)
	defer cancel()
	streams, circs, err := cfg.Paths.Streams(setup, cfg.Via, fmt.Sprintf("%X", fp), m.EchoPort, int(m.Conns))
	if err != nil {
		return fail(msg.ErrTooFewConns, err)
	}
	defer cfg.Paths.CloseCircuits(circs)
	var mu sync.Mutex
	var open []net.Conn
	var wg sync.WaitGroup
	for i, s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := echoOpen(setup, s, m, uint16(i)); err != nil {
				cfg.Log.Debug("flashflow: echo connection refused", "err", err)
				s.Close()
				return
			}
			mu.Lock()
			open = append(open, s)
			mu.Unlock()
		}()
	}
	wg.Wait()
	defer func() {
		for _, s := range open {
			s.Close()
		}
	}()
	cfg.Log.Info("flashflow: connections open", "meas_id", m.MeasID, "wanted", m.Conns, "open", len(open))
	if err := c.Send(&msg.Ready{Header: msg.Header{MeasID: m.MeasID}, Conns: uint16(len(open))}); err != nil {
		return err
	}
	if 2*len(open) < int(m.Conns) {
		return fmt.Errorf("opened %d of %d connections", len(open), m.Conns)
	}
	// GO, or the coordinator's ERR for this measurement.
	select {
	case g := <-in:
		switch g := g.(type) {
		case *msg.Go:
			return run(ctx, cfg.Log, c, m, open, in)
		case *msg.Err:
			return g
		default:
			return fmt.Errorf("expected GO, got %v", g.Command())
		}
	case <-time.After(60 * time.Second):
		return fail(msg.ErrTimeout, errors.New("no GO from the coordinator within 60 s of READY"))
	case <-ctx.Done():
		return ctx.Err()
	}
}

func echoOpen(ctx context.Context, s net.Conn, m *msg.Measure, i uint16) error {
	dl := time.Now().Add(8 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	s.SetDeadline(dl)
	defer s.SetDeadline(time.Time{})
	if err := msg.Write(s, &msg.EchoOpen{Header: msg.Header{MeasID: m.MeasID}, Measurer: m.Measurer, Conn: i,
		MAC: msg.EchoMAC(m.EchoKey, m.MeasID, m.Measurer, i)}); err != nil {
		return err
	}
	r, err := msg.Read(s)
	if err != nil {
		return err
	}
	if e, ok := r.(*msg.Err); ok {
		return e
	}
	if _, ok := r.(*msg.EchoOK); !ok {
		return fmt.Errorf("echo endpoint answered %v", r.Command())
	}
	return nil
}

// run sends and verifies echo traffic on every connection and reports
// each second's verified bytes.
func run(ctx context.Context, log *slog.Logger, c *link.Conn, m *msg.Measure, conns []net.Conn, in <-chan msg.Msg) error {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(m.Duration)*time.Second+10*time.Second)
	defer cancel()
	var key [echo.KeySize]byte
	rand.Read(key[:]) // the data's key: known to nobody else
	var verified atomic.Uint64
	perConnVerified := make([]atomic.Uint64, len(conns))
	var ended atomic.Int32
	errc := make(chan error, 2*len(conns))
	var perConn float64 // bytes/s per connection; 0 = unpaced
	if m.Rate > 0 {
		perConn = float64(m.Rate) / float64(len(conns))
	}
	var wg sync.WaitGroup
	for i, s := range conns {
		ck, err := echo.NewChecker(echo.NewSource(key, uint64(i)), int(m.Bucket))
		if err != nil {
			return err
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			errc <- send(ctx, s, ck.Sender(), perConn)
		}()
		go func() {
			defer wg.Done()
			err := receive(ctx, s, ck.Receiver(), &verified, &perConnVerified[i])
			if ctx.Err() == nil {
				ended.Add(1)
			}
			errc <- err
		}()
	}
	defer func() {
		cancel()
		for _, s := range conns {
			s.Close()
		}
		wg.Wait()
		// How evenly the relay served the connections: a starved or
		// lost connection shows here, not in the per-second totals.
		v := make([]uint64, len(conns))
		for i := range perConnVerified {
			v[i] = perConnVerified[i].Load()
		}
		slices.Sort(v)
		log.Info("flashflow: echo per connection", "meas_id", m.MeasID, "conns", len(conns), "ended_early", ended.Load(),
			"min_bytes", v[0], "median_bytes", v[len(v)/2], "max_bytes", v[len(v)-1])
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var last uint64
	for sec := 1; sec <= int(m.Duration); sec++ {
		select {
		case <-tick.C:
		case err := <-errc:
			// Altered echo, or more echoed than sent: the relay cheated.
			var mm *echo.MismatchError
			if errors.As(err, &mm) {
				c.Send(&msg.Err{Header: msg.Header{MeasID: m.MeasID, Exts: []msg.Ext{msg.U64Ext(msg.ExtChunk, mm.Chunk)}}, Code: msg.ErrEchoMismatch})
				return err
			}
			if errors.Is(err, echo.ErrExcess) {
				c.Send(&msg.Err{Header: msg.Header{MeasID: m.MeasID}, Code: msg.ErrEchoMismatch})
				return err
			}
			// One connection ending does not end the measurement: the
			// others carry on and the seconds tell.
			sec--
			continue
		case g := <-in:
			// The coordinator ended the measurement (another party
			// failed it): stop sending at once.
			if e, ok := g.(*msg.Err); ok {
				return e
			}
			sec--
			continue
		case <-ctx.Done():
			return ctx.Err()
		}
		// Cells counted on the running total, so that rounding up to
		// whole cells happens once, not each second.
		v := echo.WireBytes(verified.Load())
		n := v - last
		last = v
		if err := c.Send(&msg.Report{Header: msg.Header{MeasID: m.MeasID}, Second: uint16(sec),
			Bytes: min(n, msg.MaxRate)}); err != nil {
			return err
		}
	}
	return nil
}

func send(ctx context.Context, s net.Conn, snd *echo.Sender, rate float64) error {
	// Whole chunks of 32 cells' data, even when paced slowly. tor puts
	// what it reads from a stream into cells as it comes: each write
	// tends to cost one partly filled cell (measured: writes of 2 cells
	// travelled in 3, at 2/3 of the relay's capacity), and the echo
	// endpoint sends back what it got in the same pieces. Large writes
	// keep the cells full both ways, so that the relay's capacity is
	// spent on data the measurer can verify. A random start spreads the
	// connections' writes over the pacing interval.
	buf := make([]byte, chunk)
	if d, ok := ctx.Deadline(); ok {
		s.SetWriteDeadline(d)
	}
	start := time.Now()
	if rate > 0 {
		start = start.Add(time.Duration(mrand.Float64() * float64(chunk) / rate * float64(time.Second)))
	}
	var sent float64
	for ctx.Err() == nil {
		if rate > 0 {
			due := start.Add(time.Duration(sent / rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				select {
				case <-time.After(d):
				case <-ctx.Done():
					return nil
				}
			}
		}
		snd.Next(buf)
		if _, err := s.Write(buf); err != nil {
			return err
		}
		sent += float64(len(buf))
	}
	return nil
}

func receive(ctx context.Context, s net.Conn, rcv *echo.Receiver, verified, connVerified *atomic.Uint64) error {
	buf := make([]byte, 64<<10)
	// The measurement's own end (ctx) closes s; no idle deadline within.
	if d, ok := ctx.Deadline(); ok {
		s.SetReadDeadline(d)
	}
	for {
		n, err := s.Read(buf)
		if n > 0 {
			v, verr := rcv.Verify(buf[:n])
			if verr != nil {
				return verr
			}
			verified.Add(uint64(v))
			connVerified.Add(uint64(v))
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
