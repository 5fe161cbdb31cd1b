package e2e

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/torbento/bento/internal/lightbox/capture"
	"github.com/torbento/bento/internal/lightbox/tracegen"
	"github.com/torbento/bento/internal/testutil"
)

// runLightbox runs a middlebox and a gateway binary against each other.
func runLightbox(t *testing.T, trace string, mbArgs, gwArgs []string) (string, string) {
	t.Helper()
	bin := filepath.Join(testutil.Binaries(t), "lightbox")
	dir := t.TempDir()
	psk := filepath.Join(dir, "psk")
	os.WriteFile(psk, []byte("a pre-shared key for this test only"), 0o600)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	var mbOut, gwOut bytes.Buffer
	mb := exec.Command(bin, append([]string{"middlebox", "-listen", addr, "-psk", psk}, mbArgs...)...)
	mb.Stderr = &mbOut
	if err := mb.Start(); err != nil {
		t.Fatal(err)
	}
	defer mb.Process.Kill()
	var gwErr error
	for i := 0; i < 100; i++ { // until the middlebox listens
		gw := exec.Command(bin, append([]string{"gateway", "-connect", addr, "-psk", psk, "-in", trace}, gwArgs...)...)
		gwOut.Reset()
		gw.Stderr = &gwOut
		if gwErr = gw.Run(); gwErr == nil || !strings.Contains(gwOut.String(), "connection refused") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if gwErr != nil {
		t.Fatalf("gateway: %v\n%s", gwErr, gwOut.String())
	}
	if err := mb.Wait(); err != nil {
		t.Fatalf("middlebox: %v\n%s", err, mbOut.String())
	}
	return gwOut.String(), mbOut.String()
}

func sameCapture(t *testing.T, want, got string) {
	t.Helper()
	a, err := capture.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	b, err := capture.ReadFile(got)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Packets) != len(b.Packets) {
		t.Fatalf("%d packets came out of %d", len(b.Packets), len(a.Packets))
	}
	for i := range a.Packets {
		p, q := a.Packets[i], b.Packets[i]
		if !bytes.Equal(p.Data, q.Data) || p.OrigLen != q.OrigLen || !p.Time.Equal(q.Time) {
			t.Fatalf("packet %d differs", i)
		}
	}
}

// testLightboxBounce sends every capture (the generated ones of
// internal/lightbox/tracegen, then any in $BENTO_TRACES) through the real binaries
// and checks the packets bounced back are bit-exact and in order.
func testLightboxBounce(t *testing.T) {
	type trace struct{ name, path string }
	var all []trace
	for _, tr := range testutil.Captures(t) {
		all = append(all, trace{tr.Name, tr.Path})
	}
	for _, f := range testutil.Traces(t) {
		all = append(all, trace{"extra/" + filepath.Base(f), f})
	}
	for _, tr := range all {
		t.Run(tr.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "returned.pcap")
			gw, mb := runLightbox(t, tr.path, nil, []string{"-out", out})
			sameCapture(t, tr.path, out)
			t.Logf("%s%s", gw, mb)
		})
	}
}

// TestLightboxDirect runs the direct model: the middlebox writes the
// processed packets to the next hop (a capture file). The capture is cut
// short: the gateway sends the whole packets before the cut.
func TestLightboxDirect(t *testing.T) {
	trace := testutil.Capture(t, tracegen.Truncated)
	out := filepath.Join(t.TempDir(), "next-hop.pcap")
	gw, _ := runLightbox(t, trace.Path, []string{"-model", "direct", "-out", out}, nil)
	sameCapture(t, trace.Path, out)
	if !strings.Contains(gw, "cut short") || !strings.Contains(gw, fmt.Sprintf("sent %d packets", trace.Packets)) {
		t.Fatalf("the gateway did not send the %d whole packets of a capture cut short: %s", trace.Packets, gw)
	}
}

// TestLightboxConstantRate sends a small capture at a constant record rate:
// the gateway reports padding records.
func TestLightboxConstantRate(t *testing.T) {
	small := testutil.Capture(t, tracegen.Office)
	out := filepath.Join(t.TempDir(), "returned.pcap")
	gw, _ := runLightbox(t, small.Path, nil, []string{"-out", out, "-rate", "200", "-record-size", "4096", "-realtime"})
	sameCapture(t, small.Path, out)
	if !strings.Contains(gw, "padding") || strings.Contains(gw, "(0 padding)") {
		t.Fatalf("a realtime replay at a constant rate sent no padding: %s", gw)
	}
}

