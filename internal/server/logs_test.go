package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/budget"
	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/wire"
)

// testServer is a Server without a sandbox: enough to serve requests
// about instances a test makes itself.
func testServer(t *testing.T) *Server {
	t.Helper()
	p := policy.Default()
	s := &Server{
		log:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		inflight:  budget.New(p.Daemon.MaxInFlight),
		instances: map[string]*Instance{}, byInv: map[tokenHash]*Instance{}, byShut: map[tokenHash]*Instance{},
		lost: map[tokenHash]string{}, perClient: map[string]int{}, roots: map[string]*root{}, ownerCalls: map[string]int{},
		reaped: make(chan struct{}), closed: make(chan struct{}), boxWake: make(chan struct{}, 1), met: newServerMetrics(),
	}
	s.budgets = keyedBudgets{parent: s.inflight, per: clientShare(p), m: map[string]*keyedBudget{}}
	s.pol.Store(p)
	t.Cleanup(func() {
		select {
		case <-s.closed:
		default:
			close(s.closed)
		}
		s.wg.Wait()
	})
	return s
}

// testInstance registers an instance without a runtime; it returns its
// tokens.
func testInstance(t *testing.T, s *Server) (*Instance, string, string) {
	t.Helper()
	m := &manifest.Manifest{Name: "t", Mode: manifest.ModeService}
	m.Resources.Output, m.Resources.Storage, m.Resources.Lifetime = 1<<20, 1<<20, time.Hour
	in := newInstance(s, newID("i-", 12), m, origin{}, &admission{})
	in.dir = t.TempDir()
	inv, invHash := newToken(invPrefix)
	sd, sdHash := newToken(shutPrefix)
	in.invHash, in.shutHash = invHash, sdHash
	s.mu.Lock()
	s.instances[in.id], s.byInv[invHash], s.byShut[sdHash] = in, in, in
	s.mu.Unlock()
	t.Cleanup(in.budgetDone)
	return in, inv, sd
}

