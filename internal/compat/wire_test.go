package compat

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"io"
	"testing"
)

// The frames of the original's protocol.py, byte for byte.
func TestFrameLayout(t *testing.T) {
	id := "0123456789abcdef0123456789abcdef0123"
	for _, tc := range []struct {
		got  []byte
		want string
	}{
		{AppendRequest(nil, TOpen, []byte(id)), "0200000024" + hex.EncodeToString([]byte(id))},
		{AppendResponse(nil, TStore, false, []byte("tok")), "000000000003" + hex.EncodeToString([]byte("tok"))},
		{AppendResponse(nil, TExecute, true, []byte("invalid token")), "01010000000d" + hex.EncodeToString([]byte("invalid token"))},
		{AppendMessage(nil, MOutput, id, []byte("hi")), "0600000026" + hex.EncodeToString([]byte(id+"hi"))},
		{AppendMessage(nil, MFunctionErr, "short", nil), "0400000024" + hex.EncodeToString([]byte("short"+pad[:31]))},
	} {
		if g := hex.EncodeToString(tc.got); g != tc.want {
			t.Errorf("got %s\nwant %s", g, tc.want)
		}
	}
}

type testBudget struct{ held, limit int64 }

func (b *testBudget) Acquire(_ context.Context, n int64) error {
	if b.held+n > b.limit {
		return errors.New("over")
	}
	b.held += n
	return nil
}
func (b *testBudget) Release(n int64) { b.held -= n }

func TestReaderBounds(t *testing.T) {
	limit := func(t uint8) int {
		switch t {
		case TStore:
			return 100 << 10
		case TOpen:
			return maxIDFrame
		}
		return 0
	}
	stream := AppendRequest(nil, TOpen, []byte("x"))
	stream = AppendRequest(stream, TStore, bytes.Repeat([]byte("a"), 50<<10))
	b := &testBudget{limit: 1 << 20}
	r := NewReader(bytes.NewReader(stream), false)
	r.Limit, r.Budget = limit, b
	f, err := r.Read()
	if err != nil || f.Type != TOpen || string(f.Payload) != "x" {
		t.Fatalf("%v %+v", err, f)
	}
	f, err = r.Read()
	if err != nil || len(f.Payload) != 50<<10 || b.held != 50<<10 {
		t.Fatalf("%v held %d", err, b.held)
	}
	f.Release()
	f.Release()
	if b.held != 0 {
		t.Fatalf("held %d after release", b.held)
	}
	if _, err := r.Read(); err != io.EOF {
		t.Fatalf("at the end: %v", err)
	}
	// Too long for its type: refused on the header, nothing allocated.
	r = NewReader(bytes.NewReader([]byte{TOpen, 0xff, 0xff, 0xff, 0xff}), false)
	r.Limit = limit
	var se *SizeError
	if _, err := r.Read(); !errors.As(err, &se) || se.Size != 0xffffffff {
		t.Fatalf("huge open: %v", err)
	}
	var te *TypeError
	r = NewReader(bytes.NewReader([]byte{9, 0, 0, 0, 1, 'x'}), false)
	r.Limit = limit
	if _, err := r.Read(); !errors.As(err, &te) || te.Type != 9 {
		t.Fatalf("unknown type: %v", err)
	}
	// Over the budget: refused, not read.
	r = NewReader(bytes.NewReader(AppendRequest(nil, TStore, bytes.Repeat([]byte("a"), 60<<10))), false)
	r.Limit, r.Budget = limit, &testBudget{limit: 10 << 10}
	if _, err := r.Read(); !errors.Is(err, ErrBusy) {
		t.Fatalf("over budget: %v", err)
	}
	// Cut short.
	r = NewReader(bytes.NewReader([]byte{TOpen, 0, 0, 0, 9, 'a'}), false)
	r.Limit = limit
	if _, err := r.Read(); err != io.ErrUnexpectedEOF {
		t.Fatalf("short: %v", err)
	}
	// A response header.
	r = NewReader(bytes.NewReader(AppendResponse(nil, TExecute, true, []byte("no"))), true)
	if f, err := r.Read(); err != nil || f.Type != TExecute || f.Err != 1 || string(f.Payload) != "no" {
		t.Fatalf("response: %v %+v", err, f)
	}
}

func TestDecodeRequests(t *testing.T) {
	s, err := DecodeStore([]byte(`{"name": "hello", "code": "def hello():\n    return 1\n"}`))
	if err != nil || s.Name != "hello" || s.Code != "def hello():\n    return 1\n" {
		t.Fatalf("%v %+v", err, s)
	}
	for _, bad := range []string{`{"name": "x"}`, `[]`, `{"name": 1, "code": "x"}`, `not json`, `{"name": "` + string(bytes.Repeat([]byte("n"), 300)) + `", "code": ""}`} {
		if _, err := DecodeStore([]byte(bad)); err == nil {
			t.Errorf("store %.40s: accepted", bad)
		}
	}
	e, err := DecodeExecute([]byte(`{"call": "hello()", "token": "t"}`))
	if err != nil || e.Call != "hello()" || e.Token != "t" {
		t.Fatalf("%v %+v", err, e)
	}
	if _, err := DecodeExecute([]byte(`{"call": "hello()"}`)); err == nil {
		t.Error("execute without a token: accepted")
	}
	if _, _, err := SplitMessage([]byte("short")); err == nil {
		t.Error("a message shorter than an id: accepted")
	}
}

