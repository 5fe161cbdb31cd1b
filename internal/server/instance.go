package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/torbento/bento/internal/budget"
	"github.com/torbento/bento/internal/fsprotect"
	"github.com/torbento/bento/internal/kvstore"
	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/safelog"
	"github.com/torbento/bento/internal/sandbox"
	"github.com/torbento/bento/internal/torfw"
	"github.com/torbento/bento/internal/units"
	"github.com/torbento/bento/internal/wire"
)

// Instance is one deployed function: its tokens, its sessions, its stored
// data, and the container that runs its code (its runtime).
//
// The instance outlives its runtime. A runtime that reaches a limit — the
// memory limit (the kernel's OOM kill), the process limit, a runner that
// breaks the host-API protocol or dies — is removed, the invocations it
// was running end with the reason, and a new runtime starts after a
// back-off that grows with repeated failures. Whoever holds only the
// invocation token can therefore make calls fail, but cannot end the
// instance or lose its stored data: only the shutdown token, the lifetime,
// the function itself (exit(), or returning in one-shot mode) and bentod's
// own shutdown end an instance.
type Instance struct {
	id         string
	man        atomic.Pointer[manifest.Manifest] // mf(); replaced by an update
	srv        *Server
	log        *slog.Logger
	invHash    tokenHash
	shutHash   tokenHash
	dir        string
	created    time.Time // deploy time; the lifetime counts from it, across restarts
	owner      string    // per-client fairness key ("" for clients through Tor)
	root       string    // composition group
	depth      int       // composition depth
	adm        *admission
	key        *fsprotect.Key // FS Protect's key (nil: not protected); in memory only
	recordGen  atomic.Uint64  // FS Protect: the generation of the record last saved, in its AD
	store      *kvstore.Store
	budget     chain        // host-call data in flight: the instance's, its client's, the daemon's
	budgetDone func()       // gives the client's budget back
	io         *rateLimiter // host-call data moved, per second
	calls      *rateLimiter // host calls carried out, per second

	logMu      sync.Mutex    // the function's log files, and:
	logEnd     int64         // bytes ever written to the log (a reader's position is counted so)
	logCur     int64         // where function.log starts in that count
	logOld     int64         // where function.log.1 starts
	logWake    chan struct{} // closed (and replaced) when a line is written
	logMem     [2][]byte     // a protected instance's log, never on disk: function.log and .1
	logReaders int           // clients reading the log (under mu)
	mu         sync.Mutex
	rt         *runtime      // the running container; nil while (re)starting
	rtReady    chan struct{} // closed when rt is set
	sessions   map[string]*session
	byInv      map[uint64]*session // running invocations
	nextInv    uint64
	invoked    bool
	readers    int   // clients attached to its sessions
	outputHeld int64 // retained output and logs, with framing, charged to Output
	logHeld    int64 // the part of outputHeld that is the function's log
	exiting    bool  // the function called exit()
	keepData   bool  // the stored data could not be opened: never delete it
	endReason  string
	endReq     chan struct{} // closed when the instance is to end
	ended      chan struct{} // closed when it has ended
	endedAt    time.Time
	restarts   []time.Time
	lastStop   string         // why the last runtime stopped
	torSession *torfw.Session // opened on the first tor.control call
	st         *streams       // Tor streams and onion-service listeners
	pending    *pendingUpdate // an update waiting for the runner to change (under mu)
	updateWake chan struct{}  // an update is pending: no back-off before the next runner
	lifeReset  chan struct{}  // an update changed the lifetime
	updating   atomic.Bool    // an update is under way
	storeOpen  bool           // store is open (under mu)
}

// runtime is one container running the instance's code.
type runtime struct {
	c     *sandbox.Container
	host  *os.File // bentod's end of the host-API socket
	conn  *wire.Conn
	in    *Instance
	stop  string       // why bentod stopped it (guarded by the instance's mu)
	calls atomic.Int32 // host calls in progress
}

// hostWriteTimeout bounds a write to a runner: one that stops reading is
// stopped, never waited for.
const hostWriteTimeout = 30 * time.Second

// send writes a frame to the runner within hostWriteTimeout.
func (rt *runtime) send(t uint8, hdr any, body []byte) error {
	_ = rt.host.SetWriteDeadline(time.Now().Add(hostWriteTimeout))
	err := rt.conn.Send(t, hdr, body)
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) && ne.Timeout() {
		rt.in.stopRuntime(rt, "host API protocol violation: the runner stopped reading")
	}
	return err
}

// exited is closed when the runtime's container has ended.
func (rt *runtime) exited() <-chan struct{} { return rt.c.Exited() }

