package measurer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/torbento/bento/internal/socks"
	"github.com/torbento/bento/internal/torctl"
)

// Tor is the measurer's own tor client: a control connection (with
// __LeaveStreamsUnattached set, so that the measurer puts each stream on
// the circuit it chose) and its SocksPort.
type Tor struct {
	ctl   *torctl.Conn
	socks string

	mu    sync.Mutex
	circ  map[string]chan string // circuit id → its status events
	early map[string]string      // the last status of circuits not yet registered
	// owners: the SOCKS connections being opened, by their local
	// address (tor's SOURCE_ADDR), each to the channel of the Streams
	// call that opened it.
	owners map[string]chan string
}

// NewTor takes over an authenticated control connection to the
// measurer's tor and its SocksPort address. The tor must be the
// measurer's own: it stops attaching streams by itself.
func NewTor(ctx context.Context, ctl *torctl.Conn, socksAddr string) (*Tor, error) {
	t := &Tor{ctl: ctl, socks: socksAddr, circ: map[string]chan string{}, early: map[string]string{}, owners: map[string]chan string{}}
	ctl.OnEvent(t.event)
	for _, c := range []torctl.Command{
		torctl.MustCommand("SETCONF", "__LeaveStreamsUnattached=1"),
		torctl.MustCommand("SETEVENTS", "CIRC", "STREAM"),
	} {
		if _, err := ctl.Do(ctx, c); err != nil {
			return nil, fmt.Errorf("flashflow: measurer's tor: %w", err)
		}
	}
	return t, nil
}

// Close hands stream attachment back to tor.
func (t *Tor) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5e9)
	defer cancel()
	t.ctl.Do(ctx, torctl.MustCommand("SETEVENTS"))
	_, err := t.ctl.Do(ctx, torctl.MustCommand("SETCONF", "__LeaveStreamsUnattached=0"))
	return err
}

func (t *Tor) event(r *torctl.Reply) {
	if len(r.Lines) == 0 {
		return
	}
	f := strings.Fields(r.Lines[0].Text)
	if len(f) < 3 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	switch f[0] {
	case "CIRC":
		if ch := t.circ[f[1]]; ch != nil {
			select {
			case ch <- f[2]:
			default:
			}
		} else {
			// tor may report a circuit before EXTENDCIRCUIT's reply has
			// been handed to the goroutine that asked for it.
			if len(t.early) >= 4096 {
				clear(t.early)
			}
			t.early[f[1]] = f[2]
		}
	case "STREAM":
		// STREAM <id> NEW 0 <target> ... SOURCE_ADDR=<our local address> ...
		if f[2] != "NEW" || len(f) < 5 {
			return
		}
		for _, kv := range f[5:] {
			if src, ok := strings.CutPrefix(kv, "SOURCE_ADDR="); ok {
				if ch := t.owners[src]; ch != nil {
					select {
					case ch <- f[1]:
					default:
					}
				}
			}
		}
	}
}

// buildCircuit builds a circuit through path and waits until it is built.
func (t *Tor) buildCircuit(ctx context.Context, path []string) (string, error) {
	r, err := t.ctl.Do(ctx, torctl.MustCommand("EXTENDCIRCUIT", "0", strings.Join(path, ",")))
	if err != nil {
		return "", err
	}
	f := strings.Fields(r.Lines[0].Text)
	if len(f) != 2 || f[0] != "EXTENDED" {
		return "", fmt.Errorf("flashflow: unexpected EXTENDCIRCUIT reply %q", r.Lines[0].Text)
	}
	id := f[1]
	ch := make(chan string, 16)
	t.mu.Lock()
	t.circ[id] = ch
	if st, ok := t.early[id]; ok {
		delete(t.early, id)
		ch <- st
	}
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		delete(t.circ, id)
		t.mu.Unlock()
	}()
	for {
		select {
		case s := <-ch:
			switch s {
			case "BUILT":
				return id, nil
			case "FAILED", "CLOSED":
				return "", fmt.Errorf("flashflow: circuit %s through %s %s", id, strings.Join(path, ","), strings.ToLower(s))
			}
		case <-ctx.Done():
			t.closeCircuit(id)
			return "", ctx.Err()
		}
	}
}

