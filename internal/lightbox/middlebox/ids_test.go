package middlebox

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
)

func idsCapture() [][]byte {
	c, s := "10.0.0.1", "10.0.0.2"
	return [][]byte{
		seg(c, 40000, s, 80, SYN, 1000, ""),
		synAck(s, 80, c, 40000, 5000, 1001),
		seg(c, 40000, s, 80, ACK|PSH, 1001, "GET /x?q="),        // 1001-1009, in order
		seg(c, 40000, s, 80, ACK|PSH, 1013, "ack HTTP/1.1\r\n"), // 1013-1026, early
		seg(c, 40000, s, 80, ACK|PSH, 1010, "attXXXX"),          // 1010-1016, overlaps "ack "
		seg(c, 40000, s, 80, ACK|PSH, 1001, "GET /EvIL"),        // retransmission, different bytes
		seg(s, 80, c, 40000, ACK|PSH, 5001, "HTTP/1.1 200 OK\r\nsplit-pat"),
		seg(s, 80, c, 40000, ACK|PSH, 5027, "tern evil \xde\xad\xbe\xef\r\n"),
		seg(c, 40000, s, 80, ACK|PSH, 1027, "abs"),                           // 1027-1029
		seg(c, 40000, s, 80, ACK|PSH, 4030, "ent"),                           // 3000 bytes later: beyond the window, held in the pool
		seg(c, 40000, s, 80, ACK|PSH, 1030, strings.Repeat("y", 2997)+"abs"), // the hole, filled late
		frame(c, 5353, "10.0.0.9", 53, "udp", 0, 64, "xTuNnElx"),
		frame("10.0.0.9", 53, c, 5353, "udp", 0, 64, "tunnel"),
		seg(c, 40000, s, 80, RST, 4033, ""),
	}
}

func TestIDS(t *testing.T) {
	rules := loadRules(t)
	want := expected(t, "ids.expected")
	for name, table := range tables(t, IDSStateSize) {
		t.Run(name, func(t *testing.T) {
			x, err := NewIDS(table, mustDecoder(t, layers.LinkTypeEthernet), rules)
			if err != nil {
				t.Fatal(err)
			}
			for i, fr := range idsCapture() {
				if err := x.Handle(fr, time.Unix(100, int64(i))); err != nil {
					t.Fatal(err)
				}
			}
			var got []string
			for _, a := range x.Alerts {
				got = append(got, a.String())
			}
			got = append(got, fmt.Sprintf("gaps %d", x.Gaps))
			if g := strings.Join(got, "\n"); g != want {
				t.Errorf("got:\n%s\nwant:\n%s", g, want)
			}
			if table.Len() != 1 {
				t.Errorf("%d flows left after RST; want the connection, lingering closed", table.Len())
			}
		})
	}
}

func TestParseRulesErrors(t *testing.T) {
	tests := map[string]string{
		`alert tcp any any -> any 80 (msg:"x"; sid:1;)`:                                 "needs content",
		`alert icmp any any -> any any (content:"x"; sid:1;)`:                           "protocol",
		`alert tcp any any => any 80 (content:"x"; sid:1;)`:                             "direction",
		`alert tcp any any -> any 80 (content:"x"; content:"y"; sid:1;)`:                "more than one content",
		`alert tcp any any -> any 80 (content:"|zz|"; sid:1;)`:                          "bad hex",
		`alert tcp any any -> any 80 (content:"x"; pcre:"/x/"; sid:1;)`:                 "not supported",
		`alert tcp 10.0.0.300 any -> any 80 (content:"x"; sid:1;)`:                      "address",
		`drop tcp any any -> any 80 (content:"x"; sid:1;)`:                              "header",
		`alert tcp any any -> any 80 content:"x"; sid:1;`:                               "parentheses",
		`alert udp any any -> any 53 (content:"x"; flow:to_server; sid:1;)`:             "tcp rules only",
		`alert tcp any any -> any 80 (content:"x"; flow:to_server,to_client; sid:1;)`:   "both directions",
		`alert tcp any any -> any 80 (content:"x"; flow:no_stream; sid:1;)`:             "not supported",
		`alert tcp any any -> any 80 (content:"x"; flow:not_established; sid:1;)`:       "not supported",
		`alert tcp any any -> any 80 (content:"x"; flow:established,stateless; sid:1;)`: "both stateless and established",
		`alert tcp any any -> any 80 (content:"x"; flow:to_serverr; sid:1;)`:            "flow keyword",
	}
	for in, want := range tests {
		_, err := ParseRules(strings.NewReader(in))
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("ParseRules(%q) = %v, want %q", in, err, want)
		}
	}
}

