package fsprotect

import (
	"bytes"
	"errors"
	"testing"
)

func TestSealOpen(t *testing.T) {
	k, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("the quick brown fox")
	ad := AD([]byte("kv"), U64(42), []byte("key"))
	s1, err := k.Seal(msg, ad)
	if err != nil {
		t.Fatal(err)
	}
	s2, _ := k.Seal(msg, ad)
	if len(s1) != len(msg)+Overhead {
		t.Fatalf("sealed %d bytes into %d, want %d", len(msg), len(s1), len(msg)+Overhead)
	}
	if bytes.Equal(s1, s2) {
		t.Fatal("two seals of the same item are equal: the nonce is not random")
	}
	if bytes.Contains(s1, msg) {
		t.Fatal("the plaintext is in the sealed item")
	}
	got, err := k.Open(s1, ad)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	cases := []struct {
		name   string
		key    *Key
		sealed []byte
		ad     []byte
	}{
		{"other ad (offset)", k, s1, AD([]byte("kv"), U64(43), []byte("key"))},
		{"other ad (key)", k, s1, AD([]byte("kv"), U64(42), []byte("kez"))},
		{"other key", other, s1, ad},
		{"truncated", k, s1[:len(s1)-1], ad},
		{"too short", k, s1[:Overhead-1], ad},
		{"empty", k, nil, ad},
	}
	for _, c := range cases {
		if _, err := c.key.Open(c.sealed, c.ad); !errors.Is(err, ErrTampered) {
			t.Errorf("%s: err = %v, want ErrTampered", c.name, err)
		}
	}
	for i := range s1 {
		bad := bytes.Clone(s1)
		bad[i] ^= 0x01
		if _, err := k.Open(bad, ad); !errors.Is(err, ErrTampered) {
			t.Fatalf("byte %d flipped: err = %v", i, err)
		}
	}
}

func TestAD(t *testing.T) {
	// Without lengths, ("ab", "c") and ("a", "bc") would be the same.
	if bytes.Equal(AD([]byte("ab"), []byte("c")), AD([]byte("a"), []byte("bc"))) {
		t.Fatal("AD is ambiguous")
	}
	if bytes.Equal(AD([]byte("a")), AD([]byte("a"), nil)) {
		t.Fatal("AD ignores an empty part")
	}
}

func TestExhausted(t *testing.T) {
	k, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	k.seals.Store(MaxSeals - 1)
	if _, err := k.Seal([]byte("x"), nil); err != nil {
		t.Fatalf("the last seal: %v", err)
	}
	if _, err := k.Seal([]byte("x"), nil); !errors.Is(err, ErrExhausted) {
		t.Fatalf("beyond MaxSeals: err = %v, want ErrExhausted", err)
	}
}