// session is one invocation.
type session struct {
	id       string
	inv      uint64
	rt       *runtime
	out      *outLog
	held     int64            // output charged for it
	input    chan *wire.Frame // client input for recv(), charged to the client
	eof      chan struct{}    // closed on the client's InputEOF
	fin      chan struct{}    // closed when the invocation has ended
	eofOnce  sync.Once
	finOnce  sync.Once
	readers  int           // clients attached
	cpuStart time.Duration // the runtime's CPU time when it began
	limitHit string        // a limit of this invocation was reached
	start    func()        // sends the invocation to the runner (once, by newSession's caller)
	cancelAt time.Time     // when bentod asked the runner to cancel it
	done     bool
	doneAt   time.Time
}

// finish marks the invocation ended and gives back its queued input.
func (s *session) finish() {
	s.finOnce.Do(func() { close(s.fin) })
	s.drainInput()
}

func (s *session) drainInput() {
	for {
		select {
		case f := <-s.input:
			f.Release()
		default:
			return
		}
	}
}

// Session bounds per instance.
const (
	maxActiveSessions   = 64   // invocations running at once
	maxRetainedSessions = 1024 // finished sessions kept for reattaching
	maxReaders          = 8    // clients attached to one session at once
	maxInstanceReaders  = 64   // ... to all of an instance's sessions
	sessionCharge       = 256  // what a retained session costs the output allowance
	maxCalls            = 128  // host calls in progress (a Starlark runner makes one per invocation)
	logKept             = 64 << 10
)

// restart back-off: a runtime that keeps failing is started again after
// 1 s, 2 s, 4 s ... up to a minute; ten quiet minutes forgive it.
const (
	restartWindow = 10 * time.Minute
	restartMax    = time.Minute
)

func newInstance(s *Server, id string, m *manifest.Manifest, o origin, adm *admission) *Instance {
	in := &Instance{
		id: id, srv: s, log: s.log, created: time.Now(),
		owner: o.owner, root: adm.root, depth: o.depth, adm: adm,
		dir: filepath.Join(s.instDir, id), rtReady: make(chan struct{}),
		sessions: map[string]*session{}, byInv: map[uint64]*session{},
		endReq: make(chan struct{}), ended: make(chan struct{}),
		updateWake: make(chan struct{}, 1), lifeReset: make(chan struct{}, 1),
	}
	in.man.Store(m)
	client, done := s.budgets.get(budgetKey(o.owner))
	in.budget, in.budgetDone = append(chain{budget.New(instanceShare(m.Resources))}, client...), done
	in.io = newRateLimiter(max(1<<20, m.Resources.CPU*ioPerCore))
	in.calls = newCallLimiter(m.Resources.CPU)
	return in
}

// mf is the instance's manifest: the one deployed, or the last update's.
func (in *Instance) mf() *manifest.Manifest { return in.man.Load() }

func (in *Instance) storagePath() string { return filepath.Join(in.dir, "storage.log") }

// sealer is what seals the instance's files (FS Protect), or nil.
func (in *Instance) sealer() fsprotect.Sealer {
	if in.key == nil {
		return nil // not a typed nil in the interface
	}
	return in.key
}

// openStore opens the instance's stored data.
func (in *Instance) openStore() error {
	st, err := kvstore.Open(in.storagePath(), kvstore.Options{MaxBytes: in.mf().Resources.Storage, Seal: in.sealer()})
	if err != nil {
		return err
	}
	in.store = st
	return nil
}

// hostFrameLimit bounds a frame from the runner: the largest item a host
// call carries (output, a stored value, a fetch body) and its header.
func hostFrameLimit(r policy.Limits) int64 {
	return policy.InstanceInFlight(r) / 2
}

