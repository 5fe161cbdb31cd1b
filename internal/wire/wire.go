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
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
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

	release func() // gives the frame's bytes back to a Conn's Budget
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
//
// A frame's buffer grows only as its bytes arrive (a peer that announces a
// large frame and sends little costs little), and when the Conn has a
// Budget every byte held is charged to it before it is read: a full budget
// stops the reading (back-pressure) until others give bytes back or
// BudgetWait passes.
type Conn struct {
	r   *bufio.Reader
	w   io.Writer
	c   io.Closer
	wmu sync.Mutex
	pre []byte
	// MaxFrame bounds every frame (the length field).
	MaxFrame int
	// Limit, if set, bounds frames of each type (below MaxFrame); 0 refuses
	// the type outright.
	Limit func(typ uint8) int
	// Budget, if set, is charged for every frame's bytes while they are
	// held; Frame.Release gives them back.
	Budget Budget
	// BudgetWait bounds the wait for the budget (default 30 s).
	BudgetWait time.Duration
	// Deadline, if set, is the read deadline the caller gave the
	// connection: waits for the budget end by it too, so a frame that
	// must arrive by then cannot outlive it waiting.
	Deadline time.Time
	// ChargeSmall, if set, says which small frames (up to FreeFrame) are
	// charged too: those that are queued rather than handled at once.
	ChargeSmall func(typ uint8) bool
	// OnFrame, if set, is called when a frame's header has arrived, before
	// its body is read.
	OnFrame func(typ uint8, n int)
}

// Budget is the shared allowance frames are charged to (budget.Budget).
type Budget interface {
	Acquire(ctx context.Context, n int64) error
	Release(n int64)
}

// ErrBusy is a frame that could not be charged to the budget in time.
var ErrBusy = errors.New("wire: too much data in flight on this server; retry later")

// readChunk is how far a frame's buffer grows ahead of the data.
const readChunk = 64 << 10

// FreeFrame is the size up to which a frame is not charged to the
// budget: a connection holds at most one such buffer, and connections are
// bounded anyway, so small requests never wait behind large ones when the
// budget is spent.
const FreeFrame = 16 << 10

// NewConn wraps rw. If rw is an io.Closer, Close closes it.
func NewConn(rw io.ReadWriter) *Conn {
	c := &Conn{r: bufio.NewReaderSize(rw, 16<<10), w: rw, MaxFrame: DefaultMaxFrame}
	if cl, ok := rw.(io.Closer); ok {
		c.c = cl
	}
	return c
}

// Read returns the next frame. With a Budget, the caller must Release the
// frame when it no longer holds its bytes.
func (c *Conn) Read() (*Frame, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(c.r, hdr[:4]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[:4]))
	if err := checkLen(n, c.MaxFrame); err != nil {
		return nil, err
	}
	if _, err := io.ReadFull(c.r, hdr[4:]); err != nil {
		return nil, unexpected(err)
	}
	if c.Limit != nil {
		lim := c.Limit(hdr[4])
		if lim == 0 {
			return nil, &TypeError{Type: hdr[4]}
		}
		if n > lim {
			return nil, &SizeError{Type: hdr[4], Size: n, Limit: lim}
		}
	}
	if c.OnFrame != nil {
		c.OnFrame(hdr[4], n)
	}
	held := int64(0)
	charge := func(want int64) error {
		if c.Budget == nil || want <= held || (n <= FreeFrame && (c.ChargeSmall == nil || !c.ChargeSmall(hdr[4]))) {
			return nil
		}
		wait := c.BudgetWait
		if wait <= 0 {
			wait = 30 * time.Second
		}
		if !c.Deadline.IsZero() {
			wait = min(wait, time.Until(c.Deadline))
		}
		if wait <= 0 {
			return ErrBusy
		}
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := c.Budget.Acquire(ctx, want-held); err != nil {
			return ErrBusy
		}
		held = want
		return nil
	}
	giveBack := func() {
		if c.Budget != nil && held > 0 {
			c.Budget.Release(held)
		}
	}
	p := []byte{hdr[4]}
	for len(p) < n {
		if cap(p) == len(p) {
			want := min(n, max(2*cap(p), readChunk))
			if err := charge(int64(want)); err != nil {
				giveBack()
				return nil, err
			}
			q := make([]byte, len(p), want)
			copy(q, p)
			p = q
		}
		m, err := c.r.Read(p[len(p):cap(p)])
		p = p[:len(p)+m]
		if err != nil && len(p) < n {
			giveBack()
			return nil, unexpected(err)
		}
	}
	f, err := parse(p)
	if err != nil {
		giveBack()
		return nil, err
	}
	if held > 0 {
		f.release = func() { c.Budget.Release(held) }
	}
	return f, nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// SizeError is a frame larger than its type allows; it matches ErrTooLarge.
type SizeError struct {
	Type        uint8
	Size, Limit int
}

func (e *SizeError) Error() string {
	return fmt.Sprintf("wire: a frame of type %d may hold %d bytes, this one announces %d", e.Type, e.Limit, e.Size)
}

// Is makes errors.Is(err, ErrTooLarge) hold.
func (e *SizeError) Is(target error) bool { return target == ErrTooLarge }

// TypeError is a frame of a type the reader does not accept here.
type TypeError struct{ Type uint8 }

func (e *TypeError) Error() string { return fmt.Sprintf("wire: unexpected frame type %d", e.Type) }

// Release gives the frame's bytes back to the budget they were charged
// to. The frame's Header and Body must not be used afterwards by whoever
// relied on the charge. Release is idempotent.
func (f *Frame) Release() {
	if f != nil && f.release != nil {
		f.release()
		f.release = nil
	}
}

// Write sends a frame. The body is written as it is, not copied.
func (c *Conn) Write(f *Frame) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	n := 1 + 4 + len(f.Header) + len(f.Body)
	pre := binary.BigEndian.AppendUint32(c.pre[:0], uint32(n))
	pre = append(pre, f.Type)
	pre = binary.BigEndian.AppendUint32(pre, uint32(len(f.Header)))
	pre = append(pre, f.Header...)
	if cap(pre) > 64<<10 {
		c.pre = nil // do not pin large buffers
	} else {
		c.pre = pre
	}
	if len(f.Body) == 0 {
		_, err := c.w.Write(pre)
		return err
	}
	if len(f.Body) < 4<<10 && len(pre)+len(f.Body) <= cap(pre) {
		_, err := c.w.Write(append(pre, f.Body...))
		return err
	}
	bufs := net.Buffers{pre, f.Body}
	_, err := bufs.WriteTo(c.w)
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
