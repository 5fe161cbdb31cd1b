// Package server is bentod's core: it accepts client connections, checks
// uploaded manifests against the middlebox node policy, admits instances
// within the aggregate ceilings, runs each in a sandbox, hands out the
// invocation and shutdown tokens, streams buffered output to (re)attached
// clients, serves the host API to the sandboxed runners, and reclaims every
// resource when an instance ends.
//
// Everything a client or a function makes bentod hold is bounded and
// charged to it: connections (per address and in total), time (deadlines
// before the hello, between requests, for writes), bytes in flight (a
// budget per client, per instance and for the whole daemon, with
// back-pressure), instances and composition (per client and per root).
package server

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/torbento/bento/internal/budget"
	"github.com/torbento/bento/internal/netcheck"
	"github.com/torbento/bento/internal/netlimit"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/safelog"
	"github.com/torbento/bento/internal/sandbox"
	"github.com/torbento/bento/internal/torfw"
	"github.com/torbento/bento/internal/torlink"
	"github.com/torbento/bento/internal/units"
)

// Version is reported to clients.
const Version = "bentod/0.3"

// OutputRetention is how long a session's output stays available after its
// invocation ended, for clients that were disconnected at the time.
const OutputRetention = 10 * time.Minute

// Server is a running bentod.
type Server struct {
	// memRoom is what the service's cgroup leaves functions beside
	// bentod, when memBounded; see totalMemory.
	memRoom    int64
	memBounded bool
	pol        atomic.Pointer[policy.Policy]
	tlsConfig  atomic.Pointer[tls.Config] // SetTLS
	sb         *sandbox.Sandbox
	log        *slog.Logger
	instDir    string
	transport  netcheck.Dialer   // for function network access
	resolver   netcheck.Resolver // nil: the system resolver
	tor        *torlink.Link     // nil without TorControlPort
	firewall   *torfw.Firewall   // functions' control-port access

	inflight *budget.Budget // bytes held for clients and functions, all together
	budgets  keyedBudgets   // the same, per client
	self     selfAddrs      // bentod's own addresses, for composition onto itself

	mu         sync.Mutex
	instances  map[string]*Instance
	byInv      map[tokenHash]*Instance
	byShut     map[tokenHash]*Instance
	usedMem    int64
	usedMilli  int64 // CPU in thousandths of a core
	running    int
	restore    bool                 // RestoreInstances, read at start
	lost       map[tokenHash]string // tokens of instances a restart ended, and why
	perClient  map[string]int       // instances held, by client address
	listeners  []*netlimit.Listener // made by LimitListener and LimitPolicyListener
	roots      map[string]*root     // composition groups, by root instance id
	ownerCalls map[string]int       // remote.* calls in progress, by the client of their root

	boxT    boxTimes      // the box's end (BoxEndsAt, BoxLifetime), under mu
	boxID   *boxIdentity  // the box's statement for the directory, under mu
	dir     directory     // the directory of boxes, for remote.choose
	boxWake chan struct{} // the end changed

	lock     *os.File      // holds DataDirectory for this bentod (lockDataDir)
	stale    []string      // containers of an earlier bentod, found at start
	reaped   chan struct{} // closed once they are gone
	reapOnce sync.Once     // Recover's work, done once by it or by Close
	wg       sync.WaitGroup
	closed   chan struct{}

	draining atomic.Bool               // the operator refuses new deploys (bentoctl drain)
	retired  map[string]netlimit.Stats // the counters of listeners a reload closed, by name (under mu)
	met      *serverMetrics            // counters for MetricsPort
}

// Options configure New.
type Options struct {
	Policy    *policy.Policy
	Logger    *slog.Logger
	Transport netcheck.Dialer
}

