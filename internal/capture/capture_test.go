package capture

import (
	"bytes"
	"compress/gzip"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/torbento/bento/internal/etap"
	"github.com/torbento/bento/internal/testutil"
)

func traces(t *testing.T) []string { return testutil.Traces(t) }

func TestReadTraces(t *testing.T) {
	// Packets per trace, as listed in shared/research/lightbox.md §3.
	want := map[string]int{
		"appneta_tcpreplay_test_test.pcap":                                    179,
		"gopacket_gopacket_pcapgo_tests_le_test301.pcapng":                    276,
		"gopacket_gopacket_layers_testdata_cip.pcap":                          26068,
		"OISF_suricata-verify_tests_tls_tls-bypass-missing-event_tor_bl.pcap": 1139,
	}
	for _, f := range traces(t) {
		c, err := ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if n, ok := want[filepath.Base(f)]; ok && len(c.Packets) != n {
			t.Errorf("%s: %d packets, want %d", filepath.Base(f), len(c.Packets), n)
		}
		if len(c.Packets) == 0 {
			t.Errorf("%s: no packets", f)
		}
		if c.Truncated != (filepath.Base(f) == "OISF_suricata-verify_tests_http-mime-truncated_input.pcap") {
			t.Errorf("%s: truncated = %v", filepath.Base(f), c.Truncated)
		}
	}
}

func TestGzip(t *testing.T) {
	files := traces(t)
	raw, err := os.ReadFile(files[0])
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
	if len(a.Packets) != len(b.Packets) || !bytes.Equal(a.Packets[len(a.Packets)-1].Data, b.Packets[len(b.Packets)-1].Data) {
		t.Fatal("gzip-compressed capture reads differently")
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
