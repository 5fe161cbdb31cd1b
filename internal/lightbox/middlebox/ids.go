package middlebox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/torbento/bento/internal/lightbox/flowstate"
)

// Per-direction reassembly and matching state, inside the flow state:
//
//	u32 next     next in-order sequence number
//	u8  flags    1: next is known; 2: a gap was skipped; 4: FIN seen (in order);
//	             8: data in the pool; 16: a FIN waits at finAt; 32: data came
//	u8  tailLen  bytes in tail
//	u16 hi       bytes of buf up to the last buffered byte
//	u32 acState  the matcher's state after the last delivered byte
//	u32 gapLo    the last hole skipped, [gapLo, gapHi): its bytes, if they
//	u32 gapHi    ... come after all, are scanned on their own
//	u32 finAt    where a FIN that came out of order ends the stream
//	u8  ttl      the TTL of the direction's first packet
//	u8  flags2   what was alerted once for the direction: 1 urgent data, 2 an
//	             overlap, 4 a gap, 8 data before the handshake completed
//	[64]  tail   the last bytes delivered (to confirm case-sensitive matches)
//	[320] bitmap which bytes of buf hold data
//	[2560] buf   out-of-order data, buf[0] is sequence number next
//
// Data further out of order than buf holds waits in the IDS's reorder
// pool (ReorderConfig), outside the flow state.
const (
	reasmWindow = 2560
	dNext       = 0
	dFlags      = 4
	dTailLen    = 5
	dHi         = 6
	dAC         = 8
	dGapLo      = 12
	dGapHi      = 16
	dFinAt      = 20
	dTTL        = 24 // u8: the TTL (hop limit) of the direction's first packet
	dFlags2     = 25
	dTail       = 26
	dBitmap     = dTail + MaxContent
	dBuf        = dBitmap + reasmWindow/8
	dirSize     = dBuf + reasmWindow

	fKnown = 1
	fGap   = 2
	fFin   = 4
	fHeld  = 8 // the reorder pool may hold data of this direction
	fFinAt = 16
	fData  = 32
	fTTL   = 64  // ttl is set
	fLowTT = 128 // a lower TTL was alerted

	aUrgent  = 1
	aOverlap = 2
	aGap     = 4
	aEarly   = 8
	// In dFlags2 with the alert kinds: the opener's direction
	// acknowledged the SYN-ACK (the handshake's third packet).
	fAcked = 16
	// In dFlags2: the stream begins with the data its SYN carried (TCP
	// Fast Open), which the SYN-ACK may yet refuse.
	fSynData = 32

	// IDSStateSize is the IDS's per-flow state (LightBox's is ~5.5 KB):
	// the connection's connSize bytes, then each direction's.
	IDSStateSize = connSize + 2*dirSize
	connSize     = 16

	iOpener  = 0 // u8: 1 the key's first endpoint sent the SYN, 2 the second, 0 not seen
	iShake   = 1 // u8: bit 0 the SYN seen, bit 1 the SYN-ACK
	iReset   = 2 // u8: a RST ended the connection, sent by side 1 or 2 (the key's endpoints); bit 4: its sender's data after it was alerted
	iAlt     = 3 // u8: 1 iAltNext holds the sequence after a second SYN of the opener's
	iAltNx   = 4 // u32: ... that sequence, which the SYN-ACK may acknowledge instead
	iSAAlt   = 8 // u8: 1 iSAAltNx holds the sequence after a second SYN-ACK
	iSAAltNx = 9 // u32: ... that sequence, which the opener's ACK may acknowledge instead
)

// DecoderSID is the SID of the alerts the IDS raises itself, on what it
// decodes rather than on a rule (rules' SIDs are positive).
const DecoderSID = 0

// MaxAlerts is how many alerts an IDS keeps, MaxDecoderAlerts how many of
// them may be its own (SID 0), so that a flood of those cannot crowd out
// the rules'; past them it counts.
const (
	MaxAlerts        = 1 << 20
	MaxDecoderAlerts = 1 << 16
)

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

