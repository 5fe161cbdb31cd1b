package server

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
)

// Token prefixes tell the two kinds apart at a glance (and in a leaked
// paste, tell which one to revoke).
const (
	invPrefix  = "bento-inv-"
	shutPrefix = "bento-sd-"
)

// tokenHash is what bentod keeps of a token: a copied state or a memory
// dump reveals no usable token.
type tokenHash [sha256.Size]byte

// newToken returns a token with 256 random bits and its hash.
func newToken(prefix string) (string, tokenHash) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	tok := prefix + base64.RawURLEncoding.EncodeToString(b[:])
	return tok, hashToken(tok)
}

func hashToken(tok string) tokenHash { return sha256.Sum256([]byte(tok)) }

// equal compares two hashes in constant time.
func (h tokenHash) equal(o tokenHash) bool { return subtle.ConstantTimeCompare(h[:], o[:]) == 1 }

// newID returns a random identifier (not a secret) of n random bytes.
func newID(prefix string, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return prefix + hex.EncodeToString(b)
}
