package tracegen

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// gen builds one capture.
type gen struct {
	link   layers.LinkType
	rng    *rand.Rand
	noise  *rand.ChaCha8 // payload bytes
	pkts   []pkt
	ifaces []pcapgo.NgInterface // pcapng only
	intf   int                  // interface of the packets emitted now
	stray  bool                 // the packets emitted now are unsolicited
	err    error                // the first serialization error
	buf    gopacket.SerializeBuffer
	// udpOutside records, per UDP flow, whether its first datagram came
	// from outside.
	udpOutside map[string]bool
}

func newGen(link layers.LinkType, seed uint64) *gen {
	return &gen{
		link:       link,
		rng:        rand.New(rand.NewPCG(seed, 0x62656e746f)),
		noise:      rand.NewChaCha8([32]byte{0: byte(seed), 31: 'b'}),
		ifaces:     []pcapgo.NgInterface{{Name: "eth0", LinkType: link, TimestampResolution: 9}},
		udpOutside: map[string]bool{},
	}
}

// emit appends a packet and returns its index. A packet is unsolicited
// when it is not IP, when outside says so (it belongs to a connection
// opened from outside), or while g.stray is set.
func (g *gen) emit(t time.Time, data []byte, flow string, outside bool) int {
	g.pkts = append(g.pkts, pkt{t: t, data: data, orig: len(data), intf: g.intf, flow: flow, unsolicited: flow == "" || outside || g.stray})
	return len(g.pkts) - 1
}

// insideNets are the networks a firewall protects by default (the
// lightbox command's -inside).
var insideNets = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("172.16.0.0/12"), netip.MustParsePrefix("192.168.0.0/16")}

