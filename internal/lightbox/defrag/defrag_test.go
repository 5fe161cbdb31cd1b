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
		dups      uint64
		invalid   uint64
		discarded uint64 // datagrams
	}{
		{name: "in order", frags: []Fragment{frag(0, true, a), frag(8, true, b), frag(16, false, c)}, want: a + b + c},
		{name: "reversed", frags: []Fragment{frag(16, false, c), frag(8, true, b), frag(0, true, a)}, want: a + b + c},
		{name: "last first then a hole", frags: []Fragment{frag(16, false, c), frag(0, true, a)}},
		{name: "one fragment, unfragmented in effect", frags: []Fragment{frag(0, false, a)}, want: a},
		{name: "linux: an exact duplicate is dropped, the datagram kept",
			frags: []Fragment{frag(0, true, a), frag(0, true, a), frag(8, false, c)}, want: a + c, overlaps: 1, dups: 1},
		{name: "linux: a duplicate inside a run of two fragments is dropped",
			frags: []Fragment{frag(0, true, a), frag(8, true, b), frag(4, true, "AAAABBBB"), frag(16, false, c)}, want: a + b + c, overlaps: 1, dups: 1},
		{name: "linux: a duplicate with different bytes: the first stand, a conflict",
			frags: []Fragment{frag(0, true, a+b), frag(8, true, "XXXXXXXX"), frag(16, false, c)}, want: a + b + c, overlaps: 1, conflicts: 1, dups: 1},
		{name: "linux: a duplicate straddling two runs discards the datagram (runs join only at the last one's end)",
			frags: []Fragment{frag(0, true, a), frag(16, true, a), frag(8, true, b), frag(0, true, a+b), frag(24, false, c)}, overlaps: 1, discarded: 1},
		{name: "linux: a partial overlap discards the datagram",
			frags: []Fragment{frag(0, true, a), frag(16, false, c), frag(0, true, "xxxxxxxxyyyyyyyy")}, overlaps: 1, conflicts: 1, discarded: 1},
		{name: "linux: a partial overlap with the same bytes discards it too",
			frags: []Fragment{frag(0, true, a), frag(16, false, c), frag(0, true, a+b)}, overlaps: 1, discarded: 1},
		{name: "linux: a discarded datagram is forgotten, and completes when sent again",
			frags: []Fragment{frag(0, true, a), frag(0, true, "xxxxxxxxyyyyyyyy"), frag(0, true, a), frag(8, false, c)}, want: a + c, overlaps: 1, conflicts: 1, discarded: 1},
		{name: "first: overlap, first wins", policy: First,
			frags: []Fragment{frag(0, true, a+b), frag(8, true, "XXXXXXXX"), frag(16, false, c)}, want: a + b + c, overlaps: 1, conflicts: 1},
		{name: "last: overlap, last wins", policy: Last,
			frags: []Fragment{frag(0, true, a+b), frag(8, true, "XXXXXXXX"), frag(16, false, c)}, want: a + "XXXXXXXX" + c, overlaps: 1, conflicts: 1},
		{name: "first: partial overlap, the new bytes fill the gap", policy: First,
			frags: []Fragment{frag(0, true, a), frag(16, false, c), frag(0, true, "xxxxxxxxyyyyyyyy")}, want: a + "yyyyyyyy" + c, overlaps: 1, conflicts: 1},
		{name: "last: a piece inside a larger one, the old one split", policy: Last,
			frags: []Fragment{frag(0, true, a+b+a), frag(8, true, "XXXXXXXX"), frag(24, false, c)}, want: a + "XXXXXXXX" + a + c, overlaps: 1, conflicts: 1},
		{name: "last: many splits", policy: Last,
			frags: []Fragment{frag(0, true, a+a+a+a), frag(8, true, b), frag(24, true, b), frag(0, true, "xxxxxxxx"), frag(32, false, c)},
			want:  "xxxxxxxx" + b + a + b + c, overlaps: 3, conflicts: 3},
		{name: "ipv6: an exact duplicate is dropped (RFC 8200 4.5)", ipv6: true, policy: Last,
			frags: []Fragment{frag(0, true, a), frag(0, true, a), frag(8, false, c)}, want: a + c, overlaps: 1, dups: 1},
		{name: "ipv6: an overlap discards the datagram (RFC 5722), whatever the IPv4 policy", ipv6: true, policy: First,
			frags: []Fragment{frag(0, true, a+b), frag(8, true, b+b), frag(24, false, c)}, overlaps: 1, discarded: 1},
		{name: "ipv6 without overlap", ipv6: true, frags: []Fragment{frag(8, false, c), frag(0, true, a)}, want: a + c},
		{name: "past 65535", frags: []Fragment{frag(65528, false, a)}, invalid: 1},
		{name: "ipv6: a fragment past 65535 is refused, its datagram kept", ipv6: true,
			frags: []Fragment{frag(0, true, a), frag(65528, true, a), frag(8, false, c)}, want: a + c, invalid: 1},
		{name: "ipv4: a non-final fragment not a multiple of 8 is cut to one, as Linux",
			frags: []Fragment{frag(0, true, a+"xyz"), frag(8, false, c)}, want: a + c},
		{name: "ipv4: a non-final fragment under 8 bytes is cut to nothing, its datagram discarded",
			frags: []Fragment{frag(8, false, c), frag(0, true, "xyz"), frag(0, true, a)}, invalid: 1, discarded: 1},
		{name: "ipv6: a non-final fragment not a multiple of 8 is refused, its datagram kept", ipv6: true,
			frags: []Fragment{frag(8, false, c), frag(0, true, a+"xyz"), frag(0, true, a)}, want: a + c, invalid: 1},
		{name: "two different ends", frags: []Fragment{frag(8, false, a), frag(16, false, a), frag(0, true, a)}, invalid: 1, discarded: 1},
		{name: "a piece past the end", frags: []Fragment{frag(8, false, c), frag(16, true, a), frag(0, true, a)}, invalid: 1, discarded: 1},
		{name: "an empty final fragment", frags: []Fragment{frag(0, true, a), frag(8, false, "")}, invalid: 1, discarded: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := New(Config{Policy: tc.policy})
			var got []byte
			for i := range tc.frags {
				f := tc.frags[i]
				f.IPv6 = tc.ipv6
				if res := r.Add(&f, t0); res.Outcome == Complete {
					got = append([]byte(nil), res.Data...)
				}
			}
			if string(got) != tc.want {
				t.Errorf("datagram %q, want %q", got, tc.want)
			}
			st := r.Stats
			if st.Overlaps != tc.overlaps || st.Conflicts != tc.conflicts || st.Duplicates != tc.dups || st.Invalid != tc.invalid || st.Discarded != tc.discarded {
				t.Errorf("%v; want %d overlaps, %d conflicts, %d duplicates, %d invalid, %d discarded",
					st, tc.overlaps, tc.conflicts, tc.dups, tc.invalid, tc.discarded)
			}
			if tc.want != "" {
				if n, held := r.InProgress(); n != 0 || held != 0 {
					t.Errorf("after completing: %d datagrams, %d bytes still held", n, held)
				}
			}
		})
	}
}