// startRuntime starts a container and loads the function (m, files) into it.
func (in *Instance) startRuntime(ctx context.Context, m *manifest.Manifest, files map[string][]byte) (*runtime, error) {
	for _, d := range []string{in.dir, filepath.Join(in.dir, "sessions")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	// Non-blocking, so the runtime poller owns it and Close interrupts a
	// pending Read.
	if err := syscall.SetNonblock(fds[0], true); err != nil {
		syscall.Close(fds[0])
		syscall.Close(fds[1])
		return nil, err
	}
	host, guest := os.NewFile(uintptr(fds[0]), "hostapi"), os.NewFile(uintptr(fds[1]), "hostapi-guest")
	r := m.Resources
	c, err := in.srv.sb.Start(ctx, in.id, sandbox.Limits{
		Memory: r.Memory, CPU: r.CPU, CPUTime: r.CPUTime, Lifetime: r.Lifetime, Processes: r.Processes, Storage: r.Storage, Image: m.Image,
	}, guest)
	// Only the container may hold the guest end: its death must be EOF here.
	guest.Close()
	if err != nil {
		host.Close()
		return nil, fmt.Errorf("starting sandbox: %w", err)
	}
	rt := &runtime{c: c, host: host, conn: wire.NewConn(host), in: in}
	rt.conn.MaxFrame = int(hostFrameLimit(r))
	rt.conn.Budget = in.budget
	// A runner whose frame waits for the budget waits (back-pressure on
	// that function), it is never killed for it.
	rt.conn.BudgetWait = r.Lifetime
	rt.conn.Limit = func(t uint8) int {
		switch t {
		case proto.HReady:
			return 64 << 10
		case proto.HCall, proto.HDone:
			return int(hostFrameLimit(r))
		}
		return 0
	}
	go func() { <-c.Exited(); host.Close() }()
	fail := func(err error) (*runtime, error) {
		_ = c.Remove()
		return nil, err
	}
	ents, body := proto.PackFiles(files)
	init := proto.Init{Version: proto.HostAPIVersion, Name: m.Name, Entry: m.Entry, Function: m.Function, Steps: r.Steps, Files: ents,
		MaxBody: hostFrameLimit(r) - 64<<10, Image: m.Image, Memory: r.Memory, APIs: m.APIs}
	if err := rt.send(proto.HInit, init, body); err != nil {
		return fail(in.startFailure(rt, err))
	}
	type res struct {
		f   *wire.Frame
		err error
	}
	ch := make(chan res, 1)
	go func() { f, err := rt.conn.Read(); ch <- res{f, err} }()
	select {
	case rr := <-ch:
		if rr.err != nil {
			return fail(in.startFailure(rt, rr.err))
		}
		defer rr.f.Release()
		if rr.f.Type != proto.HReady {
			return fail(fmt.Errorf("runner sent frame type %d before ready", rr.f.Type))
		}
		var ready proto.Ready
		if err := rr.f.Unmarshal(&ready); err != nil {
			return fail(err)
		}
		if ready.Error != nil {
			ready.Error.Truncate()
			return fail(&loadError{ready.Error})
		}
	case <-time.After(loadTimeout(m, files)):
		go func() { // a late ready frame gives its bytes back
			if rr := <-ch; rr.f != nil {
				rr.f.Release()
			}
		}()
		return fail(fmt.Errorf("function did not load within %s", loadTimeout(m, files)))
	case <-ctx.Done():
		go func() {
			if rr := <-ch; rr.f != nil {
				rr.f.Release()
			}
		}()
		return fail(ctx.Err())
	}
	go in.monitor(rt, m)
	return rt, nil
}

// loadTimeout bounds how long a runner may take to load a function: 15 s;
// for a wasm module, which the runner compiles to machine code within the
// function's CPU share, 10 s more per MiB of module (at most 2 minutes).
func loadTimeout(m *manifest.Manifest, files map[string][]byte) time.Duration {
	d := 15 * time.Second
	if m.Image == manifest.ImageWasm {
		d += time.Duration(len(files[m.Entry])) * 10 * time.Second / (1 << 20)
	}
	return min(d, 2*time.Minute).Round(time.Second)
}

// loadError is an error in the function's code found while loading it.
type loadError struct{ fe *proto.FuncError }

func (e *loadError) Error() string { return e.fe.Error() }

func (in *Instance) startFailure(rt *runtime, err error) error {
	select {
	case <-rt.exited():
		return fmt.Errorf("sandbox ended during start-up (%s): %s", rt.c.Status(), in.limitReason(rt))
	case <-time.After(2 * time.Second):
		return err
	}
}

// setRuntime makes rt the instance's running container, unless the
// instance is ending (its end came while rt was starting): then rt is
// stopped at once, and run tears the instance down.
func (in *Instance) setRuntime(rt *runtime) {
	in.mu.Lock()
	ending := in.endReason != ""
	if !ending {
		in.rt = rt
		close(in.rtReady)
	}
	in.mu.Unlock()
	if ending {
		rt.c.Kill()
	}
}

// run serves the instance until it ends: the host API of each runtime,
// and a new runtime after one stopped, until the instance is to end.
func (in *Instance) run() {
	defer in.srv.recoverPanic("running an instance")
	lifetime := time.NewTimer(time.Until(in.created.Add(in.mf().Resources.Lifetime)))
	defer lifetime.Stop()
	go func() {
		for {
			select {
			case <-lifetime.C:
				if b := in.srv.box(); b.ends() && !time.Now().Before(b.end) {
					// A lifetime cut to the box's end: the box's reason.
					in.srv.endBoxInstance(in, b)
					return
				}
				in.end("lifetime limit reached (" + in.mf().Resources.Lifetime.String() + ")")
				return
			case <-in.lifeReset:
				// An update changed the lifetime (counted from the deploy).
				lifetime.Reset(time.Until(in.created.Add(in.mf().Resources.Lifetime)))
			case <-in.ended:
				return
			}
		}
	}()
	in.mu.Lock()
	rt := in.rt
	in.mu.Unlock()
	if rt == nil {
		// Restored: the containers of the earlier bentod must be gone
		// first, then the stored data is opened (moved from bentod 0.1's
		// layout on the way).
		select {
		case <-in.srv.reaped:
		case <-in.endReq:
		}
		if in.store == nil {
			err := migrateStorage(in.dir, in.mf().Resources.Storage)
			if err == nil {
				err = in.openStore()
			}
			if err == nil {
				in.mu.Lock()
				in.storeOpen = true
				in.mu.Unlock()
			}
			if err != nil {
				in.log.Warn("the instance's stored data could not be read; it is kept for the next start", "instance", in.id, "err", err)
				in.mu.Lock()
				in.keepData = true
				in.mu.Unlock()
				in.end("its stored data could not be read (the operator's log says why)")
			}
		}
	}
	failed := false
	for {
		if rt != nil {
			in.serve(rt)
			in.runtimeGone(rt)
		}
		if why, ok := in.ending(); ok {
			in.teardown(why)
			return
		}
		if (rt != nil || failed) && !in.updatePending() {
			delay := in.nextRestart()
			in.mu.Lock()
			why := in.lastStop
			in.mu.Unlock()
			safelog.Notice(in.log, "function runner stopped; starting a new one", "instance", in.id, "why", why, "in", delay)
			select {
			case <-time.After(delay):
			case <-in.endReq:
			case <-in.updateWake: // new code: try it at once
			}
			if why, ok := in.ending(); ok {
				in.teardown(why)
				return
			}
		}
		rt = nil
		if u := in.takeUpdate(); u != nil {
			// The runner of the old code is gone: start the new one. If it
			// does not load, the old code starts again below, at once.
			if rt = in.applyUpdate(u); rt != nil {
				failed = false
				in.setRuntime(rt)
				continue
			}
		}
		files, err := in.loadFiles()
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			go func() {
				select {
				case <-in.endReq:
					cancel() // the end came while it starts
				case <-ctx.Done():
				}
			}()
			rt, err = in.startRuntime(ctx, in.mf(), files)
			cancel()
		}
		if err != nil {
			in.log.Warn("starting the function's runner failed", "instance", in.id, "err", err)
			in.mu.Lock()
			in.lastStop = "it could not start: " + startFailureForClient(err)
			in.mu.Unlock()
			rt, failed = nil, true
			continue
		}
		failed = false
		in.setRuntime(rt)
		if in.updatePending() {
			// An update came while the old code was starting.
			in.stopRuntime(rt, updatedReason)
		}
	}
}

