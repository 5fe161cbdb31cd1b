package boxdir

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/torbento/bento/internal/policy"
)

// Statement is what a box says of itself, signed with its onion key:
//
//	bento-box-statement 1
//	relay <relay fingerprint, 40 hex digits>
//	onion <ADDRESS>.onion:<PORT>
//	published <time>
//	ends-at <time> | never
//	drain-at <time> | never
//	policy-sha256 <64 hex digits>
//	signature <base64 ed25519 signature>
//
// Times are RFC 3339 in UTC, to the second. The signature covers
// SignaturePrefix followed by every line before the signature line, each
// with its "\n"; it verifies against the key of the onion address.
type Statement struct {
	Relay        string // upper-case hex
	Box          Announcement
	Published    time.Time
	EndsAt       time.Time // zero: never
	DrainAt      time.Time // zero: never
	PolicyDigest [32]byte
}

// SignaturePrefix separates statement signatures from any other use of an
// onion service's key.
const SignaturePrefix = "bento-box-statement-v1\x00"

// MaxStatement bounds a statement's size.
const MaxStatement = 2048

var keywords = []string{"bento-box-statement", "relay", "onion", "published", "ends-at", "drain-at", "policy-sha256", "signature"}

// Sign formats the statement and signs it with the box's onion key, which
// must be the key of s.Box.Onion.
func (s Statement) Sign(k *OnionSigner) (string, error) {
	if k.Onion() != s.Box.Onion {
		return "", fmt.Errorf("statement: the key is %s.onion's, not %s.onion's", k.Onion(), s.Box.Onion)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "bento-box-statement 1\nrelay %s\nonion %s\npublished %s\nends-at %s\ndrain-at %s\npolicy-sha256 %s\n",
		s.Relay, s.Box.Addr(), fmtTime(s.Published), fmtTime(s.EndsAt), fmtTime(s.DrainAt), hex.EncodeToString(s.PolicyDigest[:]))
	body := b.String()
	sig := k.Sign([]byte(SignaturePrefix + body))
	return body + "signature " + base64.StdEncoding.EncodeToString(sig) + "\n", nil
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}

func parseTime(v string) (time.Time, error) {
	if v == "never" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil || !strings.HasSuffix(v, "Z") || t.Year() < 2000 || t.Year() > 2200 {
		return time.Time{}, fmt.Errorf("time %q: want RFC 3339 in UTC (2026-12-02T18:00:00Z) or never", truncate(v, 40))
	}
	return t, nil
}

// ErrBadSignature is returned by Verify for a statement its onion key did
// not sign.
var ErrBadSignature = errors.New("statement: the signature is not the onion address's")

// ParseStatement parses and verifies a statement: every line in order,
// once, nothing else, and a signature by the key of the onion address it
// names.
func ParseStatement(text string) (Statement, error) {
	var s Statement
	if len(text) > MaxStatement {
		return s, fmt.Errorf("statement: %d bytes, at most %d", len(text), MaxStatement)
	}
	if !strings.HasSuffix(text, "\n") {
		return s, errors.New("statement: want lines ending in a newline")
	}
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) != len(keywords) {
		return s, fmt.Errorf("statement: %d lines, want %d", len(lines), len(keywords))
	}
	vals := make([]string, len(lines))
	for i, l := range lines {
		k, v, ok := strings.Cut(l, " ")
		if !ok || k != keywords[i] || v == "" || strings.ContainsAny(v, " \t\r") {
			return s, fmt.Errorf("statement line %d: want %q and one value", i+1, keywords[i])
		}
		vals[i] = v
	}
	if vals[0] != "1" {
		return s, fmt.Errorf("statement: version %q, want 1", truncate(vals[0], 20))
	}
	s.Relay = vals[1]
	if len(s.Relay) != 40 || strings.Trim(s.Relay, "0123456789ABCDEF") != "" {
		return s, fmt.Errorf("statement: relay %q: want 40 upper-case hex digits", truncate(s.Relay, 60))
	}
	box, err := ParseContact(ContactKey + ":" + vals[2])
	if err != nil {
		return s, fmt.Errorf("statement: onion: %w", err)
	}
	s.Box = box
	for i, dst := range []*time.Time{&s.Published, &s.EndsAt, &s.DrainAt} {
		if *dst, err = parseTime(vals[3+i]); err != nil {
			return s, fmt.Errorf("statement: %s: %w", keywords[3+i], err)
		}
	}
	if s.Published.IsZero() {
		return s, errors.New("statement: published must be a time")
	}
	if s.EndsAt.IsZero() != s.DrainAt.IsZero() || !s.EndsAt.IsZero() && s.DrainAt.After(s.EndsAt) {
		return s, errors.New("statement: drain-at must come with ends-at, and not after it")
	}
	d, err := hex.DecodeString(vals[6])
	if err != nil || len(d) != 32 || strings.ToLower(vals[6]) != vals[6] {
		return s, errors.New("statement: policy-sha256: want 64 lower-case hex digits")
	}
	copy(s.PolicyDigest[:], d)
	sig, err := base64.StdEncoding.DecodeString(vals[7])
	if err != nil || len(sig) != ed25519.SignatureSize {
		return s, errors.New("statement: signature: want 64 bytes in base64")
	}
	pub, err := OnionKey(s.Box.Onion)
	if err != nil {
		return s, err
	}
	body := text[:len(text)-len(lines[7])-1]
	if !ed25519.Verify(pub, []byte(SignaturePrefix+body), sig) {
		return s, ErrBadSignature
	}
	return s, nil
}

// MaxPolicyJSON bounds the policy document a digest is taken of.
const MaxPolicyJSON = 256 << 10

// PolicyDigest is SHA-256 of a policy as served (JSON), without what
// changes from moment to moment ("free") or is the statement's own
// ("box"): the other members, as served, with the keys sorted and the
// white space removed. Members a newer bentod adds are covered as they
// are, so clients of any version agree on the digest.
func PolicyDigest(served []byte) ([32]byte, error) {
	if len(served) > MaxPolicyJSON {
		return [32]byte{}, fmt.Errorf("policy of %d bytes: at most %d", len(served), MaxPolicyJSON)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(served, &m); err != nil {
		return [32]byte{}, fmt.Errorf("policy: %w", err)
	}
	delete(m, "free")
	delete(m, "box")
	b, err := json.Marshal(m) // sorted keys; each member compacted
	if err != nil {
		return [32]byte{}, err
	}
	return sha256.Sum256(b), nil
}

// PublicDigest is PolicyDigest of the policy as bentod serves it.
func PublicDigest(pub *policy.Public) [32]byte {
	b, _ := json.Marshal(pub)
	d, _ := PolicyDigest(b)
	return d
}

// Equal reports whether two statements say the same.
func (s Statement) Equal(o Statement) bool {
	return s.Relay == o.Relay && s.Box == o.Box && s.Published.Equal(o.Published) && s.EndsAt.Equal(o.EndsAt) &&
		s.DrainAt.Equal(o.DrainAt) && bytes.Equal(s.PolicyDigest[:], o.PolicyDigest[:])
}
