// Package server is bentod's core: it accepts client connections, checks
// uploaded manifests against the middlebox node policy, admits instances
// within the aggregate ceilings, runs each in a sandbox, hands out the
// invocation and shutdown tokens, streams buffered output to (re)attached
// clients, serves the host API to the sandboxed runners, and reclaims every
// resource when an instance ends.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/netcheck"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/safelog"
	"github.com/torbento/bento/internal/sandbox"
	"github.com/torbento/bento/internal/torfw"
	"github.com/torbento/bento/internal/torlink"
	"github.com/torbento/bento/internal/units"
	"github.com/torbento/bento/internal/wire"
)

// Version is reported to clients.
const Version = "bentod/0.1"

// OutputRetention is how long a session's output stays available after its
// instance ended, for clients that were disconnected at the time.
const OutputRetention = 10 * time.Minute

// Server is a running bentod.
type Server struct {
	pol       atomic.Pointer[policy.Policy]
	sb        *sandbox.Sandbox
	log       *slog.Logger
	instDir   string
	transport netcheck.Dialer   // for function network access; a Tor dialer later
	resolver  netcheck.Resolver // nil: the system resolver
	tor       *torlink.Link     // nil without TorControlPort
	firewall  *torfw.Firewall   // functions' control-port access

	mu        sync.Mutex
	instances map[string]*Instance
	byInv     map[tokenHash]*Instance
	byShut    map[tokenHash]*Instance
	usedMem   int64
	usedCPU   float64
	running   int
	restore   bool                 // RestoreInstances, read at start
	lost      map[tokenHash]string // tokens of instances a restart ended, and why
	perClient map[string]int       // instances held, by client address

	wg     sync.WaitGroup
	closed chan struct{}
}

// Options configure New.
type Options struct {
	Policy    *policy.Policy
	Logger    *slog.Logger
	Transport netcheck.Dialer
}

// New prepares the data directory and the sandbox, reaping containers an
// earlier bentod left behind.
func New(opts Options) (*Server, error) {
	p := opts.Policy
	if err := os.MkdirAll(p.DataDirectory, 0o700); err != nil {
		return nil, fmt.Errorf("DataDirectory: %w", err)
	}
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
	sb, err := sandbox.New(sandbox.Config{Runtime: rt, StateDir: p.DataDirectory, RunnerPath: runnerPath})
	if err != nil {
		return nil, err
	}
	s := &Server{
		sb:        sb,
		log:       opts.Logger,
		instDir:   filepath.Join(p.DataDirectory, "instances"),
		transport: opts.Transport,
		instances: map[string]*Instance{},
		byInv:     map[tokenHash]*Instance{},
		byShut:    map[tokenHash]*Instance{},
		lost:      map[tokenHash]string{},
		perClient: map[string]int{},
		restore:   p.RestoreInstances,
		closed:    make(chan struct{}),
	}
	if s.log == nil {
		s.log = safelog.New(os.Stderr, p.LogLevel)
	}
	if s.transport == nil {
		s.transport = &net.Dialer{Timeout: 30 * time.Second}
	}
	s.pol.Store(p)
	if n, err := sb.Reap(); err != nil {
		s.log.Warn("reaping old containers", "err", err)
	} else if n > 0 {
		safelog.Notice(s.log, "removed containers left by an earlier bentod", "count", n)
	}
	if err := os.MkdirAll(s.instDir, 0o700); err != nil {
		return nil, err
	}
	// The containers of an earlier bentod are gone; its instances start
	// again (RestoreInstances 1) or end with a clear answer to their clients.
	s.recoverInstances()
	go s.janitor()
	return s, nil
}

func (s *Server) policy() *policy.Policy { return s.pol.Load() }

// SetPolicy replaces the policy (SIGHUP). Running instances keep what they
// were admitted with; host calls are checked against the new policy.
func (s *Server) SetPolicy(p *policy.Policy) { s.pol.Store(p) }

// MaxConnections bounds client connections served at once; more are
// closed at once.
const MaxConnections = 1024

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