// nextRestart records a restart and returns how long to wait before it.
func (in *Instance) nextRestart() time.Duration {
	in.mu.Lock()
	defer in.mu.Unlock()
	now := time.Now()
	kept := in.restarts[:0]
	for _, t := range in.restarts {
		if now.Sub(t) < restartWindow {
			kept = append(kept, t)
		}
	}
	in.restarts = append(kept, now)
	n := len(in.restarts)
	if n == 1 {
		return 100 * time.Millisecond
	}
	return min(restartMax, time.Second<<min(n-2, 6))
}

// ending reports whether the instance is to end, and why.
func (in *Instance) ending() (string, bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	switch {
	case in.endReason != "":
		return in.endReason, true
	case in.exiting && len(in.byInv) == 0:
		return "function called exit()", true
	case in.mf().Mode == manifest.ModeOneShot && in.invoked && len(in.byInv) == 0:
		return "function returned", true
	}
	return "", false
}

// serve answers the runtime's host API until its container ends.
func (in *Instance) serve(rt *runtime) {
	for {
		f, err := rt.conn.Read()
		if err != nil {
			if errors.Is(err, wire.ErrTooLarge) {
				in.stopRuntime(rt, "host API protocol violation: "+err.Error())
			}
			return
		}
		switch f.Type {
		case proto.HCall:
			var call proto.Call
			if err := f.Unmarshal(&call); err != nil {
				f.Release()
				in.stopRuntime(rt, "host API protocol violation: "+err.Error())
				continue
			}
			// The calls' pace: the runtime's next frames wait (its
			// function's threads with them), bounded by the runtime's end.
			if !in.calls.waitOr(rt.exited(), 1) {
				f.Release()
				return
			}
			if rt.calls.Add(1) > maxCalls {
				rt.calls.Add(-1)
				f.Release()
				in.stopRuntime(rt, fmt.Sprintf("host API protocol violation: more than %d host calls at once", maxCalls))
				continue
			}
			in.dispatchSafely(rt, call, f)
		case proto.HDone:
			var d proto.Done
			if err := f.Unmarshal(&d); err != nil {
				f.Release()
				in.stopRuntime(rt, "host API protocol violation: "+err.Error())
				continue
			}
			in.finish(rt, d, f.Body)
			f.Release()
		default:
			f.Release()
			in.stopRuntime(rt, fmt.Sprintf("host API protocol violation: frame type %d", f.Type))
		}
	}
}