// TestResult: each fragment's result says whether it overlapped and with
// different bytes, and the whole datagram carries the first fragment's
// next header, not the completing one's.
func TestResult(t *testing.T) {
	r := New(Config{})
	f0 := Fragment{Key: key, IPv6: true, Offset: 0, More: true, Next: 60, Data: []byte("AAAAAAAA")}
	dup := f0
	dup.Data = []byte("XXXXXXXX")
	last := Fragment{Key: key, IPv6: true, Offset: 8, Next: 6, Data: []byte("B")}
	if res := r.Add(&f0, t0); res.Outcome != Held || res.Overlap || res.Conflict {
		t.Fatalf("first fragment: %+v", res)
	}
	if res := r.Add(&dup, t0); res.Outcome != Discarded || !res.Overlap || !res.Conflict {
		t.Fatalf("a duplicate with other bytes: %+v", res)
	}
	res := r.Add(&last, t0)
	if res.Outcome != Complete || string(res.Data) != "AAAAAAAAB" || res.Next != 60 || res.Overlap {
		t.Fatalf("last fragment: %+v", res)
	}
}

// TestRunsMerge: fragments that arrive adjacent merge into one piece, so
// a datagram of many small fragments completes under a small
// MaxFragments, while as many holes exceed it.
func TestRunsMerge(t *testing.T) {
	r := New(Config{MaxFragments: 4})
	var want []byte
	var res Result
	for i := range 200 {
		p := bytes.Repeat([]byte{byte('a' + i%26)}, 8)
		want = append(want, p...)
		f := Fragment{Key: key, Offset: 8 * i, More: i < 199, Data: p}
		if res = r.Add(&f, t0); i < 199 && res.Outcome != Held {
			t.Fatalf("fragment %d: %v (%v)", i, res.Outcome, r.Stats)
		}
	}
	if res.Outcome != Complete || !bytes.Equal(res.Data, want) {
		t.Fatalf("200 adjacent fragments: %v, %d bytes", res.Outcome, len(res.Data))
	}
	for i := range 5 { // every other 8 bytes: holes between (a bound lower than any datagram needs)
		f := Fragment{Key: key, Offset: 16 * i, More: true, Data: []byte("xxxxxxxx")}
		res = r.Add(&f, t0)
	}
	if res.Outcome != Discarded || r.Stats.Discarded != 1 {
		t.Fatalf("five holes with MaxFragments 4: %v (%v)", res.Outcome, r.Stats)
	}
}

