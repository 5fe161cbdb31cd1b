package socks

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"filippo.io/edwards25519"
)

// testOnion is the v3 address of the ed25519 key from seed i.
func testOnion(i byte) string {
	pub := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{i}, 32)).Public().(ed25519.PublicKey)
	return OnionAddress(pub)
}

// craft encodes key bytes, version and a checksum computed for them, as
// an address tor would decode without complaint about the checksum.
func craft(pub []byte, ver byte) string {
	raw := append(append(append([]byte(nil), pub...), onionChecksum(pub, ver)...), ver)
	return onionB32.EncodeToString(raw) + ".onion"
}

// flip changes the character at i to another base32 character.
func flip(addr string, i int) string {
	c := byte('a')
	if addr[i] == 'a' {
		c = 'b'
	}
	return addr[:i] + string(c) + addr[i+1:]
}

func TestParseOnion(t *testing.T) {
	seedKey := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32)).Public().(ed25519.PublicKey)
	valid := OnionAddress(seedKey)
	label := strings.TrimSuffix(valid, ".onion")
	// A byte string that is no point of the curve: the first y whose
	// x² has no square root.
	var notPoint []byte
	for y := byte(2); notPoint == nil; y++ {
		b := make([]byte, 32)
		b[0] = y
		if _, err := new(edwards25519.Point).SetBytes(b); err != nil {
			notPoint = b
		}
	}
	// A valid key plus the point of order 2, (0, -1): on the curve, not
	// in the prime-order subgroup.
	p, _ := new(edwards25519.Point).SetBytes(seedKey)
	minus1 := bytes.Repeat([]byte{0xff}, 32)
	minus1[0], minus1[31] = 0xec, 0x7f
	t2, err := new(edwards25519.Point).SetBytes(minus1)
	if err != nil {
		t.Fatal(err)
	}
	torsion := new(edwards25519.Point).Add(p, t2).Bytes()
	identity := make([]byte, 32)
	identity[0] = 1
	swapped := label[:10] + label[11:12] + label[10:11] + label[12:]
	if swapped == label {
		swapped = label[:20] + label[21:22] + label[20:21] + label[22:]
	}

	for _, tc := range []struct {
		name, in, err string // err: a word of the reason; "" for valid
	}{
		{"generated", valid, ""},
		{"no suffix", label, ""},
		{"upper case", strings.ToUpper(valid), ""},
		{"trailing dot", valid + ".", ""},
		{"subdomain", "www." + valid, ""},
		{"other key", testOnion(1), ""},
		{"tor project", "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion", ""},
		{"duckduckgo", "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion", ""},
		{"first char mistyped", flip(valid, 0), "checksum"},
		{"middle char mistyped", flip(valid, 30), "checksum"},
		{"checksum char mistyped", flip(valid, 53), "checksum"},
		{"two chars swapped", swapped + ".onion", "checksum"},
		{"version char mistyped", flip(valid, 55), "version"},
		{"truncated", label[:55] + ".onion", "one is missing"},
		{"one extra", label + "a.onion", "one too many"},
		{"half", label[:28] + ".onion", "28 characters"},
		{"empty", ".onion", "0 characters"},
		{"v2", "expyuzz4wqqyqhjn.onion", "v2"},
		{"digit one", label[:5] + "1" + label[6:] + ".onion", "character 6"},
		{"digit zero", "0" + label[1:] + ".onion", "character 1"},
		{"digit eight", label[:55] + "8.onion", "character 56"},
		{"dash", label[:55] + "-.onion", "not base32"},
		{"control byte", label[:55] + "\x12.onion", "not base32"},
		{"non-ASCII", label[:54] + "é.onion", "not base32"},
		{"version 4, checksum for it", craft(seedKey, 4), "version 4"},
		{"version 2, checksum for it", craft(seedKey, 2), "version 2"},
		{"not a point", craft(notPoint, 3), "not a valid ed25519 key"},
		{"identity", craft(identity, 3), "not a valid ed25519 key"},
		{"torsion component", craft(torsion, 3), "not a valid ed25519 key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pub, err := ParseOnion(tc.in)
			if tc.err == "" {
				if err != nil {
					t.Fatalf("ParseOnion(%q): %v", tc.in, err)
				}
				if got := OnionAddress(pub); !strings.Contains(strings.ToLower(tc.in), got[:56]) {
					t.Fatalf("ParseOnion(%q) gives the key of %s", tc.in, got)
				}
				return
			}
			var oe *OnionError
			if !errors.As(err, &oe) || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("ParseOnion(%q) = %v, want an OnionError saying %q", tc.in, err, tc.err)
			}
		})
	}
}

// TestDialBadOnion: a mistyped onion address fails before the proxy is
// even contacted.
func TestDialBadOnion(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	contacted := make(chan struct{}, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			contacted <- struct{}{}
			c.Close()
		}
	}()
	d := &Dialer{Proxy: ln.Addr().String()}
	bad := flip(testOnion(3), 20) + ":8888"
	_, err = d.DialContext(context.Background(), "tcp", bad)
	var oe *OnionError
	if !errors.As(err, &oe) || !strings.Contains(err.Error(), "mistyped") {
		t.Fatalf("dial %s: %v", bad, err)
	}
	select {
	case <-contacted:
		t.Fatal("the proxy was contacted for a mistyped onion address")
	case <-time.After(100 * time.Millisecond):
	}
}

func FuzzParseOnion(f *testing.F) {
	f.Add(testOnion(1))
	f.Add("www." + strings.ToUpper(testOnion(2)) + ".")
	f.Add(flip(testOnion(3), 4))
	f.Add("expyuzz4wqqyqhjn.onion")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		pub, err := ParseOnion(s)
		if err != nil {
			var oe *OnionError
			if !errors.As(err, &oe) || len(oe.Addr) > 100+len("…") {
				t.Fatalf("ParseOnion(%q): %v", s, err)
			}
			return
		}
		// Accepted: the key's own address is the input's last label.
		addr := OnionAddress(pub)
		if len(pub) != 32 || !strings.Contains(strings.ToLower(s), addr[:56]) {
			t.Fatalf("ParseOnion(%q) accepted the key of %s", s, addr)
		}
		if _, err := ParseOnion(addr); err != nil {
			t.Fatalf("the address of an accepted key, %s, is refused: %v", addr, err)
		}
	})
}
