package coord

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/torbento/bento/internal/atomicfile"
	"github.com/torbento/bento/internal/flashflow/link"
	"github.com/torbento/bento/internal/flashflow/schedule"
	"github.com/torbento/bento/internal/flashflow/v3bw"
)

// ParseTargets reads a targets file: one relay per line,
//
//	<relay fingerprint> <bentod FlashFlow address> <bentod certificate fingerprint> [<prior bytes/s>]
//
// with '#' comments and blank lines ignored. The file is bounded (1 MB,
// 100,000 relays) and every field is checked.
func ParseTargets(r io.Reader) ([]Target, error) {
	sc := bufio.NewScanner(io.LimitReader(r, 1<<20))
	var out []Target
	seen := map[string]bool{}
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) < 3 || len(f) > 4 {
			return nil, fmt.Errorf("targets line %d: want <relay fingerprint> <address> <certificate fingerprint> [<prior bytes/s>], got %d fields", n, len(f))
		}
		fp := strings.ToUpper(strings.TrimPrefix(f[0], "$"))
		if len(fp) != 40 || strings.Trim(fp, "0123456789ABCDEF") != "" {
			return nil, fmt.Errorf("targets line %d: relay fingerprint %q: want 40 hex digits", n, f[0])
		}
		if seen[fp] {
			return nil, fmt.Errorf("targets line %d: relay %s listed twice", n, fp)
		}
		seen[fp] = true
		pin, err := link.ParseFingerprint(f[2])
		if err != nil {
			return nil, fmt.Errorf("targets line %d: %w", n, err)
		}
		t := Target{Fingerprint: fp, Addr: f[1], Pin: pin}
		if len(f) == 4 {
			v, err := strconv.ParseUint(f[3], 10, 64)
			if err != nil || v == 0 || v > 1<<40 {
				return nil, fmt.Errorf("targets line %d: prior %q: want bytes per second from 1 to 2^40", n, f[3])
			}
			t.Prior = v
		}
		out = append(out, t)
		if len(out) > 100_000 {
			return nil, errors.New("targets: more than 100,000 relays")
		}
	}
	return out, sc.Err()
}

// Result is a relay's latest measurement, as kept between runs.
type Result struct {
	Fingerprint string    `json:"fingerprint"`
	Estimate    uint64    `json:"estimate"`   // bytes/s
	Advertised  uint64    `json:"advertised"` // descriptor bandwidth-avg, bytes/s (0 unknown)
	MeasuredAt  time.Time `json:"measured_at"`
	Complete    int       `json:"complete_seconds"`
	Clamped     int       `json:"clamped_seconds"`
}

// Store keeps each relay's latest result in a JSON file, rewritten
// atomically after each measurement.
type Store struct {
	path string
	mu   sync.Mutex
	m    map[string]Result
}

// OpenStore reads (or starts) the store at path.
func OpenStore(path string) (*Store, error) {
	s := &Store{path: path, m: map[string]Result{}}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return s, nil
	case err != nil:
		return nil, err
	case len(b) > 64<<20:
		return nil, fmt.Errorf("flashflow: results file %s is larger than 64 MB", path)
	}
	var list []Result
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("flashflow: results file %s: %w (move it aside to start afresh)", path, err)
	}
	for _, r := range list {
		s.m[r.Fingerprint] = r
	}
	return s, nil
}

// Put records r, replacing the relay's previous result.
func (s *Store) Put(r Result) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[r.Fingerprint] = r
	list := make([]Result, 0, len(s.m))
	for _, v := range s.m {
		list = append(list, v)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Fingerprint < list[j].Fingerprint })
	b, err := json.MarshalIndent(list, "", " ")
	if err != nil {
		return err
	}
	return atomicfile.Write(s.path, b, 0o644)
}

// Recent returns the results no older than maxAge.
func (s *Store) Recent(now time.Time, maxAge time.Duration) []Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Result
	for _, r := range s.m {
		if now.Sub(r.MeasuredAt) <= maxAge {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Fingerprint < out[j].Fingerprint })
	return out
}

// Get returns a relay's latest result.
func (s *Store) Get(fp string) (Result, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.m[fp]
	return r, ok
}

// Service measures a list of relays and keeps the bandwidth file.
type Service struct {
	Coord *Coordinator
	Store *Store
	Dir   *v3bw.Dir
	// Advertised returns a relay's descriptor bandwidth-avg in bytes/s
	// (0 if unknown); it caps the file's figure and is the prior of a
	// relay never measured.
	Advertised func(ctx context.Context, fp string) (uint64, error)
	// MaxAge: results older than this leave the file (default a week).
	MaxAge  time.Duration
	Started time.Time
	Version string
	// Joint, if set, makes Run take this coordinator's part of a joint
	// schedule shared with other coordinators; SRV then returns the
	// shared random value of tor's current consensus (zero if it has
	// none), read at the start of each period.
	Joint *Joint
	SRV   func(ctx context.Context) ([32]byte, error)
}

