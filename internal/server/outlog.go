package server

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/torbento/bento/internal/fsprotect"
)

// An output log is a session's output, buffered on disk so that a client
// may disconnect and reattach without losing any. It is a sequence of
// records
//
//	u8 kind | u32 length (big-endian) | data
//
// where kind is recData (bytes the function sent), recNotice (bentod
// telling the client something, JSON) or recExit (the session's end, JSON). Offsets given to clients are record boundaries.
//
// A log holds no file descriptor between appends (a function with many
// sessions cannot make bentod hold many), and keeps a sparse index, the
// first record boundary at or after every markStep bytes, so that checking
// a client's offset reads at most markStep bytes of headers whatever the
// log's size.
//
// The log of a protected instance (FS Protect) holds each record's data
// sealed (nonce, ciphertext, tag; the length is the sealed length), bound
// to the log, the record's offset and its kind: offsets stay record
// boundaries in the file, and a record changed, moved or copied from
// another log fails to open.
const (
	recData   = 1
	recExit   = 2
	recNotice = 3 // a notice from bentod to the client (JSON proto.Notice)

	recHeader = 5

	// recordCharge is what each record costs the instance's output
	// allowance beyond its data: its framing on disk and on the wire.
	recordCharge = 16

	markStep = 64 << 10
)

type outLog struct {
	path string
	seal fsprotect.Sealer // nil: the data is in the clear
	id   string           // the session's id, in sealed records' associated data

	mu        sync.Mutex
	size      int64
	exitAt    int64   // offset of the exit record; -1 until it is written
	exitMem   []byte  // the exit record's data, when the disk refused it
	marks     []int64 // marks[i]: first record boundary >= i*markStep
	discarded string  // the log was removed to make room: why
	notify    chan struct{}
}

// newOutLog creates the log of session id at path; with seal, its
// records' data is sealed.
func newOutLog(path, id string, seal fsprotect.Sealer) (*outLog, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	f.Close()
	return &outLog{path: path, id: id, seal: seal, exitAt: -1, marks: []int64{0}, notify: make(chan struct{})}, nil
}

// charge is what a record of n bytes of data costs the output allowance:
// its data, framing and, sealed, the seal's overhead.
func (l *outLog) charge(n int) int64 {
	if l.seal != nil {
		return int64(n) + recordCharge + fsprotect.Overhead
	}
	return int64(n) + recordCharge
}

// sealAD is the associated data of the sealed record of kind at off.
func (l *outLog) sealAD(off int64, kind byte) []byte {
	return fsprotect.AD([]byte("bento session v1"), []byte(l.id), fsprotect.U64(off), []byte{kind})
}

var errLogClosed = errors.New("session already ended")

// append writes a record. After an exit record nothing more is written.
func (l *outLog) append(kind byte, data []byte) (int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.exitAt >= 0 || l.discarded != "" {
		return l.size, errLogClosed
	}
	plain := data
	if l.seal != nil {
		sealed, err := l.seal.Seal(data, l.sealAD(l.size, kind))
		if err != nil {
			return l.size, l.keepExit(kind, plain, err)
		}
		data = sealed
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY, 0)
	if err != nil {
		return l.size, l.keepExit(kind, plain, err)
	}
	var hdr [recHeader]byte
	hdr[0] = kind
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(data)))
	_, err = f.WriteAt(hdr[:], l.size)
	if err == nil && len(data) > 0 {
		_, err = f.WriteAt(data, l.size+recHeader)
	}
	f.Close()
	if err != nil {
		return l.size, l.keepExit(kind, plain, err)
	}
	start := l.size
	l.size += int64(recHeader + len(data))
	for int64(len(l.marks))*markStep <= l.size {
		l.marks = append(l.marks, l.size)
	}
	if kind == recExit {
		l.exitAt = start
	}
	close(l.notify)
	l.notify = make(chan struct{})
	return l.size, nil
}

// keepExit keeps an exit record the disk refused (out of descriptors, out
// of space) in memory, so the session still ends for its clients: it is
// small, bounded and the last record.
func (l *outLog) keepExit(kind byte, data []byte, err error) error {
	if kind != recExit {
		return err
	}
	l.exitAt, l.exitMem = l.size, append([]byte(nil), data...)
	l.size += int64(recHeader + len(data))
	for int64(len(l.marks))*markStep <= l.size {
		l.marks = append(l.marks, l.size)
	}
	close(l.notify)
	l.notify = make(chan struct{})
	return nil
}

