package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/smtp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/socks"
	"github.com/torbento/bento/internal/testutil"
)

// mailSink is a loopback SMTP server that records when each message
// arrives, and can be taken down and brought back on the same port.
type mailSink struct {
	addr    string
	mu      sync.Mutex
	ln      net.Listener
	arrived map[string]time.Time // by Subject
}

func newMailSink(t *testing.T) *mailSink {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := &mailSink{addr: ln.Addr().String(), arrived: map[string]time.Time{}}
	m.serve(ln)
	t.Cleanup(m.down)
	return m
}

func (m *mailSink) serve(ln net.Listener) {
	m.mu.Lock()
	m.ln = ln
	m.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go m.session(c)
		}
	}()
}

func (m *mailSink) session(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	r := bufio.NewReader(c)
	fmt.Fprint(c, "220 sink\r\n")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		switch verb := strings.ToUpper(strings.TrimSpace(line)); {
		case strings.HasPrefix(verb, "EHLO"), strings.HasPrefix(verb, "HELO"):
			fmt.Fprint(c, "250-sink\r\n250 8BITMIME\r\n")
		case verb == "DATA":
			fmt.Fprint(c, "354 go on\r\n")
			var msg bytes.Buffer
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
				msg.WriteString(l)
			}
			subject := ""
			for _, l := range strings.Split(msg.String(), "\r\n") {
				if s, ok := strings.CutPrefix(l, "Subject: "); ok {
					subject = s
				}
			}
			m.mu.Lock()
			m.arrived[subject] = time.Now()
			m.mu.Unlock()
			fmt.Fprint(c, "250 taken\r\n")
		case verb == "QUIT":
			fmt.Fprint(c, "221 bye\r\n")
			return
		default:
			fmt.Fprint(c, "250 ok\r\n")
		}
	}
}

func (m *mailSink) down() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ln != nil {
		m.ln.Close()
		m.ln = nil
	}
}

func (m *mailSink) up(t *testing.T) {
	ln, err := net.Listen("tcp", m.addr)
	if err != nil {
		t.Fatal(err)
	}
	m.serve(ln)
}

func (m *mailSink) when(subject string) (time.Time, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	at, ok := m.arrived[subject]
	return at, ok
}

