package middlebox

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

func mustDecoder(t testing.TB, link layers.LinkType) *Decoder {
	t.Helper()
	d, err := NewDecoder(link)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// ipTCP is an IPv4 (or IPv6) packet carrying TCP 1234 -> 80 with payload.
func ipTCP(t testing.TB, v6 bool, payload string) []byte {
	t.Helper()
	tcp := &layers.TCP{SrcPort: 1234, DstPort: 80, Seq: 7, SYN: true, Window: 512}
	var ip gopacket.SerializableLayer
	if v6 {
		ip6 := &layers.IPv6{Version: 6, NextHeader: layers.IPProtocolTCP, HopLimit: 64, SrcIP: net.ParseIP("2001:db8::1"), DstIP: net.ParseIP("2001:db8::2")}
		tcp.SetNetworkLayerForChecksum(ip6)
		ip = ip6
	} else {
		ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.IPv4(10, 0, 0, 1), DstIP: net.IPv4(10, 0, 0, 2)}
		tcp.SetNetworkLayerForChecksum(ip4)
		ip = ip4
	}
	return serialize(t, ip, tcp, gopacket.Payload(payload))
}

func ipUDP(t testing.TB, v6 bool) []byte {
	t.Helper()
	udp := &layers.UDP{SrcPort: 5353, DstPort: 53}
	if v6 {
		ip6 := &layers.IPv6{Version: 6, NextHeader: layers.IPProtocolUDP, HopLimit: 64, SrcIP: net.ParseIP("2001:db8::1"), DstIP: net.ParseIP("2001:db8::2")}
		udp.SetNetworkLayerForChecksum(ip6)
		return serialize(t, ip6, udp, gopacket.Payload("q"))
	}
	ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: net.IPv4(10, 0, 0, 1), DstIP: net.IPv4(10, 0, 0, 2)}
	udp.SetNetworkLayerForChecksum(ip4)
	return serialize(t, ip4, udp, gopacket.Payload("q"))
}

func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// eth is an Ethernet header of the given type.
func eth(typ uint16) []byte {
	b := []byte{2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0, 0}
	binary.BigEndian.PutUint16(b[12:], typ)
	return b
}

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func u16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// withExt rebuilds an IPv6 packet with extension headers between its
// header and its upper layer: each ext is (type, bytes including its
// next-header byte, which is filled in).
func withExt(pkt []byte, exts ...[]byte) []byte {
	upper := pkt[40:]
	next := pkt[6]
	var chain []byte
	// Fill the next-header fields back to front.
	for i := len(exts) - 1; i >= 0; i-- {
		e := append([]byte(nil), exts[i][1:]...)
		e[0] = next
		next = exts[i][0]
		chain = append(e, chain...)
	}
	hdr := append([]byte(nil), pkt[:40]...)
	hdr[6] = next
	binary.BigEndian.PutUint16(hdr[4:], uint16(len(chain)+len(upper)))
	return cat(hdr, chain, upper)
}

// ext8 is an 8-byte extension header of the given type (its first byte
// is the type for withExt, then 8 bytes).
func ext8(typ byte) []byte { return []byte{typ, 0, 0, 0, 0, 0, 0, 0, 0} }

// frag6 is an IPv6 fragment header.
func frag6(offset uint16, more bool) []byte {
	b := []byte{44, 0, 0, 0, 0, 0, 0, 0, 1}
	v := offset << 3
	if more {
		v |= 1
	}
	binary.BigEndian.PutUint16(b[3:], v)
	return b
}

// ip4Over is an IPv4 header (20 bytes) with protocol proto around inner.
func ip4Over(t testing.TB, proto layers.IPProtocol, inner []byte, frag func(*layers.IPv4)) []byte {
	ip := &layers.IPv4{Version: 4, TTL: 9, Protocol: proto, SrcIP: net.IPv4(192, 0, 2, 1), DstIP: net.IPv4(192, 0, 2, 2)}
	if frag != nil {
		frag(ip)
	}
	return serialize(t, ip, gopacket.Payload(inner))
}