// IDS reassembles each TCP direction and matches the rules' contents over
// the reassembled stream with one Aho-Corasick automaton, scanning every
// byte once, in stream order. Out-of-order data waits in a window inside
// the flow state (reasmWindow bytes), and beyond it in a reorder pool
// bounded per direction and in all (Reorder), so that a lost segment
// retransmitted after many more is scanned in its place. Overlapping
// segments: the first copy of a byte received stands, and an overlap
// with different bytes (which hosts resolve differently: Linux keeps the
// later segment when it starts where the earlier did and covers it) raises
// an alert of its own. Only when the bounds cannot hold what waits is a
// hole skipped: counted in Gaps, matching restarts after it, and its
// bytes, if they come after all, are scanned on their own. UDP payloads
// are matched per datagram.
type IDS struct {
	Table  StateTable
	Rules  []Rule
	Alerts []Alert
	Gaps   int
	// Ignored counts TCP packets a host would discard and so does the
	// IDS: a SYN or SYN-ACK in the middle of a connection, a RST at any
	// sequence number but the expected one, data beyond MaxAhead.
	Ignored int
	// Conflicts counts segments that overlapped data held (or the last
	// bytes delivered) with different bytes (each also raises an alert).
	Conflicts int
	// AlertsDropped counts alerts past MaxAlerts, not kept.
	AlertsDropped int
	// Untracked counts TCP packets of new connections the state table
	// had no room for (full of established connections): not scanned.
	Untracked int
	// Reorder bounds the reorder pool; set it before the first packet.
	Reorder ReorderConfig

	dec           *Decoder
	ac            *matcher
	meta          Meta
	win           []byte
	fl            uint8 // what the current packet's data is, for flow: (flowTo*, flowEstablished)
	pool          *reorderPool
	sent          *unacked // bytes delivered and not yet acknowledged, to check retransmissions
	d             []byte   // the current packet's direction's state
	decoderAlerts int
	cur           dirKey    // the current packet's direction
	now           time.Time // the current packet's time
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

// Handle processes one packet at trusted time now. Packets the decoder
// refuses (not IP, malformed, a wrong checksum when it verifies them) are
// counted in its Stats and go no further.
func (x *IDS) Handle(data []byte, now time.Time) error {
	m := &x.meta
	r := x.dec.DecodeResult(data, now, m)
	if m.FragConflict {
		// Fail closed: overlapping fragments with different bytes are
		// reported whichever way the host resolves them.
		x.alert(Alert{SID: DecoderSID, Msg: "IP fragments overlap with different bytes (an evasion attempt, or a broken path)",
			Src: netip.AddrPortFrom(m.Src, m.SrcPort), Dst: netip.AddrPortFrom(m.Dst, m.DstPort)})
	}
	if m.FragBound {
		x.alert(Alert{SID: DecoderSID, Msg: "IP fragments dropped at the reassembler's bounds (a datagram in progress gave way)",
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
	if errors.Is(err, flowstate.ErrFull) {
		x.Untracked++
		return nil
	}
	if err != nil {
		return err
	}
	before := idsLive(st)
	defer func() {
		if live := idsLive(st); live != before {
			setClass(x.Table, k, live)
		}
	}()
	side := 0
	if reverse {
		side = 1
	}
	if x.pool == nil {
		x.pool = newReorderPool(x.Reorder)
		x.sent = newUnacked(x.pool.cfg.Idle)
	}
	x.cur, x.now = dirKey{k: k, side: uint8(side)}, now
	d := st[connSize+side*dirSize : connSize+(side+1)*dirSize]
	o := st[connSize+(1-side)*dirSize : connSize+(2-side)*dirSize] // the other direction
	x.d = d
	seq := m.Seq
	if d[dFlags]&fHeld != 0 || o[dFlags]&fHeld != 0 {
		x.pool.touch(dirKey{k: k, side: 0}, now)
		x.pool.touch(dirKey{k: k, side: 1}, now)
	}
	if m.Flags&ACK != 0 {
		x.sent.ack(dirKey{k: k, side: uint8(1 - side)}, m.Ack)
	}
	if m.Flags&RST != 0 {
		// A reset ends the connection only at the sequence number the
		// receiver expects (RFC 5961 §3; a host answers any other with a
		// challenge ACK), or, from a side that sent nothing yet, when it
		// acknowledges what the other sent (RFC 793, SYN-SENT): a forged
		// one cannot wipe the stream's state. Even then the state
		// lingers, closed, until the table expires it: data after the RST
		// (which a host that took it refuses) goes on in the stream and
		// raises an alert, for a RST the host did not take (a bad
		// checksum, a TTL too short to reach it) is how an IDS is blinded.
		if x.resetTaken(d, o, m) {
			st[iReset] = byte(side + 1)
			x.dropHeld(k)
		} else {
			x.Ignored++
		}
		return nil
	}
	if m.Flags&(SYN|ACK) == 0 {
		x.Ignored++ // data without ACK: a host in a connection drops it (RFC 793)
		return nil
	}
	if m.Flags&SYN != 0 && !x.handshake(st, d, o, side, m, src, dst) {
		x.Ignored++ // a host discards it (RFC 5961 §4): so does the IDS
		return nil
	}
	if st[iOpener] != 0 {
		x.fl = flowToClient
		if st[iOpener] == byte(side+1) {
			x.fl = flowToServer
		}
		if st[iShake] == 3 {
			x.fl |= flowEstablished
			// The handshake's last ACK, acknowledging what the other
			// side sent (an off-path spoofer cannot know it): only then
			// is the connection kept as established (idsLive).
			if st[iOpener] == byte(side+1) && d[dFlags2]&fAcked == 0 && m.Flags&(SYN|ACK) == ACK && o[dFlags]&fKnown != 0 {
				if st[iSAAlt] == 1 && m.Ack == binary.BigEndian.Uint32(st[iSAAltNx:]) && o[dFlags]&(fData|fHeld) == 0 {
					// The opener took the other SYN-ACK (the first a
					// decoy it never got): the other side's stream
					// starts where the opener says.
					x.realign(o, dirKey{k: x.cur.k, side: 1 - x.cur.side}, m.Ack)
				}
				st[iSAAlt] = 0
				if behind := binary.BigEndian.Uint32(o[dNext:]) - m.Ack; behind < 1<<20 {
					d[dFlags2] |= fAcked
				}
			}
		}
	}
	if m.Flags&SYN != 0 {
		// Data on a SYN (TCP Fast Open) begins the stream, so that a
		// pattern split between it and the next segment is found; the
		// SYN-ACK's acknowledgement says whether the host took it (see
		// handshake), and if it did not, the stream starts again where
		// the host's does. A retransmitted SYN's data was scanned.
		if start := seq + 1; len(m.Payload) > 0 && d[dFlags]&fData == 0 && d[dFlags2]&fSynData == 0 && binary.BigEndian.Uint32(d[dNext:]) == start {
			x.sent.add(x.cur, start, m.Payload, x.now)
			x.deliver(d, m.Payload, 6, src, dst)
			binary.BigEndian.PutUint32(d[dNext:], start+uint32(len(m.Payload)))
			d[dFlags2] |= fSynData
		}
		return nil
	}
	if len(m.Payload) > 0 && st[iReset]&3 == byte(side+1) && st[iReset]&4 == 0 {
		// Data from the side that sent the RST (its peer's data in flight
		// is ordinary).
		st[iReset] |= 4
		x.alert(Alert{SID: DecoderSID, Msg: "TCP data after its sender's RST (a RST the host may not have taken)", Src: src, Dst: dst})
	}
	if len(m.Payload) > 0 && st[iOpener] != 0 && st[iShake] != 3 {
		// Data before the handshake completed: a host in SYN-SENT or
		// SYN-RECEIVED does not read it, and a SYN the host never got
		// (a short TTL) is how a connection is made to look reopened.
		x.once(d, aEarly, Alert{SID: DecoderSID, Msg: "TCP data before the handshake completed", Src: src, Dst: dst})
	}
	if d[dFlags]&fTTL == 0 {
		d[dTTL] = m.TTL
		d[dFlags] |= fTTL
	} else if len(m.Payload) > 0 && m.TTL < d[dTTL] && d[dFlags]&fLowTT == 0 {
		// A segment that may expire before it reaches the host, though
		// the IDS sees it: the classic way to show an IDS bytes the host
		// never reads (Ptacek and Newsham), or a route that changed.
		d[dFlags] |= fLowTT
		x.alert(Alert{SID: DecoderSID, Msg: "TCP data with a TTL lower than its connection's (it may expire before the host)", Src: src, Dst: dst})
	}
	if m.Flags&URG != 0 {
		x.once(d, aUrgent, Alert{SID: DecoderSID, Msg: "TCP urgent data (hosts read it out of band or in the stream)", Src: src, Dst: dst})
	}
	if len(m.Payload) > 0 {
		if d[dFlags]&fKnown == 0 {
			x.reset(d, seq)
		}
		x.segment(d, seq, m.Payload, src, dst)
	}
	if m.Flags&FIN != 0 && d[dFlags]&fKnown != 0 {
		// A FIN ends the stream where it lies, once the bytes before it
		// came (a host holds a FIN that comes early, as it holds data); a
		// FIN beyond the window is no stream's.
		fin := seq + uint32(len(m.Payload))
		if rel := int32(fin - binary.BigEndian.Uint32(d[dNext:])); rel >= 0 && rel <= MaxAhead {
			binary.BigEndian.PutUint32(d[dFinAt:], fin)
			d[dFlags] |= fFinAt
		}
	}
	if d[dFlags]&fFinAt != 0 && binary.BigEndian.Uint32(d[dFinAt:]) == binary.BigEndian.Uint32(d[dNext:]) {
		d[dFlags] |= fFin
	}
	// After both FINs (or a RST) a connection lingers, closed, until the
	// state table expires it: data retransmitted late is recognised as
	// delivered, not scanned again, and a new SYN on its ports starts it
	// afresh.
	return nil
}

// resetTaken reports whether RST m, from the side whose stream is d (the
// other's o), ends the connection for the host.
func (x *IDS) resetTaken(d, o []byte, m *Meta) bool {
	if d[dFlags]&fFin != 0 { // after its FIN: at the FIN, or after it (Linux's tcp_reset_check)
		fin := binary.BigEndian.Uint32(d[dFinAt:])
		return m.Seq == fin || m.Seq == fin+1
	}
	if d[dFlags]&fKnown != 0 {
		return m.Seq == binary.BigEndian.Uint32(d[dNext:])
	}
	if o[dFlags]&fKnown != 0 {
		return m.Flags&ACK != 0 && m.Ack == binary.BigEndian.Uint32(o[dNext:])
	}
	return true
}

// realign moves stream d (direction dk), which has delivered nothing, to
// start at next: where the peer's acknowledgement says it does.
func (x *IDS) realign(d []byte, dk dirKey, next uint32) {
	x.reset(d, next)
	x.pool.drop(dk)
	x.sent.drop(dk)
}

// alert records a, up to MaxAlerts (MaxDecoderAlerts of its own); past
// them it only counts.
func (x *IDS) alert(a Alert) {
	if len(x.Alerts) >= MaxAlerts || (a.SID == DecoderSID && x.decoderAlerts >= MaxDecoderAlerts) {
		x.AlertsDropped++
		return
	}
	if a.SID == DecoderSID {
		x.decoderAlerts++
	}
	x.Alerts = append(x.Alerts, a)
}

// once raises a, of a kind alerted once per direction (d's).
func (x *IDS) once(d []byte, kind byte, a Alert) {
	if d[dFlags2]&kind == 0 {
		d[dFlags2] |= kind
		x.alert(a)
	}
}

// Expired forgets what the reorder pool holds for flow k, which the state
// table expired.
func (x *IDS) Expired(k flowstate.Key, _ []byte) {
	if x.pool != nil {
		x.dropHeld(k)
	}
}

// handshake takes a SYN (ack: a SYN-ACK) from side at seq into the
// connection's state st, d being side's stream, and reports whether the
// packet is to be processed at all. A SYN opens a connection when none is
// known (no SYN seen, or both sides closed with FIN): the connection's
// state starts afresh. A SYN-ACK answers the opener's SYN once, and so
// does the other side's SYN in a simultaneous open. Their
// retransmissions pass; any other SYN or SYN-ACK comes mid-connection,
// and a host discards it: resetting the stream for it would let an
// attacker realign the IDS's sequence numbers away from the host's.
func (x *IDS) handshake(st, d, o []byte, side int, m *Meta, src, dst netip.AddrPort) bool {
	seq := m.Seq
	known := d[dFlags]&fKnown != 0
	next := binary.BigEndian.Uint32(d[dNext:])
	// The same SYN again (with the same data, if it began the stream).
	retrans := known && (next == seq+1 || (d[dFlags2]&fSynData != 0 && next == seq+1+uint32(len(m.Payload))))
	if m.Flags&ACK == 0 {
		closed := (d[dFlags]&fFin != 0 && o[dFlags]&fFin != 0) || st[iReset] != 0
		switch {
		case st[iOpener] == 0 || closed:
			clear(st[:IDSStateSize])
			x.dropHeld(x.cur.k)
			st[iOpener], st[iShake] = byte(side+1), 1
			x.reset(d, seq+1)
			return true
		case retrans:
			return true // either side's SYN again (of a simultaneous open too): nothing changes
		case st[iOpener] == byte(2-side) && st[iShake] == 1 && !known:
			// Simultaneous open (RFC 793 §3.4): the other side's SYN
			// crossed the opener's.
			st[iShake] |= 2
			x.reset(d, seq+1)
			x.pool.drop(x.cur)
			return true
		case st[iOpener] == byte(side+1) && st[iShake] == 1:
			// The opener's SYN again, at another sequence number: ignored,
			// but remembered, for the host may have answered this one
			// (the first a decoy it never got).
			st[iAlt] = 1
			binary.BigEndian.PutUint32(st[iAltNx:], seq+1)
		}
		return false
	}
	switch {
	case st[iOpener] == byte(2-side) && st[iShake] == 1:
		// Its acknowledgement says which SYN the host answered and where
		// the opener's stream starts: after the SYN, or after the data on
		// it if the host took that (TCP Fast Open, at most 64 KiB). A
		// SYN-ACK that acknowledges neither SYN is not the host's answer
		// (a decoy from a hostile server): ignored.
		from := binary.BigEndian.Uint32(o[dNext:])
		realign := false
		synData := o[dFlags2]&fSynData != 0
		switch data := o[dFlags]&fData != 0; {
		case synData && from-m.Ack < 1<<16:
			// The stream began with the SYN's data: the host took all of
			// it (the stream goes on, its matches with it), or only up to
			// the acknowledgement (the stream starts again there).
			realign = m.Ack != from
			o[dFlags2] &^= fSynData
		case !data && !synData && m.Ack-from < 1<<16:
			realign = m.Ack != from
		case !data && st[iAlt] == 1 && m.Ack-binary.BigEndian.Uint32(st[iAltNx:]) < 1<<16:
			realign = true
			if m.Ack != binary.BigEndian.Uint32(st[iAltNx:]) {
				// The host took data on the SYN the IDS ignored for
				// another: bytes it never scanned.
				x.alert(Alert{SID: DecoderSID, Msg: "TCP Fast Open data taken on a second SYN (not scanned)", Src: dst, Dst: src})
			}
		case data && (m.Ack-from < 1<<16 || from-m.Ack < 1<<16):
			// the opener sent data before it (alerted): the stream stays
		default:
			return false
		}
		st[iShake] |= 2
		x.reset(d, seq+1)
		x.pool.drop(x.cur)
		if realign {
			x.realign(o, dirKey{k: x.cur.k, side: 1 - x.cur.side}, m.Ack)
		}
		return true
	case retrans: // the SYN-ACK again, or either side's of a simultaneous open
		return true
	case st[iOpener] == 0 && !known: // its SYN was not seen
		x.reset(d, seq+1)
		x.pool.drop(x.cur)
		return true
	case st[iOpener] == byte(2-side) && st[iShake] == 3 && d[dFlags]&(fData|fHeld) == 0 && o[dFlags2]&fAcked == 0 &&
		m.Ack == binary.BigEndian.Uint32(o[dNext:]):
		// Another SYN-ACK answering the same SYN, at another sequence
		// number, before the opener acknowledged one: ignored, but
		// remembered, for the opener may have taken this one (the first
		// a decoy from a hostile server, with a TTL too short to reach
		// it); its ACK says which.
		st[iSAAlt] = 1
		binary.BigEndian.PutUint32(st[iSAAltNx:], seq+1)
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

// dropHeld forgets what the reorder pool holds, and the bytes kept
// unacknowledged, for both directions of k.
func (x *IDS) dropHeld(k flowstate.Key) {
	for side := range uint8(2) {
		x.pool.drop(dirKey{k: k, side: side})
		x.sent.drop(dirKey{k: k, side: side})
	}
}

// segment takes one TCP payload at sequence number seq.
func (x *IDS) segment(d []byte, seq uint32, p []byte, src, dst netip.AddrPort) {
	next := binary.BigEndian.Uint32(d[dNext:])
	if rel := int64(int32(seq - next)); rel < 0 { // starts before next: what was delivered is a retransmission
		x.inHole(d, seq, p, src, dst)
		x.retransmitted(d, seq, p, src, dst)
		if -rel >= int64(len(p)) {
			return
		}
		p, seq = p[-rel:], next
	} else if rel > MaxAhead {
		x.Ignored++
		return
	}
	d[dFlags] |= fData // bytes at or after next: the stream has begun
	for len(p) > 0 {
		next = binary.BigEndian.Uint32(d[dNext:])
		rel := int(int32(seq - next))
		if rel < 0 { // delivered meanwhile (a skip moved next past it)
			if -rel >= len(p) {
				return
			}
			p, seq, rel = p[-rel:], next, 0
		}
		if rel == 0 && binary.BigEndian.Uint16(d[dHi:]) == 0 && (d[dFlags]&fHeld == 0 || !x.pool.has(x.cur)) {
			// In order, nothing waiting: the common case.
			x.sent.add(x.cur, next, p, x.now)
			x.deliver(d, p, 6, src, dst)
			binary.BigEndian.PutUint32(d[dNext:], next+uint32(len(p)))
			return
		}
		if rel < reasmWindow {
			n := min(len(p), reasmWindow-rel)
			x.place(d, rel, p[:n], src, dst)
			x.drain(d, src, dst)
			seq, p = seq+uint32(n), p[n:]
			continue
		}
		ok, conflict := x.pool.add(x.cur, next, seq, p, x.now)
		if conflict {
			x.conflict(src, dst)
		}
		if ok {
			d[dFlags] |= fHeld
			return
		}
		// Neither the window nor the pool can hold it: skip the hole
		// before the first byte waiting, and go on from there.
		x.skip(d, seq, src, dst)
	}
}

// place stores p at rel bytes past next (p within the window), the first
// copy of each byte standing, and delivers what became in order.
func (x *IDS) place(d []byte, rel int, p []byte, src, dst netip.AddrPort) {
	conflict := false
	for i := range p {
		if j := rel + i; !bit(d, j) {
			d[dBuf+j] = p[i]
			setBit(d, j)
		} else if d[dBuf+j] != p[i] {
			conflict = true
		}
	}
	if conflict {
		x.conflict(src, dst)
	}
	hi := max(int(binary.BigEndian.Uint16(d[dHi:])), rel+len(p))
	binary.BigEndian.PutUint16(d[dHi:], uint16(hi))
	x.flush(d, src, dst)
}

// flush delivers the window's in-order prefix and shifts the window past
// it.
func (x *IDS) flush(d []byte, src, dst netip.AddrPort) {
	hi := int(binary.BigEndian.Uint16(d[dHi:]))
	n := 0
	for n < hi && bit(d, n) {
		n++
	}
	if n == 0 {
		return
	}
	x.win = append(x.win[:0], d[dBuf:dBuf+n]...)
	x.sent.add(x.cur, binary.BigEndian.Uint32(d[dNext:]), x.win, x.now)
	x.deliver(d, x.win, 6, src, dst)
	x.shift(d, n)
}

// shift moves the window n bytes forward: next and the buffer with it.
func (x *IDS) shift(d []byte, n int) {
	hi := int(binary.BigEndian.Uint16(d[dHi:]))
	copy(d[dBuf:], d[dBuf+n:dBuf+hi])
	shiftBitmap(d[dBitmap:dBitmap+reasmWindow/8], n, hi)
	binary.BigEndian.PutUint16(d[dHi:], uint16(hi-n))
	binary.BigEndian.PutUint32(d[dNext:], binary.BigEndian.Uint32(d[dNext:])+uint32(n))
}

// drain moves what the pool holds for this direction into the window as
// the window reaches it, delivering what becomes in order.
func (x *IDS) drain(d []byte, src, dst netip.AddrPort) {
	for {
		if d[dFlags]&fHeld == 0 {
			return
		}
		seq, data, ok := x.pool.front(x.cur)
		if !ok {
			d[dFlags] &^= fHeld
			return
		}
		rel := int(int32(seq - binary.BigEndian.Uint32(d[dNext:])))
		switch {
		case rel < 0: // delivered already (a skip passed it)
			x.pool.consume(x.cur, min(-rel, len(data)))
		case rel < reasmWindow:
			n := min(len(data), reasmWindow-rel)
			x.place(d, rel, data[:n], src, dst)
			x.pool.consume(x.cur, n)
		default:
			return
		}
	}
}

// skip gives up the hole before the first byte waiting (in the window,
// in the pool, or else at seq): counted, remembered so that its bytes are
// scanned on their own should they come, and matching restarts after it.
func (x *IDS) skip(d []byte, seq uint32, src, dst netip.AddrPort) {
	x.drain(d, src, dst) // what lies behind next goes first: the pool's front is ahead
	next := binary.BigEndian.Uint32(d[dNext:])
	to := seq
	if s, _, ok := x.pool.front(x.cur); ok && int32(s-next) > 0 && int32(s-next) < int32(to-next) {
		to = s
	}
	hi := int(binary.BigEndian.Uint16(d[dHi:]))
	for i := 0; i < hi; i++ {
		if bit(d, i) {
			to = next + uint32(i)
			break
		}
	}
	x.Gaps++
	x.once(d, aGap, Alert{SID: DecoderSID, Msg: "TCP reassembly gap: bytes held out of order past the reorder pool's bounds, a hole skipped unscanned", Src: src, Dst: dst})
	d[dFlags] |= fGap
	binary.BigEndian.PutUint32(d[dGapLo:], next)
	binary.BigEndian.PutUint32(d[dGapHi:], to)
	binary.BigEndian.PutUint32(d[dAC:], 0)
	d[dTailLen] = 0
	if n := int(int32(to - next)); n < hi {
		x.shift(d, n)
	} else {
		clear(d[dBitmap : dBitmap+reasmWindow/8])
		binary.BigEndian.PutUint16(d[dHi:], 0)
		binary.BigEndian.PutUint32(d[dNext:], to)
	}
	x.flush(d, src, dst)
	x.drain(d, src, dst)
}

// retransmitted compares the part of p (at seq) that was delivered
// already with the bytes delivered that the peer has not acknowledged
// (unacked), and with the last bytes delivered (the tail): other bytes
// there are an overlap a host may have resolved either way, or a decoy
// the IDS read and the host never did.
func (x *IDS) retransmitted(d []byte, seq uint32, p []byte, src, dst netip.AddrPort) {
	if x.sent.differs(x.cur, seq, p) {
		x.conflict(src, dst)
		return
	}
	// What the peer acknowledged is the host's: a copy of it, whatever it
	// holds, the host ignores.
	if n := x.sent.acked(x.cur, seq); n > 0 {
		if n >= len(p) {
			return
		}
		seq, p = seq+uint32(n), p[n:]
	}
	next := binary.BigEndian.Uint32(d[dNext:])
	tl := int64(d[dTailLen])
	tail := d[dTail : dTail+tl]
	// Stream offsets relative to next: the tail is [-tl, 0), p is
	// [rel, rel+len(p)).
	rel := int64(int32(seq - next))
	lo, hi := max(rel, -tl), min(rel+int64(len(p)), 0)
	if lo >= hi {
		return
	}
	if string(p[lo-rel:hi-rel]) != string(tail[lo+tl:hi+tl]) {
		x.conflict(src, dst)
	}
}

// inHole scans, on its own, the part of p (at seq) that lies in the last
// hole skipped: bytes that came after matching moved past them.
func (x *IDS) inHole(d []byte, seq uint32, p []byte, src, dst netip.AddrPort) {
	lo, hi := binary.BigEndian.Uint32(d[dGapLo:]), binary.BigEndian.Uint32(d[dGapHi:])
	if lo == hi {
		return
	}
	a := max(0, int64(int32(lo-seq)))
	b := min(int64(len(p)), int64(int32(hi-seq)))
	if a >= b {
		return
	}
	var scratch [dirSize]byte
	x.deliver(scratch[:], p[a:b], 6, src, dst)
}

// conflict raises the alert for overlapping segments with different bytes.
func (x *IDS) conflict(src, dst netip.AddrPort) {
	x.Conflicts++
	x.once(x.d, aOverlap, Alert{SID: DecoderSID, Msg: "TCP segments overlap with different bytes (an evasion attempt, or a broken path)", Src: src, Dst: dst})
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
			x.alert(Alert{SID: r.SID, Msg: r.Msg, Src: src, Dst: dst})
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

// idsLive reports whether a TCP state is a live connection: its handshake
// completed (the opener acknowledged the SYN-ACK: a SYN flood answered by
// SYN-ACKs is not), and no side has reset or finished it.
func idsLive(st []byte) bool {
	if st[iShake] != 3 || st[iReset] != 0 || st[iOpener] == 0 {
		return false
	}
	if st[connSize+int(st[iOpener]-1)*dirSize+dFlags2]&fAcked == 0 {
		return false
	}
	for side := range 2 {
		if st[connSize+side*dirSize+dFlags]&fFin != 0 {
			return false
		}
	}
	return true
}
