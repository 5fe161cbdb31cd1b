// Package echo generates FlashFlow echo traffic and verifies what comes
// back by random sampling, as tor proposal 316 Appendix A describes, for
// one byte stream (one echo connection) at a time.
//
// A measurer sends each connection an unpredictable stream from a
// Source. The stream is cut into chunks of CellData bytes (the data one
// RELAY_DATA cell carries): chunk i is bytes [i·CellData, (i+1)·CellData).
// The chunks are grouped into buckets of N chunks; when the sender
// enters a bucket it picks one of the bucket's chunks at random and
// keeps a copy of that chunk only. The echoed stream comes back in
// order (tor streams are ordered per connection), so when it reaches a
// kept chunk the receiver compares it and fails on any difference.
//
// The sampled positions come from a random generator seeded from
// crypto/rand, separate from the data: the target cannot derive them
// even if it learned the data key. A target that alters, drops or fakes
// one chunk per bucket survives X buckets with probability ((N−1)/N)^X;
// one that alters more is caught sooner. A target that echoes bytes it
// was never sent (for example to inflate its throughput) is caught at
// once: echoing more bytes than were sent is an error.
//
// # Keys
//
// The data key must be secret from the target: 32 bytes fresh from
// crypto/rand for each measurement, known only to the measurer. Never
// use a key the target is told, such as the key that authenticates echo
// connections in MEAS_PARAMS: a target that can compute the stream can
// echo it without receiving it. Each connection of a measurement uses its
// own connection index, so no two connections carry the same stream.
//
// # Memory
//
// A Checker keeps one chunk per bucket between the moment the sender
// starts writing it and the moment the receiver has compared all of it.
// With L bytes in flight (sent but not yet echoed) at most
// ⌈L/(N·CellData)⌉ + 1 chunks are kept. The in-flight bytes are bounded
// by the transport's flow control (or by the caller, using InFlight).
//
// # Concurrency
//
// A Checker's Sender and Receiver may be used from two goroutines at
// once (typically a write loop and a read loop); each of them must be
// used by one goroutine at a time.
package echo

import (
	"bytes"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"sync"
)

const (
	// CellData is the number of data bytes one RELAY_DATA cell carries:
	// a cell's 509-byte payload less the 11-byte relay header.
	CellData = 498
	// CellSize is the size of a cell on a relay's OR connection (link
	// protocol 4 and later): 4-byte circuit ID, 1-byte command, 509-byte
	// payload.
	CellSize = 514

	// KeySize is the size of a Source's key.
	KeySize = 32

	// MinBucket and MaxBucket bound a Checker's bucket size N.
	MinBucket, MaxBucket = 1, 65535
)

// CellBytes converts data bytes carried by a tor stream into the bytes of
// the cells that carried them: ⌈dataBytes/CellData⌉·CellSize, saturating
// at math.MaxUint64.
//
// A relay's capacity is counted in cells: its OR connections, its
// bandwidth limits and its MEAS_BG background counts all see whole
// 514-byte cells, and a stream's data travels in RELAY_DATA cells of at
// most 498 data bytes each. Counting the data bytes alone would
// under-credit the relay by 3% against its own background counts.
// ⌈dataBytes/CellData⌉ is the fewest cells that can carry the data; tor
// may have used more, partly filled, cells, which are not credited: the
// relay is never credited more than it must have carried.
//
// Convert cumulative totals and report differences, for example
// CellBytes(total after second i) − CellBytes(total after second i−1),
// rather than converting each second's count: rounding each second up
// would credit up to one extra cell per second and connection.
func CellBytes(dataBytes uint64) uint64 {
	cells := dataBytes / CellData
	if dataBytes%CellData != 0 {
		cells++
	}
	hi, lo := bits.Mul64(cells, CellSize)
	if hi != 0 {
		return math.MaxUint64
	}
	return lo
}

// SendmeEvery: one flow-control cell (a circuit SENDME) travels back for
// this many data cells with congestion control, as tor 0.4.7 and later
// negotiate with exits (cc_sendme_inc 31); without it, circuit and stream
// SENDMEs come every 100 and 50 cells.
const SendmeEvery = 31

