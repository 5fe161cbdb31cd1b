// Package kvstore keeps one instance's stored data (the storage.* host
// calls) in a single append-only file with an index in memory.
//
// Every put and delete is one record
//
//	u32 CRC-32C of the rest | u8 op | u16 key length | u32 value length | key | value
//
// written with one write(2), so a crash (kill -9 at any moment) leaves every
// key with its old or its new value: a torn record at the end fails its
// checksum and is cut off when the file is opened again. When dead records
// outweigh live ones the file is rewritten (to a temporary file, synced,
// then renamed over the old one), so the file stays within about twice the
// live data.
//
// What a store may hold is charged, not just counted in value bytes: each
// key costs its length, its value's length and Overhead (the record header
// and the index entry), so many tiny keys cannot hold more of the disk or of
// bentod's memory than the limit says, and MaxKeys bounds the index.
//
// A sealed store (Options.Seal, FS Protect) writes no key and no value in
// the clear. Each put is one record
//
//	u32 length of the sealed value | sealed value (nonce, ciphertext, tag)
//
// whose associated data binds it to the file (a random id, new at each
// compaction), its offset and its key, so that a record moved, swapped
// with another key's or copied from another file fails to open. Keys live
// only in the index in memory, and deletes write nothing: a sealed store
// is never read back from disk after it is closed (its key is gone), so
// Open starts it empty.
package kvstore

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/torbento/bento/internal/fsprotect"
)

// Overhead is charged for every key on top of its key and value bytes: the
// record header on disk and the index entry in memory.
const Overhead = 64

// MaxKeyLen bounds a key.
const MaxKeyLen = 256

// maxValue is the largest value a record may claim when the file is read
// (the limit itself may have changed since it was written).
const maxValue = 1 << 30

const (
	opPut    = 1
	opDelete = 2
	hdrLen   = 4 + 1 + 2 + 4
)

var table = crc32.MakeTable(crc32.Castagnoli)

// Errors of the store. Messages name no paths: they reach functions.
var (
	ErrFull    = errors.New("storage limit exceeded")
	ErrTooMany = errors.New("too many keys")
	ErrKey     = fmt.Errorf("key must be 1-%d bytes", MaxKeyLen)
	ErrClosed  = errors.New("storage is closed")
)

// Options bound a store.
type Options struct {
	MaxBytes int64 // charged bytes: keys, values and Overhead per key
	MaxKeys  int   // keys at once (0: MaxBytes/Overhead)
	Sync     bool  // fdatasync after every change (power-loss durability)
	// Seal, when set, seals every value (FS Protect): the store starts
	// empty and nothing in its file is readable without the key.
	Seal fsprotect.Sealer
}

// Store is one instance's key/value data.
type Store struct {
	path string
	opt  Options

	mu      sync.Mutex
	f       *os.File
	size    int64 // file size
	live    int64 // bytes of live records in the file
	charged int64 // what the live keys are charged
	index   map[string]entry
	closed  bool
	fileID  []byte // a sealed store's file, in its records' associated data
}

type entry struct {
	off  int64 // of the value (of the record, when sealed)
	vlen uint32
}

func recordLen(klen, vlen int) int64 { return int64(hdrLen + klen + vlen) }

// sealedHdr is a sealed record's header: the sealed value's length.
const sealedHdr = 4

// recLen is the length in the file of a record of key and value lengths.
func (s *Store) recLen(klen, vlen int) int64 {
	if s.opt.Seal != nil {
		return int64(sealedHdr + vlen + fsprotect.Overhead)
	}
	return recordLen(klen, vlen)
}

func charge(klen, vlen int) int64 { return int64(klen+vlen) + Overhead }

