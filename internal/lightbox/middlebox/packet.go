// Package middlebox holds LightBox's stateful middleboxes — a passive flow
// monitor and asset detector, and a stateful firewall — written against a
// StateTable, so that each runs unchanged on the flow-state manager (sealed
// states, bounded trusted memory), on a plain map (the baseline), or on a
// strawman that seals and opens every state at every packet.
package middlebox

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/torbento/bento/internal/lightbox/defrag"
	"github.com/torbento/bento/internal/lightbox/flowstate"
)

// Meta is what a middlebox needs of a packet, decoded without allocation.
type Meta struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Proto            uint8 // 6 TCP, 17 UDP, other IP protocols
	TTL              uint8
	Flags            uint8 // TCP flags (FIN=1 SYN=2 RST=4 PSH=8 ACK=16 URG=32)
	Seq, Ack         uint32
	Window           uint16
	Payload          []byte
	Len              int  // bytes on the wire (of a reassembled datagram: its bytes, with this packet's headers)
	Reassembled      bool // a datagram made whole from fragments, on its last fragment
	// FragConflict: this fragment overlapped bytes of its datagram
	// already held with different bytes, which a host and a middlebox
	// may resolve differently (an evasion attempt, or a broken path). It
	// is set whatever the fragment's Result; the IDS alerts on it.
	FragConflict bool
	// FragBound: a datagram in progress was dropped to stay within the
	// reassembler's bounds (which a host with more memory might have
	// reassembled); the IDS alerts on it.
	FragBound bool
}

