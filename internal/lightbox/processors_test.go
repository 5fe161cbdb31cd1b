package lightbox

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/torbento/bento/internal/lightbox/etap"
	"github.com/torbento/bento/internal/lightbox/flowstate"
)

func syn(src string, sport uint16) []byte {
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.ParseIP(src).To4(), DstIP: net.ParseIP("192.0.2.1").To4()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: 80, Seq: 1, SYN: true, Window: 1000}
	tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp)
	return buf.Bytes()
}

// TestIdleFlowsExpire checks that every middlebox ends flows idle for
// IdleTimeout of trusted time, so that state does not pile up.
func TestIdleFlowsExpire(t *testing.T) {
	for _, name := range []string{"monitor", "firewall", "ids"} {
		t.Run(name, func(t *testing.T) {
			p, _, err := NewProcessor(ProcessorConfig{Name: name, LinkType: layers.LinkTypeEthernet, IdleTimeout: time.Minute,
				Inside: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
			if err != nil {
				t.Fatal(err)
			}
			m := table(p)
			t0 := time.Unix(1000, 0)
			for i := range 3 {
				p.Process(etap.Packet{Data: syn("10.0.0.1", uint16(1000+i))}, t0)
			}
			if m.Len() != 3 {
				t.Fatalf("%d flows tracked, want 3", m.Len())
			}
			p.Process(etap.Packet{Data: syn("10.0.0.2", 2000)}, t0.Add(30*time.Second))
			p.Process(etap.Packet{Data: syn("10.0.0.3", 3000)}, t0.Add(70*time.Second))
			if m.Len() != 2 {
				t.Fatalf("%d flows tracked after the first three idled out, want 2", m.Len())
			}
		})
	}
}

func TestCacheSize(t *testing.T) {
	for _, c := range []struct {
		entries, bytes, size, want int
	}{
		{100, 0, 512, 100},
		{0, DefaultCacheBytes, 512, 65536},
		{0, DefaultCacheBytes, 32, 1 << 20},
		{0, 1 << 20, 5920, 177},
		{0, 1000, 512, 64},
	} {
		cfg := ProcessorConfig{CacheEntries: c.entries, CacheBytes: c.bytes}
		if got := cfg.cacheEntries(c.size); got != c.want {
			t.Errorf("%d entries, %d bytes, states of %d: %d cached, want %d", c.entries, c.bytes, c.size, got, c.want)
		}
	}
	if _, _, err := NewProcessor(ProcessorConfig{Name: "monitor", CacheBytes: -1}); err == nil {
		t.Error("a negative cache size was accepted")
	}
}

// table returns a stateful processor's flow table.
func table(p Processor) *flowstate.Manager {
	switch q := p.(type) {
	case *monitorProc:
		return q.exp.m
	case *firewallProc:
		return q.exp.m
	case *idsProc:
		return q.exp.m
	}
	return nil
}

// seg builds a TCP segment from src:sport to dst:dport.
func seg(src, dst string, sport, dport uint16, seq, ack uint32, flags string, payload []byte) []byte {
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.ParseIP(src).To4(), DstIP: net.ParseIP(dst).To4()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: seq, Ack: ack, Window: 1000}
	for _, f := range flags {
		switch f {
		case 'S':
			tcp.SYN = true
		case 'A':
			tcp.ACK = true
		case 'F':
			tcp.FIN = true
		case 'P':
			tcp.PSH = true
		}
	}
	tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp, gopacket.Payload(payload))
	return buf.Bytes()
}

// sender returns a function that gives p a packet at a time after t0 and
// reports whether p passed it on.
func sender(p Processor) func(time.Duration, []byte) bool {
	t0 := time.Unix(1000, 0)
	return func(at time.Duration, b []byte) bool { return len(p.Process(etap.Packet{Data: b}, t0.Add(at))) > 0 }
}

// handshake opens a TCP connection from cli:port to srv:80 at t0.
func handshake(send func(time.Duration, []byte) bool, cli, srv string, port uint16) {
	send(0, seg(cli, srv, port, 80, 100, 0, "S", nil))
	send(0, seg(srv, cli, 80, port, 500, 101, "SA", nil))
	send(0, seg(cli, srv, port, 80, 101, 501, "A", nil))
}