// record reads the record at off: its kind, the length of its data, and
// the data.
func (l *outLog) record(r io.ReaderAt, off int64, readBody bool) (kind byte, n int64, data []byte, err error) {
	l.mu.Lock()
	if l.exitMem != nil && off == l.exitAt {
		data = l.exitMem
		l.mu.Unlock()
		return recExit, int64(len(data)), data, nil
	}
	size := l.size
	l.mu.Unlock()
	kind, n, err = readHeader(r, off)
	if err == nil && off+recHeader+n > size {
		// What the file says is not what was written: the length of a
		// record is never taken beyond the log's end (nor allocated).
		err = errOutLogDamaged
	}
	if err == nil && readBody {
		data, err = readData(r, off, n)
	}
	if err != nil {
		if l.seal != nil && off < size && (errors.Is(err, errOutLogDamaged) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
			// The log was cut or its header changed on disk: every byte
			// below size was written and is still in the file unless
			// somebody changed it (a discarded log stays open for its
			// readers).
			err = fsprotect.ErrTampered
		}
		return kind, n, nil, err
	}
	if !readBody || l.seal == nil {
		return kind, n, data, nil
	}
	data, err = l.seal.Open(data, l.sealAD(off, kind))
	return kind, n, data, err
}

// errOutLogDamaged is a record whose header says it goes beyond the log's
// end.
var errOutLogDamaged = errors.New("the session's output is damaged on the server's disk")

// state returns the current size, the exit record's offset (-1 while the
// session runs), and a channel closed at the next append or discard.
func (l *outLog) state() (size, exitAt int64, discarded string, notify <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.size, l.exitAt, l.discarded, l.notify
}

// reader opens the log for reading.
func (l *outLog) reader() (*os.File, error) { return os.Open(l.path) }

// readHeader reads the header of the record at off.
func readHeader(r io.ReaderAt, off int64) (kind byte, n int64, err error) {
	var hdr [recHeader]byte
	if _, err := r.ReadAt(hdr[:], off); err != nil {
		return 0, 0, err
	}
	return hdr[0], int64(binary.BigEndian.Uint32(hdr[1:])), nil
}

// readData reads n bytes of a record's data at off into a new buffer.
func readData(r io.ReaderAt, off, n int64) ([]byte, error) {
	data := make([]byte, n)
	if n == 0 {
		return data, nil
	}
	if _, err := r.ReadAt(data, off+recHeader); err != nil {
		return nil, err
	}
	return data, nil
}

// validOffset reports whether off is a record boundary, reading at most
// markStep bytes of record headers.
func (l *outLog) validOffset(off int64) error {
	l.mu.Lock()
	size, discarded := l.size, l.discarded
	var start int64
	if off >= 0 && off <= size {
		start = l.marks[off/markStep]
	}
	l.mu.Unlock()
	if discarded != "" {
		return errors.New(discarded)
	}
	if off < 0 || off > size {
		return fmt.Errorf("offset %d is outside the session's output (0-%d)", off, size)
	}
	if off == size {
		return nil
	}
	f, err := l.reader()
	if err != nil {
		return errors.New("the session's output cannot be read now; retry later")
	}
	defer f.Close()
	br := bufio.NewReaderSize(io.NewSectionReader(f, start, size-start), 16<<10)
	pos := start
	var hdr [recHeader]byte
	for pos < off {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return errors.New("the session's output cannot be read now; retry later")
		}
		n := int64(binary.BigEndian.Uint32(hdr[1:]))
		if _, err := br.Discard(int(min(n, off-pos))); err != nil {
			return errors.New("the session's output cannot be read now; retry later")
		}
		pos += recHeader + n
	}
	if pos != off {
		return fmt.Errorf("offset %d is not a record boundary", off)
	}
	return nil
}

// discardedWhy returns why the log was discarded ("" if it was not).
func (l *outLog) discardedWhy() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.discarded
}

// discard removes the log to make room; readers waiting are told why.
func (l *outLog) discard(why string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.discarded != "" {
		return
	}
	l.discarded = why
	_ = os.Remove(l.path)
	close(l.notify)
	l.notify = make(chan struct{})
}
