// Package compat is a client of the original Bento's protocol
// (github.com/breakerspace/bento, branch main), speaking it byte for byte
// as the original's Python client does: store code, execute a call of it,
// open the function to exchange input and output, close it. It talks to
// the original server and to bentod's compat listener (CompatListenAddress,
// docs/compat.md).
//
// The protocol has no request ids and no acknowledgements: responses and
// function messages share the stream, and the caller must know which one
// it expects (a response after Store and Execute, messages after Open).
package compat

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"

	proto "github.com/torbento/bento/internal/compat"
)

// Message types RecvOutput returns.
const (
	FunctionErr = proto.MFunctionErr // the server: the function failed, is dead, or a message was refused
	Error       = proto.MError       // the function's error text
	Output      = proto.MOutput      // the function's output
)

// MaxFrame bounds a frame from the server (the original has none).
const MaxFrame = 64 << 20

// ServerError is an error response to a Store or Execute.
type ServerError struct {
	Type uint8
	Msg  string
}

func (e *ServerError) Error() string { return "server: " + e.Msg }

// Conn is a connection to a server.
type Conn struct {
	nc net.Conn
	r  *proto.Reader
}

// Dial connects to addr (HOST:PORT) over TCP.
func Dial(ctx context.Context, addr string) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return New(nc), nil
}

// New speaks the protocol over nc.
func New(nc net.Conn) *Conn {
	c := &Conn{nc: nc, r: proto.NewReader(nc, true)}
	c.r.Limit = func(uint8) int { return MaxFrame }
	return c
}

// NetConn is the connection under c (for deadlines).
func (c *Conn) NetConn() net.Conn { return c.nc }

// Disconnect closes the connection; functions go on running on the
// server, and a later Open resumes their output.
func (c *Conn) Disconnect() error { return c.nc.Close() }

func (c *Conn) request(t uint8, payload []byte) (string, error) {
	if _, err := c.nc.Write(proto.AppendRequest(nil, t, payload)); err != nil {
		return "", err
	}
	c.r.Response = true
	f, err := c.r.Read()
	if err != nil {
		return "", fmt.Errorf("reading the server's response: %w", err)
	}
	if f.Err != 0 {
		return "", &ServerError{Type: f.Type, Msg: string(f.Payload)}
	}
	if f.Type != t {
		return "", fmt.Errorf("Request-Response types don't match (sent %d, got %d)", t, f.Type)
	}
	return string(f.Payload), nil
}

// asciiJSON encodes v as Python's json.dumps does by default: ", " and
// ": " separators, non-ASCII escaped.
func asciiJSON(kv [][2]string) []byte {
	var b strings.Builder
	b.WriteByte('{')
	for i, p := range kv {
		if i > 0 {
			b.WriteString(", ")
		}
		writeASCII(&b, p[0])
		b.WriteString(": ")
		writeASCII(&b, p[1])
	}
	b.WriteByte('}')
	return []byte(b.String())
}

func writeASCII(b *strings.Builder, s string) {
	var q strings.Builder
	enc := json.NewEncoder(&q)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	// The encoder leaves non-ASCII as it is: escaped here, as Python's.
	for _, r := range strings.TrimSuffix(q.String(), "\n") {
		switch {
		case r == '\u2028' || r == '\u2029':
			fmt.Fprintf(b, `\u%04x`, r)
		case r < 0x80:
			b.WriteRune(r)
		case r <= 0xffff:
			fmt.Fprintf(b, `\u%04x`, r)
		default:
			r -= 0x10000
			fmt.Fprintf(b, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
		}
	}
}

// Store uploads code under name and returns its token.
func (c *Conn) Store(name, code string) (string, error) {
	return c.request(proto.TStore, asciiJSON([][2]string{{"name", name}, {"code", code}}))
}

// Execute starts call (a Python call expression, e.g. hello('x', 3)) of
// the code stored under token and returns the function id.
func (c *Conn) Execute(call, token string) (string, error) {
	return c.request(proto.TExecute, asciiJSON([][2]string{{"call", call}, {"token", token}}))
}

// Open starts exchanging messages with the function: no response; errors
// come as FunctionErr messages.
func (c *Conn) Open(id string) error {
	_, err := c.nc.Write(proto.AppendRequest(nil, proto.TOpen, []byte(id)))
	return err
}

// Close stops exchanging messages with the function (it goes on
// running): no response; messages already sent may still arrive.
func (c *Conn) Close(id string) error {
	_, err := c.nc.Write(proto.AppendRequest(nil, proto.TClose, []byte(id)))
	return err
}

// SendInput sends data to the open function's recv (nothing if empty, as
// the original).
func (c *Conn) SendInput(id string, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	_, err := c.nc.Write(proto.AppendMessage(nil, proto.MInput, id, data))
	return err
}

// RecvOutput returns the next message from the open function: its data
// and type (Output, Error or FunctionErr).
func (c *Conn) RecvOutput() ([]byte, uint8, error) {
	c.r.Response = false
	f, err := c.r.Read()
	if err != nil {
		return nil, 0, fmt.Errorf("reading a message: %w", err)
	}
	_, data, err := proto.SplitMessage(f.Payload)
	if err != nil {
		return nil, 0, err
	}
	return data, f.Type, nil
}
