package main

import (
	"bytes"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseTransport(t *testing.T) {
	t.Setenv("BENTO_TOR_SOCKS", "")
	t.Setenv("BENTO_TOR_RETRY", "")
	for _, tc := range []struct {
		args  []string
		socks string
		retry time.Duration
		rest  int
		err   string
	}{
		{[]string{"policy", "x"}, "", defaultTorRetry, 2, ""},
		{[]string{"--tor-socks", "127.0.0.1:9050", "policy"}, "127.0.0.1:9050", defaultTorRetry, 1, ""},
		{[]string{"--tor-socks=unix:/run/tor/socks", "--tor-retry=2m", "run"}, "unix:/run/tor/socks", 2 * time.Minute, 1, ""},
		{[]string{"--tor-retry", "0", "--tor-socks", "a:1", "run", "--tor-retry", "5s"}, "a:1", 0, 3, ""},
		{[]string{"--tor-retry", "90", "run"}, "", 90 * time.Second, 1, ""},
		{[]string{"--tor-socks"}, "", 0, 0, "needs a value"},
		{[]string{"--tor-socks=", "policy"}, "", 0, 0, "needs an address"},
		{[]string{"--tor-retry", "soon", "policy"}, "", 0, 0, "want a duration"},
		{[]string{"--tor-retry", "-1s", "policy"}, "", 0, 0, "want a duration"},
		{[]string{"--tor-retry", "2h", "policy"}, "", 0, 0, "want a duration"},
	} {
		tr, rest, err := parseTransport(tc.args)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: err %v, want %q", tc.args, err, tc.err)
			}
			continue
		}
		if err != nil || tr.torSocks != tc.socks || tr.torRetry != tc.retry || len(rest) != tc.rest {
			t.Errorf("%q: %+v, rest %q, %v", tc.args, tr, rest, err)
		}
	}
	t.Setenv("BENTO_TOR_RETRY", "10s")
	if tr, _, err := parseTransport([]string{"policy"}); err != nil || tr.torRetry != 10*time.Second {
		t.Errorf("$BENTO_TOR_RETRY=10s: %+v %v", tr, err)
	}
}

// notFoundTor is a SOCKS5 server that answers every request "onion
// service descriptor not found" (0xF0), counting the requests.
func notFoundTor(t *testing.T) (string, *atomic.Int32) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				h := make([]byte, 3)
				if _, err := io.ReadFull(c, h); err != nil {
					return
				}
				c.Write([]byte{5, 2})
				a := make([]byte, 2)
				io.ReadFull(c, a)
				io.ReadFull(c, make([]byte, int(a[1])))
				io.ReadFull(c, a[:1])
				io.ReadFull(c, make([]byte, int(a[0])))
				c.Write([]byte{1, 0})
				req := make([]byte, 5)
				if _, err := io.ReadFull(c, req); err != nil {
					return
				}
				io.ReadFull(c, make([]byte, int(req[4])+2))
				c.Write([]byte{5, 0xF0, 0, 1, 0, 0, 0, 0, 0, 0})
			}()
		}
	}()
	return ln.Addr().String(), &n
}

// TestTorErrors: bento says what tor answered, retries a missing
// descriptor within --tor-retry (saying so once), and refuses a mistyped
// onion address without asking tor.
func TestTorErrors(t *testing.T) {
	const onion = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion"
	for _, tc := range []struct {
		name   string
		retry  string
		server string
		tries  int32
		notes  int
		says   string
	}{
		{"retried", "1200ms", onion, 2, 1, "descriptor cannot be found"},
		{"no retry", "0", onion, 1, 0, "descriptor cannot be found"},
		{"mistyped", "1200ms", "3" + onion[1:], 0, 0, "checksum does not match"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, n := notFoundTor(t)
			var out, errb bytes.Buffer
			code := run([]string{"--tor-socks", addr, "--tor-retry", tc.retry, "policy", tc.server}, strings.NewReader(""), &out, &errb)
			msg := errb.String()
			if code != exitConnect || !strings.Contains(msg, tc.says) || strings.Count(msg, "tries again") != tc.notes || n.Load() != tc.tries {
				t.Fatalf("exit %d after %d requests to tor, stderr:\n%s", code, n.Load(), msg)
			}
			if testing.Verbose() {
				t.Logf("stderr:\n%s", msg)
			}
		})
	}
}
