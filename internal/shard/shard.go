// Package shard spreads a file over n Dropbox instances so that any k of
// them rebuild it and no one of them learns anything about it (seed 000's
// Shard). The file is encrypted first, with AES-256-GCM under a fresh
// random key, and the ciphertext is cut with a Reed-Solomon erasure code
// (github.com/klauspost/reedsolomon) into k data shares and n-k parity
// shares. The key, the code's parameters and each share's SHA-256 go into
// a manifest the user keeps; the shares go to the boxes.
//
// Encrypting before sharding is what makes a share meaningless alone: the
// code is systematic, so its k data shares are plain slices of what is
// coded, and coding the plaintext would hand each of k boxes a readable
// k-th of the file. Coded ciphertext gives every box only ciphertext (or a
// linear combination of it), useless without the key, which never leaves
// the user's machine. Each share is checked against its hash before use,
// so a box that returns other bytes is treated as a missing share, and
// the AEAD's tag checks the rebuilt whole.
//
// The package holds no network code: cmd/bento's shard command places
// and fetches the shares (docs/ARCHITECTURE.md, "Shard").
package shard

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/klauspost/reedsolomon"
)

// Limits of a manifest, checked by Split and Parse.
const (
	Version     = 1
	MaxShares   = 32      // n at most
	MaxSize     = 1 << 30 // a file of at most 1 GiB (it is held in memory)
	MaxStored   = 2 << 30 // n shares together at most 2 GiB (get may hold them all)
	MaxManifest = 64 << 10
	Cipher      = "aes-256-gcm"

	keySize   = 32
	nonceSize = 12
	tagSize   = 16
	maxField  = 512 // a server address, a token, a name
)

// Manifest is what rebuilds a file from its shares: keep it secret (it
// holds the key and the tokens).
type Manifest struct {
	Version   int     `json:"version"`
	Name      string  `json:"name,omitempty"` // the file's base name, for the user
	Size      int64   `json:"size"`           // the file's bytes
	N         int     `json:"n"`              // shares placed
	K         int     `json:"k"`              // shares needed
	Cipher    string  `json:"cipher"`
	Key       []byte  `json:"key"`
	Nonce     []byte  `json:"nonce"`
	ShareSize int64   `json:"share_size"`
	Shares    []Share `json:"shares"`
}

// Share is one share's place: the box, its Dropbox instance's tokens,
// and the SHA-256 of the bytes it holds.
type Share struct {
	Index           int    `json:"index"`
	Server          string `json:"server"`
	Instance        string `json:"instance,omitempty"`
	InvocationToken string `json:"invocation_token"`
	ShutdownToken   string `json:"shutdown_token"`
	SHA256          string `json:"sha256"`
}

// shareSize is the size of each share of a file of size bytes cut into k.
func shareSize(size int64, k int) int64 {
	return (size + tagSize + int64(k) - 1) / int64(k)
}

// Plan checks n, k and a file's size against the limits, before any of
// the file is read, and returns the size of each of its shares.
func Plan(size int64, n, k int) (int64, error) {
	if err := checkParams(n, k, size); err != nil {
		return 0, err
	}
	return shareSize(size, k), nil
}

// checkParams checks n, k and size against the limits: the shares
// together too, since a get may hold all n at once (a manifest from
// someone else must not make bento ask for more memory than that).
func checkParams(n, k int, size int64) error {
	if n < 2 || n > MaxShares {
		return fmt.Errorf("n = %d: want from 2 to %d shares", n, MaxShares)
	}
	if k < 1 || k > n {
		return fmt.Errorf("k = %d: want from 1 to n = %d", k, n)
	}
	if size < 0 || size > MaxSize {
		return fmt.Errorf("size %d: want at most %d bytes (1 GiB)", size, int64(MaxSize))
	}
	if all := int64(n) * shareSize(size, k); all > MaxStored {
		return fmt.Errorf("n = %d shares of %d bytes are %d bytes together: at most %d (2 GiB); give a larger k or a smaller n", n, shareSize(size, k), all, int64(MaxStored))
	}
	return nil
}

// aad binds the ciphertext to the code's parameters.
func aad(n, k int, size int64) []byte {
	return fmt.Appendf(nil, "bento-shard/%d n=%d k=%d size=%d", Version, n, k, size)
}

