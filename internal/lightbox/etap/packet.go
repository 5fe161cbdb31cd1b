package etap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Packet is one captured frame and its capture metadata.
type Packet struct {
	Time    time.Time
	OrigLen int // length on the wire (may exceed len(Data) for truncated captures)
	Data    []byte
}

// entryHeader is u32 caplen | u32 origlen | i64 unix nanoseconds.
const entryHeader = 16

// MaxPacket bounds a frame's captured length.
const MaxPacket = 1 << 18

func appendEntry(dst []byte, p Packet) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(p.Data)))
	dst = binary.BigEndian.AppendUint32(dst, uint32(p.OrigLen))
	dst = binary.BigEndian.AppendUint64(dst, uint64(p.Time.UnixNano()))
	return append(dst, p.Data...)
}

// Clone returns a copy of p that owns its data.
func (p Packet) Clone() Packet {
	p.Data = append([]byte(nil), p.Data...)
	return p
}

// parseEntry reads one entry from the start of b. It returns the packet,
// whose Data aliases b, and the bytes used, or 0 when b holds only part of
// an entry.
func parseEntry(b []byte) (Packet, int, error) {
	if len(b) < entryHeader {
		return Packet{}, 0, nil
	}
	n := int(binary.BigEndian.Uint32(b))
	if n > MaxPacket {
		return Packet{}, 0, fmt.Errorf("etap: packet of %d bytes exceeds %d", n, MaxPacket)
	}
	if len(b) < entryHeader+n {
		return Packet{}, 0, nil
	}
	p := Packet{
		OrigLen: int(binary.BigEndian.Uint32(b[4:])),
		Time:    time.Unix(0, int64(binary.BigEndian.Uint64(b[8:]))),
		Data:    b[entryHeader : entryHeader+n : entryHeader+n],
	}
	return p, entryHeader + n, nil
}

var errPacketTooLarge = errors.New("etap: packet exceeds MaxPacket")