// TestLightboxMiddleboxes runs the monitor and the firewall in the real
// middlebox binary on generated captures.
func TestLightboxMiddleboxes(t *testing.T) {
	caps := testutil.Captures(t, tracegen.LAN, tracegen.Office)
	lan, small := caps[0], caps[1]
	report := filepath.Join(t.TempDir(), "monitor.txt")
	// 1 MiB of cached states holds 2048 of the monitor's, fewer than the
	// capture's flows open at once: states go to the sealed store and come
	// back.
	if lan.PeakFlows <= 2048 {
		t.Fatalf("the LAN capture has at most %d flows open at once: the cache would hold them all", lan.PeakFlows)
	}
	runLightbox(t, lan.Path, []string{"-run", "monitor", "-report", report, "-cache-mb", "1"}, nil)
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	flows := strings.Count(string(b), "\nflow ")
	assets := strings.Count(string(b), "asset ")
	// Every flow is reported once, with all its packets and bytes.
	var pkts, nbytes int
	for _, l := range strings.Split(string(b), "\n") {
		if i := strings.Index(l, " packets "); strings.HasPrefix(l, "flow ") && i > 0 {
			var to, back, bto, bback int
			if _, err := fmt.Sscanf(l[i:], " packets %d/%d bytes %d/%d", &to, &back, &bto, &bback); err != nil {
				t.Fatalf("monitor report: %q: %v", l, err)
			}
			pkts, nbytes = pkts+to+back, nbytes+bto+bback
		}
	}
	if flows != lan.Flows || pkts != lan.IPPackets || nbytes != lan.IPBytes {
		t.Fatalf("monitor on %s: %d flows of %d packets, %d bytes; want %d flows of %d packets, %d bytes",
			lan.Name, flows, pkts, nbytes, lan.Flows, lan.IPPackets, lan.IPBytes)
	}
	for _, want := range []string{" os Windows (TTL 128)", " os Linux/Unix (TTL 64)", " os network device (TTL 255)", " ssh: SSH-2.0-", " http: HTTP/1.1 200 OK", " ftp/smtp: 220 "} {
		if !strings.Contains(string(b), want) {
			t.Errorf("monitor on %s learned no asset %q", lan.Name, want)
		}
	}
	if assets == 0 {
		t.Fatalf("monitor on %s: no assets", lan.Name)
	}
	t.Logf("monitor on %s: %d flows, %d assets", lan.Name, flows, assets)

	report = filepath.Join(t.TempDir(), "firewall.txt")
	out := filepath.Join(t.TempDir(), "passed.pcap")
	runLightbox(t, small.Path, []string{"-run", "firewall", "-report", report}, []string{"-out", out})
	b, _ = os.ReadFile(report)
	var passed, dropped int
	if _, err := fmt.Sscanf(string(b[strings.LastIndex(string(b), "passed"):]), "passed %d dropped %d", &passed, &dropped); err != nil {
		t.Fatalf("firewall report: %v\n%s", err, b)
	}
	c, err := capture.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	// What comes back is what passed: the connections opened from inside.
	if passed != small.Packets-small.Unsolicited || dropped != small.Unsolicited || len(c.Packets) != passed ||
		strings.Count(string(b), "drop ") != dropped {
		t.Fatalf("firewall passed %d, dropped %d, and %d came back; want %d passed and %d dropped\n%s",
			passed, dropped, len(c.Packets), small.Packets-small.Unsolicited, small.Unsolicited, b)
	}
	t.Logf("firewall on %s: passed %d, dropped %d", small.Name, passed, dropped)
}

// TestLightboxIDS runs the IDS in the real middlebox binary on an HTTP
// capture with a rule for its request and status lines: one alert for
// each HTTP message, none missed where a line is split across segments
// or segments come out of order, and no gap.
func TestLightboxIDS(t *testing.T) {
	trace := testutil.Capture(t, tracegen.HTTP)
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules")
	os.WriteFile(rules, []byte(`alert tcp any any <> any any (msg:"http status"; content:"HTTP/1."; sid:1;)`+"\n"), 0o644)
	report := filepath.Join(dir, "ids.txt")
	runLightbox(t, trace.Path, []string{"-run", "ids", "-rules", rules, "-report", report}, nil)
	b, _ := os.ReadFile(report)
	var alerts, gaps int
	if i := strings.LastIndex(string(b), "alerts"); i < 0 {
		t.Fatalf("no IDS summary:\n%s", b)
	} else if _, err := fmt.Sscanf(string(b[i:]), "alerts %d gaps %d", &alerts, &gaps); err != nil {
		t.Fatalf("IDS summary: %v\n%s", err, b)
	}
	if alerts != trace.HTTPMessages || gaps != 0 {
		t.Fatalf("ids on %s: %d alerts, %d gaps; want %d alerts (one per HTTP message), no gap:\n%s", trace.Name, alerts, gaps, trace.HTTPMessages, b)
	}
	t.Logf("ids on %s: %d alerts, %d gaps", trace.Name, alerts, gaps)
}

