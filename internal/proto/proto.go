// Package proto defines the messages of Bento's two protocols, both carried
// in wire frames:
//
//   - the client protocol, between the bento CLI (or any client) and
//     bentod: policy, deploy, invoke, attach, input, output, shutdown;
//   - the host API, between bentod and the runner inside a sandbox: the
//     runner asks, bentod checks every call against the manifest and the
//     policy and answers.
//
// Both are versioned by the Hello exchange (client) and Init (host API).
package proto

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Version is the client protocol version.
const Version = 1

// Client protocol frame types.
const (
	THello       uint8 = 1  // c→s Hello
	TWelcome     uint8 = 2  // s→c Welcome
	TPolicy      uint8 = 3  // c→s (empty)
	TPolicyReply uint8 = 4  // s→c header: policy.Public
	TDeploy      uint8 = 5  // c→s Deploy; body: the bundle's files
	TDeployed    uint8 = 6  // s→c Deployed
	TInvoke      uint8 = 7  // c→s Invoke
	TAttach      uint8 = 8  // c→s Attach
	TSession     uint8 = 9  // s→c Session
	TInput       uint8 = 10 // c→s body: bytes for the function's recv()
	TInputEOF    uint8 = 11 // c→s the client will send no more input
	TOutput      uint8 = 12 // s→c Output; body: bytes the function sent
	TExit        uint8 = 13 // s→c Exit
	TShutdown    uint8 = 14 // c→s Shutdown
	TOK          uint8 = 15 // s→c (empty)
	TError       uint8 = 16 // s→c Error
	TNotice      uint8 = 17 // s→c Notice, within a session's output
	// Added in bentod 0.3, announced in Welcome.Features: a client sends
	// them only to a server that lists the feature (an older server
	// would refuse the frame type and close the connection).
	TLogs    uint8 = 18 // c→s Logs (feature "logs")
	TLogData uint8 = 19 // s→c LogData; body: bytes of the function's log
	TLogEnd  uint8 = 20 // s→c LogEnd
	TUpdate  uint8 = 21 // c→s Update; body: the bundle's files (feature "update")
	TUpdated uint8 = 22 // s→c Updated
)

// Features a server may list in Welcome.Features.
const (
	FeatureLogs   = "logs"   // TLogs: the function's log, to either token's holder
	FeatureUpdate = "update" // TUpdate: new code for a running instance
)

// Hello opens a client connection.
type Hello struct {
	Version int `json:"version"`
	// Hops is set by a Bento server whose function makes the request: how
	// deep in composition it is (functions deploying functions). Servers
	// refuse requests deeper than their MaxCompositionDepth, so honest
	// servers cannot be made to deploy onto each other without end.
	Hops int `json:"hops,omitempty"`
	// Notices: the client reads Notice frames in sessions. bentod sends
	// them to such clients only; older clients never see one.
	Notices bool `json:"notices,omitempty"`
}

// Welcome answers Hello.
type Welcome struct {
	Version int    `json:"version"`
	Server  string `json:"server"`
	// Features are the requests added to version 1 that this server
	// serves (FeatureLogs, ...). Older servers send none.
	Features []string `json:"features,omitempty"`
}

// Has reports whether the server announced feature.
func (w *Welcome) Has(feature string) bool {
	for _, f := range w.Features {
		if f == feature {
			return true
		}
	}
	return false
}

// Deploy uploads a function and spawns an instance of it.
type Deploy struct {
	Manifest string      `json:"manifest"` // bento.toml text
	Files    []FileEntry `json:"files"`    // names and sizes of the files in the body, in order
}

// FileEntry is one file of a bundle.
type FileEntry struct {
	Name string `json:"name"`
	Size int    `json:"size"`
}

// Deployed answers Deploy. The tokens are secrets: the invocation token may
// be shared to let others invoke the instance; only the shutdown token ends it.
type Deployed struct {
	Instance        string          `json:"instance"`
	InvocationToken string          `json:"invocation_token"`
	ShutdownToken   string          `json:"shutdown_token"`
	Resources       json.RawMessage `json:"resources"`
}

