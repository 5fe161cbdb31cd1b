package boxdir

import (
	"crypto/ed25519"
	"crypto/sha3"
	"crypto/sha512"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"filippo.io/edwards25519"
)

// onionVersion is the version byte of v3 onion addresses.
const onionVersion = 3

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// OnionAddress returns the v3 onion address of an ed25519 public key
// (rend-spec-v3 §6), without ".onion".
func OnionAddress(pub ed25519.PublicKey) string {
	raw := make([]byte, 0, 35)
	raw = append(raw, pub...)
	raw = append(raw, onionChecksum(pub)...)
	raw = append(raw, onionVersion)
	return strings.ToLower(b32.EncodeToString(raw))
}

func onionChecksum(pub []byte) []byte {
	h := sha3.New256()
	h.Write([]byte(".onion checksum"))
	h.Write(pub)
	h.Write([]byte{onionVersion})
	return h.Sum(nil)[:2]
}

// OnionKey returns the public key of a v3 onion address (with or without
// ".onion"), checking its length, version and checksum.
func OnionKey(addr string) (ed25519.PublicKey, error) {
	host := strings.TrimSuffix(strings.ToLower(addr), ".onion")
	if len(host) != 56 {
		return nil, fmt.Errorf("onion address %q: want 56 base32 characters", truncate(addr, 80))
	}
	raw, err := b32.DecodeString(strings.ToUpper(host))
	if err != nil || len(raw) != 35 {
		return nil, fmt.Errorf("onion address %q is not base32", truncate(addr, 80))
	}
	pub, sum, ver := raw[:32], raw[32:34], raw[34]
	if ver != onionVersion {
		return nil, fmt.Errorf("onion address %q: version %d, want 3", truncate(addr, 80), ver)
	}
	if want := onionChecksum(pub); sum[0] != want[0] || sum[1] != want[1] {
		return nil, fmt.Errorf("onion address %q: bad checksum (mistyped?)", truncate(addr, 80))
	}
	if _, err := new(edwards25519.Point).SetBytes(pub); err != nil {
		return nil, fmt.Errorf("onion address %q: not a point of the curve", truncate(addr, 80))
	}
	return ed25519.PublicKey(append([]byte(nil), pub...)), nil
}

// OnionSigner signs with an onion service's key as tor keeps it: the
// 64-byte expanded ed25519 secret (a clamped scalar, then the nonce
// prefix) that ADD_ONION returns as "ED25519-V3:<base64>". Signatures
// verify with crypto/ed25519 against the onion address's key.
type OnionSigner struct {
	scalar *edwards25519.Scalar
	prefix []byte
	pub    ed25519.PublicKey
}

// ParseTorKey reads tor's "ED25519-V3:<base64>" key blob.
func ParseTorKey(blob string) (*OnionSigner, error) {
	b64, ok := strings.CutPrefix(strings.TrimSpace(blob), "ED25519-V3:")
	if !ok {
		return nil, errors.New("onion service key: want ED25519-V3:<base64>")
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != 64 {
		return nil, errors.New("onion service key: want 64 bytes in base64")
	}
	s, err := edwards25519.NewScalar().SetBytesWithClamping(raw[:32])
	if err != nil {
		return nil, fmt.Errorf("onion service key: %w", err)
	}
	pub := new(edwards25519.Point).ScalarBaseMult(s).Bytes()
	return &OnionSigner{scalar: s, prefix: append([]byte(nil), raw[32:]...), pub: pub}, nil
}

// Public returns the key's public half.
func (k *OnionSigner) Public() ed25519.PublicKey { return k.pub }

// Onion returns the key's onion address, without ".onion".
func (k *OnionSigner) Onion() string { return OnionAddress(k.pub) }

// Sign signs msg as ed25519 does (RFC 8032 §5.1.6), from the expanded key.
func (k *OnionSigner) Sign(msg []byte) []byte {
	h := sha512.New()
	h.Write(k.prefix)
	h.Write(msg)
	r, _ := edwards25519.NewScalar().SetUniformBytes(h.Sum(nil))
	R := new(edwards25519.Point).ScalarBaseMult(r).Bytes()
	h.Reset()
	h.Write(R)
	h.Write(k.pub)
	h.Write(msg)
	c, _ := edwards25519.NewScalar().SetUniformBytes(h.Sum(nil))
	S := edwards25519.NewScalar().MultiplyAdd(c, k.scalar, r)
	return append(R, S.Bytes()...)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
