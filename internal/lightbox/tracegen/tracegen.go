// Package tracegen writes the synthetic packet captures that Bento's
// tests read, replay and send through LightBox, so that the tests need
// no capture beside the repository: a busy LAN of some 3,000 flows, a
// small office uplink, HTTP conversations, a Tor ORPort bulk transfer,
// TSO-sized frames in pcapng (plain and gzip-compressed), raw-IP packets
// from a TUN device, and a capture cut short in the middle of a packet.
//
// Every capture is built with gopacket from fixed seeds and fixed
// timestamps: the same call writes the same bytes. With each capture
// comes what the tests check it against (Trace): packets, flows, what a
// stateful firewall drops, HTTP messages, truncation.
package tracegen

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// Names of the captures.
const (
	// LAN is a busy Ethernet LAN, pcap: 3,000 TCP connections (24 of them
	// over IPv6) with handshakes, data both ways and service banners
	// (SSH, HTTP, SMTP, FTP; TLS, SMB, RDP and EtherNet/IP without), SYNs
	// of Linux, Windows and network-device TTLs, DNS over UDP, and ARP.
	// More than 2,048 flows are open at once. Connections end with a FIN
	// from each side (the ACK of the second is not captured), a reset, or
	// not at all (still open at the end).
	LAN = "lan.pcap"
	// Office is a small office uplink, pcap, 185 packets in 1.5 s:
	// HTTPS, HTTP, SSH and SMTP connections opened from 192.168.1.0/24,
	// DNS, and what a firewall drops (ARP, ICMP, a port scan from
	// outside, backscatter, a segment after its connection closed).
	Office = "office.pcap"
	// HTTP holds HTTP/1.1 and HTTP/1.0 conversations over IPv4 and IPv6,
	// pcap: keep-alive requests and responses with multi-segment bodies,
	// a POST, 404 and 304 responses, a chunked body, a request line split
	// inside "HTTP/1.", two segments out of order and a retransmission.
	HTTP = "http.pcap"
	// ORPort is a Tor relay connection, pcap: TLS to port 9001 and 1.3 MB
	// of cells downloaded, mostly in 1,514-byte frames.
	ORPort = "orport.pcap"
	// TSO is pcapng with two interfaces: frames of up to 64 KB as a
	// sender with segmentation offload captures them, nanosecond
	// timestamps, and a UDP stream captured with a 128-byte snap length.
	TSO = "tso.pcapng"
	// TSOGzip is TSO, gzip-compressed.
	TSOGzip = "tso.pcapng.gz"
	// RawIP is what a TUN device delivers, pcap with link type 101 (raw
	// IP) and nanosecond timestamps: UDP, TCP and ICMP over IPv4 and IPv6.
	RawIP = "rawip.pcap"
	// Truncated is HTTP cut short in the middle of a packet's data.
	Truncated = "truncated.pcap"
)

// Names lists the captures in the order Write writes them.
func Names() []string {
	return []string{LAN, Office, HTTP, ORPort, TSO, TSOGzip, RawIP, Truncated}
}

// Trace is a generated capture and what it holds. Counts are of the whole
// packets a reader returns (for Truncated, those before the cut).
type Trace struct {
	Name     string
	Path     string
	Format   string // "pcap" (microseconds), "pcap-ns", "pcapng" or "pcapng+gzip"
	LinkType layers.LinkType
	Packets  int
	// Snapped counts packets captured shorter than they were on the wire.
	Snapped int
	// IPPackets and IPBytes count the packets carrying IPv4 or IPv6 and
	// their captured bytes.
	IPPackets, IPBytes int
	// Flows counts distinct flows as middleboxes key them: both addresses,
	// both ports (0 for ICMP) and the protocol, either direction.
	Flows int
	// PeakFlows is the most flows open at once, each open from its first
	// packet to its last.
	PeakFlows int
	// Unsolicited counts the packets that are not TCP or UDP over IP, or
	// belong to no connection opened from inside (a TCP SYN or a first
	// UDP datagram from 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16):
	// what a stateful firewall with those networks inside and no service
	// open to the outside drops. (A retransmission after a connection
	// closed is not: the connection lingers, as in a real stack.)
	Unsolicited int
	// HTTPMessages counts the HTTP requests and responses; each holds
	// "HTTP/1." once (in its request or status line) and no body holds it.
	HTTPMessages int
	// Truncated is set when the file ends in the middle of a packet.
	Truncated bool
	// Duration is the time from the first packet to the last.
	Duration time.Duration
}

// epoch is when every capture starts.
var epoch = time.Date(2025, time.March, 14, 9, 26, 53, 0, time.UTC)

// Write writes the named captures (all of them when no name is given)
// into dir and returns them in the order asked.
func Write(dir string, names ...string) ([]Trace, error) {
	if len(names) == 0 {
		names = Names()
	}
	out := make([]Trace, 0, len(names))
	for _, name := range names {
		b, tr, err := Generate(name)
		if err != nil {
			return nil, err
		}
		tr.Path = filepath.Join(dir, name)
		if err := os.WriteFile(tr.Path, b, 0o644); err != nil {
			return nil, err
		}
		out = append(out, tr)
	}
	return out, nil
}

