package boxdir

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/policy"
)

// Fit says whether a box can take a function now: listed Running, not in
// its drain period, its policy covering the manifest, its remaining life
// covering the function's (or its min_lifetime), and room for an
// instance. The reason says why not.
func Fit(b Box, m *manifest.Manifest, now time.Time) (bool, string) {
	if !b.Relay.Running {
		return false, "its relay is not Running in the consensus"
	}
	st := b.Statement
	if !st.EndsAt.IsZero() && !now.Before(st.DrainAt) {
		return false, fmt.Sprintf("it ends at %s and takes no new functions from %s", st.EndsAt.Format(time.RFC3339), st.DrainAt.Format(time.RFC3339))
	}
	p, err := policy.FromPublic(b.Policy)
	if err != nil {
		return false, "its policy does not parse: " + err.Error()
	}
	c := *m
	c.Resources = m.Resources
	c.Resolve(p)
	if vs := manifest.Check(&c, p); len(vs) > 0 {
		var items []string
		for _, v := range vs {
			items = append(items, v.String())
		}
		return false, "its policy does not allow " + strings.Join(items, "; ")
	}
	if _, v := c.FitBoxEnd(st.EndsAt, now); v != nil {
		return false, "the function would outlast it: " + v.String()
	}
	if b.Policy.Free.Instances == 0 {
		return false, "it is full"
	}
	return true, ""
}

// Capacity is the weight a box is chosen with: its relay's consensus
// weight (measured by bandwidth authorities, FlashFlow's for instance,
// where they measure), at least 1. A relay's own advertised figure is
// never used: it would let a relay that lies win every choice.
func Capacity(b Box) uint64 {
	return max(b.Relay.Weight, 1)
}

// Choose picks a box at random among those that Fit, weighted by
// Capacity, as seed 000 §3 has clients do. With none, the error lists why
// each box was passed over.
func Choose(boxes []Box, m *manifest.Manifest, now time.Time, r *rand.Rand) (Box, error) {
	got, err := ChooseN(boxes, m, now, r, 1)
	if err != nil {
		return Box{}, err
	}
	return got[0], nil
}

// ChooseN picks n different boxes at random among those that Fit, each
// weighted by Capacity among those not yet picked (Shard places one
// share on each). Boxes are different when both their addresses and their
// relays are. With fewer than n that fit, it picks none, and the error
// lists why each box was passed over.
func ChooseN(boxes []Box, m *manifest.Manifest, now time.Time, r *rand.Rand, n int) ([]Box, error) {
	var fit []Box
	var why []string
	addrs, relays := map[string]bool{}, map[string]bool{}
	for _, b := range boxes {
		ok, reason := Fit(b, m, now)
		addr := strings.ToLower(b.Statement.Box.Onion)
		if ok && ((addr != "" && addrs[addr]) || (b.Relay.Fingerprint != "" && relays[b.Relay.Fingerprint])) {
			ok, reason = false, "another box listed has its address or its relay"
		}
		if !ok {
			why = append(why, fmt.Sprintf("%s (%s): %s", b.Relay.Nickname, b.Addr(), reason))
			continue
		}
		if addr != "" {
			addrs[addr] = true
		}
		if b.Relay.Fingerprint != "" {
			relays[b.Relay.Fingerprint] = true
		}
		fit = append(fit, b)
	}
	if len(fit) < n {
		sort.Strings(why)
		switch {
		case len(boxes) == 0:
			return nil, fmt.Errorf("no box is announced in the directory")
		case n == 1:
			return nil, fmt.Errorf("none of the %d boxes can take %q:\n  %s", len(boxes), m.Name, strings.Join(why, "\n  "))
		}
		return nil, fmt.Errorf("%d different boxes are needed, and only %d of the %d boxes can take %q:\n  %s", n, len(fit), len(boxes), m.Name, strings.Join(why, "\n  "))
	}
	out := make([]Box, 0, n)
	for len(out) < n {
		var total uint64
		for _, b := range fit {
			total += Capacity(b)
		}
		x, pick := r.Uint64N(total), len(fit)-1
		for i, b := range fit {
			if c := Capacity(b); x < c {
				pick = i
				break
			} else {
				x -= c
			}
		}
		out = append(out, fit[pick])
		fit = append(fit[:pick], fit[pick+1:]...)
	}
	return out, nil
}