// TCP flag bits.
const (
	FIN = 1 << 0
	SYN = 1 << 1
	RST = 1 << 2
	PSH = 1 << 3
	ACK = 1 << 4
	URG = 1 << 5
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

// Result is what Decode made of a packet.
type Result uint8

// What a packet decodes to. Only Decoded packets are a flow's: the others
// are counted (DecodeStats), never turned into flows with made-up ports.
const (
	Decoded     Result = iota // an IP packet, with its TCP or UDP header when it names one
	NotIP                     // no IP header in it: ARP, STP, LLDP, PPP control, ...
	Fragment                  // a piece of a fragmented IP datagram, held for reassembly (or discarded: see the reassembler's Stats)
	Malformed                 // a header cut short or out of range, at any layer
	BadChecksum               // an IPv4 header, TCP or UDP checksum that is wrong, when the Decoder verifies them: a host drops the packet
)

func (r Result) String() string {
	switch r {
	case Decoded:
		return "decoded"
	case NotIP:
		return "not IP"
	case Fragment:
		return "IP fragment (held for reassembly)"
	case BadChecksum:
		return "bad checksum (a host drops it)"
	}
	return "malformed or truncated header"
}

// DecodeStats counts the packets a Decoder saw, by Result, and what its
// reassembler made of the fragments.
type DecodeStats struct {
	Decoded, NotIP, Fragments, Malformed uint64
	ShortFirst                           uint64 // IPv6 first fragments without their whole TCP or UDP header, dropped (counted as malformed too)
	BadChecksum                          uint64 // packets with a wrong checksum, dropped (when verifying)
	Offload                              bool   // ChecksumsAuto turned verification off: the capture's first packets showed checksum offload
	Defrag                               defrag.Stats
}

func (s DecodeStats) String() string {
	ck := ""
	if s.BadChecksum > 0 {
		ck = fmt.Sprintf(", %d with a bad checksum", s.BadChecksum)
	}
	if s.Offload {
		ck += " (checksums not verified: the capture's first packets show checksum offload)"
	}
	return fmt.Sprintf("decode: %d IP packets (%d reassembled), %d not IP, %d IP fragments not completing a datagram, %d malformed%s; %v",
		s.Decoded, s.Defrag.Reassembled, s.NotIP, s.Fragments, s.Malformed, ck, s.Defrag)
}

// Decoder walks a packet's headers down to its transport header, reusing
// its layers for every packet: on Ethernet, 802.1Q and QinQ tags, MPLS
// label stacks, PPPoE sessions and LLC/SNAP; IPv4 and IPv6 with IPv6's
// extension headers; GRE and IP-in-IP (IPv4 or IPv6 in either) are
// decapsulated, so the middleboxes see the inner flow; then TCP or UDP.
// IPv4 and IPv6 fragments are reassembled (package defrag, its default
// bounds and Linux's overlap policy unless Defrag is replaced before the
// first packet): each fragment but the one completing its datagram is a
// Fragment, and that one decodes as the whole datagram, its transport
// header and payload included: for IPv6, the first fragment's next
// header and the extension headers after the fragment header (routing,
// destination options, AH) are walked to the transport header. A
// reassembled datagram carrying a tunnel (GRE, IP-in-IP) is decoded at
// its outer IP header only.
type Decoder struct {
	eth     layers.Ethernet
	dot1q   layers.Dot1Q
	llc     layers.LLC
	snap    layers.SNAP
	sll     layers.LinuxSLL
	sll2    layers.LinuxSLL2
	nflog   nflogLayer
	mpls    mplsLayer
	pppoe   pppoeLayer
	gre     layers.GRE
	ip4     layers.IPv4
	ip6     layers.IPv6
	ext     [5]ip6ExtLayer
	tcp     layers.TCP
	udp     layers.UDP
	payload gopacket.Payload
	parser  *gopacket.DecodingLayerParser
	parser6 *gopacket.DecodingLayerParser // raw IP whose version is 6
	decoded []gopacket.LayerType
	frag    defrag.Fragment

	Defrag *defrag.Reassembler
	Stats  DecodeStats
	// Checksums says whether to verify checksums (set before the first
	// packet); off unless set.
	Checksums ChecksumMode
	ckChecked int
	ckBad     int
	ip4Bad    bool       // the innermost IPv4 header's checksum is wrong
	finalDst  netip.Addr // the innermost IPv6 routing header's final destination, if segments are left
}

// ChecksumMode says whether a Decoder verifies the IPv4 header, TCP and
// UDP checksums. A host drops a packet whose checksum is wrong, so a
// middlebox that would see what the host sees drops it too (else a
// packet with a bad checksum is the classic way to show an IDS bytes the
// host never reads). But a capture taken on a host with checksum offload
// holds the packets it sent with checksums its card was to fill in.
type ChecksumMode uint8

// Checksum modes.
const (
	ChecksumsOff  ChecksumMode = iota
	ChecksumsOn                // a packet with a wrong checksum is BadChecksum
	ChecksumsAuto              // as On, but if more than 10% of the first 100 checksums are wrong (offload), Off from then on; the first 100 are not dropped
)

// ParseChecksumMode reads "auto", "on" or "off".
func ParseChecksumMode(s string) (ChecksumMode, error) {
	switch s {
	case "auto", "":
		return ChecksumsAuto, nil
	case "on":
		return ChecksumsOn, nil
	case "off":
		return ChecksumsOff, nil
	}
	return ChecksumsAuto, fmt.Errorf("checksum mode %q: want auto, on or off", s)
}

// ckLearn is how many checksums ChecksumsAuto sees before it decides.
const ckLearn = 100

// checksumOK reports whether a packet whose transport checksum is ok (or
// not), and whose innermost IPv4 header checksum is d.ip4Bad, passes.
func (d *Decoder) checksumOK(ok bool) bool {
	ok = ok && !d.ip4Bad
	switch d.Checksums {
	case ChecksumsOn:
		return ok
	case ChecksumsAuto:
		if d.Stats.Offload {
			return true
		}
		d.ckChecked++
		if !ok {
			d.ckBad++
		}
		if d.ckChecked < ckLearn {
			return true
		}
		if d.ckChecked == ckLearn && 10*d.ckBad > d.ckChecked {
			d.Stats.Offload = true
			return true
		}
		return ok
	}
	return true
}

// strict reports whether a wrong checksum drops the packet now.
func (d *Decoder) strict() bool {
	return d.Checksums == ChecksumsOn || (d.Checksums == ChecksumsAuto && !d.Stats.Offload && d.ckChecked >= ckLearn)
}

// transportSum checks a TCP or UDP checksum: proto's segment (header and
// payload, in two parts) between src and dst.
func transportSum(src, dst netip.Addr, proto uint8, hdr, payload []byte) bool {
	n := len(hdr) + len(payload)
	var sum uint32
	if src.Is4() {
		a, b := src.As4(), dst.As4()
		sum = ones(ones(0, a[:]), b[:]) + uint32(proto) + uint32(n)
	} else {
		a, b := src.As16(), dst.As16()
		sum = ones(ones(0, a[:]), b[:]) + uint32(n>>16) + uint32(n&0xffff) + uint32(proto)
	}
	if len(hdr)%2 != 0 { // TCP and UDP headers are even: never here
		return false
	}
	if proto == 17 && len(hdr) >= 8 && hdr[6] == 0 && hdr[7] == 0 {
		return src.Is4() // no checksum: allowed over IPv4, never over IPv6 (RFC 8200 §8.1)
	}
	sum = ones(ones(sum, hdr), payload)
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return sum == 0xffff
}

// ones adds b's 16-bit big-endian words (an odd last byte padded) to sum.
func ones(sum uint32, b []byte) uint32 {
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
		if sum > 0xffff_0000 {
			sum = sum&0xffff + sum>>16
		}
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}

// SupportedLinks names the capture link types a Decoder reads.
const SupportedLinks = "Ethernet (1), raw IP (12, 14, 101, 228, 229), Linux cooked (113, 276) and NFLOG (239)"

// NewDecoder returns a decoder for captures of the given link type, or an
// error naming the supported ones.
func NewDecoder(link layers.LinkType) (*Decoder, error) {
	d := &Decoder{Defrag: defrag.New(defrag.Config{})}
	var first gopacket.LayerType
	raw := false
	switch link {
	case layers.LinkTypeEthernet:
		first = layers.LayerTypeEthernet
	case layers.LinkTypeRaw, 12, 14, layers.LinkTypeIPv4:
		first, raw = layers.LayerTypeIPv4, true
	case layers.LinkTypeIPv6:
		first = layers.LayerTypeIPv6
	case layers.LinkTypeLinuxSLL:
		first = layers.LayerTypeLinuxSLL
	case layers.LinkTypeLinuxSLL2:
		first = layers.LayerTypeLinuxSLL2
	case 239:
		first = LayerTypeNFLOG
	default:
		return nil, fmt.Errorf("link type %d (%s) is not supported: LightBox reads %s", int(link), link, SupportedLinks)
	}
	for i, k := range []layers.IPProtocol{layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Routing,
		layers.IPProtocolIPv6Fragment, layers.IPProtocolIPv6Destination, layers.IPProtocolAH} {
		d.ext[i].kind = k
	}
	all := []gopacket.DecodingLayer{&d.eth, &d.dot1q, &d.llc, &d.snap, &d.sll, &d.sll2, &d.nflog, &d.mpls, &d.pppoe, &d.gre,
		&d.ip4, &d.ip6, &d.ext[0], &d.ext[1], &d.ext[2], &d.ext[3], &d.ext[4], &d.tcp, &d.udp, &d.payload}
	d.parser = gopacket.NewDecodingLayerParser(first, all...)
	d.parser.IgnoreUnsupported = true
	if raw {
		d.parser6 = gopacket.NewDecodingLayerParser(layers.LayerTypeIPv6, all...)
		d.parser6.IgnoreUnsupported = true
	}
	return d, nil
}

// Decode fills m from data, seen at now (the capture's time, which
// times out fragments). It reports false for packets that are not a
// flow's (see Result); DecodeResult says which. m's Payload may point into
// the Decoder's own buffer: it is valid until the next call.
func (d *Decoder) Decode(data []byte, now time.Time, m *Meta) bool {
	return d.DecodeResult(data, now, m) == Decoded
}

// DecodeResult fills m from data, seen at now, and says what the packet
// is, counting it in Stats.
func (d *Decoder) DecodeResult(data []byte, now time.Time, m *Meta) Result {
	r := d.decode(data, m)
	if r == Fragment {
		r = d.reassemble(data, now, m)
		d.Stats.Defrag = d.Defrag.Stats
	}
	switch r {
	case Decoded:
		d.Stats.Decoded++
	case NotIP:
		d.Stats.NotIP++
	case Fragment:
		d.Stats.Fragments++
	case BadChecksum:
		d.Stats.BadChecksum++
	default:
		d.Stats.Malformed++
	}
	return r
}

func (d *Decoder) decode(data []byte, m *Meta) Result {
	*m = Meta{Len: len(data)}
	d.ip4Bad = false
	p := d.parser
	if d.parser6 != nil && len(data) > 0 && data[0]>>4 == 6 {
		p = d.parser6
	}
	err := p.DecodeLayers(data, &d.decoded)
	isIP, frag, transport := false, false, false
	for _, t := range d.decoded {
		switch t {
		case layers.LayerTypeIPv4:
			// Each IP header (an outer one of a tunnel, then the inner)
			// starts over: the innermost is the flow's.
			isIP, transport = true, false
			d.finalDst = netip.Addr{}
			if d.Checksums != ChecksumsOff {
				sum := ones(0, d.ip4.Contents)
				for sum > 0xffff {
					sum = sum&0xffff + sum>>16
				}
				d.ip4Bad = sum != 0xffff
			}
			m.Src, _ = netip.AddrFromSlice(d.ip4.SrcIP.To4())
			m.Dst, _ = netip.AddrFromSlice(d.ip4.DstIP.To4())
			m.Proto, m.TTL = uint8(d.ip4.Protocol), d.ip4.TTL
			frag = d.ip4.Flags&layers.IPv4MoreFragments != 0 || d.ip4.FragOffset != 0
			if frag {
				d.frag = defrag.Fragment{
					Key:    defrag.Key{Src: m.Src, Dst: m.Dst, ID: uint32(d.ip4.Id), Proto: m.Proto},
					Offset: int(d.ip4.FragOffset) * 8, More: d.ip4.Flags&layers.IPv4MoreFragments != 0, Data: d.ip4.Payload,
				}
			}
		case layers.LayerTypeIPv6:
			isIP, transport, frag = true, false, false
			d.ip4Bad, d.finalDst = false, netip.Addr{}
			m.Src, _ = netip.AddrFromSlice(d.ip6.SrcIP)
			m.Dst, _ = netip.AddrFromSlice(d.ip6.DstIP)
			m.Proto, m.TTL = uint8(d.ip6.NextHeader), d.ip6.HopLimit
			if d.ip6.HopByHop != nil {
				m.Proto = uint8(d.ip6.HopByHop.NextHeader)
			}
		case layers.LayerTypeIPv6HopByHop, layers.LayerTypeIPv6Routing, layers.LayerTypeIPv6Fragment,
			layers.LayerTypeIPv6Destination, layers.LayerTypeIPSecAH:
			for i := range d.ext {
				if e := &d.ext[i]; e.kind.LayerType() == t {
					m.Proto = uint8(e.proto)
					if e.final.IsValid() {
						d.finalDst = e.final
					}
					if e.fragment && !frag {
						frag = true
						d.frag = defrag.Fragment{
							Key:  defrag.Key{Src: m.Src, Dst: m.Dst, ID: e.fragID},
							IPv6: true, Offset: e.fragOff, More: e.fragMore, Next: uint8(e.proto), Data: e.payload,
						}
					}
				}
			}
		case layers.LayerTypeTCP:
			transport = true
			d.fillTCP(m)
		case layers.LayerTypeUDP:
			transport = true
			d.fillUDP(m)
		}
	}
	switch {
	case !isIP && err != nil:
		return Malformed
	case !isIP:
		return NotIP
	case frag && d.ip4Bad && d.strict():
		return BadChecksum
	case frag:
		return Fragment
	case err != nil, !m.Src.IsValid(), !m.Dst.IsValid():
		return Malformed
	case (m.Proto == 6 || m.Proto == 17) && !transport:
		return Malformed // the IP header names a transport whose header is not there
	}
	if d.Checksums != ChecksumsOff && (m.Proto == 6 || m.Proto == 17) {
		hdr, payload := d.tcp.Contents, d.tcp.Payload
		if m.Proto == 17 {
			hdr, payload = d.udp.Contents, d.udp.Payload
		}
		if !d.checksumOK(transportSum(m.Src, d.pseudoDst(m.Dst), m.Proto, hdr, payload)) {
			return BadChecksum
		}
	}
	return Decoded
}

// pseudoDst is the destination in the transport checksum's
// pseudo-header: the routing header's final destination if the packet
// has one with segments left, else dst.
func (d *Decoder) pseudoDst(dst netip.Addr) netip.Addr {
	if d.finalDst.IsValid() {
		return d.finalDst
	}
	return dst
}

// fillTCP copies the TCP layer into m.
func (d *Decoder) fillTCP(m *Meta) {
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
	if t.URG {
		m.Flags |= URG
	}
	m.Payload = t.Payload
}

// fillUDP copies the UDP layer into m.
func (d *Decoder) fillUDP(m *Meta) {
	m.SrcPort, m.DstPort, m.Proto = uint16(d.udp.SrcPort), uint16(d.udp.DstPort), 17
	m.Payload = d.udp.Payload
}

// reassemble gives the fragment decode found to the reassembler; on the
// fragment that completes its datagram, m becomes the whole datagram.
func (d *Decoder) reassemble(data []byte, now time.Time, m *Meta) Result {
	f := &d.frag
	if !m.Src.IsValid() || !m.Dst.IsValid() {
		return Malformed
	}
	if f.IPv6 && f.Offset == 0 && !d.transportWhole(f.Next, f.Data) {
		// RFC 8200 §4.5, and Linux since 5.16: a first fragment without
		// the whole upper-layer header is dropped (its datagram kept).
		d.Stats.ShortFirst++
		return Malformed
	}
	res := d.Defrag.Add(f, now)
	m.FragConflict, m.FragBound = res.Conflict, res.Bound
	if res.Outcome != defrag.Complete {
		return Fragment
	}
	proto, dg := m.Proto, res.Data
	if f.IPv6 {
		// The datagram's headers after the fragment header, from its
		// first fragment's next header on.
		var ok bool
		if proto, dg, ok = d.walkIPv6(res.Next, dg); !ok {
			return Malformed
		}
	}
	*m = Meta{Src: m.Src, Dst: m.Dst, TTL: m.TTL, Proto: proto, Reassembled: true, FragConflict: res.Conflict, FragBound: res.Bound,
		Len: len(data) - len(f.Data) + len(res.Data)}
	switch proto {
	case 6:
		if d.tcp.DecodeFromBytes(dg, gopacket.NilDecodeFeedback) != nil {
			return Malformed
		}
		d.fillTCP(m)
	case 17:
		if d.udp.DecodeFromBytes(dg, gopacket.NilDecodeFeedback) != nil {
			return Malformed
		}
		d.fillUDP(m)
	default:
		m.Payload = dg
	}
	if d.Checksums != ChecksumsOff && (proto == 6 || proto == 17) {
		d.ip4Bad = false // the fragment's header was checked as it came
		if !d.checksumOK(transportSum(m.Src, d.pseudoDst(m.Dst), proto, dg[:len(dg)-len(m.Payload)], m.Payload)) {
			return BadChecksum
		}
	}
	return Decoded
}

// transportWhole reports whether an IPv6 first fragment's bytes (from the
// fragment header's next header on) hold its extension headers and the
// upper-layer header after them, as Linux judges it
// (ipv6frag_thdr_truncated): 20 bytes of TCP, 8 of UDP or ICMPv6, 1 of
// anything else; a chain it cannot walk is not judged truncated.
func (d *Decoder) transportWhole(next uint8, b []byte) bool {
	proto, rest, ok := d.walkIPv6(next, b)
	if !ok {
		return true
	}
	switch proto {
	case 6:
		return len(rest) >= 20
	case 17, 58:
		return len(rest) >= 8
	}
	return len(rest) >= 1
}

// walkIPv6 walks the extension headers at the start of a reassembled IPv6
// datagram's fragmentable part (routing, destination options, AH) from
// next, and returns the protocol after them and its bytes. A hop-by-hop
// or a second fragment header there is out of place (RFC 8200 §4.1), and
// so is a chain that does not end within the datagram: not ok. There is
// no limit on the chain's length but the datagram's: each header takes 8
// bytes or more.
func (d *Decoder) walkIPv6(next uint8, b []byte) (uint8, []byte, bool) {
	for {
		var e *ip6ExtLayer
		switch layers.IPProtocol(next) {
		case layers.IPProtocolIPv6Routing:
			e = &d.ext[1]
		case layers.IPProtocolIPv6Destination:
			e = &d.ext[3]
		case layers.IPProtocolAH:
			e = &d.ext[4]
		case layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Fragment:
			return 0, nil, false
		default:
			return next, b, true
		}
		if e.DecodeFromBytes(b, gopacket.NilDecodeFeedback) != nil {
			return 0, nil, false
		}
		if e.final.IsValid() {
			d.finalDst = e.final
		}
		next, b = uint8(e.proto), e.payload
	}
}
