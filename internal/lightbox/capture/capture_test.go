package capture

import (
	"bytes"
	"compress/gzip"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/torbento/bento/internal/lightbox/etap"
	"github.com/torbento/bento/internal/lightbox/tracegen"
	"github.com/torbento/bento/internal/testutil"
)

// TestReadTraces reads every generated capture — pcap with microsecond
// and nanosecond timestamps, pcapng with two interfaces and snapped
// packets, gzip-compressed pcapng, raw IP, a file cut short — and checks
// the packets, link type, truncation and timestamp precision; then any
// extra capture in $BENTO_TRACES.
func TestReadTraces(t *testing.T) {
	for _, tr := range testutil.Captures(t) {
		t.Run(tr.Name, func(t *testing.T) {
			c, err := ReadFile(tr.Path)
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Packets) != tr.Packets || tr.Packets == 0 {
				t.Errorf("%d packets, want %d", len(c.Packets), tr.Packets)
			}
			if c.LinkType != tr.LinkType {
				t.Errorf("link type %v, want %v", c.LinkType, tr.LinkType)
			}
			if c.Truncated != (tr.Name == tracegen.Truncated) {
				t.Errorf("truncated = %v", c.Truncated)
			}
			snapped, finer := 0, 0
			for _, p := range c.Packets {
				if p.OrigLen > len(p.Data) {
					snapped++
				}
				if p.OrigLen < len(p.Data) {
					t.Fatalf("a packet of %d bytes captured from %d on the wire", len(p.Data), p.OrigLen)
				}
				if p.Time.Nanosecond()%1000 != 0 {
					finer++
				}
			}
			if snapped != tr.Snapped {
				t.Errorf("%d packets captured short, want %d", snapped, tr.Snapped)
			}
			// Microsecond pcap has none finer; the others keep nanoseconds.
			if (finer > 0) != (tr.Format != "pcap") {
				t.Errorf("%s: %d timestamps finer than a microsecond", tr.Format, finer)
			}
		})
	}
	for _, f := range testutil.Traces(t) {
		t.Run("extra/"+filepath.Base(f), func(t *testing.T) {
			c, err := ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Packets) == 0 {
				t.Error("no packets")
			}
		})
	}
}

// TestGzip compresses a capture and checks it reads the same, packet for
// packet.
func TestGzip(t *testing.T) {
	tr := testutil.Capture(t, tracegen.HTTP)
	raw, err := os.ReadFile(tr.Path)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(raw)
	zw.Close()
	a, err := Read(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Read(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Packets) != tr.Packets || len(b.Packets) != len(a.Packets) || a.LinkType != b.LinkType || b.Truncated {
		t.Fatalf("gzip-compressed capture reads %d packets (truncated %v), plain %d, want %d", len(b.Packets), b.Truncated, len(a.Packets), tr.Packets)
	}
	for i := range a.Packets {
		p, q := a.Packets[i], b.Packets[i]
		if !bytes.Equal(p.Data, q.Data) || !p.Time.Equal(q.Time) || p.OrigLen != q.OrigLen {
			t.Fatalf("packet %d reads differently compressed", i)
		}
	}
}

func TestReplayTiming(t *testing.T) {
	t0 := time.Unix(1000, 0)
	pkts := []etap.Packet{{Time: t0}, {Time: t0.Add(50 * time.Millisecond)}, {Time: t0.Add(100 * time.Millisecond)}}
	var at []time.Duration
	start := time.Now()
	Replay(context.Background(), pkts, true, func(etap.Packet) error { at = append(at, time.Since(start)); return nil })
	if at[2] < 100*time.Millisecond || at[1] < 50*time.Millisecond {
		t.Fatalf("replayed too early: %v", at)
	}
	start = time.Now()
	Replay(context.Background(), pkts, false, func(etap.Packet) error { return nil })
	if time.Since(start) > 50*time.Millisecond {
		t.Fatal("fast replay waited")
	}
}

func TestBadInput(t *testing.T) {
	for _, in := range []string{"", "xy", "not a capture at all"} {
		if _, err := Read(bytes.NewReader([]byte(in))); err == nil {
			t.Errorf("Read(%q) accepted garbage", in)
		}
	}
}

// TestMixedLinkTypes: a pcapng whose interfaces have different link types
// is refused, naming the interface and what to do, not read with the
// second interface's packets silently dropped; one whose interfaces agree
// is read whole.
func TestMixedLinkTypes(t *testing.T) {
	for _, second := range []layers.LinkType{layers.LinkTypeRaw, layers.LinkTypeEthernet} {
		var buf bytes.Buffer
		w, err := pcapgo.NewNgWriter(&buf, layers.LinkTypeEthernet)
		if err != nil {
			t.Fatal(err)
		}
		intf := pcapgo.DefaultNgInterface
		intf.LinkType = second
		id, err := w.AddInterface(intf)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 4 {
			data := make([]byte, 60)
			ci := gopacket.CaptureInfo{Timestamp: time.Unix(1, int64(i)), CaptureLength: 60, Length: 60, InterfaceIndex: i % 2 * id}
			if err := w.WritePacket(ci, data); err != nil {
				t.Fatal(err)
			}
		}
		w.Flush()
		c, err := Read(&buf)
		if second == layers.LinkTypeEthernet {
			if err != nil || len(c.Packets) != 4 {
				t.Fatalf("one link type on two interfaces: %v", err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), "interface (1 in its section) is link type 101") || !strings.Contains(err.Error(), "split it by interface") {
			t.Fatalf("mixed link types: %v", err)
		}
	}
}

// TestMixedLinkTypesAcrossSections: a pcapng whose second section's
// interface 0 is another link type than the first's is refused too (a
// new section numbers its interfaces afresh).
func TestMixedLinkTypesAcrossSections(t *testing.T) {
	var buf bytes.Buffer
	for _, lt := range []layers.LinkType{layers.LinkTypeEthernet, layers.LinkTypeRaw} {
		w, err := pcapgo.NewNgWriter(&buf, lt)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			ci := gopacket.CaptureInfo{Timestamp: time.Unix(1, int64(i)), CaptureLength: 60, Length: 60}
			if err := w.WritePacket(ci, make([]byte, 60)); err != nil {
				t.Fatal(err)
			}
		}
		w.Flush()
	}
	if _, err := Read(&buf); err == nil || !strings.Contains(err.Error(), "link type 101") {
		t.Fatalf("two sections of different link types: %v", err)
	}
}