// Serve accepts client connections on ln until Close.
func (s *Server) Serve(ln net.Listener) error {
	go func() { <-s.closed; ln.Close() }()
	slots := make(chan struct{}, MaxConnections)
	for {
		c, err := ln.Accept()
		if err != nil {
			select {
			case <-s.closed:
				return nil
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			return err
		}
		select {
		case slots <- struct{}{}:
		default:
			s.log.Warn("too many client connections; refusing one", "limit", MaxConnections)
			c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer func() { <-slots; s.wg.Done() }()
			s.handle(c)
		}()
	}
}

// PolicyHandler serves the public policy as JSON.
func (s *Server) PolicyHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" && r.URL.Path != "/policy" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(s.publicPolicy())
	})
}

func (s *Server) publicPolicy() *policy.Public {
	p := s.policy()
	pub := p.PublicView()
	s.mu.Lock()
	pub.Free.Memory = max(0, p.Aggregate.Memory-s.usedMem)
	pub.Free.CPU = max(0, p.Aggregate.CPU-s.usedCPU)
	pub.Free.Instances = max(0, p.Aggregate.Instances-s.running)
	s.mu.Unlock()
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
		if in.c != nil {
			in.kill("bentod is shutting down")
		}
	}
	for _, in := range all {
		if in.c != nil {
			<-in.ended
		}
	}
}

// handle serves one client connection.
func (s *Server) handle(nc net.Conn) {
	defer nc.Close()
	log := s.log.With("client", safelog.Addr(nc.RemoteAddr().String()))
	conn := wire.NewConn(nc)
	p := s.policy()
	conn.MaxFrame = int(p.Max.Upload) + 256<<10
	fail := func(code, format string, a ...any) {
		_ = conn.Send(proto.TError, proto.Error{Code: code, Message: fmt.Sprintf(format, a...)}, nil)
	}
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	f, err := conn.Read()
	if err != nil {
		if errors.Is(err, wire.ErrTooLarge) {
			fail(proto.CodeTooLarge, "%v", err)
		}
		return
	}
	var hello proto.Hello
	if f.Type != proto.THello || f.Unmarshal(&hello) != nil {
		fail(proto.CodeBadRequest, "expected a hello frame first (is this a Bento client?)")
		return
	}
	if hello.Version != proto.Version {
		fail(proto.CodeBadRequest, "protocol version %d not supported (server speaks %d)", hello.Version, proto.Version)
		return
	}
	if err := conn.Send(proto.TWelcome, proto.Welcome{Version: proto.Version, Server: Version}, nil); err != nil {
		return
	}
	for {
		nc.SetDeadline(time.Now().Add(5 * time.Minute))
		f, err := conn.Read()
		if err != nil {
			if errors.Is(err, wire.ErrTooLarge) {
				fail(proto.CodeTooLarge, "%v (MaxUploadSize is %s)", err, units.FormatSize(p.Max.Upload))
			}
			return
		}
		nc.SetDeadline(time.Time{})
		switch f.Type {
		case proto.TPolicy:
			if conn.Send(proto.TPolicyReply, s.publicPolicy(), nil) != nil {
				return
			}
		case proto.TDeploy:
			var d proto.Deploy
			if err := f.Unmarshal(&d); err != nil {
				fail(proto.CodeBadRequest, "%v", err)
				return
			}
			res, perr := s.deploy(d, f.Body, clientKey(nc.RemoteAddr()), log)
			if perr != nil {
				_ = conn.Send(proto.TError, perr, nil)
				continue
			}
			if conn.Send(proto.TDeployed, res, nil) != nil {
				return
			}
		case proto.TShutdown:
			var sd proto.Shutdown
			if err := f.Unmarshal(&sd); err != nil {
				fail(proto.CodeBadRequest, "%v", err)
				return
			}
			if perr := s.shutdown(sd.Token); perr != nil {
				_ = conn.Send(proto.TError, perr, nil)
				continue
			}
			if conn.Send(proto.TOK, nil, nil) != nil {
				return
			}
		case proto.TInvoke, proto.TAttach:
			s.serveSession(conn, nc, f)
			return
		default:
			fail(proto.CodeBadRequest, "unexpected frame type %d", f.Type)
			return
		}
	}
}

