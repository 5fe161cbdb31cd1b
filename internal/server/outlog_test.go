package server

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestOutLog(t *testing.T) {
	l, err := newOutLog(filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	off1, _ := l.append(recData, []byte("hello"))
	off2, _ := l.append(recData, nil)
	off3, _ := l.append(recExit, []byte(`{"status":"ok"}`))
	if _, err := l.append(recData, []byte("late")); err != errLogClosed {
		t.Fatalf("append after exit: %v", err)
	}
	for _, off := range []int64{0, off1, off2, off3} {
		if err := l.validOffset(off); err != nil {
			t.Errorf("validOffset(%d): %v", off, err)
		}
	}
	for _, off := range []int64{-1, 1, off1 + 2, off3 + 1} {
		if err := l.validOffset(off); err == nil {
			t.Errorf("validOffset(%d) accepted a bad offset", off)
		}
	}
	r, err := l.reader()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	kind, data, next, err := readRecord(r, 0)
	if err != nil || kind != recData || string(data) != "hello" || next != off1 {
		t.Fatalf("record 0 = %d %q %d %v", kind, data, next, err)
	}
	kind, data, _, _ = readRecord(r, off2)
	if kind != recExit || !strings.Contains(string(data), "ok") {
		t.Fatalf("exit record = %d %q", kind, data)
	}
	if _, closed, _ := l.state(); !closed {
		t.Fatal("log not closed after exit record")
	}
}

func TestTokens(t *testing.T) {
	a, ha := newToken(invPrefix)
	b, hb := newToken(invPrefix)
	if a == b || ha.equal(hb) || !ha.equal(hashToken(a)) {
		t.Fatal("tokens collide or hash inconsistently")
	}
	if !strings.HasPrefix(a, invPrefix) || len(a) != len(invPrefix)+43 {
		t.Fatalf("token %q: want prefix and 256 bits in base64url", a)
	}
}
