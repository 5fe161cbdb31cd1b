package torctl

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestNewCommandRejectsInjection(t *testing.T) {
	for _, tc := range []struct {
		kw   string
		args []string
		ok   bool
	}{
		{"GETINFO", []string{"version"}, true},
		{"ADD_ONION", []string{"NEW:ED25519-V3", "Flags=DiscardPK", "Port=80,127.0.0.1:8080"}, true},
		{"SETEVENTS", nil, true},
		{"GETINFO", []string{"version\r\nSIGNAL HALT"}, false},
		{"GETINFO", []string{"version\nSIGNAL"}, false},
		{"GETINFO", []string{"a b"}, false},
		{"GETINFO", []string{""}, false},
		{"GETINFO", []string{"x\x00"}, false},
		{"GET INFO", nil, false},
		{"GETINFO\r\n", nil, false},
		{"AUTHENTICATE", []string{`"pass word"`}, true},
		{"AUTHENTICATE", []string{`"pass" x`}, false},
		{"AUTHENTICATE", []string{`"unterminated`}, false},
		{"AUTHENTICATE", []string{`"a\"b"`}, true},
		{"AUTHENTICATE", []string{"\"a\r\nSIGNAL HALT\""}, false},
		{"EXTENDCIRCUIT", []string{"0", "purpose=general"}, true},
		{"X", []string{"caf\xc3\xa9"}, false},
	} {
		_, err := NewCommand(tc.kw, tc.args...)
		if (err == nil) != tc.ok {
			t.Errorf("NewCommand(%q, %q) error = %v, want ok=%v", tc.kw, tc.args, err, tc.ok)
		}
	}
}

func TestQuoteKV(t *testing.T) {
	q, err := Quote(`a "b" \c`)
	if err != nil || q != `"a \"b\" \\c"` {
		t.Fatalf("Quote = %q, %v", q, err)
	}
	if v, n, err := Unquote(q + " rest"); err != nil || v != `a "b" \c` || n != len(q) {
		t.Fatalf("Unquote = %q %d %v", v, n, err)
	}
	if _, err := Quote("x\ny"); err == nil {
		t.Fatal("Quote accepted a newline")
	}
	kv, err := KV("HOST", "a b")
	if err != nil || kv != `HOST="a b"` {
		t.Fatalf("KV = %q %v", kv, err)
	}
	kv, _ = KV("Port", "80,127.0.0.1:8080")
	if kv != "Port=80,127.0.0.1:8080" {
		t.Fatalf("KV = %q", kv)
	}
	if _, err := NewCommand("SETCONF", kv); err != nil {
		t.Fatal(err)
	}
	// CString escapes (control-spec §2.1.1).
	if v, _, err := Unquote(`"a\nb\101\\"`); err != nil || v != "a\nbA\\" {
		t.Fatalf("Unquote CString = %q %v", v, err)
	}
}

func TestEncodeMultiLine(t *testing.T) {
	c := MustCommand("POSTDESCRIPTOR").WithData([]byte("router x\n.dot\nend\n"))
	want := "+POSTDESCRIPTOR\r\nrouter x\r\n..dot\r\nend\r\n.\r\n"
	if got := string(c.Encode()); got != want {
		t.Fatalf("Encode = %q, want %q", got, want)
	}
	if s := MustCommand("AUTHENTICATE", "abcd").String(); strings.Contains(s, "abcd") {
		t.Fatalf("String leaks the secret: %q", s)
	}
}

func read(s string) (*Reply, error) { return ReadReply(bufio.NewReader(strings.NewReader(s))) }

