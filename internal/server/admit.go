package server

import (
	"context"
	"fmt"
	"sync"

	"github.com/torbento/bento/internal/budget"
	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/units"
)

// origin is who an instance is charged to: the client that deployed it,
// or, for an instance a function deployed on this very bentod, the client
// that deployed that function.
type origin struct {
	owner string // per-client fairness key: an IP address, "" for clients through Tor
	root  string // id of the root instance a client deployed; "" for a client's own deploy
	depth int    // composition depth: 0 for a client's own deploy
	// protected: deployed by a protected function (FS Protect), whose
	// children must be protected too.
	protected bool
}

// root groups a client's instance with everything its functions started
// here, for the composition bounds.
type root struct {
	id        string
	owner     string // the client that deployed the root ("" through Tor)
	instances int    // instances functions of this root started, alive
	calls     int    // remote.* calls in progress
	refs      int    // instances of the group alive, the root included
}

// budgetKey is the key of the byte budget a client (or its functions)
// are charged to: its address, or one shared key for clients through Tor.
func budgetKey(owner string) string {
	if owner == "" {
		return "onion"
	}
	return owner
}

// admission is what one instance holds of the aggregate ceilings.
type admission struct {
	memory int64
	milli  int64
	owner  string
	root   string
	child  bool // counted in its root's instances
}

// admit reserves an instance's resources within the aggregate ceilings,
// the owner's share and its root's composition bounds.
func (s *Server) admit(m *manifest.Manifest, o origin, id string) (*admission, *proto.Error) {
	p := s.policy()
	r := m.Resources
	milli := policy.MilliCores(r.CPU)
	busy := func(format string, a ...any) *proto.Error {
		return &proto.Error{Code: proto.CodeBusy, Message: "busy, retry later: " + fmt.Sprintf(format, a...)}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.closed:
		return nil, busy("bentod is shutting down")
	default:
	}
	if o.depth > p.Composition.MaxDepth {
		return nil, &proto.Error{Code: proto.CodeRefused, Message: fmt.Sprintf("composition is %d deep here, more than this node allows (MaxCompositionDepth %d)", o.depth, p.Composition.MaxDepth)}
	}
	switch {
	case s.running >= p.Aggregate.Instances:
		return nil, busy("%d instances are running (MaxInstances)", s.running)
	case s.usedMem+r.Memory > s.totalMemory(p):
		return nil, busy("%s of memory is free for functions, %s asked", units.FormatSize(max(0, s.totalMemory(p)-s.usedMem)), units.FormatSize(r.Memory))
	case s.usedMilli+milli > policy.MilliCores(p.Aggregate.CPU):
		return nil, busy("%.2f cores are free for functions, %.2f asked", float64(max(0, policy.MilliCores(p.Aggregate.CPU)-s.usedMilli))/1000, r.CPU)
	}
	if o.owner != "" {
		if limit := perClientLimit(p); s.perClient[o.owner] >= limit {
			return nil, busy("you already hold %d instances here (MaxInstancesPerClient)", s.perClient[o.owner])
		}
	}
	var rt *root
	if o.root != "" {
		rt = s.roots[o.root]
		if rt == nil {
			return nil, &proto.Error{Code: proto.CodeGone, Message: "the function that deploys has ended"}
		}
		if rt.instances >= p.Composition.MaxInstances {
			return nil, busy("functions started by one client's instance hold %d instances here (MaxComposedInstances)", rt.instances)
		}
	}
	s.running++
	s.usedMem += r.Memory
	s.usedMilli += milli
	if o.owner != "" {
		s.perClient[o.owner]++
	}
	a := &admission{memory: r.Memory, milli: milli, owner: o.owner, root: o.root}
	if rt != nil {
		rt.instances++
		rt.refs++
		a.child = true
	} else {
		a.root = id
		s.roots[id] = &root{id: id, owner: o.owner, refs: 1}
	}
	return a, nil
}

