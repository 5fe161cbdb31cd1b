package server

import (
	"context"
	"sync"
	"time"
)

// ioPerCore is how many bytes a second of host-call data (fetch bodies,
// remote.* output, stream reads) bentod moves for an instance per core of
// its CPU quota: the work bentod does on a function's behalf is bounded
// like the function's own, so a function cannot make bentod busy for its
// neighbours by pulling data as fast as a loopback peer sends it.
const ioPerCore = 32 << 20

// ioBurst is how far ahead of the rate an instance may go.
const ioBurst = 1 << 20

// rateLimiter is a token bucket of bytes.
type rateLimiter struct {
	mu     sync.Mutex
	rate   float64 // bytes per second
	tokens float64
	last   time.Time
}

func newRateLimiter(rate float64) *rateLimiter {
	return &rateLimiter{rate: rate, tokens: ioBurst, last: time.Now()}
}

// wait takes n bytes, sleeping until the bucket holds them or ctx ends.
func (r *rateLimiter) wait(ctx context.Context, n int) error {
	r.mu.Lock()
	now := time.Now()
	r.tokens = min(ioBurst, r.tokens+now.Sub(r.last).Seconds()*r.rate)
	r.last = now
	r.tokens -= float64(n)
	var d time.Duration
	if r.tokens < 0 {
		d = time.Duration(-r.tokens / r.rate * float64(time.Second))
	}
	r.mu.Unlock()
	if d == 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
