package middlebox

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// The decoding layers gopacket offers only as (allocating) decoder
// functions, or not at all, written as DecodingLayers so the Decoder walks
// them without allocation: an MPLS label stack, a PPPoE session header
// with its PPP protocol, the IPv6 extension headers after hop-by-hop
// (routing, fragment, destination options, AH), and NFLOG's TLVs.

var errShort = errors.New("header cut short")

// shim is what the decoding layers below share: the bytes after their
// header, and the layer those bytes are.
type shim struct {
	payload []byte
	next    gopacket.LayerType
}

func (l *shim) NextLayerType() gopacket.LayerType { return l.next }
func (l *shim) LayerPayload() []byte              { return l.payload }

// short reports (and tells the parser) that data is shorter than n.
func short(data []byte, n int, df gopacket.DecodeFeedback) bool {
	if len(data) < n {
		df.SetTruncated()
		return true
	}
	return false
}

// maxLabels bounds an MPLS label stack (real stacks hold a few).
const maxLabels = 16

// mplsLayer is an MPLS label stack; what follows the bottom label is IPv4
// or IPv6 by its version nibble (MPLS carries no type), anything else is
// not decoded.
type mplsLayer struct{ shim }

func (l *mplsLayer) DecodeFromBytes(data []byte, df gopacket.DecodeFeedback) error {
	for i := 0; i < maxLabels; i++ {
		if short(data, 4*(i+1), df) {
			return errShort
		}
		if data[4*i+2]&1 == 0 { // not the bottom of the stack
			continue
		}
		l.payload = data[4*(i+1):]
		l.next = gopacket.LayerTypePayload
		if len(l.payload) > 0 {
			switch l.payload[0] >> 4 {
			case 4:
				l.next = layers.LayerTypeIPv4
			case 6:
				l.next = layers.LayerTypeIPv6
			}
		}
		return nil
	}
	return errors.New("MPLS label stack deeper than 16 labels")
}
func (l *mplsLayer) CanDecode() gopacket.LayerClass { return layers.LayerTypeMPLS }

// pppoeLayer is a PPPoE session header (RFC 2516) and the PPP protocol
// field after it.
type pppoeLayer struct{ shim }

func (l *pppoeLayer) DecodeFromBytes(data []byte, df gopacket.DecodeFeedback) error {
	if short(data, 8, df) {
		return errShort
	}
	n := int(binary.BigEndian.Uint16(data[4:6])) // PPP frame length
	if n < 2 {
		return errors.New("PPPoE session frame shorter than its PPP protocol field")
	}
	end := min(len(data), 6+n)
	l.payload = data[8:end]
	switch binary.BigEndian.Uint16(data[6:8]) {
	case 0x0021:
		l.next = layers.LayerTypeIPv4
	case 0x0057:
		l.next = layers.LayerTypeIPv6
	default:
		l.next = gopacket.LayerTypePayload // LCP, IPCP, ...: not IP
	}
	return nil
}
func (l *pppoeLayer) CanDecode() gopacket.LayerClass { return layers.LayerTypePPPoE }

// ip6ExtLayer is one kind of IPv6 extension header after the first
// (gopacket's IPv6 layer takes a leading hop-by-hop header in itself):
// routing, fragment, destination options, AH, or a hop-by-hop header out
// of place; the Decoder has one of each. A fragment header of a real
// fragment (offset or more-fragments set) ends the walk: the transport
// header, if this piece holds it at all, is the reassembler's to read.
type ip6ExtLayer struct {
	kind     layers.IPProtocol // which header this layer decodes
	proto    layers.IPProtocol // the header after it
	fragment bool              // a fragment header of a real fragment
	fragID   uint32            // ... its identification
	fragOff  int               // ... its offset in bytes
	fragMore bool              // ... and whether more fragments follow
	// final is a routing header's final destination, when segments are
	// left (RFC 8200 §8.1: the transport checksum's pseudo-header holds
	// it, not the IPv6 header's destination): type 0's last address,
	// type 2's home address, type 4's (SRv6) Segment List[0].
	final   netip.Addr
	payload []byte
}

func (l *ip6ExtLayer) DecodeFromBytes(data []byte, df gopacket.DecodeFeedback) error {
	if short(data, 8, df) {
		return errShort
	}
	l.proto = layers.IPProtocol(data[0])
	l.fragment = false
	var n int
	switch l.kind {
	case layers.IPProtocolIPv6Fragment:
		n = 8
		off, more := binary.BigEndian.Uint16(data[2:4])>>3, data[3]&1 == 1
		l.fragment = off != 0 || more
		l.fragID, l.fragOff, l.fragMore = binary.BigEndian.Uint32(data[4:8]), int(off)*8, more
	case layers.IPProtocolAH:
		n = (int(data[1]) + 2) * 4
	default:
		n = (int(data[1]) + 1) * 8
	}
	if short(data, n, df) {
		return errShort
	}
	l.final = netip.Addr{}
	if l.kind == layers.IPProtocolIPv6Routing && data[3] > 0 && n >= 24 {
		switch data[2] { // the routing type
		case 0:
			l.final = netip.AddrFrom16([16]byte(data[n-16 : n]))
		case 2, 4:
			l.final = netip.AddrFrom16([16]byte(data[8:24]))
		}
	}
	l.payload = data[n:]
	return nil
}

func (l *ip6ExtLayer) CanDecode() gopacket.LayerClass { return l.kind.LayerType() }
func (l *ip6ExtLayer) NextLayerType() gopacket.LayerType {
	if l.fragment {
		return gopacket.LayerTypeFragment
	}
	return l.proto.LayerType()
}
func (l *ip6ExtLayer) LayerPayload() []byte { return l.payload }

// LayerTypeNFLOG is Linux's NFLOG link type (a capture from an nflog
// group, tcpdump -i nflog:N): a 4-byte header, then type-length-value
// attributes, one of which holds the packet from its IP header on.
var LayerTypeNFLOG = gopacket.RegisterLayerType(18_201, gopacket.LayerTypeMetadata{Name: "NFLOG"})

// nflogLayer finds the packet in an NFLOG record (NFULA_PAYLOAD, type 9).
// The attributes' length and type are in the capturing host's byte order:
// little-endian here, as on every host bentod runs on.
type nflogLayer struct{ shim }

func (l *nflogLayer) DecodeFromBytes(data []byte, df gopacket.DecodeFeedback) error {
	if short(data, 4, df) {
		return errShort
	}
	switch data[0] { // address family
	case 2: // AF_INET
		l.next = layers.LayerTypeIPv4
	case 10: // AF_INET6
		l.next = layers.LayerTypeIPv6
	default:
		l.next = gopacket.LayerTypePayload
	}
	rest := data[4:]
	for len(rest) >= 4 {
		n, typ := int(binary.LittleEndian.Uint16(rest[0:2])), binary.LittleEndian.Uint16(rest[2:4])
		if n < 4 || n > len(rest) {
			df.SetTruncated()
			return errors.New("NFLOG attribute length out of range")
		}
		if typ&0x7fff == 9 { // NFULA_PAYLOAD
			l.payload = rest[4:n]
			return nil
		}
		rest = rest[min(len(rest), (n+3)&^3):] // attributes are 4-byte aligned
	}
	return errors.New("NFLOG record without a packet (no NFULA_PAYLOAD)")
}
func (l *nflogLayer) CanDecode() gopacket.LayerClass { return LayerTypeNFLOG }
