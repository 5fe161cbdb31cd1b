package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/torbento/bento/internal/netlimit"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/wire"
)

// Bounds of log readers: how many clients may read one instance's log at
// once, and the most bentod reads of it into memory for one of them (the
// piece being sent, charged to the client's byte budget while it is).
const (
	maxLogReaders = 8
	// ownerLogReaders of them are kept for the shutdown token's holder.
	ownerLogReaders = 2
	logChunk        = 16 << 10
)

// features are the requests beyond version 1's first set that this
// bentod serves (proto.Welcome.Features).
var features = []string{proto.FeatureLogs, proto.FeatureUpdate}

// removeFunctionLog deletes an instance's log files.
func removeFunctionLog(dir string) {
	_ = os.Remove(filepath.Join(dir, "function.log"))
	_ = os.Remove(filepath.Join(dir, "function.log.1"))
}

// wakeLogReadersLocked tells following readers a line was written. The
// caller holds logMu.
func (in *Instance) wakeLogReadersLocked() {
	if in.logWake != nil {
		close(in.logWake)
		in.logWake = nil
	}
}

// readLog reads at most n bytes of the log from position pos: the piece,
// the position after it, how many bytes before it are no longer kept,
// and a channel closed when more is written (set only when pos is at the
// end).
func (in *Instance) readLog(pos int64, n int) (data []byte, next, skipped int64, wake <-chan struct{}, err error) {
	in.logMu.Lock()
	defer in.logMu.Unlock()
	if pos > in.logEnd {
		// A position from before a restart of bentod, or made up: from
		// the oldest line kept.
		pos = 0
	}
	if pos < in.logOld {
		skipped, pos = in.logOld-pos, in.logOld
	}
	if pos >= in.logEnd {
		if in.logWake == nil {
			in.logWake = make(chan struct{})
		}
		return nil, pos, skipped, in.logWake, nil
	}
	name, start, end, mem := "function.log", in.logCur, in.logEnd, in.logMem[0]
	if pos < in.logCur {
		name, start, end, mem = "function.log.1", in.logOld, in.logCur, in.logMem[1]
	}
	if in.key != nil { // in memory (FS Protect)
		from := min(pos-start, int64(len(mem)))
		to := min(from+int64(n), int64(len(mem)))
		if from == to {
			return nil, end, skipped, nil, nil
		}
		return bytes.Clone(mem[from:to]), pos + (to - from), skipped, nil, nil
	}
	f, err := os.Open(filepath.Join(in.dir, name))
	if err != nil {
		return nil, pos, skipped, nil, err
	}
	defer f.Close()
	buf := make([]byte, min(int64(n), end-pos))
	m, err := f.ReadAt(buf, pos-start)
	if m == 0 && err != nil {
		if errors.Is(err, io.EOF) {
			// Shorter than counted (a failed write): go on after it.
			return nil, end, skipped, nil, nil
		}
		return nil, pos, skipped, nil, err
	}
	return buf[:m], pos + int64(m), skipped, nil, nil
}

// serveLogs streams an instance's log to the holder of either of its
// tokens (proto.Logs). Each piece is charged to the client's byte budget
// while it is sent, so a client makes bentod hold at most logChunk bytes
// for it; with Follow the stream goes on until the instance ends or the
// client goes away.
func (s *Server) serveLogs(conn *wire.Conn, nc net.Conn, f *wire.Frame, log *slog.Logger) {
	var req proto.Logs
	err := f.Unmarshal(&req)
	f.Release()
	wt := s.policy().Daemon.WriteTimeout
	send := func(t uint8, hdr any, body []byte) error {
		_ = nc.SetWriteDeadline(time.Now().Add(wt))
		return conn.Send(t, hdr, body)
	}
	if err == nil {
		err = req.Check()
	}
	if err != nil {
		_ = send(proto.TError, badRequest(err.Error()), nil)
		return
	}
	in := s.lookup(req.Token, false)
	owner := false
	if in == nil {
		in, owner = s.lookup(req.Token, true), true
	}
	if in == nil {
		_ = send(proto.TError, s.tokenError(req.Token), nil)
		return
	}
	// Holders of the invocation token (which may be shared widely) take
	// at most all but ownerLogReaders of the places: its owner can always
	// read its log.
	limit := maxLogReaders - ownerLogReaders
	if owner {
		limit = maxLogReaders
	}
	in.mu.Lock()
	full := in.logReaders >= limit
	if !full {
		in.logReaders++
	}
	in.mu.Unlock()
	if full {
		_ = send(proto.TError, &proto.Error{Code: proto.CodeBusy, Message: "busy, retry later: this instance's log already has its most readers"}, nil)
		return
	}
	defer func() {
		in.mu.Lock()
		in.logReaders--
		in.mu.Unlock()
	}()
	// The client says nothing more: anything it sends, or its going
	// away, ends the stream.
	gone := make(chan struct{})
	conn.Limit = func(uint8) int { return 0 }
	go func() {
		defer close(gone)
		for {
			fr, err := conn.Read()
			if err != nil {
				return
			}
			fr.Release()
		}
	}()
	defer func() { nc.Close(); <-gone }()
	bud := conn.Budget
	pos := req.Offset
	for {
		// Whether the instance had ended is read before the log, so that
		// every line it wrote is sent before the end is told.
		ended := in.isEnded()
		var charged int64 = logChunk
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := bud.Acquire(ctx, charged)
		cancel()
		if err != nil {
			_ = send(proto.TError, &proto.Error{Code: proto.CodeBusy, Message: "busy, retry later: too much output in flight; read the log again from its offset"}, nil)
			return
		}
		data, next, skipped, wake, err := in.readLog(pos, logChunk)
		if err != nil {
			bud.Release(charged)
			log.Warn("reading a function's log", "instance", in.id, "err", err)
			_ = send(proto.TError, internalError("the function's log could not be read"), nil)
			return
		}
		if len(data) > 0 || skipped > 0 {
			err = send(proto.TLogData, proto.LogData{Offset: next, Skipped: skipped}, data)
		}
		bud.Release(charged)
		if err != nil {
			return
		}
		pos = next
		if wake == nil {
			continue // more to send
		}
		if ended || !req.Follow {
			e := proto.LogEnd{Offset: pos, Ended: ended}
			if ended {
				in.mu.Lock()
				e.Reason = in.endReason
				in.mu.Unlock()
			}
			_ = send(proto.TLogEnd, e, nil)
			closeWrite(nc, gone)
			return
		}
		// Waiting for a new line, the connection is idle: when the
		// listener is full it may be closed for a newcomer (the client
		// resumes from its offset).
		netlimit.SetIdle(nc, true)
		select {
		case <-wake:
		case <-in.ended:
		case <-gone:
			return
		case <-s.closed:
			return
		}
		netlimit.SetIdle(nc, false)
	}
}

// closeWrite says no more and lets the client read the last frame before
// the connection closes (closing with its input unread could reset it).
func closeWrite(nc net.Conn, gone <-chan struct{}) {
	if cw, ok := nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	select {
	case <-gone:
	case <-time.After(time.Second):
	}
}
