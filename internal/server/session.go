package server

import (
	"encoding/json"
	"net"
	"time"

	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/wire"
)

// serveSession runs an invocation or reattachment on this connection:
// output streams from the session log from the client's offset, input from
// the client feeds recv(). The connection closes when the session ends.
func (s *Server) serveSession(conn *wire.Conn, nc net.Conn, f *wire.Frame) {
	var (
		in     *Instance
		sess   *session
		offset int64
	)
	switch f.Type {
	case proto.TInvoke:
		var req proto.Invoke
		if err := f.Unmarshal(&req); err != nil {
			_ = conn.Send(proto.TError, proto.Error{Code: proto.CodeBadRequest, Message: err.Error()}, nil)
			return
		}
		if in = s.lookup(req.Token, false); in == nil {
			_ = conn.Send(proto.TError, errBadToken, nil)
			return
		}
		if len(req.Args) > 0 {
			var probe []json.RawMessage
			if json.Unmarshal(req.Args, &probe) != nil {
				_ = conn.Send(proto.TError, proto.Error{Code: proto.CodeBadRequest, Message: "args must be a JSON array"}, nil)
				return
			}
		}
		var err error
		if sess, err = in.newSession(req.Args); err != nil {
			if pe, ok := err.(*proto.Error); ok {
				_ = conn.Send(proto.TError, pe, nil)
			} else {
				_ = conn.Send(proto.TError, proto.Error{Code: proto.CodeInternal, Message: err.Error()}, nil)
			}
			return
		}
	case proto.TAttach:
		var req proto.Attach
		if err := f.Unmarshal(&req); err != nil {
			_ = conn.Send(proto.TError, proto.Error{Code: proto.CodeBadRequest, Message: err.Error()}, nil)
			return
		}
		if in = s.lookup(req.Token, false); in == nil {
			_ = conn.Send(proto.TError, errBadToken, nil)
			return
		}
		in.mu.Lock()
		sess = in.sessions[req.Session]
		in.mu.Unlock()
		if sess == nil {
			_ = conn.Send(proto.TError, proto.Error{Code: proto.CodeNotFound, Message: "this instance has no session " + req.Session}, nil)
			return
		}
		if err := sess.out.validOffset(req.Offset); err != nil {
			_ = conn.Send(proto.TError, proto.Error{Code: proto.CodeBadRequest, Message: err.Error()}, nil)
			return
		}
		offset = req.Offset
	}
	if conn.Send(proto.TSession, proto.Session{Session: sess.id, Offset: offset}, nil) != nil {
		return
	}
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		s.readInput(conn, in, sess)
	}()
	s.streamOutput(conn, sess, offset, readerDone)
}

// readInput feeds client input frames to the session until the client
// disconnects or the session ends.
func (s *Server) readInput(conn *wire.Conn, in *Instance, sess *session) {
	for {
		f, err := conn.Read()
		if err != nil {
			return
		}
		switch f.Type {
		case proto.TInput:
			select {
			case sess.input <- f.Body:
			case <-in.ended:
				return
			}
		case proto.TInputEOF:
			sess.once.Do(func() { close(sess.eof) })
		default:
			return
		}
	}
}

// streamOutput sends the session's records from offset until the exit
// record, waiting for new output as it comes.
func (s *Server) streamOutput(conn *wire.Conn, sess *session, off int64, readerDone <-chan struct{}) {
	r, err := sess.out.reader()
	if err != nil {
		return
	}
	defer r.Close()
	for {
		size, _, notify := sess.out.state()
		for off < size {
			kind, data, next, err := readRecord(r, off)
			if err != nil {
				return
			}
			off = next
			switch kind {
			case recData:
				if conn.Send(proto.TOutput, proto.Output{Offset: off}, data) != nil {
					return
				}
			case recExit:
				var exit proto.Exit
				_ = json.Unmarshal(data, &exit)
				exit.Offset = off
				_ = conn.Send(proto.TExit, exit, nil)
				// Give the client a moment to read before the close.
				time.Sleep(10 * time.Millisecond)
				return
			}
		}
		select {
		case <-notify:
		case <-readerDone:
			return // the client went away; output stays for a reattach
		}
	}
}