// New prepares the data directory and the sandbox, and takes back the
// instances an earlier bentod left (RestoreInstances): their admission is
// reserved and their tokens answer at once; their containers start in the
// background (Recover), after the earlier containers are reaped, so that
// a restarted bentod serves clients without waiting.
func New(opts Options) (*Server, error) {
	p := opts.Policy
	if err := os.MkdirAll(p.DataDirectory, 0o700); err != nil {
		return nil, fmt.Errorf("DataDirectory: %w", err)
	}
	lock, err := lockDataDir(p.DataDirectory)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			lock.Close()
		}
	}()
	runnerPath := p.RunnerPath
	if runnerPath == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		runnerPath = filepath.Join(filepath.Dir(exe), "bento-runner")
	}
	rt := p.RuntimePath
	if rt == "" {
		rt = p.Runtime
	}
	var py *sandbox.PythonImage
	if p.HasImage(sandbox.ImagePython) {
		// What the python image mounts, worked out once: a policy that
		// offers it on a host without python3 is refused here.
		if py, err = sandbox.FindPython(); err != nil {
			return nil, err
		}
	}
	sb, err := sandbox.New(sandbox.Config{Runtime: rt, StateDir: p.DataDirectory, RunnerPath: runnerPath, DaemonMemoryMax: DaemonHardMemory(p), Python: py})
	if err != nil {
		return nil, err
	}
	if opts.Logger != nil {
		logPlacement(opts.Logger, sb.Placement(), p)
	}
	if sb.WeightErr != nil && opts.Logger != nil {
		opts.Logger.Warn("functions could not be given a low CPU weight; they still keep to their quotas", "err", sb.WeightErr)
	}
	s := &Server{
		sb:         sb,
		log:        opts.Logger,
		instDir:    filepath.Join(p.DataDirectory, "instances"),
		transport:  opts.Transport,
		inflight:   budget.New(p.Daemon.MaxInFlight),
		instances:  map[string]*Instance{},
		byInv:      map[tokenHash]*Instance{},
		byShut:     map[tokenHash]*Instance{},
		lost:       map[tokenHash]string{},
		perClient:  map[string]int{},
		roots:      map[string]*root{},
		ownerCalls: map[string]int{},
		restore:    p.RestoreInstances,
		reaped:     make(chan struct{}),
		closed:     make(chan struct{}),
		boxWake:    make(chan struct{}, 1),
		lock:       lock,
		met:        newServerMetrics(),
	}
	// On a delegated cgroup v2 the service's memory.max (the unit's
	// MemoryMax=) bounds bentod and every container together: functions
	// get at most what it leaves beside bentod's own ceiling, whatever
	// TotalMemory says, so that admission never promises memory the
	// kernel would take back by killing.
	if pl := sb.Placement(); pl.Mode == sandbox.PlaceDelegated && pl.MemoryMax > 0 {
		s.memRoom, s.memBounded = max(0, pl.MemoryMax-pl.DaemonMax), true
	}
	if s.boxT, err = resolveBoxEnd(p, time.Now()); err != nil {
		return nil, err
	}
	s.budgets = keyedBudgets{parent: s.inflight, per: clientShare(p), m: map[string]*keyedBudget{}}
	if s.log == nil {
		s.log = safelog.New(os.Stderr, p.LogLevel)
	}
	if s.transport == nil {
		s.transport = &net.Dialer{Timeout: 30 * time.Second}
	}
	s.pol.Store(p)
	if err := os.MkdirAll(s.instDir, 0o700); err != nil {
		return nil, err
	}
	if s.stale, err = sb.Stale(); err != nil {
		s.log.Warn("listing old containers", "err", err)
	}
	s.recoverInstances()
	go s.janitor()
	go s.boxClock()
	ok = true
	return s, nil
}

// Recover reaps the containers of an earlier bentod, which lets the
// restored instances start. Run it once the listeners serve.
func (s *Server) Recover() { s.reapOnce.Do(s.reapStale) }

func (s *Server) reapStale() {
	defer close(s.reaped)
	defer s.recoverPanic("reaping old containers")
	if n := s.sb.ReapIDs(s.stale); n > 0 {
		safelog.Notice(s.log, "removed containers left by an earlier bentod", "count", n)
	}
}

func (s *Server) policy() *policy.Policy { return s.pol.Load() }

