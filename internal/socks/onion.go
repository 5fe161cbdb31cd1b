package socks

import (
	"crypto/ed25519"
	"crypto/sha3"
	"encoding/base32"
	"fmt"
	"strings"

	"filippo.io/edwards25519"
)

// OnionError is an onion address that cannot be right, found before
// asking tor: mistyped, truncated, or of a version tor no longer serves.
type OnionError struct {
	Addr   string // as given (at most 100 bytes of it)
	Reason string
}

func (e *OnionError) Error() string {
	return fmt.Sprintf("socks: onion address %q: %s; copy the address again (a v3 address is 56 characters of a-z and 2-7, then .onion)", e.Addr, e.Reason)
}

const (
	onionLen     = 56 // base32 characters of a v3 address
	onionVersion = 3
)

var onionB32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// ParseOnion checks a v3 onion address as tor does (rend-spec-v3 §6,
// tor's hs_address_is_valid) and returns the service's ed25519 key. host
// is the address's label, with or without ".onion" (a trailing dot and
// subdomains, which tor ignores, are allowed), in either case: 56 base32
// characters encoding the 32-byte key, a 2-byte checksum
// SHA3-256(".onion checksum" || key || version)[:2] and the version byte
// 3; the key must be a point of the curve's prime-order subgroup.
func ParseOnion(host string) (ed25519.PublicKey, error) {
	shown := host
	if len(shown) > 100 {
		shown = shown[:100] + "…"
	}
	bad := func(format string, a ...any) (ed25519.PublicKey, error) {
		return nil, &OnionError{Addr: shown, Reason: fmt.Sprintf(format, a...)}
	}
	label := strings.TrimSuffix(host, ".")
	if IsOnion(label) {
		label = label[:len(label)-len(".onion")]
	}
	if i := strings.LastIndexByte(label, '.'); i >= 0 {
		label = label[i+1:]
	}
	switch n := len(label); {
	case n == 16:
		return bad("a 16-character v2 address: tor no longer reaches v2 onion services (since 0.4.6, 2021); ask for the service's v3 address")
	case n == onionLen-1 || n == onionLen+1:
		return bad("%d characters, want %d: one is missing or one too many", n, onionLen)
	case n != onionLen:
		return bad("%d characters, want %d", n, onionLen)
	}
	for i := 0; i < len(label); i++ {
		c := label[i] | 0x20 // lower case for letters; digits unchanged
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') || label[i] < '2' {
			return bad("character %d (%q) is not base32: only letters a-z and digits 2-7 (never 0, 1, 8 or 9)", i+1, label[i])
		}
	}
	raw, err := onionB32.DecodeString(strings.ToLower(label))
	if err != nil || len(raw) != 35 {
		return bad("not base32")
	}
	pub, sum, ver := raw[:32], raw[32:34], raw[34]
	if ver != onionVersion {
		return bad("version %d, want 3", ver)
	}
	if want := onionChecksum(pub, ver); sum[0] != want[0] || sum[1] != want[1] {
		return bad("its checksum does not match: a character is mistyped")
	}
	if !primeOrder(pub) {
		return bad("its key is not a valid ed25519 key (tor refuses it too)")
	}
	return ed25519.PublicKey(append([]byte(nil), pub...)), nil
}

// OnionAddress returns the v3 onion address of an ed25519 key, with
// ".onion".
func OnionAddress(pub ed25519.PublicKey) string {
	raw := append(append(append(make([]byte, 0, 35), pub...), onionChecksum(pub, onionVersion)...), onionVersion)
	return onionB32.EncodeToString(raw) + ".onion"
}

func onionChecksum(pub []byte, ver byte) []byte {
	h := sha3.New256()
	h.Write([]byte(".onion checksum"))
	h.Write(pub)
	h.Write([]byte{ver})
	return h.Sum(nil)[:2]
}

// lMinus1 is ℓ-1, ℓ the order of ed25519's prime-order subgroup, as a
// canonical little-endian scalar.
var lMinus1 = func() *edwards25519.Scalar {
	b := []byte{0xec, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10}
	s, err := edwards25519.NewScalar().SetCanonicalBytes(b)
	if err != nil {
		panic(err)
	}
	return s
}()

// primeOrder reports whether pub encodes a point of the prime-order
// subgroup other than the identity: [ℓ]P = [ℓ-1]P + P is the identity.
func primeOrder(pub []byte) bool {
	p, err := new(edwards25519.Point).SetBytes(pub)
	if err != nil || p.Equal(edwards25519.NewIdentityPoint()) == 1 {
		return false
	}
	q := new(edwards25519.Point).ScalarMult(lMinus1, p)
	q.Add(q, p)
	return q.Equal(edwards25519.NewIdentityPoint()) == 1
}