// Split encrypts data under a fresh key from rnd (crypto/rand's Reader if
// nil) and cuts the ciphertext into n shares, any k of which rebuild it.
// The manifest's shares have their hashes; the caller fills in where
// each one goes. name is kept as the manifest can hold it (see Name), so
// that no name makes the manifest fail once the shares are placed.
func Split(data []byte, name string, n, k int, rnd io.Reader) (*Manifest, [][]byte, error) {
	if err := checkParams(n, k, int64(len(data))); err != nil {
		return nil, nil, err
	}
	name = Name(name)
	if rnd == nil {
		rnd = rand.Reader
	}
	m := &Manifest{Version: Version, Name: name, Size: int64(len(data)), N: n, K: k, Cipher: Cipher,
		Key: make([]byte, keySize), Nonce: make([]byte, nonceSize)}
	if _, err := io.ReadFull(rnd, m.Key); err != nil {
		return nil, nil, fmt.Errorf("random key: %w", err)
	}
	if _, err := io.ReadFull(rnd, m.Nonce); err != nil {
		return nil, nil, fmt.Errorf("random nonce: %w", err)
	}
	aead, err := newAEAD(m.Key)
	if err != nil {
		return nil, nil, err
	}
	// The data shares are slices of the ciphertext's own buffer (padded
	// with zeros to k whole shares): the file is not held twice more.
	m.ShareSize = shareSize(m.Size, k)
	ct := aead.Seal(make([]byte, 0, int64(k)*m.ShareSize), m.Nonce, data, aad(n, k, m.Size))
	ct = ct[:cap(ct)]
	shares := make([][]byte, n)
	for i := range shares {
		if i < k {
			shares[i] = ct[int64(i)*m.ShareSize : int64(i+1)*m.ShareSize : int64(i+1)*m.ShareSize]
		} else {
			shares[i] = make([]byte, m.ShareSize)
		}
	}
	if n > k {
		enc, err := reedsolomon.New(k, n-k)
		if err != nil {
			return nil, nil, err
		}
		if err := enc.Encode(shares); err != nil {
			return nil, nil, err
		}
	}
	m.Shares = make([]Share, n)
	for i, s := range shares {
		sum := sha256.Sum256(s)
		m.Shares[i] = Share{Index: i, SHA256: hex.EncodeToString(sum[:])}
	}
	return m, shares, nil
}

// Name is a file's name as a manifest keeps it: each character that is
// not printable (or each byte that is not UTF-8) becomes '?', and it is
// cut to at most 512 bytes.
func Name(s string) string {
	s = strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) || r == unicode.ReplacementChar {
			return '?'
		}
		return r
	}, s)
	for len(s) > maxField {
		_, size := utf8.DecodeLastRuneInString(s)
		s = s[:len(s)-size]
	}
	return s
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// Check says whether share i's bytes are the ones placed: its size and
// hash. A nil error means it may be used.
func (m *Manifest) Check(i int, b []byte) error {
	if int64(len(b)) != m.ShareSize {
		return fmt.Errorf("share %d is %d bytes, the manifest says %d", i, len(b), m.ShareSize)
	}
	sum := sha256.Sum256(b)
	if hex.EncodeToString(sum[:]) != m.Shares[i].SHA256 {
		return fmt.Errorf("share %d does not match its SHA-256 in the manifest: the box returned other bytes", i)
	}
	return nil
}

// TooFewError is a rebuild with fewer than k good shares.
type TooFewError struct {
	Good, K, N int
	Bad        map[int]error // why each unusable share was not used
}