// dispatchSafely is dispatch, with a bug in a host call contained: it is
// logged, the runtime that made the call is stopped (and replaced), and
// bentod and the instance go on.
func (in *Instance) dispatchSafely(rt *runtime, call proto.Call, f *wire.Frame) {
	defer func() {
		if r := recover(); r != nil {
			f.Release()
			in.srv.log.Error("internal error in a host call (a bug: please report it); the function's runner is restarted", "call", call.Name, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			in.stopRuntime(rt, "bentod failed while carrying out "+truncate(call.Name, 40))
		}
	}()
	in.dispatch(rt, call, f)
}

// monitor enforces the CPU-time limit of each invocation and the process
// limit, from the cgroups' own accounting.
func (in *Instance) monitor(rt *runtime, m *manifest.Manifest) {
	defer in.srv.recoverPanic("the instance monitor")
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	limit := m.Resources.CPUTime
	for {
		select {
		case <-rt.exited():
			return
		case <-t.C:
		}
		st := rt.c.Stats()
		if st.PidsRefused > 0 {
			in.stopRuntime(rt, fmt.Sprintf("process limit exceeded (%d processes/threads)", m.Resources.Processes))
			return
		}
		reason := fmt.Sprintf("cpu time limit exceeded (%s)", limit)
		var cancel []uint64
		stop := false
		in.mu.Lock()
		for _, s := range in.byInv {
			if s.rt != rt || st.CPU-s.cpuStart < limit {
				continue
			}
			switch {
			case s.cancelAt.IsZero():
				s.limitHit, s.cancelAt = reason, time.Now()
				cancel = append(cancel, s.inv)
			case time.Since(s.cancelAt) > 2*time.Second:
				stop = true // the runner did not stop it: stop the runner
			}
		}
		in.mu.Unlock()
		for _, inv := range cancel {
			_ = rt.send(proto.HCancel, proto.Cancel{Inv: inv, Reason: reason}, nil)
		}
		if stop {
			in.stopRuntime(rt, reason)
			return
		}
	}
}

// end makes the instance end for good, recording why (the first reason
// wins); its runtime is stopped and run tears everything down.
func (in *Instance) end(reason string) {
	in.mu.Lock()
	if in.endReason == "" {
		in.endReason = reason
		close(in.endReq)
	}
	rt := in.rt
	in.mu.Unlock()
	if rt != nil {
		rt.c.Kill()
	}
}

// stopRuntime stops a runtime that reached a limit; the instance goes on
// with a new one.
func (in *Instance) stopRuntime(rt *runtime, reason string) {
	in.mu.Lock()
	if rt.stop == "" {
		rt.stop = reason
	}
	in.mu.Unlock()
	rt.c.Kill()
}

// limitReason explains why a runtime's container ended.
func (in *Instance) limitReason(rt *runtime) string {
	in.mu.Lock()
	reason := rt.stop
	in.mu.Unlock()
	if reason != "" {
		return reason
	}
	st := rt.c.Stats()
	switch {
	case st.OOMKills > 0:
		return fmt.Sprintf("memory limit exceeded (%s)", units.FormatSize(in.mf().Resources.Memory))
	case st.PidsRefused > 0:
		return fmt.Sprintf("process limit exceeded (%d processes/threads)", in.mf().Resources.Processes)
	case rt.c.Signal() == syscall.SIGXCPU:
		return "cpu time limit exceeded"
	}
	return "function runner ended unexpectedly (" + rt.c.Status() + ")"
}

// runtimeGone removes a runtime whose container ended and ends the
// invocations it was running.
func (in *Instance) runtimeGone(rt *runtime) {
	rt.c.Kill()
	<-rt.exited()
	reason := in.limitReason(rt)
	in.mu.Lock()
	if in.endReason != "" && rt.stop == "" {
		reason = in.endReason
	}
	in.rt = nil
	in.rtReady = make(chan struct{})
	in.lastStop = reason
	var gone []*session
	for inv, s := range in.byInv {
		if s.rt == rt {
			gone = append(gone, s)
			delete(in.byInv, inv)
			s.done, s.doneAt = true, time.Now()
		}
	}
	in.mu.Unlock()
	if err := rt.c.Remove(); err != nil {
		in.log.Warn("removing container", "instance", in.id, "err", err)
	}
	if out := rt.c.Output(); out != "" {
		in.log.Info("the function runner's last output", "instance", in.id, "output", lastLine([]byte(out)))
	}
	for _, s := range gone {
		in.appendExit(s, proto.Exit{Status: proto.StatusKilled, Reason: reason})
		s.finish()
	}
}

// teardown ends every session, closes the function's Tor objects and
// releases the instance's resources. Its stored data is deleted, except
// when bentod is shutting down with RestoreInstances: then the record and
// the data stay for the next bentod. Session output stays readable until
// the retention period ends.
func (in *Instance) teardown(reason string) {
	in.srv.met.ended.With(endCause(reason)).Inc()
	in.mu.Lock()
	in.endReason = reason
	in.endedAt = time.Now()
	var open []*session
	for _, s := range in.sessions {
		if !s.done {
			s.done, s.doneAt = true, time.Now()
			open = append(open, s)
		}
	}
	in.byInv = map[uint64]*session{}
	ts, st := in.torSession, in.st
	pu := in.pending
	in.pending = nil
	in.mu.Unlock()
	if pu != nil {
		pu.refuse(&proto.Error{Code: proto.CodeGone, Message: "instance has ended: " + reason})
	}
	for _, s := range open {
		in.appendExit(s, proto.Exit{Status: proto.StatusKilled, Reason: reason})
		s.finish()
	}
	if st != nil {
		st.close()
	}
	if ts != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := ts.Close(ctx); err != nil {
			in.log.Warn("closing the function's Tor objects", "instance", in.id, "err", err)
		}
		cancel()
	}
	in.mu.Lock()
	keep := in.keepData
	in.mu.Unlock()
	select {
	case <-in.srv.closed:
		// Kept for the next start, unless the box has ended: then
		// nothing a user stored stays.
		b := in.srv.box()
		keep = keep || in.srv.restore && reason == "bentod is shutting down" && (!b.ends() || time.Now().Before(b.end))
	default:
	}
	if in.store != nil {
		in.store.Close()
	}
	if !keep {
		// The record first: a crash between the two leaves no instance
		// that would come back without its data.
		_ = os.Remove(filepath.Join(in.dir, recordFile))
		_ = os.Remove(in.storagePath())
	} else if in.key != nil {
		// FS Protect: the key goes with this bentod, so the sealed data
		// could never be read again. The record stays, so that the next
		// start tells the instance's clients what happened.
		_ = os.Remove(in.storagePath())
	}
	// The function's log stays readable (bento logs) until the instance
	// is forgotten, as its sessions' output does.
	close(in.ended)
	in.srv.unadmit(in.adm)
	in.budgetDone()
	switch {
	case keep && in.key != nil:
		in.log.Info("instance stopped; it has FS Protect, so its data goes with this bentod and it will not be restored (its clients are told at the next start)", "instance", in.id)
	case keep:
		in.log.Info("instance stopped; it will be restored", "instance", in.id)
	default:
		in.log.Info("instance ended", "instance", in.id, "reason", reason)
	}
}

