package budget

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestAcquireRelease(t *testing.T) {
	b := New(100)
	ctx := context.Background()
	if err := b.Acquire(ctx, 60); err != nil {
		t.Fatal(err)
	}
	if b.TryAcquire(50) {
		t.Fatal("TryAcquire went over the limit")
	}
	if err := b.Acquire(ctx, 101); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("a request larger than the budget: %v", err)
	}
	// Waiters are served in order: one that would fit now still waits
	// behind one that does not.
	granted := make(chan int64, 2)
	for _, n := range []int64{50, 10} {
		go func() {
			if err := b.Acquire(ctx, n); err != nil {
				t.Error(err)
			}
			granted <- n
		}()
		time.Sleep(20 * time.Millisecond) // queue them in this order
	}
	select {
	case n := <-granted:
		t.Fatalf("%d bytes granted ahead of an earlier waiter", n)
	case <-time.After(20 * time.Millisecond):
	}
	b.Release(60)
	<-granted
	<-granted
	if b.Used() != 60 || b.Peak() != 60 {
		t.Fatalf("used %d peak %d", b.Used(), b.Peak())
	}
}

// TestZeroWaitsForNobody: a request for nothing never queues behind
// others waiting for bytes.
func TestZeroWaitsForNobody(t *testing.T) {
	b := New(10)
	b.Acquire(context.Background(), 10)
	go b.Acquire(context.Background(), 5) // waits
	time.Sleep(10 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := b.Acquire(ctx, 0); err != nil {
		t.Fatalf("acquiring nothing waited: %v", err)
	}
}

func TestAcquireTimeout(t *testing.T) {
	b := New(10)
	b.Acquire(context.Background(), 10)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := b.Acquire(ctx, 5); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want a timeout, got %v", err)
	}
	// The abandoned wait holds nothing and blocks nobody.
	b.Release(10)
	if !b.TryAcquire(10) {
		t.Fatal("bytes leaked by a timed-out waiter")
	}
}

func TestConcurrent(t *testing.T) {
	b := New(1000)
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 200; j++ {
				n := int64(1 + (i*7+j)%300)
				if err := b.Acquire(context.Background(), n); err != nil {
					t.Error(err)
					return
				}
				if u := b.Used(); u > 1000 {
					t.Errorf("used %d > limit", u)
				}
				b.Release(n)
			}
		}()
	}
	wg.Wait()
	if b.Used() != 0 || b.Peak() > 1000 {
		t.Fatalf("used %d peak %d", b.Used(), b.Peak())
	}
}

func TestGrow(t *testing.T) {
	b := New(10)
	if err := b.Acquire(context.Background(), 11); err == nil {
		t.Fatal("11 bytes of a 10-byte budget granted")
	}
	if !b.TryAcquire(8) {
		t.Fatal("8 of 10 refused")
	}
	done := make(chan error, 1)
	go func() { done <- b.Acquire(context.Background(), 6) }()
	time.Sleep(20 * time.Millisecond)
	b.Grow(5) // smaller: nothing changes
	if b.Limit() != 10 {
		t.Fatalf("limit %d after Grow(5), want 10", b.Limit())
	}
	select {
	case <-done:
		t.Fatal("granted before the budget grew")
	default:
	}
	b.Grow(14)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the waiter was not granted when the budget grew")
	}
	if b.Used() != 14 || b.Limit() != 14 {
		t.Fatalf("used %d of %d, want 14 of 14", b.Used(), b.Limit())
	}
}
