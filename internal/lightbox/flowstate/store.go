package flowstate

import (
	"errors"
	"fmt"
	"os"
	"runtime"
)

// Store is the untrusted side: it holds sealed state blobs by handle and
// may lose, corrupt, replay or swap them; the manager detects all of that.
// Every blob of one store has the same size. A Manager calls its store
// from one goroutine at a time; a store need not be safe for concurrent
// use.
type Store interface {
	Put(handle uint64, blob []byte) error
	Get(handle uint64, into []byte) ([]byte, error)
	Delete(handle uint64) error
}

// ErrNoBlob is returned by a store that holds nothing under a handle.
var ErrNoBlob = errors.New("flowstate: no blob under this handle")

// MemStore keeps blobs in memory outside the trusted cache (the analogue
// of LightBox's untrusted host memory): fixed-size slots in chunks of
// about 4 MiB (huge pages), handle h in chunk h>>shift. Growing adds a
// chunk and never copies. It is not safe for concurrent use, and takes no
// lock: on x86 a lock is a full memory barrier, which would make the CPU
// wait for every outstanding cache miss at each call and undo the
// manager's prefetching.
type MemStore struct {
	size    int
	shift   uint // log2 of the slots per chunk
	chunks  [][]byte
	present []bool
	mem     *arena
}

// NewMemStore returns an empty MemStore; the blob size is set by the
// first Put.
func NewMemStore() *MemStore {
	s := &MemStore{mem: &arena{}}
	runtime.AddCleanup(s, func(a *arena) { a.free() }, s.mem)
	return s
}

// Close releases the store's memory; it must not be used again.
func (s *MemStore) Close() {
	s.mem.free()
	s.chunks, s.present = nil, nil
}

func (s *MemStore) slot(h uint64) []byte {
	off := int(h&(1<<s.shift-1)) * s.size
	return s.chunks[h>>s.shift][off : off+s.size]
}

// Put stores a copy of blob.
func (s *MemStore) Put(h uint64, blob []byte) error {
	if s.size == 0 {
		s.size = len(blob)
		for s.shift = 10; s.size<<s.shift < hugeMin; s.shift++ {
		}
	}
	if len(blob) != s.size {
		return fmt.Errorf("flowstate: blob of %d bytes in a store of %d-byte slots", len(blob), s.size)
	}
	for int(h) >= len(s.present) {
		s.chunks = append(s.chunks, alloc[byte](s.mem, s.size<<s.shift))
		s.present = append(s.present, make([]bool, 1<<s.shift)...)
	}
	copy(s.slot(h), blob)
	s.present[h] = true
	return nil
}

// Get appends the blob under h to into.
func (s *MemStore) Get(h uint64, into []byte) ([]byte, error) {
	if int(h) >= len(s.present) || !s.present[h] {
		return into, ErrNoBlob
	}
	return append(into, s.slot(h)...), nil
}

// A prefetcher is a store that can start reading a blob ahead of Get.
type prefetcher interface {
	prefetch(h uint64) byte
}

// prefetch reads one byte of every cache line of h's slot.
func (s *MemStore) prefetch(h uint64) byte {
	if int(h) >= len(s.present) {
		return 0
	}
	return touch(s.slot(h))
}

// Delete forgets h.
func (s *MemStore) Delete(h uint64) error {
	if int(h) < len(s.present) {
		s.present[h] = false
	}
	return nil
}

// Raw gives tests the untrusted store's view: the blob under h, which they
// may replace with SetRaw to play an attacker.
func (s *MemStore) Raw(h uint64) []byte {
	b, _ := s.Get(h, nil)
	return b
}

// SetRaw replaces the blob under h.
func (s *MemStore) SetRaw(h uint64, b []byte) { _ = s.Put(h, b) }

// FileStore keeps fixed-size blobs in slots of a file: handle h lives at
// offset h*size.
type FileStore struct {
	f    *os.File
	size int
}

// NewFileStore creates (or truncates) path for blobs of the given size.
func NewFileStore(path string, blobSize int) (*FileStore, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	return &FileStore{f: f, size: blobSize}, nil
}

// Put writes blob into slot h.
func (s *FileStore) Put(h uint64, blob []byte) error {
	if len(blob) != s.size {
		return fmt.Errorf("flowstate: blob of %d bytes in a store of %d-byte slots", len(blob), s.size)
	}
	_, err := s.f.WriteAt(blob, int64(h)*int64(s.size))
	return err
}

// Get reads slot h.
func (s *FileStore) Get(h uint64, into []byte) ([]byte, error) {
	n := len(into)
	into = append(into, make([]byte, s.size)...)
	if _, err := s.f.ReadAt(into[n:], int64(h)*int64(s.size)); err != nil {
		return into[:n], fmt.Errorf("flowstate: reading slot %d: %w", h, err)
	}
	return into, nil
}

// Delete leaves the slot to be overwritten (its handle is reused).
func (s *FileStore) Delete(uint64) error { return nil }

// Close closes the file.
func (s *FileStore) Close() error { return s.f.Close() }
