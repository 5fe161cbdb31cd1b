package exitpolicy

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/torbento/bento/internal/testutil"
)

func TestEvaluate(t *testing.T) {
	tests := []struct {
		policy string
		addr   string
		port   uint16
		want   Action
	}{
		{"accept *:80", "192.0.2.1", 80, Accept},
		{"accept *:80", "2001:db8::1", 80, Accept},
		{"accept *:80", "192.0.2.1", 81, Reject},
		{"accept *4:*", "2001:db8::1", 443, Reject},
		{"accept *6:*", "2001:db8::1", 443, Accept},
		{"accept *6:*", "192.0.2.1", 443, Reject},
		{"accept6 *:*", "192.0.2.1", 443, Reject},
		{"accept6 *:*", "2001:db8::1", 443, Accept},
		{"reject private:*, accept *:*", "10.1.2.3", 80, Reject},
		{"reject private:*, accept *:*", "172.31.255.255", 80, Reject},
		{"reject private:*, accept *:*", "172.32.0.1", 80, Accept},
		{"reject private:*, accept *:*", "127.0.0.1", 80, Reject},
		{"reject private:*, accept *:*", "::1", 80, Reject},
		{"reject private:*, accept *:*", "fe80::1", 80, Reject},
		{"reject private:*, accept *:*", "2001:db8::1", 80, Accept},
		{"reject private:*, accept *:*", "::ffff:127.0.0.1", 80, Reject}, // unmapped first
		{"accept 192.0.2.0/24:8000-9000", "192.0.2.200", 8000, Accept},
		{"accept 192.0.2.0/24:8000-9000", "192.0.2.200", 9000, Accept},
		{"accept 192.0.2.0/24:8000-9000", "192.0.2.200", 9001, Reject},
		{"accept 192.0.2.0/24:8000-9000", "192.0.3.1", 8080, Reject},
		{"accept 192.0.2.0/255.255.255.0:80", "192.0.2.9", 80, Accept},
		{"accept 10.0.0.0/8", "10.200.1.1", 22, Accept},
		{"accept [2001:db8::]/32:443", "2001:db8:ffff::1", 443, Accept},
		{"accept [2001:db8::]/32:443", "2001:db9::1", 443, Reject},
		{"accept6 [2001:db8::1]:443", "2001:db8::1", 443, Accept},
		{"reject 127.0.0.1:8888\naccept 127.0.0.1:*", "127.0.0.1", 8888, Reject},
		{"reject 127.0.0.1:8888\naccept 127.0.0.1:*", "127.0.0.1", 8080, Accept},
		{"accept 127.0.0.1:80", "127.0.0.2", 80, Reject},
		{"", "192.0.2.1", 80, Reject},                     // deny by default
		{"ACCEPT *:443", "192.0.2.1", 443, Accept},        // case-insensitive as in tor
		{"accept6 192.0.2.1:80", "192.0.2.1", 80, Reject}, // ignored item
		{"accept 0.0.0.0/0:*", "203.0.113.5", 1, Accept},
	}
	for _, tc := range tests {
		p, _, err := Parse(tc.policy)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tc.policy, err)
		}
		got := p.Evaluate(netip.MustParseAddr(tc.addr), tc.port)
		if got.Action != tc.want {
			t.Errorf("policy %q, %s:%d = %v (rule %q), want %v", tc.policy, tc.addr, tc.port, got.Action, got.Rule, tc.want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	bad := []string{
		"allow *:80",
		"accept",
		"accept *:80 extra",
		"accept 1.2.3.4/33",
		"accept 1.1.2.3/255.255.64.0",
		"accept */16",
		"accept *4/16:80",
		"accept 1.2.3.4:70000",
		"accept 1.2.3.4:90-80",
		"accept 1.2.3.4:http",
		"accept 2001:db8::1:80",
		"accept [2001:db8::1:80",
		"accept [1.2.3.4]:80",
		"accept [2001:db8::]/255.255.0.0:80",
		"accept fred:80",
		"accept 1.2.3.4:-5",
		"accept 1.2.3.4:",
	}
	for _, s := range bad {
		if _, _, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) accepted a malformed item", s)
		} else if !strings.Contains(err.Error(), "expected e.g.") {
			t.Errorf("Parse(%q) error %q lacks a hint", s, err)
		}
	}
}

func TestWarnings(t *testing.T) {
	p, warns, err := Parse("accept6 1.2.3.4:80, accept6 *4:80, reject *:*")
	if err != nil {
		t.Fatal(err)
	}
	if len(warns) != 2 {
		t.Fatalf("got %d warnings, want 2: %v", len(warns), warns)
	}
	if len(p.Items) != 1 {
		t.Fatalf("items = %v", p.Items)
	}
}

