package boxdir

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/torbento/bento/internal/policy"
)

// Box is a box found in the directory, its statement checked.
type Box struct {
	Relay     Relay
	Statement Statement
	Policy    *policy.Public
}

// Addr is the box's onion address and port.
func (b Box) Addr() string { return b.Statement.Box.Addr() }

// Rejected is an announced box that did not check out, and why.
type Rejected struct {
	Relay  Relay
	Addr   string // as announced ("" when the field itself was bad)
	Reason string
}

// Source is the client's tor: GETINFO is all discovery needs.
type Source interface {
	GetInfo(ctx context.Context, keys ...string) (map[string]string, error)
}

// FetchPolicy fetches a box's public policy (with its statement) through
// Tor, and the JSON it was served as; package client provides one.
type FetchPolicy func(ctx context.Context, addr string) (*policy.Public, []byte, error)

// Options tune Discover.
type Options struct {
	Parallel int           // policies fetched at once (default 8)
	Timeout  time.Duration // per box (default 20 s)
	MaxBoxes int           // boxes fetched at most, the largest relays first (default 512)
	Now      time.Time     // default time.Now()
}

// ErrNoDescriptors means the client's tor holds no relay descriptors: it
// uses microdescriptors, which carry no ContactInfo.
var ErrNoDescriptors = errors.New("the tor has no relay descriptors: set UseMicrodescriptors 0 (or FetchUselessDescriptors 1) in its torrc, so that it fetches the relays' descriptors, which carry their announcements")

// Discover lists the boxes the relays of src's tor announce: it reads the
// relays' descriptors and consensus entries, fetches each announced box's
// policy and statement, and keeps the boxes whose statement is signed by
// the onion address announced, names the relay that announced it, and
// matches the policy served. The others come back as Rejected.
func Discover(ctx context.Context, src Source, fetch FetchPolicy, o Options) ([]Box, []Rejected, error) {
	if o.Parallel <= 0 {
		o.Parallel = 8
	}
	if o.Timeout <= 0 {
		o.Timeout = 20 * time.Second
	}
	if o.MaxBoxes <= 0 {
		o.MaxBoxes = 512
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	// One document per request: each gets the reply limit to itself.
	info, err := src.GetInfo(ctx, "desc/all-recent")
	if err != nil {
		return nil, nil, fmt.Errorf("reading the relays' descriptors from tor: %w", err)
	}
	relays, err := ParseDescriptors(info["desc/all-recent"])
	if err != nil {
		return nil, nil, err
	}
	if len(relays) == 0 {
		return nil, nil, ErrNoDescriptors
	}
	info, err = src.GetInfo(ctx, "ns/all")
	if err != nil {
		return nil, nil, fmt.Errorf("reading the consensus from tor: %w", err)
	}
	statuses, err := ParseStatuses(info["ns/all"])
	if err != nil {
		return nil, nil, err
	}
	type job struct {
		r   Relay
		ann Announcement
	}
	var jobs []job
	var rejected []Rejected
	for _, r := range relays {
		st, ok := statuses[r.Fingerprint]
		if !ok {
			continue // not in the consensus: clients would not use it
		}
		r.Weight, r.Unmeasured, r.Running = st.Weight, st.Unmeasured, st.Running
		ann, err := ParseContact(r.Contact)
		switch {
		case errors.Is(err, ErrNoBox):
			continue
		case err != nil:
			rejected = append(rejected, Rejected{Relay: r, Reason: err.Error()})
			continue
		}
		jobs = append(jobs, job{r, ann})
	}
	// Every announcement costs a fetch through Tor: the largest relays'
	// boxes are fetched, at most MaxBoxes of them.
	sort.SliceStable(jobs, func(i, k int) bool { return jobs[i].r.Weight > jobs[k].r.Weight })
	if len(jobs) > o.MaxBoxes {
		for _, j := range jobs[o.MaxBoxes:] {
			rejected = append(rejected, Rejected{Relay: j.r, Addr: j.ann.Addr(), Reason: fmt.Sprintf("not fetched: only the %d largest relays' boxes are", o.MaxBoxes)})
		}
		jobs = jobs[:o.MaxBoxes]
	}
	var (
		mu    sync.Mutex
		boxes []Box
		wg    sync.WaitGroup
		sem   = make(chan struct{}, o.Parallel)
	)
	for _, j := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			fctx, cancel := context.WithTimeout(ctx, o.Timeout)
			defer cancel()
			b, err := check(fctx, j.r, j.ann, fetch, o.Now)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				rejected = append(rejected, Rejected{Relay: j.r, Addr: j.ann.Addr(), Reason: err.Error()})
				return
			}
			boxes = append(boxes, b)
		}()
	}
	wg.Wait()
	sort.Slice(boxes, func(i, k int) bool { return boxes[i].Relay.Fingerprint < boxes[k].Relay.Fingerprint })
	sort.Slice(rejected, func(i, k int) bool { return rejected[i].Relay.Fingerprint < rejected[k].Relay.Fingerprint })
	return boxes, rejected, nil
}

// check fetches an announced box's policy and checks its statement.
func check(ctx context.Context, r Relay, ann Announcement, fetch FetchPolicy, now time.Time) (Box, error) {
	pub, raw, err := fetch(ctx, ann.Addr())
	if err != nil {
		return Box{}, fmt.Errorf("fetching its policy: %w", err)
	}
	st, err := VerifyPolicy(pub, raw, r.Fingerprint, ann, now)
	if err != nil {
		return Box{}, err
	}
	return Box{Relay: r, Statement: st, Policy: pub}, nil
}

// VerifyPolicy checks the statement a box served with its policy (pub,
// decoded from served): signed by the announced onion address, naming the
// relay that announced it, matching the policy and its end, and not from
// the future.
func VerifyPolicy(pub *policy.Public, served []byte, relayFP string, ann Announcement, now time.Time) (Statement, error) {
	if pub.Box == nil || pub.Box.Statement == "" {
		return Statement{}, errors.New("it serves no statement (not a box announced for a relay, or an older bentod)")
	}
	st, err := ParseStatement(pub.Box.Statement)
	if err != nil {
		return Statement{}, err
	}
	switch {
	case st.Box != ann:
		return st, fmt.Errorf("its statement is for %s, not the address announced", st.Box.Addr())
	case st.Relay != relayFP:
		return st, fmt.Errorf("its statement names relay %s, not the relay that announces it: a box may be claimed by its own relay only", st.Relay)
	}
	if d, err := PolicyDigest(served); err != nil || d != st.PolicyDigest {
		return st, errors.New("its statement does not match the policy it serves")
	}
	switch {
	case st.Published.After(now.Add(time.Hour)):
		return st, fmt.Errorf("its statement is dated %s, in the future", st.Published.Format(time.RFC3339))
	}
	var end, drain time.Time
	if pub.Box.EndsAt != nil {
		end = *pub.Box.EndsAt
	}
	if pub.Box.DrainAt != nil {
		drain = *pub.Box.DrainAt
	}
	if !end.Equal(st.EndsAt) || !drain.Equal(st.DrainAt) {
		return st, errors.New("its policy and its statement give different ends")
	}
	return st, nil
}
