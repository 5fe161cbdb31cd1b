package middlebox

import (
	"net/netip"
	"testing"
	"time"

	"github.com/torbento/bento/internal/lightbox/flowstate"
)

// TestReorderPoolPerSource: one sender (an IPv4 address, an IPv6 /64)
// holds at most PerSource in the pool, however many directions it
// spreads its data over, so another sender still finds room; what a
// sender held is returned when its directions are drained or dropped.
func TestReorderPoolPerSource(t *testing.T) {
	now := time.Unix(100, 0)
	piece := make([]byte, 1000)
	server := netip.MustParseAddr("192.0.2.80")
	dir := func(src string, port uint16) dirKey {
		return dirKey{k: flowstate.MakeKey(netip.MustParseAddr(src), server, port, 80, 6), side: 0}
	}
	for _, tc := range []struct {
		name             string
		hog, same, other string
	}{
		{"IPv4", "10.0.0.1", "10.0.0.1", "10.0.0.2"},
		{"IPv6 /64", "2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:3::1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newReorderPool(ReorderConfig{MemCap: 64 << 10, PerSource: 16 << 10})
			held := 0
			var hogs []dirKey
			for port := uint16(1); ; port++ {
				k := dir(tc.hog, port)
				ok, _ := r.add(k, 0, 5000, piece, now)
				if !ok {
					break
				}
				hogs = append(hogs, k)
				held += len(piece) + heldOverhead
				if held > 16<<10 {
					t.Fatalf("one sender holds %d bytes, past PerSource", held)
				}
			}
			if len(hogs) < 10 {
				t.Fatalf("one sender held only %d pieces of 1000 bytes in 16 KiB", len(hogs))
			}
			if ok, _ := r.add(dir(tc.same, 60000), 0, 5000, piece, now); ok {
				t.Error("a second address of the same sender got past its share")
			}
			if ok, _ := r.add(dir(tc.other, 1), 0, 5000, piece, now); !ok {
				t.Error("another sender found no room while one sender held its share")
			}
			r.consume(hogs[0], len(piece))
			if ok, _ := r.add(dir(tc.hog, 60001), 0, 5000, piece, now); !ok {
				t.Error("a sender whose piece was drained got no room back")
			}
			for _, k := range append(hogs, dir(tc.other, 1), dir(tc.hog, 60001)) {
				r.drop(k)
			}
			if r.held != 0 || len(r.bySrc) != 0 || len(r.m) != 0 {
				t.Errorf("after dropping everything: %d bytes held, %d senders charged, %d directions", r.held, len(r.bySrc), len(r.m))
			}
		})
	}
}