func TestRuleString(t *testing.T) {
	tests := map[string][]string{
		"accept *:80":              {"accept *4:80", "accept6 *6:80"},
		"reject 10.0.0.0/8:1-1024": {"reject 10.0.0.0/8:1-1024"},
		"accept [2001:db8::]/32":   {"accept6 [2001:db8::]/32:*"},
		"accept6 [::1]:9050":       {"accept6 [::1]:9050"},
		"reject 192.0.2.1:*":       {"reject 192.0.2.1:*"},
	}
	for in, want := range tests {
		rules, _, err := ParseItem(in)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range rules {
			got = append(got, r.String())
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%q renders %v, want %v", in, got, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"accept *:80", "reject private:*", "accept6 [::1]/64:1-2", "accept 1.2.3.4/255.0.0.0:*",
		"accept *4:443, reject *6:*", "reject [fe80::]/10", "accept 0.0.0.0/0",
	} {
		f.Add(s, "192.0.2.1", uint16(80))
	}
	f.Fuzz(func(t *testing.T, text, addr string, port uint16) {
		p, _, err := Parse(text)
		if err != nil {
			return
		}
		// Every rule must render to an item that parses to the same rule.
		for _, r := range p.Rules {
			again, warn, err := ParseItem(r.String())
			if err != nil || warn != "" || len(again) != 1 {
				t.Fatalf("rule %q from %q does not round-trip: %v %q", r.String(), text, err, warn)
			}
			if again[0].Prefix != r.Prefix || again[0].PortMin != max(r.PortMin, 1) && r.PortMin != 0 || again[0].PortMax != r.PortMax {
				t.Fatalf("rule %q round-trips to %q", r.String(), again[0].String())
			}
		}
		if a, err := netip.ParseAddr(addr); err == nil {
			_ = p.Evaluate(a, port)
		}
	})
}

// TestOnion: onion services are named by onion rules and "*" only; an
// address rule never matches a name; coverage of onion rules is exact.
func TestOnion(t *testing.T) {
	a := strings.Repeat("a", 56) + ".onion"
	b := strings.Repeat("b", 56) + ".onion"
	p := MustParse("reject " + a + ":*, accept *.onion:80-443, reject *4:*")
	for _, tc := range []struct {
		name string
		port uint16
		want bool
	}{
		{a, 80, false}, {b, 80, true}, {b, 22, false}, {"example.com", 80, false},
	} {
		if got := p.AllowsName(tc.name, tc.port); got != tc.want {
			t.Errorf("%s:%d = %v, want %v", tc.name, tc.port, got, tc.want)
		}
	}
	if !MustParse("accept *:443").AllowsName("example.com", 443) {
		t.Error(`"accept *" does not cover a host name`)
	}
	if MustParse("accept *4:443, accept *6:443").AllowsName("example.com", 443) {
		t.Error("address rules matched a host name")
	}
	for _, tc := range []struct {
		policy, manifest string
		ok               bool
	}{
		{"accept *.onion:*", "accept " + b + ":80", true},
		{"accept *.onion:*", "accept *.onion:8888", true},
		{"reject " + a + ":*, accept *.onion:*", "accept *.onion:80", false}, // a is inside *.onion
		{"reject " + a + ":*, accept *.onion:*", "accept " + b + ":80", true},
		{"accept *.onion:80", "accept *.onion:*", false},
		{"accept *:*", "accept " + b + ":1-65535", true},
		{"accept 127.0.0.1:*", "accept " + b + ":80", false},
	} {
		got := len(MustParse(tc.policy).Covers(MustParse(tc.manifest))) == 0
		if got != tc.ok {
			t.Errorf("%q covers %q = %v, want %v", tc.policy, tc.manifest, got, tc.ok)
		}
	}
	for _, bad := range []string{"accept x.onion:80", "accept6 *.onion:80", "accept " + a + "/8:80", "accept AB.onion:1"} {
		if _, _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted a bad onion item", bad)
		}
	}
}

// TestParseLinear: a policy's parse costs work linear in its length, and
// what it says of a bad one stays short.
func TestParseLinear(t *testing.T) {
	rep := func(unit string) func(int) []byte {
		return func(n int) []byte { return []byte(strings.Repeat(unit, n)) }
	}
	testutil.Linear(t, 500, 4096, map[string]func(int) []byte{
		"addresses":       rep("accept 10.1.2.3:80, "),
		"masks and ports": rep("reject 192.168.0.0/16:1-1024, "),
		"ipv6":            rep("accept6 [2001:db8::1]:443, "),
		"onions":          rep("accept abcdefghijklmnop.onion:80, "),
		"bad items":       rep("frobnicate *:*, "),
		"garbage":         rep("\xff,:[/"),
	}, func(b []byte) error { _, _, err := Parse(string(b)); return err })
}
