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
	"net"
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

func serve(ctx context.Context, cfg Config, c *link.Conn) error {
	for {
		// The coordinator may stay quiet for hours between measurements.
		m, err := c.Recv(24 * time.Hour)
		if err != nil {
			return err
		}
		switch m := m.(type) {
		case *msg.Measure:
			if err := Measure(ctx, cfg, c, m); err != nil {
				cfg.Log.Warn("flashflow: measurement failed", "meas_id", m.MeasID, "err", err)
			}
		case *msg.Err:
			// An abort of a measurement that already ended: nothing to do.
		default:
			c.Send(&msg.Err{Header: msg.Header{MeasID: m.ID()}, Code: msg.ErrProtocol})
			return fmt.Errorf("unexpected %v", m.Command())
		}
	}
}

// chunk is the size of one write: whole cells' worth of data.
const chunk = 32 * echo.CellData

// Measure carries out one measurement: it opens the connections, says
// READY, waits for GO and reports each second.
func Measure(ctx context.Context, cfg Config, c *link.Conn, m *msg.Measure) error {
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
	// GO, or the coordinator's ERR for this measurement; anything of an
	// earlier measurement is stale.
	goBy := time.Now().Add(60 * time.Second)
	for {
		g, err := c.Recv(time.Until(goBy))
		if err != nil {
			return err
		}
		if g.ID() != m.MeasID {
			continue
		}
		switch g := g.(type) {
		case *msg.Go:
			return run(ctx, c, m, open)
		case *msg.Err:
			return g
		default:
			return fmt.Errorf("expected GO, got %v", g.Command())
		}
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
func run(ctx context.Context, c *link.Conn, m *msg.Measure, conns []net.Conn) error {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(m.Duration)*time.Second+10*time.Second)
	defer cancel()
	var key [echo.KeySize]byte
	rand.Read(key[:]) // the data's key: known to nobody else
	var verified atomic.Uint64
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
			errc <- receive(ctx, s, ck.Receiver(), &verified)
		}()
	}
	defer func() {
		cancel()
		for _, s := range conns {
			s.Close()
		}
		wg.Wait()
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
	// About ten writes a second when paced, so that a slow connection
	// is never silent for long; whole cells, at most chunk.
	size := chunk
	if rate > 0 {
		size = min(chunk, max(echo.CellData, int(rate/10)/echo.CellData*echo.CellData))
	}
	buf := make([]byte, size)
	if d, ok := ctx.Deadline(); ok {
		s.SetWriteDeadline(d)
	}
	start := time.Now()
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

func receive(ctx context.Context, s net.Conn, rcv *echo.Receiver, verified *atomic.Uint64) error {
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
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
