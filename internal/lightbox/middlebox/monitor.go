package middlebox

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/torbento/bento/internal/lightbox/flowstate"
)

// MonitorStateSize is the monitor's per-flow state, about PRADS's.
const MonitorStateSize = 512

// Layout of a monitor state (all integers big-endian).
const (
	mProto     = 0  // u8
	mClient    = 1  // u8: 1 the key's first endpoint is the client, 2 the second
	mFlagsA    = 2  // u8: TCP flags seen from the first endpoint
	mFlagsB    = 3  // u8: ... from the second
	mFirst     = 4  // u64 ns
	mLast      = 12 // u64 ns
	mPktsA     = 20 // u64
	mPktsB     = 28 // u64
	mBytesA    = 36 // u64
	mBytesB    = 44 // u64
	mReported  = 52 // u8: bit 0 service asset, bit 1 banner
	mBannerLen = 53 // u8
	mBanner    = 54 // [64]byte: first bytes the server sent
	bannerMax  = 64
	mClosed    = mBanner + bannerMax // u8: 1 once both sides sent FIN
	mEndA      = mClosed + 1         // [endSize]: where what the first endpoint sent ends (see advanceEnd)
	mEndB      = mEndA + endSize     // ... the second
)

// Asset is something the monitor learned about a host.
type Asset struct {
	Host   netip.Addr
	Kind   string // "os" or "service"
	Detail string // e.g. "Linux/Unix (TTL 64)" or "tcp/22 ssh: SSH-2.0-OpenSSH_9.2"
}

func (a Asset) String() string { return fmt.Sprintf("%s %s %s", a.Host, a.Kind, a.Detail) }

// FlowRecord summarizes a finished flow.
type FlowRecord struct {
	Client, Server           netip.AddrPort
	Proto                    uint8
	PktsToServer, PktsBack   uint64
	BytesToServer, BytesBack uint64
	First, Last              time.Time
}

func (r FlowRecord) String() string {
	return fmt.Sprintf("%s %s -> %s packets %d/%d bytes %d/%d", protoName(r.Proto), r.Client, r.Server,
		r.PktsToServer, r.PktsBack, r.BytesToServer, r.BytesBack)
}

// Monitor is a passive flow monitor and asset detector. It forwards every
// packet unchanged.
type Monitor struct {
	Table   StateTable
	dec     *Decoder
	assets  map[Asset]struct{} // a set: Asset is comparable, no key to format
	Records []FlowRecord
	// Untracked counts packets of new flows the state table had no room
	// for (it was full of established connections).
	Untracked int
	meta      Meta
}

// NewMonitor returns a monitor keeping per-flow state in table.
func NewMonitor(table StateTable, dec *Decoder) *Monitor {
	return &Monitor{Table: table, dec: dec, assets: map[Asset]struct{}{}}
}

// Handle processes one packet at trusted time now.
func (mo *Monitor) Handle(data []byte, now time.Time) error {
	m := &mo.meta
	if !mo.dec.Decode(data, now, m) {
		return nil
	}
	k, reverse := m.Key()
	st, created, err := mo.Table.Lookup(k, now)
	if errors.Is(err, flowstate.ErrFull) {
		mo.Untracked++
		return nil
	}
	if err != nil {
		return err
	}
	before := !created && monLive(st)
	mo.track(m, k, st, created, reverse, now)
	if live := monLive(st); live != before {
		setClass(mo.Table, k, live)
	}
	return nil
}

