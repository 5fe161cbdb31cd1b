package tracegen

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// EvasionRules is the one rule the evasion capture is scanned with.
const EvasionRules = `alert tcp any any -> any 80 (msg:"evil payload"; content:"evil-payload"; sid:1;)` + "\n"

// EvasionPayload is the request each case carries to port 80, in its own
// way.
const EvasionPayload = "GET /evil-payload HTTP/1.0\r\n\r\n"

// An EvasionCase is one way of sending EvasionPayload, from its own
// client address, and the alerts the IDS raises for it, in order: the
// rule's SID 1, or 0 for the IDS's own alert on overlapping bytes that
// differ.
type EvasionCase struct {
	Name   string
	Client netip.Addr
	Want   []int
	Why    string // why Want is right, as docs/SECURITY.md says
}

// evasion builds a capture of one link type, one TCP connection per
// case.
type evasion struct {
	link   layers.LinkType
	t      time.Time
	frames [][]byte
	times  []time.Time
	cases  []EvasionCase
}

// pcap writes the capture.
func (e *evasion) pcap() ([]byte, error) {
	var buf bytes.Buffer
	w := pcapgo.NewWriterNanos(&buf)
	if err := w.WriteFileHeader(1<<18, e.link); err != nil {
		return nil, err
	}
	for i, f := range e.frames {
		if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: e.times[i], CaptureLength: len(f), Length: len(f)}, f); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

var (
	evServer4 = netip.MustParseAddr("192.0.2.80")
	evServer6 = netip.MustParseAddr("2001:db8::80")
	macA      = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0a}
	macB      = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0b}
)

