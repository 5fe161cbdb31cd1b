package client

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/wire"
)

// UnsupportedError is a request the server does not serve: its bentod is
// older than the request (it does not list the feature in its welcome).
type UnsupportedError struct {
	Addr, Server, Feature string
}

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("the server at %s (%s) does not serve %q requests: its bentod is older than this client; ask its operator to upgrade bentod", e.Addr, e.Server, e.Feature)
}

// dialFeature dials and checks that the server serves feature.
func (c *Client) dialFeature(ctx context.Context, feature string) (*wire.Conn, net.Conn, error) {
	conn, nc, w, err := c.dialWelcome(ctx)
	if err != nil {
		return nil, nil, err
	}
	if !w.Has(feature) {
		nc.Close()
		return nil, nil, &UnsupportedError{Addr: c.Addr, Server: w.Server, Feature: feature}
	}
	return conn, nc, nil
}

// LogEnd is how a log stream ended.
type LogEnd = proto.LogEnd

// Updated is an update's outcome.
type Updated = proto.Updated

// LogStream is the function's log, as the server sends it.
type LogStream struct {
	// Offset is the position after what was received: Logs from it
	// again receives nothing twice.
	Offset int64
	conn   *wire.Conn
	nc     net.Conn
	end    *LogEnd
}

// Logs opens the function's own log (what its log() host call wrote),
// with the instance's invocation or shutdown token, from offset (0: the
// oldest line the server keeps). With follow, the stream goes on with new
// lines until the instance ends, ctx ends or Close.
func (c *Client) Logs(ctx context.Context, token string, follow bool, offset int64) (*LogStream, error) {
	dctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	conn, nc, err := c.dialFeature(dctx, proto.FeatureLogs)
	if err != nil {
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	if err := conn.Send(proto.TLogs, proto.Logs{Token: token, Follow: follow, Offset: offset}, nil); err != nil {
		nc.Close()
		return nil, &ConnError{err}
	}
	if !follow {
		// The whole log comes at once: it is bounded by the request's time.
		if dl, ok := dctx.Deadline(); ok {
			nc.SetReadDeadline(dl.Add(c.timeout()))
		}
	}
	if ctx.Done() != nil {
		context.AfterFunc(ctx, func() { nc.Close() })
	}
	return &LogStream{Offset: offset, conn: conn, nc: nc}, nil
}

// Recv returns the next piece of the log and how many bytes before it the
// server no longer kept; at the end, nil data and the LogEnd.
func (l *LogStream) Recv() (data []byte, skipped int64, end *LogEnd, err error) {
	if l.end != nil {
		return nil, 0, l.end, nil
	}
	f, err := l.conn.Read()
	if err != nil {
		return nil, 0, nil, &ConnError{err}
	}
	defer f.Release()
	switch f.Type {
	case proto.TLogData:
		var d proto.LogData
		if err := f.Unmarshal(&d); err != nil {
			return nil, 0, nil, &ConnError{err}
		}
		if d.Offset < l.Offset || d.Skipped < 0 {
			return nil, 0, nil, &ConnError{fmt.Errorf("the server sent a log piece at offset %d, before %d", d.Offset, l.Offset)}
		}
		l.Offset = d.Offset
		return append([]byte(nil), f.Body...), d.Skipped, nil, nil
	case proto.TLogEnd:
		var e LogEnd
		if err := f.Unmarshal(&e); err != nil {
			return nil, 0, nil, &ConnError{err}
		}
		l.end = &e
		return nil, 0, &e, nil
	}
	return nil, 0, nil, decode(f, proto.TLogData, nil)
}

// Close disconnects.
func (l *LogStream) Close() error { return l.nc.Close() }

// Update replaces the code and manifest of a running instance with fn,
// with its shutdown token. It keeps its tokens and stored data; the
// invocations running end (told why), and the new code answers from the
// next invocation. A refused update (the policy, code that does not load)
// leaves the old code running.
func (c *Client) Update(ctx context.Context, shutdownToken string, fn *Function) (*Updated, error) {
	// The server waits up to 90 s for the new code to start.
	ctx, cancel := context.WithTimeout(ctx, c.timeout()+90*time.Second)
	defer cancel()
	conn, nc, err := c.dialFeature(ctx, proto.FeatureUpdate)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	ents, body := proto.PackFiles(fn.Files)
	if err := conn.Send(proto.TUpdate, proto.Update{Token: shutdownToken, Manifest: string(fn.Manifest), Files: ents}, body); err != nil {
		return nil, &ConnError{err}
	}
	var u Updated
	if err := expect(conn, proto.TUpdated, &u); err != nil {
		return nil, err
	}
	return &u, nil
}
