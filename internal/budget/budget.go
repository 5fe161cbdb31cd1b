// Package budget is a counting semaphore over bytes: the memory a daemon
// lets its clients and functions make it hold at once (uploads being read,
// host-call results, output being relayed). Acquiring waits, first come
// first served, until the bytes are free or the caller gives up, so a
// flood of requests meets back-pressure (the daemon stops reading from
// their sockets) instead of growing the daemon's memory.
package budget

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// ErrTooLarge is a request for more than the whole budget.
var ErrTooLarge = errors.New("budget: request exceeds the whole budget")

// Budget is a number of bytes shared by many holders.
type Budget struct {
	mu      sync.Mutex
	limit   int64
	used    int64
	peak    int64
	waiters []*waiter // FIFO
}

type waiter struct {
	n     int64
	ready chan struct{}
}

// New returns a budget of limit bytes.
func New(limit int64) *Budget { return &Budget{limit: limit} }

// Limit returns the budget's size.
func (b *Budget) Limit() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.limit
}

// Grow raises the budget's size to limit (a smaller limit changes
// nothing: what waits for bytes never waits for more than the budget).
func (b *Budget) Grow(limit int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if limit > b.limit {
		b.limit = limit
		b.grantLocked()
	}
}

// Used returns the bytes held now.
func (b *Budget) Used() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// Peak returns the most bytes ever held at once.
func (b *Budget) Peak() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.peak
}

// TryAcquire takes n bytes if they are free now and nobody waits before.
func (b *Budget) TryAcquire(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.waiters) == 0 && b.used+n <= b.limit {
		b.take(n)
		return true
	}
	return false
}

func (b *Budget) take(n int64) {
	b.used += n
	b.peak = max(b.peak, b.used)
}

// Acquire takes n bytes, waiting for them in turn until ctx ends.
func (b *Budget) Acquire(ctx context.Context, n int64) error {
	if n < 0 {
		return fmt.Errorf("budget: negative request %d", n)
	}
	if n == 0 {
		return nil // nothing to wait for, behind anyone
	}
	b.mu.Lock()
	if n > b.limit {
		limit := b.limit
		b.mu.Unlock()
		return fmt.Errorf("%w (%d > %d bytes)", ErrTooLarge, n, limit)
	}
	if len(b.waiters) == 0 && b.used+n <= b.limit {
		b.take(n)
		b.mu.Unlock()
		return nil
	}
	w := &waiter{n: n, ready: make(chan struct{})}
	b.waiters = append(b.waiters, w)
	b.mu.Unlock()
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		b.mu.Lock()
		select {
		case <-w.ready:
			// Granted meanwhile: give it back.
			b.used -= n
			b.grantLocked()
		default:
			for i, x := range b.waiters {
				if x == w {
					b.waiters = append(b.waiters[:i], b.waiters[i+1:]...)
					break
				}
			}
			// The head may have been waiting behind us.
			b.grantLocked()
		}
		b.mu.Unlock()
		return ctx.Err()
	}
}

// Release gives back n bytes.
func (b *Budget) Release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	if b.used < 0 {
		b.mu.Unlock()
		panic("budget: released more than acquired")
	}
	b.grantLocked()
	b.mu.Unlock()
}

// grantLocked wakes waiters in order while their requests fit.
func (b *Budget) grantLocked() {
	for len(b.waiters) > 0 {
		w := b.waiters[0]
		if b.used+w.n > b.limit {
			return
		}
		b.take(w.n)
		b.waiters = b.waiters[1:]
		close(w.ready)
	}
}