// appendExit ends a session's log, charging the record to the output
// allowance (an exit is always written, even beyond it). The offset is
// filled in when the record is streamed.
func (in *Instance) appendExit(s *session, exit proto.Exit) {
	exit.Error.Truncate()
	b, _ := json.Marshal(exit)
	cost := s.out.charge(len(b))
	if _, err := s.out.append(recExit, b); err == nil {
		in.mu.Lock()
		in.outputHeld += cost
		s.held += cost
		in.mu.Unlock()
	}
}

// isEnded reports whether the instance has ended.
func (in *Instance) isEnded() bool {
	select {
	case <-in.ended:
		return true
	default:
		return false
	}
}

// runtimeWait is how long a new invocation waits for a runtime that is
// (re)starting before it is told to retry.
const runtimeWait = 20 * time.Second

// newSession starts an invocation.
func (in *Instance) newSession(args json.RawMessage) (*session, error) {
	deadline := time.NewTimer(runtimeWait)
	defer deadline.Stop()
	in.mu.Lock()
	for {
		if in.isEnded() || in.endReason != "" {
			why := in.endReason
			in.mu.Unlock()
			return nil, &proto.Error{Code: proto.CodeGone, Message: "instance has ended: " + why}
		}
		if in.exiting {
			in.mu.Unlock()
			return nil, &proto.Error{Code: proto.CodeGone, Message: "instance is ending: the function called exit()"}
		}
		if in.mf().Mode == manifest.ModeOneShot && in.invoked {
			in.mu.Unlock()
			return nil, &proto.Error{Code: proto.CodeGone, Message: "one-shot instance was already invoked; attach to its session or deploy again"}
		}
		if in.rt != nil {
			break
		}
		ready, why := in.rtReady, in.lastStop
		in.mu.Unlock()
		select {
		case <-ready:
		case <-in.endReq:
		case <-deadline.C:
			msg := "busy, retry later: the function's runner is starting"
			if why != "" {
				msg = "busy, retry later: the function's runner is restarting after " + why
			}
			return nil, &proto.Error{Code: proto.CodeBusy, Message: msg}
		}
		in.mu.Lock()
	}
	defer in.mu.Unlock()
	if len(in.byInv) >= maxActiveSessions {
		return nil, &proto.Error{Code: proto.CodeBusy, Message: fmt.Sprintf("busy, retry later: %d invocations are running on this instance", len(in.byInv))}
	}
	in.pruneSessionsLocked(time.Now(), sessionCharge)
	if in.outputHeld+sessionCharge > in.mf().Resources.Output {
		return nil, &proto.Error{Code: proto.CodeBusy, Message: fmt.Sprintf("busy, retry later: the output of running invocations fills this instance's output allowance (%s)", units.FormatSize(in.mf().Resources.Output))}
	}
	rt := in.rt
	s := &session{id: newID("s-", 16), rt: rt, input: make(chan *wire.Frame, 2), eof: make(chan struct{}), fin: make(chan struct{}),
		cpuStart: rt.c.Stats().CPU, held: sessionCharge}
	out, err := newOutLog(filepath.Join(in.dir, "sessions", s.id), s.id, in.sealer())
	if err != nil {
		in.log.Warn("creating a session log", "instance", in.id, "err", err)
		return nil, &proto.Error{Code: proto.CodeInternal, Message: "could not create the session (bentod's disk?); retry later"}
	}
	s.out = out
	in.invoked = true
	in.nextInv++
	s.inv = in.nextInv
	in.outputHeld += sessionCharge
	in.sessions[s.id] = s
	in.byInv[s.inv] = s
	if len(args) == 0 {
		args = json.RawMessage("[]")
	}
	// Sent by the caller, without the lock: a runner slow to read must not
	// hold up the instance. (If the runtime is going away, runtimeGone ends
	// the session.)
	s.start = func() { _ = rt.send(proto.HInvoke, proto.HostInvoke{Inv: s.inv, Args: args}, nil) }
	return s, nil
}