// Invoke starts an invocation: the manifest's function is called with Args
// (a JSON array).
type Invoke struct {
	Token string          `json:"token"`
	Args  json.RawMessage `json:"args,omitempty"`
}

// Attach reattaches to a session, resuming output at Offset.
type Attach struct {
	Token   string `json:"token"`
	Session string `json:"session"`
	Offset  int64  `json:"offset"`
}

// Session is the server's answer to Invoke or Attach; output follows.
type Session struct {
	Session string `json:"session"`
	Offset  int64  `json:"offset"`
}

// Output carries function output. Offset is the position in the session's
// output log just after this record: a client that has it and reattaches
// with it loses nothing and receives nothing twice.
type Output struct {
	Offset int64 `json:"offset"`
}

// Notice is bentod telling an attached client something that concerns the
// session, in its output stream (so a client that reattaches hears it
// too). Offset is as for Output.
type Notice struct {
	Kind    string    `json:"kind"`
	Message string    `json:"message"`
	EndsAt  time.Time `json:"ends_at,omitzero"`
	Offset  int64     `json:"offset"`
}

// Notice kinds.
const (
	NoticeBoxEnding = "box_ending" // the box ends at EndsAt: the session ends then at the latest
)

// Exit ends a session.
type Exit struct {
	Status string     `json:"status"` // ok, error, killed
	Reason string     `json:"reason,omitempty"`
	Error  *FuncError `json:"error,omitempty"`
	Offset int64      `json:"offset"`
}

// Exit statuses.
const (
	StatusOK     = "ok"     // the function returned
	StatusError  = "error"  // the function raised an error
	StatusKilled = "killed" // the instance was stopped (limit, shutdown, crash)
)

// FuncError is an error in the function's code, with where it happened.
type FuncError struct {
	File      string `json:"file,omitempty"`
	Line      int    `json:"line,omitempty"`
	Col       int    `json:"col,omitempty"`
	Msg       string `json:"msg"`
	Backtrace string `json:"backtrace,omitempty"`
}

func (e *FuncError) Error() string {
	switch {
	case e.File == "":
		return e.Msg
	case e.Line == 0:
		return e.File + ": " + e.Msg
	}
	return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Col, e.Msg)
}

// Shutdown ends an instance.
type Shutdown struct {
	Token string `json:"token"`
}

// Logs asks for the function's own log (what its log() host call
// wrote), with its invocation or its shutdown token. The server sends
// what it keeps from Offset on in LogData frames, then, unless Follow,
// LogEnd; with Follow it goes on sending new lines until the instance
// ends (LogEnd with Ended) or the client closes the connection.
type Logs struct {
	Token  string `json:"token"`
	Follow bool   `json:"follow,omitempty"`
	// Offset is a position in the log, counted in bytes since the
	// instance's runner first started under this bentod (LogData.Offset
	// of a previous read); 0 is the oldest line kept.
	Offset int64 `json:"offset,omitempty"`
}

// LogData carries a piece of the log. Offset is the position just after
// it; Skipped counts bytes the server no longer keeps (the log keeps its
// newest 64 KB) between the position asked for and this piece.
type LogData struct {
	Offset  int64 `json:"offset"`
	Skipped int64 `json:"skipped,omitempty"`
}