// nflog wraps an IPv4 packet in an NFLOG record: header, a prefix TLV,
// then the payload TLV.
func nflog(pkt []byte) []byte {
	tlv := func(typ uint16, v []byte) []byte {
		b := binary.LittleEndian.AppendUint16(nil, uint16(4+len(v)))
		b = binary.LittleEndian.AppendUint16(b, typ)
		b = append(b, v...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	return cat([]byte{2, 0, 0, 1}, tlv(10, []byte("pfx\x00\x00")), tlv(9, pkt))
}

func TestDecodeEncapsulations(t *testing.T) {
	v4, v6 := ipTCP(t, false, "GET /"), ipTCP(t, true, "GET /")
	src4, src6 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("2001:db8::1")
	sll := cat([]byte{0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0}, u16(0x0800), v4)
	sll2 := cat(u16(0x86dd), []byte{0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0}, v6)
	pppoe := func(proto uint16, pkt []byte) []byte {
		return cat(eth(0x8864), []byte{0x11, 0, 0, 7}, u16(uint16(2+len(pkt))), u16(proto), pkt)
	}
	for _, c := range []struct {
		name  string
		link  layers.LinkType
		pkt   []byte
		want  Result
		src   netip.Addr
		proto uint8
	}{
		{"ethernet-ipv4-tcp", layers.LinkTypeEthernet, cat(eth(0x0800), v4), Decoded, src4, 6},
		{"dot1q", layers.LinkTypeEthernet, cat(eth(0x8100), u16(100), u16(0x0800), v4), Decoded, src4, 6},
		{"qinq", layers.LinkTypeEthernet, cat(eth(0x88a8), u16(10), u16(0x8100), u16(20), u16(0x86dd), v6), Decoded, src6, 6},
		{"mpls-two-labels", layers.LinkTypeEthernet, cat(eth(0x8847), []byte{0, 1, 0, 64, 0, 2, 1, 64}, v4), Decoded, src4, 6},
		{"mpls-ipv6", layers.LinkTypeEthernet, cat(eth(0x8847), []byte{0, 1, 1, 64}, v6), Decoded, src6, 6},
		{"pppoe-ipv4", layers.LinkTypeEthernet, pppoe(0x0021, v4), Decoded, src4, 6},
		{"pppoe-ipv6-udp", layers.LinkTypeEthernet, pppoe(0x0057, ipUDP(t, true)), Decoded, src6, 17},
		{"pppoe-lcp", layers.LinkTypeEthernet, pppoe(0xc021, []byte{1, 1, 0, 4}), NotIP, netip.Addr{}, 0},
		{"llc-snap", layers.LinkTypeEthernet, cat(eth(uint16(8+len(v4))), []byte{0xaa, 0xaa, 3, 0, 0, 0}, u16(0x0800), v4), Decoded, src4, 6},
		{"raw-ipv4", layers.LinkTypeRaw, v4, Decoded, src4, 6},
		{"raw-ipv6", layers.LinkTypeRaw, v6, Decoded, src6, 6},
		{"linktype-ipv6", layers.LinkTypeIPv6, v6, Decoded, src6, 6},
		{"linux-sll", layers.LinkTypeLinuxSLL, sll, Decoded, src4, 6},
		{"linux-sll2", layers.LinkTypeLinuxSLL2, sll2, Decoded, src6, 6},
		{"nflog", 239, nflog(v4), Decoded, src4, 6},
		{"ipv6-extension-chain", layers.LinkTypeRaw, withExt(v6, ext8(0), ext8(43), ext8(60)), Decoded, src6, 6},
		{"ipv6-atomic-fragment", layers.LinkTypeRaw, withExt(v6, frag6(0, false)), Decoded, src6, 6},
		{"ipv6-first-fragment", layers.LinkTypeRaw, withExt(v6, ext8(60), frag6(0, true)), Fragment, src6, 6},
		{"ipv6-later-fragment", layers.LinkTypeRaw, withExt(v6, frag6(3, false)), Fragment, src6, 6},
		{"ipv4-first-fragment", layers.LinkTypeRaw, ip4Over(t, layers.IPProtocolTCP, v4[20:], func(ip *layers.IPv4) { ip.Flags = layers.IPv4MoreFragments }), Fragment, netip.MustParseAddr("192.0.2.1"), 6},
		{"ipv4-later-fragment", layers.LinkTypeRaw, ip4Over(t, layers.IPProtocolTCP, v4[20:], func(ip *layers.IPv4) { ip.FragOffset = 8 }), Fragment, netip.MustParseAddr("192.0.2.1"), 6},
		{"gre-ipv4", layers.LinkTypeRaw, ip4Over(t, layers.IPProtocolGRE, cat([]byte{0, 0, 8, 0}, v4), nil), Decoded, src4, 6},
		{"ipv4-in-ipv4", layers.LinkTypeRaw, ip4Over(t, layers.IPProtocolIPv4, v4, nil), Decoded, src4, 6},
		{"ipv6-in-ipv4", layers.LinkTypeRaw, ip4Over(t, layers.IPProtocolIPv6, v6, nil), Decoded, src6, 6},
		{"truncated-tcp-header", layers.LinkTypeRaw, ip4Over(t, layers.IPProtocolTCP, v4[20:30], nil), Malformed, netip.MustParseAddr("192.0.2.1"), 6},
		{"truncated-ipv6-extension", layers.LinkTypeRaw, withExt(v6, ext8(60))[:44], Malformed, src6, 60},
		{"arp", layers.LinkTypeEthernet, cat(eth(0x0806), make([]byte, 28)), NotIP, netip.Addr{}, 0},
		{"truncated-vlan-tag", layers.LinkTypeEthernet, cat(eth(0x8100), []byte{0}), Malformed, netip.Addr{}, 0},
		{"mpls-without-bottom", layers.LinkTypeEthernet, cat(eth(0x8847), []byte{0, 1, 0, 64}), Malformed, netip.Addr{}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := mustDecoder(t, c.link)
			var m Meta
			got := d.DecodeResult(c.pkt, time.Time{}, &m)
			if got != c.want {
				t.Fatalf("decoded as %v, want %v (meta %+v)", got, c.want, m)
			}
			if c.want != Decoded {
				if d.Stats.Decoded != 0 {
					t.Errorf("counted as decoded: %+v", d.Stats)
				}
				return
			}
			if m.Src != c.src || m.Proto != c.proto {
				t.Errorf("src %v proto %d, want %v %d", m.Src, m.Proto, c.src, c.proto)
			}
			if c.proto == 6 && (m.SrcPort != 1234 || m.DstPort != 80 || string(m.Payload) != "GET /" || m.Flags != SYN) {
				t.Errorf("TCP: %d -> %d flags %d payload %q", m.SrcPort, m.DstPort, m.Flags, m.Payload)
			}
			if c.proto == 17 && (m.SrcPort != 5353 || m.DstPort != 53) {
				t.Errorf("UDP: %d -> %d", m.SrcPort, m.DstPort)
			}
			if d.Stats.Decoded != 1 {
				t.Errorf("stats %+v", d.Stats)
			}
		})
	}
}

func TestDecoderRefusesUnknownLinkTypes(t *testing.T) {
	_, err := NewDecoder(layers.LinkTypeIEEE802_11)
	if err == nil || !strings.Contains(err.Error(), "link type 105") || !strings.Contains(err.Error(), "Linux cooked") {
		t.Fatalf("802.11: %v", err)
	}
}

// FuzzDecode: no input makes the decoder panic, on any link type it reads,
// and what it calls decoded has addresses and, for TCP and UDP, came with
// their header.
func FuzzDecode(f *testing.F) {
	for _, fr := range monitorCapture() {
		f.Add(uint8(0), fr)
	}
	f.Add(uint8(1), ipTCP(f, false, "x"))
	f.Add(uint8(1), withExt(ipTCP(f, true, "x"), ext8(0), frag6(0, true)))
	f.Add(uint8(6), nflog(ipTCP(f, false, "x")))
	links := []layers.LinkType{layers.LinkTypeEthernet, layers.LinkTypeRaw, layers.LinkTypeIPv4, layers.LinkTypeIPv6,
		layers.LinkTypeLinuxSLL, layers.LinkTypeLinuxSLL2, 239}
	f.Fuzz(func(t *testing.T, link uint8, data []byte) {
		d := mustDecoder(t, links[int(link)%len(links)])
		var m Meta
		switch d.DecodeResult(data, time.Time{}, &m) {
		case Decoded:
			if !m.Src.IsValid() || !m.Dst.IsValid() {
				t.Fatalf("decoded without addresses: %+v", m)
			}
			k, _ := m.Key()
			_ = k.Reverse()
		case NotIP, Fragment, Malformed:
		default:
			t.Fatal("unknown result")
		}
		if s := d.Stats; s.Decoded+s.NotIP+s.Fragments+s.Malformed != 1 {
			t.Fatalf("stats %+v after one packet", s)
		}
	})
}

// TestChecksums: a decoder that verifies checksums refuses a packet whose
// TCP, UDP or IPv4 header checksum is wrong, IPv4 and IPv6, whole or
// reassembled; takes an IPv4 UDP datagram without a checksum; and in auto
// mode stops verifying when the capture's first packets show offload.
func TestChecksums(t *testing.T) {
	good := seg("10.0.0.1", 40000, "10.0.0.2", 80, ACK|PSH, 1001, "GET /attack")
	badTCP := append([]byte(nil), good...)
	badTCP[14+20+16] ^= 0xff
	badIP := append([]byte(nil), good...)
	badIP[14+10] ^= 0xff
	udp := frame("10.0.0.1", 5353, "10.0.0.9", 53, "udp", 0, 64, "tunnel")
	noSum := append([]byte(nil), udp...)
	noSum[14+20+6], noSum[14+20+7] = 0, 0
	badUDP := append([]byte(nil), udp...)
	badUDP[14+20+6] ^= 0xff
	v6 := cat(eth(0x86dd), ipTCP(t, true, "GET /attack"))
	badV6 := append([]byte(nil), v6...)
	badV6[len(badV6)-1] ^= 0xff
	udp6 := cat(eth(0x86dd), ipUDP(t, true))
	udp6NoSum := append([]byte(nil), udp6...)
	udp6NoSum[14+40+6], udp6NoSum[14+40+7] = 0, 0
	frags := fragment4(good, 3, piece{off: 0, end: 24}, piece{off: 24, end: 31})
	badFrags := fragment4(badTCP, 4, piece{off: 0, end: 24}, piece{off: 24, end: 31})
	for _, tc := range []struct {
		name string
		pkts [][]byte
		want Result
	}{
		{"TCP", [][]byte{good}, Decoded},
		{"TCP, a wrong checksum", [][]byte{badTCP}, BadChecksum},
		{"TCP, a wrong IPv4 header checksum", [][]byte{badIP}, BadChecksum},
		{"UDP", [][]byte{udp}, Decoded},
		{"UDP without a checksum", [][]byte{noSum}, Decoded},
		{"UDP, a wrong checksum", [][]byte{badUDP}, BadChecksum},
		{"IPv6 TCP", [][]byte{v6}, Decoded},
		{"IPv6 UDP", [][]byte{udp6}, Decoded},
		{"IPv6 UDP without a checksum (never allowed)", [][]byte{udp6NoSum}, BadChecksum},
		{"IPv6 TCP, a wrong checksum", [][]byte{badV6}, BadChecksum},
		{"reassembled", frags, Decoded},
		{"reassembled, a wrong checksum", badFrags, BadChecksum},
		{"SRv6, summed over the final destination", [][]byte{srv6(1, true)}, Decoded},
		{"SRv6, summed over the header's destination", [][]byte{srv6(1, false)}, BadChecksum},
		{"SRv6, no segment left, summed over the header's destination", [][]byte{srv6(0, false)}, Decoded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := mustDecoder(t, layers.LinkTypeEthernet)
			d.Checksums = ChecksumsOn
			var m Meta
			var r Result
			for _, p := range tc.pkts {
				r = d.DecodeResult(p, time.Unix(100, 0), &m)
			}
			if r != tc.want {
				t.Fatalf("%v, want %v (%v)", r, tc.want, d.Stats)
			}
		})
	}
	// Auto: a capture whose first packets mostly carry wrong checksums
	// (offload) is not verified; one whose first packets are right is.
	for _, offload := range []bool{true, false} {
		d := mustDecoder(t, layers.LinkTypeEthernet)
		d.Checksums = ChecksumsAuto
		var m Meta
		first := good
		if offload {
			first = badTCP
		}
		for range ckLearn {
			d.DecodeResult(first, time.Unix(100, 0), &m)
		}
		r := d.DecodeResult(badTCP, time.Unix(100, 0), &m)
		if d.Stats.Offload != offload || (r == Decoded) != offload {
			t.Fatalf("offload %v: %v after %d packets (%v)", offload, r, ckLearn, d.Stats)
		}
	}
}