// TestDelayMail: messages sent through Tor to DelayMail's onion service
// reach a loopback mail server after delays drawn from the distribution
// set (uniform, 3-9 s: checked over 16 messages), and none is lost while
// the mail server is down for a while.
//
// Most of its minute is waiting (for the onion service's descriptor, for
// the delays): it runs in parallel with the other such tests, after the
// sequential ones, on a bentod of its own, and before TestDustMote.
func TestDelayMail(t *testing.T) {
	beforeMote.Add(1)
	defer beforeMote.Done()
	t.Parallel()
	n := tornet(t)
	d := startTorBentodFrom(t, testutil.Binaries(t), n.Exits()[0], "MaxLifetime 1 day\n")
	sink := newMailSink(t)
	fnc, err := client.LoadFunction(fn("delaymail"))
	if err != nil {
		t.Fatal(err)
	}
	fnc.Manifest = bytes.Replace(fnc.Manifest, []byte(`destinations = ["accept *:25", "accept *:587"]`), []byte(`destinations = ["accept `+sink.addr+`"]`), 1)
	cl := client.New(d.Addr)
	dep, err := cl.Deploy(ctx(t), fnc)
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(sink.addr)
	s, err := cl.Invoke(context.Background(), dep.InvocationToken, host, atoi(port), "uniform", 3, 9)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	var out syncBuffer
	first := make(chan string, 1)
	go func() {
		told := false
		for {
			data, exit, err := s.Recv()
			if err != nil || exit != nil {
				return
			}
			out.Write(data)
			if i := strings.IndexByte(out.String(), '\n'); i >= 0 && !told {
				first <- out.String()[:i]
				told = true
			}
		}
	}()
	t0 := time.Now()
	var onion string
	select {
	case onion = <-first:
	case <-time.After(90 * time.Second):
		t.Fatalf("no address line from DelayMail\n%s", d.log)
	}

	// Hand over messages through Tor, in one SMTP session.
	send := func(subjects []string) map[string]time.Time {
		t.Helper()
		sent := map[string]time.Time{}
		var c *smtp.Client
		dialer := &socks.Dialer{Proxy: n.Client().SocksAddr(), Username: "mail-" + subjects[0], Password: "x"}
		for i := 0; i < 20 && c == nil; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			conn, err := dialer.DialContext(ctx, "tcp", onion)
			cancel()
			if err == nil {
				conn.SetDeadline(time.Now().Add(2 * time.Minute))
				if c, err = smtp.NewClient(conn, "delaymail"); err != nil {
					conn.Close()
				}
			}
			if c == nil {
				time.Sleep(2 * time.Second)
			}
		}
		if c == nil {
			t.Fatalf("could not reach DelayMail at %s through Tor", onion)
		}
		defer c.Close()
		for _, subj := range subjects {
			if err := c.Mail("alice@example.org"); err != nil {
				t.Fatal(err)
			}
			if err := c.Rcpt("bob@example.org"); err != nil {
				t.Fatal(err)
			}
			w, err := c.Data()
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(w, "From: alice@example.org\r\nTo: bob@example.org\r\nSubject: %s\r\n\r\nHello Bob.\r\n.leading dot\r\n", subj)
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			sent[subj] = time.Now()
		}
		_ = c.Quit()
		return sent
	}
	waitAll := func(sent map[string]time.Time, d time.Duration) map[string]time.Duration {
		t.Helper()
		deadline := time.Now().Add(d)
		delays := map[string]time.Duration{}
		for len(delays) < len(sent) {
			for subj, at := range sent {
				if got, ok := sink.when(subj); ok {
					delays[subj] = got.Sub(at)
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d messages arrived within %s; the function's output:\n%s", len(delays), len(sent), d, out.String())
			}
			time.Sleep(200 * time.Millisecond)
		}
		return delays
	}

	var subjects []string
	for i := 0; i < 16; i++ {
		subjects = append(subjects, fmt.Sprintf("uniform-%d", i))
	}
	sent := send(subjects)
	t.Logf("16 messages handed over after %v", time.Since(t0).Round(time.Millisecond))
	delays := waitAll(sent, 2*time.Minute)
	lo, hi, sum := time.Hour, time.Duration(0), time.Duration(0)
	for _, d := range delays {
		lo, hi, sum = min(lo, d), max(hi, d), sum+d
	}
	mean := sum / time.Duration(len(delays))
	t.Logf("delays over %d messages: min %v, mean %v, max %v (uniform 3-9 s, plus delivery through Tor)", len(delays), lo, mean, hi)
	// The lower bound is the distribution's less what handing over took;
	// the upper bound allows for delivery through Tor on a loaded machine.
	if lo < 2*time.Second || hi > 25*time.Second || mean < 4500*time.Millisecond || mean > 10*time.Second || hi-lo < 3*time.Second {
		t.Errorf("delays %v do not look like uniform 3-9 s: min %v, mean %v, max %v", delays, lo, mean, hi)
	}

	// The mail server goes down for a while: nothing is lost.
	sink.down()
	outage := send([]string{"outage-0", "outage-1", "outage-2"})
	time.Sleep(12 * time.Second)
	for subj := range outage {
		if _, ok := sink.when(subj); ok {
			t.Fatalf("%s arrived while the mail server was down", subj)
		}
	}
	sink.up(t)
	t.Logf("mail server back after %v", time.Since(t0).Round(time.Millisecond))
	waitAll(outage, 2*time.Minute)
	t.Logf("every message delivered after %v", time.Since(t0).Round(time.Millisecond))
	if !strings.Contains(out.String(), "delivered 19 after") {
		t.Errorf("the function's output does not report every delivery:\n%s", out.String())
	}
}

func atoi(s string) int {
	var n int
	fmt.Sscan(s, &n)
	return n
}