// Open opens (or creates) the store at path, cutting off a torn record at
// its end. A leftover temporary file of an interrupted compaction is
// removed: the old file is still whole.
func Open(path string, opt Options) (*Store, error) {
	if opt.MaxKeys == 0 {
		opt.MaxKeys = int(max(1, opt.MaxBytes/Overhead))
	}
	_ = os.Remove(path + ".tmp")
	flag := os.O_CREATE | os.O_RDWR
	if opt.Seal != nil {
		// What an earlier key sealed can never be read: it goes.
		flag |= os.O_TRUNC
	}
	f, err := os.OpenFile(path, flag, 0o600)
	if err != nil {
		return nil, err
	}
	s := &Store{path: path, opt: opt, f: f, index: map[string]entry{}}
	if opt.Seal != nil {
		s.fileID = newFileID()
		return s, nil
	}
	if err := s.load(); err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

// load reads every whole record and truncates what follows the last.
func (s *Store) load() error {
	st, err := s.f.Stat()
	if err != nil {
		return err
	}
	fileSize := st.Size()
	r := bufio.NewReaderSize(io.NewSectionReader(s.f, 0, fileSize), 64<<10)
	var off int64
	var hdr [hdrLen]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			break
		}
		op, klen, vlen := hdr[4], int(binary.BigEndian.Uint16(hdr[5:])), int(binary.BigEndian.Uint32(hdr[7:]))
		if (op != opPut && op != opDelete) || klen == 0 || klen > MaxKeyLen || vlen > maxValue || (op == opDelete && vlen != 0) ||
			off+recordLen(klen, vlen) > fileSize {
			break // damaged, or torn: nothing allocated for what is not there
		}
		body := make([]byte, klen+vlen)
		if _, err := io.ReadFull(r, body); err != nil {
			break
		}
		c := crc32.Update(crc32.Checksum(hdr[4:], table), table, body)
		if c != binary.BigEndian.Uint32(hdr[:4]) {
			break
		}
		key := string(body[:klen])
		s.drop(key)
		if op == opPut {
			s.index[key] = entry{off: off + hdrLen + int64(klen), vlen: uint32(vlen)}
			s.live += recordLen(klen, vlen)
			s.charged += charge(klen, vlen)
		}
		off += recordLen(klen, vlen)
	}
	if fileSize != off {
		// A torn or damaged tail: what follows the last whole record.
		if err := s.f.Truncate(off); err != nil {
			return err
		}
	}
	s.size = off
	return nil
}

// newFileID returns a random id for a sealed file.
func newFileID() []byte {
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	return id
}

// sealAD is the associated data of a sealed record: the file, the
// record's offset in it, and its key.
func sealAD(fileID []byte, off int64, key string) []byte {
	return fsprotect.AD([]byte("bento kvstore v1"), fileID, fsprotect.U64(off), []byte(key))
}

// sealedRecord returns the record of key and value sealed for offset off
// of the file fileID.
func (s *Store) sealedRecord(fileID []byte, off int64, key string, value []byte) ([]byte, error) {
	sealed, err := s.opt.Seal.Seal(value, sealAD(fileID, off, key))
	if err != nil {
		return nil, err
	}
	rec := make([]byte, sealedHdr, sealedHdr+len(sealed))
	binary.BigEndian.PutUint32(rec, uint32(len(sealed)))
	return append(rec, sealed...), nil
}

// openSealed reads and opens key's sealed record e from r: what the
// index says must be what the file holds, and the record must open with
// key at its place in the file, or it was tampered with.
func (s *Store) openSealed(r io.ReaderAt, fileID []byte, key string, e entry) ([]byte, error) {
	rec := make([]byte, s.recLen(len(key), int(e.vlen)))
	if _, err := r.ReadAt(rec, e.off); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fsprotect.ErrTampered // cut short on disk
		}
		return nil, err
	}
	if int(binary.BigEndian.Uint32(rec)) != len(rec)-sealedHdr {
		return nil, fsprotect.ErrTampered
	}
	return s.opt.Seal.Open(rec[sealedHdr:], sealAD(fileID, e.off, key))
}

// drop forgets key's live record, if any.
func (s *Store) drop(key string) {
	if e, ok := s.index[key]; ok {
		s.live -= s.recLen(len(key), int(e.vlen))
		s.charged -= charge(len(key), int(e.vlen))
		delete(s.index, key)
	}
}

// SetMaxBytes changes the store's bound (its keys' bound with it, when
// that was derived from it) for the changes that follow; what is stored
// stays, even beyond a smaller bound.
func (s *Store) SetMaxBytes(n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.opt.MaxKeys == int(max(1, s.opt.MaxBytes/Overhead)) {
		s.opt.MaxKeys = int(max(1, n/Overhead))
	}
	s.opt.MaxBytes = n
}

// Charged returns what the live keys are charged against MaxBytes.
func (s *Store) Charged() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.charged
}

// Len returns the number of keys.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.index)
}

// FileSize returns the size of the file on disk.
func (s *Store) FileSize() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.size
}

func checkKey(key string) error {
	if len(key) == 0 || len(key) > MaxKeyLen {
		return ErrKey
	}
	return nil
}

// Put stores value under key, or fails with ErrFull or ErrTooMany and
// changes nothing.
func (s *Store) Put(key string, value []byte) error {
	if err := checkKey(key); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	old, exists := s.index[key]
	after := s.charged + charge(len(key), len(value))
	if exists {
		after -= charge(len(key), int(old.vlen))
	} else if len(s.index) >= s.opt.MaxKeys {
		return ErrTooMany
	}
	if after > s.opt.MaxBytes {
		return ErrFull
	}
	start, err := s.append(opPut, key, value)
	if err != nil {
		return err
	}
	s.drop(key)
	off := start + hdrLen + int64(len(key))
	if s.opt.Seal != nil {
		off = start
	}
	s.index[key] = entry{off: off, vlen: uint32(len(value))}
	s.live += s.recLen(len(key), len(value))
	s.charged += charge(len(key), len(value))
	// The value is stored: a compaction that fails now is tried again at
	// the next change (the file stays valid either way).
	_ = s.maybeCompact()
	return nil
}

