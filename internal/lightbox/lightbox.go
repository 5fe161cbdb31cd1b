// Package lightbox runs the two ends of a LightBox deployment: the
// gateway, which takes packets from a capture and tunnels them over etap,
// and the middlebox, which receives them, hands them through a
// single-producer/single-consumer ring to a Processor, and either bounces
// the processed packets back to the gateway or sends them on directly.
package lightbox

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/torbento/bento/internal/lightbox/capture"
	"github.com/torbento/bento/internal/lightbox/etap"
	"github.com/torbento/bento/internal/lightbox/ring"
)

// Processor is a middlebox's packet logic. It runs on the middlebox's
// trusted side and may keep state; it returns the packets to pass on (the
// packet itself, none to drop it, or several).
type Processor interface {
	Process(p etap.Packet, now time.Time) []etap.Packet
}

// Forward passes every packet on unchanged.
type Forward struct{}

// Process implements Processor.
func (Forward) Process(p etap.Packet, _ time.Time) []etap.Packet { return []etap.Packet{p} }

// Models of deployment.
const (
	Bounce = "bounce" // processed packets return to the gateway
	Direct = "direct" // processed packets go on to the next hop (a capture file here)
)

// MiddleboxConfig configures RunMiddlebox.
type MiddleboxConfig struct {
	Conn      io.ReadWriteCloser // transport from the gateway
	Etap      etap.Config
	Options   etap.Options
	Model     string
	Out       io.Writer       // Direct: the next hop, written as pcap
	LinkType  layers.LinkType // Direct: link type of Out (0: the gateway's)
	Processor Processor
	// Setup, if set, makes the Processor once the gateway has said its
	// packets' link type (0 if it did not): the decoder must know it.
	Setup func(link layers.LinkType) (Processor, error)
}

// Stats summarize a run.
type Stats struct {
	Packets int
	Records etap.Stats
	Elapsed time.Duration
}

// RunMiddlebox serves one gateway until it closes the channel.
func RunMiddlebox(cfg MiddleboxConfig) (Stats, error) {
	start := time.Now()
	c, err := etap.Dial(cfg.Conn, etap.Middlebox, cfg.Etap, cfg.Options)
	if err != nil {
		return Stats{}, err
	}
	defer c.Close()
	if cfg.Setup != nil {
		if cfg.Processor, err = cfg.Setup(layers.LinkType(c.LinkType())); err != nil {
			return Stats{}, err
		}
	}
	if cfg.Processor == nil {
		cfg.Processor = Forward{}
	}
	if cfg.LinkType == 0 {
		cfg.LinkType = layers.LinkType(c.LinkType())
	}
	var emit func(etap.Packet) error
	switch cfg.Model {
	case Bounce, "":
		emit = c.Send
	case Direct:
		w := pcapgo.NewWriterNanos(cfg.Out)
		if err := w.WriteFileHeader(etap.MaxPacket, cfg.LinkType); err != nil {
			return Stats{}, err
		}
		emit = func(p etap.Packet) error {
			return w.WritePacket(gopacket.CaptureInfo{Timestamp: p.Time, CaptureLength: len(p.Data), Length: p.OrigLen}, p.Data)
		}
	default:
		return Stats{}, fmt.Errorf("unknown model %q (want %s or %s)", cfg.Model, Bounce, Direct)
	}
	// Network side → ring → processing side.
	r := ring.New[etap.Packet](1024, 64)
	recvErr := make(chan error, 1)
	go func() {
		for {
			p, err := c.Recv()
			if err != nil {
				r.Close()
				if err == io.EOF {
					err = nil
				}
				recvErr <- err
				return
			}
			r.Push(p.Clone())
			if !c.Buffered() {
				r.Flush() // the next Recv may wait: let the processor run
			}
		}
	}()
	st := Stats{}
	var emitErr error
	for {
		p, ok := r.Pop()
		if !ok {
			break
		}
		st.Packets++
		for _, out := range cfg.Processor.Process(p, c.Clock()) {
			if err := emit(out); err != nil && emitErr == nil {
				emitErr = err
			}
		}
	}
	err = <-recvErr
	if cerr := c.CloseSend(); err == nil {
		err = cerr
	}
	if err == nil {
		err = emitErr
	}
	st.Records, st.Elapsed = c.Stats(), time.Since(start)
	return st, err
}