// Evasions returns the evasion capture (pcap, Ethernet) and its cases.
func Evasions() ([]byte, []EvasionCase, error) {
	e := &evasion{link: layers.LinkTypeEthernet, t: epoch}
	p := []byte(EvasionPayload)
	at := strings.Index(EvasionPayload, "evil-payload")
	good := bytes.Replace(p, []byte("evil"), []byte("good"), 1)

	e.conn("plain", false, []int{1}, "the request in one segment", func(c *evConn) { c.data(0, p) })
	e.conn("tiny segments", false, []int{1}, "one byte per segment, reassembled", func(c *evConn) {
		for i := range p {
			c.data(i, p[i:i+1])
		}
	})
	e.conn("out of order", false, []int{1}, "4-byte segments in reverse order, held in the window until the first comes", func(c *evConn) {
		for i := (len(p) - 1) / 4 * 4; i >= 0; i -= 4 {
			c.data(i, p[i:min(len(p), i+4)])
		}
	})
	e.conn("a lost segment retransmitted late", false, []int{1},
		"the first 10 bytes are lost and come again after 100 KB more, beyond the in-state window: the reorder pool holds what follows", func(c *evConn) {
			rest := append(append([]byte(nil), p[10:]...), bytes.Repeat([]byte("filler. "), 100_000/8)...)
			for i := 0; i < len(rest); i += 1400 {
				c.data(10+i, rest[i:min(len(rest), i+1400)])
			}
			c.data(0, p[:10])
		})
	e.conn("overlapping segments, the first copy carries it", false, []int{0, 1},
		"ahead of a hole, the payload, then a copy with other bytes: the first stands (as in Linux, for a copy of the same extent), and the overlap alerts", func(c *evConn) {
			c.data(at, p[at:])
			c.data(at, good[at:])
			c.data(0, p[:at])
		})
	e.conn("overlapping segments, a later copy carries it", false, []int{0},
		"ahead of a hole, other bytes, then the payload over them: the first copy stands, so no rule matches; the overlap alerts", func(c *evConn) {
			c.data(at, good[at:])
			c.data(at, p[at:])
			c.data(0, p[:at])
		})
	e.conn("overlapping segments, a later longer copy from the same start", false, []int{0},
		"Linux keeps a later segment that starts where an earlier one did and covers it: the host reads the payload, the IDS the first copy; only the overlap's alert tells", func(c *evConn) {
			c.data(at, good[at:at+9])
			c.data(at, p[at:])
			c.data(0, p[:at])
		})
	e.conn("a SYN in the middle", false, []int{1}, "a SYN at another sequence number between the halves: a host discards it, so does the IDS", func(c *evConn) {
		c.data(0, p[:at+4])
		c.raw(0, layers.TCP{SYN: true, Seq: 777}, nil)
		c.data(at+4, p[at+4:])
	})
	e.conn("a RST off the expected sequence number", false, []int{1}, "a RST inside the window but not at its start: a host answers with a challenge ACK and goes on (RFC 5961), so does the IDS", func(c *evConn) {
		c.data(0, p[:at+4])
		c.raw(0, layers.TCP{RST: true, ACK: true, Seq: c.seq[0] + uint32(at+4) + 100}, nil)
		c.data(at+4, p[at+4:])
	})
	e.conn("a RST at the expected sequence number, then the rest", false, []int{0, 1},
		"a RST a host may not have taken (a bad checksum, a TTL too short to reach it): the connection lingers, the rest is scanned in its stream, and the data after a RST alerts", func(c *evConn) {
			c.data(0, p[:at+4])
			c.raw(0, layers.TCP{RST: true, ACK: true, Seq: c.seq[0] + uint32(at+4), Ack: c.seq[1]}, nil)
			c.data(at+4, p[at+4:])
		})
	e.conn("urgent data", false, []int{0, 1}, "the request marked urgent: Linux reads one byte out of band, other hosts in the stream; the IDS scans it in the stream and alerts on the urgency", func(c *evConn) {
		c.emit(c.packet(0, layers.TCP{ACK: true, PSH: true, URG: true, Urgent: 5, Seq: c.seq[0], Ack: c.seq[1]}, p))
	})
	// evil is where the payload's "evil" lies in the segment's IP
	// payload (after the 20-byte TCP header).
	evil := 20 + at
	e.conn("IPv4 fragments", false, []int{1}, "one segment in 8-byte fragments", func(c *evConn) {
		c.fragments(c.segment(0, p), 8, false, nil)
	})
	e.conn("IPv4 fragments, reversed", false, []int{1}, "the same fragments, last first", func(c *evConn) {
		c.fragments(c.segment(0, p), 8, true, nil)
	})
	e.conn("IPv4 fragments, a later duplicate with other bytes", false, []int{0, 1},
		"a fragment inside bytes held is a duplicate: dropped, the first bytes stand (Linux); the overlap alerts", func(c *evConn) {
			c.fragments(c.segment(0, p), 16, false, func(f evFrag, _ []byte) []evFrag {
				if f.Off <= evil && evil < f.Off+len(f.Data) {
					return []evFrag{f, {f.Off, bytes.Replace(f.Data, []byte("evil"), []byte("good"), 1)}}
				}
				return []evFrag{f}
			})
		})
	e.conn("IPv4 fragments, a partial overlap with other bytes", false, []int{0},
		"a fragment overlapping another in part discards the datagram (Linux): nothing is delivered, and the overlap alerts", func(c *evConn) {
			c.fragments(c.segment(0, p), 16, false, func(f evFrag, all []byte) []evFrag {
				if f.Off == 16 { // then 16 bytes from 24: 8 of them other bytes over this one's second half
					x := append([]byte("XXXXXXXX"), all[32:40]...)
					return []evFrag{f, {24, x}}
				}
				return []evFrag{f}
			})
		})
	e.conn("IPv6 fragments", true, []int{1}, "one segment in IPv6 fragments of 8 bytes after the first (which must hold the whole TCP header, RFC 8200)", func(c *evConn) {
		c.fragments(c.segment(0, p), 8, false, func(f evFrag, all []byte) []evFrag {
			switch f.Off {
			case 0:
				return []evFrag{{0, all[:24]}}
			case 8, 16:
				return nil
			}
			return []evFrag{f}
		})
	})
	e.conn("IPv6 fragments, overlapping with other bytes", true, []int{0},
		"IPv6 fragments that overlap discard the datagram (RFC 5722): nothing is delivered, and the overlap alerts", func(c *evConn) {
			c.fragments(c.segment(0, p), 16, false, func(f evFrag, all []byte) []evFrag {
				switch f.Off {
				case 0: // the whole TCP header in the first; then 16 bytes from 24, 8 of them other bytes over its end
					return []evFrag{{0, all[:32]}, {24, append([]byte("XXXXXXXX"), all[32:40]...)}}
				case 16:
					return nil
				}
				return []evFrag{f}
			})
		})
	for _, h := range []struct {
		name string
		ext  []byte // type, then the header with its next-header byte
	}{
		{"hop-by-hop options", []byte{0, 0, 0, 1, 4, 0, 0, 0, 0}},
		{"a routing header (segments left 0)", []byte{43, 0, 0, 253, 0, 0, 0, 0, 0}},
		{"destination options", []byte{60, 0, 0, 1, 4, 0, 0, 0, 0}},
		{"an atomic fragment header", []byte{44, 0, 0, 0, 0, 0, 0, 0, 9}},
		{"AH", append([]byte{51, 0, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1}, make([]byte, 12)...)}, // SPI 1, sequence 1, a 12-byte ICV
	} {
		why := "the extension-header chain walked to TCP"
		if h.ext[0] == 51 {
			why += " (a host without the security association drops it; the IDS alerts anyway)"
		}
		e.conn("IPv6 behind "+h.name, true, []int{1}, why, func(c *evConn) {
			c.emit(insertExt(c.segment(0, p), h.ext))
		})
	}
	e.conn("IPv6 behind a chain of four", true, []int{1}, "hop-by-hop, destination options, routing, destination options, walked in turn", func(c *evConn) {
		seg := c.segment(0, p)
		for _, x := range [][]byte{{60, 0, 0, 1, 4, 0, 0, 0, 0}, {43, 0, 0, 253, 0, 0, 0, 0, 0}, {60, 0, 0, 1, 4, 0, 0, 0, 0}, {0, 0, 0, 1, 4, 0, 0, 0, 0}} {
			seg = insertExt(seg, x)
		}
		c.emit(seg)
	})
	e.conn("802.1Q VLAN", false, []int{1}, "the frames tagged, VLAN 100", func(c *evConn) {
		c.vlans = []uint16{100}
		c.data(0, p)
	})
	e.conn("QinQ", false, []int{1}, "the frames tagged twice, 802.1ad 200 outside 802.1Q 100", func(c *evConn) {
		c.vlans = []uint16{200, 100}
		c.data(0, p)
	})
	e.connOpen("TCP Fast Open, split between the SYN and the next segment", false, p[:at+2], []int{1},
		"the SYN carries the payload's first part, which the SYN-ACK acknowledges: the stream begins with it, and the rest completes the match", func(c *evConn) {
			c.data(at+2, p[at+2:])
		})
	b, err := e.pcap()
	return b, e.cases, err
}

