package tracegen

import (
	"encoding/binary"
	"net/netip"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// A CorpusCapture is one capture of the corpus the LightBox tests check
// the middleboxes on, against tshark: each case a TCP connection from its
// own client address carrying EvasionPayload, and the alerts
// EvasionRules raises for it.
type CorpusCapture struct {
	Name     string
	LinkType layers.LinkType
	Data     []byte
	Cases    []EvasionCase
}

// Tunnel addresses: the outer header of GRE, IP-in-IP and 6in4.
var (
	tunnelA = netip.MustParseAddr("198.51.100.1")
	tunnelB = netip.MustParseAddr("198.51.100.2")
)

// Corpus returns the generated captures beyond Names' (which the tests
// take from Write): the evasion capture; one of encapsulations and
// tunnels on Ethernet (MPLS, PPPoE, LLC/SNAP, GRE, IP in IP, IPv6 in
// IPv4); and one in each of the link types Linux cooked (SLL, SLL2) and
// NFLOG. In all, a rule that sees the inner TCP stream alerts once per
// case; Cases says where it must not. The same bytes are kept in
// testdata/corpus, for readers and tshark (TestCorpusGolden checks them).
func Corpus() ([]CorpusCapture, error) {
	ev, evCases, err := Evasions()
	if err != nil {
		return nil, err
	}
	out := []CorpusCapture{{Name: "evasions.pcap", LinkType: layers.LinkTypeEthernet, Data: ev, Cases: evCases}}
	p := []byte(EvasionPayload)
	one := []int{1}

	e := &evasion{link: layers.LinkTypeEthernet, t: epoch}
	e.conn("MPLS, two labels", false, one, "the label stack walked to IPv4", func(c *evConn) {
		c.encap = func(ip []byte) (uint16, []byte) {
			return 0x8847, append([]byte{0x00, 0x06, 0x40, 0x40, 0x00, 0x0c, 0x81, 0x40}, ip...) // labels 100 and 200 (bottom), TTL 64
		}
		c.data(0, p)
	})
	e.conn("PPPoE session", false, one, "PPPoE, then PPP's IPv4", func(c *evConn) {
		c.encap = pppoe(0x1234, 0x0021)
		c.data(0, p)
	})
	e.conn("PPPoE session, IPv6", true, one, "PPPoE, then PPP's IPv6", func(c *evConn) {
		c.encap = pppoe(0x1235, 0x0057)
		c.data(0, p)
	})
	e.conn("LLC/SNAP", false, one, "an 802.3 length, LLC and SNAP with the IPv4 ethertype", func(c *evConn) {
		c.encap = func(ip []byte) (uint16, []byte) {
			return uint16(8 + len(ip)), append([]byte{0xaa, 0xaa, 0x03, 0, 0, 0, 0x08, 0x00}, ip...)
		}
		c.data(0, p)
	})
	e.conn("GRE", false, one, "IPv4 in GRE in IPv4: the inner flow", func(c *evConn) {
		c.tunnel = func(ip []byte) []byte { return outer(layers.IPProtocolGRE, append([]byte{0, 0, 0x08, 0x00}, ip...)) }
		c.data(0, p)
	})
	e.conn("IP in IP", false, one, "IPv4 in IPv4: the inner flow", func(c *evConn) {
		c.tunnel = func(ip []byte) []byte { return outer(layers.IPProtocolIPv4, ip) }
		c.data(0, p)
	})
	e.conn("IPv6 in IPv4 (6in4)", true, one, "IPv6 in IPv4: the inner flow", func(c *evConn) {
		c.tunnel = func(ip []byte) []byte { return outer(layers.IPProtocolIPv6, ip) }
		c.data(0, p)
	})
	b, err := e.pcap()
	if err != nil {
		return nil, err
	}
	out = append(out, CorpusCapture{Name: "tunnels.pcap", LinkType: layers.LinkTypeEthernet, Data: b, Cases: e.cases})

	for _, l := range []struct {
		name string
		link layers.LinkType
	}{{"sll.pcap", layers.LinkTypeLinuxSLL}, {"sll2.pcap", layers.LinkTypeLinuxSLL2}, {"nflog.pcap", 239}} {
		e := &evasion{link: l.link, t: epoch}
		e.conn("IPv4, "+l.name, false, one, "the link header, then IPv4", func(c *evConn) { c.data(0, p) })
		e.conn("IPv6, "+l.name, true, one, "the link header, then IPv6", func(c *evConn) { c.data(0, p) })
		e.conn("IPv4 in 4-byte segments, "+l.name, false, one, "reassembled across segments", func(c *evConn) {
			for i := 0; i < len(p); i += 4 {
				c.data(i, p[i:min(len(p), i+4)])
			}
		})
		b, err := e.pcap()
		if err != nil {
			return nil, err
		}
		out = append(out, CorpusCapture{Name: l.name, LinkType: l.link, Data: b, Cases: e.cases})
	}
	return out, nil
}

// outer wraps payload in an IPv4 header of protocol proto, between the
// tunnel's endpoints.
func outer(proto layers.IPProtocol, payload []byte) []byte {
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: tunnelA.AsSlice(), DstIP: tunnelB.AsSlice()}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, serializeOptions, ip, gopacket.Payload(payload)); err != nil {
		panic(err) // fixed layers: a failure is a bug here
	}
	return append([]byte(nil), buf.Bytes()...)
}

// pppoe frames IP packets in a PPPoE session (ethertype 0x8864) as PPP
// protocol proto.
func pppoe(session, proto uint16) func(ip []byte) (uint16, []byte) {
	return func(ip []byte) (uint16, []byte) {
		h := binary.BigEndian.AppendUint16([]byte{0x11, 0x00}, session)
		h = binary.BigEndian.AppendUint16(h, uint16(2+len(ip)))
		return 0x8864, append(binary.BigEndian.AppendUint16(h, proto), ip...)
	}
}
