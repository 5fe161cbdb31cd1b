package middlebox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/torbento/bento/internal/lightbox/flowstate"
)

// FirewallStateSize is the firewall's per-flow state.
const FirewallStateSize = 32

// Connection states.
const (
	fwNone        = iota
	fwSynSent     // the client's SYN passed
	fwSynReceived // the server answered SYN-ACK
	fwEstablished
	fwClosing  // one side sent FIN
	fwTimeWait // both sent FIN and the last ACK passed: the connection lingers
)

// fwEnd is where the sides' ends start in a firewall state.
const fwEnd = 12

// Firewall is a stateful firewall: hosts inside may open connections out;
// from outside, only new connections to the listed services are let in;
// everything else that belongs to no connection is dropped. TCP follows
// the handshake and teardown as real stacks see them, simultaneous open
// (both SYNs crossing) included: retransmitted SYNs
// and SYN-ACKs pass (a SYN-ACK also once established, its ACK having been
// lost beyond the firewall), and a closed connection lingers (TIME_WAIT, until the
// state table expires it, 2 minutes by default as Linux's conntrack) so
// that a retransmitted FIN or last ACK, or data sent before the FIN again,
// still passes, and a new SYN on the same ports opens a new connection
// (from a side that may open one); a RST ends a connection only at the
// sequence number the host expects (RFC 5961), so a forged one can
// neither close a connection the hosts keep nor open the way for one;
// data past a side's FIN is dropped. UDP flows are kept until they expire.
//
// State (FirewallStateSize bytes): [0] the connection's state, [1] which
// endpoint of the key opened it, [2] which sides sent FIN (1 the opener,
// 2 the other), [3] 1 for a simultaneous open, [4:8] and [8:12] the
// sequence number of each side's FIN, [12:17] and [17:22] each side's end
// (the opener's first), which a RST must hit to end the connection.
type Firewall struct {
	Table   StateTable
	Inside  []netip.Prefix
	Allowed []netip.AddrPort // services inside reachable from outside (TCP and UDP)
	dec     *Decoder
	meta    Meta
	Passed  int
	Dropped int
	Log     []string // one line per dropped packet, the first MaxLog
	// LogDropped counts drops past MaxLog, not logged line by line.
	LogDropped int
}

// MaxLog bounds the firewall's log of drops: a flood of dropped packets
// is counted, not kept.
const MaxLog = 1 << 16

// NewFirewall returns a firewall keeping connection state in table.
func NewFirewall(table StateTable, dec *Decoder, inside []netip.Prefix, allowed []netip.AddrPort) *Firewall {
	return &Firewall{Table: table, Inside: inside, Allowed: allowed, dec: dec}
}

