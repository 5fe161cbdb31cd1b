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

// callsPerCore is how many host calls a second bentod carries out for an
// instance per core of its CPU quota (at least minCalls): each costs
// bentod some 80 µs of its own CPU (a frame decoded, checked, answered),
// so a function that does nothing but call (a python function's
// api.poll() or print() in a loop) would otherwise make bentod spend
// more CPU than its own quota; this way at most a sixth of it.
const (
	callsPerCore = 2000
	minCalls     = 1000
)

// rateLimiter is a token bucket of bytes (or calls).
type rateLimiter struct {
	mu     sync.Mutex
	rate   float64 // bytes per second
	burst  float64
	tokens float64
	last   time.Time
}

func newRateLimiter(rate float64) *rateLimiter {
	return &rateLimiter{rate: rate, burst: ioBurst, tokens: ioBurst, last: time.Now()}
}

// newCallLimiter bounds an instance's host calls: callsPerCore a second
// per core of cpu, at least minCalls, a second's worth ahead.
func newCallLimiter(cpu float64) *rateLimiter {
	rate := max(minCalls, cpu*callsPerCore)
	return &rateLimiter{rate: rate, burst: rate, tokens: rate, last: time.Now()}
}

// wait takes n bytes, sleeping until the bucket holds them or ctx ends.
func (r *rateLimiter) wait(ctx context.Context, n int) error {
	if !r.waitOr(ctx.Done(), n) {
		return ctx.Err()
	}
	return nil
}

// waitOr takes n, sleeping until the bucket holds them; false if stop is
// closed first.
func (r *rateLimiter) waitOr(stop <-chan struct{}, n int) bool {
	r.mu.Lock()
	now := time.Now()
	r.tokens = min(r.burst, r.tokens+now.Sub(r.last).Seconds()*r.rate)
	r.last = now
	r.tokens -= float64(n)
	var d time.Duration
	if r.tokens < 0 {
		d = time.Duration(-r.tokens / r.rate * float64(time.Second))
	}
	r.mu.Unlock()
	if d == 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-stop:
		return false
	}
}
