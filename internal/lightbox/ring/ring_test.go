package ring

import (
	"testing"
	"time"
)

func TestOrderAndClose(t *testing.T) {
	for _, batch := range []int{1, 7, 64} {
		r := New[int](256, batch)
		const n = 100000
		go func() {
			for i := 0; i < n; i++ {
				r.Push(i)
				if i%1000 == 0 {
					r.Flush()
				}
			}
			r.Close()
		}()
		for i := 0; i < n; i++ {
			v, ok := r.Pop()
			if !ok || v != i {
				t.Fatalf("batch %d: pop %d = %d, %v", batch, i, v, ok)
			}
		}
		if _, ok := r.Pop(); ok {
			t.Fatal("pop after close returned a value")
		}
	}
}

// TestLightTraffic checks that a single value pushed and flushed arrives
// even though the batch is not full.
func TestLightTraffic(t *testing.T) {
	r := New[string](256, 64)
	got := make(chan string)
	go func() { v, _ := r.Pop(); got <- v }()
	r.Push("lonely")
	r.Flush()
	select {
	case v := <-got:
		if v != "lonely" {
			t.Fatal(v)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("a flushed value did not arrive")
	}
}

func TestSizes(t *testing.T) {
	r := New[int](100, 1000)
	if len(r.buf) != 128 || r.batch != 32 {
		t.Fatalf("capacity %d, batch %d", len(r.buf), r.batch)
	}
}

func BenchmarkRing(b *testing.B) {
	for _, batch := range []int{1, 64} {
		b.Run(map[int]string{1: "publish-every-op", 64: "publish-every-64"}[batch], func(b *testing.B) {
			r := New[int](256, batch)
			go func() {
				for i := 0; i < b.N; i++ {
					r.Push(i)
				}
				r.Close()
			}()
			for {
				if _, ok := r.Pop(); !ok {
					break
				}
			}
		})
	}
}
