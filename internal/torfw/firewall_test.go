package torfw

import (
	"bufio"
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/torbento/bento/internal/torctl"
)

// fakeTor answers the commands the firewall forwards and records them.
type fakeTor struct {
	mu   sync.Mutex
	seen []string
	conn *torctl.Conn
	nc   net.Conn
	next int
}

func (f *fakeTor) Conn(ctx context.Context) (*torctl.Conn, error) { return f.conn, nil }

func (f *fakeTor) sent() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.seen...)
}

// event injects an asynchronous event.
func (f *fakeTor) event(line string) {
	f.nc.Write([]byte("650 " + line + "\r\n"))
}

func newFake(t *testing.T) (*Firewall, *fakeTor) {
	a, b := net.Pipe()
	f := &fakeTor{conn: torctl.NewConn(a), nc: b, next: 10}
	t.Cleanup(func() { f.conn.Close(); b.Close() })
	go func() {
		br := bufio.NewReader(b)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimSuffix(line, "\r\n")
			f.mu.Lock()
			f.seen = append(f.seen, line)
			f.next++
			n := f.next
			f.mu.Unlock()
			var out string
			switch kw, rest, _ := strings.Cut(line, " "); kw {
			case "EXTENDCIRCUIT":
				out = "250 EXTENDED " + itoa(n) + "\r\n"
			case "ADD_ONION":
				out = "250-ServiceID=" + strings.Repeat("a", 55) + string(rune('a'+n%26)) + "\r\n250 OK\r\n"
			case "GETINFO":
				switch rest {
				case "circuit-status":
					out = "250+circuit-status=\r\n1 BUILT $A~a,$B~b PURPOSE=GENERAL\r\n11 BUILT $C~c PURPOSE=GENERAL\r\n12 LAUNCHED\r\n.\r\n250 OK\r\n"
				case "stream-status":
					out = "250+stream-status=\r\n7 SUCCEEDED 1 127.0.0.1:80\r\n8 SUCCEEDED 12 127.0.0.1:81\r\n.\r\n250 OK\r\n"
				default:
					out = "250-" + rest + "=value\r\n250 OK\r\n"
				}
			default:
				out = "250 OK\r\n"
			}
			b.Write([]byte(out))
		}
	}()
	fw := New(f, Limits{Circuits: 2, Onions: 1})
	fw.Listen = func(owner string, port int) (string, error) { return "127.0.0.1:40000", nil }
	f.conn.OnEvent(fw.HandleEvent)
	return fw, f
}

func itoa(n int) string { return strconv.Itoa(n) }

func do(t *testing.T, s *Session, line string) *torctl.Reply {
	t.Helper()
	r, err := s.Do(context.Background(), line)
	if err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	return r
}

func TestForbiddenCommands(t *testing.T) {
	fw, f := newFake(t)
	s := fw.Open("bento-a")
	for _, line := range []string{
		"SETCONF ExitPolicy=accept *:*", "RESETCONF ORPort", "SAVECONF", "LOADCONF", "GETCONF ORPort",
		"SIGNAL HALT", "SIGNAL NEWNYM", "TAKEOWNERSHIP", "DROPOWNERSHIP", "MAPADDRESS 1.2.3.4=x.onion",
		"RESOLVE example.com", "DROPGUARDS", "DROPTIMEOUTS", "REDIRECTSTREAM 1 127.0.0.1", "USEFEATURE EXTENDED_EVENTS",
		"ONION_CLIENT_AUTH_VIEW", "HSFETCH x", "SETCIRCUITPURPOSE 1 purpose=general", "FOOBAR",
		"GETINFO address", "GETINFO config-text", "GETINFO version address", "GETINFO entry-guards",
		"GETINFO traffic/read", "GETINFO net/listeners/socks", "GETINFO onions/detached", "GETINFO ns/all",
		"SETEVENTS BW", "SETEVENTS CIRC ORCONN", "SETEVENTS ADDRMAP",
		"ADD_ONION NEW:ED25519-V3 Flags=Detach Port=80", "ADD_ONION NEW:ED25519-V3 Flags=NonAnonymous Port=80",
		"ADD_ONION NEW:RSA1024 Port=80", "ADD_ONION NEW:ED25519-V3 Port=80,127.0.0.1:9051",
		"ADD_ONION NEW:ED25519-V3 Port=80 ClientAuthV3=x",
		"EXTENDCIRCUIT 0 purpose=testing",
	} {
		if r := do(t, s, line); r.Status != 510 || !strings.HasPrefix(r.Lines[0].Text, "Command filtered") {
			t.Errorf("%s: got %d %q, want 510 Command filtered", line, r.Status, r.Lines[0].Text)
		}
	}
	if got := f.sent(); len(got) != 0 {
		t.Fatalf("refused commands reached tor: %q", got)
	}
}