// TestEstablishedFlowsStay: an established connection idle for longer
// than IdleTimeout is kept (hosts keep it for hours) until
// EstablishedTimeout; a half-open one and a closed one go after
// IdleTimeout. The firewall still passes the idle connection's next
// packet.
func TestEstablishedFlowsStay(t *testing.T) {
	const cli, srv = "10.0.0.1", "192.0.2.1"
	for _, name := range []string{"monitor", "firewall", "ids"} {
		t.Run(name, func(t *testing.T) {
			p, _, err := NewProcessor(ProcessorConfig{Name: name, LinkType: layers.LinkTypeEthernet, IdleTimeout: time.Minute, EstablishedTimeout: time.Hour,
				Inside: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
			if err != nil {
				t.Fatal(err)
			}
			m := table(p)
			send := sender(p)
			// An established connection, a half-open one, one closed.
			handshake(send, cli, srv, 1000)
			send(0, seg(cli, srv, 1001, 80, 100, 0, "S", nil))
			send(0, seg(cli, srv, 1002, 80, 100, 0, "S", nil))
			send(0, seg(srv, cli, 80, 1002, 500, 101, "SA", nil))
			send(0, seg(cli, srv, 1002, 80, 101, 501, "A", nil))
			send(0, seg(cli, srv, 1002, 80, 101, 501, "FA", nil))
			send(0, seg(srv, cli, 80, 1002, 501, 102, "FA", nil))
			send(0, seg(cli, srv, 1002, 80, 102, 502, "A", nil))
			if m.Len() != 3 {
				t.Fatalf("%d flows tracked, want 3", m.Len())
			}
			// Ten minutes later (another host's SYN runs the expiry).
			send(10*time.Minute, seg("10.0.0.9", srv, 9000, 80, 1, 0, "S", nil))
			if m.Len() != 2 {
				t.Fatalf("after 10 idle minutes %d flows tracked, want 2 (the established one and the new SYN)", m.Len())
			}
			if !send(10*time.Minute, seg(cli, srv, 1000, 80, 101, 501, "PA", []byte("still here"))) {
				t.Fatal("the established connection's next packet was dropped after 10 idle minutes")
			}
			// Past the established timeout it goes too.
			send(71*time.Minute, seg("10.0.0.9", srv, 9001, 80, 1, 0, "S", nil))
			if m.Len() != 1 {
				t.Fatalf("after 61 idle minutes %d flows tracked, want only the newest SYN", m.Len())
			}
		})
	}
}

// TestFlowTableBounded: a flood of new flows fills the table to its
// bound and no further; established connections keep their place and
// their packets pass; the report says what the flood cost.
func TestFlowTableBounded(t *testing.T) {
	const cli, srv = "10.0.0.1", "192.0.2.1"
	for _, name := range []string{"monitor", "firewall", "ids"} {
		t.Run(name, func(t *testing.T) {
			var report bytes.Buffer
			p, finish, err := NewProcessor(ProcessorConfig{Name: name, LinkType: layers.LinkTypeEthernet, FlowBytes: 1, // the floor: 1,024 flows
				Inside: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, Report: &report})
			if err != nil {
				t.Fatal(err)
			}
			m := table(p)
			send := sender(p)
			handshake(send, cli, srv, 1000)
			for i := range 5000 {
				// SYNs the server answers (a SYN flood against a listening
				// server): half-open, not established.
				send(time.Millisecond*time.Duration(i), seg("10.1.0.1", srv, uint16(10000+i), 80, 1, 0, "S", nil))
				send(time.Millisecond*time.Duration(i), seg(srv, "10.1.0.1", 80, uint16(10000+i), 7, 2, "SA", nil))
				if m.Len() > 1024 {
					t.Fatalf("%d flows tracked, bound 1,024", m.Len())
				}
			}
			if !send(6*time.Second, seg(cli, srv, 1000, 80, 101, 501, "PA", []byte("still here"))) {
				t.Fatal("the established connection's packet was dropped after the flood")
			}
			if m.Stats.Displaced < 5000-1024 {
				t.Errorf("%d flows displaced, want at least %d", m.Stats.Displaced, 5000-1024)
			}
			if name == "firewall" {
				// Packets that may not open a connection make no room.
				displaced := m.Stats.Displaced
				for i := range 2000 {
					send(7*time.Second, seg("198.51.100.7", cli, uint16(20000+i), 22, 1, 1, "A", nil))
				}
				if m.Stats.Displaced != displaced {
					t.Errorf("unsolicited packets from outside displaced %d flows", m.Stats.Displaced-displaced)
				}
			}
			if err := finish(); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(report.String(), "flow table full:") {
				t.Errorf("the report does not say the table filled:\n%.2000s", report.String())
			}
		})
	}
}
