package wire

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
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
