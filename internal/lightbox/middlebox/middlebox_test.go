package middlebox

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/torbento/bento/internal/lightbox/flowstate"
)

// frame builds one Ethernet/IPv4/TCP-or-UDP frame (TCP sequence number
// 1000).
func frame(src string, sport uint16, dst string, dport uint16, proto string, flags uint8, ttl uint8, payload string) []byte {
	return build(src, sport, dst, dport, proto, flags, ttl, 1000, payload)
}

// seg builds a TCP segment with a given sequence number.
func seg(src string, sport uint16, dst string, dport uint16, flags uint8, seq uint32, payload string) []byte {
	return build(src, sport, dst, dport, "tcp", flags, 64, seq, payload)
}

// synAck builds a SYN-ACK acknowledging ack (the client's sequence number
// after its SYN).
func synAck(src string, sport uint16, dst string, dport uint16, seq, ack uint32) []byte {
	return buildAck(src, sport, dst, dport, "tcp", SYN|ACK, 64, seq, ack, "")
}

func build(src string, sport uint16, dst string, dport uint16, proto string, flags, ttl uint8, seq uint32, payload string) []byte {
	return buildAck(src, sport, dst, dport, proto, flags, ttl, seq, 0, payload)
}

func buildAck(src string, sport uint16, dst string, dport uint16, proto string, flags, ttl uint8, seq, ack uint32, payload string) []byte {
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: ttl, SrcIP: net.ParseIP(src).To4(), DstIP: net.ParseIP(dst).To4()}
	var l4 gopacket.SerializableLayer
	if proto == "udp" {
		ip.Protocol = layers.IPProtocolUDP
		u := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
		u.SetNetworkLayerForChecksum(ip)
		l4 = u
	} else {
		ip.Protocol = layers.IPProtocolTCP
		t := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: seq, Ack: ack, Window: 29200,
			FIN: flags&FIN != 0, SYN: flags&SYN != 0, RST: flags&RST != 0, PSH: flags&PSH != 0, ACK: flags&ACK != 0, URG: flags&URG != 0}
		t.SetNetworkLayerForChecksum(ip)
		l4 = t
	}
	buf := gopacket.NewSerializeBuffer()
	gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, l4, gopacket.Payload(payload))
	return buf.Bytes()
}

// loadRules reads testdata/ids.rules.
func loadRules(t testing.TB) []Rule {
	t.Helper()
	f, err := os.Open("testdata/ids.rules")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rules, err := ParseRules(f)
	if err != nil {
		t.Fatal(err)
	}
	return rules
}