// unadmit gives an admission back (once).
func (s *Server) unadmit(a *admission) {
	if a == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.running--
	s.usedMem -= a.memory
	s.usedMilli -= a.milli
	if a.owner != "" {
		if s.perClient[a.owner]--; s.perClient[a.owner] <= 0 {
			delete(s.perClient, a.owner)
		}
	}
	if rt := s.roots[a.root]; rt != nil {
		if a.child {
			rt.instances--
		}
		if rt.refs--; rt.refs <= 0 {
			delete(s.roots, a.root)
		}
	}
}

func perClientLimit(p *policy.Policy) int {
	if p.Aggregate.PerClient > 0 {
		return p.Aggregate.PerClient
	}
	return max(1, p.Aggregate.Instances/4)
}

// beginCall counts a remote.* call of root id against MaxCompositionCalls.
func (s *Server) beginCall(id string) (func(), error) {
	limit := s.policy().Composition.MaxCalls
	s.mu.Lock()
	defer s.mu.Unlock()
	rt := s.roots[id]
	if rt == nil {
		return nil, fmt.Errorf("the instance has ended")
	}
	// Per root, and per client over all its roots: a client with many
	// instances gets no more calls at once than one with one.
	n := rt.calls
	if rt.owner != "" {
		n = s.ownerCalls[rt.owner]
	}
	if n >= limit {
		return nil, fmt.Errorf("%d composition calls of this client's functions are in progress (MaxCompositionCalls); wait for one to finish", n)
	}
	rt.calls++
	if rt.owner != "" {
		s.ownerCalls[rt.owner]++
	}
	return func() {
		s.mu.Lock()
		rt.calls--
		if rt.owner != "" {
			if s.ownerCalls[rt.owner]--; s.ownerCalls[rt.owner] <= 0 {
				delete(s.ownerCalls, rt.owner)
			}
		}
		s.mu.Unlock()
	}, nil
}

// clientShare is how much of the bytes in flight one client may hold, its
// functions included: a quarter of the whole, and at least what one of
// its instances may need (policy.Validate makes sure two such shares fit).
func clientShare(p *policy.Policy) int64 {
	return max(p.Daemon.MaxInFlight/4, p.Max.Upload+deployLimitSlack, policy.InstanceInFlight(p.Max))
}

// deployLimitSlack is what a deploy frame holds beyond the upload.
const deployLimitSlack = 96 << 10

// instanceShare is how much of the bytes in flight one instance's host
// calls may hold: twice its largest item (one gathered, one arriving).
func instanceShare(r policy.Limits) int64 {
	return policy.InstanceInFlight(r)
}

// keyedBudgets gives each client (by key) a budget of its own inside the
// daemon's, created on first use and dropped when unused.
type keyedBudgets struct {
	parent *budget.Budget
	per    int64

	mu sync.Mutex
	m  map[string]*keyedBudget
}

type keyedBudget struct {
	b    *budget.Budget
	refs int
}

// get returns the key's chained budget (its own, then the daemon's); put
// it back with done. A key's budget lives while anyone holds it.
func (k *keyedBudgets) get(key string) (chain, func()) {
	k.mu.Lock()
	kb := k.m[key]
	if kb == nil {
		kb = &keyedBudget{b: budget.New(k.per)}
		k.m[key] = kb
	}
	kb.refs++
	k.mu.Unlock()
	var once sync.Once
	return chain{kb.b, k.parent}, func() {
		once.Do(func() {
			k.mu.Lock()
			if kb.refs--; kb.refs == 0 {
				delete(k.m, key)
			}
			k.mu.Unlock()
		})
	}
}

// chain charges budgets in order: a holder's own, its client's, the
// daemon's.
type chain []*budget.Budget

// Acquire implements wire.Budget.
func (c chain) Acquire(ctx context.Context, n int64) error {
	for i, b := range c {
		if err := b.Acquire(ctx, n); err != nil {
			for j := i - 1; j >= 0; j-- {
				c[j].Release(n)
			}
			return err
		}
	}
	return nil
}

// Release implements wire.Budget.
func (c chain) Release(n int64) {
	for i := len(c) - 1; i >= 0; i-- {
		c[i].Release(n)
	}
}