// FuzzServerFrames: the listener's side. Whatever a client sends, the
// reader keeps to the bounds and the budget, and the decoders never fail
// but with an error.
func FuzzServerFrames(f *testing.F) {
	f.Add(AppendRequest(nil, TStore, []byte(`{"name": "a", "code": "b"}`)))
	f.Add(AppendRequest(nil, TExecute, []byte(`{"call": "a(1)", "token": "t"}`)))
	f.Add(AppendMessage(AppendRequest(nil, TOpen, []byte("0123456789abcdef0123456789abcdef0123")), MInput, "0123456789abcdef0123456789abcdef0123", []byte("hi")))
	f.Add([]byte{TStore, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		b := &testBudget{limit: 1 << 20}
		r := NewReader(bytes.NewReader(data), false)
		r.Budget = b
		r.Limit = func(t uint8) int {
			switch t {
			case TStore, TExecute:
				return 64 << 10
			case TOpen, TClose:
				return maxIDFrame
			case MInput:
				return IDLen + MaxInput
			}
			return 0
		}
		for i := 0; i < 64; i++ {
			fr, err := r.Read()
			if err != nil {
				break
			}
			if len(fr.Payload) > r.Limit(fr.Type) {
				t.Fatalf("frame of %d bytes beyond its limit", len(fr.Payload))
			}
			switch fr.Type {
			case TStore:
				_, _ = DecodeStore(fr.Payload)
			case TExecute:
				if e, err := DecodeExecute(fr.Payload); err == nil {
					_, _, _ = ParseCall(e.Call)
				}
			case MInput:
				_, _, _ = SplitMessage(fr.Payload)
			}
			fr.Release()
		}
		if b.held != 0 {
			t.Fatalf("budget holds %d after every frame was released", b.held)
		}
	})
}

// FuzzClientFrames: the client's side, reading responses and messages
// from a hostile server.
func FuzzClientFrames(f *testing.F) {
	f.Add(AppendResponse(nil, TStore, false, []byte("tok")), false)
	f.Add(AppendMessage(nil, MOutput, "0123456789abcdef0123456789abcdef0123", []byte("out")), true)
	f.Add([]byte{MOutput, 0xff, 0xff, 0xff, 0xff}, true)
	f.Fuzz(func(t *testing.T, data []byte, message bool) {
		r := NewReader(bytes.NewReader(data), !message)
		r.Limit = func(uint8) int { return 1 << 20 }
		for i := 0; i < 64; i++ {
			fr, err := r.Read()
			if err != nil {
				return
			}
			if len(fr.Payload) > 1<<20 {
				t.Fatal("beyond the limit")
			}
			if message {
				_, _, _ = SplitMessage(fr.Payload)
			}
		}
	})
}

// stallReader serves b, then reports what the budget holds when asked
// for more, and fails.
type stallReader struct {
	b      []byte
	budget *testBudget
	held   int64
}

func (s *stallReader) Read(p []byte) (int, error) {
	if len(s.b) == 0 {
		s.held = s.budget.held
		return 0, io.ErrUnexpectedEOF
	}
	n := copy(p, s.b)
	s.b = s.b[n:]
	return n, nil
}

// TestReaderChargesAsBytesArrive: a frame's header announcing the most
// its type may hold, then nothing, holds at most one step of the budget
// (readChunk), not what it announced; everything is given back when it
// fails.
func TestReaderChargesAsBytesArrive(t *testing.T) {
	b := &testBudget{limit: 64 << 20}
	hdr := []byte{TStore, 0, 0x80, 0, 0} // 8 MB announced
	src := &stallReader{b: append(hdr, "{\"name\""...), budget: b}
	r := NewReader(src, false)
	r.Limit = func(uint8) int { return 16 << 20 }
	r.Budget = b
	if _, err := r.Read(); err != io.ErrUnexpectedEOF {
		t.Fatalf("a frame cut short: %v", err)
	}
	if src.held > 64<<10 {
		t.Fatalf("%d bytes of the budget held for a frame of 7 bytes so far (8 MB announced): at most %d", src.held, 64<<10)
	}
	if b.held != 0 {
		t.Fatalf("%d bytes held after the frame failed", b.held)
	}
	// Whole, a large frame is charged its size while held.
	payload := bytes.Repeat([]byte("a"), 300<<10)
	r = NewReader(bytes.NewReader(AppendRequest(nil, TStore, payload)), false)
	r.Limit, r.Budget = func(uint8) int { return 16 << 20 }, b
	f, err := r.Read()
	if err != nil || !bytes.Equal(f.Payload, payload) || b.held != int64(len(payload)) {
		t.Fatalf("%v: held %d for %d bytes", err, b.held, len(payload))
	}
	f.Release()
	if b.held != 0 {
		t.Fatalf("%d held after release", b.held)
	}
}
