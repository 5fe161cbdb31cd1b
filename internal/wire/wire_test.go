package wire

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/torbento/bento/internal/budget"
)

func TestRoundTrip(t *testing.T) {
	a, b := net.Pipe()
	ca, cb := NewConn(a), NewConn(b)
	go func() {
		ca.Send(7, map[string]int{"x": 1}, []byte("body"))
		ca.Send(8, nil, nil)
		ca.Close()
	}()
	f, err := cb.Read()
	if err != nil || f.Type != 7 || string(f.Header) != `{"x":1}` || string(f.Body) != "body" {
		t.Fatalf("got %+v, %v", f, err)
	}
	f, err = cb.Read()
	if err != nil || f.Type != 8 || f.Header != nil || f.Body != nil {
		t.Fatalf("got %+v, %v", f, err)
	}
	if _, err := cb.Read(); err != io.EOF {
		t.Fatalf("want EOF, got %v", err)
	}
}

func TestLimits(t *testing.T) {
	f := &Frame{Type: 1, Body: make([]byte, 100)}
	enc := f.Encode(nil)
	if _, _, err := Decode(enc, 50); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized frame: %v", err)
	}
	c := NewConn(bytes.NewBuffer(enc))
	c.MaxFrame = 50
	if _, err := c.Read(); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized frame on conn: %v", err)
	}
	for _, bad := range [][]byte{
		{0, 0, 0, 2, 1, 0},               // shorter than a frame header
		{0, 0, 0, 5, 1, 0, 0, 0, 9},      // header longer than frame
		{0, 0, 0, 9, 1, 0, 0, 0, 1, 'x'}, // truncated
	} {
		if _, _, err := Decode(bad, 1<<20); err == nil {
			t.Errorf("Decode(%v) accepted a malformed frame", bad)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add((&Frame{Type: 3, Header: []byte(`{"a":1}`), Body: []byte("zz")}).Encode(nil))
	f.Add([]byte{0, 0, 0, 5, 1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, n, err := Decode(b, 1<<16)
		if err != nil {
			return
		}
		again := fr.Encode(nil)
		if !bytes.Equal(again, b[:n]) {
			t.Fatalf("re-encoding differs: %x vs %x", again, b[:n])
		}
		c := NewConn(bytes.NewBuffer(b))
		if _, err := c.Read(); err != nil {
			t.Fatalf("Conn.Read failed where Decode succeeded: %v", err)
		}
	})
}

// TestBufferGrowsAsBytesArrive: a frame announced large costs only what
// has arrived of it (in steps of at most twice that, from 64 KB), charged
// to the budget as it grows; a peer that announces 16 MB and sends 4 KB
// holds 64 KB.
func TestBufferGrowsAsBytesArrive(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	bud := budget.New(64 << 20)
	c := NewConn(b)
	c.Budget = bud
	c.MaxFrame = 32 << 20
	done := make(chan error, 1)
	go func() { _, err := c.Read(); done <- err }()
	var hdr [5]byte
	binary.BigEndian.PutUint32(hdr[:], 16<<20)
	hdr[4] = 9
	a.Write(hdr[:])
	a.Write([]byte{0, 0, 0, 0}) // an empty JSON header
	sent := 4
	held := func() int64 {
		// The reader charges before it reads: give it a moment.
		time.Sleep(50 * time.Millisecond)
		return bud.Used()
	}
	for _, n := range []int{4 << 10, 60 << 10, 200 << 10, 1 << 20} {
		a.Write(make([]byte, n))
		sent += n
		if h := held(); h > int64(max(2*sent, 64<<10)) {
			t.Fatalf("%d bytes of a 16 MB frame arrived; %d held", sent, h)
		}
	}
	a.Close()
	if err := <-done; err == nil {
		t.Fatal("a truncated frame was read")
	}
	if bud.Used() != 0 {
		t.Fatalf("%d bytes still charged after the connection failed", bud.Used())
	}
}

// TestBudgetWaitEndsAtDeadline: a frame waiting for a spent budget gives up
// at the connection's deadline, not at BudgetWait: a request that must
// arrive within a time cannot outlive it waiting.
func TestBudgetWaitEndsAtDeadline(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	bud := budget.New(64 << 10)
	bud.Acquire(context.Background(), 64<<10) // spent by others
	c := NewConn(b)
	c.Budget, c.BudgetWait, c.MaxFrame = bud, time.Minute, 1<<20
	c.Deadline = time.Now().Add(300 * time.Millisecond)
	done := make(chan error, 1)
	start := time.Now()
	go func() { _, err := c.Read(); done <- err }()
	var hdr [5]byte
	binary.BigEndian.PutUint32(hdr[:], 512<<10)
	hdr[4] = 9
	a.Write(hdr[:])
	select {
	case err := <-done:
		if !errors.Is(err, ErrBusy) {
			t.Fatalf("want ErrBusy, got %v", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("gave up after %v", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the wait for the budget outlived the connection's deadline")
	}
}
