package client

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/torbento/bento/internal/boxdir"
	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/policy"
)

// Box is a box found in the directory of boxes, its statement checked
// (see Directory).
type Box = boxdir.Box

// Rejected is an announced box that did not check out, and why.
type Rejected = boxdir.Rejected

// Directory finds Bento boxes from nothing but the client's tor: the
// relays' descriptors announce their boxes (docs/boxes.md), and each box's
// policy, fetched through Tor, carries a statement signed with its onion
// key that names its relay. The tor must fetch full relay descriptors
// (UseMicrodescriptors 0, or FetchUselessDescriptors 1).
type Directory struct {
	// Tor is the client's tor control connection (a *torctl.Conn).
	Tor boxdir.Source
	// Dialer reaches the boxes' onion services: a SOCKS dialer through
	// the same tor.
	Dialer Dialer
	// Timeout bounds each box's policy fetch (default 60 s).
	Timeout time.Duration
}

// Boxes lists the boxes the tor's relays announce, checked, and those
// that failed a check with the reason.
func (d *Directory) Boxes(ctx context.Context) ([]Box, []Rejected, error) {
	fetch := func(ctx context.Context, addr string) (*policy.Public, []byte, error) {
		c := New(addr)
		c.Dialer = d.Dialer
		c.MaxFrame = boxdir.MaxPolicyJSON
		raw, p, err := c.PolicyJSON(ctx)
		return p, raw, err
	}
	return boxdir.Discover(ctx, d.Tor, fetch, boxdir.Options{Timeout: d.Timeout})
}

// Choose finds the boxes and picks one at random among those that can
// take fn now (policy, remaining life beyond the drain point, room),
// weighted by capacity (the consensus weight, measured by bandwidth
// authorities where they do).
func (d *Directory) Choose(ctx context.Context, fn *Function) (Box, error) {
	m, err := manifest.Parse(fn.Manifest)
	if err != nil {
		return Box{}, err
	}
	boxes, _, err := d.Boxes(ctx)
	if err != nil {
		return Box{}, err
	}
	return boxdir.Choose(boxes, m, time.Now(), rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())))
}

// Fits says whether box can take fn now, and if not, why.
func Fits(b Box, fn *Function, now time.Time) (bool, string, error) {
	m, err := manifest.Parse(fn.Manifest)
	if err != nil {
		return false, "", err
	}
	ok, why := boxdir.Fit(b, m, now)
	return ok, why, nil
}

// ChooseN finds the boxes and picks n different ones at random among
// those that can take fn now, weighted by capacity (Shard puts one share
// on each). With fewer than n that fit, the error says why.
func (d *Directory) ChooseN(ctx context.Context, fn *Function, n int) ([]Box, error) {
	m, err := manifest.Parse(fn.Manifest)
	if err != nil {
		return nil, err
	}
	boxes, _, err := d.Boxes(ctx)
	if err != nil {
		return nil, err
	}
	return boxdir.ChooseN(boxes, m, time.Now(), rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())), n)
}
