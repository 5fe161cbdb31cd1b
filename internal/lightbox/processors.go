package lightbox

import (
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/torbento/bento/internal/lightbox/defrag"
	"github.com/torbento/bento/internal/lightbox/etap"
	"github.com/torbento/bento/internal/lightbox/flowstate"
	"github.com/torbento/bento/internal/lightbox/middlebox"
)

// ProcessorConfig chooses and sets up a middlebox.
type ProcessorConfig struct {
	Name         string           // forward, monitor, firewall, ids
	Rules        []middlebox.Rule // ids
	LinkType     layers.LinkType
	CacheEntries int           // trusted cache of flow states (0: as many as fit in CacheBytes)
	CacheBytes   int           // trusted memory for cached states when CacheEntries is 0 (default 32 MiB)
	IdleTimeout  time.Duration // flows idle this long expire (default DefaultIdleTimeout)
	// EstablishedTimeout: established TCP connections idle this long
	// expire (default DefaultEstablishedTimeout).
	EstablishedTimeout time.Duration
	// FlowBytes bounds the memory of tracked flows (index, entries and
	// sealed states; default DefaultFlowBytes): a full table displaces
	// flows that are not established connections, else refuses new ones.
	FlowBytes  int
	Inside     []netip.Prefix
	Allowed    []netip.AddrPort
	FragPolicy defrag.Policy           // how overlapping IPv4 fragments are resolved
	Reorder    middlebox.ReorderConfig // ids: TCP data held out of order beyond each flow's window
	Checksums  middlebox.ChecksumMode  // ids: whether packets with wrong checksums are dropped (a host drops them)
	Report     io.Writer               // where the monitor writes assets and flows, and the firewall its drops
}

// Idle timeouts. A host keeps an idle established connection for hours
// (Linux's conntrack: 5 days; Suricata forgets one after an hour);
// everything else a middlebox forgets after two minutes, as TIME_WAIT
// lasts (conntrack's SYN_SENT and TIME_WAIT: 2 minutes).
const (
	DefaultIdleTimeout        = 2 * time.Minute
	DefaultEstablishedTimeout = time.Hour
)

// DefaultFlowBytes is the memory tracked flows may take by default: 1
// GiB, about 175,000 of the IDS's flows or 7 million of the firewall's.
const DefaultFlowBytes = 1 << 30

// maxFlows is how many flows of stateSize bytes fit in FlowBytes: each
// costs its trusted index entry (64 bytes), its index slot (16) and its
// sealed state in the store.
func (cfg *ProcessorConfig) maxFlows(stateSize int) int {
	return max(1024, cfg.FlowBytes/(64+16+12+stateSize+16))
}

// DefaultCacheBytes is the trusted memory given to cached flow states when
// neither a number of states nor a size is set: 65,536 of the monitor's
// states, with which the monitor and the firewall run within 1.1× of a
// plain map at a million flows (docs/benchmarks.md); LightBox's 4096
// states, sized for an SGX enclave, cost up to 1.5×.
const DefaultCacheBytes = 32 << 20

// cacheEntries is how many states of size bytes the cache holds.
func (cfg *ProcessorConfig) cacheEntries(size int) int {
	if cfg.CacheEntries > 0 {
		return cfg.CacheEntries
	}
	return max(64, cfg.CacheBytes/size)
}

