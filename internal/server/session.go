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
	in, sess, offset, perr := s.openSession(f)
	if perr != nil {
		_ = conn.Send(proto.TError, perr, nil)
		return
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

func badRequest(msg string) *proto.Error {
	return &proto.Error{Code: proto.CodeBadRequest, Message: msg}
}

// openSession starts an invocation (Invoke) or finds the session to resume
// (Attach), returning where its output starts.
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
		in.mu.Unlock()
		if sess == nil {
			return nil, nil, 0, &proto.Error{Code: proto.CodeNotFound, Message: "this instance has no session " + req.Session}
		}
		if err := sess.out.validOffset(req.Offset); err != nil {
			return nil, nil, 0, badRequest(err.Error())
		}
		return in, sess, req.Offset, nil
	}
	if len(req.Args) > 0 {
		var probe []json.RawMessage
		if json.Unmarshal(req.Args, &probe) != nil {
			return nil, nil, 0, badRequest("args must be a JSON array")
		}
	}
	sess, err := in.newSession(req.Args)
	if err != nil {
		if pe, ok := err.(*proto.Error); ok {
			return nil, nil, 0, pe
		}
		return nil, nil, 0, &proto.Error{Code: proto.CodeInternal, Message: err.Error()}
	}
	return in, sess, 0, nil
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
