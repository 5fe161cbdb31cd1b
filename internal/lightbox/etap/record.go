package etap

import (
	"encoding/binary"
	"fmt"
)

// Record types.
const (
	recData  = 1 // carries stream bytes (possibly none: padding)
	recClose = 2 // the sender's last record
)

// recordTrailer ends each record's plaintext: the u32 count of stream
// bytes the record carries, then the type byte. A trailer rather than a
// header lets the sender seal in place and the receiver decrypt straight
// into its stream buffer.
const recordTrailer = 5

func nonce(dir byte, seq uint64) []byte {
	n := make([]byte, 12)
	n[0] = dir
	binary.BigEndian.PutUint64(n[4:], seq)
	return n
}

func aad(dir byte, epoch, seq uint64) []byte {
	a := make([]byte, 0, 22)
	a = append(a, "etap1"...)
	a = append(a, dir)
	a = binary.BigEndian.AppendUint64(a, epoch)
	return binary.BigEndian.AppendUint64(a, seq)
}

// seal encrypts a full plaintext record for sequence number seq, appending
// to dst.
func (k *keys) seal(dst, plain []byte, seq uint64) ([]byte, error) {
	epoch := seq / k.rekey
	a, err := k.forEpoch(epoch)
	if err != nil {
		return nil, err
	}
	return a.Seal(dst, nonce(k.dir, seq), plain, aad(k.dir, epoch, seq)), nil
}

// open decrypts record rec expected at seq into dst.
func (k *keys) open(dst, rec []byte, seq uint64) ([]byte, error) {
	epoch := seq / k.rekey
	a, err := k.forEpoch(epoch)
	if err != nil {
		return nil, err
	}
	return a.Open(dst, nonce(k.dir, seq), rec, aad(k.dir, epoch, seq))
}

// probe tries to open rec as some other sequence number near want, to tell
// a replay (an earlier record again) from a gap (records dropped or
// reordered). It uses a copy of the key schedule and may not look back
// across a key epoch, whose keys are gone.
func (k *keys) probe(rec []byte, want uint64, window uint64) (uint64, bool) {
	lo := want - min(want, window)
	if e := want / k.rekey; lo < e*k.rekey {
		lo = e * k.rekey
	}
	for s := lo; s <= want+window; s++ {
		if s == want {
			continue
		}
		c := &keys{dir: k.dir, base: k.base, rekey: k.rekey, epoch: k.epoch, aead: k.aead}
		if _, err := c.open(nil, rec, s); err == nil {
			return s, true
		}
	}
	return 0, false
}

// RecordError reports a record that failed verification, and what the
// receiver could tell about it.
type RecordError struct {
	Seq  uint64 // the sequence number expected
	Kind string // "tampered", "replayed", "reordered or dropped", "truncated"
	Got  uint64 // for replayed and reordered: the sequence number the record really had
}

func (e *RecordError) Error() string {
	switch e.Kind {
	case "replayed":
		return fmt.Sprintf("etap: record %d is a replay of record %d", e.Seq, e.Got)
	case "reordered or dropped":
		return fmt.Sprintf("etap: expected record %d but got record %d: records were reordered or dropped", e.Seq, e.Got)
	case "truncated":
		return fmt.Sprintf("etap: channel truncated before record %d (no authenticated close)", e.Seq)
	}
	return fmt.Sprintf("etap: record %d failed authentication: tampered with", e.Seq)
}
