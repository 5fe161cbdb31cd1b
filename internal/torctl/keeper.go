package torctl

import (
	"context"
	"sync"
	"time"
)

// Keeper holds one authenticated control connection open for as long as
// Run runs, dialling again with backoff whenever tor goes away (a restart,
// a HUP that drops controllers, a crash) and running Setup on every new
// connection so that event subscriptions and onion services come back.
type Keeper struct {
	Network, Addr string
	Auth          Auth
	// Setup runs on each new authenticated connection before Conn hands
	// it out. An error closes the connection and retries later.
	Setup func(ctx context.Context, c *Conn) error
	// Logf reports connection changes (optional).
	Logf func(format string, args ...any)

	mu    sync.Mutex
	cur   *Conn
	ready chan struct{} // closed while cur is usable
}

func (k *Keeper) init() {
	k.mu.Lock()
	if k.ready == nil {
		k.ready = make(chan struct{})
	}
	k.mu.Unlock()
}

func (k *Keeper) logf(format string, args ...any) {
	if k.Logf != nil {
		k.Logf(format, args...)
	}
}

// Run keeps the connection until ctx ends.
func (k *Keeper) Run(ctx context.Context) {
	k.init()
	backoff := 100 * time.Millisecond
	failures := 0
	connected := false
	for ctx.Err() == nil {
		c, err := k.connect(ctx)
		if err != nil {
			failures++
			if failures == 1 || failures%50 == 0 {
				k.logf("tor control port %s unavailable: %v (retrying)", k.Addr, err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			if backoff < 5*time.Second {
				backoff *= 2
			}
			continue
		}
		if failures > 0 || connected {
			k.logf("tor control port %s connected again", k.Addr)
		} else {
			k.logf("connected to tor's control port %s", k.Addr)
		}
		connected = true
		failures, backoff = 0, 100*time.Millisecond
		k.mu.Lock()
		k.cur = c
		close(k.ready)
		k.mu.Unlock()
		select {
		case <-ctx.Done():
			c.Close()
		case <-c.Done():
			k.logf("tor control connection lost: %v", c.Err())
		}
		k.mu.Lock()
		k.cur = nil
		k.ready = make(chan struct{})
		k.mu.Unlock()
	}
}

func (k *Keeper) connect(ctx context.Context) (*Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := Dial(dctx, k.Network, k.Addr)
	if err != nil {
		return nil, err
	}
	if err := c.Authenticate(dctx, k.Auth); err != nil {
		c.Close()
		return nil, err
	}
	if k.Setup != nil {
		if err := k.Setup(dctx, c); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// Conn returns the current connection, waiting for one until ctx ends.
func (k *Keeper) Conn(ctx context.Context) (*Conn, error) {
	k.init()
	for {
		k.mu.Lock()
		c, ready := k.cur, k.ready
		k.mu.Unlock()
		if c != nil {
			select {
			case <-c.Done():
			default:
				return c, nil
			}
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