func (e *TooFewError) Error() string {
	var why []string
	idx := make([]int, 0, len(e.Bad))
	for i := range e.Bad {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	for _, i := range idx {
		why = append(why, fmt.Sprintf("share %d: %v", i, e.Bad[i]))
	}
	return fmt.Sprintf("only %d of the %d shares are good, and the file needs %d: it cannot be rebuilt (%s)", e.Good, e.N, e.K, strings.Join(why, "; "))
}

// Join rebuilds the file from shares (shares[i] nil where share i is
// missing). Each share is checked against the manifest first; one that
// fails counts as missing. It fails with a *TooFewError when fewer than k
// are good, and when the rebuilt ciphertext does not authenticate (which
// only a wrong manifest can cause, since every share used was checked).
func (m *Manifest) Join(shares [][]byte) ([]byte, error) {
	if len(shares) != m.N {
		return nil, fmt.Errorf("%d shares given, the manifest has %d", len(shares), m.N)
	}
	use := make([][]byte, m.N)
	bad := map[int]error{}
	good := 0
	for i, s := range shares {
		if s == nil {
			bad[i] = errors.New("missing")
			continue
		}
		if err := m.Check(i, s); err != nil {
			bad[i] = err
			continue
		}
		use[i] = s // read, never written: ReconstructData fills in only the missing
		good++
	}
	if good < m.K {
		return nil, &TooFewError{Good: good, K: m.K, N: m.N, Bad: bad}
	}
	if m.N > m.K {
		enc, err := reedsolomon.New(m.K, m.N-m.K)
		if err != nil {
			return nil, err
		}
		if err := enc.ReconstructData(use); err != nil {
			return nil, fmt.Errorf("rebuilding the data shares: %w", err)
		}
	}
	ct := make([]byte, 0, int64(m.K)*m.ShareSize)
	for _, s := range use[:m.K] {
		ct = append(ct, s...)
	}
	ct = ct[:m.Size+tagSize]
	aead, err := newAEAD(m.Key)
	if err != nil {
		return nil, err
	}
	// Opened in place: a 1 GiB file is not held twice more.
	out, err := aead.Open(ct[:0], m.Nonce, ct, aad(m.N, m.K, m.Size))
	if err != nil {
		return nil, errors.New("the rebuilt file does not authenticate: the manifest's key, nonce or sizes are not the ones it was made with")
	}
	return out, nil
}

// Marshal checks m and returns it as indented JSON.
func (m *Manifest) Marshal() ([]byte, error) {
	if err := m.validate(); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Parse reads a manifest strictly: one JSON object of at most MaxManifest
// bytes, no field it does not know, every bound checked.
func Parse(b []byte) (*Manifest, error) {
	if len(b) > MaxManifest {
		return nil, fmt.Errorf("%d bytes: a shard manifest is at most %d", len(b), MaxManifest)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("not a shard manifest: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("not a shard manifest: something follows its JSON object")
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("not a shard manifest: %v", err)
	}
	return &m, nil
}

// validate checks every field of a complete manifest.
func (m *Manifest) validate() error {
	if m.Version != Version {
		return fmt.Errorf("version %d: this bento reads shard manifests of version %d", m.Version, Version)
	}
	if err := checkParams(m.N, m.K, m.Size); err != nil {
		return err
	}
	if err := text("name", m.Name, true); err != nil {
		return err
	}
	if m.Cipher != Cipher {
		return fmt.Errorf("cipher %q: want %q", m.Cipher, Cipher)
	}
	if len(m.Key) != keySize || len(m.Nonce) != nonceSize {
		return fmt.Errorf("key of %d bytes and nonce of %d: want %d and %d", len(m.Key), len(m.Nonce), keySize, nonceSize)
	}
	if want := shareSize(m.Size, m.K); m.ShareSize != want {
		return fmt.Errorf("share_size %d: a file of %d bytes in %d data shares has shares of %d", m.ShareSize, m.Size, m.K, want)
	}
	if len(m.Shares) != m.N {
		return fmt.Errorf("%d shares listed, n = %d", len(m.Shares), m.N)
	}
	servers := map[string]int{}
	for i, s := range m.Shares {
		if s.Index != i {
			return fmt.Errorf("share %d has index %d", i, s.Index)
		}
		if err := s.Valid(i); err != nil {
			return err
		}
		key := BoxKey(s.Server)
		if j, dup := servers[key]; dup {
			return fmt.Errorf("shares %d and %d are on the same box %s: each share must be on a box of its own", j, i, s.Server)
		}
		servers[key] = i
	}
	return nil
}

// Valid checks share i's fields: where it is (the server, its Dropbox's
// instance and tokens, as a box answered its deploy) and its hash. The
// CLI checks each box's answer with it as it comes, so that one box's
// malformed answer fails its own share, not the whole manifest once
// every share is placed.
func (s Share) Valid(i int) error {
	if err := token(i, "server", s.Server, ""); err != nil {
		return err
	}
	if err := text(fmt.Sprintf("share %d: instance", i), s.Instance, true); err != nil {
		return err
	}
	if err := token(i, "invocation_token", s.InvocationToken, "bento-inv-"); err != nil {
		return err
	}
	if err := token(i, "shutdown_token", s.ShutdownToken, "bento-sd-"); err != nil {
		return err
	}
	if h, err := hex.DecodeString(s.SHA256); err != nil || len(h) != sha256.Size || s.SHA256 != strings.ToLower(s.SHA256) {
		return fmt.Errorf("share %d: sha256 %q: want 64 lowercase hex digits", i, s.SHA256)
	}
	return nil
}

// BoxKey is what tells two boxes apart in a server as bento takes it
// (HOST:PORT, or HOST:PORT#sha256:… with a pin): its address, in lower
// case, without the pin, so that one box named twice, once with its pin,
// is still one box.
func BoxKey(server string) string {
	addr, _, _ := strings.Cut(server, "#")
	return strings.ToLower(addr)
}

// text checks a short field of printable characters.
func text(what, s string, empty bool) error {
	if s == "" && !empty {
		return fmt.Errorf("%s is empty", what)
	}
	if len(s) > maxField {
		return fmt.Errorf("%s is %d bytes: at most %d", what, len(s), maxField)
	}
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) || r == unicode.ReplacementChar }) >= 0 {
		return fmt.Errorf("%s %q has characters that are not printable", what, s)
	}
	return nil
}

func token(i int, what, s, prefix string) error {
	if !strings.HasPrefix(s, prefix) || len(s) == len(prefix) || len(s) > maxField || strings.IndexFunc(s, func(r rune) bool { return r <= ' ' || r > '~' }) >= 0 {
		if prefix == "" {
			return fmt.Errorf("share %d: %s %q: want HOST:PORT, printable and without spaces", i, what, s)
		}
		return fmt.Errorf("share %d: %s: want a token %s…", i, what, prefix)
	}
	return nil
}
