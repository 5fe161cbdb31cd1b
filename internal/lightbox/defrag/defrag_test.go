package defrag

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
)

var (
	t0  = time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	key = Key{Src: netip.MustParseAddr("192.0.2.1"), Dst: netip.MustParseAddr("198.51.100.2"), ID: 7, Proto: 6}
)

// frag is a fragment of key at off (bytes) with data.
func frag(off int, more bool, data string) Fragment {
	return Fragment{Key: key, Offset: off, More: more, Data: []byte(data)}
}

func TestReassemble(t *testing.T) {
	a, b, c := "AAAAAAAA", "BBBBBBBB", "CCC"
	for _, tc := range []struct {
		name      string
		policy    Policy
		ipv6      bool
		frags     []Fragment
		want      string // the datagram, "" when none completes
		overlaps  uint64
		conflicts uint64
		invalid   uint64
	}{
		{name: "in order", frags: []Fragment{frag(0, true, a), frag(8, true, b), frag(16, false, c)}, want: a + b + c},
		{name: "reversed", frags: []Fragment{frag(16, false, c), frag(8, true, b), frag(0, true, a)}, want: a + b + c},
		{name: "last first then a hole", frags: []Fragment{frag(16, false, c), frag(0, true, a)}},
		{name: "one fragment, unfragmented in effect", frags: []Fragment{frag(0, false, a)}, want: a},
		{name: "duplicate", frags: []Fragment{frag(0, true, a), frag(0, true, a), frag(8, false, c)}, want: a + c, overlaps: 1},
		{name: "overlap, first wins", policy: First,
			frags: []Fragment{frag(0, true, a+b), frag(8, true, "XXXXXXXX"), frag(16, false, c)}, want: a + b + c, overlaps: 1, conflicts: 1},
		{name: "overlap, last wins", policy: Last,
			frags: []Fragment{frag(0, true, a+b), frag(8, true, "XXXXXXXX"), frag(16, false, c)}, want: a + "XXXXXXXX" + c, overlaps: 1, conflicts: 1},
		{name: "partial overlap, first wins, the new bytes fill the gap", policy: First,
			frags: []Fragment{frag(0, true, a), frag(16, false, c), frag(0, true, "xxxxxxxxyyyyyyyy")}, want: a + "yyyyyyyy" + c, overlaps: 1, conflicts: 1},
		{name: "a piece inside a larger one, last wins, the old one split", policy: Last,
			frags: []Fragment{frag(0, true, a+b+a), frag(8, true, "XXXXXXXX"), frag(24, false, c)}, want: a + "XXXXXXXX" + a + c, overlaps: 1, conflicts: 1},
		{name: "ipv6 overlap discards the datagram", ipv6: true,
			frags: []Fragment{frag(0, true, a+b), frag(8, true, b), frag(16, false, c)}, overlaps: 1},
		{name: "ipv6 without overlap", ipv6: true, frags: []Fragment{frag(8, false, c), frag(0, true, a)}, want: a + c},
		{name: "past 65535", frags: []Fragment{frag(65528, false, a)}, invalid: 1},
		{name: "non-final not a multiple of 8", frags: []Fragment{frag(0, true, c), frag(8, false, c)}, invalid: 1},
		{name: "two different ends", frags: []Fragment{frag(8, false, a), frag(16, false, a), frag(0, true, a)}, invalid: 1},
		{name: "a piece past the end", frags: []Fragment{frag(8, false, c), frag(16, true, a), frag(0, true, a)}, invalid: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := New(Config{Policy: tc.policy})
			var got []byte
			for i := range tc.frags {
				f := tc.frags[i]
				f.IPv6 = tc.ipv6
				if out, data, _ := r.Add(&f, t0); out == Complete {
					got = append([]byte(nil), data...)
				}
			}
			if string(got) != tc.want {
				t.Errorf("datagram %q, want %q", got, tc.want)
			}
			st := r.Stats
			if st.Overlaps != tc.overlaps || st.Conflicts != tc.conflicts || st.Invalid != tc.invalid {
				t.Errorf("%v; want %d overlaps, %d conflicts, %d invalid", st, tc.overlaps, tc.conflicts, tc.invalid)
			}
			if tc.want != "" {
				if n, held := r.InProgress(); n != 0 || held != 0 {
					t.Errorf("after completing: %d datagrams, %d bytes still held", n, held)
				}
			}
		})
	}
}

// TestDiscardedStaysDiscarded: the fragments of a datagram discarded for
// an IPv6 overlap are dropped, not started afresh, until it times out.
func TestDiscardedStaysDiscarded(t *testing.T) {
	r := New(Config{Timeout: 10 * time.Second})
	for _, f := range []Fragment{frag(0, true, "AAAAAAAA"), frag(0, true, "AAAAAAAA")} {
		f.IPv6 = true
		r.Add(&f, t0)
	}
	f := frag(0, true, "AAAAAAAA")
	f.IPv6 = true
	if out, _, _ := r.Add(&f, t0.Add(time.Second)); out != Discarded {
		t.Fatalf("a fragment of a discarded datagram: %v", out)
	}
	last := frag(8, false, "B")
	last.IPv6 = true
	r.Add(&f, t0.Add(11*time.Second)) // after the timeout: a new datagram
	if out, data, _ := r.Add(&last, t0.Add(11*time.Second)); out != Complete || string(data) != "AAAAAAAAB" {
		t.Fatalf("after the timeout: %v %q", out, data)
	}
}

