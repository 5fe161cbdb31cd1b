package etap

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Role is the end of the channel.
type Role uint8

// Roles.
const (
	Gateway   Role = 1
	Middlebox Role = 2
)

func (r Role) String() string {
	if r == Gateway {
		return "gateway"
	}
	return "middlebox"
}

// Config fixes the channel's parameters. The gateway's RecordSize and
// RekeyRecords are the channel's; the middlebox accepts them within
// bounds.
type Config struct {
	PSK          []byte // pre-shared key, at least 16 bytes
	RecordSize   int    // plaintext bytes per record (default 16384)
	RekeyRecords uint64 // records per key epoch (default 1<<24)
	// LinkType is the link type (LINKTYPE_*) of the gateway's packets,
	// which the gateway tells the middlebox so that it decodes them
	// right; 0 says nothing. The middlebox's is ignored.
	LinkType uint16
}

// Bounds of RecordSize.
const (
	MinRecordSize     = 512
	MaxRecordSize     = 1 << 20
	DefaultRecordSize = 16 << 10
	TagSize           = 16
)

func (c *Config) withDefaults() (Config, error) {
	cc := *c
	if len(cc.PSK) < 16 {
		return cc, errors.New("etap: the pre-shared key must be at least 16 bytes")
	}
	if cc.RecordSize == 0 {
		cc.RecordSize = DefaultRecordSize
	}
	if cc.RecordSize < MinRecordSize || cc.RecordSize > MaxRecordSize {
		return cc, fmt.Errorf("etap: record size %d outside %d-%d", cc.RecordSize, MinRecordSize, MaxRecordSize)
	}
	if cc.RekeyRecords == 0 {
		cc.RekeyRecords = 1 << 24
	}
	return cc, nil
}

// The hello's version is the magic's digit: version 2 added the link type.
const (
	helloMagic = "ETAP2\x00"
	helloSize  = 6 + 1 + 4 + 8 + 2 + 32 + 32
)

type hello struct {
	role   Role
	size   uint32
	rekey  uint64
	link   uint16
	pub    [32]byte
	random [32]byte
}

func (h *hello) encode() []byte {
	b := make([]byte, 0, helloSize)
	b = append(b, helloMagic...)
	b = append(b, byte(h.role))
	b = binary.BigEndian.AppendUint32(b, h.size)
	b = binary.BigEndian.AppendUint64(b, h.rekey)
	b = binary.BigEndian.AppendUint16(b, h.link)
	b = append(b, h.pub[:]...)
	return append(b, h.random[:]...)
}

func decodeHello(b []byte) (*hello, error) {
	if len(b) != helloSize || string(b[:4]) != helloMagic[:4] {
		return nil, errors.New("etap: peer did not send an etap hello")
	}
	if string(b[:6]) != helloMagic {
		return nil, versionError(b)
	}
	h := &hello{role: Role(b[6]), size: binary.BigEndian.Uint32(b[7:]), rekey: binary.BigEndian.Uint64(b[11:]), link: binary.BigEndian.Uint16(b[19:])}
	copy(h.pub[:], b[21:53])
	copy(h.random[:], b[53:85])
	return h, nil
}

// versionError says that hello b is another version's.
func versionError(b []byte) error {
	return fmt.Errorf("etap: peer speaks etap version %q, this end %q: run the same release of lightbox on both ends", b[4:5], helloMagic[4:5])
}

// keys are one direction's key schedule.
type keys struct {
	dir   byte // 1: gateway→middlebox, 2: middlebox→gateway
	base  []byte
	rekey uint64

	epoch uint64
	aead  cipher.AEAD
}

func newKeys(dir byte, base []byte, rekey uint64) *keys {
	k := &keys{dir: dir, base: base, rekey: rekey}
	k.aead = mustGCM(base)
	return k
}

// forEpoch returns the AEAD of epoch e, ratcheting forward from the
// current one (never back: old keys are gone).
func (k *keys) forEpoch(e uint64) (cipher.AEAD, error) {
	if e < k.epoch {
		return nil, fmt.Errorf("key epoch %d is gone", e)
	}
	for k.epoch < e {
		next, err := hkdf.Expand(sha256.New, k.base, "etap rekey", 32)
		if err != nil {
			return nil, err
		}
		k.base = next
		k.epoch++
		k.aead = mustGCM(next)
	}
	return k.aead, nil
}

func mustGCM(key []byte) cipher.AEAD {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic(err)
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		panic(err)
	}
	return g
}

