package socks

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeTor is a SOCKS5 server answering its n-th connection with codes[n]
// (the last code ever after); on success it echoes. It counts the
// connections.
func fakeTor(t *testing.T, codes ...byte) (string, *atomic.Int32) {
	t.Helper()
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
			i := int(n.Add(1)) - 1
			code := codes[min(i, len(codes)-1)]
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				h := make([]byte, 3)
				if _, err := io.ReadFull(c, h); err != nil {
					return
				}
				c.Write([]byte{5, 0})
				req := make([]byte, 5)
				if _, err := io.ReadFull(c, req); err != nil || req[3] != 3 {
					return
				}
				if _, err := io.ReadFull(c, make([]byte, int(req[4])+2)); err != nil {
					return
				}
				c.Write([]byte{5, code, 0, 1, 0, 0, 0, 0, 0, 0})
				if code == 0 {
					io.Copy(c, c)
				}
			}()
		}
	}()
	return ln.Addr().String(), &n
}

func fastRetries(t *testing.T) {
	first, max := retryFirstWait, retryMaxWait
	retryFirstWait, retryMaxWait = 10*time.Millisecond, 40*time.Millisecond
	t.Cleanup(func() { retryFirstWait, retryMaxWait = first, max })
}

// TestRetryDescriptorSpreads: tor answers "descriptor not found" twice,
// as it does while a new onion service's descriptor spreads, then
// connects.
func TestRetryDescriptorSpreads(t *testing.T) {
	fastRetries(t)
	addr, conns := fakeTor(t, CodeHSNotFound, CodeHSNotFound, 0)
	var calls []int
	d := &Dialer{Proxy: addr, RetryFor: 10 * time.Second, OnRetry: func(err *Error, tries int, wait time.Duration) {
		if err.Code != CodeHSNotFound || wait <= 0 {
			t.Errorf("OnRetry(%v, %d, %s)", err, tries, wait)
		}
		calls = append(calls, tries)
	}}
	c, err := d.DialContext(context.Background(), "tcp", testOnion(5)+":8888")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("ping"))
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
		t.Fatalf("echo %q %v", b, err)
	}
	if conns.Load() != 3 || len(calls) != 2 || calls[0] != 1 || calls[1] != 2 {
		t.Fatalf("%d connections, OnRetry calls %v; want 3 and [1 2]", conns.Load(), calls)
	}
}

func TestRetry(t *testing.T) {
	fastRetries(t)
	onion := testOnion(6) + ":8888"
	for _, tc := range []struct {
		name     string
		codes    []byte
		target   string
		retryFor time.Duration
		tries    int32
		code     byte   // 0: success
		msg      string // in the error
	}{
		{"intro failed, then up", []byte{CodeHSIntroFailed, 0}, onion, 5 * time.Second, 2, 0, ""},
		{"intro timed out, then up", []byte{CodeHSIntroTimedOut, CodeHSNotFound, 0}, onion, 5 * time.Second, 3, 0, ""},
		{"unreachable onion without ExtendedErrors", []byte{CodeHostUnreachable, 0}, onion, 5 * time.Second, 2, 0, ""},
		{"no retry by default", []byte{CodeHSNotFound, 0}, onion, 0, 1, CodeHSNotFound, "descriptor cannot be found"},
		{"missing client auth fails at once", []byte{CodeHSMissingAuth, 0}, onion, 5 * time.Second, 1, CodeHSMissingAuth, "ClientOnionAuthDir"},
		{"rendezvous failed fails at once", []byte{CodeHSRendFailed, 0}, onion, 5 * time.Second, 1, CodeHSRendFailed, "rendezvous"},
		{"refused fails at once", []byte{CodeConnRefused, 0}, onion, 5 * time.Second, 1, CodeConnRefused, "nothing listens"},
		{"unresolved host name fails at once", []byte{CodeHostUnreachable, 0}, "example.com:8888", 5 * time.Second, 1, CodeHostUnreachable, "resolve"},
		{"bounded", []byte{CodeHSNotFound}, onion, 150 * time.Millisecond, 0, CodeHSNotFound, "gave up after"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, conns := fakeTor(t, tc.codes...)
			d := &Dialer{Proxy: addr, RetryFor: tc.retryFor}
			start := time.Now()
			c, err := d.DialContext(context.Background(), "tcp", tc.target)
			if c != nil {
				c.Close()
			}
			if tc.tries > 0 && conns.Load() != tc.tries {
				t.Errorf("%d tries, want %d", conns.Load(), tc.tries)
			}
			if tc.code == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var se *Error
			if !errors.As(err, &se) || se.Code != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want code 0x%02X saying %q", err, tc.code, tc.msg)
			}
			if el := time.Since(start); el > tc.retryFor+2*time.Second {
				t.Fatalf("took %s, bound %s", el, tc.retryFor)
			}
			if tc.tries == 0 && conns.Load() < 3 {
				t.Fatalf("gave up after %d tries", conns.Load())
			}
		})
	}
}

// TestRetryContext: the caller's context ends the retries, and the error
// keeps tor's reason.
func TestRetryContext(t *testing.T) {
	fastRetries(t)
	addr, _ := fakeTor(t, CodeHSNotFound)
	d := &Dialer{Proxy: addr, RetryFor: time.Minute}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := d.DialContext(ctx, "tcp", testOnion(7)+":8888")
	var se *Error
	if !errors.As(err, &se) || se.Code != CodeHSNotFound || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "stopped after") {
		t.Fatalf("err = %v", err)
	}
}
