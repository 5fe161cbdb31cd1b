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
	// A waiter is granted when bytes come back, in order.
	order := make(chan int, 2)
	var wg sync.WaitGroup
	for i, n := range []int64{50, 30} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := b.Acquire(ctx, n); err != nil {
				t.Error(err)
			}
			order <- i
		}()
		time.Sleep(20 * time.Millisecond) // queue them in this order
	}
	b.Release(60)
	wg.Wait()
	if first := <-order; first != 0 {
		t.Fatalf("waiters granted out of order")
	}
	if b.Used() != 80 || b.Peak() != 80 {
		t.Fatalf("used %d peak %d", b.Used(), b.Peak())
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