// evConn is one case's connection: client side 0, server side 1.
type evConn struct {
	e    *evasion
	v6   bool
	addr [2]netip.Addr
	port [2]uint16
	seq  [2]uint32 // each side's first data byte
	id   uint16
	// How its packets are framed (Ethernet: VLAN tags, or one of the
	// encapsulations), and the tunnel around them.
	vlans  []uint16
	encap  func(ip []byte) (ethertype uint16, payload []byte) // on Ethernet, instead of the IP ethertype
	tunnel func(ip []byte) []byte
}

func (e *evasion) conn(name string, v6 bool, want []int, why string, body func(*evConn)) {
	e.connOpen(name, v6, nil, want, why, body)
}

// connOpen is conn with synData on the client's SYN (TCP Fast Open),
// which the server's SYN-ACK acknowledges: the body's data goes on from
// offset len(synData).
func (e *evasion) connOpen(name string, v6 bool, synData []byte, want []int, why string, body func(*evConn)) {
	n := len(e.cases) + 1
	c := &evConn{e: e, v6: v6, port: [2]uint16{40000 + uint16(n), 80}, seq: [2]uint32{1001, 5001}, id: uint16(n)}
	if v6 {
		c.addr = [2]netip.Addr{netip.AddrFrom16([16]byte{0: 0xfd, 15: byte(n)}), evServer6}
	} else {
		c.addr = [2]netip.Addr{netip.AddrFrom4([4]byte{10, 1, 0, byte(n)}), evServer4}
	}
	e.cases = append(e.cases, EvasionCase{Name: name, Client: c.addr[0], Want: want, Why: why})
	syn := layers.TCP{SYN: true, Seq: c.seq[0] - 1}
	if synData != nil {
		// The Fast Open option with a cookie the server gave before.
		syn.Options = []layers.TCPOption{{OptionType: layers.TCPOptionKind(34), OptionLength: 10, OptionData: []byte{0x5a, 0x17, 0xc0, 0x0c, 0x1e, 0x42, 0x99, 0x01}}}
	}
	c.raw(0, syn, synData)
	after := c.seq[0] + uint32(len(synData))
	c.raw(1, layers.TCP{SYN: true, ACK: true, Seq: c.seq[1] - 1, Ack: after}, nil)
	c.raw(0, layers.TCP{ACK: true, Seq: after, Ack: c.seq[1]}, nil)
	body(c)
}

