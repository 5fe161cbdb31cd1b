package middlebox

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"
)

// Per-direction reassembly and matching state, inside the flow state:
//
//	u32 next     next in-order sequence number
//	u8  flags    1: next is known; 2: a gap was skipped; 4: FIN seen
//	u8  tailLen  bytes in tail
//	u16 hi       bytes of buf up to the last buffered byte
//	u32 acState  the matcher's state after the last delivered byte
//	[64]  tail   the last bytes delivered (to confirm case-sensitive matches)
//	[320] bitmap which bytes of buf hold data
//	[2560] buf   out-of-order data, buf[0] is sequence number next
const (
	reasmWindow = 2560
	dNext       = 0
	dFlags      = 4
	dTailLen    = 5
	dHi         = 6
	dAC         = 8
	dTail       = 12
	dBitmap     = dTail + MaxContent
	dBuf        = dBitmap + reasmWindow/8
	dirSize     = dBuf + reasmWindow

	fKnown = 1
	fGap   = 2
	fFin   = 4

	// IDSStateSize is the IDS's per-flow state (LightBox's is ~5.5 KB):
	// the connection's 8 bytes, then each direction's.
	IDSStateSize = 8 + 2*dirSize

	iOpener = 0 // u8: 1 the key's first endpoint sent the SYN, 2 the second, 0 not seen
	iShake  = 1 // u8: bit 0 the SYN seen, bit 1 the SYN-ACK
)

// DecoderSID is the SID of the alerts the IDS raises itself, on what it
// decodes rather than on a rule (rules' SIDs are positive).
const DecoderSID = 0

// Alert is a rule that matched a flow's reassembled data, or (SID
// DecoderSID) an evasion attempt the decoder saw.
type Alert struct {
	SID      int
	Msg      string
	Src, Dst netip.AddrPort // the direction the data flowed
}

func (a Alert) String() string {
	return fmt.Sprintf("alert sid %d %q %s -> %s", a.SID, a.Msg, a.Src, a.Dst)
}

// IDS reassembles each TCP direction within a bounded window — handling
// out-of-order segments, retransmissions, overlaps (the first copy of a
// byte received wins) and gaps (when the window cannot hold what is
// missing, the hole is skipped, counted and matching restarts) — and
// matches the rules' contents over the reassembled stream with one
// Aho-Corasick automaton. UDP payloads are matched per datagram.
type IDS struct {
	Table  StateTable
	Rules  []Rule
	Alerts []Alert
	Gaps   int
	// Ignored counts TCP packets a host would discard and so does the
	// IDS: a SYN or SYN-ACK in the middle of a connection, a RST at any
	// sequence number but the expected one.
	Ignored int
	dec     *Decoder
	ac      *matcher
	meta    Meta
	win     []byte
	fl      uint8 // what the current packet's data is, for flow: (flowTo*, flowEstablished)
}

// NewIDS compiles the rules.
func NewIDS(table StateTable, dec *Decoder, rules []Rule) (*IDS, error) {
	pats := make([][]byte, len(rules))
	for i := range rules {
		pats[i] = rules[i].Content
	}
	ac := buildMatcher(pats)
	if len(ac.next) > MaxMatcherStates {
		return nil, fmt.Errorf("rules need %d automaton states, more than %d", len(ac.next), MaxMatcherStates)
	}
	return &IDS{Table: table, Rules: rules, dec: dec, ac: ac}, nil
}