// SetPolicy replaces the policy (SIGHUP). Running instances keep what they
// were admitted with; host calls are checked against the new policy.
// Connection limits and budgets keep their values until a restart: the
// operator is warned when the new ceilings need more than they hold.
func (s *Server) SetPolicy(p *policy.Policy) {
	if need := clientShare(p); need > s.budgets.per {
		s.log.Warn("the new policy's MaxUploadSize, MaxOutput, MaxStorage or MaxFetchSize need more bytes in flight than bentod reserved at start; restart bentod for them to take full effect",
			"per_client_now", units.FormatSize(s.budgets.per), "needed", units.FormatSize(need))
	}
	s.pol.Store(p)
	b, err := resolveBoxEnd(p, time.Now())
	if err != nil {
		s.log.Warn("the box's end is unchanged", "err", err)
		return
	}
	if old := s.box(); !b.end.Equal(old.end) || !b.drain.Equal(old.drain) {
		safelog.Notice(s.log, "the box's end changed", "ends_at", fmtEnd(b.end), "was", fmtEnd(old.end))
	}
	s.setBox(b)
}

func fmtEnd(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}

// SetTor connects the server to the tor beside it: functions' tor.control
// calls go through a control-port firewall on this link. Call it before
// the link runs.
func (s *Server) SetTor(l *torlink.Link) {
	s.tor = l
	s.firewall = torfw.New(l, torfw.Limits{})
	s.firewall.Listen = s.listenFor
	l.Subscribe(torfw.TrackedEvents(), s.firewall.HandleEvent)
	l.OnConnect(s.firewall.Reset)
}

// Onion returns the server's onion address ("" when it has none).
func (s *Server) Onion() string {
	if s.tor == nil {
		return ""
	}
	return s.tor.Onion()
}

// PolicyServer returns the HTTP server of the public policy (PolicyAddress),
// with the timeouts and header limit a public endpoint needs; serve it on a
// listener from LimitPolicyListener.
func (s *Server) PolicyServer() *http.Server {
	return &http.Server{
		Handler:           s.PolicyHandler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       30 * time.Second,
		MaxHeaderBytes:    8 << 10,
		// Connections waiting for a request may be closed to make room.
		ConnState: func(c net.Conn, st http.ConnState) {
			netlimit.SetIdle(c, st == http.StateNew || st == http.StateIdle)
		},
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

// PolicyHandler serves the public policy as JSON.
func (s *Server) PolicyHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" && r.URL.Path != "/policy" {
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		b, err := json.MarshalIndent(s.publicPolicy(), "", "  ")
		if err != nil {
			s.log.Error("encoding the public policy", "err", err)
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(append(b, '\n'))
	})
}

func (s *Server) publicPolicy() *policy.Public {
	p := s.policy()
	pub := p.PublicView()
	s.mu.Lock()
	pub.Free.Memory = max(0, s.totalMemory(p)-s.usedMem)
	pub.Free.CPU = float64(max(0, policy.MilliCores(p.Aggregate.CPU)-s.usedMilli)) / 1000
	pub.Free.Instances = max(0, p.Aggregate.Instances-s.running)
	b, id := s.boxT, s.boxID
	s.mu.Unlock()
	if b.ends() || id != nil {
		pub.Box = &policy.PublicBox{}
	}
	if b.ends() {
		end, drain := b.end.UTC(), b.drain.UTC()
		pub.Box.EndsAt, pub.Box.DrainAt = &end, &drain
	}
	if id != nil {
		st, err := id.statement(pub, b, time.Now())
		if err != nil {
			s.log.Warn("signing the box's statement", "err", err)
		}
		pub.Box.Statement = st
	}
	return pub
}

// Close stops accepting work and ends every instance.
func (s *Server) Close() {
	select {
	case <-s.closed:
		return
	default:
	}
	close(s.closed)
	s.mu.Lock()
	var all []*Instance
	for _, in := range s.instances {
		all = append(all, in)
	}
	s.mu.Unlock()
	for _, in := range all {
		in.end("bentod is shutting down")
	}
	for _, in := range all {
		<-in.ended
	}
	// The earlier bentod's containers go too, even if shutdown came
	// before Recover was done with them (or had started): a stop leaves
	// no container behind.
	s.reapOnce.Do(s.reapStale)
	s.lock.Close()
}

