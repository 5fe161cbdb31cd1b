// Package synth generates synthetic traffic for benchmarks: Ethernet,
// IPv4 and TCP frames of up to millions of concurrent flows, with a
// Zipf-distributed choice of flow per packet (a few busy flows, a long
// tail), as real traffic has. Frames come from templates built once with
// gopacket and patched per packet, so generation costs next to nothing.
package synth

import (
	"encoding/binary"
	"math/rand"
	"net"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// Config describes the traffic.
type Config struct {
	Flows       int     // concurrent flows (up to 2^24)
	PayloadSize int     // bytes of payload per data packet
	Zipf        float64 // skew of the flow choice (> 1); 0 means uniform
	Seed        int64
}

// Gen produces frames. It is not safe for concurrent use; frames it
// returns are valid until the next call.
type Gen struct {
	cfg                        Config
	rng                        *rand.Rand
	zipf                       *rand.Zipf
	syn, synack, ack, c2s, s2c []byte
	buf                        []byte
	n                          uint64
}

// Frame offsets (Ethernet 14, IPv4 20).
const (
	offSrcIP   = 14 + 12
	offDstIP   = 14 + 16
	offSrcPort = 34
	offDstPort = 36
)

// New returns a generator.
func New(cfg Config) *Gen {
	g := &Gen{cfg: cfg, rng: rand.New(rand.NewSource(cfg.Seed))}
	if cfg.Zipf > 1 {
		g.zipf = rand.NewZipf(g.rng, cfg.Zipf, 8, uint64(cfg.Flows-1))
	}
	pay := make([]byte, cfg.PayloadSize)
	g.syn = template(true, layers.TCP{SYN: true}, nil)
	g.synack = template(false, layers.TCP{SYN: true, ACK: true}, nil)
	g.ack = template(true, layers.TCP{ACK: true}, nil)
	g.c2s = template(true, layers.TCP{ACK: true, PSH: true}, pay)
	g.s2c = template(false, layers.TCP{ACK: true, PSH: true}, pay)
	return g
}

func template(fromClient bool, tcp layers.TCP, payload []byte) []byte {
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.IPv4(10, 0, 0, 1), DstIP: net.IPv4(172, 16, 0, 1)}
	tcp.SrcPort, tcp.DstPort, tcp.Window, tcp.Seq = 1, 80, 65535, 1
	if !fromClient {
		ip.SrcIP, ip.DstIP = ip.DstIP, ip.SrcIP
		tcp.SrcPort, tcp.DstPort = tcp.DstPort, tcp.SrcPort
	}
	tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, eth, ip, &tcp, gopacket.Payload(payload))
	return append([]byte(nil), buf.Bytes()...)
}

// patch writes flow i's endpoints into a copy of tmpl: client 10.x.y.z
// (from i) port 1024+(i%60000), server 172.16.0.1:80.
func (g *Gen) patch(tmpl []byte, i int, fromClient bool) []byte {
	g.buf = append(g.buf[:0], tmpl...)
	client := [4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}
	server := [4]byte{172, 16, 0, 1}
	cport, sport := uint16(1024+i%60000), uint16(80)
	if fromClient {
		copy(g.buf[offSrcIP:], client[:])
		copy(g.buf[offDstIP:], server[:])
		binary.BigEndian.PutUint16(g.buf[offSrcPort:], cport)
		binary.BigEndian.PutUint16(g.buf[offDstPort:], sport)
	} else {
		copy(g.buf[offSrcIP:], server[:])
		copy(g.buf[offDstIP:], client[:])
		binary.BigEndian.PutUint16(g.buf[offSrcPort:], sport)
		binary.BigEndian.PutUint16(g.buf[offDstPort:], cport)
	}
	return g.buf
}

// Handshake returns the n-th frame (0: SYN, 1: SYN-ACK, 2: ACK) of flow
// i's TCP handshake.
func (g *Gen) Handshake(i, n int) []byte {
	switch n {
	case 0:
		return g.patch(g.syn, i, true)
	case 1:
		return g.patch(g.synack, i, false)
	}
	return g.patch(g.ack, i, true)
}

// Next returns a data frame of a randomly chosen flow, alternating
// directions.
func (g *Gen) Next() []byte {
	var i int
	if g.zipf != nil {
		i = int(g.zipf.Uint64())
	} else {
		i = g.rng.Intn(g.cfg.Flows)
	}
	g.n++
	if g.n&1 == 0 {
		return g.patch(g.s2c, i, false)
	}
	return g.patch(g.c2s, i, true)
}