// srv6 is an Ethernet frame of IPv6 TCP behind a segment routing header
// (type 4) with segments left, its TCP checksum summed over the final
// destination (Segment List[0], as RFC 8200 §8.1 says when segments are
// left) or over the IPv6 header's destination.
func srv6(left byte, overFinal bool) []byte {
	src := netip.MustParseAddr("2001:db8::1")
	hop := netip.MustParseAddr("2001:db8:ff::1")   // the segment the packet goes to now
	final := netip.MustParseAddr("2001:db8:80::2") // Segment List[0]
	srh := make([]byte, 40)
	srh[0], srh[1], srh[2], srh[3], srh[4] = 6, 4, 4, left, 1 // TCP next, 32 bytes more, type 4, segments left, last entry 1
	copy(srh[8:], final.AsSlice())
	copy(srh[24:], hop.AsSlice())
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 80)
	binary.BigEndian.PutUint32(tcp[4:], 1001)
	tcp[12], tcp[13] = 5<<4, 0x18 // ACK|PSH
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	payload := []byte("GET /attack")
	dst := hop
	if overFinal {
		dst = final
	}
	n := len(tcp) + len(payload)
	a, b := src.As16(), dst.As16()
	sum := ones(ones(ones(ones(0, a[:]), b[:]), tcp), payload) + uint32(n) + 6
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(tcp[16:], ^uint16(sum))
	ip := make([]byte, 40)
	ip[0] = 6 << 4
	binary.BigEndian.PutUint16(ip[4:], uint16(len(srh)+n))
	ip[6], ip[7] = 43, 64
	copy(ip[8:], src.AsSlice())
	copy(ip[24:], hop.AsSlice())
	return cat(eth(0x86dd), ip, srh, tcp, payload)
}
