package middlebox

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/torbento/bento/internal/flowstate"
	"github.com/torbento/bento/internal/synth"
)

// BenchmarkPerPacket measures each middlebox's time per packet on the
// flow-state manager (4096 states cached, as LightBox, or 65536), on a plain map
// (baseline) and on the strawman that seals and opens every state at
// every packet, with 10^4, 10^5 and 10^6 concurrent flows of synthetic
// traffic (Zipf 1.1 over flows, 64-byte payloads). Every flow's handshake
// is sent first, outside the timing.
func BenchmarkPerPacket(b *testing.B) {
	for _, mb := range []string{"monitor", "firewall", "ids"} {
		for _, flows := range []int{10_000, 100_000, 1_000_000} {
			if mb == "ids" && flows > 100_000 {
				continue // 5.9 KB states: the map baseline would need 6 GB
			}
			for _, table := range []string{"manager4k", "manager64k", "map", "strawman"} {
				b.Run(fmt.Sprintf("%s/flows=%d/%s", mb, flows, table), func(b *testing.B) {
					benchPerPacket(b, mb, table, flows)
				})
			}
		}
	}
}

func benchPerPacket(b *testing.B, mb, table string, flows int) {
	size := map[string]int{"monitor": MonitorStateSize, "firewall": FirewallStateSize, "ids": IDSStateSize}[mb]
	var st StateTable
	switch table {
	case "manager4k", "manager64k":
		cache := 4096
		if table == "manager64k" {
			cache = 65536
		}
		m, err := flowstate.New(flowstate.Config{StateSize: size, CacheEntries: cache, ExpectedFlows: flows})
		if err != nil {
			b.Fatal(err)
		}
		st = m
	case "map":
		st = NewMapTable(size)
	default:
		st = NewStrawman(size)
	}
	dec := NewDecoder(layers.LinkTypeEthernet)
	var handle func([]byte, time.Time) error
	switch mb {
	case "monitor":
		mo := NewMonitor(st, dec)
		handle = mo.Handle
	case "ids":
		x, err := NewIDS(st, dec, loadRules(b))
		if err != nil {
			b.Fatal(err)
		}
		handle = x.Handle
	default:
		fw := NewFirewall(st, dec, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, nil)
		handle = func(p []byte, now time.Time) error {
			ok, err := fw.Handle(p, now)
			if err == nil && !ok {
				err = fmt.Errorf("dropped: %s", fw.Log[len(fw.Log)-1])
			}
			return err
		}
	}
	g := synth.New(synth.Config{Flows: flows, PayloadSize: 64, Zipf: 1.1, Seed: 1})
	now := time.Unix(1, 0)
	for i := 0; i < flows; i++ {
		for n := 0; n < 3; n++ {
			if err := handle(g.Handshake(i, n), now); err != nil {
				b.Fatal(err)
			}
		}
	}
	for i := 0; i < 1<<18; i++ { // warm the cache with the working set
		handle(g.Next(), now)
	}
	if m, ok := st.(*flowstate.Manager); ok {
		m.Stats = flowstate.Stats{}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := handle(g.Next(), now); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if st.Len() < flows*9/10 {
		b.Fatalf("only %d of %d flows tracked", st.Len(), flows)
	}
	if m, ok := st.(*flowstate.Manager); ok {
		b.ReportMetric(float64(m.Stats.Hits)/float64(m.Stats.Hits+m.Stats.SwapIns), "hit-rate")
	}
}