// Handle processes one packet at trusted time now.
func (x *IDS) Handle(data []byte, now time.Time) error {
	m := &x.meta
	r := x.dec.DecodeResult(data, now, m)
	if m.FragConflict {
		// Fail closed: overlapping fragments with different bytes are
		// reported whichever way the host resolves them.
		x.Alerts = append(x.Alerts, Alert{SID: DecoderSID, Msg: "IP fragments overlap with different bytes (an evasion attempt, or a broken path)",
			Src: netip.AddrPortFrom(m.Src, m.SrcPort), Dst: netip.AddrPortFrom(m.Dst, m.DstPort)})
	}
	if r != Decoded {
		return nil
	}
	src, dst := netip.AddrPortFrom(m.Src, m.SrcPort), netip.AddrPortFrom(m.Dst, m.DstPort)
	x.fl = 0
	switch m.Proto {
	case 17:
		var scratch [dirSize]byte
		x.deliver(scratch[:], m.Payload, 17, src, dst)
		return nil
	case 6:
	default:
		return nil
	}
	k, reverse := m.Key()
	st, _, err := x.Table.Lookup(k, now)
	if err != nil {
		return err
	}
	side := 0
	if reverse {
		side = 1
	}
	d := st[8+side*dirSize : 8+(side+1)*dirSize]
	seq := m.Seq
	if m.Flags&RST != 0 {
		// A reset ends the connection only at the sequence number the
		// receiver expects (RFC 5961 §3; a host answers any other with a
		// challenge ACK), so a forged one cannot wipe the stream's state.
		if d[dFlags]&fKnown == 0 || seq == binary.BigEndian.Uint32(d[dNext:]) {
			x.Table.Remove(k)
		} else {
			x.Ignored++
		}
		return nil
	}
	if m.Flags&SYN != 0 && !x.handshake(st, d, side, seq, m.Flags&ACK != 0) {
		x.Ignored++ // a host discards it (RFC 5961 §4): so does the IDS
		return nil
	}
	if m.Flags&SYN != 0 {
		seq++
	}
	if st[iOpener] != 0 {
		x.fl = flowToClient
		if st[iOpener] == byte(side+1) {
			x.fl = flowToServer
		}
		if st[iShake] == 3 {
			x.fl |= flowEstablished
		}
	}
	if len(m.Payload) > 0 {
		if d[dFlags]&fKnown == 0 {
			x.reset(d, seq)
		}
		x.segment(d, seq, m.Payload, src, dst)
	}
	if m.Flags&FIN != 0 {
		// A FIN counts where the stream could end: at or a window past
		// what was delivered, not anywhere a forger puts it.
		fin := seq + uint32(len(m.Payload))
		if rel := int32(fin - binary.BigEndian.Uint32(d[dNext:])); d[dFlags]&fKnown == 0 || (rel >= 0 && rel <= reasmWindow) {
			d[dFlags] |= fFin
		}
	}
	// After both FINs a connection lingers (as TIME_WAIT, until the
	// state table expires it) so that data retransmitted late is
	// recognised as delivered, not scanned again; a new SYN on its ports
	// starts it afresh.
	return nil
}

// handshake takes a SYN (ack: a SYN-ACK) from side at seq into the
// connection's state st, d being side's stream, and reports whether the
// packet is to be processed at all. A SYN opens a connection when none is
// known (no SYN seen, or both sides closed with FIN): the connection's
// state starts afresh. A SYN-ACK answers the opener's SYN once. Their
// retransmissions pass; any other SYN or SYN-ACK comes mid-connection,
// and a host discards it: resetting the stream for it would let an
// attacker realign the IDS's sequence numbers away from the host's.
func (x *IDS) handshake(st, d []byte, side int, seq uint32, ack bool) bool {
	known := d[dFlags]&fKnown != 0
	retrans := known && binary.BigEndian.Uint32(d[dNext:]) == seq+1
	if !ack {
		other := st[8+(1-side)*dirSize:][:dirSize]
		closed := d[dFlags]&fFin != 0 && other[dFlags]&fFin != 0
		switch {
		case st[iOpener] == 0 || closed:
			clear(st[:IDSStateSize])
			st[iOpener], st[iShake] = byte(side+1), 1
			x.reset(d, seq+1)
			return true
		case st[iOpener] == byte(side+1) && st[iShake] == 1 && retrans:
			return true
		}
		return false
	}
	switch {
	case st[iOpener] == byte(2-side) && st[iShake] == 1:
		st[iShake] |= 2
		x.reset(d, seq+1)
		return true
	case st[iOpener] == byte(2-side) && retrans:
		return true
	case st[iOpener] == 0 && !known: // its SYN was not seen
		x.reset(d, seq+1)
		return true
	}
	return false
}

func (x *IDS) reset(d []byte, next uint32) {
	clear(d)
	binary.BigEndian.PutUint32(d[dNext:], next)
	d[dFlags] = fKnown
}

func bit(d []byte, i int) bool { return d[dBitmap+i/8]&(1<<(i%8)) != 0 }
func setBit(d []byte, i int)   { d[dBitmap+i/8] |= 1 << (i % 8) }