// track updates flow k's state st with packet m.
func (mo *Monitor) track(m *Meta, k flowstate.Key, st []byte, created, reverse bool, now time.Time) {
	ns := uint64(now.UnixNano())
	if !created && st[mClosed] == 1 && m.Proto == 6 && m.Flags&(SYN|ACK) == SYN {
		// A closed connection's ports used again: the old one is over.
		mo.finish(k, st)
		clear(st)
		created = true
	}
	if created {
		st[mProto] = m.Proto
		binary.BigEndian.PutUint64(st[mFirst:], ns)
		// The client is who sent the first packet, or the SYN's sender.
		st[mClient] = 1
		if reverse {
			st[mClient] = 2
		}
	}
	if m.Flags&SYN != 0 && m.Flags&ACK == 0 {
		st[mClient] = 1
		if reverse {
			st[mClient] = 2
		}
		mo.addAsset(Asset{Host: m.Src, Kind: "os", Detail: guessOS(m.TTL)})
	}
	binary.BigEndian.PutUint64(st[mLast:], ns)
	side := 0 // 0: from the key's first endpoint
	if reverse {
		side = 1
	}
	add := func(off int, v uint64) { binary.BigEndian.PutUint64(st[off:], binary.BigEndian.Uint64(st[off:])+v) }
	add(mPktsA+8*side, 1)
	add(mBytesA+8*side, uint64(m.Len))
	st[mFlagsA+side] |= m.Flags
	fromServer := int(st[mClient]) != side+1
	if fromServer {
		server := netip.AddrPortFrom(m.Src, m.SrcPort)
		if st[mReported]&1 == 0 && (m.Proto != 6 || m.Flags&(SYN|ACK) == SYN|ACK || len(m.Payload) > 0) {
			st[mReported] |= 1
			mo.addAsset(Asset{Host: server.Addr(), Kind: "service", Detail: fmt.Sprintf("%s/%d", protoName(m.Proto), server.Port())})
		}
		if st[mReported]&2 == 0 && len(m.Payload) > 0 {
			st[mReported] |= 2
			n := copy(st[mBanner:mBanner+bannerMax], m.Payload)
			st[mBannerLen] = byte(n)
			if name, line := classify(m.Payload); name != "" {
				mo.addAsset(Asset{Host: server.Addr(), Kind: "service", Detail: fmt.Sprintf("%s/%d %s: %s", protoName(m.Proto), server.Port(), name, line)})
			}
		}
	}
	// A TCP flow ends on a RST the host takes (at the sequence number it
	// expects: resetAccepted) or once both sides sent FIN; it lingers
	// then (as TIME_WAIT), so the last ACK, late retransmissions and what
	// a peer sends before it learns of the RST count in it rather than
	// start a flow of their own, and it is recorded when the state table
	// expires it (or a new SYN reuses its ports).
	end, other := st[mEndA+endSize*side:][:endSize], st[mEndA+endSize*(1-side):][:endSize]
	switch {
	case m.Proto == 6 && m.Flags&RST != 0:
		if resetAccepted(end, other, m) {
			st[mClosed] = 1
		}
		return
	case m.Proto == 6:
		advanceEnd(end, m)
		if st[mFlagsA]&st[mFlagsB]&FIN != 0 {
			st[mClosed] = 1
		}
	}
}

// monLive reports whether a monitor state is a live TCP connection: both
// sides acknowledged, a SYN was seen, and it has not closed.
func monLive(st []byte) bool {
	return st[mProto] == 6 && st[mClosed] == 0 && st[mFlagsA]&ACK != 0 && st[mFlagsB]&ACK != 0 && (st[mFlagsA]|st[mFlagsB])&SYN != 0
}

// Expired records a flow the state table expired.
func (mo *Monitor) Expired(k flowstate.Key, st []byte) { mo.finish(k, st) }

func (mo *Monitor) finish(k flowstate.Key, st []byte) {
	a := netip.AddrPortFrom(netip.AddrFrom16([16]byte(k[0:16])).Unmap(), binary.BigEndian.Uint16(k[32:]))
	b := netip.AddrPortFrom(netip.AddrFrom16([16]byte(k[16:32])).Unmap(), binary.BigEndian.Uint16(k[34:]))
	r := FlowRecord{Proto: st[mProto], Client: a, Server: b,
		PktsToServer: binary.BigEndian.Uint64(st[mPktsA:]), PktsBack: binary.BigEndian.Uint64(st[mPktsB:]),
		BytesToServer: binary.BigEndian.Uint64(st[mBytesA:]), BytesBack: binary.BigEndian.Uint64(st[mBytesB:]),
		First: time.Unix(0, int64(binary.BigEndian.Uint64(st[mFirst:]))), Last: time.Unix(0, int64(binary.BigEndian.Uint64(st[mLast:])))}
	if st[mClient] == 2 {
		r.Client, r.Server = b, a
		r.PktsToServer, r.PktsBack = r.PktsBack, r.PktsToServer
		r.BytesToServer, r.BytesBack = r.BytesBack, r.BytesToServer
	}
	mo.Records = append(mo.Records, r)
}

func (mo *Monitor) addAsset(a Asset) {
	mo.assets[a] = struct{}{}
}

// Assets returns what was learned, sorted.
func (mo *Monitor) Assets() []Asset {
	out := make([]Asset, 0, len(mo.assets))
	for a := range mo.assets {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// guessOS maps the initial TTL class of a SYN to an operating system
// family, as p0f and PRADS do in their simplest form.
func guessOS(ttl uint8) string {
	switch {
	case ttl <= 64:
		return "Linux/Unix (TTL 64)"
	case ttl <= 128:
		return "Windows (TTL 128)"
	}
	return "network device (TTL 255)"
}

// classify names a service from the first bytes a server sent.
func classify(p []byte) (string, string) {
	line := p
	if i := bytes.IndexAny(line, "\r\n"); i >= 0 {
		line = line[:i]
	}
	if len(line) > bannerMax {
		line = line[:bannerMax]
	}
	s := strings.ToValidUTF8(string(line), "?")
	switch {
	case bytes.HasPrefix(p, []byte("SSH-")):
		return "ssh", s
	case bytes.HasPrefix(p, []byte("HTTP/")):
		return "http", s
	case bytes.HasPrefix(p, []byte("220")):
		return "ftp/smtp", s
	}
	return "", ""
}

func protoName(p uint8) string {
	switch p {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	}
	return fmt.Sprintf("ip%d", p)
}