func inside(a netip.Addr) bool {
	for _, p := range insideNets {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// between returns a duration drawn uniformly from [lo, hi), in whole
// microseconds.
func (g *gen) between(lo, hi time.Duration) time.Duration {
	d := int64(lo / us)
	if n := int64((hi - lo) / us); n > 0 {
		d += g.rng.Int64N(n)
	}
	return time.Duration(d) * us
}

// intn returns a number in [lo, hi].
func (g *gen) intn(lo, hi int) int { return lo + g.rng.IntN(hi-lo+1) }

// pick returns one of the strings.
func (g *gen) pick(s ...string) string { return s[g.rng.IntN(len(s))] }

// random returns n random bytes (payload that looks encrypted) in which
// "HTTP/1." does not occur.
func (g *gen) random(n int) []byte {
	b := make([]byte, n)
	g.noise.Read(b)
	return scrub(b)
}

// scrub spoils every "HTTP/1." in b.
func scrub(b []byte) []byte {
	for {
		i := bytes.Index(b, httpToken)
		if i < 0 {
			return b
		}
		b[i] = 'h'
	}
}

var httpToken = []byte("HTTP/1.")

// words makes text for HTTP bodies, mail and the like.
var words = []string{"bento", "lightbox", "middlebox", "relay", "circuit", "packet", "flow", "state",
	"enclave", "gateway", "tunnel", "record", "cell", "onion", "stream", "router", "policy", "function",
	"sandbox", "container", "latency", "bandwidth", "the", "a", "of", "and", "to", "in", "is", "with"}

// text returns n bytes of words, spaces and line breaks.
func (g *gen) text(n int) []byte {
	var b bytes.Buffer
	for col := 0; b.Len() < n; {
		w := words[g.rng.IntN(len(words))]
		b.WriteString(w)
		col += len(w) + 1
		if col > 64 {
			b.WriteString("\n")
			col = 0
		} else {
			b.WriteString(" ")
		}
	}
	return b.Bytes()[:n]
}

// host is an endpoint: its address, the MAC address its frames carry on
// the capture's segment, the TTL or hop limit its packets arrive with, and
// its next IPv4 identification.
type host struct {
	ip   netip.Addr
	mac  net.HardwareAddr
	ttl  uint8
	ipid uint16
}

// router is the MAC address of the gateway to the outside.
var router = net.HardwareAddr{0x02, 0x00, 0x5e, 0x10, 0x00, 0x01}

// local returns a host on the captured segment.
func (g *gen) local(addr string, ttl uint8) *host {
	ip := netip.MustParseAddr(addr)
	b := ip.As16()
	return &host{ip: ip, ttl: ttl, mac: net.HardwareAddr{0x02, 0x42, b[12], b[13], b[14], b[15]}, ipid: uint16(g.rng.Uint32())}
}

// remote returns a host behind the router.
func (g *gen) remote(addr string, ttl uint8) *host {
	h := g.local(addr, ttl)
	h.mac = router
	return h
}

var serializeOptions = gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}

// frame serializes a packet from src to dst: an Ethernet header on an
// Ethernet capture, IPv4 or IPv6, then the upper layers.
func (g *gen) frame(src, dst *host, proto layers.IPProtocol, upper ...gopacket.SerializableLayer) []byte {
	ls := make([]gopacket.SerializableLayer, 0, 2+len(upper))
	var nl gopacket.NetworkLayer
	et := layers.EthernetTypeIPv4
	if src.ip.Is4() {
		src.ipid++
		ip := &layers.IPv4{Version: 4, TTL: src.ttl, Protocol: proto, Id: src.ipid, Flags: layers.IPv4DontFragment,
			SrcIP: src.ip.AsSlice(), DstIP: dst.ip.AsSlice()}
		nl = ip
		ls = append(ls, ip)
	} else {
		et = layers.EthernetTypeIPv6
		ip := &layers.IPv6{Version: 6, HopLimit: src.ttl, NextHeader: proto, SrcIP: src.ip.AsSlice(), DstIP: dst.ip.AsSlice()}
		nl = ip
		ls = append(ls, ip)
	}
	if g.link == layers.LinkTypeEthernet {
		ls = append([]gopacket.SerializableLayer{&layers.Ethernet{SrcMAC: src.mac, DstMAC: dst.mac, EthernetType: et}}, ls...)
	}
	for _, l := range upper {
		switch l := l.(type) {
		case *layers.TCP:
			l.SetNetworkLayerForChecksum(nl)
		case *layers.UDP:
			l.SetNetworkLayerForChecksum(nl)
		case *layers.ICMPv6:
			l.SetNetworkLayerForChecksum(nl)
		}
	}
	return g.serialize(append(ls, upper...)...)
}

func (g *gen) serialize(ls ...gopacket.SerializableLayer) []byte {
	if g.buf == nil {
		g.buf = gopacket.NewSerializeBuffer()
	}
	if err := gopacket.SerializeLayers(g.buf, serializeOptions, ls...); err != nil && g.err == nil {
		g.err = err
	}
	return bytes.Clone(g.buf.Bytes())
}

// flowKey names a flow the same way in both directions.
func flowKey(proto layers.IPProtocol, a netip.Addr, ap uint16, b netip.Addr, bp uint16) string {
	x, y := netip.AddrPortFrom(a, ap), netip.AddrPortFrom(b, bp)
	if y.Compare(x) < 0 {
		x, y = y, x
	}
	return fmt.Sprintf("%d %s %s", proto, x, y)
}

// datagram emits a UDP datagram carrying l (a gopacket.Payload or an
// application layer such as *layers.DNS).
func (g *gen) datagram(t time.Time, src *host, sport uint16, dst *host, dport uint16, l gopacket.SerializableLayer) int {
	u := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	flow := flowKey(layers.IPProtocolUDP, src.ip, sport, dst.ip, dport)
	out, seen := g.udpOutside[flow]
	if !seen {
		out = !inside(src.ip)
		g.udpOutside[flow] = out
	}
	return g.emit(t, g.frame(src, dst, layers.IPProtocolUDP, u, l), flow, out)
}

// lookup emits a DNS query for name from cli and, rtt later, the answer
// (an A or AAAA record of addr); it returns when the answer came.
func (g *gen) lookup(t time.Time, cli *host, cport uint16, srv *host, name string, addr netip.Addr, rtt time.Duration) time.Time {
	typ := layers.DNSTypeA
	if addr.Is6() {
		typ = layers.DNSTypeAAAA
	}
	id := uint16(g.rng.Uint32())
	q := []layers.DNSQuestion{{Name: []byte(name), Type: typ, Class: layers.DNSClassIN}}
	g.datagram(t, cli, cport, srv, 53, &layers.DNS{ID: id, RD: true, Questions: q})
	t = t.Add(rtt)
	g.datagram(t, srv, 53, cli, cport, &layers.DNS{ID: id, QR: true, RD: true, RA: true, Questions: q,
		Answers: []layers.DNSResourceRecord{{Name: []byte(name), Type: typ, Class: layers.DNSClassIN, TTL: 300, IP: addr.AsSlice()}}})
	return t
}

// ping emits an ICMP echo request from a to b and, rtt later, the reply
// (unsolicited: neither TCP nor UDP).
func (g *gen) ping(t time.Time, a, b *host, id, seq uint16, rtt time.Duration) time.Time {
	pay := gopacket.Payload(g.text(56))
	for i, ends := range [2][2]*host{{a, b}, {b, a}} {
		src, dst := ends[0], ends[1]
		if src.ip.Is4() {
			typ := uint8(layers.ICMPv4TypeEchoRequest)
			if i == 1 {
				typ = layers.ICMPv4TypeEchoReply
			}
			icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, 0), Id: id, Seq: seq}
			g.emit(t, g.frame(src, dst, layers.IPProtocolICMPv4, icmp, pay), flowKey(layers.IPProtocolICMPv4, a.ip, 0, b.ip, 0), true)
		} else {
			typ := uint8(layers.ICMPv6TypeEchoRequest)
			if i == 1 {
				typ = layers.ICMPv6TypeEchoReply
			}
			icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}
			g.emit(t, g.frame(src, dst, layers.IPProtocolICMPv6, icmp, &layers.ICMPv6Echo{Identifier: id, SeqNumber: seq}, pay),
				flowKey(layers.IPProtocolICMPv6, a.ip, 0, b.ip, 0), true)
		}
		t = t.Add(rtt)
	}
	return t
}

