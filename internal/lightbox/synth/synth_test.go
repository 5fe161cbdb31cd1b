package synth

import (
	"fmt"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

func TestFrames(t *testing.T) {
	g := New(Config{Flows: 1 << 20, PayloadSize: 100, Zipf: 1.1, Seed: 1})
	seen := map[string]bool{}
	check := func(b []byte, syn, ack bool) string {
		p := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.Default)
		ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if ip == nil || tcp == nil || tcp.SYN != syn || tcp.ACK != ack {
			t.Fatalf("bad frame: %v", p)
		}
		return fmt.Sprintf("%s:%d", ip.SrcIP, uint16(tcp.SrcPort))
	}
	a := check(g.Handshake(1000, 0), true, false)
	if b := check(g.Handshake(1000, 1), true, true); b != "172.16.0.1:80" {
		t.Fatalf("SYN-ACK from %s", b)
	}
	if a != "10.0.3.232:2024" {
		t.Fatalf("SYN from %s", a)
	}
	for i := 0; i < 10000; i++ {
		seen[check(g.Next(), false, true)] = true
	}
	if len(seen) < 500 {
		t.Fatalf("only %d distinct endpoints in 10000 packets", len(seen))
	}
}