// TestLightboxEvasions runs the corpus of tracegen.Corpus (the evasion
// suite of docs/SECURITY.md, "LightBox's IDS against evasion";
// encapsulations and tunnels; the Linux cooked and NFLOG link types)
// through the real binaries: each capture crosses etap to the IDS in the
// middlebox, which learns its link type from the gateway, each case's
// alerts in its report are the documented ones, in order, and every
// packet comes back unchanged.
func TestLightboxEvasions(t *testing.T) {
	corpus, err := tracegen.Corpus()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules")
	os.WriteFile(rules, []byte(tracegen.EvasionRules), 0o644)
	for _, cc := range corpus {
		t.Run(cc.Name, func(t *testing.T) {
			trace := filepath.Join(dir, cc.Name)
			report, out := trace+".ids", trace+".returned"
			os.WriteFile(trace, cc.Data, 0o644)
			runLightbox(t, trace, []string{"-run", "ids", "-rules", rules, "-report", report}, []string{"-out", out})
			sameCapture(t, trace, out)
			b, _ := os.ReadFile(report)
			got := map[netip.Addr][]int{}
			for _, l := range strings.Split(string(b), "\n") {
				var sid int
				if _, err := fmt.Sscanf(l, "alert sid %d", &sid); err != nil {
					continue
				}
				i := strings.LastIndex(l, "\" ")
				src, _, _ := strings.Cut(l[i+2:], " -> ")
				ap, err := netip.ParseAddrPort(src)
				if err != nil {
					t.Fatalf("report line %q: %v", l, err)
				}
				got[ap.Addr()] = append(got[ap.Addr()], sid)
			}
			for _, c := range cc.Cases {
				if fmt.Sprint(got[c.Client]) != fmt.Sprint(c.Want) {
					t.Errorf("%s: alerts %v, want %v (%s)", c.Name, got[c.Client], c.Want, c.Why)
				}
				delete(got, c.Client)
			}
			if len(got) > 0 || t.Failed() {
				t.Fatalf("alerts from no case: %v; the report:\n%s", got, b)
			}
			t.Logf("%d cases, each alerted as documented", len(cc.Cases))
		})
	}
}

