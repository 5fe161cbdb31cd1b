package middlebox

import (
	"bytes"
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