func TestReadLog(t *testing.T) {
	s := testServer(t)
	in, _, _ := testInstance(t, s)
	data, next, skipped, wake, err := in.readLog(0, logChunk)
	if err != nil || len(data) != 0 || next != 0 || skipped != 0 || wake == nil {
		t.Fatalf("empty log: %q %d %d %v %v", data, next, skipped, wake, err)
	}
	if err := in.appendLog("first"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-wake:
	default:
		t.Fatal("a reader at the end was not woken by a new line")
	}
	data, next, _, _, err = in.readLog(0, logChunk)
	if err != nil || !strings.HasSuffix(string(data), " first\n") || next != int64(len(data)) {
		t.Fatalf("one line: %q %d %v", data, next, err)
	}
	// Past 64 KB the older half goes: a reader from 0 is told how much
	// it missed, and reads on from the oldest kept line.
	line := strings.Repeat("x", 1000)
	for range 200 {
		if err := in.appendLog(line); err != nil {
			t.Fatal(err)
		}
	}
	in.mu.Lock()
	held := in.logHeld
	in.mu.Unlock()
	if held > logKept {
		t.Fatalf("log holds %d bytes, more than %d", held, logKept)
	}
	var total, pos int64
	first := true
	for {
		data, next, skipped, wake, err := in.readLog(pos, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if first && skipped == 0 {
			t.Fatal("nothing reported skipped after the log rotated")
		}
		if !first && skipped != 0 {
			t.Fatalf("skipped %d in the middle", skipped)
		}
		if len(data) > 1000 {
			t.Fatalf("a piece of %d bytes, asked for at most 1000", len(data))
		}
		first = false
		total += skipped + int64(len(data))
		pos = next
		if wake != nil {
			break
		}
	}
	in.logMu.Lock()
	end := in.logEnd
	in.logMu.Unlock()
	if total != end || pos != end {
		t.Fatalf("read %d (to %d) of a log of %d bytes", total, pos, end)
	}
	// A position past the end (from before a restart) reads from the start.
	if _, next, _, _, err := in.readLog(end+100, 10); err != nil || next > end {
		t.Fatalf("a position past the end: next %d, %v", next, err)
	}
}

func TestServeLogs(t *testing.T) {
	s := testServer(t)
	in, inv, sd := testInstance(t, s)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	cl := client.New(ln.Addr().String())
	cl.Timeout = 10 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	in.appendLog("hello from the function")
	read := func(tok string) (string, *client.LogEnd) {
		l, err := cl.Logs(ctx, tok, false, 0)
		if err != nil {
			t.Fatalf("logs: %v", err)
		}
		defer l.Close()
		var out []byte
		for {
			data, _, end, err := l.Recv()
			if err != nil {
				t.Fatalf("logs: %v", err)
			}
			if end != nil {
				return string(out), end
			}
			out = append(out, data...)
		}
	}
	for _, tok := range []string{inv, sd} {
		if out, end := read(tok); !strings.HasSuffix(out, " hello from the function\n") || end.Ended || end.Offset != int64(len(out)) {
			t.Fatalf("logs with %s…: %q %+v", tok[:10], out, end)
		}
	}
	cases := []struct {
		token, code string
	}{
		{"bento-inv-nope", proto.CodeNotFound},
		{"", proto.CodeBadRequest},
		{strings.Repeat("x", 200), proto.CodeBadRequest},
	}
	for _, c := range cases {
		l, err := cl.Logs(ctx, c.token, false, 0)
		if err == nil {
			_, _, _, err = l.Recv()
			l.Close()
		}
		if !client.IsCode(err, c.code) {
			t.Errorf("logs with token %.12q: %v, want code %s", c.token, err, c.code)
		}
	}
	// Holders of the invocation token cannot take every reader's place:
	// the shutdown token's holder still reads.
	var held []*client.LogStream
	first := func(l *client.LogStream) error {
		_, _, _, err := l.Recv()
		return err
	}
	for i := 0; ; i++ {
		l, err := cl.Logs(ctx, inv, true, 0)
		if err == nil {
			err = first(l)
		}
		if err != nil {
			if !client.IsCode(err, proto.CodeBusy) || i != maxLogReaders-ownerLogReaders {
				t.Fatalf("invocation-token follower %d: %v (want busy after %d)", i, err, maxLogReaders-ownerLogReaders)
			}
			break
		}
		held = append(held, l)
	}
	if out, _ := read(sd); !strings.Contains(out, "hello from the function") {
		t.Fatalf("the owner's read with the invocation token's places taken: %q", out)
	}
	for _, l := range held {
		l.Close()
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		in.mu.Lock()
		n := in.logReaders
		in.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d log readers left after their clients went", n)
		}
	}
	// Following: a new line arrives, then the end of the instance.
	l, err := cl.Logs(ctx, inv, true, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	next := func() ([]byte, *client.LogEnd) {
		data, _, end, err := l.Recv()
		if err != nil {
			t.Fatalf("following: %v", err)
		}
		return data, end
	}
	if data, _ := next(); !strings.Contains(string(data), "hello from") {
		t.Fatalf("following: first %q", data)
	}
	in.appendLog("a new line")
	if data, _ := next(); !strings.HasSuffix(string(data), " a new line\n") {
		t.Fatalf("following: %q", data)
	}
	in.mu.Lock()
	in.endReason = "shut down by its owner"
	in.mu.Unlock()
	close(in.ended)
	if data, end := next(); end == nil || !end.Ended || end.Reason != "shut down by its owner" {
		t.Fatalf("following an ended instance: %q %+v", data, end)
	}
}

// TestLogsUnsupported: a server that does not list the feature (an older
// bentod) is not sent the request, and the client says why.
func TestLogsUnsupported(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		// bentod 0.2's welcome, with no features.
		buf := make([]byte, 4096)
		c.Read(buf)
		c.Write((&wire.Frame{Type: proto.TWelcome, Header: []byte(`{"version":1,"server":"bentod/0.2"}`)}).Encode(nil))
		c.Read(buf)
	}()
	cl := client.New(ln.Addr().String())
	_, err = cl.Logs(context.Background(), "bento-inv-x", false, 0)
	var ue *client.UnsupportedError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "bentod/0.2") {
		t.Fatalf("logs from an old server: %v", err)
	}
}