// segment is the client's TCP segment carrying b at offset off of its
// stream, as an IP packet.
func (c *evConn) segment(off int, b []byte) []byte {
	return c.packet(0, layers.TCP{ACK: true, PSH: true, Seq: c.seq[0] + uint32(off), Ack: c.seq[1]}, b)
}

// data sends the client's bytes b at offset off of its stream.
func (c *evConn) data(off int, b []byte) { c.emit(c.segment(off, b)) }

// raw sends a segment from side with the TCP header t.
func (c *evConn) raw(side int, t layers.TCP, b []byte) { c.emit(c.packet(side, t, b)) }

// packet is an IP packet from side carrying TCP header t and payload b.
func (c *evConn) packet(side int, t layers.TCP, b []byte) []byte {
	t.SrcPort, t.DstPort, t.Window = layers.TCPPort(c.port[side]), layers.TCPPort(c.port[1-side]), 65535
	src, dst := c.addr[side].AsSlice(), c.addr[1-side].AsSlice()
	var ip gopacket.NetworkLayer
	if c.v6 {
		ip = &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: src, DstIP: dst}
	} else {
		ip = &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src, DstIP: dst, Id: c.id}
	}
	t.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, serializeOptions, ip.(gopacket.SerializableLayer), &t, gopacket.Payload(b)); err != nil {
		panic(err) // fixed layers: a failure is a bug here
	}
	return append([]byte(nil), buf.Bytes()...)
}

// emit frames an IP packet in the capture's link type (on Ethernet, in
// the case's VLAN tags or encapsulation), in its tunnel if any, and adds
// it.
func (c *evConn) emit(ip []byte) {
	if c.tunnel != nil {
		ip = c.tunnel(ip)
	}
	v6 := ip[0]>>4 == 6
	typ := uint16(0x0800)
	if v6 {
		typ = 0x86dd
	}
	var f []byte
	switch c.e.link {
	case layers.LinkTypeLinuxSLL:
		// Packet type (0 to us, 4 sent by us), ARPHRD_ETHER, the address.
		f = binary.BigEndian.AppendUint16(nil, uint16(4*c.side(ip)))
		f = append(f, 0, 1, 0, 6)
		f = append(append(f, macA...), 0, 0)
		f = binary.BigEndian.AppendUint16(f, typ)
	case layers.LinkTypeLinuxSLL2:
		f = binary.BigEndian.AppendUint16(nil, typ)
		f = append(f, 0, 0, 0, 0, 0, 2, 0, 1, byte(4*c.side(ip)), 6) // reserved, interface 2, ARPHRD_ETHER, packet type, address length
		f = append(append(f, macA...), 0, 0)
	case 239: // NFLOG: a header, the packet header attribute, the payload attribute
		fam := byte(2)
		if v6 {
			fam = 10
		}
		f = []byte{fam, 0, 0, 5}
		f = append(f, 8, 0, 1, 0) // NFULA_PACKET_HDR, 8 bytes
		f = binary.BigEndian.AppendUint16(f, typ)
		f = append(f, 3, 0) // hook NF_INET_FORWARD
		f = binary.LittleEndian.AppendUint16(f, uint16(4+len(ip)))
		f = append(f, 9, 0) // NFULA_PAYLOAD
		f = append(f, ip...)
		for len(f)%4 != 0 {
			f = append(f, 0)
		}
		ip = nil
	default: // Ethernet
		f = append(append([]byte(nil), macB...), macA...)
		tpid := []uint16{0x8100}
		if len(c.vlans) == 2 {
			tpid = []uint16{0x88a8, 0x8100}
		}
		for i, v := range c.vlans {
			f = binary.BigEndian.AppendUint16(f, tpid[i])
			f = binary.BigEndian.AppendUint16(f, v)
		}
		if c.encap != nil {
			typ, ip = c.encap(ip)
		}
		f = binary.BigEndian.AppendUint16(f, typ)
	}
	c.e.frames = append(c.e.frames, append(f, ip...))
	c.e.t = c.e.t.Add(time.Millisecond)
	c.e.times = append(c.e.times, c.e.t)
}

