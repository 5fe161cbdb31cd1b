// Package capture reads packet captures — pcap, pcapng, and either one
// gzip-compressed — with gopacket's pure-Go pcapgo readers, and replays
// them at their original timing or as fast as possible.
package capture

import (
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/torbento/bento/internal/lightbox/etap"
)

// Capture is a capture file's packets and link type.
type Capture struct {
	LinkType layers.LinkType
	Packets  []etap.Packet
	// Truncated is set when the file ends in the middle of a packet (as
	// tcpdump says, "cut short"); the packets before it are kept.
	Truncated bool
}

// ReadFile reads every packet of a capture file.
func ReadFile(path string) (*Capture, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	c, err := Read(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Read reads every packet of a capture from r, detecting the format.
func Read(r io.Reader) (*Capture, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	magic, err := br.Peek(4)
	if err != nil {
		return nil, errors.New("not a capture: shorter than 4 bytes")
	}
	if magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, err
		}
		defer zr.Close()
		br = bufio.NewReaderSize(zr, 1<<16)
		if magic, err = br.Peek(4); err != nil {
			return nil, errors.New("gzip holds no capture")
		}
	}
	c := &Capture{}
	var next func() ([]byte, time.Time, int, error)
	if string(magic) == "\x0a\x0d\x0d\x0a" {
		// Every packet's own link type: a capture whose interfaces differ
		// is refused, where libpcap's way would skip the other
		// interfaces' packets without a word.
		ng, err := pcapgo.NewNgReader(br, pcapgo.NgReaderOptions{WantMixedLinkType: true})
		if err != nil {
			return nil, fmt.Errorf("pcapng: %w", err)
		}
		// The capture's link type is its first packet's (or, with no
		// packet, its first interface's), fixed once: a later section of
		// the file numbers its interfaces afresh, and its interface 0 may
		// be another link type.
		c.LinkType = ng.LinkType()
		fixed := false
		next = func() ([]byte, time.Time, int, error) {
			d, ci, err := ng.ReadPacketData()
			if err != nil || len(ci.AncillaryData) == 0 {
				return d, ci.Timestamp, ci.Length, err
			}
			lt, ok := ci.AncillaryData[0].(layers.LinkType)
			switch {
			case !ok:
			case !fixed:
				c.LinkType, fixed = lt, true
			case lt != c.LinkType:
				return nil, time.Time{}, 0, fmt.Errorf("pcapng: this packet's interface (%d in its section) is link type %d (%s), the first packet's %d (%s): LightBox carries one link type per capture; split it by interface (for example tshark -r FILE -Y 'frame.interface_id == %d' -w OUT)",
					ci.InterfaceIndex, int(lt), lt, int(c.LinkType), c.LinkType, ci.InterfaceIndex)
			}
			return d, ci.Timestamp, ci.Length, err
		}
	} else {
		pr, err := pcapgo.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("pcap: %w", err)
		}
		c.LinkType = pr.LinkType()
		next = func() ([]byte, time.Time, int, error) {
			d, ci, err := pr.ReadPacketData()
			return d, ci.Timestamp, ci.Length, err
		}
	}
	for {
		d, ts, orig, err := next()
		if err == io.EOF {
			return c, nil
		}
		if err == io.ErrUnexpectedEOF {
			c.Truncated = true
			return c, nil
		}
		if err != nil {
			return nil, fmt.Errorf("packet %d: %w", len(c.Packets)+1, err)
		}
		c.Packets = append(c.Packets, etap.Packet{Time: ts, OrigLen: orig, Data: append([]byte(nil), d...)})
	}
}

// Replay calls send for each packet in order. With realtime, packets are
// sent at their original spacing (relative to the first); otherwise as
// fast as send accepts them.
func Replay(ctx context.Context, pkts []etap.Packet, realtime bool, send func(etap.Packet) error) error {
	if len(pkts) == 0 {
		return nil
	}
	start, t0 := time.Now(), pkts[0].Time
	for _, p := range pkts {
		if realtime {
			if d := time.Until(start.Add(p.Time.Sub(t0))); d > 0 {
				select {
				case <-time.After(d):
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		} else if err := ctx.Err(); err != nil {
			return err
		}
		if err := send(p); err != nil {
			return err
		}
	}
	return nil
}
