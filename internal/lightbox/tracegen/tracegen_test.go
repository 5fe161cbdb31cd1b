package tracegen_test

import (
	"bytes"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/torbento/bento/internal/lightbox/capture"
	"github.com/torbento/bento/internal/lightbox/tracegen"
)

var (
	writeOnce sync.Once
	writeDir  string
	written   []tracegen.Trace
	writeErr  error
)

// captures writes every capture once for the tests of this package.
func captures(t *testing.T) []tracegen.Trace {
	t.Helper()
	writeOnce.Do(func() {
		if writeDir, writeErr = os.MkdirTemp("", "tracegen-test-"); writeErr == nil {
			written, writeErr = tracegen.Write(writeDir)
		}
	})
	if writeErr != nil {
		t.Fatal(writeErr)
	}
	return written
}

func TestMain(m *testing.M) {
	code := m.Run()
	if writeDir != "" {
		os.RemoveAll(writeDir)
	}
	os.Exit(code)
}

// TestDeterministic generates every capture again: the same bytes and the
// same facts come out as the first time.
func TestDeterministic(t *testing.T) {
	first := captures(t)
	if len(first) != len(tracegen.Names()) {
		t.Fatalf("wrote %d captures, want %d", len(first), len(tracegen.Names()))
	}
	for _, a := range first {
		x, err := os.ReadFile(a.Path)
		if err != nil {
			t.Fatal(err)
		}
		y, b, err := tracegen.Generate(a.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(x, y) {
			t.Errorf("%s: two runs made different bytes (%d and %d)", a.Name, len(x), len(y))
		}
		if a.Path != filepath.Join(writeDir, a.Name) {
			t.Errorf("%s written to %q", a.Name, a.Path)
		}
		if a.Path = ""; a != b {
			t.Errorf("%s: facts differ:\n%+v\n%+v", a.Name, a, b)
		}
	}
}

// TestCaptures reads every capture with internal/lightbox/capture and checks what
// Write says it holds against what an independent decoding with gopacket
// finds: packets, link type, truncation, snapped packets, IP packets and
// bytes, flows, the most flows open at once, duration; and that every
// checksum is right.
func TestCaptures(t *testing.T) {
	all := captures(t)
	read := map[string]*capture.Capture{}
	for _, tr := range all {
		t.Run(tr.Name, func(t *testing.T) {
			c, err := capture.ReadFile(tr.Path)
			if err != nil {
				t.Fatal(err)
			}
			read[tr.Name] = c
			if len(c.Packets) != tr.Packets || c.LinkType != tr.LinkType || c.Truncated != tr.Truncated {
				t.Fatalf("read %d packets, link type %v, truncated %v; want %d, %v, %v",
					len(c.Packets), c.LinkType, c.Truncated, tr.Packets, tr.LinkType, tr.Truncated)
			}
			if tr.Truncated != (tr.Name == tracegen.Truncated) {
				t.Errorf("truncated = %v", tr.Truncated)
			}
			got := decode(t, c)
			want := facts{snapped: tr.Snapped, ipPackets: tr.IPPackets, ipBytes: tr.IPBytes, flows: tr.Flows, peak: tr.PeakFlows, duration: tr.Duration}
			if got != want {
				t.Errorf("decoded %+v, generator says %+v", got, want)
			}
			if tr.Packets == 0 || tr.Flows == 0 {
				t.Error("an empty capture")
			}
			t.Logf("%s, %d packets, %d flows (at most %d at once), %d snapped, %d unsolicited, %d HTTP messages, %v",
				tr.Format, tr.Packets, tr.Flows, tr.PeakFlows, tr.Snapped, tr.Unsolicited, tr.HTTPMessages, tr.Duration)
		})
	}
	// Kinds of traffic the tests rely on.
	lan, office, http := find(all, tracegen.LAN), find(all, tracegen.Office), find(all, tracegen.HTTP)
	if lan.Flows < 3000 || lan.PeakFlows <= 2048 {
		t.Errorf("LAN: %d flows, at most %d at once; want 3,000 or more, more than 2,048 at once", lan.Flows, lan.PeakFlows)
	}
	if office.Packets < 150 || office.Packets > 250 || office.Unsolicited == 0 || office.Duration > 2*time.Second {
		t.Errorf("Office: %d packets, %d unsolicited, %v", office.Packets, office.Unsolicited, office.Duration)
	}
	if http.HTTPMessages < 20 {
		t.Errorf("HTTP: %d messages", http.HTTPMessages)
	}
	// Truncated keeps the whole packets of HTTP before the cut.
	full, cut := read[tracegen.HTTP], read[tracegen.Truncated]
	if full == nil || cut == nil || len(cut.Packets) == 0 || len(cut.Packets) >= len(full.Packets) {
		t.Fatal("no truncated prefix of HTTP to compare")
	}
	for i, p := range cut.Packets {
		q := full.Packets[i]
		if !bytes.Equal(p.Data, q.Data) || !p.Time.Equal(q.Time) || p.OrigLen != q.OrigLen {
			t.Fatalf("truncated packet %d differs from HTTP's", i)
		}
	}
	// The gzip-compressed pcapng holds the same packets.
	ng, gz := read[tracegen.TSO], read[tracegen.TSOGzip]
	if ng == nil || gz == nil || len(ng.Packets) != len(gz.Packets) {
		t.Fatal("no pcapng and gzip pair to compare")
	}
	for i := range ng.Packets {
		if p, q := ng.Packets[i], gz.Packets[i]; !bytes.Equal(p.Data, q.Data) || !p.Time.Equal(q.Time) || p.OrigLen != q.OrigLen {
			t.Fatalf("packet %d differs once compressed", i)
		}
	}
}

func TestUnknownName(t *testing.T) {
	if _, err := tracegen.Write(t.TempDir(), "nonesuch.pcap"); err == nil {
		t.Fatal("an unknown capture was written")
	}
}

func find(all []tracegen.Trace, name string) tracegen.Trace {
	for _, tr := range all {
		if tr.Name == name {
			return tr
		}
	}
	return tracegen.Trace{}
}

type facts struct {
	snapped, ipPackets, ipBytes, flows, peak int
	duration                                 time.Duration
}

// decode counts what a capture holds with gopacket's own decoders.
func decode(t *testing.T, c *capture.Capture) facts {
	t.Helper()
	var f facts
	type span struct{ first, last int }
	spans := map[string]*span{}
	for i, p := range c.Packets {
		if i > 0 && p.Time.Before(c.Packets[i-1].Time) {
			t.Fatalf("packet %d goes back in time", i)
		}
		snapped := p.OrigLen > len(p.Data)
		if snapped {
			f.snapped++
		}
		first := gopacket.Decoder(c.LinkType)
		if c.LinkType == layers.LinkTypeRaw {
			first = layers.LayerTypeIPv4
			if len(p.Data) > 0 && p.Data[0]>>4 == 6 {
				first = layers.LayerTypeIPv6
			}
		}
		pk := gopacket.NewPacket(p.Data, first, gopacket.DecodeOptions{NoCopy: true})
		if !snapped {
			if err := pk.ErrorLayer(); err != nil {
				t.Fatalf("packet %d: %v", i, err.Error())
			}
			if _, bad := pk.VerifyChecksums(); len(bad) > 0 {
				t.Fatalf("packet %d: wrong checksums %v", i, bad)
			}
		}
		var src, dst netip.Addr
		var proto layers.IPProtocol
		switch ip := pk.NetworkLayer().(type) {
		case *layers.IPv4:
			src, _ = netip.AddrFromSlice(ip.SrcIP.To4())
			dst, _ = netip.AddrFromSlice(ip.DstIP.To4())
			proto = ip.Protocol
		case *layers.IPv6:
			src, _ = netip.AddrFromSlice(ip.SrcIP)
			dst, _ = netip.AddrFromSlice(ip.DstIP)
			proto = ip.NextHeader
		default:
			continue
		}
		f.ipPackets++
		f.ipBytes += len(p.Data)
		var sport, dport uint16
		switch l4 := pk.TransportLayer().(type) {
		case *layers.TCP:
			sport, dport = uint16(l4.SrcPort), uint16(l4.DstPort)
		case *layers.UDP:
			sport, dport = uint16(l4.SrcPort), uint16(l4.DstPort)
		}
		ends := []string{netip.AddrPortFrom(src, sport).String(), netip.AddrPortFrom(dst, dport).String()}
		slices.Sort(ends)
		key := proto.String() + " " + ends[0] + " " + ends[1]
		if s := spans[key]; s != nil {
			s.last = i
		} else {
			spans[key] = &span{i, i}
		}
	}
	f.flows = len(spans)
	delta := make([]int, len(c.Packets)+1)
	for _, s := range spans {
		delta[s.first]++
		delta[s.last+1]--
	}
	open := 0
	for _, d := range delta {
		open += d
		f.peak = max(f.peak, open)
	}
	if n := len(c.Packets); n > 0 {
		f.duration = c.Packets[n-1].Time.Sub(c.Packets[0].Time)
	}
	return f
}

var update = flag.Bool("update", false, "rewrite testdata/corpus from the generator")

// TestCorpusGolden: the corpus the generator writes is, byte for byte, the
// one kept in testdata/corpus (where a reader of the repository, or
// tshark, can open it); after a deliberate change to the generator, run
// with -update and review the diff of the captures.
func TestCorpusGolden(t *testing.T) {
	cs, err := tracegen.Corpus()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join("testdata", "corpus")
	if *update {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, cc := range cs {
		path := filepath.Join(dir, cc.Name)
		if *update {
			if err := os.WriteFile(path, cc.Data, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		kept, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (write it: go test ./internal/lightbox/tracegen/ -run TestCorpusGolden -update)", err)
		}
		if !bytes.Equal(kept, cc.Data) {
			t.Errorf("%s: the generator's %d bytes differ from the %d in %s (a deliberate change: rerun with -update and review)", cc.Name, len(cc.Data), len(kept), path)
		}
	}
}

// TestCorpusDeterministic: the corpus is the same bytes every time, and
// each case of a capture has a client address of its own and an alert to
// expect.
func TestCorpusDeterministic(t *testing.T) {
	a, err := tracegen.Corpus()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := tracegen.Corpus()
	for i, cc := range a {
		if !bytes.Equal(cc.Data, b[i].Data) {
			t.Fatalf("%s: two generations differ", cc.Name)
		}
		seen := map[string]bool{}
		for _, c := range cc.Cases {
			if seen[c.Client.String()] || len(c.Want) == 0 {
				t.Fatalf("%s: case %v: a client address already used, or no alert expected", cc.Name, c)
			}
			seen[c.Client.String()] = true
		}
	}
}