func TestSyntaxAndInjection(t *testing.T) {
	fw, f := newFake(t)
	s := fw.Open("bento-a")
	for _, line := range []string{
		"GETINFO version\r\nSIGNAL HALT", "GETINFO version\nSETCONF x=1", "+POSTDESCRIPTOR", "",
		"GETINFO \"unterminated", "EXTENDCIRCUIT 0\x00", "CLOSECIRCUIT 1 2 3",
	} {
		r := do(t, s, line)
		if r.Status < 510 || r.Status > 513 {
			t.Errorf("%q: status %d, want a 51x refusal", line, r.Status)
		}
	}
	if got := f.sent(); len(got) != 0 {
		t.Fatalf("malformed commands reached tor: %q", got)
	}
}

func TestOwnership(t *testing.T) {
	fw, f := newFake(t)
	a, b := fw.Open("bento-a"), fw.Open("bento-b")
	// a builds a circuit; b can neither close nor extend nor see it.
	r := do(t, a, "EXTENDCIRCUIT 0")
	if !r.OK() {
		t.Fatalf("EXTENDCIRCUIT: %+v", r)
	}
	words, _, _ := torctl.ParseLine(r.Lines[0].Text)
	id := words[1]
	for _, line := range []string{"CLOSECIRCUIT " + id, "EXTENDCIRCUIT " + id, "ATTACHSTREAM 7 " + id} {
		if r := do(t, b, line); r.Status != 552 {
			t.Errorf("b: %s = %d %q, want 552", line, r.Status, r.Lines[0].Text)
		}
	}
	// Circuits and streams tor reports for b's SOCKS traffic are b's.
	f.event("CIRC 12 BUILT $A~a PURPOSE=GENERAL SOCKS_USERNAME=\"bento-b\" SOCKS_PASSWORD=\"bento\"")
	f.event("STREAM 8 SUCCEEDED 12 127.0.0.1:81 SOCKS_USERNAME=\"bento-b\"")
	f.event("CIRC 1 BUILT $A~a,$B~b PURPOSE=GENERAL") // someone else's
	do(t, a, "GETINFO version")                       // events are read before this reply
	if r := do(t, a, "CLOSECIRCUIT 12"); r.Status != 552 {
		t.Errorf("a closed b's circuit: %d", r.Status)
	}
	if r := do(t, a, "CLOSESTREAM 8 1"); r.Status != 552 {
		t.Errorf("a closed b's stream: %d", r.Status)
	}
	// Filtered views.
	cs := do(t, b, "GETINFO circuit-status")
	if got := string(cs.Lines[0].Data); got != "12 LAUNCHED\n" {
		t.Errorf("b's circuit-status = %q", got)
	}
	ss := do(t, b, "GETINFO stream-status")
	if got := string(ss.Lines[0].Data); got != "8 SUCCEEDED 12 127.0.0.1:81\n" {
		t.Errorf("b's stream-status = %q", got)
	}
	if id != "11" {
		t.Fatalf("fake tor gave circuit %s, want 11", id)
	}
	cs = do(t, a, "GETINFO circuit-status")
	if got := string(cs.Lines[0].Data); got != "11 BUILT $C~c PURPOSE=GENERAL\n" {
		t.Errorf("a's circuit-status = %q", got)
	}
	// Events: only one's own, only when subscribed.
	do(t, a, "SETEVENTS CIRC STREAM")
	do(t, b, "SETEVENTS CIRC")
	f.event("CIRC 12 EXTENDED $A~a SOCKS_USERNAME=\"bento-b\"")
	f.event("CIRC " + id + " BUILT $X~x")
	f.event("STREAM 8 CLOSED 12 127.0.0.1:81 REASON=DONE")
	do(t, a, "GETINFO version")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if e := a.NextEvent(context.Background()); e == nil || !strings.HasPrefix(e.Lines[0].Text, "CIRC "+id+" ") {
		t.Errorf("a's event = %+v", e)
	}
	if e := a.NextEvent(ctx); e != nil {
		t.Errorf("a saw someone else's event %q", e.Lines[0].Text)
	}
	if e := b.NextEvent(context.Background()); e == nil || !strings.HasPrefix(e.Lines[0].Text, "CIRC 12 ") {
		t.Errorf("b's event = %+v", e)
	}
	if e := b.NextEvent(ctx); e != nil {
		t.Errorf("b saw an event it did not subscribe to: %q", e.Lines[0].Text)
	}
	// The stream closed: b no longer owns it.
	if _, streams, _ := b.Owned(); len(streams) != 0 {
		t.Errorf("closed stream still owned: %v", streams)
	}
}