// segment takes one TCP payload at sequence number seq.
func (x *IDS) segment(d []byte, seq uint32, p []byte, src, dst netip.AddrPort) {
	for len(p) > reasmWindow { // larger than the window (TSO): in pieces
		x.segment(d, seq, p[:reasmWindow], src, dst)
		seq, p = seq+reasmWindow, p[reasmWindow:]
	}
	base := binary.BigEndian.Uint32(d[dNext:])
	hi := int(binary.BigEndian.Uint16(d[dHi:]))
	rel := int64(int32(seq - base))
	if rel < 0 { // starts before base: the delivered part is a retransmission
		if -rel >= int64(len(p)) {
			return
		}
		p, seq, rel = p[-rel:], base, 0
	}
	if rel == 0 && hi == 0 { // in order, nothing buffered: the common case
		x.deliver(d, p, 6, src, dst)
		binary.BigEndian.PutUint32(d[dNext:], base+uint32(len(p)))
		return
	}
	if rel+int64(len(p)) > reasmWindow {
		// The window cannot hold it: skip the hole and restart matching
		// after it.
		x.Gaps++
		flags := d[dFlags] | fGap
		x.reset(d, seq)
		d[dFlags] = flags
		x.deliver(d, p, 6, src, dst)
		binary.BigEndian.PutUint32(d[dNext:], seq+uint32(len(p)))
		return
	}
	// Store what is new: the first copy of each byte wins.
	for i := range p {
		if j := int(rel) + i; !bit(d, j) {
			d[dBuf+j] = p[i]
			setBit(d, j)
		}
	}
	hi = max(hi, int(rel)+len(p))
	// Deliver the in-order prefix and shift the window past it.
	n := 0
	for n < hi && bit(d, n) {
		n++
	}
	if n > 0 {
		x.win = append(x.win[:0], d[dBuf:dBuf+n]...)
		x.deliver(d, x.win, 6, src, dst)
		copy(d[dBuf:], d[dBuf+n:dBuf+hi])
		shiftBitmap(d[dBitmap:dBitmap+reasmWindow/8], n, hi)
		hi -= n
		binary.BigEndian.PutUint32(d[dNext:], base+uint32(n))
	}
	binary.BigEndian.PutUint16(d[dHi:], uint16(hi))
}

// shiftBitmap moves the first hi bits of the bitmap down by n.
func shiftBitmap(b []byte, n, hi int) {
	for i := 0; i < hi; i++ {
		j := i + n
		if j < hi && b[j/8]&(1<<(j%8)) != 0 {
			b[i/8] |= 1 << (i % 8)
		} else {
			b[i/8] &^= 1 << (i % 8)
		}
	}
}

// deliver runs the automaton over in-order bytes and raises alerts.
func (x *IDS) deliver(d []byte, p []byte, proto uint8, src, dst netip.AddrPort) {
	s := int32(binary.BigEndian.Uint32(d[dAC:]))
	tl := int(d[dTailLen])
	for i, c := range p {
		s = x.ac.next[s][lower(c)]
		for _, ri := range x.ac.out[s] {
			r := &x.Rules[ri]
			if !r.matchesFlow(proto, src, dst, x.fl) {
				continue
			}
			if !r.NoCase && !x.exact(d[dTail:dTail+tl], p[:i+1], r.Content) {
				continue
			}
			x.Alerts = append(x.Alerts, Alert{SID: r.SID, Msg: r.Msg, Src: src, Dst: dst})
		}
	}
	binary.BigEndian.PutUint32(d[dAC:], uint32(s))
	// Keep the last MaxContent bytes.
	var tail [2 * MaxContent]byte
	all := append(append(tail[:0], d[dTail:dTail+tl]...), p[max(0, len(p)-MaxContent):]...)
	all = all[max(0, len(all)-MaxContent):]
	copy(d[dTail:], all)
	d[dTailLen] = byte(len(all))
}

// exact confirms that the stream (tail followed by upto) ends with c.
func (x *IDS) exact(tail, upto, c []byte) bool {
	n := len(c)
	if len(upto) >= n {
		return string(upto[len(upto)-n:]) == string(c)
	}
	k := n - len(upto)
	if k > len(tail) {
		return false
	}
	return string(tail[len(tail)-k:]) == string(c[:k]) && string(upto) == string(c[k:])
}