// side is 1 for a packet the client sent, 0 for one it received (its
// source address is the server's or a tunnel's).
func (c *evConn) side(ip []byte) int {
	src := ip[12:16]
	if ip[0]>>4 == 6 {
		src = ip[8:24]
	}
	if a, ok := netip.AddrFromSlice(src); ok && a == c.addr[0] {
		return 1
	}
	return 0
}

// An evFrag is a fragment's bytes at Off in its datagram's payload.
type evFrag struct {
	Off  int
	Data []byte
}

// fragments sends IP packet ip (an IPv6 one without extension headers)
// in fragments of size bytes (a multiple of 8), reversed if asked; alter,
// if set, replaces each by the fragments it returns, given all the
// datagram's payload.
func (c *evConn) fragments(ip []byte, size int, reversed bool, alter func(f evFrag, all []byte) []evFrag) {
	hl := 20
	if c.v6 {
		hl = 40
	}
	hdr, payload := ip[:hl], ip[hl:]
	var out []evFrag
	for off := 0; off < len(payload); off += size {
		f := evFrag{off, payload[off:min(len(payload), off+size)]}
		if alter == nil {
			out = append(out, f)
		} else {
			out = append(out, alter(f, payload)...)
		}
	}
	if reversed {
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
	}
	for _, f := range out {
		more := f.Off+len(f.Data) < len(payload)
		h := append([]byte(nil), hdr...)
		if c.v6 {
			binary.BigEndian.PutUint16(h[4:], uint16(8+len(f.Data)))
			h[6] = 44
			v := uint16(f.Off/8) << 3
			if more {
				v |= 1
			}
			fh := []byte{6, 0, 0, 0, 0, 0, 0, byte(c.id)}
			binary.BigEndian.PutUint16(fh[2:], v)
			c.emit(append(append(h, fh...), f.Data...))
			continue
		}
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(f.Data)))
		v := uint16(f.Off / 8)
		if more {
			v |= 1 << 13
		}
		binary.BigEndian.PutUint16(h[6:], v)
		h[10], h[11] = 0, 0
		binary.BigEndian.PutUint16(h[10:], ^onesSum(h))
		c.emit(append(h, f.Data...))
	}
}

// insertExt puts extension header x (its type, then its bytes with the
// next-header byte to fill) right after IPv6 packet ip's fixed header.
func insertExt(ip []byte, x []byte) []byte {
	h := append([]byte(nil), ip[:40]...)
	ext := append([]byte(nil), x[1:]...)
	ext[0] = h[6]
	h[6] = x[0]
	binary.BigEndian.PutUint16(h[4:], uint16(len(ip)-40+len(ext)))
	return append(append(h, ext...), ip[40:]...)
}

// onesSum is the one's complement sum of b's 16-bit words.
func onesSum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// String formats the case for a table.
func (c EvasionCase) String() string {
	return fmt.Sprintf("%s (%s): %v", c.Name, c.Client, c.Want)
}