func TestReadReply(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     *Reply
		err      bool
	}{
		{"single", "250 OK\r\n", &Reply{250, []Line{{250, ' ', "OK", nil}}}, false},
		{"bare LF", "250 OK\n", &Reply{250, []Line{{250, ' ', "OK", nil}}}, false},
		{"multi", "250-version=0.4.9.11\r\n250 OK\r\n", &Reply{250, []Line{{250, '-', "version=0.4.9.11", nil}, {250, ' ', "OK", nil}}}, false},
		{"data", "250+ns/all=\r\nr a\r\n..x\r\n.\r\n250 OK\r\n", &Reply{250, []Line{{250, '+', "ns/all=", []byte("r a\n.x\n")}, {250, ' ', "OK", nil}}}, false},
		{"empty data", "250+x=\r\n.\r\n250 OK\r\n", &Reply{250, []Line{{250, '+', "x=", []byte{}}, {250, ' ', "OK", nil}}}, false},
		{"event", "650 CIRC 1 LAUNCHED\r\n", &Reply{650, []Line{{650, ' ', "CIRC 1 LAUNCHED", nil}}}, false},
		{"error", "552 Unrecognized key \"x\"\r\n", &Reply{552, []Line{{552, ' ', `Unrecognized key "x"`, nil}}}, false},
		{"mixed codes", "250-a\r\n251 b\r\n", nil, true},
		{"short", "25\r\n", nil, true},
		{"bad code", "2x0 OK\r\n", nil, true},
		{"bad sep", "250*OK\r\n", nil, true},
		{"truncated", "250-a\r\n", nil, true},
		{"truncated data", "250+a\r\nxx\r\n", nil, true},
		{"no newline", "250 OK", nil, true},
	} {
		got, err := read(tc.in)
		if (err != nil) != tc.err {
			t.Errorf("%s: err = %v, want error %v", tc.name, err, tc.err)
			continue
		}
		if err == nil && !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestReplyEncodeRoundTrip(t *testing.T) {
	in := "250-a=b\r\n250+ns=\r\nr x\r\n..y\r\n.\r\n250+empty=\r\n.\r\n250 OK\r\n"
	r, err := read(in)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(r.Encode()); got != in {
		t.Fatalf("Encode = %q, want %q", got, in)
	}
}

func TestParseLine(t *testing.T) {
	words, kv, err := ParseLine(`AUTH METHODS=COOKIE,SAFECOOKIE COOKIEFILE="/var/lib/tor/control_auth_cookie" x`)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(words, []string{"AUTH", "x"}) || kv["METHODS"] != "COOKIE,SAFECOOKIE" || kv["COOKIEFILE"] != "/var/lib/tor/control_auth_cookie" {
		t.Fatalf("got %q %q", words, kv)
	}
	words, kv, err = ParseLine(`CIRC 12 BUILT $AAAA~a,$BBBB~b PURPOSE=GENERAL TIME_CREATED=2026-11-21T10:00:00.000000`)
	if err != nil || len(words) != 4 || words[1] != "12" || kv["PURPOSE"] != "GENERAL" {
		t.Fatalf("got %q %q %v", words, kv, err)
	}
	if _, _, err := ParseLine(`A="unterminated`); err == nil {
		t.Fatal("unterminated quote accepted")
	}
}

func TestGetInfoValues(t *testing.T) {
	r, err := read("250-version=0.4.9.11\r\n250+config-text=\r\nA 1\r\nB 2\r\n.\r\n250 OK\r\n")
	if err != nil {
		t.Fatal(err)
	}
	got := r.GetInfo()
	if got["version"] != "0.4.9.11" || got["config-text"] != "A 1\nB 2" {
		t.Fatalf("GetInfo = %q", got)
	}
}

// fakeTor is a scripted control port on one end of a pipe.
type fakeTor struct {
	t  *testing.T
	br *bufio.Reader
	nc net.Conn
}

func newFake(t *testing.T) (*Conn, *fakeTor) {
	a, b := net.Pipe()
	c := NewConn(a)
	t.Cleanup(func() { c.Close(); b.Close() })
	return c, &fakeTor{t: t, br: bufio.NewReader(b), nc: b}
}

func (f *fakeTor) expect(prefix string) string {
	f.t.Helper()
	line, err := f.br.ReadString('\n')
	if err != nil {
		f.t.Errorf("fake tor: reading: %v", err)
		return ""
	}
	if !strings.HasPrefix(line, prefix) || !strings.HasSuffix(line, "\r\n") {
		f.t.Errorf("fake tor: got %q, want prefix %q", line, prefix)
	}
	return strings.TrimSuffix(line, "\r\n")
}

func (f *fakeTor) send(s string) {
	if _, err := f.nc.Write([]byte(s)); err != nil {
		f.t.Errorf("fake tor: writing: %v", err)
	}
}

func TestPipeliningAndEvents(t *testing.T) {
	c, f := newFake(t)
	events := make(chan string, 10)
	c.OnEvent(func(r *Reply) { events <- r.Lines[0].Text })
	ctx := context.Background()
	done1, done2 := make(chan error, 1), make(chan error, 1)
	res := make(chan map[string]string, 2)
	go func() {
		m, err := c.GetInfo(ctx, "version")
		res <- m
		done1 <- err
	}()
	f.expect("GETINFO version")
	go func() {
		_, err := c.Do(ctx, MustCommand("SIGNAL", "NEWNYM"))
		done2 <- err
	}()
	f.expect("SIGNAL NEWNYM")
	// An event arrives between the two replies, and replies come in order.
	f.send("250-version=0.4.9.11\r\n250 OK\r\n650 CIRC 1 BUILT\r\n552 Unrecognized signal\r\n")
	if m := <-res; m["version"] != "0.4.9.11" {
		t.Fatalf("version = %q", m)
	}
	err1, err2 := <-done1, <-done2
	var se *StatusError
	if err1 != nil || !errors.As(err2, &se) || se.Code != 552 {
		t.Fatalf("errors = %v, %v", err1, err2)
	}
	if ev := <-events; ev != "CIRC 1 BUILT" {
		t.Fatalf("event = %q", ev)
	}
	// Closing the peer fails pending and later commands.
	go func() { f.expect("GETINFO"); f.nc.Close() }() // the only reader now
	if _, err := c.GetInfo(ctx, "x"); !errors.Is(err, ErrClosed) {
		t.Fatalf("after close: %v", err)
	}
	if _, err := c.GetInfo(ctx, "x"); !errors.Is(err, ErrClosed) {
		t.Fatalf("after close: %v", err)
	}
}

func macHex(key string, parts ...[]byte) string {
	h := hmac.New(sha256.New, []byte(key))
	for _, p := range parts {
		h.Write(p)
	}
	return strings.ToUpper(hex.EncodeToString(h.Sum(nil)))
}

func TestSafeCookie(t *testing.T) {
	for _, lie := range []bool{false, true} {
		c, f := newFake(t)
		cookie := []byte("0123456789abcdef0123456789abcdef")
		path := filepath.Join(t.TempDir(), "control_auth_cookie")
		if err := os.WriteFile(path, cookie, 0o600); err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() { errc <- c.Authenticate(context.Background(), Auth{}) }()
		f.expect("PROTOCOLINFO 1")
		f.send("250-PROTOCOLINFO 1\r\n250-AUTH METHODS=COOKIE,SAFECOOKIE COOKIEFILE=\"" + path + "\"\r\n250-VERSION Tor=\"0.4.9.11\"\r\n250 OK\r\n")
		line := f.expect("AUTHCHALLENGE SAFECOOKIE ")
		cn, _ := hex.DecodeString(strings.TrimPrefix(line, "AUTHCHALLENGE SAFECOOKIE "))
		sn := []byte("SERVERNONCE-SERVERNONCE-SERVERN!")
		sh := macHex(serverHashKey, cookie, cn, sn)
		if lie {
			sh = macHex(serverHashKey, []byte("another cookie"), cn, sn)
		}
		f.send("250 AUTHCHALLENGE SERVERHASH=" + sh + " SERVERNONCE=" + hex.EncodeToString(sn) + "\r\n")
		if lie {
			if err := <-errc; err == nil || !strings.Contains(err.Error(), "server hash") {
				t.Fatalf("lying tor: err = %v", err)
			}
			continue
		}
		auth := f.expect("AUTHENTICATE ")
		if got, want := strings.ToUpper(strings.TrimPrefix(auth, "AUTHENTICATE ")), macHex(clientHashKey, cookie, cn, sn); got != want {
			t.Fatalf("client hash %s, want %s", got, want)
		}
		f.send("250 OK\r\n")
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

func TestPasswordAuth(t *testing.T) {
	c, f := newFake(t)
	errc := make(chan error, 1)
	go func() { errc <- c.Authenticate(context.Background(), Auth{Password: `p "w"`}) }()
	f.expect("PROTOCOLINFO")
	f.send("250-PROTOCOLINFO 1\r\n250-AUTH METHODS=HASHEDPASSWORD\r\n250 OK\r\n")
	if l := f.expect("AUTHENTICATE "); l != `AUTHENTICATE "p \"w\""` {
		t.Fatalf("got %q", l)
	}
	f.send("515 Authentication failed: Password did not match HashedControlPassword value from configuration\r\n")
	if err := <-errc; err == nil || !strings.Contains(err.Error(), "515") {
		t.Fatalf("err = %v", err)
	}
}

func TestContextCancelKeepsOrder(t *testing.T) {
	c, f := newFake(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	read := make(chan struct{})
	go func() { f.expect("GETINFO a"); close(read) }()
	if _, err := c.GetInfo(ctx, "a"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	<-read
	// The late reply to "a" must not be taken for the reply to "b".
	res := make(chan map[string]string, 1)
	go func() { m, _ := c.GetInfo(context.Background(), "b"); res <- m }()
	f.expect("GETINFO b")
	f.send("250-a=1\r\n250 OK\r\n250-b=2\r\n250 OK\r\n")
	if m := <-res; m["b"] != "2" {
		t.Fatalf("got %q", m)
	}
}