// Delete removes key (a missing key is not an error).
func (s *Store) Delete(key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if _, ok := s.index[key]; !ok {
		return nil
	}
	// A sealed store is never read back: its deletes need no record.
	if s.opt.Seal == nil {
		if _, err := s.append(opDelete, key, nil); err != nil {
			return err
		}
	}
	s.drop(key)
	_ = s.maybeCompact()
	return nil
}

// append writes one record at the end of the file and returns where it
// starts.
func (s *Store) append(op byte, key string, value []byte) (int64, error) {
	var rec []byte
	if s.opt.Seal != nil {
		var err error
		if rec, err = s.sealedRecord(s.fileID, s.size, key, value); err != nil {
			return 0, err
		}
	} else {
		rec = plainRecord(op, key, value)
	}
	if _, err := s.f.WriteAt(rec, s.size); err != nil {
		// Whatever part reached the file fails its checksum at the next
		// open; cut it now so later records follow a whole one.
		_ = s.f.Truncate(s.size)
		return 0, err
	}
	if s.opt.Sync {
		if err := s.f.Sync(); err != nil {
			return 0, err
		}
	}
	start := s.size
	s.size += int64(len(rec))
	return start, nil
}

// plainRecord returns the record of an unsealed store.
func plainRecord(op byte, key string, value []byte) []byte {
	rec := make([]byte, hdrLen, recordLen(len(key), len(value)))
	rec[4] = op
	binary.BigEndian.PutUint16(rec[5:], uint16(len(key)))
	binary.BigEndian.PutUint32(rec[7:], uint32(len(value)))
	rec = append(append(rec, key...), value...)
	binary.BigEndian.PutUint32(rec[:4], crc32.Checksum(rec[4:], table))
	return rec
}

// maybeCompact rewrites the file when dead records outweigh live ones.
func (s *Store) maybeCompact() error {
	if s.size-s.live <= max(s.live, 64<<10) {
		return nil
	}
	return s.compact()
}

func (s *Store) compact() error {
	tmp := s.path + ".tmp"
	nf, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		nf.Close()
		os.Remove(tmp)
		return err
	}
	keys := make([]string, 0, len(s.index))
	for k := range s.index {
		keys = append(keys, k)
	}
	sort.Strings(keys) // deterministic files
	w := bufio.NewWriterSize(nf, 64<<10)
	index := make(map[string]entry, len(s.index))
	var off int64
	var fileID []byte
	if s.opt.Seal != nil {
		fileID = newFileID() // records of the old file cannot be copied in
	}
	for _, k := range keys {
		e := s.index[k]
		var rec []byte
		if s.opt.Seal != nil {
			v, err := s.openSealed(s.f, s.fileID, k, e)
			if err != nil {
				return fail(err)
			}
			if rec, err = s.sealedRecord(fileID, off, k, v); err != nil {
				return fail(err)
			}
			index[k] = entry{off: off, vlen: e.vlen}
		} else {
			v := make([]byte, e.vlen)
			if _, err := s.f.ReadAt(v, e.off); err != nil {
				return fail(err)
			}
			rec = plainRecord(opPut, k, v)
			index[k] = entry{off: off + hdrLen + int64(len(k)), vlen: e.vlen}
		}
		if _, err := w.Write(rec); err != nil {
			return fail(err)
		}
		off += int64(len(rec))
	}
	if err := w.Flush(); err != nil {
		return fail(err)
	}
	if err := nf.Sync(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fail(err)
	}
	if d, err := os.Open(filepath.Dir(s.path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	s.f.Close()
	s.f, s.index, s.size, s.live, s.fileID = nf, index, off, off, fileID
	return nil
}

// Get returns key's value and whether it exists.
func (s *Store) Get(key string) ([]byte, bool, error) {
	if err := checkKey(key); err != nil {
		return nil, false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, false, ErrClosed
	}
	e, ok := s.index[key]
	if !ok {
		return nil, false, nil
	}
	if s.opt.Seal != nil {
		v, err := s.openSealed(s.f, s.fileID, key, e)
		if err != nil {
			return nil, false, err
		}
		return v, true, nil
	}
	v := make([]byte, e.vlen)
	if _, err := s.f.ReadAt(v, e.off); err != nil {
		return nil, false, err
	}
	return v, true, nil
}

// Size returns the length of key's value, and whether it exists.
func (s *Store) Size(key string) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.index[key]
	return int(e.vlen), ok
}

// Keys returns every key, sorted.
func (s *Store) Keys() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]string, 0, len(s.index))
	for k := range s.index {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Close closes the file; the data stays.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return s.f.Close()
}