// deploy checks and starts a new instance.
func (s *Server) deploy(d proto.Deploy, body []byte, client string, log *slog.Logger) (*proto.Deployed, *proto.Error) {
	p := s.policy()
	if size := int64(len(body) + len(d.Manifest)); size > p.Max.Upload {
		return nil, &proto.Error{Code: proto.CodeTooLarge, Message: fmt.Sprintf("upload of %s exceeds this node's MaxUploadSize of %s", units.FormatSize(size), units.FormatSize(p.Max.Upload))}
	}
	m, err := manifest.Parse([]byte(d.Manifest))
	if err != nil {
		return nil, &proto.Error{Code: proto.CodeBadRequest, Message: err.Error()}
	}
	m.Resolve(p)
	if vs := manifest.Check(m, p); len(vs) > 0 {
		e := &proto.Error{Code: proto.CodeRefused, Message: fmt.Sprintf("manifest of %q asks for more than this node's policy allows (%d items)", m.Name, len(vs))}
		for _, v := range vs {
			e.Violations = append(e.Violations, proto.Violation(v))
		}
		log.Info("manifest refused", "function", m.Name, "violations", len(vs))
		return nil, e
	}
	files, err := proto.UnpackFiles(d.Files, body, manifest.ValidFileName)
	if err != nil {
		return nil, &proto.Error{Code: proto.CodeBadRequest, Message: err.Error()}
	}
	if _, ok := files[m.Entry]; !ok {
		return nil, &proto.Error{Code: proto.CodeBadRequest, Message: fmt.Sprintf("entry file %q is not in the upload", m.Entry)}
	}
	if perr := s.admitClient(client); perr != nil {
		return nil, perr
	}
	if perr := s.admit(m); perr != nil {
		s.releaseClient(client)
		return nil, perr
	}
	inv, invHash := newToken(invPrefix)
	shut, shutHash := newToken(shutPrefix)
	in := &Instance{
		id: newID("i-", 12), m: m, srv: s, log: s.log, invHash: invHash, shutHash: shutHash, created: time.Now(),
		files: files, sessions: map[string]*session{}, byInv: map[uint64]*session{}, ended: make(chan struct{}),
		manifestText: d.Manifest, client: client,
	}
	in.dir = filepath.Join(s.instDir, in.id)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := in.start(ctx); err != nil {
		if in.c != nil {
			_ = in.c.Remove()
		}
		// The runtime's own words, for the operator (they name host paths,
		// so they are not sent to the client).
		runnerLog, _ := os.ReadFile(filepath.Join(in.dir, "runner.log"))
		_ = os.RemoveAll(in.dir)
		s.unadmit(m)
		s.releaseClient(client)
		var le *loadError
		if errors.As(err, &le) {
			return nil, &proto.Error{Code: proto.CodeBadRequest, Message: "function failed to load: " + le.Error()}
		}
		log.Warn("instance failed to start", "function", m.Name, "err", err, "runtime", lastLine(runnerLog))
		return nil, &proto.Error{Code: proto.CodeInternal, Message: "could not start the function: " + err.Error()}
	}
	if err := in.saveRecord(d.Manifest); err != nil {
		log.Warn("saving the instance record", "instance", in.id, "err", err)
	}
	s.launch(in, invHash, shutHash)
	safelog.Notice(log, "instance started", "instance", in.id, "function", m.Name,
		"memory", units.FormatSize(m.Resources.Memory), "cpu", m.Resources.CPU)
	res, _ := json.Marshal(m.Resources)
	return &proto.Deployed{Instance: in.id, InvocationToken: inv, ShutdownToken: shut, Resources: res}, nil
}