// pruneSessionsLocked forgets finished sessions whose output retention is
// over, the oldest finished ones beyond maxRetainedSessions, and, to make
// room for need more bytes of output, the oldest finished ones within the
// output allowance.
func (in *Instance) pruneSessionsLocked(now time.Time, need int64) {
	var done []*session
	for _, s := range in.sessions {
		if s.done {
			done = append(done, s)
		}
	}
	sort.Slice(done, func(i, j int) bool { return done[i].doneAt.Before(done[j].doneAt) })
	for i, s := range done {
		expired := now.Sub(s.doneAt) >= OutputRetention
		tooMany := len(done)-i > maxRetainedSessions
		full := in.outputHeld+need > in.mf().Resources.Output
		if !expired && !tooMany && !full {
			break
		}
		why := "the session's output was discarded: its 10 minutes of retention are over"
		if !expired {
			why = "the session's output was discarded to make room for newer output (the instance's output allowance is " + units.FormatSize(in.mf().Resources.Output) + ")"
		}
		s.out.discard(why)
		in.outputHeld -= s.held
		delete(in.sessions, s.id)
	}
}

// finish records an invocation's result.
func (in *Instance) finish(rt *runtime, d proto.Done, body []byte) {
	in.mu.Lock()
	s := in.byInv[d.Inv]
	in.mu.Unlock()
	if s == nil || s.rt != rt {
		in.stopRuntime(rt, "host API protocol violation: done for unknown invocation")
		return
	}
	exit := proto.Exit{Status: proto.StatusOK}
	if d.Error != nil {
		exit = proto.Exit{Status: proto.StatusError, Error: d.Error}
	} else if !d.None && len(body) > 0 {
		in.output(s, body) // over the limit, the session records why
	}
	in.mu.Lock()
	if s.limitHit != "" {
		exit = proto.Exit{Status: proto.StatusKilled, Reason: s.limitHit}
	}
	s.done, s.doneAt = true, time.Now()
	delete(in.byInv, d.Inv)
	exiting := in.exiting && len(in.byInv) == 0
	oneshot := in.mf().Mode == manifest.ModeOneShot
	in.mu.Unlock()
	in.appendExit(s, exit)
	s.finish()
	switch {
	case oneshot:
		// The operator's log says how it ended, never the function's own
		// error text (the user's data; the caller reads it in the session).
		switch exit.Status {
		case proto.StatusError:
			in.end("function raised an error")
		case proto.StatusKilled:
			in.end("function killed: " + exit.Reason)
		default:
			in.end("function returned")
		}
	case exiting:
		in.end("function called exit()")
	}
}