func FuzzParseRules(f *testing.F) {
	b, _ := os.ReadFile("testdata/ids.rules")
	f.Add(string(b))
	f.Fuzz(func(t *testing.T, s string) {
		rules, err := ParseRules(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, r := range rules {
			if len(r.Content) == 0 || len(r.Content) > MaxContent || r.SID <= 0 {
				t.Fatalf("accepted rule %+v", r)
			}
		}
		if len(rules) < 50 {
			if _, err := NewIDS(NewMapTable(IDSStateSize), mustDecoder(t, layers.LinkTypeEthernet), rules); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestIDSScansOnceAfterClose: data retransmitted after both FINs (and the
// last ACK) is recognised as delivered, not scanned again; a new
// connection on the same ports is scanned afresh.
func TestIDSScansOnceAfterClose(t *testing.T) {
	c, s := "10.0.0.1", "10.0.0.2"
	capture := [][]byte{
		seg(c, 40000, s, 80, SYN, 1000, ""),
		synAck(s, 80, c, 40000, 5000, 1001),
		seg(c, 40000, s, 80, ACK|PSH, 1001, "GET /attack"),
		seg(c, 40000, s, 80, FIN|ACK, 1012, ""),
		seg(s, 80, c, 40000, FIN|ACK, 5001, ""),
		seg(c, 40000, s, 80, ACK, 1013, ""),
		seg(c, 40000, s, 80, ACK|PSH, 1001, "GET /attack"), // late, again
		seg(c, 40000, s, 80, SYN, 9000, ""),                // the ports again
		synAck(s, 80, c, 40000, 7000, 9001),
		seg(c, 40000, s, 80, ACK|PSH, 9001, "GET /attack"),
		seg(c, 40000, s, 80, RST, 9012, ""),
	}
	for name, table := range tables(t, IDSStateSize) {
		t.Run(name, func(t *testing.T) {
			x := runIDS(t, table, loadRules(t), capture)
			var got []string
			for _, a := range x.Alerts {
				got = append(got, a.String())
			}
			if len(got) != 2 || !strings.Contains(got[0], "sid 1001") || !strings.Contains(got[1], "sid 1001") {
				t.Fatalf("alerts %q; want sid 1001 twice (once per connection)", got)
			}
			if table.Len() != 1 {
				t.Errorf("%d flows left after RST; want the connection, lingering closed", table.Len())
			}
		})
	}
}

// TestIDSFlowOption: flow: is enforced, not ignored: a to_server rule
// fires on the client's data only, a to_client rule on the server's,
// established only after the handshake, and a connection picked up in
// the middle (no SYN seen) matches no rule with a direction.
func TestIDSFlowOption(t *testing.T) {
	rules, err := ParseRules(strings.NewReader(`alert tcp any any <> any any (msg:"to server"; content:"ping"; flow:to_server,established; sid:1;)
alert tcp any any <> any any (msg:"to client"; content:"pong"; flow:from_server; sid:2;)
alert tcp any any <> any any (msg:"any way"; content:"both"; flow:only_stream; sid:3;)
`))
	if err != nil {
		t.Fatal(err)
	}
	c, s := "10.0.0.1", "10.0.0.2"
	capture := [][]byte{
		seg(c, 40000, s, 80, SYN, 1000, ""),
		seg(c, 40000, s, 80, ACK|PSH, 1001, "pong ping"), // before the SYN-ACK: not established (alerted); not the server's
		synAck(s, 80, c, 40000, 5000, 1001),
		seg(c, 40000, s, 80, ACK|PSH, 1010, "ping pong both"), // sid 1 and 3
		seg(s, 80, c, 40000, ACK|PSH, 5001, "ping pong both"), // sid 2 and 3
		// Picked up in the middle: no direction known.
		seg("10.0.0.5", 41000, s, 80, ACK|PSH, 3000, "ping pong both"), // sid 3 only
	}
	for name, table := range tables(t, IDSStateSize) {
		t.Run(name, func(t *testing.T) {
			x := runIDS(t, table, rules, capture)
			var got []string
			for _, a := range x.Alerts {
				got = append(got, fmt.Sprintf("%d %s", a.SID, a.Src))
			}
			want := "0 10.0.0.1:40000,1 10.0.0.1:40000,3 10.0.0.1:40000,2 10.0.0.2:80,3 10.0.0.2:80,3 10.0.0.5:41000"
			if strings.Join(got, ",") != want {
				t.Fatalf("alerts %s, want %s", strings.Join(got, ","), want)
			}
		})
	}
}

// runIDS runs an IDS with rules over capture (Ethernet frames, a
// nanosecond apart).
func runIDS(t *testing.T, table StateTable, rules []Rule, capture [][]byte) *IDS {
	t.Helper()
	x, err := NewIDS(table, mustDecoder(t, layers.LinkTypeEthernet), rules)
	if err != nil {
		t.Fatal(err)
	}
	for i, fr := range capture {
		if err := x.Handle(fr, time.Unix(100, int64(i))); err != nil {
			t.Fatal(err)
		}
	}
	return x
}

// TestIDSEvasions: TCP packets that a host discards must not change what
// the IDS reassembles. Each capture hides "attack" from an IDS that
// believed the packet: a SYN or SYN-ACK in the middle of the connection
// (which would realign the stream's sequence numbers), a RST at a
// sequence number the host does not accept (which would wipe the bytes
// matched so far), data without ACK, a FIN in a hole and a forged FIN
// followed by a SYN (which would make the connection look closed and
// reopened). A host drops each, or answers it with a challenge ACK and
// keeps the connection; the IDS ignores them, and says so. A RST at the
// expected sequence number that the host may not have taken (a bad
// checksum, a short TTL) does not blind it either: the connection lingers,
// and data after it is scanned in its stream, with an alert of its own.
func TestIDSEvasions(t *testing.T) {
	rules, err := ParseRules(strings.NewReader(`alert tcp any any -> any 80 (msg:"attack"; content:"attack"; flow:to_server,established; sid:1;)` + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	c, s := "10.0.0.1", "10.0.0.2"
	open := [][]byte{
		seg(c, 40000, s, 80, SYN, 1000, ""),
		synAck(s, 80, c, 40000, 5000, 1001),
		seg(c, 40000, s, 80, ACK, 1001, ""),
		seg(c, 40000, s, 80, ACK|PSH, 1001, "GET /att"),
	}
	rest := seg(c, 40000, s, 80, ACK|PSH, 1009, "ack HTTP/1.0")
	for _, tc := range []struct {
		name    string
		forged  [][]byte
		sids    string
		ignored int
	}{
		{"nothing forged", nil, "[1]", 0},
		{"a SYN mid-connection", [][]byte{seg(c, 40000, s, 80, SYN, 90000, "")}, "[1]", 1},
		// At the next sequence number less one, a SYN looks like its
		// retransmission: it changes nothing, its data is scanned alone.
		{"a SYN mid-connection, at the next sequence number less one, with data", [][]byte{seg(c, 40000, s, 80, SYN, 1008, "XXXX")}, "[1]", 0},
		{"the first SYN again, with other data", [][]byte{seg(c, 40000, s, 80, SYN, 1000, "GET /xxx")}, "[1]", 1},
		{"a SYN-ACK from the server mid-connection", [][]byte{seg(s, 80, c, 40000, SYN|ACK, 70000, "")}, "[1]", 1},
		{"a SYN-ACK from the client", [][]byte{seg(c, 40000, s, 80, SYN|ACK, 90000, "")}, "[1]", 1},
		{"a RST in the window but not at its start", [][]byte{seg(c, 40000, s, 80, RST, 1010, "")}, "[1]", 1},
		{"a RST from the server far from its sequence", [][]byte{seg(s, 80, c, 40000, RST, 123456, "")}, "[1]", 1},
		{"a RST at the expected sequence number, not taken", [][]byte{seg(c, 40000, s, 80, RST, 1009, "")}, "[0 1]", 0},
		{"data without ACK, other bytes", [][]byte{seg(c, 40000, s, 80, PSH, 1009, "XXXXXXXXXXXX")}, "[1]", 1},
		{"a FIN far ahead from each side, then a SYN", [][]byte{
			seg(c, 40000, s, 80, FIN|ACK, 60000, ""), seg(s, 80, c, 40000, FIN|ACK, 60000, ""),
			seg(c, 40000, s, 80, SYN, 90000, "")}, "[1]", 1},
		{"a FIN in a hole, the server's FIN, then a SYN", [][]byte{
			seg(c, 40000, s, 80, FIN|ACK, 1101, ""), seg(s, 80, c, 40000, FIN|ACK, 5001, ""),
			seg(c, 40000, s, 80, SYN, 90000, "")}, "[1]", 1},
	} {
		for name, table := range tables(t, IDSStateSize) {
			t.Run(tc.name+"/"+name, func(t *testing.T) {
				capture := append(append(append([][]byte(nil), open...), tc.forged...), rest)
				x := runIDS(t, table, rules, capture)
				if sids(x) != tc.sids || x.Ignored != tc.ignored {
					t.Errorf("alerts %v, %d ignored; want %s, %d ignored", x.Alerts, x.Ignored, tc.sids, tc.ignored)
				}
			})
		}
	}
}

// TestIDSUrgentData: urgent data, which Linux takes out of the stream
// (one byte) and other hosts leave in it, raises an alert of its own.
func TestIDSUrgentData(t *testing.T) {
	c, s := "10.0.0.1", "10.0.0.2"
	x := runIDS(t, NewMapTable(IDSStateSize), loadRules(t), [][]byte{
		seg(c, 40000, s, 80, SYN, 1000, ""),
		synAck(s, 80, c, 40000, 5000, 1001),
		seg(c, 40000, s, 80, ACK|PSH|URG, 1001, "GET /attXack"),
	})
	if len(x.Alerts) != 1 || x.Alerts[0].SID != DecoderSID || !strings.Contains(x.Alerts[0].Msg, "urgent") {
		t.Fatalf("alerts %v; want the urgent data's", x.Alerts)
	}
}

// TestIDSHeldWhileAlive: data held beyond a hole stays while its flow
// sends packets (keep-alive ACKs), however long, and is scanned when the
// hole fills; held data of a flow gone quiet is dropped at the pool's
// idle time.
func TestIDSHeldWhileAlive(t *testing.T) {
	c, s := "10.0.0.1", "10.0.0.2"
	rules := loadRules(t)
	x, err := NewIDS(NewMapTable(IDSStateSize), mustDecoder(t, layers.LinkTypeEthernet), rules)
	if err != nil {
		t.Fatal(err)
	}
	x.Reorder = ReorderConfig{Idle: 10 * time.Second}
	at := func(sec int, f []byte) {
		t.Helper()
		if err := x.Handle(f, time.Unix(100+int64(sec), 0)); err != nil {
			t.Fatal(err)
		}
	}
	at(0, seg(c, 40000, s, 80, SYN, 1000, ""))
	at(0, synAck(s, 80, c, 40000, 5000, 1001))
	at(0, seg(c, 40000, s, 80, ACK|PSH, 1001+3000, "ack "+strings.Repeat("x", 100))) // beyond the window: held
	for sec := 5; sec <= 30; sec += 5 {
		at(sec, seg(s, 80, c, 40000, ACK, 5001, ""))                                      // the flow is alive
		at(sec, seg("10.0.0.7", 41000, s, 80, ACK|PSH, uint32(1+5000*sec), "other flow")) // another flow's data held: the pool expires what is idle
	}
	at(31, seg(c, 40000, s, 80, ACK|PSH, 1001, strings.Repeat("y", 2997)+"att")) // the hole
	if len(x.Alerts) != 1 || x.Alerts[0].SID != 1001 || x.Gaps != 0 {
		t.Fatalf("alerts %v, %d gaps; want sid 1001 across the hole", x.Alerts, x.Gaps)
	}
}

// stream cuts data, sent from c:40000 to s:80 after a handshake, into
// segments of size bytes (the client's first byte is sequence 1001), and
// returns the handshake and the segments.
func stream(data string, size int) (open, segs [][]byte) {
	c, s := "10.0.0.1", "10.0.0.2"
	open = [][]byte{seg(c, 40000, s, 80, SYN, 1000, ""), synAck(s, 80, c, 40000, 5000, 1001), seg(c, 40000, s, 80, ACK, 1001, "")}
	for i := 0; i < len(data); i += size {
		segs = append(segs, seg(c, 40000, s, 80, ACK|PSH, 1001+uint32(i), data[i:min(len(data), i+size)]))
	}
	return open, segs
}

// TestIDSLateRetransmission: a segment lost and retransmitted after many
// more (far beyond the in-state window) is scanned in its place: every
// pattern, the one cut across it included, fires exactly once, with no
// gap; so do the same segments in reverse order.
func TestIDSLateRetransmission(t *testing.T) {
	var b strings.Builder
	for i := range 60 {
		fmt.Fprintf(&b, "%04d evil %s", i, strings.Repeat(".", 1190))
	}
	data := b.String()
	open, segs := stream(data, 1000)
	lostFirst := append(append([][]byte(nil), segs[1:]...), segs[0])
	reversed := make([][]byte, len(segs))
	for i, s := range segs {
		reversed[len(segs)-1-i] = s
	}
	for name, order := range map[string][][]byte{"in order": segs, "the first lost until the end": lostFirst, "reversed": reversed} {
		for tname, table := range tables(t, IDSStateSize) {
			t.Run(name+"/"+tname, func(t *testing.T) {
				x := runIDS(t, table, loadRules(t), append(append([][]byte(nil), open...), order...))
				n := 0
				for _, a := range x.Alerts {
					if a.SID != 1002 {
						t.Errorf("unexpected alert %v", a)
					}
					n++
				}
				if n != 60 || x.Gaps != 0 || x.Conflicts != 0 {
					t.Errorf("%d alerts, %d gaps, %d conflicts; want 60, 0, 0", n, x.Gaps, x.Conflicts)
				}
				if x.pool.held != 0 || len(x.pool.m) != 0 {
					t.Errorf("the pool still holds %d bytes for %d directions", x.pool.held, len(x.pool.m))
				}
			})
		}
	}
}

// TestIDSReorderBounds: past its bounds the pool holds nothing more; the
// hole is skipped (a gap), the data after it is scanned, and the hole's
// own bytes, when they come after all, are scanned on their own.
func TestIDSReorderBounds(t *testing.T) {
	data := "GET /attack " + strings.Repeat("x", 20000) + " evil"
	open, segs := stream(data, 1000)
	table := tables(t, IDSStateSize)["map"]
	x, err := NewIDS(table, mustDecoder(t, layers.LinkTypeEthernet), loadRules(t))
	if err != nil {
		t.Fatal(err)
	}
	x.Reorder = ReorderConfig{PerDirection: 8000}
	for i, f := range append(append(append([][]byte(nil), open...), segs[1:]...), segs[0]) {
		if err := x.Handle(f, time.Unix(100, int64(i))); err != nil {
			t.Fatal(err)
		}
		if x.pool != nil && x.pool.held > 8000+8*heldOverhead {
			t.Fatalf("the pool holds %d bytes, past its bound", x.pool.held)
		}
	}
	var sids []int
	for _, a := range x.Alerts {
		sids = append(sids, a.SID)
	}
	if x.Gaps != 1 || fmt.Sprint(sids) != "[0 1002 1001]" {
		t.Fatalf("gaps %d, alerts %v; want 1 gap (and its alert), sid 1002 (after it) then sid 1001 (in the hole, scanned on its own)", x.Gaps, sids)
	}
}

// TestIDSOverlappingSegments: a segment overlapping data held (in the
// window or in the pool) with different bytes raises an alert; the first
// copy stands.
func TestIDSOverlappingSegments(t *testing.T) {
	c, s := "10.0.0.1", "10.0.0.2"
	open, _ := stream("", 1)
	for _, tc := range []struct {
		name string
		at   uint32 // where the two copies lie, past the first byte
	}{{"in the window", 100}, {"in the pool", 5000}} {
		t.Run(tc.name, func(t *testing.T) {
			capture := append(append([][]byte(nil), open...),
				seg(c, 40000, s, 80, ACK|PSH, 1001+tc.at, "attack"),
				seg(c, 40000, s, 80, ACK|PSH, 1001+tc.at, "attXXX"),
				seg(c, 40000, s, 80, ACK|PSH, 1001+tc.at, "attack"), // the same again: no conflict
				seg(c, 40000, s, 80, ACK|PSH, 1001, strings.Repeat("-", int(tc.at))))
			x := runIDS(t, tables(t, IDSStateSize)["map"], loadRules(t), capture)
			var sids []int
			for _, a := range x.Alerts {
				sids = append(sids, a.SID)
			}
			if fmt.Sprint(sids) != "[0 1001]" || x.Conflicts != 1 {
				t.Fatalf("alerts %v, %d conflicts; want the overlap's, then sid 1001 (the first copy)", sids, x.Conflicts)
			}
		})
	}
}

// FuzzIDSReassembly cuts a stream holding "attack" at fuzzed places into
// segments, sends them in a fuzzed order with fuzzed duplicates, and
// checks that the rule fires exactly as often as the stream holds the
// pattern, with no gap and nothing left in the pool: every byte is
// scanned once, in order, whatever the order of arrival.
func FuzzIDSReassembly(f *testing.F) {
	f.Add([]byte{3, 200, 17, 5, 99, 1, 250, 7}, uint16(3000))
	f.Add([]byte{0, 0, 0, 0}, uint16(60000))
	rules := loadRules(f)
	f.Fuzz(func(t *testing.T, cuts []byte, length uint16) {
		n := 64 + int(length)%100000
		body := []byte(strings.Repeat("abcdefghij", n/10+1)[:n])
		for i := 0; i+6 <= n && len(cuts) > 0; i += 7 + int(cuts[i%len(cuts)])*37 {
			copy(body[i:], "attack")
		}
		data := string(body)
		want := strings.Count(data, "attack")
		// Segments: lengths from the cuts, 1 to 2,048 bytes.
		var segs [][2]int
		for at, i := 0, 0; at < n; i++ {
			l := 1 + 1460
			if len(cuts) > 0 {
				l = 1 + (int(cuts[i%len(cuts)])*8+i)%2048
			}
			segs = append(segs, [2]int{at, min(n, at+l)})
			at += l
		}
		// An order: a fuzzed shuffle, with a duplicate now and then.
		for i := range segs {
			if len(cuts) == 0 {
				break
			}
			j := (i + int(cuts[i%len(cuts)])) % len(segs)
			segs[i], segs[j] = segs[j], segs[i]
		}
		open, _ := stream("", 1)
		capture := append([][]byte(nil), open...)
		for i, sg := range segs {
			capture = append(capture, seg("10.0.0.1", 40000, "10.0.0.2", 80, ACK|PSH, 1001+uint32(sg[0]), data[sg[0]:sg[1]]))
			if len(cuts) > 0 && cuts[i%len(cuts)]%7 == 0 {
				capture = append(capture, capture[len(capture)-1])
			}
		}
		x := runIDS(t, NewMapTable(IDSStateSize), rules, capture)
		got := 0
		for _, a := range x.Alerts {
			if a.SID == 1001 {
				got++
			}
		}
		if got != want || x.Gaps != 0 || x.Conflicts != 0 || x.pool.held != 0 {
			t.Fatalf("%d alerts for %d occurrences, %d gaps, %d conflicts, %d bytes left in the pool", got, want, x.Gaps, x.Conflicts, x.pool.held)
		}
		// The same with a pool too small for the disorder: holes are
		// skipped (alerted once: one direction), nothing is held past the
		// bound, and nothing breaks.
		small, err := NewIDS(NewMapTable(IDSStateSize), mustDecoder(t, layers.LinkTypeEthernet), rules)
		if err != nil {
			t.Fatal(err)
		}
		small.Reorder = ReorderConfig{PerDirection: 4096}
		for i, fr := range capture {
			if err := small.Handle(fr, time.Unix(100, int64(i))); err != nil {
				t.Fatal(err)
			}
			if small.pool.held > 4096 {
				t.Fatalf("the pool holds %d bytes, past its bound", small.pool.held)
			}
		}
		gapAlerts := 0
		for _, a := range small.Alerts {
			if a.SID == DecoderSID && strings.Contains(a.Msg, "gap") {
				gapAlerts++
			}
		}
		if (small.Gaps > 0) != (gapAlerts == 1) || gapAlerts > 1 { // once per direction
			t.Fatalf("%d gaps, %d alerts for them", small.Gaps, gapAlerts)
		}
	})
}

// TestIDSHandshakes: the ways a connection opens, and what the IDS makes
// of them: retransmitted SYN and SYN-ACK taken as such, not as packets out
// of place; a RST at the expected sequence number ends a connection and a
// SYN after it opens the next; a simultaneous open (both SYNs crossing,
// then both SYN-ACKs); data on a SYN (TCP Fast Open) beginning the
// stream when the SYN-ACK acknowledges it, and dropped from it when not,
// so that the copy sent after the handshake is scanned in its place
// (other bytes or not).
func TestIDSHandshakes(t *testing.T) {
	c, s := "10.0.0.1", "10.0.0.2"
	for _, tc := range []struct {
		name    string
		capture [][]byte
		sids    string
		ignored int
	}{
		{"retransmissions, a reset, the ports again", [][]byte{
			seg(c, 40000, s, 80, SYN, 1000, ""),
			seg(c, 40000, s, 80, SYN, 1000, ""),
			synAck(s, 80, c, 40000, 5000, 1001),
			synAck(s, 80, c, 40000, 5000, 1001),
			seg(c, 40000, s, 80, ACK|PSH, 1001, "GET /attack"),
			seg(c, 40000, s, 80, RST, 1012, ""),
			seg(c, 40000, s, 80, SYN, 3000, ""),
			synAck(s, 80, c, 40000, 8000, 3001),
			seg(c, 40000, s, 80, ACK|PSH, 3001, "GET /attack"),
		}, "[1001 1001]", 0},
		{"simultaneous open", [][]byte{
			seg(c, 40000, s, 80, SYN, 1000, ""),
			seg(s, 80, c, 40000, SYN, 5000, ""),
			seg(c, 40000, s, 80, SYN|ACK, 1000, ""),
			synAck(s, 80, c, 40000, 5000, 1001),
			seg(c, 40000, s, 80, ACK|PSH, 1001, "GET /attack"),
			seg(s, 80, c, 40000, ACK|PSH, 5001, "evil"),
		}, "[1001 1002]", 0},
		{"data on the SYN, taken (TCP Fast Open): the stream starts after it", [][]byte{
			seg(c, 40000, s, 80, SYN, 1000, "AAAA"),
			synAck(s, 80, c, 40000, 5000, 1005),
			seg(c, 40000, s, 80, ACK|PSH, 1005, "GET /attack"),
		}, "[1001]", 0},
		{"a pattern split between the SYN's data and the next segment (TCP Fast Open, taken)", [][]byte{
			seg(c, 40000, s, 80, SYN, 1000, "GET /at"),
			synAck(s, 80, c, 40000, 5000, 1008),
			seg(c, 40000, s, 80, ACK|PSH, 1008, "tack"),
		}, "[1001]", 0},
		{"the SYN's data refused: the stream starts after the SYN, matcher afresh", [][]byte{
			seg(c, 40000, s, 80, SYN, 1000, "GET /at"),
			synAck(s, 80, c, 40000, 5000, 1001),
			seg(c, 40000, s, 80, ACK|PSH, 1001, "tack"), // the host reads "tack" alone
		}, "[]", 0},
		{"the SYN's data refused, then sent again after the handshake", [][]byte{
			seg(c, 40000, s, 80, SYN, 1000, "GET /at"),
			synAck(s, 80, c, 40000, 5000, 1001),
			seg(c, 40000, s, 80, ACK|PSH, 1001, "GET /attack"),
		}, "[1001]", 0},
		{"a TCP Fast Open SYN retransmitted", [][]byte{
			seg(c, 40000, s, 80, SYN, 1000, "GET /at"),
			seg(c, 40000, s, 80, SYN, 1000, "GET /at"),
			synAck(s, 80, c, 40000, 5000, 1008),
			seg(c, 40000, s, 80, ACK|PSH, 1008, "tack"),
		}, "[1001]", 0},
		{"data taken on a second SYN the IDS ignored", [][]byte{
			seg(c, 40000, s, 80, SYN, 1000, ""),
			seg(c, 40000, s, 80, SYN, 50000000, "GET /attack"), // ignored, remembered
			synAck(s, 80, c, 40000, 5000, 50000012),
			seg(c, 40000, s, 80, ACK|PSH, 50000012, "more"),
		}, "[0]", 1},
		{"a decoy SYN-ACK, then the one the client takes", [][]byte{
			seg(c, 40000, s, 80, SYN, 1000, ""),
			synAck(s, 80, c, 40000, 7000, 1001), // a TTL too short to reach the client
			synAck(s, 80, c, 40000, 5000, 1001), // ignored, remembered
			buildAck(c, 40000, s, 80, "tcp", ACK, 64, 1001, 5001, ""),
			buildAck(s, 80, c, 40000, "tcp", ACK|PSH, 64, 5001, 1001, "evil"),
		}, "[1002]", 1},
		{"a second SYN-ACK the client does not take", [][]byte{
			seg(c, 40000, s, 80, SYN, 1000, ""),
			synAck(s, 80, c, 40000, 5000, 1001),
			synAck(s, 80, c, 40000, 7000, 1001), // ignored, remembered
			buildAck(c, 40000, s, 80, "tcp", ACK, 64, 1001, 5001, ""),
			buildAck(s, 80, c, 40000, "tcp", ACK|PSH, 64, 5001, 1001, "evil"),
			buildAck(s, 80, c, 40000, "tcp", ACK|PSH, 64, 7001, 1001, "evil"), // not the stream's
		}, "[1002]", 1},
		{"a client's ACK of a SYN-ACK never sent moves nothing", [][]byte{
			seg(c, 40000, s, 80, SYN, 1000, ""),
			synAck(s, 80, c, 40000, 5000, 1001),
			buildAck(c, 40000, s, 80, "tcp", ACK, 64, 1001, 9001, ""),
			buildAck(s, 80, c, 40000, "tcp", ACK|PSH, 64, 5001, 1001, "evil"),
		}, "[1002]", 0},
		{"a decoy SYN, then the SYN the host answers", [][]byte{
			seg(c, 40000, s, 80, SYN, 1000, ""),
			seg(c, 40000, s, 80, SYN, 50000000, ""), // ignored, but the SYN-ACK says it is the one
			synAck(s, 80, c, 40000, 5000, 50000001),
			seg(c, 40000, s, 80, ACK|PSH, 50000001, "GET /attack"),
		}, "[1001]", 1},
		{"a FIN, then a RST after it (as Linux sends), then the ports again", [][]byte{
			seg(c, 40000, s, 80, SYN, 1000000, ""),
			synAck(s, 80, c, 40000, 5000, 1000001),
			seg(c, 40000, s, 80, ACK|PSH, 1000001, "hello"),
			seg(c, 40000, s, 80, FIN|ACK, 1000006, ""),
			seg(c, 40000, s, 80, RST, 1000007, ""),
			seg(c, 40000, s, 80, SYN, 1000, ""),
			synAck(s, 80, c, 40000, 9000, 1001),
			seg(c, 40000, s, 80, ACK|PSH, 1001, "GET /attack"),
		}, "[1001]", 0},
		{"a decoy SYN, junk behind it, then the SYN the host answers", [][]byte{
			seg(c, 40000, s, 80, SYN, 5000000, ""),
			seg(c, 40000, s, 80, SYN, 5000000-1<<20, ""),    // ignored, remembered
			seg(c, 40000, s, 80, ACK|PSH, 5000000-100, "z"), // behind the decoy's stream: no data of it
			synAck(s, 80, c, 40000, 5000, 5000000-1<<20+1),
			seg(c, 40000, s, 80, ACK|PSH, 5000000-1<<20+1, "GET /attack"),
		}, "[0 1001]", 1}, // the junk came before the handshake completed
		{"a RST and a SYN the host never gets, then data in the old stream", [][]byte{
			seg(c, 40000, s, 80, SYN, 1000, ""),
			synAck(s, 80, c, 40000, 5000, 1001),
			seg(c, 40000, s, 80, ACK|PSH, 1001, "GET /att"),
			seg(c, 40000, s, 80, RST, 1009, ""),
			seg(c, 40000, s, 80, SYN, 1009+1<<28, ""),
			seg(c, 40000, s, 80, ACK|PSH, 1009, "ack"),
		}, "[0]", 0}, // data before the (new) handshake completed
		{"the server's data in flight after the client's RST", [][]byte{
			seg(c, 40000, s, 80, SYN, 1000, ""),
			synAck(s, 80, c, 40000, 5000, 1001),
			seg(c, 40000, s, 80, ACK|PSH, 1001, "GET /"),
			seg(c, 40000, s, 80, RST|ACK, 1006, ""),
			seg(s, 80, c, 40000, ACK|PSH, 5001, "evil"),
		}, "[1002]", 0}, // no alert for the peer's data in flight
		{"an urgent pointer on a pure ACK", [][]byte{
			seg(c, 40000, s, 80, SYN, 1000, ""),
			synAck(s, 80, c, 40000, 5000, 1001),
			seg(c, 40000, s, 80, ACK|URG, 1001, ""),
			seg(c, 40000, s, 80, ACK|PSH, 1001, "GET /attXack"),
		}, "[0]", 0},
		{"data on the SYN", [][]byte{
			seg(c, 40000, s, 80, SYN, 1000, "xxxxxxxxxxx"),
			synAck(s, 80, c, 40000, 5000, 1001),
			seg(c, 40000, s, 80, ACK|PSH, 1001, "GET /attack"),
			seg(c, 40000, s, 80, SYN, 2000, "GET /attack"), // mid-connection: ignored
		}, "[1001]", 1},
	} {
		for name, table := range tables(t, IDSStateSize) {
			t.Run(tc.name+"/"+name, func(t *testing.T) {
				x := runIDS(t, table, loadRules(t), tc.capture)
				if sids(x) != tc.sids || x.Ignored != tc.ignored {
					t.Fatalf("alerts %v, %d ignored; want %s, %d ignored", x.Alerts, x.Ignored, tc.sids, tc.ignored)
				}
			})
		}
	}
}

// TestIDSBadChecksums: with checksums verified, packets a host drops for
// a wrong checksum change nothing: a decoy segment first, a RST at the
// expected sequence number, each with a wrong TCP checksum.
func TestIDSBadChecksums(t *testing.T) {
	c, s := "10.0.0.1", "10.0.0.2"
	corrupt := func(f []byte) []byte {
		f = append([]byte(nil), f...)
		f[14+20+16] ^= 0xff
		return f
	}
	capture := [][]byte{
		seg(c, 40000, s, 80, SYN, 1000, ""),
		synAck(s, 80, c, 40000, 5000, 1001),
		corrupt(seg(c, 40000, s, 80, ACK|PSH, 1001, "GET /xxxxxx")),
		seg(c, 40000, s, 80, ACK|PSH, 1001, "GET /att"),
		corrupt(seg(c, 40000, s, 80, RST|ACK, 1009, "")),
		seg(c, 40000, s, 80, ACK|PSH, 1009, "ack"),
	}
	x, err := NewIDS(NewMapTable(IDSStateSize), mustDecoder(t, layers.LinkTypeEthernet), loadRules(t))
	if err != nil {
		t.Fatal(err)
	}
	x.dec.Checksums = ChecksumsOn
	for i, f := range capture {
		if err := x.Handle(f, time.Unix(100, int64(i))); err != nil {
			t.Fatal(err)
		}
	}
	if len(x.Alerts) != 1 || x.Alerts[0].SID != 1001 || x.dec.Stats.BadChecksum != 2 {
		t.Fatalf("alerts %v (%v); want sid 1001 alone, 2 packets dropped for their checksums", x.Alerts, x.dec.Stats)
	}
}

// sids lists the SIDs of x's alerts, in order, as "[1 2]".
func sids(x *IDS) string {
	var out []int
	for _, a := range x.Alerts {
		out = append(out, a.SID)
	}
	return fmt.Sprint(out)
}

// TestIDSLowTTL: a data segment whose TTL is lower than its connection's
// (one that may expire between the IDS and the host, Ptacek and Newsham's
// decoy) raises an alert, once per direction.
func TestIDSLowTTL(t *testing.T) {
	c, s := "10.0.0.1", "10.0.0.2"
	x := runIDS(t, NewMapTable(IDSStateSize), loadRules(t), [][]byte{
		seg(c, 40000, s, 80, SYN, 1000, ""),
		synAck(s, 80, c, 40000, 5000, 1001),
		seg(c, 40000, s, 80, ACK, 1001, ""),
		buildAck(c, 40000, s, 80, "tcp", ACK|PSH, 2, 1001, 5001, strings.Repeat("x", 200)), // the decoy
		seg(c, 40000, s, 80, ACK|PSH, 1001, strings.Repeat("y", 100)+"GET /attack"+strings.Repeat("y", 89)),
		buildAck(c, 40000, s, 80, "tcp", ACK|PSH, 2, 1201, 5001, "more"),
	})
	// The real segment's bytes were delivered already (the decoy's): its
	// last 64 differ from them, a second alert.
	if sids(x) != "[0 0]" || !strings.Contains(x.Alerts[0].Msg, "TTL") || !strings.Contains(x.Alerts[1].Msg, "overlap") {
		t.Fatalf("alerts %v; want the low TTL's, once, then the overlap's", x.Alerts)
	}
}

// TestIDSLongDecoy: a decoy far longer than the stream's tail, which the
// IDS read and the host never did (it is never acknowledged), is unmasked
// when the real segment comes at its sequence number with other bytes; a
// retransmission with the same bytes is not, and bytes the peer
// acknowledged are the host's: a later copy of them, whatever it holds,
// is one the host ignores.
func TestIDSLongDecoy(t *testing.T) {
	c, s := "10.0.0.1", "10.0.0.2"
	end := strings.Repeat("y", 64) // the decoy and the real segment end alike: the tail cannot tell them apart
	real := "GET /attack " + strings.Repeat("r", 924) + end
	for _, tc := range []struct {
		name  string
		pkts  [][]byte
		sids  string
		confl int
	}{
		{"a decoy, then the real segment", [][]byte{
			seg(c, 40000, s, 80, ACK|PSH, 1001, strings.Repeat("x", 936)+end),
			seg(c, 40000, s, 80, ACK|PSH, 1001, real),
		}, "[0]", 1},
		{"a spurious retransmission", [][]byte{
			seg(c, 40000, s, 80, ACK|PSH, 1001, real),
			seg(c, 40000, s, 80, ACK|PSH, 1001, real),
		}, "[1001]", 0},
		{"other bytes after the peer acknowledged them", [][]byte{
			seg(c, 40000, s, 80, ACK|PSH, 1001, real),
			buildAck(s, 80, c, 40000, "tcp", ACK, 64, 5001, 2001, ""),
			seg(c, 40000, s, 80, ACK|PSH, 1001, strings.Repeat("x", 1000)),
		}, "[1001]", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			open := [][]byte{seg(c, 40000, s, 80, SYN, 1000, ""), synAck(s, 80, c, 40000, 5000, 1001)}
			x := runIDS(t, NewMapTable(IDSStateSize), loadRules(t), append(open, tc.pkts...))
			if sids(x) != tc.sids || x.Conflicts != tc.confl {
				t.Fatalf("alerts %v, %d conflicts; want %s, %d", x.Alerts, x.Conflicts, tc.sids, tc.confl)
			}
		})
	}
}
