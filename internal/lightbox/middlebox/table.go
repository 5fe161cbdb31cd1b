package middlebox

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"time"

	"github.com/torbento/bento/internal/lightbox/flowstate"
)

// StateTable holds fixed-size per-flow states. *flowstate.Manager is one.
type StateTable interface {
	// Lookup returns flow k's state, valid until the next call; created is
	// true for a new (zeroed) state.
	Lookup(k flowstate.Key, now time.Time) (state []byte, created bool, err error)
	Remove(k flowstate.Key) bool
	Len() int
}

var _ StateTable = (*flowstate.Manager)(nil)

// classifier is a StateTable that keeps flows of different classes for
// different idle times (*flowstate.Manager).
type classifier interface {
	SetClass(k flowstate.Key, c flowstate.Class) bool
}

var _ classifier = (*flowstate.Manager)(nil)

// bounded is a StateTable with a bound on its flows (*flowstate.Manager):
// when it is full, a packet that may not open a flow is checked against
// it without a lookup that would make room for it.
type bounded interface {
	Full() bool
	Has(k flowstate.Key) bool
}

var _ bounded = (*flowstate.Manager)(nil)

// setClass tells t, if it keeps classes apart, that flow k moved between
// a live TCP connection (established: kept for hours, as hosts keep it)
// and anything else (kept for the short idle timeout).
func setClass(t StateTable, k flowstate.Key, established bool) {
	if c, ok := t.(classifier); ok {
		cl := flowstate.ClassDefault
		if established {
			cl = flowstate.ClassEstablished
		}
		c.SetClass(k, cl)
	}
}

// MapTable is the baseline: every state in an ordinary map, unsealed, in
// unbounded trusted memory.
type MapTable struct {
	size int
	m    map[flowstate.Key][]byte
}

// NewMapTable returns an empty MapTable of states of size bytes.
func NewMapTable(size int) *MapTable { return &MapTable{size: size, m: map[flowstate.Key][]byte{}} }

// Lookup implements StateTable.
func (t *MapTable) Lookup(k flowstate.Key, _ time.Time) ([]byte, bool, error) {
	if s, ok := t.m[k]; ok {
		return s, false, nil
	}
	s := make([]byte, t.size)
	t.m[k] = s
	return s, true, nil
}

// Remove implements StateTable.
func (t *MapTable) Remove(k flowstate.Key) bool {
	_, ok := t.m[k]
	delete(t.m, k)
	return ok
}

// Len implements StateTable.
func (t *MapTable) Len() int { return len(t.m) }

// Strawman seals every state and opens and re-seals it at every access:
// protection without a trusted cache. A state handed out is sealed back at
// the next call.
type Strawman struct {
	size    int
	m       map[flowstate.Key][]byte
	aead    cipher.AEAD
	ctr     uint64
	nonce   [12]byte
	open    []byte
	openKey flowstate.Key
	dirty   bool
}

// NewStrawman returns an empty Strawman of states of size bytes.
func NewStrawman(size int) *Strawman {
	blk, _ := aes.NewCipher(make([]byte, 32))
	g, _ := cipher.NewGCM(blk)
	return &Strawman{size: size, m: map[flowstate.Key][]byte{}, aead: g, open: make([]byte, size)}
}

func (t *Strawman) flush() {
	if !t.dirty {
		return
	}
	t.dirty = false
	t.ctr++
	binary.BigEndian.PutUint64(t.nonce[4:], t.ctr)
	k := t.openKey
	blob := append(t.m[k][:0], t.nonce[:]...)
	t.m[k] = t.aead.Seal(blob, t.nonce[:], t.open, k[:])
}

// Lookup implements StateTable.
func (t *Strawman) Lookup(k flowstate.Key, _ time.Time) ([]byte, bool, error) {
	t.flush()
	t.openKey, t.dirty = k, true
	blob, ok := t.m[k]
	if !ok {
		clear(t.open)
		t.m[k] = nil
		return t.open, true, nil
	}
	if _, err := t.aead.Open(t.open[:0], blob[:12], blob[12:], k[:]); err != nil {
		return nil, false, flowstate.ErrFreshness
	}
	return t.open, false, nil
}

// Remove implements StateTable.
func (t *Strawman) Remove(k flowstate.Key) bool {
	if t.dirty && t.openKey == k {
		t.dirty = false
	}
	_, ok := t.m[k]
	delete(t.m, k)
	return ok
}

// Len implements StateTable.
func (t *Strawman) Len() int { return len(t.m) }
