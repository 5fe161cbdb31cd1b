// Package ring is a lock-free single-producer/single-consumer ring in the
// style of MCRingBuffer: producer and consumer each keep private copies of
// the indices and publish their own only every Batch operations (or on
// Flush), so the shared cache lines move rarely. It joins the network side
// of a middlebox to its processing side.
package ring

import (
	"runtime"
	"sync/atomic"
	"time"
)

type pad [64]byte

// Ring passes values of type T from one goroutine to one other.
type Ring[T any] struct {
	_     pad
	read  atomic.Uint64 // published by the consumer
	_     pad
	write atomic.Uint64 // published by the producer
	_     pad
	// producer-private
	pWrite, pReadCache, pSince uint64
	_                          pad
	// consumer-private
	cRead, cWriteCache, cSince uint64
	_                          pad
	buf                        []T
	mask, batch                uint64
	closed                     atomic.Bool
}

// New returns a ring of capacity size (rounded up to a power of two) that
// publishes its indices every batch operations (at least 1, at most a
// quarter of the capacity).
func New[T any](size, batch int) *Ring[T] {
	n := 1
	for n < size {
		n <<= 1
	}
	batch = max(1, min(batch, n/4))
	return &Ring[T]{buf: make([]T, n), mask: uint64(n - 1), batch: uint64(batch)}
}

// Push adds v, waiting while the ring is full. Producer only.
func (r *Ring[T]) Push(v T) {
	for spins := 0; r.pWrite-r.pReadCache > r.mask; spins++ {
		r.pReadCache = r.read.Load()
		if r.pWrite-r.pReadCache > r.mask {
			r.publishWrite()
			backoff(spins)
		}
	}
	r.buf[r.pWrite&r.mask] = v
	r.pWrite++
	if r.pSince++; r.pSince >= r.batch {
		r.publishWrite()
	}
}

// Flush publishes what was pushed so far, for light traffic. Producer only.
func (r *Ring[T]) Flush() { r.publishWrite() }

// Close flushes and marks the end of the stream. Producer only.
func (r *Ring[T]) Close() {
	r.publishWrite()
	r.closed.Store(true)
}

func (r *Ring[T]) publishWrite() {
	r.write.Store(r.pWrite)
	r.pSince = 0
}

// Pop returns the next value, waiting for one; ok is false once the
// producer has closed the ring and it is empty. Consumer only.
func (r *Ring[T]) Pop() (v T, ok bool) {
	for spins := 0; r.cRead == r.cWriteCache; spins++ {
		r.cWriteCache = r.write.Load()
		if r.cRead != r.cWriteCache {
			break
		}
		r.publishRead()
		if r.closed.Load() {
			if r.cWriteCache = r.write.Load(); r.cRead == r.cWriteCache {
				return v, false
			}
			break
		}
		backoff(spins)
	}
	var zero T
	i := r.cRead & r.mask
	v, r.buf[i] = r.buf[i], zero
	r.cRead++
	if r.cSince++; r.cSince >= r.batch {
		r.publishRead()
	}
	return v, true
}

func (r *Ring[T]) publishRead() {
	r.read.Store(r.cRead)
	r.cSince = 0
}

// backoff yields for a while, then sleeps, so that a busy ring never
// sleeps and an idle side does not burn a core.
func backoff(spins int) {
	if spins < 256 {
		runtime.Gosched()
		return
	}
	time.Sleep(20 * time.Microsecond)
}
