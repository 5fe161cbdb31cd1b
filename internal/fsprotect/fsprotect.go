// Package fsprotect is FS Protect without a TEE: the key that seals what a
// protected instance leaves on the operator's disk (its stored data, its
// sessions' output, its code), and the sealing itself.
//
// A Key is made when the instance is deployed, from crypto/rand, and is
// never written anywhere: it lives in bentod's memory (in AES-256-GCM's
// key schedule; the raw bytes are cleared once the cipher holds them)
// until the instance ends or bentod stops. What was sealed with it is
// then unreadable for good. Every sealed item has its own random 96-bit
// nonce and is bound, as GCM's associated data, to where it belongs (the
// file, the offset, the record's key), so that an item moved, swapped,
// copied into another file or changed fails to open: the function sees an
// error, never somebody else's bytes.
//
// This protects against whoever reads the disk later (a stolen disk, a
// seized machine, a backup), not against whoever controls the machine
// while the instance lives (root can read bentod's memory). A key held
// in a TEE and an attestation of the code holding it would be a second
// implementation of the same Sealer; docs/SECURITY.md says what each one
// protects.
package fsprotect

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"sync/atomic"
)

// Overhead is what sealing adds to an item: the nonce and the tag.
const Overhead = 12 + 16

// MaxSeals is how many items one key may seal: GCM's bound for random
// nonces (2^32), beyond which a nonce could repeat.
const MaxSeals = 1<<32 - 1

// Errors of sealing. Messages name no paths: they reach functions.
var (
	// ErrTampered is an item that does not open: changed, truncated,
	// moved from elsewhere, or sealed by another key.
	ErrTampered = errors.New("FS Protect: stored data failed its integrity check (changed on disk, or not this instance's)")
	// ErrExhausted is a key that sealed MaxSeals items.
	ErrExhausted = errors.New("FS Protect: this instance's key has sealed all the items it may (2^32); deploy a new instance")
)

// Sealer seals and opens items. Key is the implementation without a TEE.
type Sealer interface {
	// Seal returns plaintext sealed, bound to ad.
	Seal(plaintext, ad []byte) ([]byte, error)
	// Open returns the plaintext of sealed, or ErrTampered when it was
	// not sealed by this key with this ad.
	Open(sealed, ad []byte) ([]byte, error)
}

// Key is an ephemeral AES-256-GCM key held in memory only.
type Key struct {
	aead  cipher.AEAD
	seals atomic.Uint64
}

// NewKey makes a key from crypto/rand.
func NewKey() (*Key, error) { return NewKeyFrom(rand.Reader) }

// NewKeyFrom makes a key from 32 bytes of r (tests use it to know the key
// they look for on disk).
func NewKeyFrom(r io.Reader) (*Key, error) {
	var raw [32]byte
	if _, err := io.ReadFull(r, raw[:]); err != nil {
		return nil, err
	}
	defer clear(raw[:])
	b, err := aes.NewCipher(raw[:])
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCMWithRandomNonce(b)
	if err != nil {
		return nil, err
	}
	return &Key{aead: aead}, nil
}

// Seal implements Sealer.
func (k *Key) Seal(plaintext, ad []byte) ([]byte, error) {
	if k.seals.Add(1) > MaxSeals {
		return nil, ErrExhausted
	}
	return k.aead.Seal(make([]byte, 0, len(plaintext)+Overhead), nil, plaintext, ad), nil
}

// Open implements Sealer.
func (k *Key) Open(sealed, ad []byte) ([]byte, error) {
	if len(sealed) < Overhead {
		return nil, ErrTampered
	}
	p, err := k.aead.Open(make([]byte, 0, len(sealed)-Overhead), nil, sealed, ad)
	if err != nil {
		return nil, ErrTampered
	}
	return p, nil
}

// AD joins the parts of an item's associated data unambiguously: each
// is preceded by its length, so no two lists of parts give the same
// bytes.
func AD(parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += 4 + len(p)
	}
	out := make([]byte, 0, n)
	for _, p := range parts {
		out = binary.BigEndian.AppendUint32(out, uint32(len(p)))
		out = append(out, p...)
	}
	return out
}

// U64 is n as 8 bytes, for an offset in associated data.
func U64(n int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(n)) }
