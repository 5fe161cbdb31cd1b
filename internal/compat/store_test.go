package compat

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestCodeStoreBounds: stored code is bounded per address and in all,
// and forgotten an hour after its last use.
func TestCodeStoreBounds(t *testing.T) {
	s := newCodeStore()
	const max = 1 << 10
	var first string
	for i := range maxStoredPerClient {
		tok, err := s.put("a", "f", "x", max)
		if err != nil {
			t.Fatalf("store %d: %v", i, err)
		}
		if len(tok) != 36 || tok[14] != '4' {
			t.Fatalf("token %q is not a version 4 UUID", tok)
		}
		if i == 0 {
			first = tok
		}
	}
	if _, err := s.put("a", "f", "x", max); err == nil || !strings.Contains(err.Error(), "your address keeps 16 stored functions") {
		t.Fatalf("17th: %v", err)
	}
	// Bytes per address: four uploads' worth.
	for i := range 4 {
		if _, err := s.put("b", "f", strings.Repeat("x", max), max); err != nil {
			t.Fatalf("b %d: %v", i, err)
		}
	}
	if _, err := s.put("b", "f", "x", max); err == nil {
		t.Fatal("b beyond 4 uploads' bytes: stored")
	}
	// Another address is not held up.
	if _, err := s.put("c", "f", "x", max); err != nil {
		t.Fatal(err)
	}
	if c, ok := s.get(first); !ok || c.code != "x" {
		t.Fatal("the first code is gone")
	}
	if _, ok := s.get("nonexistent"); ok {
		t.Fatal("unknown token found")
	}
	if _, ok := s.get(strings.Repeat("x", 1000)); ok {
		t.Fatal("huge token found")
	}
	// An hour unused: forgotten, and the address may store again.
	s.mu.Lock()
	for _, e := range s.m {
		e.used = time.Now().Add(-2 * storedTTL)
	}
	s.mu.Unlock()
	if _, ok := s.get(first); ok {
		t.Fatal("an expired code is still there")
	}
	if _, err := s.put("a", "f", "x", max); err != nil {
		t.Fatalf("after expiry: %v", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) != 1 || s.bytes != 1 || len(s.byOwner) != 1 {
		t.Fatalf("left %d codes, %d bytes, %d owners", len(s.m), s.bytes, len(s.byOwner))
	}
}

// TestCodeStoreFairShare: addresses filling the store in all cannot lock
// a newcomer out for an hour: its code takes the place of the least
// recently used code of the address holding the most, and an address
// never loses code to one that holds more.
func TestCodeStoreFairShare(t *testing.T) {
	s := newCodeStore()
	const max = 1 << 20
	honest, err := s.put("honest", "f", "x", max)
	if err != nil {
		t.Fatal(err)
	}
	// Attackers fill the rest of the store.
	var attackers []string
	for i := 0; len(s.m) < maxStored; i++ {
		a := fmt.Sprintf("attacker%d", i)
		attackers = append(attackers, a)
		for j := 0; j < maxStoredPerClient && len(s.m) < maxStored; j++ {
			if _, err := s.put(a, "f", "x", max); err != nil {
				t.Fatalf("%s: %v", a, err)
			}
		}
	}
	// A newcomer is not locked out.
	if _, err := s.put("newcomer", "f", "x", max); err != nil {
		t.Fatalf("a newcomer with the store full: %v", err)
	}
	// An attacker storing more only takes from those holding more than
	// it will, never from the honest address.
	for _, a := range attackers {
		for range maxStoredPerClient {
			_, _ = s.put(a, "f", "x", max)
		}
	}
	if _, ok := s.get(honest); !ok {
		t.Fatal("the honest address's code was evicted")
	}
	if n := s.byOwner["newcomer"].n; n != 1 {
		t.Fatalf("the newcomer holds %d codes", n)
	}
	if len(s.m) > maxStored {
		t.Fatalf("%d codes stored, at most %d", len(s.m), maxStored)
	}
	// By bytes too: a newcomer's large code makes room.
	b := newCodeStore()
	for i := 0; i < 16; i++ {
		for range 4 {
			if _, err := b.put(fmt.Sprintf("a%d", i), "f", strings.Repeat("x", 1000), 1000); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := b.put("newcomer", "f", strings.Repeat("x", 1000), 1000); err != nil {
		t.Fatalf("a newcomer with the store's bytes full: %v", err)
	}
	if b.bytes > 64*1000 {
		t.Fatalf("%d bytes stored, at most %d", b.bytes, 64*1000)
	}
}

// TestTokensHashed: the code store keeps tokens only as their SHA-256
// hashes, by which they are looked up (a lookup's time says nothing of
// how much of a token a guess got right).
func TestTokensHashed(t *testing.T) {
	s := newCodeStore()
	tok, err := s.put("a", "f", "x", 1<<10)
	if err != nil {
		t.Fatal(err)
	}
	for k, e := range s.m {
		if k != hashSecret(tok) || strings.Contains(fmt.Sprintf("%+v", *e), tok) {
			t.Fatalf("the token is kept in clear: key %x, entry %+v", k, *e)
		}
	}
	if _, ok := s.get(tok[:35] + "0"); ok && tok[35] != '0' {
		t.Fatal("a token one character off found")
	}
	if _, ok := s.get(tok); !ok {
		t.Fatal("the token is not found")
	}
}

// TestStoreLimitEscapes: code of MaxUploadSize bytes fits in a Store as
// the original client writes it (json.dumps, ASCII only: an accented
// letter's two bytes become six, a control character's one six).
func TestStoreLimitEscapes(t *testing.T) {
	c := &conn{p: testPolicy()}
	max := int(c.p.Max.Upload)
	for _, unit := range []string{"é", "\x01", "x", "😀"} {
		code := strings.Repeat(unit, max/len(unit))
		var b strings.Builder
		b.WriteString(`{"name": "f", "code": "`)
		for _, r := range code {
			switch {
			case r < 0x20 || r >= 0x80 && r <= 0xffff:
				fmt.Fprintf(&b, `\u%04x`, r)
			case r > 0xffff:
				r -= 0x10000
				fmt.Fprintf(&b, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
			default:
				b.WriteRune(r)
			}
		}
		b.WriteString(`"}`)
		if n, lim := b.Len(), c.requestLimit(TStore); n > lim {
			t.Errorf("code of %d bytes of %q: a store of %d bytes, over the frame's bound of %d", len(code), unit, n, lim)
		}
		req, err := DecodeStore([]byte(b.String()))
		if err != nil || req.Code != code {
			t.Fatalf("%q: %v", unit, err)
		}
	}
}