// NewProcessor builds the named middlebox on a flow-state manager.
func NewProcessor(cfg ProcessorConfig) (Processor, func() error, error) {
	if cfg.CacheEntries < 0 || cfg.CacheBytes < 0 {
		return nil, nil, fmt.Errorf("the flow-state cache cannot be negative (entries %d, bytes %d)", cfg.CacheEntries, cfg.CacheBytes)
	}
	if cfg.CacheBytes == 0 {
		cfg.CacheBytes = DefaultCacheBytes
	}
	if cfg.FlowBytes < 0 {
		return nil, nil, fmt.Errorf("the flow memory cannot be negative (%d bytes)", cfg.FlowBytes)
	}
	if cfg.FlowBytes == 0 {
		cfg.FlowBytes = DefaultFlowBytes
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.EstablishedTimeout == 0 {
		cfg.EstablishedTimeout = max(cfg.IdleTimeout, DefaultEstablishedTimeout)
	}
	if cfg.IdleTimeout < 0 || cfg.EstablishedTimeout < cfg.IdleTimeout {
		return nil, nil, fmt.Errorf("idle timeouts: %v for flows, %v for established connections: want positive, and established at least as long", cfg.IdleTimeout, cfg.EstablishedTimeout)
	}
	dec, err := middlebox.NewDecoder(cfg.LinkType)
	if err != nil {
		return nil, nil, err
	}
	dec.Defrag = defrag.New(defrag.Config{Policy: cfg.FragPolicy})
	switch cfg.Name {
	case "", "forward":
		return Forward{}, func() error { return nil }, nil
	case "monitor":
		var mo *middlebox.Monitor
		m, err := flowstate.New(flowstate.Config{StateSize: middlebox.MonitorStateSize, CacheEntries: cfg.cacheEntries(middlebox.MonitorStateSize), IdleTimeout: cfg.IdleTimeout, EstablishedTimeout: cfg.EstablishedTimeout,
			MaxFlows: cfg.maxFlows(middlebox.MonitorStateSize), OnEvict: func(k flowstate.Key, st []byte) { mo.Expired(k, st) }})
		if err != nil {
			return nil, nil, err
		}
		mo = middlebox.NewMonitor(m, dec)
		p := &monitorProc{mo: mo, m: m, exp: expiry{m: m, onExpire: mo.Expired}}
		return p, func() error {
			m.Expire(p.last.Add(cfg.EstablishedTimeout+time.Nanosecond), mo.Expired) // the capture is over
			fmt.Fprintln(cfg.Report, dec.Stats)
			for _, a := range mo.Assets() {
				fmt.Fprintf(cfg.Report, "asset %s\n", a)
			}
			for _, r := range mo.Records {
				fmt.Fprintf(cfg.Report, "flow %s\n", r)
			}
			reportTable(cfg.Report, m, mo.Untracked)
			return p.err
		}, nil
	case "firewall":
		m, err := flowstate.New(flowstate.Config{StateSize: middlebox.FirewallStateSize, CacheEntries: cfg.cacheEntries(middlebox.FirewallStateSize), IdleTimeout: cfg.IdleTimeout, EstablishedTimeout: cfg.EstablishedTimeout,
			MaxFlows: cfg.maxFlows(middlebox.FirewallStateSize)})
		if err != nil {
			return nil, nil, err
		}
		fw := middlebox.NewFirewall(m, dec, cfg.Inside, cfg.Allowed)
		p := &firewallProc{fw: fw, exp: expiry{m: m}}
		return p, func() error {
			fmt.Fprintln(cfg.Report, dec.Stats)
			for _, l := range fw.Log {
				fmt.Fprintln(cfg.Report, l)
			}
			if fw.LogDropped > 0 {
				fmt.Fprintf(cfg.Report, "and %d more drops, not listed (the log keeps %d)\n", fw.LogDropped, middlebox.MaxLog)
			}
			reportTable(cfg.Report, m, 0)
			fmt.Fprintf(cfg.Report, "passed %d dropped %d\n", fw.Passed, fw.Dropped)
			return p.err
		}, nil
	case "ids":
		var x *middlebox.IDS
		m, err := flowstate.New(flowstate.Config{StateSize: middlebox.IDSStateSize, CacheEntries: cfg.cacheEntries(middlebox.IDSStateSize), IdleTimeout: cfg.IdleTimeout, EstablishedTimeout: cfg.EstablishedTimeout,
			MaxFlows: cfg.maxFlows(middlebox.IDSStateSize), OnEvict: func(k flowstate.Key, st []byte) { x.Expired(k, st) }})
		if err != nil {
			return nil, nil, err
		}
		x, err = middlebox.NewIDS(m, dec, cfg.Rules)
		if err != nil {
			return nil, nil, err
		}
		x.Reorder = cfg.Reorder
		dec.Checksums = cfg.Checksums
		p := &idsProc{x: x, exp: expiry{m: m, onExpire: x.Expired}}
		return p, func() error {
			fmt.Fprintln(cfg.Report, dec.Stats)
			for _, a := range x.Alerts {
				fmt.Fprintln(cfg.Report, a)
			}
			fmt.Fprintf(cfg.Report, "alerts %d gaps %d ignored %d conflicts %d dropped %d\n", len(x.Alerts), x.Gaps, x.Ignored, x.Conflicts, x.AlertsDropped)
			reportTable(cfg.Report, m, x.Untracked)
			return p.err
		}, nil
	}
	return nil, nil, fmt.Errorf("unknown middlebox %q (want forward, monitor, firewall or ids)", cfg.Name)
}

// reportTable says, if the flow table filled up, what it cost: flows
// displaced for new ones, and packets of new flows that found no room
// (every packet of a refused flow asks again).
func reportTable(w io.Writer, m *flowstate.Manager, untracked int) {
	if m.Stats.Displaced > 0 || m.Stats.Refused > 0 {
		fmt.Fprintf(w, "flow table full: %d flows displaced by new ones; %d packets of new flows found no room, %d of them not tracked (raise -flow-mb)\n",
			m.Stats.Displaced, m.Stats.Refused, untracked)
	}
}

// expiry ends idle flows once a second of trusted time.
type expiry struct {
	m        *flowstate.Manager
	onExpire func(flowstate.Key, []byte) // nil: nothing to report
	last     time.Time
}

func (e *expiry) tick(now time.Time) {
	if now.Sub(e.last) >= time.Second {
		e.last = now
		e.m.Expire(now, e.onExpire)
	}
}

type monitorProc struct {
	mo   *middlebox.Monitor
	m    *flowstate.Manager
	exp  expiry
	last time.Time
	err  error
}

func (p *monitorProc) Process(pkt etap.Packet, now time.Time) []etap.Packet {
	p.last = now
	if err := p.mo.Handle(pkt.Data, now); err != nil && p.err == nil {
		p.err = err
	}
	p.exp.tick(now)
	return []etap.Packet{pkt}
}

type firewallProc struct {
	fw  *middlebox.Firewall
	exp expiry
	err error
}

func (p *firewallProc) Process(pkt etap.Packet, now time.Time) []etap.Packet {
	ok, err := p.fw.Handle(pkt.Data, now)
	if err != nil && p.err == nil {
		p.err = err
	}
	p.exp.tick(now)
	if !ok {
		return nil
	}
	return []etap.Packet{pkt}
}

type idsProc struct {
	x   *middlebox.IDS
	exp expiry
	err error
}

func (p *idsProc) Process(pkt etap.Packet, now time.Time) []etap.Packet {
	if err := p.x.Handle(pkt.Data, now); err != nil && p.err == nil {
		p.err = err
	}
	p.exp.tick(now)
	return []etap.Packet{pkt}
}
