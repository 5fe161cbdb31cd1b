package e2e

import (
	"bytes"
	"github.com/torbento/bento/internal/testutil"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/torbento/bento/internal/pintls"
)

// TestTLSPinned runs hello with the real binaries over TLS pinned to the
// certificate bentod made, through a proxy that records what crosses the
// socket: every connection starts with a TLS handshake and nothing of
// the function's arguments, output or tokens is in clear. The same run
// in cleartext shows they would be; another pin is refused as
// docs/errors.md says, before anything reaches bentod.
func TestTLSPinned(t *testing.T) {
	d := startBentod(t, "")
	b, err := os.ReadFile(filepath.Join(d.DataDir, "tls_fingerprint"))
	if err != nil {
		t.Fatal(err)
	}
	pin, err := pintls.ParsePin(string(b))
	if err != nil || pin+"\n" != string(b) {
		t.Fatalf("tls_fingerprint %q: %v", b, err)
	}
	if !strings.Contains(d.log.String(), pin) {
		t.Errorf("bentod did not log its pin %s", pin)
	}
	const want = "hello, Alice!\nsent from a Bento box\n"

	p := startRecordingProxy(t, d.Addr)
	r := bento(t, "", "run", p.addr+"#"+pin, fn("hello"), "Alice")
	if r.Code != 0 || r.Stdout != want {
		t.Fatalf("run hello over TLS: %s", r)
	}
	if !strings.Contains(r.Stderr, "bento attach "+p.addr+"#"+pin+" ") {
		t.Errorf("the reattach command does not carry the pin: %s", r.Stderr)
	}
	conns := p.take()
	if len(conns) < 2 { // deploy, invoke, shutdown
		t.Fatalf("%d connections through the proxy", len(conns))
	}
	for i, c := range conns {
		if len(c.up) == 0 || c.up[0] != 0x16 {
			t.Errorf("connection %d: the client's first bytes %q are not a TLS handshake record", i, trunc(string(c.up)))
		}
		for _, clear := range []string{"Alice", "hello, Alice", "bento-inv-", "bento-sd-", "def main", `"version"`} {
			if bytes.Contains(c.up, []byte(clear)) || bytes.Contains(c.down, []byte(clear)) {
				t.Errorf("connection %d: %q crossed the socket in clear", i, clear)
			}
		}
	}

	// The proxy sees through cleartext: the check above can fail.
	r = bento(t, "", "run", p.addr, fn("hello"), "Alice")
	if r.Code != 0 || r.Stdout != want {
		t.Fatalf("run hello in cleartext over loopback: %s", r)
	}
	var seen bool
	for _, c := range p.take() {
		seen = seen || bytes.Contains(c.down, []byte("hello, Alice"))
	}
	if !seen {
		t.Fatal("the proxy did not see hello's output in cleartext")
	}

	// Another pin: refused during the handshake, as documented.
	other, err := pintls.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r = bento(t, "", "run", p.addr+"#"+other.Fingerprint, fn("hello"), "Alice")
	row := docRow(t, "pin-mismatch")
	if r.Code != row.Exit || !testutil.MessageIn(r.Stderr, row.Message) || !strings.Contains(r.Stderr, "its certificate is "+pin+", the pin "+other.Fingerprint) {
		t.Fatalf("run with another pin: %s\nwant exit %d and %q", r, row.Exit, row.Message)
	}
	conns = p.take()
	if len(conns) != 1 {
		t.Fatalf("%d connections with another pin, want 1", len(conns))
	}
	// The client sent its ClientHello and, once it saw the certificate,
	// an alert (encrypted, in TLS 1.3: a record of 19 bytes): no frame.
	for rest := conns[0].up; len(rest) > 0; {
		if len(rest) < 5 {
			t.Fatalf("a partial TLS record from the client: %x", rest)
		}
		typ, n := rest[0], int(rest[3])<<8|int(rest[4])
		if typ == 0x17 && n > 32 {
			t.Fatalf("the client sent %d bytes of application data after refusing the certificate", n)
		}
		rest = rest[min(5+n, len(rest)):]
	}
}

// docRow is the row of docs/errors.md with id.
func docRow(t *testing.T, id string) testutil.ErrorRow {
	t.Helper()
	for _, r := range testutil.ErrorRows(t, "errors.md") {
		if r.ID == id {
			return r
		}
	}
	t.Fatalf("docs/errors.md has no row %s", id)
	return testutil.ErrorRow{}
}

// recordingProxy forwards loopback connections to a server and records
// the bytes each way.
type recordingProxy struct {
	addr  string
	mu    sync.Mutex
	conns []*recorded
}

type recorded struct {
	up, down []byte
	done     chan struct{} // closed once both ways have ended
}

func startRecordingProxy(t *testing.T, target string) *recordingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &recordingProxy{addr: ln.Addr().String()}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			rec := &recorded{done: make(chan struct{})}
			p.mu.Lock()
			p.conns = append(p.conns, rec)
			p.mu.Unlock()
			var ended sync.WaitGroup
			ended.Add(2)
			go func() { ended.Wait(); close(rec.done) }()
			pipe := func(dst, src net.Conn, buf *[]byte) {
				defer ended.Done()
				defer dst.Close()
				defer src.Close()
				src.SetDeadline(time.Now().Add(time.Minute))
				b := make([]byte, 32<<10)
				for {
					n, err := src.Read(b)
					if n > 0 {
						p.mu.Lock()
						*buf = append(*buf, b[:n]...)
						p.mu.Unlock()
						if _, werr := dst.Write(b[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}
			go pipe(s, c, &rec.up)
			go pipe(c, s, &rec.down)
		}
	}()
	return p
}

// take returns the connections recorded so far, once they have ended
// (the CLI has exited: they end soon), and forgets them.
func (p *recordingProxy) take() []recorded {
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	timeout := time.After(10 * time.Second)
	out := make([]recorded, len(conns))
	for i, c := range conns {
		select {
		case <-c.done:
		case <-timeout:
		}
		p.mu.Lock()
		out[i] = recorded{up: bytes.Clone(c.up), down: bytes.Clone(c.down)}
		p.mu.Unlock()
	}
	return out
}