// GatewayConfig configures RunGateway.
type GatewayConfig struct {
	Conn     io.ReadWriteCloser
	Etap     etap.Config
	Options  etap.Options
	Capture  *capture.Capture
	TUN      *capture.TUN // live source instead of Capture
	Packets  int          // TUN: stop after this many packets (0: until ctx ends)
	Realtime bool         // replay at the capture's timing
	Returned io.Writer    // Bounce: packets coming back, written as pcap (nil: discard)
	// ReturnTUN, in the bounce model, injects the packets coming back into
	// this TUN device: the gateway forwards what the middlebox let through.
	ReturnTUN *capture.TUN
}

// RunGateway sends the capture through etap and, when the middlebox
// bounces packets back, collects them.
func RunGateway(ctx context.Context, cfg GatewayConfig) (sent, returned Stats, err error) {
	start := time.Now()
	// The middlebox is told the packets' link type: a TUN gives raw IP.
	cfg.Etap.LinkType = uint16(layers.LinkTypeRaw)
	if cfg.Capture != nil {
		cfg.Etap.LinkType = uint16(cfg.Capture.LinkType)
	}
	c, err := etap.Dial(cfg.Conn, etap.Gateway, cfg.Etap, cfg.Options)
	if err != nil {
		return sent, returned, err
	}
	defer c.Close()
	back := make(chan error, 1)
	go func() {
		var w *pcapgo.Writer
		if cfg.Returned != nil {
			w = pcapgo.NewWriterNanos(cfg.Returned)
			link := layers.LinkTypeRaw
			if cfg.Capture != nil {
				link = cfg.Capture.LinkType
			}
			if err := w.WriteFileHeader(etap.MaxPacket, link); err != nil {
				back <- err
				return
			}
		}
		for {
			p, err := c.Recv()
			if err == io.EOF {
				back <- nil
				return
			}
			if err != nil {
				back <- err
				return
			}
			returned.Packets++
			if cfg.ReturnTUN != nil {
				if err := cfg.ReturnTUN.Write(p.Data); err != nil {
					back <- fmt.Errorf("injecting a returned packet: %w", err)
					return
				}
			}
			if w != nil {
				if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: p.Time, CaptureLength: len(p.Data), Length: p.OrigLen}, p.Data); err != nil {
					back <- err
					return
				}
			}
		}
	}()
	if cfg.TUN != nil {
		err = liveTUN(ctx, cfg.TUN, cfg.Packets, func(p etap.Packet) error {
			sent.Packets++
			return c.Send(p)
		})
	} else {
		err = capture.Replay(ctx, cfg.Capture.Packets, cfg.Realtime, func(p etap.Packet) error {
			sent.Packets++
			return c.Send(p)
		})
	}
	if cerr := c.CloseSend(); err == nil {
		err = cerr
	}
	sent.Elapsed = time.Since(start)
	if berr := <-back; err == nil {
		err = berr
	}
	returned.Elapsed = time.Since(start)
	sent.Records = c.Stats()
	return sent, returned, err
}

// liveTUN sends packets from a TUN device as they arrive.
func liveTUN(ctx context.Context, t *capture.TUN, max int, send func(etap.Packet) error) error {
	go func() { <-ctx.Done(); t.Close() }()
	for n := 0; max == 0 || n < max; n++ {
		p, err := t.Read()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if err := send(p); err != nil {
			return err
		}
	}
	return nil
}

// ReadPSK reads a pre-shared key file (at least 16 bytes).
func ReadPSK(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) < 16 {
		return nil, fmt.Errorf("%s: pre-shared key is %d bytes; make one with: head -c 32 /dev/urandom > %s", path, len(b), path)
	}
	return b, nil
}

// Listen accepts one gateway on addr.
func Listen(addr string) (net.Conn, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	c, err := ln.Accept()
	if err != nil {
		return nil, err
	}
	return c, nil
}
