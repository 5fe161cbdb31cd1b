package etap

import (
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Options set how a Conn sends.
type Options struct {
	// Rate, when positive, makes the sender emit exactly Rate records per
	// second, filling them from queued packets and padding when there are
	// none, so that an observer sees the same size and rate whatever the
	// traffic. When zero, full records go out as soon as they fill and a
	// partial record after FlushInterval.
	Rate float64
	// FlushInterval bounds how long a packet waits for a record to fill
	// (default 1 ms) when Rate is zero.
	FlushInterval time.Duration
	// Batch is how many full records are written to the transport in one
	// call when Rate is zero (default 8).
	Batch int
	// QueueBytes bounds packet bytes waiting to be sent; Send blocks
	// beyond it (default 4 MiB).
	QueueBytes int
}

// Conn is one end of an etap channel: Send packets one way, Recv them
// from the other.
type Conn struct {
	rw   io.ReadWriteCloser
	cfg  Config
	opts Options
	role Role

	// sending
	send     *keys
	smu      sync.Mutex
	scond    *sync.Cond
	pending  byteQueue // stream bytes not yet in a record
	closing  bool
	sendErr  error
	sendSeq  uint64
	sendDone chan struct{}

	// receiving
	recv     *keys
	recvSeq  uint64
	stream   byteQueue // received stream bytes not yet parsed
	recvErr  error
	consumed int  // bytes of the packet last returned, dropped at the next Recv
	closed   bool // the peer's close record arrived
	inBuf    []byte

	clock atomic.Int64 // trusted clock: latest authenticated packet time (ns)

	// Stats (read with the accessor methods).
	recordsOut, recordsIn, paddingOut atomic.Uint64
}

// Dial runs the handshake on rw as role and starts the sender.
func Dial(rw io.ReadWriteCloser, role Role, cfg Config, opts Options) (*Conn, error) {
	cc, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	send, recv, agreed, err := handshake(rw, role, cc)
	if err != nil {
		rw.Close()
		return nil, err
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = time.Millisecond
	}
	if opts.Batch <= 0 {
		opts.Batch = 8
	}
	if opts.QueueBytes <= 0 {
		opts.QueueBytes = 4 << 20
	}
	c := &Conn{rw: rw, cfg: agreed, opts: opts, role: role, send: send, recv: recv, sendDone: make(chan struct{}),
		inBuf: make([]byte, agreed.RecordSize+TagSize)}
	c.scond = sync.NewCond(&c.smu)
	go c.sender()
	return c, nil
}

// LinkType returns the link type of the gateway's packets, as the gateway
// said in its hello (0: it did not say).
func (c *Conn) LinkType() uint16 { return c.cfg.LinkType }

// RecordSize returns the agreed plaintext record size.
func (c *Conn) RecordSize() int { return c.cfg.RecordSize }

// WireRecordSize is the size of every record on the wire.
func (c *Conn) WireRecordSize() int { return c.cfg.RecordSize + TagSize }

// Send queues a packet. It blocks while the queue is full.
func (c *Conn) Send(p Packet) error {
	if len(p.Data) > MaxPacket {
		return errPacketTooLarge
	}
	c.smu.Lock()
	defer c.smu.Unlock()
	for c.pending.Len() >= c.opts.QueueBytes && c.sendErr == nil && !c.closing {
		c.scond.Wait()
	}
	if c.sendErr != nil {
		return c.sendErr
	}
	if c.closing {
		return errors.New("etap: send on a closed channel")
	}
	c.pending.AppendFunc(entryHeader+len(p.Data), func(b []byte) []byte { return appendEntry(b, p) })
	if c.pending.Len() >= c.cfg.RecordSize-recordTrailer || c.pending.Len() == entryHeader+len(p.Data) {
		c.scond.Broadcast() // a record is full, or the flush timer must start
	}
	return nil
}

// CloseSend sends what is queued, then the close record, and waits until
// it is written. The channel can still receive.
func (c *Conn) CloseSend() error {
	c.smu.Lock()
	c.closing = true
	c.scond.Broadcast()
	c.smu.Unlock()
	<-c.sendDone
	c.smu.Lock()
	defer c.smu.Unlock()
	return c.sendErr
}

// Close ends both directions and closes the transport.
func (c *Conn) Close() error {
	err := c.CloseSend()
	if cerr := c.rw.Close(); err == nil {
		err = cerr
	}
	return err
}

// sender turns queued stream bytes into records.
func (c *Conn) sender() {
	defer close(c.sendDone)
	if c.opts.Rate > 0 {
		c.sendAtRate()
	} else {
		c.sendASAP()
	}
}

// sendAtRate emits exactly one record per tick: as much queued stream as
// fits, or padding.
func (c *Conn) sendAtRate() {
	body := c.cfg.RecordSize - recordTrailer
	tick := time.NewTicker(time.Duration(float64(time.Second) / c.opts.Rate))
	defer tick.Stop()
	var out []byte
	for range tick.C {
		c.smu.Lock()
		n := min(c.pending.Len(), body)
		last := c.closing && c.pending.Len() == n
		out = c.appendRecord(out[:0], recData, c.pending.Bytes()[:n])
		if n == 0 {
			c.paddingOut.Add(1)
		}
		c.pending.Consume(n)
		c.scond.Broadcast()
		c.smu.Unlock()
		if c.write(out) != nil {
			return
		}
		if last {
			<-tick.C
			c.writeClose()
			return
		}
	}
}

// sendASAP emits full records as soon as they fill, up to Batch of them in
// one write, and a partial record once a packet has waited FlushInterval.
func (c *Conn) sendASAP() {
	body := c.cfg.RecordSize - recordTrailer
	out := make([]byte, 0, c.opts.Batch*(c.cfg.RecordSize+TagSize))
	for {
		c.smu.Lock()
		var deadline time.Time
		for c.pending.Len() < body && !c.closing && c.sendErr == nil {
			if c.pending.Len() == 0 {
				deadline = time.Time{}
				c.scond.Wait()
				continue
			}
			if deadline.IsZero() {
				deadline = time.Now().Add(c.opts.FlushInterval)
			}
			if !time.Now().Before(deadline) {
				break
			}
			c.waitUntil(deadline)
		}
		if c.sendErr != nil {
			c.smu.Unlock()
			return
		}
		out = out[:0]
		for c.pending.Len() >= body && len(out) < cap(out) {
			out = c.appendRecord(out, recData, c.pending.Bytes()[:body])
			c.pending.Consume(body)
		}
		if len(out) == 0 && c.pending.Len() > 0 {
			n := c.pending.Len()
			out = c.appendRecord(out, recData, c.pending.Bytes())
			c.pending.Consume(n)
		}
		last := c.closing && c.pending.Len() == 0
		c.scond.Broadcast()
		c.smu.Unlock()
		if c.write(out) != nil {
			return
		}
		if last {
			c.writeClose()
			return
		}
	}
}

// waitUntil waits on scond until woken or until t. Callers hold smu.
func (c *Conn) waitUntil(t time.Time) {
	timer := time.AfterFunc(time.Until(t), func() {
		c.smu.Lock()
		c.scond.Broadcast()
		c.smu.Unlock()
	})
	c.scond.Wait()
	timer.Stop()
}

// appendRecord seals one record carrying data and appends it to out. The
// plaintext is laid out in out itself and sealed in place. Callers hold
// smu.
func (c *Conn) appendRecord(out []byte, typ byte, data []byte) []byte {
	start := len(out)
	size := c.cfg.RecordSize
	out = slices.Grow(out, size+TagSize)[:start+size]
	copy(out[start:], data)
	clear(out[start+len(data) : start+size-recordTrailer])
	binary.BigEndian.PutUint32(out[start+size-recordTrailer:], uint32(len(data)))
	out[start+size-1] = typ
	sealed, err := c.send.seal(out[:start], out[start:start+size], c.sendSeq)
	if err != nil {
		c.sendErr = err
		return out[:start]
	}
	c.sendSeq++
	return sealed
}

func (c *Conn) write(out []byte) error {
	if len(out) == 0 {
		return nil
	}
	if _, err := c.rw.Write(out); err != nil {
		c.smu.Lock()
		c.sendErr = err
		c.scond.Broadcast()
		c.smu.Unlock()
		return err
	}
	c.recordsOut.Add(uint64(len(out) / (c.cfg.RecordSize + TagSize)))
	return nil
}

func (c *Conn) writeClose() {
	c.smu.Lock()
	out := c.appendRecord(nil, recClose, nil)
	c.smu.Unlock()
	_ = c.write(out)
}

// Recv returns the next packet from the peer. The packet's Data is valid
// until the next call of Recv (use Packet.Clone to keep it). At the peer's
// close Recv returns io.EOF; a record that fails verification or a channel
// cut short yields a *RecordError.
func (c *Conn) Recv() (Packet, error) {
	c.stream.Consume(c.consumed)
	c.consumed = 0
	for {
		if p, n, err := parseEntry(c.stream.Bytes()); err != nil {
			c.recvErr = err
			return Packet{}, err
		} else if n > 0 {
			c.consumed = n
			c.advanceClock(p.Time.UnixNano())
			return p, nil
		}
		if c.recvErr != nil {
			return Packet{}, c.recvErr
		}
		if c.closed {
			if c.stream.Len() > 0 {
				c.recvErr = &RecordError{Seq: c.recvSeq, Kind: "truncated"}
			} else {
				c.recvErr = io.EOF
			}
			return Packet{}, c.recvErr
		}
		c.recvErr = c.readRecord()
	}
}

// readRecord reads, verifies and unpacks the next record.
func (c *Conn) readRecord() error {
	if _, err := io.ReadFull(c.rw, c.inBuf); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return &RecordError{Seq: c.recvSeq, Kind: "truncated"}
		}
		return err
	}
	var openErr error
	var plain []byte
	c.stream.AppendFunc(c.cfg.RecordSize, func(b []byte) []byte {
		out, err := c.recv.open(b, c.inBuf, c.recvSeq)
		if err != nil {
			openErr = err
			return b
		}
		plain = out[len(b):]
		return out
	})
	if openErr != nil {
		if got, ok := c.recv.probe(c.inBuf, c.recvSeq, 256); ok {
			kind := "replayed"
			if got > c.recvSeq {
				kind = "reordered or dropped"
			}
			return &RecordError{Seq: c.recvSeq, Kind: kind, Got: got}
		}
		return &RecordError{Seq: c.recvSeq, Kind: "tampered"}
	}
	c.recvSeq++
	c.recordsIn.Add(1)
	typ := plain[len(plain)-1]
	n := int(binary.BigEndian.Uint32(plain[len(plain)-recordTrailer:]))
	// Keep only the stream bytes: drop the padding and trailer just added.
	c.stream.Truncate(c.cfg.RecordSize - min(n, c.cfg.RecordSize))
	if n > c.cfg.RecordSize-recordTrailer {
		return &RecordError{Seq: c.recvSeq - 1, Kind: "tampered"}
	}
	switch typ {
	case recData:
	case recClose:
		c.closed = true
	default:
		return &RecordError{Seq: c.recvSeq - 1, Kind: "tampered"}
	}
	return nil
}

// Buffered reports whether a packet can be returned by Recv without
// reading from the transport.
func (c *Conn) Buffered() bool {
	_, n, _ := parseEntry(c.stream.Bytes()[c.consumed:])
	return n > 0
}

func (c *Conn) advanceClock(ns int64) {
	for {
		old := c.clock.Load()
		if ns <= old || c.clock.CompareAndSwap(old, ns) {
			return
		}
	}
}

// Clock is the trusted clock: the latest authenticated packet timestamp
// received, never the local system clock. It never goes backwards.
func (c *Conn) Clock() time.Time { return time.Unix(0, c.clock.Load()) }

// Stats are record counters.
type Stats struct {
	RecordsOut, PaddingOut, RecordsIn uint64
}

// Stats returns the channel's record counters.
func (c *Conn) Stats() Stats {
	return Stats{RecordsOut: c.recordsOut.Load(), PaddingOut: c.paddingOut.Load(), RecordsIn: c.recordsIn.Load()}
}