// TestLightboxTUN feeds the gateway live packets from a TUN device, all
// inside a network namespace made for the test (only lo and tun0): UDP
// datagrams sent to an address routed into tun0 go through etap to the
// middlebox and back, into the gateway's output capture and, injected
// through tun1, into the kernel.
func TestLightboxTUN(t *testing.T) {
	testutil.RequireSandbox(t)
	_, err := exec.LookPath("ip")
	testutil.Require(t, err == nil, "ip (iproute2)")
	ns := fmt.Sprintf("bento-tun-%d", os.Getpid())
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	in := func(args ...string) []string { return append([]string{"ip", "netns", "exec", ns}, args...) }
	sh("ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	sh(in("sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")...)
	sh(in("ip", "link", "set", "lo", "up")...)
	sh(in("ip", "tuntap", "add", "dev", "tun0", "mode", "tun")...)
	sh(in("ip", "addr", "add", "10.99.0.1/24", "dev", "tun0")...)
	sh(in("ip", "link", "set", "tun0", "up")...)
	// tun1: where the gateway injects what comes back.
	sh(in("ip", "tuntap", "add", "dev", "tun1", "mode", "tun")...)
	sh(in("ip", "addr", "add", "10.98.0.1/24", "dev", "tun1")...)
	sh(in("ip", "link", "set", "tun1", "up")...)
	rx := func() string {
		out, _ := exec.Command("ip", "netns", "exec", ns, "cat", "/sys/class/net/tun1/statistics/rx_packets").Output()
		return strings.TrimSpace(string(out))
	}
	if got := rx(); got != "0" {
		t.Fatalf("tun1 received %s packets before the test", got)
	}

	bin := filepath.Join(testutil.Binaries(t), "lightbox")
	dir := t.TempDir()
	psk := filepath.Join(dir, "psk")
	os.WriteFile(psk, []byte("a pre-shared key for this test only"), 0o600)
	out := filepath.Join(dir, "returned.pcap")
	var mbOut, gwOut syncBuffer
	mbArgs := in(bin, "middlebox", "-listen", "127.0.0.1:8890", "-psk", psk, "-linktype", "101")
	mb := exec.Command(mbArgs[0], mbArgs[1:]...)
	mb.Stderr = &mbOut
	if err := mb.Start(); err != nil {
		t.Fatal(err)
	}
	defer mb.Process.Kill()
	var gw *exec.Cmd
	for i := 0; i < 100; i++ {
		args := in(bin, "gateway", "-connect", "127.0.0.1:8890", "-psk", psk, "-tun", "tun0", "-packets", "3", "-out", out, "-tun-out", "tun1")
		gw = exec.Command(args[0], args[1:]...)
		gw.Stderr = &gwOut
		if err := gw.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		if strings.Contains(gwOut.String(), "reading packets from tun0") {
			break
		}
		gw.Wait()
	}
	if !strings.Contains(gwOut.String(), "reading packets from tun0") {
		t.Fatalf("gateway did not start: %s", gwOut.String())
	}
	sh(in("bash", "-c", "for i in 1 2 3; do echo hi$i > /dev/udp/10.99.0.2/9999; done")...)
	done := make(chan error, 1)
	go func() { done <- gw.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("gateway: %v\n%s", err, gwOut.String())
		}
	case <-time.After(20 * time.Second):
		gw.Process.Kill()
		t.Fatalf("gateway did not get 3 packets: %s", gwOut.String())
	}
	mb.Wait()
	c, err := capture.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Packets) != 3 || c.LinkType != 101 {
		t.Fatalf("%d packets of link type %d came back, want 3 raw IP", len(c.Packets), c.LinkType)
	}
	for i, p := range c.Packets {
		want := fmt.Sprintf("hi%d\n", i+1)
		if !bytes.HasSuffix(p.Data, []byte(want)) || p.Data[0]>>4 != 4 || p.Data[9] != 17 {
			t.Fatalf("packet %d is not the UDP datagram %q: % x", i, want, p.Data)
		}
	}
	// The three came back into the kernel through tun1.
	if got := rx(); got != "3" {
		t.Fatalf("tun1 received %s packets, want the 3 returned ones", got)
	}
	t.Logf("%s%s", gwOut.String(), mbOut.String())
}

// fragmentedDNS writes a capture of one UDP datagram to port 53 whose
// payload, "AAAAxTuNnElxAAAA", is cut into IPv4 fragments at 8 and 16
// bytes of the IP payload (the word "tunnel", any case, lies across the
// second cut), sent out of order, with a later fragment overlapping the
// second with other bytes: an IDS that does not reassemble, or keeps the
// rewrite, misses the word.
func fragmentedDNS(t *testing.T) string {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Id: 9, Protocol: layers.IPProtocolUDP, SrcIP: net.IPv4(10, 0, 0, 1), DstIP: net.IPv4(10, 0, 0, 9)}
	udp := &layers.UDP{SrcPort: 5353, DstPort: 53}
	udp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, udp, gopacket.Payload("AAAAxTuNnElxAAAA")); err != nil {
		t.Fatal(err)
	}
	dgram := buf.Bytes() // the IP payload: UDP header and data, 24 bytes
	frag := func(off int, data []byte) []byte {
		h := *ip
		h.FragOffset = uint16(off / 8)
		if off+len(data) < len(dgram) {
			h.Flags = layers.IPv4MoreFragments
		}
		b := gopacket.NewSerializeBuffer()
		eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
		if err := gopacket.SerializeLayers(b, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, &h, gopacket.Payload(data)); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	frames := [][]byte{frag(8, dgram[8:16]), frag(8, []byte("AAAAxTuX")), frag(0, dgram[:8]), frag(16, dgram[16:])}
	path := filepath.Join(t.TempDir(), "fragments.pcap")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := pcapgo.NewWriter(f)
	w.WriteFileHeader(65535, layers.LinkTypeEthernet)
	for i, fr := range frames {
		if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: time.Unix(1_700_000_000, int64(i)*1000), CaptureLength: len(fr), Length: len(fr)}, fr); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// TestLightboxFragments runs the IDS in the real middlebox binary on IPv4