// handshake runs the key exchange on rw and returns the sending and
// receiving key schedules and the agreed configuration.
func handshake(rw io.ReadWriter, role Role, cfg Config) (send, recv *keys, agreed Config, err error) {
	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, cfg, err
	}
	mine := &hello{role: role, size: uint32(cfg.RecordSize), rekey: cfg.RekeyRecords}
	if role == Gateway {
		mine.link = cfg.LinkType
	}
	copy(mine.pub[:], priv.PublicKey().Bytes())
	if _, err := rand.Read(mine.random[:]); err != nil {
		return nil, nil, cfg, err
	}
	buf := make([]byte, helloSize)
	if err := exchange(rw, mine.encode(), buf); err != nil {
		if string(buf[:4]) == helloMagic[:4] && buf[4] != helloMagic[4] {
			// A peer of another version sent a hello of another size,
			// then gave up on ours: say so, not "unexpected EOF".
			return nil, nil, cfg, versionError(buf)
		}
		return nil, nil, cfg, fmt.Errorf("etap: hello: %w", err)
	}
	peer, err := decodeHello(buf)
	if err != nil {
		return nil, nil, cfg, err
	}
	if peer.role == role || (peer.role != Gateway && peer.role != Middlebox) {
		return nil, nil, cfg, fmt.Errorf("etap: peer claims role %d; a channel joins a gateway and a middlebox", peer.role)
	}
	g, m := mine, peer
	if role == Middlebox {
		g, m = peer, mine
	}
	agreed = cfg
	agreed.RecordSize, agreed.RekeyRecords, agreed.LinkType = int(g.size), g.rekey, g.link
	if agreed.RecordSize < MinRecordSize || agreed.RecordSize > MaxRecordSize || agreed.RekeyRecords == 0 {
		return nil, nil, cfg, fmt.Errorf("etap: gateway proposed record size %d, rekey %d: out of bounds", g.size, g.rekey)
	}
	peerPub, err := ecdh.X25519().NewPublicKey(peer.pub[:])
	if err != nil {
		return nil, nil, cfg, fmt.Errorf("etap: bad peer key: %w", err)
	}
	shared, err := priv.ECDH(peerPub)
	if err != nil {
		return nil, nil, cfg, fmt.Errorf("etap: key exchange: %w", err)
	}
	transcript := sha256.Sum256(append(g.encode(), m.encode()...))
	prk, err := hkdf.Extract(sha256.New, shared, cfg.PSK)
	if err != nil {
		return nil, nil, cfg, err
	}
	derive := func(label string) []byte {
		k, err := hkdf.Expand(sha256.New, prk, label+string(transcript[:]), 32)
		if err != nil {
			panic(err)
		}
		return k
	}
	g2m, m2g := derive("etap g2m"), derive("etap m2g")
	finG, finM := derive("etap finished gateway"), derive("etap finished middlebox")
	myFin, peerFin := finG, finM
	if role == Middlebox {
		myFin, peerFin = finM, finG
	}
	mac := func(key []byte) []byte {
		h := hmac.New(sha256.New, key)
		h.Write(transcript[:])
		return h.Sum(nil)
	}
	got := make([]byte, sha256.Size)
	if err := exchange(rw, mac(myFin), got); err != nil {
		return nil, nil, cfg, fmt.Errorf("etap: finished: %w", err)
	}
	if !hmac.Equal(got, mac(peerFin)) {
		return nil, nil, cfg, ErrAuthFailed
	}
	if role == Gateway {
		return newKeys(1, g2m, agreed.RekeyRecords), newKeys(2, m2g, agreed.RekeyRecords), agreed, nil
	}
	return newKeys(2, m2g, agreed.RekeyRecords), newKeys(1, g2m, agreed.RekeyRecords), agreed, nil
}

// exchange writes out and reads len(in) bytes at the same time, so that
// two peers writing first cannot deadlock on an unbuffered transport.
func exchange(rw io.ReadWriter, out, in []byte) error {
	werr := make(chan error, 1)
	go func() { _, err := rw.Write(out); werr <- err }()
	_, rerr := io.ReadFull(rw, in)
	if rerr != nil {
		if c, ok := rw.(io.Closer); ok {
			c.Close() // unblock the writer
		}
		<-werr
		return rerr
	}
	return <-werr
}

// ErrAuthFailed means the peer does not hold the pre-shared key.
var ErrAuthFailed = errors.New("etap: handshake failed: the peer does not know the pre-shared key")
