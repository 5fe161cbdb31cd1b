package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/torbento/bento/internal/fsprotect"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/wire"
)

// serveSession runs an invocation or reattachment on this connection:
// output streams from the session log from the client's offset, input from
// the client feeds recv(). The connection closes when the session ends.
func (s *Server) serveSession(conn *wire.Conn, nc net.Conn, f *wire.Frame, log *slog.Logger, notices bool) {
	in, sess, offset, perr := s.openSession(f)
	f.Release()
	wt := s.policy().Daemon.WriteTimeout
	send := func(t uint8, hdr any, body []byte) error {
		_ = nc.SetWriteDeadline(time.Now().Add(wt))
		return conn.Send(t, hdr, body)
	}
	if perr != nil {
		_ = send(proto.TError, perr, nil)
		return
	}
	var once sync.Once
	detach := func() {
		once.Do(func() {
			in.mu.Lock()
			sess.readers--
			in.readers--
			in.mu.Unlock()
		})
	}
	defer detach()
	if send(proto.TSession, proto.Session{Session: sess.id, Offset: offset}, nil) != nil {
		return
	}
	// Input frames are small and charged to the client until recv() has
	// handed them to the function, however small: they are queued.
	conn.ChargeSmall = func(t uint8) bool { return t == proto.TInput }
	conn.Limit = func(t uint8) int {
		switch t {
		case proto.TInput:
			return inputLimit
		case proto.TInputEOF:
			return 64
		}
		return 0
	}
	readerDone := make(chan struct{})
	connDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		defer s.recoverPanic("reading a session's input")
		s.readInput(conn, sess, connDone)
	}()
	if !notices {
		// An older client: notices are left out of what it is sent.
		inner := send
		send = func(t uint8, hdr any, body []byte) error {
			if t == proto.TNotice {
				return nil
			}
			return inner(t, hdr, body)
		}
	}
	ended := s.streamOutput(conn.Budget, send, sess, offset, readerDone, nc)
	detach()
	if ended {
		// The exit is sent: say no more, and let the client read it and
		// close (closing now, with its input unread, would reset the
		// connection and could lose the exit).
		if cw, ok := nc.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		select {
		case <-readerDone:
		case <-time.After(time.Second):
		}
	}
	// The input reader ends with the connection, giving back whatever it
	// holds: nothing of a client outlives its connection.
	close(connDone)
	nc.Close()
	<-readerDone
}

func badRequest(msg string) *proto.Error {
	return &proto.Error{Code: proto.CodeBadRequest, Message: msg}
}

