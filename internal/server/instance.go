package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/sandbox"
	"github.com/torbento/bento/internal/torfw"
	"github.com/torbento/bento/internal/units"
	"github.com/torbento/bento/internal/wire"
)

// Instance is one running function: a container, its host-API channel, its
// sessions and its storage.
type Instance struct {
	id       string
	m        *manifest.Manifest
	srv      *Server
	log      *slog.Logger
	invHash  tokenHash
	shutHash tokenHash
	dir      string
	files    map[string][]byte

	c    *sandbox.Container
	conn *wire.Conn

	mu           sync.Mutex
	sessions     map[string]*session
	byInv        map[uint64]*session
	nextInv      uint64
	invoked      bool
	outputUsed   int64
	storageUsed  int64
	exiting      bool // the function called exit()
	killReason   string
	endReason    string
	ended        chan struct{} // closed when the container is gone
	endedAt      time.Time
	released     bool
	created      time.Time // deploy time; the lifetime counts from it, across restarts
	manifestText string
	client       string         // per-client fairness key ("" for Tor/loopback clients)
	torSession   *torfw.Session // opened on the first tor.control call
	st           *streams       // Tor streams and onion-service listeners
}

// control returns the instance's control-port firewall session.
func (in *Instance) control() (*torfw.Session, error) {
	fw := in.srv.firewall
	if fw == nil {
		return nil, fmt.Errorf("this node is not connected to tor's control port (TorControlPort)")
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.torSession == nil {
		in.torSession = fw.Open(in.socksUser())
	}
	return in.torSession, nil
}

// socksUser is the SOCKS username of the instance's Tor traffic: tor
// isolates it from everyone else's, and the firewall attributes circuits
// and streams by it.
func (in *Instance) socksUser() string { return "bento-" + in.id }

// session is one invocation.
type session struct {
	id     string
	inv    uint64
	out    *outLog
	input  chan []byte   // bytes for recv()
	eof    chan struct{} // closed on the client's InputEOF
	once   sync.Once
	done   bool
	doneAt time.Time
}

// Session bounds per instance.
const (
	maxActiveSessions   = 256  // invocations running at once
	maxRetainedSessions = 1024 // finished sessions kept for reattaching
)

// storage keys are stored hex-encoded as file names.
const maxKey = 256

func (in *Instance) storageDir() string { return filepath.Join(in.dir, "storage") }

// start runs the container and loads the function. On error everything is
// cleaned up by the caller through in.teardown.
func (in *Instance) start(ctx context.Context) error {
	for _, d := range []string{in.dir, filepath.Join(in.dir, "sessions"), in.storageDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	// Non-blocking, so the runtime poller owns it and Close interrupts a
	// pending Read.
	if err := syscall.SetNonblock(fds[0], true); err != nil {
		syscall.Close(fds[0])
		syscall.Close(fds[1])
		return err
	}
	host, guest := os.NewFile(uintptr(fds[0]), "hostapi"), os.NewFile(uintptr(fds[1]), "hostapi-guest")
	logf, err := os.OpenFile(filepath.Join(in.dir, "runner.log"), os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		host.Close()
		return err
	}
	defer logf.Close()
	r := in.m.Resources
	c, err := in.srv.sb.Start(ctx, in.id, sandbox.Limits{
		Memory: r.Memory, CPU: r.CPU, CPUTime: r.CPUTime, Processes: r.Processes, Storage: r.Storage,
	}, guest, logf)
	// Only the container may hold the guest end: its death must be EOF here.
	guest.Close()
	if err != nil {
		host.Close()
		return fmt.Errorf("starting sandbox: %w", err)
	}
	in.c = c
	go in.monitor()
	in.conn = wire.NewConn(host)
	in.conn.MaxFrame = int(max(r.Output, r.Storage, r.Fetch)) + 1<<20
	go func() { <-c.Exited(); host.Close() }()

	ents, body := proto.PackFiles(in.files)
	init := proto.Init{Version: proto.HostAPIVersion, Name: in.m.Name, Entry: in.m.Entry, Function: in.m.Function, Steps: r.Steps, Files: ents}
	if err := in.conn.Send(proto.HInit, init, body); err != nil {
		return in.startFailure(err)
	}
	type res struct {
		f   *wire.Frame
		err error
	}
	ch := make(chan res, 1)
	go func() { f, err := in.conn.Read(); ch <- res{f, err} }()
	select {
	case rr := <-ch:
		if rr.err != nil {
			return in.startFailure(rr.err)
		}
		if rr.f.Type != proto.HReady {
			return fmt.Errorf("runner sent frame type %d before ready", rr.f.Type)
		}
		var ready proto.Ready
		if err := rr.f.Unmarshal(&ready); err != nil {
			return err
		}
		if ready.Error != nil {
			return &loadError{ready.Error}
		}
	case <-time.After(15 * time.Second):
		return fmt.Errorf("function did not load within 15s")
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// loadError is an error in the function's code found while loading it.
type loadError struct{ fe *proto.FuncError }

func (e *loadError) Error() string { return e.fe.Error() }

func (in *Instance) startFailure(err error) error {
	select {
	case <-in.c.Exited():
		return fmt.Errorf("sandbox ended during start-up (%s): %s", in.c.Status(), in.exitReason())
	case <-time.After(2 * time.Second):
		return err
	}
}

// run serves the host API until the container ends, then tears down.
func (in *Instance) run() {
	lifetime := time.NewTimer(time.Until(in.created.Add(in.m.Resources.Lifetime)))
	defer lifetime.Stop()
	go func() {
		select {
		case <-lifetime.C:
			in.kill("lifetime limit reached (" + in.m.Resources.Lifetime.String() + ")")
		case <-in.c.Exited():
		}
	}()
	for {
		f, err := in.conn.Read()
		if err != nil {
			break
		}
		switch f.Type {
		case proto.HCall:
			var call proto.Call
			if err := f.Unmarshal(&call); err != nil {
				in.kill("host API protocol violation: " + err.Error())
				continue
			}
			in.dispatch(call, f.Body)
		case proto.HDone:
			var d proto.Done
			if err := f.Unmarshal(&d); err != nil {
				in.kill("host API protocol violation: " + err.Error())
				continue
			}
			in.finish(d, f.Body)
		default:
			in.kill(fmt.Sprintf("host API protocol violation: frame type %d", f.Type))
		}
	}
	// The channel closed: the runner died or was killed.
	in.c.Kill()
	<-in.c.Exited()
	in.teardown(in.exitReason())
}

// monitor enforces the CPU-time and process limits from the cgroups' own
// accounting, from the moment the container starts.
func (in *Instance) monitor() {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-in.c.Exited():
			return
		case <-t.C:
			st := in.c.Stats()
			if st.CPU >= in.m.Resources.CPUTime {
				in.kill(fmt.Sprintf("cpu time limit exceeded (%s)", in.m.Resources.CPUTime))
				return
			}
			if st.PidsRefused > 0 {
				in.kill(fmt.Sprintf("process limit exceeded (%d processes/threads)", in.m.Resources.Processes))
				return
			}
		}
	}
}

// kill stops the instance, recording why (the first reason wins).
func (in *Instance) kill(reason string) {
	in.mu.Lock()
	if in.killReason == "" {
		in.killReason = reason
	}
	in.mu.Unlock()
	in.c.Kill()
}

// exitReason explains why the container ended.
func (in *Instance) exitReason() string {
	in.mu.Lock()
	reason := in.killReason
	in.mu.Unlock()
	if reason != "" {
		return reason
	}
	st := in.c.Stats()
	switch {
	case st.OOMKills > 0:
		return fmt.Sprintf("memory limit exceeded (%s)", units.FormatSize(in.m.Resources.Memory))
	case st.PidsRefused > 0:
		return fmt.Sprintf("process limit exceeded (%d processes/threads)", in.m.Resources.Processes)
	case in.c.Signal() == syscall.SIGXCPU || (in.c.Signal() == syscall.SIGKILL && st.CPU >= in.m.Resources.CPUTime):
		return fmt.Sprintf("cpu time limit exceeded (%s)", in.m.Resources.CPUTime)
	}
	return "function runner ended unexpectedly (" + in.c.Status() + ")"
}

// teardown ends every session, removes the container and releases the
// instance's resources. Session output stays readable until the retention
// period ends.
func (in *Instance) teardown(reason string) {
	if err := in.c.Remove(); err != nil {
		in.log.Warn("removing container", "instance", in.id, "err", err)
	}
	in.mu.Lock()
	in.endReason = reason
	in.endedAt = time.Now()
	for _, s := range in.sessions {
		if !s.done {
			s.done, s.doneAt = true, time.Now()
			exit := proto.Exit{Status: proto.StatusKilled, Reason: reason}
			appendExit(s, exit)
		}
	}
	ts, st := in.torSession, in.st
	in.mu.Unlock()
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
	select {
	case <-in.srv.closed:
		if in.srv.restore && reason == "bentod is shutting down" {
			// Kept for the next bentod: the record and the stored data.
			_ = os.Remove(filepath.Join(in.dir, "runner.log"))
			close(in.ended)
			in.srv.release(in)
			in.log.Info("instance stopped; it will be restored", "instance", in.id)
			return
		}
	default:
	}
	_ = os.RemoveAll(in.storageDir())
	_ = os.Remove(filepath.Join(in.dir, recordFile))
	_ = os.Remove(filepath.Join(in.dir, "runner.log"))
	close(in.ended)
	in.srv.release(in)
	in.log.Info("instance ended", "instance", in.id, "reason", reason)
}

// appendExit ends a session's log. The offset is filled in when the
// record is streamed.
func appendExit(s *session, exit proto.Exit) {
	b, _ := json.Marshal(exit)
	_, _ = s.out.append(recExit, b)
}

// isEnded reports whether the container is gone.
func (in *Instance) isEnded() bool {
	select {
	case <-in.ended:
		return true
	default:
		return false
	}
}

// newSession starts an invocation.
func (in *Instance) newSession(args json.RawMessage) (*session, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.isEnded() {
		return nil, &proto.Error{Code: proto.CodeGone, Message: "instance has ended: " + in.endReason}
	}
	if in.exiting {
		return nil, &proto.Error{Code: proto.CodeGone, Message: "instance is ending: the function called exit()"}
	}
	if in.m.Mode == manifest.ModeOneShot && in.invoked {
		return nil, &proto.Error{Code: proto.CodeGone, Message: "one-shot instance was already invoked; attach to its session or deploy again"}
	}
	if len(in.byInv) >= maxActiveSessions {
		return nil, &proto.Error{Code: proto.CodeBusy, Message: fmt.Sprintf("%d invocations are running on this instance; retry later", len(in.byInv))}
	}
	in.pruneSessionsLocked(time.Now())
	in.invoked = true
	in.nextInv++
	s := &session{id: newID("s-", 16), inv: in.nextInv, input: make(chan []byte, 64), eof: make(chan struct{})}
	out, err := newOutLog(filepath.Join(in.dir, "sessions", s.id))
	if err != nil {
		return nil, err
	}
	s.out = out
	in.sessions[s.id] = s
	in.byInv[s.inv] = s
	if len(args) == 0 {
		args = json.RawMessage("[]")
	}
	if err := in.conn.Send(proto.HInvoke, proto.HostInvoke{Inv: s.inv, Args: args}, nil); err != nil {
		return nil, &proto.Error{Code: proto.CodeGone, Message: "instance is ending"}
	}
	return s, nil
}

// pruneSessionsLocked forgets finished sessions whose output retention is
// over, and the oldest finished ones beyond maxRetainedSessions.
func (in *Instance) pruneSessionsLocked(now time.Time) {
	var done []*session
	for _, s := range in.sessions {
		if s.done {
			done = append(done, s)
		}
	}
	sort.Slice(done, func(i, j int) bool { return done[i].doneAt.Before(done[j].doneAt) })
	for i, s := range done {
		if now.Sub(s.doneAt) < OutputRetention && len(done)-i <= maxRetainedSessions {
			break
		}
		s.out.close()
		_ = os.Remove(filepath.Join(in.dir, "sessions", s.id))
		delete(in.sessions, s.id)
	}
}

// finish records an invocation's result.
func (in *Instance) finish(d proto.Done, body []byte) {
	in.mu.Lock()
	s := in.byInv[d.Inv]
	oneshot := in.m.Mode == manifest.ModeOneShot
	in.mu.Unlock()
	if s == nil {
		in.kill("host API protocol violation: done for unknown invocation")
		return
	}
	if d.Error == nil && !d.None && len(body) > 0 {
		if !in.output(s, body) {
			return
		}
	}
	exit := proto.Exit{Status: proto.StatusOK}
	if d.Error != nil {
		exit = proto.Exit{Status: proto.StatusError, Error: d.Error}
	}
	in.mu.Lock()
	s.done, s.doneAt = true, time.Now()
	delete(in.byInv, d.Inv)
	exiting := in.exiting && len(in.byInv) == 0
	in.mu.Unlock()
	appendExit(s, exit)
	switch {
	case oneshot:
		in.kill("function returned")
	case exiting:
		in.kill("function called exit()")
	}
}

// output appends data to a session, enforcing the output limit. It returns
// false when the limit stopped the instance.
func (in *Instance) output(s *session, data []byte) bool {
	in.mu.Lock()
	over := in.outputUsed+int64(len(data)) > in.m.Resources.Output
	if !over {
		in.outputUsed += int64(len(data))
	}
	in.mu.Unlock()
	if over {
		in.kill(fmt.Sprintf("output limit exceeded (%s)", units.FormatSize(in.m.Resources.Output)))
		return false
	}
	if _, err := s.out.append(recData, data); err != nil {
		in.log.Warn("writing output", "instance", in.id, "err", err)
		return false
	}
	return true
}

// apiFor maps a host-call name onto the policy's API item.
func apiFor(name string) string {
	switch {
	case strings.HasPrefix(name, "storage."):
		return policy.APIStorage
	case strings.HasPrefix(name, "bento."):
		return policy.APIBento
	case name == "tor.event":
		return policy.APITorControl
	case strings.HasPrefix(name, "tor.") && name != "tor.fetch" && name != "tor.control":
		return policy.APITorStream
	}
	return name
}

// dispatch checks a host call against the manifest and the policy, then
// carries it out. Calls that may block run on their own goroutine.
func (in *Instance) dispatch(call proto.Call, body []byte) {
	api := apiFor(call.Name)
	reply := func(err error, result any, bulk []byte) {
		rep := proto.Reply{ID: call.ID}
		if err != nil {
			rep.Error = err.Error()
		} else if result != nil {
			rep.Result, _ = json.Marshal(result)
		}
		_ = in.conn.Send(proto.HReply, rep, bulk)
	}
	if !policy.KnownAPI(api) {
		reply(fmt.Errorf("unknown host call %q", call.Name), nil, nil)
		return
	}
	if !in.m.Has(api) {
		in.log.Info("host call denied", "instance", in.id, "call", call.Name, "why", "not in manifest")
		reply(fmt.Errorf("permission denied: %s() needs %q in the manifest's apis", call.Name, api), nil, nil)
		return
	}
	if !in.srv.policy().APIs[api] {
		reply(fmt.Errorf("permission denied: this node's policy does not allow %q", api), nil, nil)
		return
	}
	in.mu.Lock()
	s := in.byInv[call.Inv]
	in.mu.Unlock()
	needSession := call.Name == "send" || call.Name == "recv"
	if needSession && s == nil {
		reply(fmt.Errorf("%s() can only be called during an invocation", call.Name), nil, nil)
		return
	}
	h := hostCall{in: in, s: s, args: call.Args, body: body}
	switch call.Name {
	case "send":
		if in.output(s, body) {
			reply(nil, nil, nil)
		}
	case "log":
		var a struct {
			Msg string `json:"msg"`
		}
		_ = json.Unmarshal(call.Args, &a)
		in.appendLog(a.Msg)
		reply(nil, nil, nil)
	case "time":
		reply(nil, map[string]float64{"now": float64(time.Now().UnixNano()) / 1e9}, nil)
	case "random":
		var a struct {
			N int `json:"n"`
		}
		_ = json.Unmarshal(call.Args, &a)
		if a.N < 0 || a.N > 1<<20 {
			reply(fmt.Errorf("random: n must be 0-1048576"), nil, nil)
			return
		}
		b := make([]byte, a.N)
		_, _ = rand.Read(b)
		reply(nil, nil, b)
	case "exit":
		// The instance ends when the calling invocation finishes; no new
		// invocation is accepted meanwhile.
		in.mu.Lock()
		in.exiting = true
		in.mu.Unlock()
		reply(nil, nil, nil)
	case "storage.put", "storage.get", "storage.delete", "storage.keys":
		res, bulk, err := h.storage(call.Name)
		if err != errStopped {
			reply(err, res, bulk)
		}
	case "recv", "sleep", "http.fetch", "tor.fetch", "tor.control", "tor.event", "bento.deploy", "bento.invoke", "bento.shutdown",
		"tor.listen", "tor.accept", "tor.dial", "tor.read", "tor.write", "tor.close", "tor.splice":
		go func() {
			res, bulk, err := h.blocking(call.Name)
			if err == errStopped {
				return
			}
			reply(err, res, bulk)
		}()
	default:
		reply(fmt.Errorf("unknown host call %q", call.Name), nil, nil)
	}
}

// appendLog keeps the last lines a function logged, bounded.
func (in *Instance) appendLog(msg string) {
	if len(msg) > 4096 {
		msg = msg[:4096] + "…"
	}
	in.log.Debug("function log", "instance", in.id, "len", len(msg))
	f, err := os.OpenFile(filepath.Join(in.dir, "function.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > 1<<20 {
		return
	}
	fmt.Fprintf(f, "%s %s\n", time.Now().UTC().Format(time.RFC3339), msg)
}

// storage implements the key/value host calls on files in the instance's
// directory, counting bytes against the storage limit.
func (h hostCall) storage(name string) (any, []byte, error) {
	in := h.in
	var a struct {
		Key string `json:"key"`
	}
	_ = json.Unmarshal(h.args, &a)
	if name != "storage.keys" && (a.Key == "" || len(a.Key) > maxKey) {
		return nil, nil, fmt.Errorf("storage: key must be 1-%d bytes", maxKey)
	}
	path := filepath.Join(in.storageDir(), hex.EncodeToString([]byte(a.Key)))
	switch name {
	case "storage.put":
		in.mu.Lock()
		old := int64(0)
		if st, err := os.Stat(path); err == nil {
			old = st.Size()
		}
		need := in.storageUsed - old + int64(len(h.body)) + int64(len(a.Key))
		if need > in.m.Resources.Storage {
			in.mu.Unlock()
			in.kill(fmt.Sprintf("storage limit exceeded (%s)", units.FormatSize(in.m.Resources.Storage)))
			return nil, nil, errStopped
		}
		err := os.WriteFile(path, h.body, 0o600)
		if err == nil {
			if old == 0 {
				in.storageUsed += int64(len(a.Key))
			}
			in.storageUsed += int64(len(h.body)) - old
		}
		in.mu.Unlock()
		return nil, nil, err
	case "storage.get":
		b, err := os.ReadFile(path)
		if os.IsNotExist(err) {
			return map[string]bool{"found": false}, nil, nil
		}
		return map[string]bool{"found": true}, b, err
	case "storage.delete":
		in.mu.Lock()
		defer in.mu.Unlock()
		if st, err := os.Stat(path); err == nil {
			in.storageUsed -= st.Size() + int64(len(a.Key))
			return nil, nil, os.Remove(path)
		}
		return nil, nil, nil
	default: // keys
		ents, err := os.ReadDir(in.storageDir())
		if err != nil {
			return nil, nil, err
		}
		keys := []string{}
		for _, e := range ents {
			if k, err := hex.DecodeString(e.Name()); err == nil {
				keys = append(keys, string(k))
			}
		}
		sort.Strings(keys)
		return map[string][]string{"keys": keys}, nil, nil
	}
}
