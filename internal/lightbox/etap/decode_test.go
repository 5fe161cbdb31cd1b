package etap

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func FuzzParseEntry(f *testing.F) {
	f.Add(appendEntry(nil, Packet{Time: time.Unix(1, 2), OrigLen: 70, Data: []byte("frame")}))
	f.Add([]byte{0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, n, err := parseEntry(b)
		if err != nil || n == 0 {
			return
		}
		if !bytes.Equal(appendEntry(nil, p), b[:n]) {
			t.Fatalf("entry does not round-trip")
		}
	})
}

func FuzzDecodeHello(f *testing.F) {
	h := &hello{role: Gateway, size: 16384, rekey: 99}
	f.Add(h.encode())
	f.Add([]byte("ETAP2\x00short"))
	f.Add([]byte("ETAP1\x00" + strings.Repeat("x", 79)))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeHello(b)
		if err != nil {
			return
		}
		if !bytes.Equal(h.encode(), b) {
			t.Fatal("hello does not round-trip")
		}
	})
}

// TestRekeyRatchet checks that keys change at each epoch and that a record
// sealed in one epoch does not open in another.
func TestRekeyRatchet(t *testing.T) {
	base := bytes.Repeat([]byte{7}, 32)
	s, r := newKeys(1, append([]byte(nil), base...), 4), newKeys(1, append([]byte(nil), base...), 4)
	plain := make([]byte, 64)
	var prev []byte
	for seq := uint64(0); seq < 12; seq++ {
		rec, err := s.seal(nil, plain, seq)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.open(nil, rec, seq); err != nil {
			t.Fatalf("seq %d: %v", seq, err)
		}
		if bytes.Equal(rec, prev) {
			t.Fatalf("seq %d: same ciphertext as the record before", seq)
		}
		prev = rec
	}
	if s.epoch != 2 || bytes.Equal(s.base, base) {
		t.Fatalf("after 12 records of 4 per epoch: epoch %d", s.epoch)
	}
	// A record from epoch 2 presented as epoch 1 fails; epoch 1's keys are gone.
	rec, _ := s.seal(nil, plain, 9)
	if _, err := r.open(nil, rec, 5); err == nil {
		t.Fatal("a record opened under an old epoch")
	}
}