// MeasureAll measures every target once, largest prior first, storing
// each result; relays whose bentods share a host are measured together
// (prop 316 §5.2: one after the other, each would be credited with the
// whole host). It returns the failures.
func (s *Service) MeasureAll(ctx context.Context, targets []Target) []error {
	jobs := s.prepare(ctx, targets)
	sort.SliceStable(jobs, func(i, j int) bool { return jobs[i].t.Prior > jobs[j].t.Prior })
	var groups [][]job
	at := map[string]int{} // host → its group
	for _, j := range jobs {
		h := host(j.t.Addr)
		if g, ok := at[h]; ok && h != "" {
			groups[g] = append(groups[g], j)
			continue
		}
		at[h] = len(groups)
		groups = append(groups, []job{j})
	}
	var errs []error
	for _, g := range groups {
		errs = append(errs, s.measureGroup(ctx, g)...)
	}
	return errs
}

// MeasureTogether measures the targets at the same time (a slot's
// relays), storing each result; it returns the failures.
func (s *Service) MeasureTogether(ctx context.Context, targets []Target) []error {
	return s.measureGroup(ctx, s.prepare(ctx, targets))
}

type job struct {
	t   Target
	adv uint64 // advertised bandwidth, 0 if unknown
}

// prepare looks up each target's advertised bandwidth and prior: its
// latest result, else its advertised bandwidth, else DefaultPrior.
func (s *Service) prepare(ctx context.Context, targets []Target) []job {
	var jobs []job
	for _, t := range targets {
		var adv uint64
		if s.Advertised != nil {
			var err error
			if adv, err = s.Advertised(ctx, t.Fingerprint); err != nil {
				s.Coord.cfg.Log.Warn("flashflow: no advertised bandwidth for a relay: its figure is not capped (the coordinator's tor needs full descriptors: UseMicrodescriptors 0 or FetchUselessDescriptors 1)", "relay", t.Fingerprint, "err", err)
			}
		} else {
			s.Coord.cfg.Log.Warn("flashflow: figures are not capped at the relays' advertised bandwidth (no -tor-control)", "relay", t.Fingerprint)
		}
		if prev, ok := s.Store.Get(t.Fingerprint); ok && prev.Estimate > 0 {
			t.Prior = prev.Estimate
		} else if t.Prior == 0 {
			t.Prior = adv
		}
		if t.Prior == 0 {
			t.Prior = DefaultPrior
		}
		jobs = append(jobs, job{t, adv})
	}
	return jobs
}

func (s *Service) measureGroup(ctx context.Context, jobs []job) []error {
	ts := make([]Target, len(jobs))
	for i, j := range jobs {
		ts[i] = j.t
	}
	ms, merrs := s.Coord.MeasureGroup(ctx, ts)
	var errs []error
	for i, j := range jobs {
		if merrs[i] != nil {
			errs = append(errs, fmt.Errorf("relay %s: %w", j.t.Fingerprint, merrs[i]))
			continue
		}
		m := ms[i]
		r := Result{Fingerprint: j.t.Fingerprint, Estimate: m.Result.Estimate, Advertised: j.adv, MeasuredAt: m.Start,
			Complete: m.Result.Complete, Clamped: m.Result.Clamped}
		if err := s.Store.Put(r); err != nil {
			errs = append(errs, fmt.Errorf("storing the result of %s: %w", j.t.Fingerprint, err))
		}
	}
	return errs
}

// host is the host part of a bentod address, "" if it has none.
func host(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	if a, err := netip.ParseAddr(h); err == nil {
		return a.Unmap().String()
	}
	return strings.ToLower(h)
}

// DefaultPrior is the prior of a relay without any figure: 10 MB/s.
const DefaultPrior = 10_000_000

// WriteFile writes a bandwidth file of the recent results and points the
// v3bw symlink at it.
func (s *Service) WriteFile(now time.Time) (string, error) {
	maxAge := s.MaxAge
	if maxAge == 0 {
		maxAge = 7 * 24 * time.Hour
	}
	var relays []v3bw.Relay
	for _, r := range s.Store.Recent(now, maxAge) {
		relays = append(relays, v3bw.Relay{NodeID: r.Fingerprint, Bandwidth: r.Estimate, Advertised: r.Advertised,
			MeasuredAt: r.MeasuredAt, Extra: map[string]string{
				"ff_estimate":         strconv.FormatUint(r.Estimate, 10),
				"ff_complete_seconds": strconv.Itoa(r.Complete),
				"ff_clamped_seconds":  strconv.Itoa(r.Clamped),
			}})
	}
	return s.Dir.Write(v3bw.Header{Software: "bento-flashflow", SoftwareVersion: s.Version, GeneratorStarted: s.Started, FileCreated: now}, relays)
}

// DefaultResultsPath is where a Service keeps results, beside its files.
func DefaultResultsPath(dir string) string { return filepath.Join(dir, "results.json") }