func TestTimeout(t *testing.T) {
	r := New(Config{Timeout: 30 * time.Second})
	f := frag(0, true, "AAAAAAAA")
	r.Add(&f, t0)
	last := frag(8, false, "B")
	if res := r.Add(&last, t0.Add(31*time.Second)); res.Outcome != Held {
		t.Fatalf("the end of a datagram whose start timed out: %v", res.Outcome)
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
				f.Key.ID = 1               // one datagram, piece after piece
				f.Offset = 2048 * (i % 32) // holes between: never merging
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
		if res := r.Add(&g, t0); res.Outcome != Complete || string(res.Data) != "AAAAAAAAB" {
			t.Errorf("%+v: a datagram after the flood: %v %q", cfg, res.Outcome, res.Data)
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
		r := New(Config{MaxBytes: maxBytes, MaxDatagrams: 4, MaxFragments: 8, Policy: Policy(len(in) % 3)})
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
			total := -1
			if d := r.m[fr.Key]; d != nil {
				total = d.total
			}
			if !fr.More {
				total = fr.Offset + n
			}
			res := r.Add(&fr, now)
			if res.Outcome == Complete && (len(res.Data) != total || len(res.Data) > MaxDatagram) {
				t.Fatalf("completed a datagram of %d bytes, its last fragment says %d", len(res.Data), total)
			}
			dg, held := r.InProgress()
			if held < 0 || held > maxBytes || dg > 4 {
				t.Fatalf("%d datagrams, %d bytes held", dg, held)
			}
			sum := 0
			for _, d := range r.m {
				c := 0
				for i, p := range d.pieces {
					c += cap(p.data) + pieceOverhead
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

// TestManyHoles: a datagram of 8-byte fragments sent every other one
// first (4,096 runs at once, as Linux holds them) completes under the
// default bounds: no datagram a host reassembles is refused for its
// number of fragments.
func TestManyHoles(t *testing.T) {
	r := New(Config{})
	const n = 8190
	var res Result
	for _, phase := range []int{0, 1} {
		for i := phase; i < n; i += 2 {
			f := Fragment{Key: key, Offset: 8 * i, More: i < n-1, Data: []byte("01234567")}
			res = r.Add(&f, t0)
		}
	}
	if res.Outcome != Complete || len(res.Data) != 8*n || r.Stats.Discarded != 0 {
		t.Fatalf("%v, %d bytes (%v)", res.Outcome, len(res.Data), r.Stats)
	}
}
