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
	var fit []Box
	var total uint64
	var why []string
	for _, b := range boxes {
		ok, reason := Fit(b, m, now)
		if !ok {
			why = append(why, fmt.Sprintf("%s (%s): %s", b.Relay.Nickname, b.Addr(), reason))
			continue
		}
		fit = append(fit, b)
		total += Capacity(b)
	}
	if len(fit) == 0 {
		sort.Strings(why)
		if len(why) == 0 {
			return Box{}, fmt.Errorf("no box is announced in the directory")
		}
		return Box{}, fmt.Errorf("none of the %d boxes can take %q:\n  %s", len(boxes), m.Name, strings.Join(why, "\n  "))
	}
	x := r.Uint64N(total)
	for _, b := range fit {
		if c := Capacity(b); x < c {
			return b, nil
		} else {
			x -= c
		}
	}
	return fit[len(fit)-1], nil
}