// Run measures targets on prop 316's short-term schedule until ctx ends.
// At the start of each period it plans the period (package schedule:
// largest relay first, a random slot with enough measurer capacity,
// relays sharing an address together), seeding the plan with
// seed(period); then, as each slot begins, it measures the slot's relays
// together (they share the slot's measurer capacity) and rewrites
// the bandwidth file. Relays without any result are measured at once
// when Run starts, as prop 316 measures new relays as soon as it learns
// of them. targets is called at each period, so the list may change.
func (s *Service) Run(ctx context.Context, targets func() ([]Target, error), p schedule.Params, seed func(period uint64) [32]byte) error {
	if err := p.Validate(); err != nil {
		return err
	}
	log := s.Coord.cfg.Log
	ts, err := targets()
	if err != nil {
		return err
	}
	var fresh []Target
	for _, t := range ts {
		if _, ok := s.Store.Get(t.Fingerprint); !ok {
			fresh = append(fresh, t)
		}
	}
	// In a joint schedule nothing is measured outside one's own slots:
	// another coordinator may be measuring the relay right now.
	if len(fresh) > 0 && s.Joint == nil {
		// One after another (relays sharing a host together): they are
		// in no slot, and the measurers' capacity is not shared out.
		log.Info("flashflow: measuring relays never measured", "relays", len(fresh))
		s.measureAndWrite(ctx, func() []error { return s.MeasureAll(ctx, fresh) })
	}
	for ctx.Err() == nil {
		now := time.Now()
		period := schedule.PeriodOf(now, p.Period)
		start := schedule.PeriodStart(period, p.Period)
		if ts, err = targets(); err != nil {
			log.Warn("flashflow: reading the targets; keeping the previous list", "err", err)
		}
		byFP := map[string]Target{}
		for _, t := range ts {
			byFP[t.Fingerprint] = t
		}
		plan, err := s.plan(ctx, p, ts, period, seed)
		if err != nil {
			return err
		}
		for i, slot := range plan.Slots {
			at := plan.SlotStart(start, i)
			if len(slot) == 0 || at.Add(p.Slot).Before(now) {
				continue // empty, or over before we planned
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Until(at)):
			}
			var batch []Target
			for _, a := range slot {
				if t, ok := byFP[a.Fingerprint]; ok {
					batch = append(batch, t)
				}
			}
			s.measureAndWrite(ctx, func() []error { return s.MeasureTogether(ctx, batch) })
		}
		// Wait for the next period.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Until(schedule.PeriodStart(period+1, p.Period))):
		}
	}
	return nil
}

// plan computes the period's schedule: this coordinator's alone (relays
// weighed by their latest results), or its part of the joint one.
func (s *Service) plan(ctx context.Context, p schedule.Params, ts []Target, period uint64, seed func(uint64) [32]byte) (*schedule.Schedule, error) {
	log := s.Coord.cfg.Log
	if s.Joint != nil {
		var srv [32]byte
		if s.SRV != nil {
			v, err := s.SRV(ctx)
			if err != nil {
				log.Warn("flashflow: no shared random value from tor; planning with none (every coordinator must do the same: check the schedule digests)", "err", err)
			}
			srv = v
		}
		js, mine, err := s.Joint.Plan(p, JointRelays(ts), srv, period)
		if err != nil {
			return nil, err
		}
		d := js.Digest()
		log.Info("flashflow: period planned (joint schedule)", "period", period, "coordinators", len(js.Coordinators()),
			"self", s.Joint.Self, "relays", mine.Len(), "unscheduled", len(mine.Unscheduled), "digest", hex.EncodeToString(d[:8]))
		return mine, nil
	}
	var relays []schedule.Relay
	for _, t := range ts {
		r := schedule.Relay{Fingerprint: t.Fingerprint, Capacity: t.Prior}
		if prev, ok := s.Store.Get(t.Fingerprint); ok && prev.Estimate > 0 {
			r.Capacity = prev.Estimate
		}
		if ap, err := netip.ParseAddrPort(t.Addr); err == nil {
			r.Addr = ap.Addr()
		}
		relays = append(relays, r)
	}
	plan, err := schedule.Plan(p, relays, rand.NewChaCha8(seed(period)))
	if err != nil {
		return nil, err
	}
	log.Info("flashflow: period planned", "period", period, "relays", plan.Len(), "unscheduled", len(plan.Unscheduled))
	return plan, nil
}

// measureAndWrite runs measure and rewrites the bandwidth file.
func (s *Service) measureAndWrite(ctx context.Context, measure func() []error) {
	log := s.Coord.cfg.Log
	for _, err := range measure() {
		log.Warn("flashflow: measurement failed", "err", err)
	}
	path, err := s.WriteFile(time.Now())
	switch {
	case err != nil && !errors.Is(err, v3bw.ErrPrune):
		log.Warn("flashflow: no bandwidth file written", "err", err)
	default:
		if err != nil {
			log.Warn("flashflow: pruning old bandwidth files", "err", err)
		}
		log.Info("flashflow: bandwidth file written", "path", path)
	}
}
