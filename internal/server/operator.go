package server

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/torbento/bento/internal/metrics"
	"github.com/torbento/bento/internal/netlimit"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/safelog"
)

// This file is the operator's side of the server: what bentoctl lists and
// does through the control socket, and what MetricsPort exports.

// InstanceInfo is what the operator sees of one instance. It holds no
// token and nothing the function stored or sent.
type InstanceInfo struct {
	ID             string        `json:"id"`
	Function       string        `json:"function"`
	Client         string        `json:"client"` // scrubbed under SafeLogging; "tor" for clients through Tor
	Created        time.Time     `json:"created"`
	EndsAt         time.Time     `json:"ends_at"` // its lifetime's end
	State          string        `json:"state"`   // running, starting, ending, ended
	EndReason      string        `json:"end_reason,omitempty"`
	Depth          int           `json:"depth"` // composition depth (0: deployed by a client)
	Sessions       int           `json:"sessions"`
	MemoryReserved int64         `json:"memory_reserved_bytes"`
	CPUReserved    float64       `json:"cpu_reserved_cores"`
	MemoryUsed     int64         `json:"memory_used_bytes"`
	CPUUsed        time.Duration `json:"cpu_used_ns"`
	StorageUsed    int64         `json:"storage_used_bytes"`
	OutputHeld     int64         `json:"output_held_bytes"`
	Restarts       int           `json:"restarts"`
}

