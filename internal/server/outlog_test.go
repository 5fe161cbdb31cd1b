package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOutLog(t *testing.T) {
	l, err := newOutLog(filepath.Join(t.TempDir(), "s"), "s", nil)
	if err != nil {
		t.Fatal(err)
	}
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
	kind, n, err := readHeader(r, 0)
	data, _ := readData(r, 0, n)
	if err != nil || kind != recData || string(data) != "hello" || recHeader+n != off1 {
		t.Fatalf("record 0 = %d %q %v", kind, data, err)
	}
	kind, n, _ = readHeader(r, off2)
	data, _ = readData(r, off2, n)
	if kind != recExit || !strings.Contains(string(data), "ok") {
		t.Fatalf("exit record = %d %q", kind, data)
	}
	if _, exitAt, _, _ := l.state(); exitAt != off2 {
		t.Fatalf("exit at %d, want %d", exitAt, off2)
	}
	l.discard("gone: made room")
	if err := l.validOffset(0); err == nil || !strings.Contains(err.Error(), "made room") {
		t.Fatalf("offset in a discarded log: %v", err)
	}
	if _, err := os.Stat(l.path); err == nil {
		t.Fatal("a discarded log's file remains")
	}
}

// TestOutLogIndex checks offsets deep into a log of many tiny records:
// the sparse index finds every boundary and refuses every other offset.
func TestOutLogIndex(t *testing.T) {
	l, err := newOutLog(filepath.Join(t.TempDir(), "s"), "s", nil)
	if err != nil {
		t.Fatal(err)
	}
	bounds := map[int64]bool{0: true}
	for i := 0; i < 60000; i++ {
		off, err := l.append(recData, make([]byte, i%7))
		if err != nil {
			t.Fatal(err)
		}
		bounds[off] = true
	}
	size, _, _, _ := l.state()
	check := func(lo, hi int64) {
		for off := max(lo, 0); off <= min(hi, size); off++ {
			err := l.validOffset(off)
			if (err == nil) != bounds[off] {
				t.Fatalf("validOffset(%d) = %v, boundary %v", off, err, bounds[off])
			}
		}
	}
	check(size-300, size)
	for _, m := range []int64{markStep, 2 * markStep, 3 * markStep} {
		check(m-150, m+150)
	}
	for i, m := range l.marks {
		if !bounds[m] || m < int64(i)*markStep || (i > 0 && l.marks[i-1] > m) {
			t.Fatalf("mark %d = %d is not the first boundary at or after %d", i, m, int64(i)*markStep)
		}
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