func TestLimitsAndCleanup(t *testing.T) {
	fw, f := newFake(t)
	a := fw.Open("bento-a")
	do(t, a, "EXTENDCIRCUIT 0")
	do(t, a, "EXTENDCIRCUIT 0")
	if r := do(t, a, "EXTENDCIRCUIT 0"); r.Status != 510 {
		t.Fatalf("third circuit: %d", r.Status)
	}
	r := do(t, a, "ADD_ONION NEW:BEST Port=80")
	if !r.OK() {
		t.Fatalf("ADD_ONION: %+v", r)
	}
	sent := f.sent()
	last := sent[len(sent)-1]
	if last != "ADD_ONION NEW:ED25519-V3 Flags=DiscardPK Port=80,127.0.0.1:40000" {
		t.Fatalf("ADD_ONION forwarded as %q", last)
	}
	if r := do(t, a, "ADD_ONION NEW:BEST Port=81"); r.Status != 510 {
		t.Fatalf("second onion: %d", r.Status)
	}
	circuits, _, onions := a.Owned()
	if err := a.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(f.sent()[len(sent):], "\n")
	for _, c := range circuits {
		if !strings.Contains(got, "CLOSECIRCUIT "+c) {
			t.Errorf("circuit %s not closed: %q", c, got)
		}
	}
	if !strings.Contains(got, "DEL_ONION "+onions[0]) {
		t.Errorf("onion not removed: %q", got)
	}
	if _, err := a.Do(context.Background(), "GETINFO version"); err == nil {
		t.Error("closed session still works")
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		kw   string
		args []string
	}{
		{"getinfo version", "GETINFO", []string{"version"}},
		{"EXTENDCIRCUIT 0 $A,$B purpose=general\r\n", "EXTENDCIRCUIT", []string{"0", "$A,$B", "purpose=general"}},
		{`AUTHENTICATE "a b"`, "AUTHENTICATE", []string{`"a b"`}},
		{`ADD_ONION NEW:BEST   Port=80`, "ADD_ONION", []string{"NEW:BEST", "Port=80"}},
	} {
		c, err := Parse(tc.in)
		if err != nil || c.Keyword() != tc.kw || strings.Join(c.Args(), "|") != strings.Join(tc.args, "|") {
			t.Errorf("Parse(%q) = %q %q %v", tc.in, c.Keyword(), c.Args(), err)
		}
	}
}

// FuzzParse: a command line that parses is exactly one line on the wire,
// and parsing its encoding gives the same command.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"GETINFO version", "EXTENDCIRCUIT 0 $A~a,$B purpose=general", `AUTHENTICATE "x\"y"`,
		"ADD_ONION NEW:BEST Flags=DiscardPK Port=80", "GETINFO version\r\nSIGNAL HALT", "+LOADCONF", `A "\`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		c, err := Parse(line)
		if err != nil {
			return
		}
		enc := string(c.Encode())
		if strings.Count(enc, "\n") != 1 || strings.Count(enc, "\r") != 1 || !strings.HasSuffix(enc, "\r\n") {
			t.Fatalf("Parse(%q) encodes to %q", line, enc)
		}
		c2, err := Parse(enc)
		if err != nil || c2.Keyword() != c.Keyword() || strings.Join(c2.Args(), "\x00") != strings.Join(c.Args(), "\x00") {
			t.Fatalf("re-parse of %q: %v", enc, err)
		}
	})
}

// FuzzSession: whatever a function sends, nothing forbidden reaches tor.
func FuzzSession(f *testing.F) {
	f.Add("SETCONF a=b")
	f.Add("GETINFO version")
	f.Add("ADD_ONION NEW:BEST Port=80,127.0.0.1:1")
	f.Fuzz(func(t *testing.T, line string) {
		fw, fake := newFake(t)
		s := fw.Open("bento-f")
		if _, err := s.Do(context.Background(), line); err != nil {
			t.Fatal(err)
		}
		for _, sent := range fake.sent() {
			kw, _, _ := strings.Cut(sent, " ")
			switch kw {
			case "GETINFO", "EXTENDCIRCUIT", "ADD_ONION":
			default:
				t.Fatalf("%q reached tor as %q", line, sent)
			}
			if kw == "ADD_ONION" && (!strings.Contains(sent, "Flags=DiscardPK") || strings.Contains(sent, "Detach") || !strings.Contains(sent, ",127.0.0.1:40000")) {
				t.Fatalf("%q reached tor as %q", line, sent)
			}
		}
	})
}