func monitorCapture() [][]byte {
	c, s := "10.0.0.1", "10.0.0.2"
	return [][]byte{
		frame(c, 40000, s, 22, "tcp", SYN, 64, ""),
		frame(s, 22, c, 40000, "tcp", SYN|ACK, 64, ""),
		frame(c, 40000, s, 22, "tcp", ACK, 64, ""),
		frame(s, 22, c, 40000, "tcp", ACK|PSH, 64, "SSH-2.0-OpenSSH_9.2\r\n"),
		frame(c, 40000, s, 22, "tcp", ACK|PSH, 64, "SSH-2.0-client\r\n"),
		frame(c, 40000, s, 22, "tcp", FIN|ACK, 64, ""),
		frame(s, 22, c, 40000, "tcp", FIN|ACK, 64, ""),
		frame(c, 40000, s, 22, "tcp", ACK, 64, ""),     // the last ACK: the same flow
		frame(s, 22, c, 40000, "tcp", FIN|ACK, 64, ""), // the FIN again: the same flow
		frame("10.0.0.3", 50000, s, 80, "tcp", SYN, 128, ""),
		frame(s, 80, "10.0.0.3", 50000, "tcp", SYN|ACK, 64, ""),
		frame("10.0.0.3", 50000, s, 80, "tcp", ACK|PSH, 128, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		frame(s, 80, "10.0.0.3", 50000, "tcp", ACK|PSH, 64, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
		frame("10.0.0.3", 50000, s, 80, "tcp", RST, 128, ""),
		frame(c, 5353, "10.0.0.9", 53, "udp", 0, 64, "query"),
		frame("10.0.0.9", 53, c, 5353, "udp", 0, 64, "answer!"),
	}
}

func firewallCapture() [][]byte {
	in, out := "10.0.0.1", "203.0.113.5"
	return [][]byte{
		frame(in, 40000, out, 443, "tcp", SYN, 64, ""),
		frame(out, 443, in, 40000, "tcp", SYN|ACK, 64, ""),
		frame(in, 40000, out, 443, "tcp", ACK, 64, ""),
		frame(out, 443, in, 40000, "tcp", ACK|PSH, 64, "data"),
		frame(in, 40000, out, 443, "tcp", FIN|ACK, 64, ""),
		frame(out, 443, in, 40000, "tcp", FIN|ACK, 64, ""),
		frame(in, 40000, out, 443, "tcp", ACK, 64, ""),
		frame(out, 443, in, 40000, "tcp", ACK|PSH, 64, "late"),
		frame("198.51.100.7", 6000, in, 23, "tcp", SYN, 64, ""),
		frame("198.51.100.7", 6001, "10.0.0.2", 22, "tcp", SYN, 64, ""),
		frame("10.0.0.2", 22, "198.51.100.7", 6001, "tcp", SYN|ACK, 64, ""),
		frame("198.51.100.7", 6002, in, 40001, "tcp", ACK, 64, ""),
		frame(in, 5353, "8.8.8.8", 53, "udp", 0, 64, "q"),
		frame("8.8.8.8", 53, in, 5353, "udp", 0, 64, "a"),
		frame("8.8.4.4", 53, in, 5353, "udp", 0, 64, "spoof"),
		frame("198.51.100.7", 6003, "10.0.0.2", 22, "tcp", ACK, 64, ""),
		frame(in, 40002, out, 443, "tcp", ACK, 64, ""),
		// Retransmissions around a handshake and a teardown, then the
		// ports used again: all pass.
		seg(in, 40003, out, 443, SYN, 100, ""),
		seg(out, 443, in, 40003, SYN|ACK, 900, ""),
		seg(in, 40003, out, 443, SYN, 100, ""),
		seg(out, 443, in, 40003, SYN|ACK, 900, ""),
		seg(in, 40003, out, 443, ACK, 101, ""),
		seg(in, 40003, out, 443, ACK|PSH, 101, "hello"),
		seg(in, 40003, out, 443, FIN|ACK, 106, ""),
		seg(out, 443, in, 40003, FIN|ACK, 901, ""),
		seg(in, 40003, out, 443, ACK, 107, ""),
		seg(in, 40003, out, 443, ACK|PSH, 101, "hello"), // data sent before the FIN, again
		seg(in, 40003, out, 443, ACK, 107, ""),          // the last ACK, again
		seg(out, 443, in, 40003, FIN|ACK, 901, ""),      // the server's FIN, again
		seg(out, 443, in, 40003, ACK|PSH, 902, "late"),  // past the server's FIN: dropped
		seg(in, 40003, out, 443, SYN, 5000, ""),
		seg(out, 443, in, 40003, SYN|ACK, 7000, ""),
	}
}

// tables returns the three state tables for states of size bytes; the
// manager's cache holds two states, so states are sealed and opened all
// the time.
func tables(t *testing.T, size int) map[string]StateTable {
	m, err := flowstate.New(flowstate.Config{StateSize: size, CacheEntries: 2, IdleTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return map[string]StateTable{"manager": m, "map": NewMapTable(size), "strawman": NewStrawman(size)}
}

func expected(t *testing.T, name string) string {
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	var keep []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "#") && l != "" {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

func TestMonitor(t *testing.T) {
	want := expected(t, "monitor.expected")
	for name, table := range tables(t, MonitorStateSize) {
		t.Run(name, func(t *testing.T) {
			mo := NewMonitor(table, mustDecoder(t, layers.LinkTypeEthernet))
			now := time.Unix(100, 0)
			for i, f := range monitorCapture() {
				if err := mo.Handle(f, now.Add(time.Duration(i)*time.Millisecond)); err != nil {
					t.Fatal(err)
				}
			}
			// The UDP flow is still open: end it by expiry.
			if m, ok := table.(*flowstate.Manager); ok {
				m.Expire(now.Add(time.Hour), mo.Expired)
			} else {
				for _, k := range openKeys(table) {
					st, _, _ := table.Lookup(k, now)
					mo.Expired(k, append([]byte(nil), st...))
					table.Remove(k)
				}
			}
			var got []string
			got = append(got, "assets:")
			for _, a := range mo.Assets() {
				got = append(got, a.String())
			}
			got = append(got, "flows:")
			var flows []string // recorded as they end or expire: sorted
			for _, r := range mo.Records {
				flows = append(flows, r.String())
			}
			sort.Strings(flows)
			got = append(got, flows...)
			if g := strings.Join(got, "\n"); g != want {
				t.Errorf("got:\n%s\nwant:\n%s", g, want)
			}
		})
	}
}

// openKeys lists the flows of a MapTable or Strawman.
func openKeys(t StateTable) []flowstate.Key {
	var out []flowstate.Key
	switch tt := t.(type) {
	case *MapTable:
		for k := range tt.m {
			out = append(out, k)
		}
	case *Strawman:
		tt.flush()
		for k := range tt.m {
			out = append(out, k)
		}
	}
	return out
}

func TestFirewall(t *testing.T) {
	want := expected(t, "firewall.expected")
	for name, table := range tables(t, FirewallStateSize) {
		t.Run(name, func(t *testing.T) {
			fw := NewFirewall(table, mustDecoder(t, layers.LinkTypeEthernet),
				[]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, []netip.AddrPort{netip.MustParseAddrPort("10.0.0.2:22")})
			for i, f := range firewallCapture() {
				if _, err := fw.Handle(f, time.Unix(100, int64(i))); err != nil {
					t.Fatal(err)
				}
			}
			got := strings.Join(append(fw.Log, fmt.Sprintf("passed %d dropped %d", fw.Passed, fw.Dropped)), "\n")
			if got != want {
				t.Errorf("got:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// TestFirewallReopen: the ports of a closed connection open again only
// for a side allowed to open a connection: an outside host answering on
// them with a SYN of its own is dropped, an inside one passes. A SYN-ACK
// retransmitted after the handshake passes.
func TestFirewallReopen(t *testing.T) {
	in, out := "10.0.0.1", "192.0.2.9"
	teardown := [][]byte{
		seg(in, 40000, out, 80, SYN, 1000, ""),
		seg(out, 80, in, 40000, SYN|ACK, 5000, ""),
		seg(in, 40000, out, 80, ACK, 1001, ""),
		seg(out, 80, in, 40000, SYN|ACK, 5000, ""), // retransmitted: the ACK was lost
		seg(in, 40000, out, 80, FIN|ACK, 1001, ""),
		seg(out, 80, in, 40000, FIN|ACK, 5001, ""),
		seg(in, 40000, out, 80, ACK, 1002, ""),
	}
	for _, tc := range []struct {
		name string
		syn  []byte
		pass bool
	}{
		{"from outside", seg(out, 80, in, 40000, SYN, 7000, ""), false},
		{"from inside", seg(in, 40000, out, 80, SYN, 9000, ""), true},
	} {
		for name, table := range tables(t, FirewallStateSize) {
			t.Run(tc.name+"/"+name, func(t *testing.T) {
				fw := NewFirewall(table, mustDecoder(t, layers.LinkTypeEthernet), []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, nil)
				for i, f := range append(append([][]byte(nil), teardown...), tc.syn) {
					if _, err := fw.Handle(f, time.Unix(100, int64(i))); err != nil {
						t.Fatal(err)
					}
				}
				if want := len(teardown); fw.Passed != want+map[bool]int{true: 1}[tc.pass] {
					t.Fatalf("passed %d of %d packets: %q", fw.Passed, len(teardown)+1, fw.Log)
				}
			})
		}
	}
}

// TestFirewallLegitimate: connections opened and closed in every way real
// stacks do pass whole, not one packet dropped: retransmitted SYN and
// SYN-ACK, simultaneous open, a close begun by either side, a
// simultaneous close, a half-close with data still flowing the other way,
// a reset; and a blind RST (acknowledging nothing) before the SYN-ACK
// does not end the connection being opened.
func TestFirewallLegitimate(t *testing.T) {
	in, out := "10.0.0.1", "192.0.2.9"
	c := func(flags uint8, seq uint32, p string) []byte { return seg(in, 40000, out, 443, flags, seq, p) }
	s := func(flags uint8, seq uint32, p string) []byte { return seg(out, 443, in, 40000, flags, seq, p) }
	open := [][]byte{c(SYN, 100, ""), s(SYN|ACK, 900, ""), c(ACK, 101, "")}
	data := [][]byte{c(ACK|PSH, 101, "hello"), s(ACK|PSH, 901, "world")}
	for _, tc := range []struct {
		name string
		pkts [][]byte
	}{
		{"retransmitted SYN and SYN-ACK", [][]byte{c(SYN, 100, ""), c(SYN, 100, ""), s(SYN|ACK, 900, ""), s(SYN|ACK, 900, ""), c(ACK, 101, ""), c(ACK|PSH, 101, "hi")}},
		{"simultaneous open", [][]byte{c(SYN, 100, ""), s(SYN, 900, ""), c(SYN|ACK, 100, ""), s(SYN|ACK, 900, ""), c(ACK, 101, ""), s(ACK, 901, ""), c(ACK|PSH, 101, "hi"), s(ACK|PSH, 901, "yo")}},
		{"closed by the client", cat2(open, data, [][]byte{c(FIN|ACK, 106, ""), s(ACK, 906, ""), s(FIN|ACK, 906, ""), c(ACK, 107, "")})},
		{"closed by the server", cat2(open, data, [][]byte{s(FIN|ACK, 906, ""), c(ACK, 106, ""), c(FIN|ACK, 106, ""), s(ACK, 907, "")})},
		{"simultaneous close", cat2(open, data, [][]byte{c(FIN|ACK, 106, ""), s(FIN|ACK, 906, ""), c(ACK, 107, ""), s(ACK, 907, "")})},
		{"half-closed, the server still sending", cat2(open, data, [][]byte{c(FIN|ACK, 106, ""), s(ACK|PSH, 906, "more"), c(ACK, 107, ""), s(FIN|ACK, 910, ""), c(ACK, 107, "")})},
		{"reset", cat2(open, data, [][]byte{c(RST|ACK, 106, "")})},
		{"a blind RST before the SYN-ACK", [][]byte{c(SYN, 100, ""), s(RST, 777, ""), s(SYN|ACK, 900, ""), c(ACK, 101, ""), c(ACK|PSH, 101, "hi")}},
	} {
		for name, table := range tables(t, FirewallStateSize) {
			t.Run(tc.name+"/"+name, func(t *testing.T) {
				fw := NewFirewall(table, mustDecoder(t, layers.LinkTypeEthernet), []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, nil)
				for i, f := range tc.pkts {
					if _, err := fw.Handle(f, time.Unix(100, int64(i))); err != nil {
						t.Fatal(err)
					}
				}
				if fw.Dropped != 0 {
					t.Fatalf("dropped %d of %d packets: %q", fw.Dropped, len(tc.pkts), fw.Log)
				}
			})
		}
	}
}

func cat2(parts ...[][]byte) [][]byte {
	var out [][]byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// TestForgedReset: a RST off the sequence number the host expects (a
// host answers it with a challenge ACK, RFC 5961) neither ends the
// firewall's connection, so the data after it still passes, nor splits
// the monitor's flow in two; a RST at that sequence number ends both (the
// monitor's flow lingering, closed, until the ports are used again).
func TestForgedReset(t *testing.T) {
	in, out := "10.0.0.1", "192.0.2.9"
	c := func(flags uint8, seq uint32, p string) []byte { return seg(in, 40000, out, 443, flags, seq, p) }
	s := func(flags uint8, seq uint32, p string) []byte { return seg(out, 443, in, 40000, flags, seq, p) }
	pkts := [][]byte{c(SYN, 100, ""), s(SYN|ACK, 900, ""), c(ACK, 101, ""), c(ACK|PSH, 101, "hello"),
		s(RST, 5000, ""),        // forged: the server's next is 901
		c(RST|ACK, 200, ""),     // forged: the client's next is 106
		c(ACK|PSH, 106, "more"), // still the connection's
		c(RST|ACK, 110, ""),     // the real one
		c(ACK|PSH, 110, "late")} // after it: no connection
	for name, table := range tables(t, FirewallStateSize) {
		t.Run("firewall/"+name, func(t *testing.T) {
			fw := NewFirewall(table, mustDecoder(t, layers.LinkTypeEthernet), []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, nil)
			for i, f := range pkts {
				if _, err := fw.Handle(f, time.Unix(100, int64(i))); err != nil {
					t.Fatal(err)
				}
			}
			if fw.Dropped != 1 || !strings.Contains(fw.Log[0], "no connection") {
				t.Fatalf("passed %d, dropped %d %q; want only the packet after the real RST dropped", fw.Passed, fw.Dropped, fw.Log)
			}
		})
	}
	for name, table := range tables(t, MonitorStateSize) {
		t.Run("monitor/"+name, func(t *testing.T) {
			mo := NewMonitor(table, mustDecoder(t, layers.LinkTypeEthernet))
			// After the real RST the flow lingers, closed: the late data
			// counts in it, and the next SYN on its ports ends it.
			for i, f := range append(pkts[:len(pkts):len(pkts)], c(SYN, 5000, "")) {
				if err := mo.Handle(f, time.Unix(100, int64(i))); err != nil {
					t.Fatal(err)
				}
			}
			if len(mo.Records) != 1 || mo.Records[0].PktsToServer != 7 || mo.Records[0].PktsBack != 2 {
				t.Fatalf("records %v; want one flow of 7 packets to the server and 2 back", mo.Records)
			}
		})
	}
}