// arp emits asker's ARP request for target's address and target's reply.
func (g *gen) arp(t time.Time, asker, target *host) time.Time {
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	req := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: layers.ARPRequest, SourceHwAddress: asker.mac, SourceProtAddress: asker.ip.AsSlice(),
		DstHwAddress: make([]byte, 6), DstProtAddress: target.ip.AsSlice()}
	g.emit(t, g.serialize(&layers.Ethernet{SrcMAC: asker.mac, DstMAC: bcast, EthernetType: layers.EthernetTypeARP}, req), "", true)
	t = t.Add(90 * time.Microsecond)
	rep := *req
	rep.Operation = layers.ARPReply
	rep.SourceHwAddress, rep.SourceProtAddress = target.mac, target.ip.AsSlice()
	rep.DstHwAddress, rep.DstProtAddress = asker.mac, asker.ip.AsSlice()
	g.emit(t, g.serialize(&layers.Ethernet{SrcMAC: target.mac, DstMAC: asker.mac, EthernetType: layers.EthernetTypeARP}, &rep), "", true)
	return t
}

// TCP flags.
const (
	fin = 1 << iota
	syn
	rst
	psh
	ack
)

// The two sides of a connection.
const (
	cli = 0
	srv = 1
)

// conn is a TCP connection: both sides' next sequence numbers and the
// connection's clock, which each segment moves on.
type conn struct {
	g    *gen
	h    [2]*host
	port [2]uint16
	seq  [2]uint32
	win  [2]uint16
	mss  int
	rtt  time.Duration // between the two sides (keep it an even number of microseconds)
	gap  time.Duration // between back-to-back segments
	t    time.Time
	last int       // the side that sent data or a flag last
	tail [2][]byte // the last bytes of each side's stream, to count HTTP tokens across segments
	flow string
	out  bool // opened from outside
}

// dial returns a connection (no packet yet) that starts at t.
func (g *gen) dial(t time.Time, c *host, cport uint16, s *host, sport uint16, rtt time.Duration, mss int) *conn {
	return &conn{g: g, h: [2]*host{c, s}, port: [2]uint16{cport, sport}, seq: [2]uint32{g.rng.Uint32(), g.rng.Uint32()},
		win: [2]uint16{64240, 65160}, mss: mss, rtt: rtt, gap: 12 * time.Microsecond, t: t, last: cli,
		flow: flowKey(layers.IPProtocolTCP, c.ip, cport, s.ip, sport), out: !inside(c.ip)}
}

// seg emits one segment from side from at the connection's clock.
func (c *conn) seg(from int, flags uint8, seq, ackn uint32, payload []byte, opts []layers.TCPOption) int {
	to := 1 - from
	t := &layers.TCP{SrcPort: layers.TCPPort(c.port[from]), DstPort: layers.TCPPort(c.port[to]), Seq: seq, Window: c.win[from],
		FIN: flags&fin != 0, SYN: flags&syn != 0, RST: flags&rst != 0, PSH: flags&psh != 0, ACK: flags&ack != 0, Options: opts}
	if t.ACK {
		t.Ack = ackn
	}
	i := c.g.emit(c.t, c.g.frame(c.h[from], c.h[to], layers.IPProtocolTCP, t, gopacket.Payload(payload)), c.flow, c.out)
	c.t = c.t.Add(c.gap)
	return i
}