func (t *Tor) closeCircuit(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5e9)
	defer cancel()
	t.ctl.Do(ctx, torctl.MustCommand("CLOSECIRCUIT", id))
}

// Streams opens n streams to 127.0.0.1:port, each on a two-hop circuit
// of its own whose first hop is one of via (in turn) and whose last is
// the target, which exits to its own loopback. It returns the streams it
// could open (perhaps fewer than n) and their circuits, to be closed
// with CloseCircuits.
func (t *Tor) Streams(ctx context.Context, via []string, target string, port uint16, n int) ([]net.Conn, []string, error) {
	if len(via) == 0 {
		return nil, nil, errors.New("flashflow: no first-hop relay configured (measurer -via)")
	}
	dest := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	// Circuits, in parallel.
	circs := make(chan string, n+1)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var built []string
	var firstErr error
	// note keeps the first error and says whether there was one.
	note := func(err error) bool {
		if err == nil {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		if firstErr == nil {
			firstErr = err
		}
		return true
	}
	// Circuits that take longer than BuildTimeout are given up: the
	// measurement goes on with the others (prop 316 fails it only below
	// half).
	bctx, cancelBuild := context.WithTimeout(ctx, BuildTimeout)
	defer cancelBuild()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			id, err := t.buildCircuit(bctx, []string{"$" + strings.TrimPrefix(via[i%len(via)], "$"), "$" + strings.TrimPrefix(target, "$")})
			if note(err) {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			built = append(built, id)
			circs <- id
		}(i)
	}
	wg.Wait()
	if len(built) == 0 {
		return nil, nil, fmt.Errorf("flashflow: no circuit to the target: %w", firstErr)
	}
	// Each new stream of ours goes on the next built circuit (circs has
	// room for every circuit, so putting one back never blocks). Streams
	// are ours by the local address of the SOCKS connection that opened
	// them, so that several measurements open theirs at once.
	attachCtx, stopAttach := context.WithCancel(ctx)
	defer stopAttach()
	mine := make(chan string, len(built))
	var owned []string
	defer func() {
		t.mu.Lock()
		for _, a := range owned {
			delete(t.owners, a)
		}
		t.mu.Unlock()
	}()
	go func() {
		for {
			select {
			case sid := <-mine:
				var cid string
				select {
				case cid = <-circs:
				default:
					t.ctl.Do(attachCtx, torctl.MustCommand("CLOSESTREAM", sid, "1"))
					continue
				}
				if _, err := t.ctl.Do(attachCtx, torctl.MustCommand("ATTACHSTREAM", sid, cid)); err != nil {
					t.ctl.Do(attachCtx, torctl.MustCommand("CLOSESTREAM", sid, "1"))
					circs <- cid // still unused: the next stream may have it
				}
			case <-attachCtx.Done():
				return
			}
		}
	}()
	d := &socks.Dialer{Proxy: t.socks, Forward: func(ctx context.Context, network, addr string) (net.Conn, error) {
		if network != "tcp" {
			return nil, errors.New("flashflow: the measurer needs its tor's SocksPort on TCP (its streams are told apart by their source address)")
		}
		var nd net.Dialer
		c, err := nd.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		// Known before the SOCKS request, so before tor's STREAM NEW.
		a := c.LocalAddr().String()
		t.mu.Lock()
		t.owners[a] = mine
		owned = append(owned, a)
		t.mu.Unlock()
		return c, nil
	}}
	conns := make([]net.Conn, 0, len(built))
	for range built {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dctx, cancel := context.WithTimeout(ctx, DialTimeout)
			defer cancel()
			c, err := d.DialContext(dctx, "tcp", dest)
			if note(err) {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			conns = append(conns, c)
		}()
	}
	wg.Wait()
	if len(conns) == 0 {
		t.CloseCircuits(built)
		return nil, nil, fmt.Errorf("flashflow: no stream to the target's echo port: %w", firstErr)
	}
	return conns, built, nil
}

// Deadlines of Streams: building a circuit, and opening a stream on one.
const (
	BuildTimeout = 20 * time.Second
	DialTimeout  = 15 * time.Second
)

// CloseCircuits closes circuits Streams built.
func (t *Tor) CloseCircuits(ids []string) {
	for _, id := range ids {
		t.closeCircuit(id)
	}
}