// openSession starts an invocation (Invoke) or finds the session to resume
// (Attach), returning where its output starts. The caller must count the
// session's reader down when done.
func (s *Server) openSession(f *wire.Frame) (*Instance, *session, int64, *proto.Error) {
	var req struct {
		proto.Invoke
		Session string `json:"session"`
		Offset  int64  `json:"offset"`
	}
	if err := f.Unmarshal(&req); err != nil {
		return nil, nil, 0, badRequest(err.Error())
	}
	in := s.lookup(req.Token, false)
	if in == nil {
		return nil, nil, 0, s.tokenError(req.Token)
	}
	if f.Type == proto.TAttach {
		in.mu.Lock()
		sess := in.sessions[req.Session]
		if sess != nil {
			if sess.readers >= maxReaders || in.readers >= maxInstanceReaders {
				in.mu.Unlock()
				return nil, nil, 0, &proto.Error{Code: proto.CodeBusy, Message: "busy, retry later: this session (or instance) already has its most attached clients"}
			}
			sess.readers++
			in.readers++
		}
		in.mu.Unlock()
		if sess == nil {
			return nil, nil, 0, &proto.Error{Code: proto.CodeNotFound, Message: "this instance has no session " + truncate(req.Session, 40) + " (its output is kept 10 minutes after it ends)"}
		}
		if err := sess.out.validOffset(req.Offset); err != nil {
			in.mu.Lock()
			sess.readers--
			in.readers--
			in.mu.Unlock()
			code := proto.CodeBadRequest
			if sess.out.discardedWhy() != "" {
				code = proto.CodeGone
			}
			return nil, nil, 0, &proto.Error{Code: code, Message: err.Error()}
		}
		return in, sess, req.Offset, nil
	}
	if len(req.Args) > maxArgs {
		return nil, nil, 0, badRequest("arguments are longer than 64 KB")
	}
	if len(req.Args) > 0 {
		var probe []json.RawMessage
		if json.Unmarshal(req.Args, &probe) != nil {
			return nil, nil, 0, badRequest("args must be a JSON array")
		}
		if d := jsonDepth(req.Args); d > maxArgsDepth {
			return nil, nil, 0, badRequest(fmt.Sprintf("arguments nest %d deep, more than the %d allowed: pass deeper data as a string", d, maxArgsDepth))
		}
	}
	in.mu.Lock()
	full := in.readers >= maxInstanceReaders
	in.mu.Unlock()
	if full {
		return nil, nil, 0, &proto.Error{Code: proto.CodeBusy, Message: fmt.Sprintf("busy, retry later: %d clients are attached to this instance's invocations", maxInstanceReaders)}
	}
	sess, err := in.newSession(req.Args)
	if err != nil {
		if pe, ok := err.(*proto.Error); ok {
			return nil, nil, 0, pe
		}
		return nil, nil, 0, internalError(err.Error())
	}
	sess.start()
	if b := s.box(); b.ends() && !time.Now().Before(b.drain) {
		in.noticeSession(sess, b.notice())
	}
	in.mu.Lock()
	sess.readers++
	in.readers++
	in.mu.Unlock()
	return in, sess, 0, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// readInput feeds client input frames to the session until the client
// disconnects, the connection is done or the invocation ends. A full
// queue stops the reading: the client meets TCP's back-pressure, bentod
// holds at most the queue.
func (s *Server) readInput(conn *wire.Conn, sess *session, connDone <-chan struct{}) {
	for {
		f, err := conn.Read()
		if err != nil {
			return
		}
		switch f.Type {
		case proto.TInput:
			select {
			case sess.input <- f:
				select {
				case <-sess.fin:
					sess.drainInput() // it ended meanwhile: give the bytes back
					return
				default:
				}
			case <-sess.fin:
				f.Release()
				return
			case <-connDone:
				f.Release()
				return
			}
		case proto.TInputEOF:
			f.Release()
			sess.eofOnce.Do(func() { close(sess.eof) })
		default:
			f.Release()
			return
		}
	}
}

// sendTampered tells the client that a protected session's output failed
// its integrity check (FS Protect), when err says so.
func sendTampered(send func(uint8, any, []byte) error, err error) {
	if errors.Is(err, fsprotect.ErrTampered) {
		_ = send(proto.TError, internalError("the session's output failed its integrity check (FS Protect): it was changed on the server's disk"), nil)
	}
}

// streamOutput sends the session's records from offset until the exit
// record, waiting for new output as it comes, and reports whether it sent
// the exit. Each record is charged to the client while it is being sent.
func (s *Server) streamOutput(bud wire.Budget, send func(uint8, any, []byte) error, sess *session, off int64, readerDone <-chan struct{}, nc net.Conn) bool {
	r, err := sess.out.reader()
	if err != nil {
		_ = send(proto.TError, proto.Error{Code: proto.CodeGone, Message: "the session's output is gone"}, nil)
		return false
	}
	defer r.Close()
	for {
		size, exitAt, discarded, notify := sess.out.state()
		if discarded != "" {
			_ = send(proto.TError, proto.Error{Code: proto.CodeGone, Message: discarded}, nil)
			return false
		}
		if exitAt >= 0 && off >= size {
			// Attached at the very end of a finished session (the offset
			// the server gave with the exit): the exit again, at once.
			off = exitAt
		}
		for off < size {
			kind, n, _, err := sess.out.record(r, off, false)
			if err != nil {
				sendTampered(send, err)
				return false
			}
			charged := n
			if n <= wire.FreeFrame {
				charged = 0 // small records wait for nobody
			}
			if charged > 0 {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				err = bud.Acquire(ctx, charged)
				cancel()
			}
			if err != nil {
				_ = send(proto.TError, proto.Error{Code: proto.CodeBusy, Message: "busy, retry later: too much output in flight; reattach at offset to go on"}, nil)
				return false
			}
			_, _, data, err := sess.out.record(r, off, true)
			if err != nil {
				bud.Release(charged)
				sendTampered(send, err)
				return false
			}
			next := off + recHeader + n
			switch kind {
			case recData:
				err = send(proto.TOutput, proto.Output{Offset: next}, data)
				bud.Release(charged)
				if err != nil {
					return false
				}
			case recNotice:
				var n proto.Notice
				_ = json.Unmarshal(data, &n)
				bud.Release(charged)
				n.Offset = next
				if send(proto.TNotice, n, nil) != nil {
					return false
				}
			case recExit:
				var exit proto.Exit
				_ = json.Unmarshal(data, &exit)
				bud.Release(charged)
				exit.Offset = next
				return send(proto.TExit, exit, nil) == nil
			default:
				bud.Release(charged)
				return false
			}
			off = next
		}
		// A session waiting for output stays busy: it is closed to make
		// room only when its address holds more than its fair share.
		select {
		case <-notify:
		case <-readerDone:
			return false // the client went away; output stays for a reattach
		}
	}
}

// maxArgsDepth bounds how deep an invocation's arguments nest (the
// array of arguments itself is depth 1). The python image's driver
// decodes them with CPython's recursive JSON scanner, which stops at the
// interpreter's recursion limit (1000) and took the driver, and every
// invocation running in it, down with it; no image needs more.
const maxArgsDepth = 100

// jsonDepth returns how deep the arrays and objects of valid JSON nest.
func jsonDepth(b []byte) int {
	depth, most := 0, 0
	in, esc := false, false
	for _, c := range b {
		switch {
		case in && esc:
			esc = false
		case in && c == '\\':
			esc = true
		case in && c == '"':
			in = false
		case in:
		case c == '"':
			in = true
		case c == '[' || c == '{':
			depth++
			most = max(most, depth)
		case c == ']' || c == '}':
			depth--
		}
	}
	return most
}
