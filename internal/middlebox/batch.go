package middlebox

import "github.com/torbento/bento/internal/flowstate"

// Prefetcher is a StateTable that can start fetching the states of many
// flows at once. The flow-state manager is one: at a million flows each
// packet's state, index entry and sealed copy are cache misses, and a
// batch's misses overlap when its keys are handed over before its packets
// are processed. Prefetching is only a hint; it changes no state.
type Prefetcher interface {
	Prefetch(keys []flowstate.Key)
}

var _ Prefetcher = (*flowstate.Manager)(nil)

// A batch is a group of packets decoded together (an etap record's, say)
// before any is processed.
type batch struct {
	metas []Meta
	keys  []flowstate.Key
	rev   []bool
	ok    []bool // decoded as IP
	want  []flowstate.Key
}

// decode decodes pkts and computes their flow keys, then hands the keys of
// the packets for which stateful (nil: every IP packet) is true to the
// table if it prefetches. The metas alias pkts.
func (b *batch) decode(dec *Decoder, pkts [][]byte, table StateTable, stateful func(*Meta) bool) {
	n := len(pkts)
	if cap(b.metas) < n {
		b.metas, b.keys = make([]Meta, n), make([]flowstate.Key, n)
		b.rev, b.ok = make([]bool, n), make([]bool, n)
	}
	b.metas, b.keys, b.rev, b.ok = b.metas[:n], b.keys[:n], b.rev[:n], b.ok[:n]
	b.want = b.want[:0]
	for i, p := range pkts {
		m := &b.metas[i]
		b.ok[i] = dec.Decode(p, m)
		if !b.ok[i] {
			continue
		}
		b.keys[i], b.rev[i] = m.Key()
		if stateful == nil || stateful(m) {
			b.want = append(b.want, b.keys[i])
		}
	}
	if p, ok := table.(Prefetcher); ok && len(b.want) > 0 {
		p.Prefetch(b.want)
	}
}
