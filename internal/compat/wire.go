// Package compat speaks the original Bento's client protocol
// (github.com/breakerspace/bento, branch main) so that its Python client
// works against bentod unmodified: a listener (off unless the operator
// sets CompatListenAddress) that maps Store, Execute, Open and Close onto
// bentod's own deploy, invoke and session machinery, every check of
// bentod's still applying. docs/compat.md says what it does and what the
// original protocol cannot express.
//
// The wire format, all integers big-endian:
//
//	request   type u8, length u32, payload            (client → server)
//	response  type u8, error u8, length u32, payload  (server → client)
//	message   type u8, length u32, function id (36 bytes), data
//
// Requests are Store (0, JSON {"name", "code"}), Execute (1, JSON
// {"call", "token"}), Open (2) and Close (3), whose payload is a function
// id. Store and Execute are answered with a response of their type (error
// 0: the token or the function id; 1: an error message). After an Open the
// connection carries messages: FunctionErr (4), Error (5, the function's
// error text), Output (6) from the server, Input (7) from the client; a
// Close request returns it to requests.
package compat

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
	"unicode/utf8"

	"github.com/torbento/bento/internal/wire"
)

// Request types, and the types of their responses.
const (
	TStore   = 0x0
	TExecute = 0x1
	TOpen    = 0x2
	TClose   = 0x3
)

// Message types, after an Open.
const (
	MFunctionErr = 0x4 // the server: something about the function failed (or it is dead)
	MError       = 0x5 // the function's error text (the original: its stderr)
	MOutput      = 0x6 // the function's output
	MInput       = 0x7 // the client's input to the function
)

// Header sizes and the function id's length (a UUID string).
const (
	RequestHeader  = 5
	ResponseHeader = 6
	MessageHeader  = 5
	IDLen          = 36
)

// Frame bounds (beyond the policy's): an Open or Close carries a function
// id; input comes in pieces of at most MaxInput bytes; a message the
// server does not expect is read and answered only up to maxDiscard bytes.
const (
	MaxInput    = 256 << 10
	maxIDFrame  = 64
	maxDiscard  = 64 << 10
	maxName     = 256
	maxTokenLen = 64
)

// AppendRequest appends a request frame.
func AppendRequest(dst []byte, t uint8, payload []byte) []byte {
	dst = append(dst, t)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(payload)))
	return append(dst, payload...)
}

// AppendResponse appends a response frame; failed sets its error byte.
func AppendResponse(dst []byte, t uint8, failed bool, payload []byte) []byte {
	e := byte(0)
	if failed {
		e = 1
	}
	dst = append(dst, t, e)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(payload)))
	return append(dst, payload...)
}

// AppendMessage appends a message frame for the function id (padded or
// cut to IDLen bytes, as the original's receivers read exactly that many).
func AppendMessage(dst []byte, t uint8, id string, data []byte) []byte {
	dst = append(dst, t)
	dst = binary.BigEndian.AppendUint32(dst, uint32(IDLen+len(data)))
	dst = append(dst, fixID(id)...)
	return append(dst, data...)
}

func fixID(id string) string {
	if len(id) >= IDLen {
		return id[:IDLen]
	}
	return id + pad[:IDLen-len(id)]
}

const pad = "                                    " // IDLen spaces

// SplitMessage splits a message's payload into the function id and data.
func SplitMessage(p []byte) (string, []byte, error) {
	if len(p) < IDLen {
		return "", nil, fmt.Errorf("message of %d bytes: shorter than a function id (%d)", len(p), IDLen)
	}
	return string(p[:IDLen]), p[IDLen:], nil
}

// StoreRequest is a Store request's payload.
type StoreRequest struct {
	Name string `json:"name"`
	Code string `json:"code"`
}

// ExecuteRequest is an Execute request's payload.
type ExecuteRequest struct {
	Call  string `json:"call"`
	Token string `json:"token"`
}

// DecodeStore parses a Store payload.
func DecodeStore(p []byte) (*StoreRequest, error) {
	var raw struct {
		Name *string `json:"name"`
		Code *string `json:"code"`
	}
	if err := json.Unmarshal(p, &raw); err != nil {
		return nil, fmt.Errorf("store request is not the JSON object {\"name\": ..., \"code\": ...}: %v", err)
	}
	if raw.Name == nil || raw.Code == nil {
		return nil, errors.New("store request lacks \"name\" or \"code\" (strings)")
	}
	if len(*raw.Name) > maxName || !utf8.ValidString(*raw.Name) {
		return nil, fmt.Errorf("function name: at most %d bytes of UTF-8", maxName)
	}
	return &StoreRequest{Name: *raw.Name, Code: *raw.Code}, nil
}