func TestTimeout(t *testing.T) {
	r := New(Config{Timeout: 30 * time.Second})
	f := frag(0, true, "AAAAAAAA")
	r.Add(&f, t0)
	last := frag(8, false, "B")
	if out, _, _ := r.Add(&last, t0.Add(31*time.Second)); out != Held {
		t.Fatalf("the end of a datagram whose start timed out: %v", out)
	}
	if r.Stats.TimedOut != 1 {
		t.Fatalf("%v", r.Stats)
	}
}

// TestBounds: a flood of first fragments that never complete (each from
// its own identification) stays within the byte and datagram bounds; the
// oldest give way, and a datagram arriving whole afterwards completes.
func TestBounds(t *testing.T) {
	for _, cfg := range []Config{
		{MaxBytes: 64 << 10},
		{MaxDatagrams: 100},
		{MaxFragments: 4},
	} {
		r := New(cfg)
		chunk := bytes.Repeat([]byte("x"), 1024)
		for i := range 10000 {
			f := Fragment{Key: key, Offset: 8 * (i % 8000), More: true, Data: chunk}
			f.Key.ID = uint32(i)
			if cfg.MaxFragments > 0 {
				f.Key.ID = 1 // one datagram, piece after piece
				f.Offset = 2048 * (i % 32)
			}
			r.Add(&f, t0)
			n, held := r.InProgress()
			if (cfg.MaxBytes > 0 && held > cfg.MaxBytes) || (cfg.MaxDatagrams > 0 && n > cfg.MaxDatagrams) {
				t.Fatalf("%+v: %d datagrams, %d bytes held", cfg, n, held)
			}
		}
		if r.Stats.Evicted == 0 && r.Stats.Discarded == 0 {
			t.Errorf("%+v: nothing gave way: %v", cfg, r.Stats)
		}
		f, g := frag(0, true, "AAAAAAAA"), frag(8, false, "B")
		f.Key.ID, g.Key.ID = 99999, 99999
		r.Add(&f, t0)
		if out, data, _ := r.Add(&g, t0); out != Complete || string(data) != "AAAAAAAAB" {
			t.Errorf("%+v: a datagram after the flood: %v %q", cfg, out, data)
		}
	}
}

// FuzzReassemble plays fragments read from the input against small
// bounds, and checks the invariants: nothing held beyond the bounds, the
// accounts balance, a datagram completes with exactly its length.
func FuzzReassemble(f *testing.F) {
	f.Add([]byte{0, 0, 1, 8, 'a', 'a', 'a', 'a', 'a', 'a', 'a', 'a', 0, 1, 0, 3, 'b', 'b', 'b'})
	f.Add(bytes.Repeat([]byte{1, 0, 1, 16}, 40))
	f.Fuzz(func(t *testing.T, in []byte) {
		const maxBytes = 4096
		r := New(Config{MaxBytes: maxBytes, MaxDatagrams: 4, MaxFragments: 8, Policy: Policy(len(in) % 2)})
		now := t0
		for len(in) >= 4 {
			// id, offset/8 (2 bytes, more in the top bit), length
			id, off, n := in[0]%4, binary.BigEndian.Uint16(in[1:3]), int(in[3])
			in = in[4:]
			n = min(n, len(in))
			fr := Fragment{Key: key, IPv6: id == 3, Offset: 8 * int(off&0x1fff), More: off&0x8000 != 0, Data: in[:n]}
			fr.Key.ID = uint32(id)
			in = in[n:]
			now = now.Add(time.Duration(off>>13&3) * 20 * time.Second)
			out, data, _ := r.Add(&fr, now)
			if out == Complete && (len(data) != fr.Offset+n || len(data) > MaxDatagram) {
				t.Fatalf("completed a datagram of %d bytes on a last fragment ending at %d", len(data), fr.Offset+n)
			}
			dg, held := r.InProgress()
			if held < 0 || held > maxBytes || dg > 4 {
				t.Fatalf("%d datagrams, %d bytes held", dg, held)
			}
			sum := 0
			for _, d := range r.m {
				c := 0
				for i, p := range d.pieces {
					c += len(p.data) + pieceOverhead
					if p.end-p.off != len(p.data) || (i > 0 && d.pieces[i-1].end > p.off) {
						t.Fatalf("pieces out of order or overlapping: %+v", d.pieces)
					}
				}
				if c != d.charged {
					t.Fatalf("a datagram charged %d for %d", d.charged, c)
				}
				sum += c
			}
			if sum != held {
				t.Fatalf("held %d, the datagrams' pieces %d", held, sum)
			}
		}
	})
}