// Generate returns the named capture's bytes and what it holds (Path
// unset).
func Generate(name string) ([]byte, Trace, error) {
	var g *gen
	var format string
	var cut bool
	switch name {
	case LAN:
		g, format = lan(), "pcap"
	case Office:
		g, format = office(), "pcap"
	case HTTP:
		g, format = httpConversations(), "pcap"
	case Truncated:
		g, format, cut = httpConversations(), "pcap", true
	case ORPort:
		g, format = orport(), "pcap"
	case TSO:
		g, format = tso(), "pcapng"
	case TSOGzip:
		g, format = tso(), "pcapng+gzip"
	case RawIP:
		g, format = rawIP(), "pcap-ns"
	default:
		return nil, Trace{}, fmt.Errorf("tracegen: no capture named %q (want one of %v)", name, Names())
	}
	if g.err != nil {
		return nil, Trace{}, fmt.Errorf("tracegen: %s: %w", name, g.err)
	}
	g.sortByTime()
	var b []byte
	var err error
	switch format {
	case "pcap", "pcap-ns":
		b, err = encodePcap(g, format == "pcap-ns")
	default:
		b, err = encodePcapng(g)
		if err == nil && format == "pcapng+gzip" {
			b, err = gzipped(b)
		}
	}
	if err != nil {
		return nil, Trace{}, fmt.Errorf("tracegen: %s: %w", name, err)
	}
	if cut {
		b, g.pkts = cutShort(g.pkts, b)
	}
	tr := g.facts()
	tr.Name, tr.Format, tr.LinkType, tr.Truncated = name, format, g.link, cut
	return b, tr, nil
}

// sortByTime puts the packets in time order; packets of the same time
// keep theirs (a conversation's own packets come in the order sent).
func (g *gen) sortByTime() {
	idx := make([]int, len(g.pkts))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int {
		if c := g.pkts[a].t.Compare(g.pkts[b].t); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	sorted := make([]pkt, len(g.pkts))
	for i, j := range idx {
		sorted[i] = g.pkts[j]
	}
	g.pkts = sorted
}

// size is the bytes of packet data.
func (g *gen) size() int {
	n := 0
	for _, p := range g.pkts {
		n += len(p.data)
	}
	return n
}

// encodePcap writes a little-endian pcap file.
func encodePcap(g *gen, nanos bool) ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(24 + 16*len(g.pkts) + g.size())
	w := pcapgo.NewWriter(&buf)
	if nanos {
		w = pcapgo.NewWriterNanos(&buf)
	}
	if err := w.WriteFileHeader(1<<18, g.link); err != nil {
		return nil, err
	}
	for _, p := range g.pkts {
		if !nanos && p.t.Nanosecond()%1000 != 0 {
			return nil, fmt.Errorf("a timestamp finer than the microseconds of pcap: %v", p.t)
		}
		if err := w.WritePacket(p.info(), p.data); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

// encodePcapng writes pcapng with fixed section and interface options (not
// the writer's defaults, which name the machine).
func encodePcapng(g *gen) ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(1024 + 36*len(g.pkts) + g.size())
	opts := pcapgo.NgWriterOptions{SectionInfo: pcapgo.NgSectionInfo{Hardware: "synthetic", OS: "bento", Application: "bento tracegen"}}
	w, err := pcapgo.NewNgWriterInterface(&buf, g.ifaces[0], opts)
	if err != nil {
		return nil, err
	}
	for _, intf := range g.ifaces[1:] {
		if _, err := w.AddInterface(intf); err != nil {
			return nil, err
		}
	}
	for _, p := range g.pkts {
		if err := w.WritePacket(p.info(), p.data); err != nil {
			return nil, err
		}
	}
	if err := w.Flush(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func gzipped(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// cutShort cuts a pcap file (24-byte header, 16 bytes before each packet)
// in the middle of the data of the first packet of at least 1,000 bytes
// past two thirds of the file, and returns it with the packets before.
func cutShort(pkts []pkt, b []byte) ([]byte, []pkt) {
	off := 24
	for i, p := range pkts {
		if i >= len(pkts)*2/3 && len(p.data) >= 1000 {
			return b[:off+16+len(p.data)/2], pkts[:i]
		}
		off += 16 + len(p.data)
	}
	panic("tracegen: nothing to cut")
}

// facts counts what the packets hold.
func (g *gen) facts() Trace {
	tr := Trace{Packets: len(g.pkts)}
	type span struct{ first, last int }
	spans := map[string]*span{}
	for i, p := range g.pkts {
		if p.orig > len(p.data) {
			tr.Snapped++
		}
		if p.unsolicited {
			tr.Unsolicited++
		}
		tr.HTTPMessages += p.http
		if p.flow == "" {
			continue
		}
		tr.IPPackets++
		tr.IPBytes += len(p.data)
		s := spans[p.flow]
		if s == nil {
			s = &span{first: i}
			spans[p.flow] = s
		}
		s.last = i
	}
	tr.Flows = len(spans)
	// The most flows open at once: +1 at a flow's first packet, -1 after
	// its last.
	delta := make([]int, len(g.pkts)+1)
	for _, s := range spans {
		delta[s.first]++
		delta[s.last+1]--
	}
	open := 0
	for _, d := range delta {
		open += d
		tr.PeakFlows = max(tr.PeakFlows, open)
	}
	if len(g.pkts) > 0 {
		tr.Duration = g.pkts[len(g.pkts)-1].t.Sub(g.pkts[0].t)
	}
	return tr
}

// pkt is one packet of a capture being built.
type pkt struct {
	t    time.Time
	data []byte
	orig int    // length on the wire
	intf int    // pcapng interface
	flow string // canonical flow key; "" for packets that are not IP
	// unsolicited marks a packet a stateful firewall drops (see Trace).
	unsolicited bool
	// http counts the "HTTP/1." whose last byte the packet carries.
	http int
}

func (p pkt) info() gopacket.CaptureInfo {
	return gopacket.CaptureInfo{Timestamp: p.t, CaptureLength: len(p.data), Length: p.orig, InterfaceIndex: p.intf}
}