// DecodeExecute parses an Execute payload.
func DecodeExecute(p []byte) (*ExecuteRequest, error) {
	var raw struct {
		Call  *string `json:"call"`
		Token *string `json:"token"`
	}
	if err := json.Unmarshal(p, &raw); err != nil {
		return nil, fmt.Errorf("execute request is not the JSON object {\"call\": ..., \"token\": ...}: %v", err)
	}
	if raw.Call == nil || raw.Token == nil {
		return nil, errors.New("execute request lacks \"call\" or \"token\" (strings)")
	}
	return &ExecuteRequest{Call: *raw.Call, Token: *raw.Token}, nil
}

// Budget is an allowance of bytes in flight (bentod's per-client budget).
type Budget = wire.Budget

// FreeFrame is the size up to which a frame is not charged to the budget
// (as bentod's own protocol: one such buffer per connection at most).
const FreeFrame = 16 << 10

// SizeError is a frame longer than its type allows in this phase.
type SizeError struct {
	Type  uint8
	Size  uint32
	Limit int
}

func (e *SizeError) Error() string {
	return fmt.Sprintf("a frame of type %d may hold %d bytes here, this one announces %d", e.Type, e.Limit, e.Size)
}

// TypeError is a frame of a type this phase does not take.
type TypeError struct {
	Type uint8
	Size uint32
}

func (e *TypeError) Error() string { return fmt.Sprintf("unexpected frame type %d", e.Type) }

// ErrBusy is a frame that could not be charged to the budget in time.
var ErrBusy = errors.New("too much data in flight on this server; retry later")

// Frame is one frame read.
type Frame struct {
	Type    uint8
	Err     uint8 // responses only
	Payload []byte
	release func()
}

// Release gives the frame's bytes back to the budget.
func (f *Frame) Release() {
	if f != nil && f.release != nil {
		f.release()
		f.release = nil
	}
}

// Reader reads frames: with a 5-byte header (requests, messages) or a
// 6-byte one (responses). Limit says how long a frame of a type may be
// (0: the type is refused) before anything is allocated; with a Budget,
// frames larger than FreeFrame are charged to it while held.
type Reader struct {
	r          *bufio.Reader
	Response   bool
	Limit      func(t uint8) int
	Budget     Budget
	BudgetWait time.Duration
}

// NewReader reads frames from r.
func NewReader(r io.Reader, response bool) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, 4<<10), Response: response}
}

// Read returns the next frame.
func (r *Reader) Read() (*Frame, error) {
	hn := RequestHeader
	if r.Response {
		hn = ResponseHeader
	}
	var hdr [ResponseHeader]byte
	if _, err := io.ReadFull(r.r, hdr[:hn]); err != nil {
		return nil, err
	}
	f := &Frame{Type: hdr[0]}
	size := binary.BigEndian.Uint32(hdr[hn-4 : hn])
	if r.Response {
		f.Err = hdr[1]
	}
	if r.Limit != nil {
		lim := r.Limit(f.Type)
		if lim <= 0 {
			return nil, &TypeError{Type: f.Type, Size: size}
		}
		if uint64(size) > uint64(lim) {
			return nil, &SizeError{Type: f.Type, Size: size, Limit: lim}
		}
	}
	// The payload's buffer grows as its bytes arrive, each step charged
	// first (frames beyond FreeFrame): announcing a large frame holds at
	// most readChunk of the budget and of memory until it is sent, as
	// bentod's own protocol (internal/wire).
	held := int64(0)
	charge := func(want int64) error {
		if r.Budget == nil || size <= FreeFrame || want <= held {
			return nil
		}
		wait := r.BudgetWait
		if wait <= 0 {
			wait = 30 * time.Second
		}
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := r.Budget.Acquire(ctx, want-held); err != nil {
			return ErrBusy
		}
		held = want
		return nil
	}
	giveBack := func() {
		if held > 0 {
			r.Budget.Release(held)
			held = 0
		}
	}
	n := int(size)
	p := []byte{}
	for len(p) < n {
		if cap(p) == len(p) {
			want := min(n, max(2*cap(p), readChunk))
			if err := charge(int64(want)); err != nil {
				return nil, err
			}
			q := make([]byte, len(p), want)
			copy(q, p)
			p = q
		}
		m, err := r.r.Read(p[len(p):cap(p)])
		p = p[:len(p)+m]
		if err != nil && len(p) < n {
			giveBack()
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	f.Payload = p
	if held > 0 {
		b, h := r.Budget, held
		f.release = func() { b.Release(h) }
	}
	return f, nil
}

// readChunk is how far a frame's buffer grows ahead of its bytes.
const readChunk = 64 << 10

// Discard skips n bytes (the payload of a refused frame).
func (r *Reader) Discard(n int) error {
	_, err := r.r.Discard(n)
	return err
}
