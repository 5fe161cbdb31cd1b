package middlebox

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
)

// piece is a fragment's bytes of an IP payload: [off, off+len(data)).
type piece struct {
	off  int
	data []byte // nil: the original bytes
	end  int
}

// fragment4 cuts an Ethernet+IPv4 frame (a 20-byte IP header) into
// fragments with identification id, one per piece, in the pieces' order.
func fragment4(frame []byte, id uint16, pieces ...piece) [][]byte {
	// The IP total length, not the frame's: Ethernet pads short frames.
	hdr, payload := frame[:34], frame[34:14+int(binary.BigEndian.Uint16(frame[16:]))]
	var out [][]byte
	for _, p := range pieces {
		data := p.data
		if data == nil {
			data = payload[p.off:p.end]
		}
		h := append([]byte(nil), hdr...)
		ip := h[14:]
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(data)))
		binary.BigEndian.PutUint16(ip[4:], id)
		v := uint16(p.off / 8)
		if p.off+len(data) < len(payload) {
			v |= 1 << 13 // more fragments
		}
		binary.BigEndian.PutUint16(ip[6:], v)
		ip[10], ip[11] = 0, 0
		var sum uint32
		for i := 0; i < 20; i += 2 {
			sum += uint32(binary.BigEndian.Uint16(ip[i:]))
		}
		for sum > 0xffff {
			sum = sum&0xffff + sum>>16
		}
		binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
		out = append(out, append(h, data...))
	}
	return out
}

// fragment6 cuts a raw IPv6 packet (no extension headers) into fragments
// with identification id.
func fragment6(pkt []byte, id uint32, pieces ...piece) [][]byte {
	hdr, payload := pkt[:40], pkt[40:]
	var out [][]byte
	for _, p := range pieces {
		data := payload[p.off:p.end]
		h := append([]byte(nil), hdr...)
		binary.BigEndian.PutUint16(h[4:], uint16(8+len(data)))
		next := h[6]
		h[6] = 44
		v := uint16(p.off/8) << 3
		if p.end < len(payload) {
			v |= 1
		}
		fh := []byte{next, 0, 0, 0, 0, 0, 0, 0}
		binary.BigEndian.PutUint16(fh[2:], v)
		binary.BigEndian.PutUint32(fh[4:], id)
		out = append(out, cat(h, fh, data))
	}
	return out
}

// TestDecodeReassembles: a TCP segment cut into three fragments, given
// out of order, decodes on the last of them as the whole segment, IPv4
// and IPv6 alike.
func TestDecodeReassembles(t *testing.T) {
	payload := "GET /some/long/path HTTP/1.1\r\nHost: x\r\n\r\n"
	for _, v6 := range []bool{false, true} {
		pkt := ipTCP(t, v6, payload)
		var frags [][]byte
		cuts := []piece{{off: 24, end: 40}, {off: 0, end: 24}, {off: 40, end: 20 + len(payload)}} // the first holds the whole TCP header
		if v6 {
			frags = fragment6(pkt, 77, cuts...)
		} else {
			frags = fragment4(cat(eth(0x0800), pkt), 77, cuts...)
		}
		link := layers.LinkTypeEthernet
		if v6 {
			link = layers.LinkTypeRaw
		}
		d := mustDecoder(t, link)
		var m Meta
		for i, f := range frags {
			got := d.DecodeResult(f, time.Unix(100, 0), &m)
			want := Fragment
			if i == len(frags)-1 {
				want = Decoded
			}
			if got != want {
				t.Fatalf("v6 %v: fragment %d decoded as %v, want %v (%v)", v6, i, got, want, d.Stats)
			}
		}
		if !m.Reassembled || m.Proto != 6 || m.SrcPort != 1234 || m.DstPort != 80 || m.Flags&SYN == 0 || string(m.Payload) != payload {
			t.Fatalf("v6 %v: the reassembled segment: %+v", v6, m)
		}
		if s := d.Stats; s.Decoded != 1 || s.Fragments != 2 || s.Defrag.Reassembled != 1 || !strings.Contains(s.String(), "1 datagrams reassembled") {
			t.Fatalf("v6 %v: %v", v6, s)
		}
	}
}

// udpSplit is a UDP datagram to port 53 whose payload, "AAAAxTuNnElxAAAA",
// is cut into fragments at 8 and 16 bytes of the IP payload: the pattern
// "tunnel" (nocase) lies across the second cut.
func udpSplit(t *testing.T, last []byte) [][]byte {
	t.Helper()
	fr := frame("10.0.0.1", 5353, "10.0.0.9", 53, "udp", 0, 64, "AAAAxTuNnElxAAAA")
	return fragment4(fr, 9, piece{off: 0, end: 8}, piece{off: 8, end: 16}, piece{off: 16, data: last})
}

