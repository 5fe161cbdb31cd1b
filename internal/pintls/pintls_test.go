package pintls

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParsePin(t *testing.T) {
	h := strings.Repeat("ab", 32)
	for _, tc := range []struct{ in, want, err string }{
		{"sha256:" + h, "sha256:" + h, ""},
		{" SHA256:" + strings.ToUpper(h) + " ", "sha256:" + h, ""},
		{"sha256:" + strings.Repeat("ab:", 31) + "ab", "sha256:" + h, ""},
		{h, "", "want sha256:"},
		{"sha1:" + h, "", "want sha256:"},
		{"sha256:" + h[:62], "", "got 62"},
		{"sha256:" + h + "a", "", "got 65"},
		{"sha256:" + h[:62] + "zz", "", "not hex"},
	} {
		got, err := ParsePin(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParsePin(%q) = %q, %v; want error %q", tc.in, got, err, tc.err)
			}
		} else if err != nil || got != tc.want {
			t.Errorf("ParsePin(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	addr, pin, err := SplitAddr("10.0.0.1:8888#sha256:" + h)
	if addr != "10.0.0.1:8888" || pin != "sha256:"+h || err != nil {
		t.Errorf("SplitAddr: %q %q %v", addr, pin, err)
	}
	if addr, pin, err := SplitAddr("10.0.0.1:8888"); addr != "10.0.0.1:8888" || pin != "" || err != nil {
		t.Errorf("SplitAddr without pin: %q %q %v", addr, pin, err)
	}
	if _, _, err := SplitAddr("10.0.0.1:8888#sha256:x"); err == nil {
		t.Error("SplitAddr accepted a bad pin")
	}
}

func FuzzParsePin(f *testing.F) {
	f.Add("sha256:" + strings.Repeat("0f", 32))
	f.Add("SHA256:" + strings.Repeat("0F:", 31) + "0F")
	f.Add("sha256:")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePin(s)
		if err != nil {
			return
		}
		if len(p) != len(Prefix)+64 || strings.ToLower(p) != p {
			t.Fatalf("ParsePin(%q) = %q", s, p)
		}
		if q, err := ParsePin(p); err != nil || q != p {
			t.Fatalf("the normal form %q does not parse to itself: %q %v", p, q, err)
		}
	})
}

// TestSniff: one port serves TLS (pinned) and cleartext; a wrong pin is
// refused before anything is sent.
func TestSniff(t *testing.T) {
	dir := t.TempDir()
	id, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	again, err := LoadOrCreate(dir)
	if err != nil || again.Fingerprint != id.Fingerprint {
		t.Fatalf("reloaded: %v, %v", again, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "tls_key.pem")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", st, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	kinds := make(chan bool, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				sc := Sniff(c, id.ServerConfig())
				b := make([]byte, 4)
				if _, err := io.ReadFull(sc, b); err != nil {
					return
				}
				kinds <- sc.(*sniffConn).TLS()
				sc.Write(b)
			}()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	echo := func(c net.Conn) string {
		defer c.Close()
		c.Write([]byte("\x00abc"))
		b := make([]byte, 4)
		if _, err := io.ReadFull(c, b); err != nil {
			return err.Error()
		}
		return string(b)
	}
	c, err := (&Dialer{Pin: id.Fingerprint}).DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if got := echo(c); got != "\x00abc" || !<-kinds {
		t.Fatalf("over TLS: %q", got)
	}
	c, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if got := echo(c); got != "\x00abc" || <-kinds {
		t.Fatalf("cleartext: %q", got)
	}
	other, _ := LoadOrCreate(t.TempDir())
	_, err = (&Dialer{Pin: other.Fingerprint}).DialContext(ctx, "tcp", ln.Addr().String())
	var me *MismatchError
	if !errors.As(err, &me) || me.Addr != ln.Addr().String() || me.Got != id.Fingerprint || me.Want != other.Fingerprint || !strings.Contains(err.Error(), "not the pinned") {
		t.Fatalf("wrong pin: %v", err)
	}
}

func FuzzSplitAddr(f *testing.F) {
	f.Add("10.0.0.1:8888#sha256:" + strings.Repeat("0f", 32))
	f.Add("[::1]:1#")
	f.Add("a#b#c")
	f.Fuzz(func(t *testing.T, s string) {
		addr, pin, err := SplitAddr(s)
		if err != nil {
			return
		}
		if pin == "" {
			if addr != s || strings.Contains(s, "#") {
				t.Fatalf("SplitAddr(%q) = %q, no pin", s, addr)
			}
			return
		}
		if strings.Contains(addr, "#") || !strings.HasPrefix(s, addr+"#") {
			t.Fatalf("SplitAddr(%q) = %q, %q", s, addr, pin)
		}
		if q, err := ParsePin(pin); err != nil || q != pin {
			t.Fatalf("SplitAddr(%q): pin %q is not normal: %q %v", s, pin, q, err)
		}
	})
}