// fragments: the signature cut across them is found once, the rewriting
// overlap raises an alert of its own (fail closed), and every fragment
// still crosses etap unchanged.
func TestLightboxFragments(t *testing.T) {
	trace := fragmentedDNS(t)
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules")
	os.WriteFile(rules, []byte(`alert udp any any -> any 53 (msg:"dns tunnel"; content:"tunnel"; nocase; sid:5;)`+"\n"), 0o644)
	report, out := filepath.Join(dir, "ids.txt"), filepath.Join(dir, "returned.pcap")
	runLightbox(t, trace, []string{"-run", "ids", "-rules", rules, "-report", report}, []string{"-out", out})
	sameCapture(t, trace, out)
	b, _ := os.ReadFile(report)
	overlapAlert := `alert sid 0 "IP fragments overlap with different bytes (an evasion attempt, or a broken path)" 10.0.0.1:0 -> 10.0.0.9:0`
	for _, want := range []string{`alert sid 5 "dns tunnel" 10.0.0.1:5353 -> 10.0.0.9:53`, overlapAlert,
		"1 datagrams reassembled", "1 overlaps (1 with different bytes, 1 duplicates dropped)", "alerts 2 gaps 0 ignored 0 conflicts 0 dropped 0"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("the IDS report lacks %q:\n%s", want, b)
		}
	}
	// Told that the host behind it keeps the last copy, the IDS sees what
	// that host would (the rewrite: no word), and still alerts on the
	// overlap.
	runLightbox(t, trace, []string{"-run", "ids", "-rules", rules, "-report", report, "-frag-policy", "last"}, nil)
	b, _ = os.ReadFile(report)
	for _, want := range []string{overlapAlert, "1 datagrams reassembled", "1 overlaps (1 with different bytes, 0 duplicates dropped)", "alerts 1 gaps 0 ignored 0 conflicts 0 dropped 0"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("with -frag-policy last, the IDS report lacks %q:\n%s", want, b)
		}
	}
}

// TestLightboxLinkTypeTold: the gateway tells the middlebox its capture's
// link type, so a raw-IP capture (a TUN's) is decoded without -linktype:
// every flow is reported, none is lost as "not IP"; and a -linktype that
// contradicts the gateway is refused with what to do.
func TestLightboxLinkTypeTold(t *testing.T) {
	raw := testutil.Capture(t, tracegen.RawIP)
	report := filepath.Join(t.TempDir(), "monitor.txt")
	runLightbox(t, raw.Path, []string{"-run", "monitor", "-report", report}, nil)
	b, _ := os.ReadFile(report)
	if flows := strings.Count(string(b), "\nflow "); raw.Flows == 0 || flows != raw.Flows || !strings.Contains(string(b), " 0 not IP, ") {
		t.Fatalf("monitor on %s without -linktype: %d flows, want %d:\n%s", raw.Name, flows, raw.Flows, b)
	}

	bin := filepath.Join(testutil.Binaries(t), "lightbox")
	dir := t.TempDir()
	psk := filepath.Join(dir, "psk")
	os.WriteFile(psk, []byte("a pre-shared key for this test only"), 0o600)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	mb := exec.Command(bin, "middlebox", "-listen", addr, "-psk", psk, "-run", "monitor", "-linktype", "1", "-report", filepath.Join(dir, "r.txt"))
	var mbOut bytes.Buffer
	mb.Stderr = &mbOut
	if err := mb.Start(); err != nil {
		t.Fatal(err)
	}
	defer mb.Process.Kill()
	for i := 0; i < 100; i++ {
		gw := exec.Command(bin, "gateway", "-connect", addr, "-psk", psk, "-in", raw.Path)
		if out, err := gw.CombinedOutput(); err == nil || !strings.Contains(string(out), "connection refused") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := mb.Wait(); err == nil || !strings.Contains(mbOut.String(), "-linktype 1, but the gateway's packets are link type 101") {
		t.Fatalf("a middlebox told -linktype 1 for a raw-IP capture: %v\n%s", err, mbOut.String())
	}
}

// TestLightboxIdleFlags: the idle timeouts are checked before the
// middlebox listens, with what to do.
func TestLightboxIdleFlags(t *testing.T) {
	bin := filepath.Join(testutil.Binaries(t), "lightbox")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-idle", "0s"}, "-idle 0s: want 1s to 24h"},
		{[]string{"-idle", "10m", "-idle-established", "5m"}, "-idle-established 5m0s: want from -idle (10m0s) to 720h"},
		{[]string{"-idle-established", "9000h"}, "-idle-established 9000h0m0s"},
	} {
		out, err := exec.Command(bin, append([]string{"middlebox", "-listen", "127.0.0.1:1", "-psk", "/nonexistent"}, c.args...)...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("lightbox middlebox %v: %v, %q; want an error saying %q", c.args, err, out, c.want)
		}
	}
}