// janitor forgets ended instances once their output retention is over, and
// finished sessions whose retention is over.
func (s *Server) janitor() {
	defer s.recoverPanic("the janitor")
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.closed:
			return
		case <-t.C:
		}
		// The list first, then each instance on its own: never an
		// instance's lock under the server's.
		s.mu.Lock()
		all := make([]*Instance, 0, len(s.instances))
		for _, in := range s.instances {
			all = append(all, in)
		}
		s.mu.Unlock()
		var old, live []*Instance
		for _, in := range all {
			in.mu.Lock()
			if !in.endedAt.IsZero() && time.Since(in.endedAt) > OutputRetention {
				old = append(old, in)
			} else {
				live = append(live, in)
			}
			in.mu.Unlock()
		}
		for _, in := range old {
			s.forget(in)
		}
		for _, in := range live {
			in.mu.Lock()
			in.pruneSessionsLocked(time.Now(), 0)
			in.mu.Unlock()
		}
	}
}

// forget removes an ended instance and its retained output.
func (s *Server) forget(in *Instance) {
	s.mu.Lock()
	delete(s.instances, in.id)
	delete(s.byInv, in.invHash)
	delete(s.byShut, in.shutHash)
	s.mu.Unlock()
	in.mu.Lock()
	for _, ss := range in.sessions {
		ss.out.discard("the instance ended more than 10 minutes ago")
	}
	keep := in.keepData
	in.mu.Unlock()
	if keep {
		// Data bentod could not open stays for the next start.
		_ = os.RemoveAll(filepath.Join(in.dir, "sessions"))
		removeFunctionLog(in.dir)
		return
	}
	_ = os.RemoveAll(in.dir)
}

// lookup finds the instance whose invocation token (shutdown false) or
// shutdown token (shutdown true) is tok. The map is keyed by the token's
// hash; the hash found is compared once more in constant time.
func (s *Server) lookup(tok string, shutdown bool) *Instance {
	if len(tok) > 128 {
		return nil
	}
	h := hashToken(tok)
	s.mu.Lock()
	table := s.byInv
	if shutdown {
		table = s.byShut
	}
	in := table[h]
	s.mu.Unlock()
	if in == nil {
		return nil
	}
	want := in.invHash
	if shutdown {
		want = in.shutHash
	}
	if !h.equal(want) {
		return nil
	}
	return in
}

var errBadToken = &proto.Error{Code: proto.CodeNotFound, Message: "no instance has this token (it may have ended more than 10 minutes ago, or the token is mistyped)"}

// shutdown ends an instance; only its shutdown token can.
func (s *Server) shutdown(tok string) *proto.Error {
	in := s.lookup(tok, true)
	if in == nil {
		return s.tokenError(tok)
	}
	in.end("shut down by its owner")
	<-in.ended
	s.forget(in)
	return nil
}

// Status is a snapshot of what bentod holds: its instances, the bytes it
// holds for clients and functions, and its listeners' connections. bentod
// logs it on SIGUSR1, as tor dumps its statistics.
type Status struct {
	Instances     int
	InFlight      int64 // bytes held now for uploads, host-call results, relayed output
	InFlightPeak  int64 // the most ever held at once
	InFlightLimit int64 // MaxInFlight
	Listeners     []ListenerStatus
}

// ListenerStatus is one listener's counters.
type ListenerStatus struct {
	Name string // client, onion or policy
	netlimit.Stats
}

// Status returns a snapshot of what bentod holds.
func (s *Server) Status() Status {
	s.mu.Lock()
	st := Status{Instances: s.running}
	ls := append([]*netlimit.Listener(nil), s.listeners...)
	retired := make(map[string]netlimit.Stats, len(s.retired))
	for k, r := range s.retired {
		retired[k] = r
	}
	s.mu.Unlock()
	st.InFlight, st.InFlightPeak, st.InFlightLimit = s.inflight.Used(), s.inflight.Peak(), s.inflight.Limit()
	for _, l := range ls {
		// The counters go on from those of the listeners a reload
		// replaced; what is open now is the live listener's.
		c := l.Stats()
		c.AddCounts(retired[l.Name()])
		st.Listeners = append(st.Listeners, ListenerStatus{Name: l.Name(), Stats: c})
	}
	return st
}