// turn waits half a round trip when the other side spoke last.
func (c *conn) turn(from int) {
	if c.last != from {
		c.t = c.t.Add(c.rtt / 2)
		c.last = from
	}
}

// wait lets time pass.
func (c *conn) wait(d time.Duration) { c.t = c.t.Add(d) }

func synOptions(mss int) []layers.TCPOption {
	return []layers.TCPOption{
		{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{byte(mss >> 8), byte(mss)}},
		{OptionType: layers.TCPOptionKindNop, OptionLength: 1},
		{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
		{OptionType: layers.TCPOptionKindNop, OptionLength: 1},
		{OptionType: layers.TCPOptionKindNop, OptionLength: 1},
		{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2},
	}
}

// handshake emits SYN, SYN-ACK and ACK.
func (c *conn) handshake() {
	c.last = cli
	c.seg(cli, syn, c.seq[cli], 0, nil, synOptions(c.mss))
	c.seq[cli]++
	c.turn(srv)
	c.seg(srv, syn|ack, c.seq[srv], c.seq[cli], nil, synOptions(c.mss))
	c.seq[srv]++
	c.turn(cli)
	c.seg(cli, ack, c.seq[cli], c.seq[srv], nil, nil)
}

// say sends one message from a side, in segments of at most mss bytes.
func (c *conn) say(from int, msg []byte) {
	c.send(from, chop(msg, c.mss), burst{swap: -1, retransmit: -1})
}

// burst says how to send a message's segments.
type burst struct {
	swap       int // send segment swap+1 before segment swap (-1: in order)
	retransmit int // send this segment again after the others (-1: none)
}

// send sends segments from a side; the other side acknowledges every
// second segment and the last of several (cumulatively: what arrived in
// order).
func (c *conn) send(from int, segs [][]byte, b burst) {
	c.turn(from)
	to := 1 - from
	base := c.seq[from]
	offs := make([]uint32, len(segs)+1)
	tokens := make([]int, len(segs))
	for i, s := range segs {
		offs[i+1] = offs[i] + uint32(len(s))
		tokens[i] = c.tokens(from, s)
	}
	order := make([]int, len(segs))
	for i := range order {
		order[i] = i
	}
	if b.swap >= 0 {
		order[b.swap], order[b.swap+1] = order[b.swap+1], order[b.swap]
	}
	got := make([]bool, len(segs)+1)
	since := 0
	for k, i := range order {
		flags := uint8(ack)
		if i == len(segs)-1 {
			flags |= psh
		}
		p := c.seg(from, flags, base+offs[i], c.seq[to], segs[i], nil)
		c.g.pkts[p].http = tokens[i]
		got[i] = true
		if since++; len(segs) > 1 && (since == 2 || k == len(segs)-1) {
			n := 0
			for got[n] {
				n++
			}
			c.seg(to, ack, c.seq[to], base+offs[n], nil, nil)
			since = 0
		}
	}
	c.seq[from] = base + offs[len(segs)]
	if b.retransmit >= 0 {
		c.wait(c.rtt)
		c.seg(from, ack|psh, base+offs[b.retransmit], c.seq[to], segs[b.retransmit], nil)
	}
}

// tokens counts the "HTTP/1." that end in s, the next bytes of a side's
// stream.
func (c *conn) tokens(from int, s []byte) int {
	all := append(c.tail[from], s...)
	n := bytes.Count(all, httpToken)
	c.tail[from] = append([]byte(nil), all[max(0, len(all)-len(httpToken)+1):]...)
	return n
}

// close ends the connection with a FIN from each side, from first; with
// lastACK, the first side acknowledges the other's FIN.
func (c *conn) close(from int, lastACK bool) {
	to := 1 - from
	c.turn(from)
	c.seg(from, fin|ack, c.seq[from], c.seq[to], nil, nil)
	c.seq[from]++
	c.turn(to)
	c.seg(to, fin|ack, c.seq[to], c.seq[from], nil, nil)
	c.seq[to]++
	if lastACK {
		c.turn(from)
		c.seg(from, ack, c.seq[from], c.seq[to], nil, nil)
	}
}

// reset aborts the connection from a side.
func (c *conn) reset(from int) {
	c.turn(from)
	c.seg(from, rst|ack, c.seq[from], c.seq[1-from], nil, nil)
}

// chop cuts b into pieces of at most n bytes.
func chop(b []byte, n int) [][]byte {
	var out [][]byte
	for len(b) > n {
		out = append(out, b[:n])
		b = b[n:]
	}
	return append(out, b)
}