func (f *Firewall) inside(a netip.Addr) bool {
	for _, p := range f.Inside {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func (f *Firewall) allowedIn(m *Meta) bool {
	for _, s := range f.Allowed {
		if s.Addr() == m.Dst && s.Port() == m.DstPort {
			return true
		}
	}
	return false
}

// Verdict reports whether the packet passes, and why not.
func (f *Firewall) Verdict(data []byte, now time.Time) (bool, string, error) {
	m := &f.meta
	if r := f.dec.DecodeResult(data, now, m); r != Decoded {
		return false, r.String(), nil
	}
	if m.Reassembled {
		// Its other fragments were held, not forwarded: the firewall
		// does not forward fragments (a stateful firewall that did would
		// hold them until the verdict and send them on then).
		return false, "fragmented datagram (the firewall forwards no fragments)", nil
	}
	if m.Proto != 6 && m.Proto != 17 {
		return false, fmt.Sprintf("protocol %d not allowed", m.Proto), nil
	}
	k, reverse := m.Key()
	if b, ok := f.Table.(bounded); ok && b.Full() {
		// A full table makes room for a new flow by displacing another:
		// only for a packet that may open one.
		opener := f.inside(m.Src) || f.allowedIn(m)
		if (!opener || (m.Proto == 6 && m.Flags&(SYN|ACK|RST) != SYN)) && !b.Has(k) {
			if !opener {
				return false, "unsolicited from outside", nil
			}
			return false, "no connection", nil
		}
	}
	st, created, err := f.Table.Lookup(k, now)
	if errors.Is(err, flowstate.ErrFull) {
		return false, "flow table full (established connections only): new connections are dropped until some end", nil
	}
	if err != nil {
		return false, "", err
	}
	if created {
		// Only a new connection may create state: from inside, or to an
		// allowed service; for TCP, only a SYN.
		opener := f.inside(m.Src) || f.allowedIn(m)
		if !opener || (m.Proto == 6 && m.Flags&(SYN|ACK|RST) != SYN) {
			f.Table.Remove(k)
			if !opener {
				return false, "unsolicited from outside", nil
			}
			return false, "no connection", nil
		}
		st[0] = fwSynSent
		st[1] = 1 // the key's first endpoint opened the connection
		if reverse {
			st[1] = 2
		}
		if m.Proto == 17 {
			st[0] = fwEstablished
		} else {
			advanceEnd(st[fwEnd:fwEnd+endSize], m)
		}
		return true, "", nil
	}
	if m.Proto == 17 {
		return true, "", nil
	}
	before := st[0]
	defer func() {
		// A live connection is kept for hours; its teardown, like its
		// handshake, for the short idle timeout.
		if live := st[0] == fwEstablished; live != (before == fwEstablished) {
			setClass(f.Table, k, live)
		}
	}()
	fromClient := (st[1] == 1) != reverse
	side, finAt, endAt := byte(2), 8, fwEnd+endSize // the bit, the FIN sequence and the end of the sender's side
	if fromClient {
		side, finAt, endAt = 1, 4, fwEnd
	}
	end := st[endAt : endAt+endSize]
	otherAt := fwEnd + endSize
	if endAt != fwEnd {
		otherAt = fwEnd
	}
	switch {
	case m.Flags&RST != 0:
		if resetAccepted(end, st[otherAt:otherAt+endSize], m) {
			f.Table.Remove(k)
		} // else it passes, for the host to answer, and the connection stays
		return true, "", nil
	case st[0] == fwTimeWait && m.Flags&(SYN|ACK) == SYN:
		// The ports used again: a new connection, opened by this side,
		// which must be one that may open a connection at all.
		if !f.inside(m.Src) && !f.allowedIn(m) {
			return false, "unsolicited from outside (the ports of a closed connection)", nil
		}
		clear(st)
		st[0], st[1] = fwSynSent, 1
		if reverse {
			st[1] = 2
		}
		end = st[fwEnd : fwEnd+endSize] // the sender opens it: its end is the opener's
	case st[0] == fwSynSent && !fromClient && m.Flags&(SYN|ACK) == SYN:
		// Simultaneous open (RFC 793 §3.4): the other side's SYN crossed
		// the opener's; each then answers with a SYN-ACK.
		st[0], st[3] = fwSynReceived, 1
	case st[3] == 1 && st[0] == fwSynReceived && m.Flags&SYN != 0:
		// a SYN-ACK (or a SYN again) of either side of a simultaneous open
	case st[0] == fwSynSent && !fromClient && m.Flags&(SYN|ACK) == SYN|ACK:
		st[0] = fwSynReceived
	case (st[0] == fwSynSent || st[0] == fwSynReceived) && fromClient && m.Flags&(SYN|ACK) == SYN:
		// a retransmitted SYN
	case (st[0] == fwSynReceived || st[0] == fwEstablished) && !fromClient && m.Flags&(SYN|ACK) == SYN|ACK:
		// a retransmitted SYN-ACK (after the handshake: the client's
		// last ACK was lost on its way to the server)
	case st[0] == fwSynReceived && (fromClient || st[3] == 1) && m.Flags&ACK != 0 && m.Flags&SYN == 0:
		st[0] = fwEstablished
		if m.Flags&FIN != 0 {
			st[0] = fwClosing
			st[2] |= 1
			binary.BigEndian.PutUint32(st[4:], m.Seq+uint32(len(m.Payload)))
		}
	case st[0] >= fwEstablished && m.Flags&SYN == 0:
		if st[2]&side != 0 && len(m.Payload) > 0 && seqAfter(m.Seq+uint32(len(m.Payload)), binary.BigEndian.Uint32(st[finAt:])) {
			return false, "data after its sender's FIN", nil
		}
		if m.Flags&FIN != 0 && st[2]&side == 0 {
			st[2] |= side
			binary.BigEndian.PutUint32(st[finAt:], m.Seq+uint32(len(m.Payload)))
			if st[0] < fwClosing {
				st[0] = fwClosing
			}
		}
		if st[0] == fwClosing && st[2] == 3 && m.Flags&ACK != 0 && m.Flags&FIN == 0 {
			st[0] = fwTimeWait // the last ACK of the teardown
		}
	default:
		return false, "out of state", nil
	}
	advanceEnd(end, m)
	return true, "", nil
}

// seqAfter reports whether sequence number a lies after b (RFC 1982).
func seqAfter(a, b uint32) bool { return int32(a-b) > 0 }

// A side's end is where what it sent ends: its next sequence number, a
// SYN and a FIN counting one each. It is kept in 5 bytes: u8 1 once
// known, u32 the end.
const endSize = 5

// advanceEnd moves side's end e past TCP packet m.
func advanceEnd(e []byte, m *Meta) {
	end := m.Seq + uint32(len(m.Payload))
	if m.Flags&SYN != 0 {
		end++
	}
	if m.Flags&FIN != 0 {
		end++
	}
	if e[0] == 0 || seqAfter(end, binary.BigEndian.Uint32(e[1:])) {
		e[0] = 1
		binary.BigEndian.PutUint32(e[1:], end)
	}
}

// resetAccepted reports whether RST m, from the side whose end is e (the
// other side's: other), ends the connection: only at that end, the
// sequence number its peer expects (RFC 5961 §3; a host answers any other
// with a challenge ACK and goes on), or, from a side that sent nothing
// yet, when it acknowledges what the other sent (a RST answering a SYN,
// RFC 793's SYN-SENT rule). A forged RST cannot end a connection the
// hosts keep.
func resetAccepted(e, other []byte, m *Meta) bool {
	if e[0] != 0 {
		return m.Seq == binary.BigEndian.Uint32(e[1:])
	}
	return other[0] == 0 || (m.Flags&ACK != 0 && m.Ack == binary.BigEndian.Uint32(other[1:]))
}

// Handle decides one packet, counting and logging drops.
func (f *Firewall) Handle(data []byte, now time.Time) (bool, error) {
	ok, why, err := f.Verdict(data, now)
	if err != nil {
		return false, err
	}
	if ok {
		f.Passed++
	} else {
		f.Dropped++
		m := &f.meta
		if len(f.Log) >= MaxLog {
			f.LogDropped++
			return false, nil
		}
		f.Log = append(f.Log, fmt.Sprintf("drop %s %s:%d -> %s:%d: %s", protoName(m.Proto), m.Src, m.SrcPort, m.Dst, m.DstPort, why))
	}
	return ok, nil
}
