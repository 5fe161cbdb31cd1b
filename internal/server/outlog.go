package server

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// An output log is a session's output, buffered on disk so that a client
// may disconnect and reattach without losing any. It is a sequence of
// records
//
//	u8 kind | u32 length (big-endian) | data
//
// where kind is recData (bytes the function sent) or recExit (the session's
// end, JSON). Offsets given to clients are record boundaries.
const (
	recData = 1
	recExit = 2

	recHeader = 5
)

type outLog struct {
	path string
	f    *os.File // for appending; closed once the exit record is written

	mu     sync.Mutex
	size   int64
	closed bool          // an exit record was written
	notify chan struct{} // closed and replaced on every append
}

func newOutLog(path string) (*outLog, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	return &outLog{path: path, f: f, notify: make(chan struct{})}, nil
}

var errLogClosed = errors.New("session already ended")

// append writes a record. After an exit record nothing more is written.
func (l *outLog) append(kind byte, data []byte) (int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return l.size, errLogClosed
	}
	hdr := make([]byte, recHeader, recHeader+len(data))
	hdr[0] = kind
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(data)))
	if _, err := l.f.WriteAt(append(hdr, data...), l.size); err != nil {
		return l.size, err
	}
	l.size += int64(recHeader + len(data))
	if kind == recExit {
		l.closed = true
		// A finished session holds no descriptor: readers open the file.
		_ = l.f.Close()
	}
	close(l.notify)
	l.notify = make(chan struct{})
	return l.size, nil
}

// state returns the current size, whether the log is complete, and a
// channel closed at the next append.
func (l *outLog) state() (int64, bool, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.size, l.closed, l.notify
}

// reader opens the log for reading.
func (l *outLog) reader() (*os.File, error) { return os.Open(l.path) }

// readRecord reads the record at off from r, a reader of l; off must be
// below the size returned by state.
func readRecord(r io.ReaderAt, off int64) (kind byte, data []byte, next int64, err error) {
	var hdr [recHeader]byte
	if _, err := r.ReadAt(hdr[:], off); err != nil {
		return 0, nil, 0, err
	}
	n := int64(binary.BigEndian.Uint32(hdr[1:]))
	data = make([]byte, n)
	if _, err := r.ReadAt(data, off+recHeader); err != nil && !(err == io.EOF && n == 0) {
		return 0, nil, 0, err
	}
	return hdr[0], data, off + recHeader + n, nil
}

// validOffset reports whether off is a record boundary.
func (l *outLog) validOffset(off int64) error {
	size, _, _ := l.state()
	if off < 0 || off > size {
		return fmt.Errorf("offset %d is outside the session's output (0-%d)", off, size)
	}
	r, err := l.reader()
	if err != nil {
		return err
	}
	defer r.Close()
	var pos int64
	var hdr [recHeader]byte
	for pos < off {
		if _, err := r.ReadAt(hdr[:], pos); err != nil {
			return err
		}
		pos += recHeader + int64(binary.BigEndian.Uint32(hdr[1:]))
	}
	if pos != off {
		return fmt.Errorf("offset %d is not a record boundary", off)
	}
	return nil
}

// close releases the log's descriptor if it is still open.
func (l *outLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		_ = l.f.Close()
	}
}