// List returns the instances bentod holds, oldest first.
func (s *Server) List() []InstanceInfo {
	s.mu.Lock()
	all := make([]*Instance, 0, len(s.instances))
	for _, in := range s.instances {
		all = append(all, in)
	}
	s.mu.Unlock()
	out := make([]InstanceInfo, 0, len(all))
	for _, in := range all {
		out = append(out, in.info())
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

func (in *Instance) info() InstanceInfo {
	i := InstanceInfo{ID: in.id, Function: in.mf().Name, Created: in.created, EndsAt: in.created.Add(in.mf().Resources.Lifetime), Depth: in.depth}
	i.Client = "tor"
	if in.owner != "" {
		i.Client = safelog.Addr(in.owner).LogValue().String()
	}
	if in.adm != nil {
		// An update resizes the admission under the server's lock.
		in.srv.mu.Lock()
		i.MemoryReserved, i.CPUReserved = in.adm.memory, float64(in.adm.milli)/1000
		in.srv.mu.Unlock()
	}
	in.mu.Lock()
	if in.storeOpen && in.store != nil {
		i.StorageUsed = in.store.Charged()
	}
	rt := in.rt
	i.Sessions = len(in.byInv)
	i.OutputHeld = in.outputHeld
	i.Restarts = len(in.restarts)
	i.EndReason = in.endReason
	switch {
	case in.isEnded():
		i.State = "ended"
	case in.endReason != "":
		i.State = "ending"
	case rt == nil:
		i.State = "starting"
	default:
		i.State = "running"
	}
	in.mu.Unlock()
	if rt != nil {
		st := rt.c.Stats()
		i.MemoryUsed, i.CPUUsed = st.Memory, st.CPU
	}
	return i
}

// EndInstance ends an instance for the operator, with a reason its
// clients are told. Its stored data goes with it, as with a shutdown.
func (s *Server) EndInstance(id, reason string) error {
	reason = strings.TrimSpace(reason)
	if reason == "" {
		return fmt.Errorf("give a reason: the instance's clients are told it")
	}
	if len(reason) > 200 || strings.ContainsAny(reason, "\n\r") {
		return fmt.Errorf("the reason is one line of at most 200 bytes")
	}
	s.mu.Lock()
	in := s.instances[id]
	s.mu.Unlock()
	if in == nil {
		return fmt.Errorf("no instance %q (bentoctl ls lists them)", id)
	}
	if in.isEnded() {
		return fmt.Errorf("instance %s has already ended", id)
	}
	in.end("ended by the box's operator: " + reason)
	safelog.Notice(s.log, "instance ended by the operator", "instance", id, "function", logName(in.mf()))
	select {
	case <-in.ended:
		return nil
	case <-time.After(endWait):
		return fmt.Errorf("instance %s is ending, but its container has not gone after %s: bentoctl ls shows when it has", id, endWait)
	}
}

// endWait bounds how long EndInstance waits for the container to go.
const endWait = 20 * time.Second

// SetDraining refuses new deploys (on) or takes them again (off); running
// instances go on either way.
func (s *Server) SetDraining(on bool) {
	if s.draining.Swap(on) != on {
		if on {
			safelog.Notice(s.log, "draining: new functions are refused; running ones go on")
		} else {
			safelog.Notice(s.log, "no longer draining: new functions are taken")
		}
	}
}

// Draining reports whether deploys are refused by SetDraining.
func (s *Server) Draining() bool { return s.draining.Load() }

var errDraining = &proto.Error{Code: proto.CodeRefused, Message: "this box's operator is draining it and takes no new functions for now: choose another box (bento boxes)"}

// serverMetrics are the counters the server keeps for MetricsPort.
type serverMetrics struct {
	deploys   metrics.CounterVec // by result: ok, or the refusal's code
	hostCalls metrics.CounterVec // by API
	ended     metrics.CounterVec // instances ended, by cause
	deployDur *metrics.Histogram
}

func newServerMetrics() *serverMetrics {
	return &serverMetrics{deployDur: metrics.NewHistogram(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)}
}

// deployed counts a deploy's result and how long it took.
func (m *serverMetrics) deployed(start time.Time, perr *proto.Error) {
	m.deployDur.Observe(time.Since(start).Seconds())
	if perr == nil {
		m.deploys.With("ok").Inc()
		return
	}
	m.deploys.With(perr.Code).Inc()
}

// Metrics returns the registry MetricsPort serves: instances, refusals by
// reason, memory and CPU in use and reserved, host calls by kind, bytes in
// and out, and how long deploys take.
func (s *Server) Metrics() *metrics.Registry {
	r := &metrics.Registry{}
	m := s.met
	r.Gauge("bento_instances", "Instances running now, and the most the policy allows (MaxInstances).", []string{"kind"}, func() []metrics.Sample {
		return []metrics.Sample{{Labels: []string{"running"}, Value: float64(s.Instances())}, {Labels: []string{"max"}, Value: float64(s.policy().Aggregate.Instances)}}
	})
	r.CounterVec("bento_deploys_total", "Deploys by result: ok, or the refusal's code (refused: over the policy or the box is ending; busy: a ceiling was reached; too_large, bad_request).", "result", &m.deploys,
		"ok", proto.CodeRefused, proto.CodeBusy, proto.CodeTooLarge, proto.CodeBadRequest)
	r.Histogram("bento_deploy_duration_seconds", "Time from a deploy's request to its answer, in seconds.", m.deployDur)
	r.CounterFunc("bento_connections_refused_total", "Connections refused by the listeners' limits, by listener and reason.", []string{"listener", "reason"}, func() []metrics.Sample {
		var out []metrics.Sample
		for _, l := range s.Status().Listeners {
			for _, x := range []struct {
				why string
				n   int64
			}{{"total", l.RefusedTotal}, {"per_address", l.RefusedPerAddr}, {"rate", l.RefusedRate}, {"evicted", l.Evicted}} {
				out = append(out, metrics.Sample{Labels: []string{l.Name, x.why}, Value: float64(x.n)})
			}
		}
		return out
	})
	r.Gauge("bento_connections", "Connections open now, by listener.", []string{"listener"}, func() []metrics.Sample {
		var out []metrics.Sample
		for _, l := range s.Status().Listeners {
			out = append(out, metrics.Sample{Labels: []string{l.Name}, Value: float64(l.Open)})
		}
		return out
	})
	r.CounterFunc("bento_bytes_total", "Bytes read from and written to clients, by listener and direction.", []string{"listener", "direction"}, func() []metrics.Sample {
		var out []metrics.Sample
		for _, l := range s.Status().Listeners {
			out = append(out, metrics.Sample{Labels: []string{l.Name, "in"}, Value: float64(l.BytesIn)},
				metrics.Sample{Labels: []string{l.Name, "out"}, Value: float64(l.BytesOut)})
		}
		return out
	})
	r.CounterVec("bento_host_calls_total", "Host calls functions made, by API (those the manifest or policy denied included).", "api", &m.hostCalls)
	r.CounterVec("bento_instances_ended_total", "Instances ended, by cause.", "cause", &m.ended)
	r.Gauge("bento_memory_bytes", "Memory of functions: used now (their containers), reserved by admission, and the limit (TotalMemory).", []string{"kind"}, func() []metrics.Sample {
		used, _ := s.usage()
		s.mu.Lock()
		reserved := s.usedMem
		s.mu.Unlock()
		return []metrics.Sample{{Labels: []string{"used"}, Value: float64(used)}, {Labels: []string{"reserved"}, Value: float64(reserved)},
			{Labels: []string{"limit"}, Value: float64(s.TotalMemory())}}
	})
	r.Gauge("bento_cpu_cores", "CPU of functions, in cores: reserved by admission, and the limit (TotalCPU).", []string{"kind"}, func() []metrics.Sample {
		s.mu.Lock()
		milli := s.usedMilli
		s.mu.Unlock()
		return []metrics.Sample{{Labels: []string{"reserved"}, Value: float64(milli) / 1000}, {Labels: []string{"limit"}, Value: s.policy().Aggregate.CPU}}
	})
	r.Gauge("bento_instances_cpu_seconds", "CPU time the running instances' containers have used so far, in seconds (it falls when one ends).", nil, func() []metrics.Sample {
		_, cpu := s.usage()
		return []metrics.Sample{{Value: cpu.Seconds()}}
	})
	r.Gauge("bento_in_flight_bytes", "Bytes bentod holds for clients and functions now, and its limit (MaxInFlight).", []string{"kind"}, func() []metrics.Sample {
		return []metrics.Sample{{Labels: []string{"used"}, Value: float64(s.inflight.Used())}, {Labels: []string{"limit"}, Value: float64(s.inflight.Limit())}}
	})
	r.Gauge("bento_draining", "1 while the operator drains the box (bentoctl drain).", nil, func() []metrics.Sample {
		v := 0.0
		if s.Draining() {
			v = 1
		}
		return []metrics.Sample{{Value: v}}
	})
	return r
}

// usage sums what the running instances' containers use now.
func (s *Server) usage() (mem int64, cpu time.Duration) {
	s.mu.Lock()
	all := make([]*Instance, 0, len(s.instances))
	for _, in := range s.instances {
		all = append(all, in)
	}
	s.mu.Unlock()
	for _, in := range all {
		in.mu.Lock()
		rt := in.rt
		in.mu.Unlock()
		if rt != nil {
			st := rt.c.Stats()
			mem += st.Memory
			cpu += st.CPU
		}
	}
	return mem, cpu
}

// hostCallLabel is the metrics label of a host call: its API when known
// (a fixed set), so a function cannot grow the metrics with names.
func hostCallLabel(api string) string {
	if policy.KnownAPI(api) {
		return api
	}
	return "unknown"
}

// endCause is the metrics label of an instance's end reason.
func endCause(reason string) string {
	for _, c := range []struct{ prefix, cause string }{
		{"shut down by its owner", "shutdown"}, {"ended by the box's operator", "operator"}, {"lifetime limit", "lifetime"},
		{"function called exit()", "exit"}, {"function returned", "returned"}, {"bentod is shutting down", "bentod_stop"}, {"the box", "box_end"},
	} {
		if strings.HasPrefix(reason, c.prefix) {
			return c.cause
		}
	}
	return "other"
}

// Untrack drops a listener bentod closed (a reload moved it) from Status
// and the metrics.
//
// Its counters are kept: the metrics are counters, which never go down,
// and the listener that takes its place counts on from them.
func (s *Server) Untrack(l *netlimit.Listener) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, x := range s.listeners {
		if x == l {
			s.listeners = append(s.listeners[:i], s.listeners[i+1:]...)
			st := l.Stats()
			if s.retired == nil {
				s.retired = map[string]netlimit.Stats{}
			}
			r := s.retired[l.Name()]
			r.AddCounts(st)
			s.retired[l.Name()] = r
			return
		}
	}
}

// Done is closed once the server is closing.
func (s *Server) Done() <-chan struct{} { return s.closed }
