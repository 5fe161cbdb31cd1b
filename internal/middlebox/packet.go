// Package middlebox holds LightBox's stateful middleboxes — a passive flow
// monitor and asset detector, and a stateful firewall — written against a
// StateTable, so that each runs unchanged on the flow-state manager (sealed
// states, bounded trusted memory), on a plain map (the baseline), or on a
// strawman that seals and opens every state at every packet.
package middlebox

import (
	"net/netip"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/torbento/bento/internal/flowstate"
)

// Meta is what a middlebox needs of a packet, decoded without allocation.
type Meta struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Proto            uint8 // 6 TCP, 17 UDP, other IP protocols
	TTL              uint8
	Flags            uint8 // TCP flags (FIN=1 SYN=2 RST=4 PSH=8 ACK=16)
	Seq, Ack         uint32
	Window           uint16
	Payload          []byte
	Len              int // bytes on the wire
}

// TCP flag bits.
const (
	FIN = 1 << 0
	SYN = 1 << 1
	RST = 1 << 2
	PSH = 1 << 3
	ACK = 1 << 4
)

// Key returns the flow key in a canonical direction (the lower endpoint
// first) and whether this packet travels in the reverse direction, so both
// directions of a connection share one state.
func (m *Meta) Key() (flowstate.Key, bool) {
	a := flowstate.MakeKey(m.Src, m.Dst, m.SrcPort, m.DstPort, m.Proto)
	r := a.Reverse()
	if string(r[:]) < string(a[:]) {
		return r, true
	}
	return a, false
}

// Decoder decodes Ethernet, IPv4, IPv6, TCP and UDP headers, reusing its
// layers for every packet.
type Decoder struct {
	eth     layers.Ethernet
	ip4     layers.IPv4
	ip6     layers.IPv6
	tcp     layers.TCP
	udp     layers.UDP
	payload gopacket.Payload
	parser  *gopacket.DecodingLayerParser
	decoded []gopacket.LayerType
}

// NewDecoder returns a decoder for captures of the given link type
// (Ethernet or raw IP).
func NewDecoder(link layers.LinkType) *Decoder {
	d := &Decoder{}
	first := layers.LayerTypeEthernet
	switch link {
	case layers.LinkTypeRaw, layers.LinkTypeIPv4:
		first = layers.LayerTypeIPv4
	case layers.LinkTypeIPv6:
		first = layers.LayerTypeIPv6
	}
	d.parser = gopacket.NewDecodingLayerParser(first, &d.eth, &d.ip4, &d.ip6, &d.tcp, &d.udp, &d.payload)
	d.parser.IgnoreUnsupported = true
	return d
}

// Decode fills m from data. It reports false for packets that are not IP.
func (d *Decoder) Decode(data []byte, m *Meta) bool {
	*m = Meta{Len: len(data)}
	_ = d.parser.DecodeLayers(data, &d.decoded)
	isIP := false
	for _, t := range d.decoded {
		switch t {
		case layers.LayerTypeIPv4:
			isIP = true
			m.Src, _ = netip.AddrFromSlice(d.ip4.SrcIP.To4())
			m.Dst, _ = netip.AddrFromSlice(d.ip4.DstIP.To4())
			m.Proto, m.TTL = uint8(d.ip4.Protocol), d.ip4.TTL
		case layers.LayerTypeIPv6:
			isIP = true
			m.Src, _ = netip.AddrFromSlice(d.ip6.SrcIP)
			m.Dst, _ = netip.AddrFromSlice(d.ip6.DstIP)
			m.Proto, m.TTL = uint8(d.ip6.NextHeader), d.ip6.HopLimit
		case layers.LayerTypeTCP:
			t := &d.tcp
			m.SrcPort, m.DstPort, m.Seq, m.Ack, m.Window = uint16(t.SrcPort), uint16(t.DstPort), t.Seq, t.Ack, t.Window
			m.Proto = 6
			if t.FIN {
				m.Flags |= FIN
			}
			if t.SYN {
				m.Flags |= SYN
			}
			if t.RST {
				m.Flags |= RST
			}
			if t.PSH {
				m.Flags |= PSH
			}
			if t.ACK {
				m.Flags |= ACK
			}
			m.Payload = t.Payload
		case layers.LayerTypeUDP:
			m.SrcPort, m.DstPort, m.Proto = uint16(d.udp.SrcPort), uint16(d.udp.DstPort), 17
			m.Payload = d.udp.Payload
		}
	}
	return isIP && m.Src.IsValid() && m.Dst.IsValid()
}
