package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/boxdir"
	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/netcheck"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/socks"
)

// What bentod's own discovery (remote.choose) may hold: the largest
// relays' boxes only, each policy small. A hostile box serves at most
// directoryMaxPolicy bytes, so the directory costs bentod at most a few MB.
const (
	directoryMaxBoxes  = 64
	directoryMaxPolicy = 64 << 10
)

// directoryMaxAge: the boxes found are reused this long. Discovery reads
// the relay's descriptors and fetches every announced box's policy through
// Tor: bentod does it at most this often, whatever its functions ask.
const directoryMaxAge = 5 * time.Minute

// directory is bentod's view of the directory of boxes, for remote.choose.
type directory struct {
	mu    sync.Mutex // held during a discovery: callers wait for its result
	at    time.Time
	boxes []boxdir.Box
}

// boxes returns the boxes the relay's tor knows, discovering them again
// when the last discovery is older than directoryMaxAge.
func (s *Server) directoryBoxes(ctx context.Context) ([]boxdir.Box, error) {
	d := &s.dir
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.at.IsZero() && time.Since(d.at) < directoryMaxAge {
		return d.boxes, nil
	}
	p := s.policy()
	if s.tor == nil || p.TorSocksPort == "" {
		return nil, errors.New("this node has no tor to read the directory from (TorControlPort and TorSocksPort)")
	}
	c, err := s.tor.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("tor's control port: %w", err)
	}
	dialer := &socks.Dialer{Proxy: p.TorSocksPort, Username: "bento-directory", Password: "bento"}
	fetch := func(ctx context.Context, addr string) (*policy.Public, []byte, error) {
		cl := client.New(addr)
		cl.Dialer = dialer
		cl.MaxFrame = directoryMaxPolicy
		cl.Timeout = 20 * time.Second
		raw, pub, err := cl.PolicyJSON(ctx)
		return pub, raw, err
	}
	boxes, _, err := boxdir.Discover(ctx, c, fetch, boxdir.Options{MaxBoxes: directoryMaxBoxes})
	if err != nil {
		return nil, err
	}
	d.boxes, d.at = boxes, time.Now()
	return boxes, nil
}

// choose is remote.choose: a box from the directory for a manifest.
func (h *hostCall) choose() (any, []byte, error) {
	var a struct {
		Manifest string `json:"manifest"`
	}
	if err := json.Unmarshal(h.args, &a); err != nil {
		return nil, nil, errors.New("remote.choose: bad arguments")
	}
	m, err := manifest.Parse([]byte(a.Manifest))
	if err != nil {
		return nil, nil, fmt.Errorf("remote.choose: the manifest: %w", err)
	}
	done, err := h.in.srv.beginCall(h.in.root)
	if err != nil {
		return nil, nil, fmt.Errorf("remote.choose: %w", err)
	}
	defer done()
	ctx, cancel := h.ctx(2 * time.Minute)
	defer cancel()
	all, err := h.in.srv.directoryBoxes(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("remote.choose: %w", err)
	}
	// Only the boxes this function may reach.
	pols := h.policies()
	var reachable []boxdir.Box
	for _, b := range all {
		if netcheck.CheckTor(pols, b.Addr()) == nil {
			reachable = append(reachable, b)
		}
	}
	b, err := boxdir.Choose(reachable, m, time.Now(), rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())))
	if err != nil {
		return nil, nil, fmt.Errorf("remote.choose: %w", err)
	}
	return map[string]string{"server": b.Addr()}, nil, nil
}
