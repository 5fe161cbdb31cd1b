package exitpolicy

import (
	"math/rand"
	"net/netip"
	"testing"
)

func TestAcceptsAll(t *testing.T) {
	tests := []struct {
		policy, item string
		want         bool
	}{
		{"accept *:*", "accept 127.0.0.1:8080", true},
		{"reject *:*", "accept 127.0.0.1:8080", false},
		{"", "accept 127.0.0.1:8080", false},
		{"accept 127.0.0.0/8:8000-9000", "accept 127.0.0.1:8080", true},
		{"accept 127.0.0.0/8:8000-9000", "accept 127.0.0.1:7000-8080", false},
		{"accept 127.0.0.0/8:8000-9000", "accept 127.0.0.0/7:8080", false},
		{"reject 127.0.0.5:*, accept 127.0.0.0/8:*", "accept 127.0.0.0/24:80", false},
		{"reject 127.0.0.5:*, accept 127.0.0.0/8:*", "accept 127.0.0.6:80", true},
		{"accept 10.0.0.0/9:*, accept 10.128.0.0/9:*", "accept 10.0.0.0/8:443", true},
		{"accept 10.0.0.0/9:*, accept 10.128.0.0/9:1-100", "accept 10.0.0.0/8:1-200", false},
		{"accept *:1-100, accept *:101-65535", "accept *:*", true},
		{"accept *4:*", "accept *:80", false},
		{"accept *4:*, accept *6:*", "accept *:80", true},
		{"reject private:*, accept *:*", "accept 8.8.8.8:53", true},
		{"reject private:*, accept *:*", "accept *:53", false},
	}
	for _, tc := range tests {
		p := MustParse(tc.policy)
		q := MustParse(tc.item)
		got := len(p.Covers(q)) == 0
		if got != tc.want {
			t.Errorf("policy %q covers %q = %v, want %v", tc.policy, tc.item, got, tc.want)
		}
	}
}

// TestAcceptsAllRandom checks AcceptsAll against brute force over a small
// address space (10.0.0.0/28 × ports 1-8).
func TestAcceptsAllRandom(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	base := netip.MustParseAddr("10.0.0.0").As4()
	randRule := func() Rule {
		b := base
		b[3] = byte(rng.Intn(16))
		bits := 28 + rng.Intn(5)
		pfx, _ := netip.AddrFrom4(b).Prefix(bits)
		lo := uint16(1 + rng.Intn(8))
		hi := lo + uint16(rng.Intn(int(9-lo)))
		return Rule{Action: Action(rng.Intn(2)), Prefix: pfx, PortMin: lo, PortMax: hi}
	}
	for i := 0; i < 3000; i++ {
		p := &Policy{}
		for n := rng.Intn(6); n > 0; n-- {
			p.Rules = append(p.Rules, randRule())
		}
		q := randRule()
		want := true
		for a := 0; a < 16; a++ {
			b := base
			b[3] = byte(a)
			addr := netip.AddrFrom4(b)
			for port := q.PortMin; port <= q.PortMax; port++ {
				if q.Prefix.Contains(addr) && !p.Allows(addr, port) {
					want = false
				}
			}
		}
		if got := p.AcceptsAll(q.Prefix, q.PortMin, q.PortMax); got != want {
			t.Fatalf("policy %v, region %v: AcceptsAll = %v, brute force %v", p.Rules, q, got, want)
		}
	}
}
