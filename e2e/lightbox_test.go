package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/internal/capture"
	"github.com/torbento/bento/internal/testutil"
)

func traces(t *testing.T) []string { return testutil.Traces(t) }

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

// TestLightboxBounce sends every shared capture through the real binaries
// and checks the packets bounced back are bit-exact and in order.
func TestLightboxBounce(t *testing.T) {
	for _, trace := range traces(t) {
		t.Run(filepath.Base(trace), func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "returned.pcap")
			gw, mb := runLightbox(t, trace, nil, []string{"-out", out})
			sameCapture(t, trace, out)
			t.Logf("%s%s", gw, mb)
		})
	}
}

// TestLightboxDirect runs the direct model: the middlebox writes the
// processed packets to the next hop (a capture file).
func TestLightboxDirect(t *testing.T) {
	trace := traces(t)[0]
	out := filepath.Join(t.TempDir(), "next-hop.pcap")
	runLightbox(t, trace, []string{"-model", "direct", "-out", out}, nil)
	sameCapture(t, trace, out)
}

// TestLightboxConstantRate sends a small capture at a constant record rate:
// the gateway reports padding records.
func TestLightboxConstantRate(t *testing.T) {
	var small string
	for _, f := range traces(t) {
		if strings.Contains(f, "appneta") {
			small = f
		}
	}
	out := filepath.Join(t.TempDir(), "returned.pcap")
	gw, _ := runLightbox(t, small, nil, []string{"-out", out, "-rate", "200", "-record-size", "4096", "-realtime"})
	sameCapture(t, small, out)
	if !strings.Contains(gw, "padding") || strings.Contains(gw, "(0 padding)") {
		t.Fatalf("a realtime replay at a constant rate sent no padding: %s", gw)
	}
}

// TestLightboxMiddleboxes runs the monitor and the firewall in the real
// middlebox binary on real captures.
func TestLightboxMiddleboxes(t *testing.T) {
	var cip, small string
	for _, f := range traces(t) {
		switch {
		case strings.Contains(f, "cip.pcap"):
			cip = f
		case strings.Contains(f, "appneta"):
			small = f
		}
	}
	report := filepath.Join(t.TempDir(), "monitor.txt")
	// 1 MiB of cached states holds 2048 of the monitor's, fewer than the
	// capture's flows: states go to the sealed store and come back.
	runLightbox(t, cip, []string{"-run", "monitor", "-report", report, "-cache-mb", "1"}, nil)
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	flows := strings.Count(string(b), "\nflow ")
	assets := strings.Count(string(b), "asset ")
	// cip.pcap holds 3,017 bidirectional 5-tuples (shared/research/lightbox.md §3).
	if flows < 3000 || flows > 3100 || assets == 0 {
		t.Fatalf("monitor on cip.pcap: %d flows, %d assets", flows, assets)
	}
	t.Logf("monitor on cip.pcap: %d flows, %d assets", flows, assets)

	report = filepath.Join(t.TempDir(), "firewall.txt")
	out := filepath.Join(t.TempDir(), "passed.pcap")
	runLightbox(t, small, []string{"-run", "firewall", "-report", report}, []string{"-out", out})
	b, _ = os.ReadFile(report)
	var passed, dropped int
	if _, err := fmt.Sscanf(string(b[strings.LastIndex(string(b), "passed"):]), "passed %d dropped %d", &passed, &dropped); err != nil {
		t.Fatalf("firewall report: %v\n%s", err, b)
	}
	c, _ := capture.ReadFile(out)
	if passed == 0 || len(c.Packets) != passed {
		t.Fatalf("firewall passed %d (dropped %d) but %d came back", passed, dropped, len(c.Packets))
	}
	t.Logf("firewall on test.pcap: passed %d, dropped %d", passed, dropped)
}

// TestLightboxIDS runs the IDS in the real middlebox binary on a real HTTP
// capture with a rule for its status lines.
func TestLightboxIDS(t *testing.T) {
	var trace string
	for _, f := range traces(t) {
		if strings.Contains(f, "http-mime") {
			trace = f
		}
	}
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules")
	os.WriteFile(rules, []byte(`alert tcp any any <> any any (msg:"http status"; content:"HTTP/1."; sid:1;)`+"\n"), 0o644)
	report := filepath.Join(dir, "ids.txt")
	runLightbox(t, trace, []string{"-run", "ids", "-rules", rules, "-report", report}, nil)
	b, _ := os.ReadFile(report)
	var alerts, gaps int
	fmt.Sscanf(string(b[strings.LastIndex(string(b), "alerts"):]), "alerts %d gaps %d", &alerts, &gaps)
	if alerts == 0 {
		t.Fatalf("no alert on an HTTP capture:\n%s", b)
	}
	t.Logf("ids on %s: %d alerts, %d gaps", filepath.Base(trace), alerts, gaps)
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