// TestIDSAcrossFragments: a signature cut across IP fragments is found,
// and a later overlapping fragment with other bytes neither hides it (the
// first bytes stand) nor goes without an alert of its own.
func TestIDSAcrossFragments(t *testing.T) {
	for _, tc := range []struct {
		name      string
		frags     func(*testing.T) [][]byte
		conflicts uint64
	}{
		{"in order", func(t *testing.T) [][]byte { return udpSplit(t, []byte("nElxAAAA")) }, 0},
		{"reversed", func(t *testing.T) [][]byte {
			f := udpSplit(t, []byte("nElxAAAA"))
			return [][]byte{f[2], f[1], f[0]}
		}, 0},
		{"an overlapping rewrite comes later", func(t *testing.T) [][]byte {
			f := udpSplit(t, []byte("nElxAAAA"))
			rewrite := fragment4(frame("10.0.0.1", 5353, "10.0.0.9", 53, "udp", 0, 64, "AAAAxTuNnElxAAAA"), 9, piece{off: 8, data: []byte("AAAAxTuX")})[0]
			return [][]byte{f[1], rewrite, f[0], f[2]}
		}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			table := tables(t, IDSStateSize)["map"]
			d := mustDecoder(t, layers.LinkTypeEthernet)
			x, err := NewIDS(table, d, loadRules(t))
			if err != nil {
				t.Fatal(err)
			}
			for i, f := range tc.frags(t) {
				if err := x.Handle(f, time.Unix(100, int64(i))); err != nil {
					t.Fatal(err)
				}
			}
			var rule, decoder uint64
			for _, a := range x.Alerts {
				switch a.SID {
				case 1005:
					rule++
				case DecoderSID:
					decoder++
				}
			}
			if rule != 1 || decoder != tc.conflicts || len(x.Alerts) != int(1+tc.conflicts) {
				t.Fatalf("alerts %v; want sid 1005 once and a decoder alert per conflict (%v)", x.Alerts, d.Stats)
			}
			if got := d.Stats.Defrag.Conflicts; got != tc.conflicts {
				t.Fatalf("%d conflicting overlaps reported, want %d: %v", got, tc.conflicts, d.Stats)
			}
		})
	}
}

// TestFirewallDropsFragments: the firewall forwards no fragment, the
// one completing a datagram included, and says why.
func TestFirewallDropsFragments(t *testing.T) {
	table := tables(t, FirewallStateSize)["map"]
	fw := NewFirewall(table, mustDecoder(t, layers.LinkTypeEthernet), nil, nil)
	frags := udpSplit(t, []byte("nElxAAAA"))
	for i, f := range frags {
		ok, why, err := fw.Verdict(f, time.Unix(100, 0))
		if err != nil || ok {
			t.Fatalf("fragment %d passed (%q, %v)", i, why, err)
		}
		if i == len(frags)-1 && !strings.Contains(why, "fragmented datagram") {
			t.Fatalf("the completing fragment dropped for %q", why)
		}
	}
}

// TestDecodeReassembledIPv6Headers: a reassembled IPv6 datagram takes its
// protocol from its first fragment's fragment header, wherever the
// completing fragment came from and whatever it says, and the extension
// headers after the fragment header (here a destination options header)
// are walked to the transport header.
func TestDecodeReassembledIPv6Headers(t *testing.T) {
	payload := "GET /attack HTTP/1.1\r\n\r\n"
	plain := ipTCP(t, true, payload)
	withOpts := withExt(plain, ext8(60))
	for _, tc := range []struct {
		name  string
		pkt   []byte
		lie   bool // the completing (last) fragment's header names UDP
		order []int
	}{
		{"destination options after the fragment header", withOpts, false, []int{0, 1}},
		{"destination options, the first fragment last", withOpts, false, []int{1, 0}},
		{"the last fragment names another protocol", plain, true, []int{0, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			frags := fragment6(tc.pkt, 5, piece{off: 0, end: 32}, piece{off: 32, end: len(tc.pkt) - 40})
			if tc.lie {
				frags[1][40] = 17
			}
			d := mustDecoder(t, layers.LinkTypeRaw)
			var m Meta
			var r Result
			for _, i := range tc.order {
				r = d.DecodeResult(frags[i], time.Unix(100, 0), &m)
			}
			if r != Decoded || !m.Reassembled || m.Proto != 6 || m.DstPort != 80 || string(m.Payload) != payload {
				t.Fatalf("%v: %+v (%v)", r, m, d.Stats)
			}
		})
	}
	// A hop-by-hop header is out of place after a fragment header (the
	// datagram is malformed when whole), and a first fragment without 20
	// bytes of TCP header is refused (RFC 8200 §4.5, Linux since 5.16):
	// malformed, not a flow.
	d := mustDecoder(t, layers.LinkTypeRaw)
	var m Meta
	hbh := fragment6(withExt(plain, ext8(0)), 6, piece{off: 0, end: 32}, piece{off: 32, end: len(plain) - 40 + 8})
	d.DecodeResult(hbh[0], time.Unix(100, 0), &m)
	if r := d.DecodeResult(hbh[1], time.Unix(100, 0), &m); r != Malformed {
		t.Fatalf("hop-by-hop after the fragment header: %v %+v", r, m)
	}
	half := fragment6(plain, 7, piece{off: 0, end: 8}, piece{off: 8, end: len(plain) - 40})
	if r := d.DecodeResult(half[0], time.Unix(100, 0), &m); r != Malformed || d.Stats.ShortFirst != 1 {
		t.Fatalf("a first fragment with 8 bytes of TCP header: %v %+v", r, m)
	}
}
