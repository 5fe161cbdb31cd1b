// Package wire is Bento's framing: every message on a client connection and
// on the host-API channel between bentod and a sandboxed runner is one frame
//
//	u32 length (big-endian; counts everything after it)
//	u8  type
//	u32 header length
//	header (JSON object, may be empty)
//	body   (raw bytes, may be empty)
//
// JSON keeps control messages readable and extensible; the raw body carries
// bulk data (function output, fetched pages) without base64 inflation.
// Frames larger than the reader's limit are refused before any allocation.
package wire

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
)

// DefaultMaxFrame bounds a frame unless a Conn is told otherwise.
const DefaultMaxFrame = 32 << 20

// MaxHeader bounds the JSON header of any frame.
const MaxHeader = 1 << 20

// Frame is one message.
type Frame struct {
	Type   uint8
	Header []byte // JSON
	Body   []byte
}

// ErrTooLarge is returned for a frame above the limit.
var ErrTooLarge = errors.New("wire: frame exceeds size limit")

// Encode appends the frame's encoding to dst.
func (f *Frame) Encode(dst []byte) []byte {
	n := 1 + 4 + len(f.Header) + len(f.Body)
	dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	dst = append(dst, f.Type)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(f.Header)))
	dst = append(dst, f.Header...)
	return append(dst, f.Body...)
}

// Decode parses one frame from the start of b and returns it and the number
// of bytes used. It returns io.ErrUnexpectedEOF when b holds a partial frame.
func Decode(b []byte, maxFrame int) (*Frame, int, error) {
	if len(b) < 4 {
		return nil, 0, io.ErrUnexpectedEOF
	}
	n := int(binary.BigEndian.Uint32(b))
	if err := checkLen(n, maxFrame); err != nil {
		return nil, 0, err
	}
	if len(b) < 4+n {
		return nil, 0, io.ErrUnexpectedEOF
	}
	f, err := parse(b[4 : 4+n])
	return f, 4 + n, err
}

func checkLen(n, maxFrame int) error {
	if n < 5 {
		return fmt.Errorf("wire: frame length %d is shorter than a frame header", n)
	}
	if n > maxFrame {
		return fmt.Errorf("%w: %d > %d bytes", ErrTooLarge, n, maxFrame)
	}
	return nil
}

func parse(p []byte) (*Frame, error) {
	hl := int(binary.BigEndian.Uint32(p[1:5]))
	if hl > MaxHeader || hl > len(p)-5 {
		return nil, fmt.Errorf("wire: header length %d does not fit a %d-byte frame", hl, len(p))
	}
	f := &Frame{Type: p[0]}
	if hl > 0 {
		f.Header = p[5 : 5+hl]
	}
	if len(p) > 5+hl {
		f.Body = p[5+hl:]
	}
	return f, nil
}

// Conn reads and writes frames on a stream. Writes are serialized, so any
// number of goroutines may write; one goroutine reads.
type Conn struct {
	r        *bufio.Reader
	w        io.Writer
	c        io.Closer
	wmu      sync.Mutex
	wbuf     []byte
	MaxFrame int
}

// NewConn wraps rw. If rw is an io.Closer, Close closes it.
func NewConn(rw io.ReadWriter) *Conn {
	c := &Conn{r: bufio.NewReaderSize(rw, 64<<10), w: rw, MaxFrame: DefaultMaxFrame}
	if cl, ok := rw.(io.Closer); ok {
		c.c = cl
	}
	return c
}

// Read returns the next frame.
func (c *Conn) Read() (*Frame, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[:]))
	if err := checkLen(n, c.MaxFrame); err != nil {
		return nil, err
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(c.r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return parse(p)
}

// Write sends a frame.
func (c *Conn) Write(f *Frame) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf = f.Encode(c.wbuf[:0])
	_, err := c.w.Write(c.wbuf)
	if cap(c.wbuf) > 1<<20 {
		c.wbuf = nil // do not pin large buffers
	}
	return err
}

// Send encodes hdr as JSON and writes a frame of type t with body.
func (c *Conn) Send(t uint8, hdr any, body []byte) error {
	f := &Frame{Type: t, Body: body}
	if hdr != nil {
		b, err := json.Marshal(hdr)
		if err != nil {
			return err
		}
		f.Header = b
	}
	return c.Write(f)
}

// Close closes the underlying stream, if it can be closed.
func (c *Conn) Close() error {
	if c.c != nil {
		return c.c.Close()
	}
	return nil
}

// Unmarshal decodes the frame's JSON header into v, rejecting unknown
// fields so that a malformed message is reported rather than half-read.
func (f *Frame) Unmarshal(v any) error {
	if len(f.Header) == 0 {
		f.Header = []byte("{}")
	}
	if err := json.Unmarshal(f.Header, v); err != nil {
		return fmt.Errorf("wire: bad header of frame type %d: %w", f.Type, err)
	}
	return nil
}