var errOutputLimit = errors.New("output limit exceeded")

// output appends data to a session within the instance's output
// allowance: the output retained for clients, with its framing, and the
// function's log. Finished sessions give way, oldest first; when the
// running ones fill it, the invocation's output stops there and its
// session ends with the reason.
func (in *Instance) output(s *session, data []byte) error {
	cost := s.out.charge(len(data))
	limit := in.mf().Resources.Output
	in.mu.Lock()
	if in.outputHeld+cost > limit {
		in.pruneSessionsLocked(time.Now(), cost)
	}
	if in.outputHeld+cost > limit {
		reason := OutputLimitReason(limit)
		if s.limitHit == "" {
			s.limitHit = reason
		}
		in.mu.Unlock()
		return fmt.Errorf("%w: %s", errOutputLimit, reason)
	}
	in.outputHeld += cost
	s.held += cost
	in.mu.Unlock()
	if _, err := s.out.append(recData, data); err != nil {
		in.mu.Lock()
		in.outputHeld -= cost
		s.held -= cost
		in.mu.Unlock()
		if errors.Is(err, errLogClosed) {
			return err
		}
		if errors.Is(err, fsprotect.ErrExhausted) {
			return err // retrying cannot help: the function is told why
		}
		in.log.Warn("writing output", "instance", in.id, "err", err)
		return errors.New("output could not be written (bentod's disk?)")
	}
	return nil
}

// appendLog keeps the function's log lines, charged to the output
// allowance: at most logKept bytes in two files, the oldest half dropped
// when full.
func (in *Instance) appendLog(msg string) error {
	if len(msg) > 4096 {
		msg = msg[:4096] + "…"
	}
	line := time.Now().UTC().Format(time.RFC3339) + " " + msg + "\n"
	cost := int64(len(line))
	path := filepath.Join(in.dir, "function.log")
	// A protected instance's log stays in memory (at most logKept bytes,
	// charged as the files are), never on the operator's disk.
	mem := in.key != nil
	// File work under the log's own lock, never the instance's.
	in.logMu.Lock()
	defer in.logMu.Unlock()
	in.mu.Lock()
	rotate := in.logHeld+cost > logKept
	in.mu.Unlock()
	if rotate {
		// The older half goes.
		var gone int64
		if mem {
			gone = int64(len(in.logMem[1]))
			in.logMem[1], in.logMem[0] = in.logMem[0], nil
		} else {
			if st, err := os.Stat(path + ".1"); err == nil {
				gone = st.Size()
			}
			_ = os.Rename(path, path+".1")
		}
		in.logOld, in.logCur = in.logCur, in.logEnd
		in.mu.Lock()
		in.logHeld -= gone
		in.outputHeld -= gone
		in.mu.Unlock()
	}
	in.mu.Lock()
	if in.outputHeld+cost > in.mf().Resources.Output {
		in.pruneSessionsLocked(time.Now(), cost)
	}
	if in.outputHeld+cost > in.mf().Resources.Output {
		in.mu.Unlock()
		return fmt.Errorf("%w (%s)", errOutputLimit, units.FormatSize(in.mf().Resources.Output))
	}
	in.logHeld += cost
	in.outputHeld += cost
	in.mu.Unlock()
	if mem {
		in.logMem[0] = append(in.logMem[0], line...)
		in.logEnd += int64(len(line))
		in.wakeLogReadersLocked()
		in.log.Debug("function log", "instance", in.id, "len", len(msg))
		return nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err == nil {
		var n int
		n, err = f.WriteString(line)
		f.Close()
		in.logEnd += int64(n) // what reached the file, even in part
		in.wakeLogReadersLocked()
	}
	if err != nil { // logs are best effort: give the charge back
		in.mu.Lock()
		in.logHeld -= cost
		in.outputHeld -= cost
		in.mu.Unlock()
	}
	in.log.Debug("function log", "instance", in.id, "len", len(msg))
	return nil
}

// lastLine returns the last non-empty line of b, bounded.
func lastLine(b []byte) string {
	s := string(b)
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == ' ') {
		s = s[:len(s)-1]
	}
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' {
			s = s[i+1:]
			break
		}
	}
	if len(s) > 300 {
		s = s[:300]
	}
	return s
}
