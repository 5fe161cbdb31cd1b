package socks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
)

// fakeProxy accepts one SOCKS5 connection, records the request and answers
// with code; on success it echoes.
func fakeProxy(t *testing.T, code byte, wantAuth bool) (string, chan []byte) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 3)
		io.ReadFull(c, buf)
		if wantAuth {
			c.Write([]byte{5, 2})
			h := make([]byte, 2)
			io.ReadFull(c, h)
			u := make([]byte, h[1])
			io.ReadFull(c, u)
			io.ReadFull(c, h[:1])
			p := make([]byte, h[0])
			io.ReadFull(c, p)
			c.Write([]byte{1, 0})
		} else {
			c.Write([]byte{5, 0})
		}
		req := make([]byte, 5)
		io.ReadFull(c, req)
		rest := make([]byte, int(req[4])+2)
		io.ReadFull(c, rest)
		got <- append(req, rest...)
		c.Write([]byte{5, code, 0, 1, 127, 0, 0, 1, 0, 80})
		if code == 0 {
			io.Copy(c, c)
		}
	}()
	return ln.Addr().String(), got
}

func TestDialHostname(t *testing.T) {
	addr, got := fakeProxy(t, 0, true)
	d := &Dialer{Proxy: addr, Username: "inst-1", Password: "x"}
	onion := testOnion(1)
	c, err := d.DialContext(context.Background(), "tcp", onion+":80")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := <-got
	want := append([]byte{5, 1, 0, 3, byte(len(onion))}, append([]byte(onion), 0, 80)...)
	if !bytes.Equal(req, want) {
		t.Fatalf("request %v, want %v", req, want)
	}
	c.Write([]byte("ping"))
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
		t.Fatalf("echo %q %v", b, err)
	}
}

func TestDialRefused(t *testing.T) {
	addr, _ := fakeProxy(t, 5, false)
	d := &Dialer{Proxy: addr}
	_, err := d.DialContext(context.Background(), "tcp", "example.com:80")
	var se *Error
	if !errors.As(err, &se) || se.Code != 5 || se.Target != "example.com:80" {
		t.Fatalf("err = %v", err)
	}
}

func TestReadReply(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		want string
		err  bool
	}{
		{[]byte{5, 0, 0, 1, 10, 0, 0, 1, 1, 187}, "10.0.0.1:443", false},
		{[]byte{5, 0, 0, 3, 3, 'a', 'b', 'c', 0, 80}, "abc:80", false},
		{append(append([]byte{5, 0, 0, 4}, net.ParseIP("::1")...), 0, 1), "[::1]:1", false},
		{[]byte{5, 4, 0, 1, 0, 0, 0, 0, 0, 0}, "", true},
		{[]byte{4, 0}, "", true},
		{[]byte{5, 0, 0, 9}, "", true},
		{[]byte{5, 0, 0, 3, 5, 'a'}, "", true},
	} {
		got, err := ReadReply(bytes.NewReader(tc.in))
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ReadReply(%v) = %q, %v", tc.in, got, err)
		}
	}
}

func FuzzReadReply(f *testing.F) {
	f.Add([]byte{5, 0, 0, 1, 10, 0, 0, 1, 1, 187})
	f.Add([]byte{5, 0, 0, 3, 3, 'a', 'b', 'c', 0, 80})
	f.Add([]byte{5, 1, 0, 1})
	f.Add([]byte{5, 0xF0, 0, 1, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{5, 0xF7, 0, 1, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		addr, err := ReadReply(bytes.NewReader(b))
		var se *Error
		if errors.As(err, &se) {
			se.Target = "x.onion:1"
			if len(b) < 2 || se.Code != b[1] || se.Code == 0 || !strings.Contains(se.Error(), fmt.Sprintf("0x%02X", b[1])) {
				t.Fatalf("reply %x decoded as %v", b, se)
			}
		}
		if err == nil {
			if _, _, err := net.SplitHostPort(addr); err != nil {
				t.Fatalf("accepted reply gives bad address %q", addr)
			}
		}
	})
}