// SendmeBytes is the flow-control traffic that dataBytes of stream data
// cause in the opposite direction, in cell bytes. Like CellBytes, use it
// on cumulative totals.
func SendmeBytes(dataBytes uint64) uint64 {
	cells := dataBytes / CellData
	return cells / SendmeEvery * CellSize
}

// WireBytes is what dataBytes of echoed data made the relay carry in one
// direction: the data's cells and the SENDMEs for the echo coming back.
func WireBytes(dataBytes uint64) uint64 {
	c := CellBytes(dataBytes)
	s := SendmeBytes(dataBytes)
	if c+s < c {
		return math.MaxUint64
	}
	return c + s
}

// A Source generates one connection's echo data: an unpredictable stream,
// determined by a secret key and the connection's index, produced by
// ChaCha8 seeded with SHA-256(key ‖ index as 8 bytes big-endian).
type Source struct {
	conn uint64
	rng  *rand.ChaCha8
}

// NewSource returns the source of the stream for connection conn under
// key. See the package documentation about keys.
func NewSource(key [KeySize]byte, conn uint64) *Source {
	h := sha256.New()
	h.Write(key[:])
	h.Write(binary.BigEndian.AppendUint64(nil, conn))
	var seed [32]byte
	h.Sum(seed[:0])
	return &Source{conn: conn, rng: rand.NewChaCha8(seed)}
}

// Fill fills p with the next len(p) bytes of the stream. Calls may use
// any lengths: the stream does not depend on how it is read.
func (s *Source) Fill(p []byte) {
	s.rng.Read(p) // always fills p and returns nil
}

// ErrMismatch is matched (with errors.Is) by the *MismatchError a
// Receiver returns when a sampled chunk came back altered.
var ErrMismatch = errors.New("echoed data differs from the data sent")

// ErrExcess is returned (wrapped) when the peer echoes more bytes than
// were sent.
var ErrExcess = errors.New("peer echoed more bytes than were sent")

// A MismatchError reports a sampled chunk that came back altered.
type MismatchError struct {
	Conn  uint64 // the Source's connection index
	Chunk uint64 // the chunk's index in the stream: bytes [Chunk·CellData, (Chunk+1)·CellData)
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("echo: connection %d: echoed chunk %d (stream bytes %d to %d) differs from the chunk sent",
		e.Conn, e.Chunk, e.Chunk*CellData, (e.Chunk+1)*CellData-1)
}

// Is reports whether target is ErrMismatch.
func (e *MismatchError) Is(target error) bool { return target == ErrMismatch }

// sample is a kept copy of one chunk.
type sample struct {
	chunk uint64
	data  [CellData]byte
}

// A Checker generates and verifies one connection's echo traffic: its
// Sender writes the stream and keeps the sampled chunks, its Receiver
// compares the echoed stream with them.
type Checker struct {
	bucket uint64

	// Sender's state.
	src       *Source
	pick      *rand.Rand // sampled positions: crypto-seeded, not the data's generator
	sample    uint64     // chunk index sampled in the current bucket
	bucketEnd uint64     // first chunk index of the next bucket

	mu      sync.Mutex
	sent    uint64   // stream bytes written by the sender
	recv    uint64   // echoed bytes accepted by the receiver
	samples []sample // kept chunks, ascending; samples[head:] are outstanding
	head    int
	err     error // sticky: the first error the receiver found
}

// NewChecker returns a Checker for the stream of src, keeping one chunk in
// every bucket of N chunks, MinBucket <= N <= MaxBucket. It takes over
// src: nothing else may read from it.
func NewChecker(src *Source, bucket int) (*Checker, error) {
	var seed [32]byte
	crand.Read(seed[:]) // never fails (crypto/rand crashes the program instead)
	return newChecker(src, bucket, seed)
}

// newChecker is NewChecker with a given seed for the sampled positions:
// tests use it to be deterministic.
func newChecker(src *Source, bucket int, pickSeed [32]byte) (*Checker, error) {
	if src == nil {
		return nil, errors.New("echo: nil Source")
	}
	if bucket < MinBucket || bucket > MaxBucket {
		return nil, fmt.Errorf("echo: bucket size %d outside %d..%d", bucket, MinBucket, MaxBucket)
	}
	return &Checker{
		bucket: uint64(bucket),
		src:    src,
		pick:   rand.New(rand.NewChaCha8(pickSeed)),
	}, nil
}