// LogEnd ends a log stream: at Offset, the end of the log when it was
// sent. Ended is set when the instance has ended (Reason says why): no
// more lines will come.
type LogEnd struct {
	Offset int64  `json:"offset"`
	Ended  bool   `json:"ended,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// Update replaces a running instance's code and manifest, with its
// shutdown token; the body holds the files, as for Deploy. The instance
// keeps its id, its tokens, its stored data and its lifetime's start.
type Update struct {
	Token    string      `json:"token"`
	Manifest string      `json:"manifest"`
	Files    []FileEntry `json:"files"`
}

// Updated answers Update: the new code runs from the next invocation.
// Ended is how many running invocations the update ended.
type Updated struct {
	Instance  string          `json:"instance"`
	Resources json.RawMessage `json:"resources"`
	EndsAt    time.Time       `json:"ends_at"`
	Ended     int             `json:"ended_sessions"`
}

// MaxToken bounds a token in a request: bentod's are 50-odd characters.
const MaxToken = 128

// Check checks a Logs request's fields.
func (l *Logs) Check() error {
	switch {
	case l.Token == "":
		return fmt.Errorf("logs: no token")
	case len(l.Token) > MaxToken:
		return fmt.Errorf("logs: token longer than %d bytes", MaxToken)
	case l.Offset < 0:
		return fmt.Errorf("logs: negative offset %d", l.Offset)
	}
	return nil
}

// Check checks an Update request's fields (the files are checked by
// UnpackFiles, the manifest by package manifest).
func (u *Update) Check() error {
	switch {
	case u.Token == "":
		return fmt.Errorf("update: no token")
	case len(u.Token) > MaxToken:
		return fmt.Errorf("update: token longer than %d bytes", MaxToken)
	case len(u.Files) > MaxFiles:
		return fmt.Errorf("bundle has %d files, at most %d allowed", len(u.Files), MaxFiles)
	}
	return nil
}

// Error is a refused request.
type Error struct {
	Code       string      `json:"code"`
	Message    string      `json:"message"`
	Violations []Violation `json:"violations,omitempty"`
}

// Violation is one manifest item the node policy does not allow.
type Violation struct {
	Item    string `json:"item"`
	Asked   string `json:"asked"`
	Allowed string `json:"allowed"`
}

// Error codes.
const (
	CodeBadRequest = "bad_request" // malformed message or manifest
	CodeRefused    = "refused"     // the manifest exceeds the node policy
	CodeBusy       = "busy"        // the box is full; retry later
	CodeNotFound   = "not_found"   // unknown token or session
	CodeTooLarge   = "too_large"   // upload or message too large
	CodeGone       = "gone"        // the instance has ended
	CodeInternal   = "internal"    // bentod failed
)

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s", e.Code, e.Message)
	for _, v := range e.Violations {
		fmt.Fprintf(&b, "\n  %s: asks %s, policy allows %s", v.Item, v.Asked, v.Allowed)
	}
	return b.String()
}

// MaxFiles bounds the number of files in a bundle.
const MaxFiles = 64

// PackFiles lays out a bundle: entries sorted by name and the body.
func PackFiles(files map[string][]byte) ([]FileEntry, []byte) {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var body []byte
	entries := make([]FileEntry, 0, len(names))
	for _, n := range names {
		entries = append(entries, FileEntry{Name: n, Size: len(files[n])})
		body = append(body, files[n]...)
	}
	return entries, body
}

// UnpackFiles splits body by entries, checking names with valid and that
// the sizes account for the body exactly.
func UnpackFiles(entries []FileEntry, body []byte, valid func(string) bool) (map[string][]byte, error) {
	if len(entries) > MaxFiles {
		return nil, fmt.Errorf("bundle has %d files, at most %d allowed", len(entries), MaxFiles)
	}
	files := make(map[string][]byte, len(entries))
	off := 0
	for _, e := range entries {
		if !valid(e.Name) {
			return nil, fmt.Errorf("bundle file name %q is not allowed (plain names only, no '/' or leading '.')", e.Name)
		}
		if _, dup := files[e.Name]; dup {
			return nil, fmt.Errorf("bundle file %q appears twice", e.Name)
		}
		if e.Size < 0 || e.Size > len(body)-off {
			return nil, fmt.Errorf("bundle file %q: size %d exceeds the data sent", e.Name, e.Size)
		}
		files[e.Name] = body[off : off+e.Size : off+e.Size]
		off += e.Size
	}
	if off != len(body) {
		return nil, fmt.Errorf("bundle: %d bytes of data follow the last file", len(body)-off)
	}
	return files, nil
}