// Instances returns the number of live instances.
func (s *Server) Instances() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running
}

// launch registers an instance under its id and token hashes, so clients
// can reach it, and lets it run.
func (s *Server) launch(in *Instance) {
	s.mu.Lock()
	s.instances[in.id] = in
	s.byInv[in.invHash] = in
	s.byShut[in.shutHash] = in
	s.mu.Unlock()
	go in.run()
}

// tokenError is the answer for a token no running instance has: what
// happened to it, if bentod knows.
func (s *Server) tokenError(tok string) *proto.Error {
	h := hashToken(tok)
	s.mu.Lock()
	why, ok := s.lost[h]
	s.mu.Unlock()
	if ok {
		return &proto.Error{Code: proto.CodeGone, Message: why}
	}
	return errBadToken
}

// logPlacement says once, at start, where the containers' cgroups are and
// why; and, when they share a delegated cgroup's memory.max (systemd's
// MemoryMax=) with bentod, whether it leaves room for TotalMemory.
func logPlacement(log *slog.Logger, pl sandbox.Placement, p *policy.Policy) {
	if pl.Err != nil {
		log.Warn("containers' cgroups: "+pl.Why, "placement", pl.Mode, "parent", pl.Parent, "err", pl.Err)
	} else {
		safelog.Notice(log, "containers' cgroups: "+pl.Why, "placement", pl.Mode, "parent", pl.Parent)
	}
	if pl.Mode == sandbox.PlaceDelegated && pl.MemoryMax > 0 && pl.MemoryMax < pl.DaemonMax+p.Aggregate.Memory {
		log.Warn(fmt.Sprintf("the service's memory ceiling (%s: the unit's MemoryMax=, cgroup %s) bounds bentod and every function together and is below bentod's own ceiling + TotalMemory (%s + %s): functions get only %s together; to give them TotalMemory, raise MemoryMax= to at least %s (systemctl edit bentod)",
			units.FormatSize(pl.MemoryMax), pl.Own, units.FormatSize(pl.DaemonMax), units.FormatSize(p.Aggregate.Memory), units.FormatSize(max(0, pl.MemoryMax-pl.DaemonMax)), units.FormatSize(pl.DaemonMax+p.Aggregate.Memory)))
	}
}

// TotalMemory is the memory functions may use together: TotalMemory, or
// less where the service's cgroup leaves less beside bentod (cgroup v2,
// delegated, with the unit's MemoryMax=).
func (s *Server) TotalMemory() int64 { return s.totalMemory(s.policy()) }

func (s *Server) totalMemory(p *policy.Policy) int64 {
	if s.memBounded {
		return min(p.Aggregate.Memory, s.memRoom)
	}
	return p.Aggregate.Memory
}

// DaemonHardMemory is bentod's own hard memory ceiling on a delegated
// cgroup v2 (its leaf's memory.max): MaxDaemonMemory, Go's soft limit,
// and room for runc while containers start, as the shipped unit's
// MemoryMax= is on cgroup v1.
func DaemonHardMemory(p *policy.Policy) int64 { return p.Daemon.MaxMemory + 256<<20 }

// Rootless tells whether bentod can give up root and still run
// containers here, and if not, why.
func (s *Server) Rootless() error { return s.sb.Rootless() }

// HandOver makes what bentod holds on disk and in its cgroups uid:gid's,
// for a bentod that gives up root right after: the data directory (state,
// instances, keys, the runtime's state) and the delegated cgroups.
// Containers started afterwards map their root to uid:gid.
func (s *Server) HandOver(uid, gid int) error {
	if err := s.sb.HandOver(uid, gid); err != nil {
		return err
	}
	return sandbox.ChownTree(s.policy().DataDirectory, uid, gid)
}