// admit reserves the instance's resources within the aggregate ceilings.
func (s *Server) admit(m *manifest.Manifest) *proto.Error {
	p := s.policy()
	r := m.Resources
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.closed:
		return &proto.Error{Code: proto.CodeBusy, Message: "bentod is shutting down; retry later"}
	default:
	}
	var why string
	switch {
	case s.running >= p.Aggregate.Instances:
		why = fmt.Sprintf("%d instances are running (MaxInstances)", s.running)
	case s.usedMem+r.Memory > p.Aggregate.Memory:
		why = fmt.Sprintf("%s of memory is free for functions, %s asked", units.FormatSize(max(0, p.Aggregate.Memory-s.usedMem)), units.FormatSize(r.Memory))
	case s.usedCPU+r.CPU > p.Aggregate.CPU+1e-9:
		why = fmt.Sprintf("%.2f cores are free for functions, %.2f asked", max(0, p.Aggregate.CPU-s.usedCPU), r.CPU)
	}
	if why != "" {
		return &proto.Error{Code: proto.CodeBusy, Message: "busy, retry later: " + why}
	}
	s.running++
	s.usedMem += r.Memory
	s.usedCPU += r.CPU
	return nil
}

func (s *Server) unadmit(m *manifest.Manifest) {
	s.mu.Lock()
	s.running--
	s.usedMem -= m.Resources.Memory
	s.usedCPU -= m.Resources.CPU
	s.mu.Unlock()
}

// release returns an ended instance's resources.
func (s *Server) release(in *Instance) {
	in.mu.Lock()
	done := in.released
	in.released = true
	in.mu.Unlock()
	if !done {
		s.unadmit(in.m)
		s.releaseClient(in.client)
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
		ss.out.close()
	}
	in.mu.Unlock()
	_ = os.RemoveAll(in.dir)
}

// janitor forgets ended instances once their output retention is over.
func (s *Server) janitor() {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.closed:
			return
		case <-t.C:
		}
		s.mu.Lock()
		var old []*Instance
		for _, in := range s.instances {
			in.mu.Lock()
			if !in.endedAt.IsZero() && time.Since(in.endedAt) > OutputRetention {
				old = append(old, in)
			}
			in.mu.Unlock()
		}
		s.mu.Unlock()
		for _, in := range old {
			s.forget(in)
		}
	}
}

// lookup finds the instance whose invocation token (shutdown false) or
// shutdown token (shutdown true) is tok. The map is keyed by the token's
// hash; the hash found is compared once more in constant time.
func (s *Server) lookup(tok string, shutdown bool) *Instance {
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
	if !in.isEnded() {
		in.kill("shut down by its owner")
		<-in.ended
	}
	s.forget(in)
	return nil
}

// Instances returns the number of live instances.
func (s *Server) Instances() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running
}

// lastLine returns the last non-empty line of b, bounded.
func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	l := lines[len(lines)-1]
	if len(l) > 300 {
		l = l[:300]
	}
	return l
}

// clientKey is the address per-client fairness counts by: the client's IP,
// or "" for clients that come through the relay's tor (loopback), who
// cannot be told apart.
func clientKey(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return ""
	}
	ip := ta.IP
	if ip.Equal(net.IPv4(127, 0, 0, 1)) || ip.Equal(net.IPv6loopback) {
		return ""
	}
	return ip.String()
}

// admitClient reserves one of the client's slots.
func (s *Server) admitClient(client string) *proto.Error {
	if client == "" {
		return nil
	}
	a := s.policy().Aggregate
	limit := a.PerClient
	if limit == 0 {
		limit = max(1, a.Instances/4)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perClient[client] >= limit {
		return &proto.Error{Code: proto.CodeBusy, Message: fmt.Sprintf("busy, retry later: you already hold %d instances here (MaxInstancesPerClient)", s.perClient[client])}
	}
	s.perClient[client]++
	return nil
}

func (s *Server) releaseClient(client string) {
	if client == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perClient[client]--; s.perClient[client] <= 0 {
		delete(s.perClient, client)
	}
}

// launch registers a started instance under its id and token hashes, so
// clients can reach it, and lets it run.
func (s *Server) launch(in *Instance, invHash, shutHash tokenHash) {
	s.mu.Lock()
	s.instances[in.id] = in
	s.byInv[invHash] = in
	s.byShut[shutHash] = in
	s.mu.Unlock()
	go in.run()
}
