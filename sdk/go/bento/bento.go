//go:build wasip1

// Package bento is the host API of Bento's wasm image for functions
// written in Go and built with GOOS=wasip1 GOARCH=wasm (docs/wasm.md).
//
// A function is a WASI command: its main runs once per invocation, with
// the invocation's arguments in os.Args[1:]. What it writes to os.Stdout
// is its output to the invoking client, os.Stdin is the client's input
// (see Recv for input with a timeout), and os.Stderr goes to the instance
// log, a line per entry. Everything else the box does for the function
// goes through bentod, which checks each call against the manifest's
// apis and the operator's policy: the functions here, or Call for any
// host call by name.
package bento

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Error is a host call that bentod refused or that failed; Message is
// bentod's explanation (for example that the manifest does not ask for
// the call, or that storage is full).
type Error struct {
	Call    string
	Message string
	// BadArgs is set when the runner refused the call before sending it:
	// a name or arguments too long, a buffer outside memory.
	BadArgs bool
}

func (e *Error) Error() string { return e.Call + ": " + e.Message }

// Call carries out the host call name (e.g. "storage.put", as in
// docs/functions.md) with args encoded as JSON (nil for none) and data
// as the bulk argument. It returns the call's JSON result and its bulk
// data.
func Call(name string, args any, data []byte) (json.RawMessage, []byte, error) {
	var a []byte
	if args != nil {
		var err error
		if a, err = json.Marshal(args); err != nil {
			return nil, nil, fmt.Errorf("%s: arguments: %w", name, err)
		}
	}
	status, result, body := rawCall(name, a, data)
	if status != 0 {
		return nil, nil, &Error{Call: name, Message: string(result), BadArgs: status < 0}
	}
	return result, body, nil
}

// Send sends p to the invoking client as output (as writing to os.Stdout
// does).
func Send(p []byte) error {
	_, _, err := Call("send", nil, p)
	return err
}

// Log appends a line to the instance log.
func Log(msg string) error {
	_, _, err := Call("log", map[string]string{"msg": msg}, nil)
	return err
}

// ErrTimeout is Recv's answer when no input came in time.
var ErrTimeout = errors.New("bento: no input within the timeout")

// Recv returns the client's next piece of input, waiting up to timeout
// (0: until input comes or the invocation ends). At the end of the input
// it returns nil, nil; with no input in time, ErrTimeout.
func Recv(timeout time.Duration) ([]byte, error) {
	var a map[string]float64
	if timeout > 0 {
		a = map[string]float64{"timeout": timeout.Seconds()}
	}
	res, body, err := Call("recv", a, nil)
	if err != nil {
		return nil, err
	}
	var out struct {
		EOF     bool `json:"eof"`
		Timeout bool `json:"timeout"`
	}
	if err := json.Unmarshal(res, &out); err != nil && len(res) > 0 {
		return nil, err
	}
	switch {
	case out.EOF:
		return nil, nil
	case out.Timeout:
		return nil, ErrTimeout
	}
	if body == nil {
		body = []byte{}
	}
	return body, nil
}

// Get returns the stored value of key and whether there is one.
func Get(key string) ([]byte, bool, error) {
	res, body, err := Call("storage.get", map[string]string{"key": key}, nil)
	if err != nil {
		return nil, false, err
	}
	var out struct {
		Found bool `json:"found"`
	}
	if err := json.Unmarshal(res, &out); err != nil {
		return nil, false, err
	}
	return body, out.Found, nil
}

// Put stores value under key, counted against the storage resource.
func Put(key string, value []byte) error {
	_, _, err := Call("storage.put", map[string]string{"key": key}, value)
	return err
}

// Delete removes key from storage.
func Delete(key string) error {
	_, _, err := Call("storage.delete", map[string]string{"key": key}, nil)
	return err
}

// Keys lists the stored keys.
func Keys() ([]string, error) {
	_, body, err := Call("storage.keys", nil, nil)
	if err != nil {
		return nil, err
	}
	var keys []string
	for len(body) > 0 {
		if len(body) < 2 {
			return nil, errors.New("storage.keys: truncated reply")
		}
		n := int(body[0])<<8 | int(body[1])
		if len(body) < 2+n {
			return nil, errors.New("storage.keys: truncated reply")
		}
		keys = append(keys, string(body[2:2+n]))
		body = body[2+n:]
	}
	return keys, nil
}

// Request is an HTTP request for Fetch.
type Request struct {
	URL     string            `json:"url"`
	Method  string            `json:"method"`
	Headers map[string]string `json:"headers,omitempty"`
	Timeout float64           `json:"timeout,omitempty"` // seconds
	Body    []byte            `json:"-"`
	// Tor sends the request through Tor circuits (tor.fetch) instead of
	// directly (http.fetch).
	Tor bool `json:"-"`
}

// Response is Fetch's answer.
type Response struct {
	Status  int               `json:"status"`
	Headers map[string]string `json:"headers"`
	Body    []byte            `json:"-"`
}

// Fetch makes an HTTP(S) request to a destination the manifest and the
// operator's policy both accept.
func Fetch(req Request) (*Response, error) {
	if req.Method == "" {
		req.Method = "GET"
	}
	call := "http.fetch"
	if req.Tor {
		call = "tor.fetch"
	}
	res, body, err := Call(call, req, req.Body)
	if err != nil {
		return nil, err
	}
	var out Response
	if err := json.Unmarshal(res, &out); err != nil {
		return nil, err
	}
	out.Body = body
	return &out, nil
}

// Exit ends the instance after this invocation.
func Exit() error {
	_, _, err := Call("exit", nil, nil)
	return err
}

// EndsAt returns when the instance ends at the latest.
func EndsAt() (time.Time, error) {
	res, _, err := Call("ends_at", nil, nil)
	if err != nil {
		return time.Time{}, err
	}
	var out struct {
		At float64 `json:"at"`
	}
	if err := json.Unmarshal(res, &out); err != nil {
		return time.Time{}, err
	}
	return time.Unix(0, int64(out.At*1e9)), nil
}
