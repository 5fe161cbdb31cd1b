package middlebox

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/torbento/bento/internal/lightbox/flowstate"
)

// TestUnackedBounds: the bytes kept unacknowledged stay within their
// bounds, per direction (the newest stay) and in all (the least recently
// used direction gives way), and what is charged is what is held.
func TestUnackedBounds(t *testing.T) {
	u := newUnacked(time.Minute)
	u.perDir, u.memCap = 1000, 10_000
	now := time.Unix(100, 0)
	for i := range 200 {
		k := dirKey{k: flowstate.Key{byte(i)}}
		for j := range 30 {
			u.add(k, uint32(j*100), bytes.Repeat([]byte{byte(j)}, 100), now)
		}
		sum := 0
		for _, b := range u.m {
			if len(b.data) > u.perDir || b.charged < cap(b.data) {
				t.Fatalf("a direction holds %d bytes, charged %d for %d", len(b.data), b.charged, cap(b.data))
			}
			sum += b.charged
		}
		if sum != u.held || u.held > u.memCap+2*u.perDir {
			t.Fatalf("held %d, the directions' charges %d, bound %d", u.held, sum, u.memCap)
		}
	}
	k := dirKey{k: flowstate.Key{199}}
	if b := u.m[k]; b == nil || b.start != 2000 || b.data[0] != 20 {
		t.Fatalf("the newest direction keeps its newest 1,000 bytes: %+v", b)
	}
	u.ack(k, 2500)
	if u.acked(k, 2400) != 100 || !u.differs(k, 2500, []byte{99}) || u.differs(k, 2500, []byte{25}) {
		t.Fatalf("after an ack at 2500: acked %d", u.acked(k, 2400))
	}
}

// TestUnackedPerSource: one sender spreading its streams over many
// directions keeps at most its share (its own oldest directions give
// way), and another sender's bytes stay, however the first sender
// churns; the charges add up per sender.
func TestUnackedPerSource(t *testing.T) {
	u := newUnacked(time.Minute)
	u.perDir, u.perSrc, u.memCap = 1000, 3000, 100_000
	now := time.Unix(100, 0)
	server := netip.MustParseAddr("192.0.2.80")
	dir := func(src string, port uint16) dirKey {
		return dirKey{k: flowstate.MakeKey(netip.MustParseAddr(src), server, port, 80, 6)}
	}
	victim := dir("10.0.0.2", 1)
	u.add(victim, 1, bytes.Repeat([]byte{'v'}, 500), now)
	for port := range uint16(200) {
		u.add(dir("10.0.0.1", 100+port), 1, bytes.Repeat([]byte{'a'}, 900), now)
		hog := u.bySrc[dir("10.0.0.1", 0).source()]
		if hog.held > u.perSrc+2*u.perDir {
			t.Fatalf("one sender holds %d bytes, past its share %d", hog.held, u.perSrc)
		}
	}
	if !u.differs(victim, 1, []byte{'x'}) {
		t.Fatal("the other sender's unacknowledged bytes gave way to one sender's churn")
	}
	total := 0
	for _, su := range u.bySrc {
		total += su.held
	}
	if total != u.held {
		t.Fatalf("senders' charges add up to %d, the whole to %d", total, u.held)
	}
	for k := range u.m {
		u.drop(k)
	}
	if u.held != 0 || len(u.bySrc) != 0 {
		t.Fatalf("after dropping everything: %d held, %d senders", u.held, len(u.bySrc))
	}
}
