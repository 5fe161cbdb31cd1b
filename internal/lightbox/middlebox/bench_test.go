package middlebox

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/torbento/bento/internal/lightbox/flowstate"
	"github.com/torbento/bento/internal/lightbox/synth"
)

// BenchmarkPerPacket measures each middlebox's time per packet on the
// flow-state manager (4096 states cached, as LightBox, or 65536) and on
// the strawman that seals and opens every state at every packet, each
// against the same middlebox on a plain map (the baseline), with 10^4,
// 10^5 and 10^6 concurrent flows of synthetic traffic (Zipf 1.1 over
// flows, 64-byte payloads, both directions). Every flow's handshake is
// sent first, outside the timing.
//
// The table under test and its map baseline run in the same process,
// interleaved in rounds of 65,536 packets of the same traffic, so both see
// the same machine: ns/op is the table under test, map-ns/op the
// baseline, x-map the median of the rounds' ratios (table under test over
// the map round right after it), x-map-p10 and -p90 their spread.
func BenchmarkPerPacket(b *testing.B) {
	for _, mb := range []string{"monitor", "firewall", "ids"} {
		for _, flows := range []int{10_000, 100_000, 1_000_000} {
			if mb == "ids" && flows > 100_000 {
				continue // 5.9 KB states: the map baseline would need 6 GB
			}
			for _, table := range []string{"manager4k", "manager64k", "strawman"} {
				b.Run(fmt.Sprintf("%s/flows=%d/%s", mb, flows, table), func(b *testing.B) {
					benchPerPacket(b, mb, table, flows)
				})
			}
		}
	}
}

// A benchRig is one middlebox on one table, with its own copy of the
// traffic.
type benchRig struct {
	st     StateTable
	handle func([]byte, time.Time) error
	gen    *synth.Gen
}

func newBenchRig(b *testing.B, mb, table string, flows int) *benchRig {
	size := map[string]int{"monitor": MonitorStateSize, "firewall": FirewallStateSize, "ids": IDSStateSize}[mb]
	r := &benchRig{}
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
		b.Cleanup(m.Close)
		r.st = m
	case "map":
		r.st = NewMapTable(size)
	default:
		r.st = NewStrawman(size)
	}
	dec := mustDecoder(b, layers.LinkTypeEthernet)
	switch mb {
	case "monitor":
		r.handle = NewMonitor(r.st, dec).Handle
	case "ids":
		x, err := NewIDS(r.st, dec, loadRules(b))
		if err != nil {
			b.Fatal(err)
		}
		r.handle = x.Handle
	default:
		fw := NewFirewall(r.st, dec, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, nil)
		r.handle = func(p []byte, now time.Time) error {
			ok, err := fw.Handle(p, now)
			if err == nil && !ok {
				err = fmt.Errorf("dropped: %s", fw.Log[len(fw.Log)-1])
			}
			return err
		}
	}
	r.gen = synth.New(synth.Config{Flows: flows, PayloadSize: 64, Zipf: 1.1, Seed: 1})
	now := time.Unix(1, 0)
	for i := 0; i < flows; i++ {
		for n := 0; n < 3; n++ {
			if err := r.handle(r.gen.Handshake(i, n), now); err != nil {
				b.Fatal(err)
			}
		}
	}
	r.run(b, 1<<18) // warm the cache with the working set
	if m, ok := r.st.(*flowstate.Manager); ok {
		m.Stats = flowstate.Stats{}
	}
	return r
}

func (r *benchRig) run(b *testing.B, n int) {
	now := time.Unix(1, 0)
	for i := 0; i < n; i++ {
		if err := r.handle(r.gen.Next(), now); err != nil {
			b.Fatal(err)
		}
	}
}

func (r *benchRig) check(b *testing.B, flows int) {
	if r.st.Len() < flows*9/10 {
		b.Fatalf("only %d of %d flows tracked", r.st.Len(), flows)
	}
}

func benchPerPacket(b *testing.B, mb, table string, flows int) {
	const round = 1 << 16
	base := newBenchRig(b, mb, "map", flows)
	rig := newBenchRig(b, mb, table, flows)
	var baseTime time.Duration
	var ratios []float64
	b.ResetTimer()
	for done := 0; done < b.N; done += round {
		n := min(round, b.N-done)
		t0 := time.Now()
		rig.run(b, n)
		t1 := time.Now()
		b.StopTimer()
		base.run(b, n)
		t2 := time.Since(t1)
		baseTime += t2
		ratios = append(ratios, float64(t1.Sub(t0))/float64(t2))
		b.StartTimer()
	}
	b.StopTimer()
	rig.check(b, flows)
	base.check(b, flows)
	b.ReportMetric(float64(baseTime.Nanoseconds())/float64(b.N), "map-ns/op")
	slices.Sort(ratios)
	b.ReportMetric(ratios[len(ratios)/2], "x-map")
	b.ReportMetric(ratios[len(ratios)/10], "x-map-p10")
	b.ReportMetric(ratios[len(ratios)*9/10], "x-map-p90")
	if m, ok := rig.st.(*flowstate.Manager); ok {
		b.ReportMetric(float64(m.Stats.Hits)/float64(m.Stats.Hits+m.Stats.SwapIns), "hit-rate")
	}
}
