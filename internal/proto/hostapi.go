package proto

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"strings"
)

// Host API frame types (bentod ⇄ runner).
const (
	HInit   uint8 = 64 // d→r Init; body: the bundle's files
	HReady  uint8 = 65 // r→d Ready
	HInvoke uint8 = 66 // d→r HostInvoke
	HCall   uint8 = 67 // r→d Call; body: bulk argument (data to send, value to store, ...)
	HReply  uint8 = 68 // d→r Reply; body: bulk result
	HDone   uint8 = 69 // r→d Done; body: the return value, encoded
	HCancel uint8 = 70 // d→r Cancel
)

// HostAPIVersion is the host API version.
const HostAPIVersion = 1

// Init loads a function into the runner.
type Init struct {
	Version  int         `json:"version"`
	Name     string      `json:"name"`
	Entry    string      `json:"entry"`
	Function string      `json:"function"`
	Steps    uint64      `json:"steps"`
	Files    []FileEntry `json:"files"`
	// MaxBody bounds the body of any frame the runner sends: a host call's
	// data or a return value beyond it fails in the runner, as an error of
	// that call, instead of breaking the host API.
	MaxBody int64 `json:"max_body,omitempty"`
	// Image is the manifest's image: "" or "starlark" for Starlark code,
	// "wasm" for a WebAssembly module (docs/wasm.md).
	Image string `json:"image,omitempty"`
	// Memory is the manifest's memory resource in bytes; a wasm module's
	// linear memory is bounded by a share of it (runner.WasmPages).
	Memory int64 `json:"memory,omitempty"`
	// APIs are the host calls the manifest asks for; the wasm image gives
	// a module the real clock only when "time" is among them, real sleeps
	// only with "sleep".
	APIs []string `json:"apis,omitempty"`
}

// Ready reports that the module loaded (Error nil) or failed to.
type Ready struct {
	Error *FuncError `json:"error,omitempty"`
}

// HostInvoke starts invocation Inv with JSON-array arguments.
type HostInvoke struct {
	Inv  uint64          `json:"inv"`
	Args json.RawMessage `json:"args"`
}

// Call is a host call from the runner. Name is a host-call name from the
// policy's catalogue plus an operation (e.g. "storage.put").
type Call struct {
	ID   uint64          `json:"id"`
	Inv  uint64          `json:"inv"`
	Name string          `json:"name"`
	Args json.RawMessage `json:"args,omitempty"`
}

// Reply answers a Call. Error, when set, becomes a Starlark error in the
// function; Result is call-specific JSON; the frame body carries bulk data.
type Reply struct {
	ID     uint64          `json:"id"`
	Error  string          `json:"error,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
}

// Cancel asks the runner to stop invocation Inv (a limit of the
// invocation was reached); the invocation ends with Reason as its error.
type Cancel struct {
	Inv    uint64 `json:"inv"`
	Reason string `json:"reason"`
}

// Bounds on what a runner reports of an error: longer messages and
// backtraces are cut (by the runner, and again by bentod, which trusts no
// runner).
const (
	MaxErrorMsg  = 4 << 10
	MaxBacktrace = 8 << 10
)

// Truncate cuts an error's message and backtrace to their bounds.
func (e *FuncError) Truncate() {
	if e == nil {
		return
	}
	e.Msg = cut(e.Msg, MaxErrorMsg)
	e.Backtrace = cut(e.Backtrace, MaxBacktrace)
	e.File = cut(e.File, 256)
}

func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

// Size is what the error costs the output allowance: its text.
func (e *FuncError) Size() int64 {
	if e == nil {
		return 0
	}
	return int64(len(e.Msg) + len(e.Backtrace) + len(e.File))
}

// Done ends an invocation: the function returned (body: its value as
// bytes) or failed (Error set).
type Done struct {
	Inv   uint64     `json:"inv"`
	Error *FuncError `json:"error,omitempty"`
	// None is set when the function returned None: no output is added.
	None bool `json:"none,omitempty"`
}

// EncodeKeys lays out storage keys for the reply to storage.keys: each a
// big-endian u16 length and its bytes, in the frame's body (no JSON
// escaping to multiply its size, no header limit to meet).
func EncodeKeys(keys []string) []byte {
	n := 0
	for _, k := range keys {
		n += 2 + len(k)
	}
	b := make([]byte, 0, n)
	for _, k := range keys {
		b = binary.BigEndian.AppendUint16(b, uint16(len(k)))
		b = append(b, k...)
	}
	return b
}

// DecodeKeys reads what EncodeKeys wrote.
func DecodeKeys(b []byte) ([]string, error) {
	var keys []string
	for len(b) > 0 {
		if len(b) < 2 {
			return nil, errors.New("storage.keys: truncated reply")
		}
		n := int(binary.BigEndian.Uint16(b))
		if len(b) < 2+n {
			return nil, errors.New("storage.keys: truncated reply")
		}
		keys = append(keys, string(b[2:2+n]))
		b = b[2+n:]
	}
	return keys, nil
}