// Sender returns the Checker's sending side.
func (c *Checker) Sender() *Sender { return (*Sender)(c) }

// Receiver returns the Checker's receiving side.
func (c *Checker) Receiver() *Receiver { return (*Receiver)(c) }

// Sent returns the number of bytes the sender has generated.
func (c *Checker) Sent() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sent
}

// Verified returns the number of echoed bytes the receiver has accepted.
func (c *Checker) Verified() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.recv
}

// InFlight returns the number of bytes sent but not yet echoed.
func (c *Checker) InFlight() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sent - c.recv
}

// Outstanding returns the number of kept chunks not yet fully compared.
func (c *Checker) Outstanding() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.samples) - c.head
}

// Err returns the first error the receiver found, or nil.
func (c *Checker) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Sender is the sending side of a Checker.
type Sender Checker

// Next fills buf with the next len(buf) bytes of the stream, to be sent
// in order, and keeps the sampled chunks among them. buf may have any
// length; whole multiples of CellData match the cells tor will use.
func (s *Sender) Next(buf []byte) {
	c := (*Checker)(s)
	c.src.Fill(buf)

	c.mu.Lock()
	defer c.mu.Unlock()
	start := c.sent
	end := start + uint64(len(buf))
	for pos := start; pos < end; {
		chunk := pos / CellData
		if chunk >= c.bucketEnd { // entering a new bucket: pick its chunk
			first := chunk - chunk%c.bucket
			c.sample = first + c.pick.Uint64N(c.bucket)
			c.bucketEnd = first + c.bucket
		}
		if chunk != c.sample {
			// Skip to the sampled chunk or, if it is behind, to the next bucket.
			next := c.bucketEnd
			if c.sample > chunk {
				next = c.sample
			}
			pos = min(end, next*CellData)
			continue
		}
		chunkStart := chunk * CellData
		if pos == chunkStart {
			c.push(chunk)
		}
		// Otherwise the previous call began this chunk: it is the last kept.
		stop := min(end, chunkStart+CellData)
		copy(c.samples[len(c.samples)-1].data[pos-chunkStart:], buf[pos-start:stop-start])
		pos = stop
	}
	c.sent = end
}

// push appends an empty kept chunk, reusing the queue's space.
func (c *Checker) push(chunk uint64) {
	if c.head > 0 && len(c.samples) == cap(c.samples) {
		n := copy(c.samples, c.samples[c.head:])
		c.samples = c.samples[:n]
		c.head = 0
	}
	c.samples = append(c.samples, sample{chunk: chunk})
}

// Receiver is the receiving side of a Checker.
type Receiver Checker

// Verify consumes the next len(b) echoed bytes, which may be any
// fragment of the stream, and compares those that fall in kept chunks.
// It returns len(b) if they are accepted.
//
// It fails, returning 0, with a *MismatchError (matching ErrMismatch) if
// a kept chunk differs, or with an error wrapping ErrExcess if b goes
// beyond what was sent. Errors are final: the measurement has failed and
// every later call returns the same error.
func (r *Receiver) Verify(b []byte) (verifiedBytes int, err error) {
	c := (*Checker)(r)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	start := c.recv
	if uint64(len(b)) > c.sent-start {
		c.err = fmt.Errorf("echo: connection %d: %w: %d more bytes echoed after %d, only %d were sent",
			c.src.conn, ErrExcess, len(b), start, c.sent)
		return 0, c.err
	}
	end := start + uint64(len(b))
	for c.head < len(c.samples) {
		s := &c.samples[c.head]
		chunkStart := s.chunk * CellData
		chunkEnd := chunkStart + CellData
		if chunkStart >= end {
			break
		}
		lo, hi := max(start, chunkStart), min(end, chunkEnd)
		if !bytes.Equal(s.data[lo-chunkStart:hi-chunkStart], b[lo-start:hi-start]) {
			c.err = &MismatchError{Conn: c.src.conn, Chunk: s.chunk}
			return 0, c.err
		}
		if chunkEnd > end {
			break // the rest of this chunk comes later
		}
		c.head++
	}
	if c.head == len(c.samples) {
		c.samples, c.head = c.samples[:0], 0
	}
	c.recv = end
	return len(b), nil
}
