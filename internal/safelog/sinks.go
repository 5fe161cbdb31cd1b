package safelog

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"log/syslog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
)

// Sink is where one bentorc Log line sends messages, with tor's meaning:
// "Log minSeverity[-maxSeverity] stderr|stdout|syslog|journald|file PATH".
// Messages from Min up to Max (both included) go to the destination.
type Sink struct {
	Min, Max string // tor severities: debug, info, notice, warn, err
	Dest     string // stderr, stdout, syslog, journald or file
	Path     string // for file: an absolute path
}

// String renders the sink as a bentorc Log value.
func (s Sink) String() string {
	sev := s.Min
	if s.Max != "err" {
		sev += "-" + s.Max
	}
	if s.Dest == "file" {
		return sev + " file " + s.Path
	}
	return sev + " " + s.Dest
}

var severities = []string{"debug", "info", "notice", "warn", "err"}

func validSeverity(s string) bool {
	for _, v := range severities {
		if v == s {
			return true
		}
	}
	return false
}

// ParseSink parses the value of a bentorc Log line. A bare severity
// ("Log notice") means stderr, as bentod's earlier releases read it.
func ParseSink(v string) (Sink, error) {
	f := strings.Fields(v)
	if len(f) == 0 {
		return Sink{}, fmt.Errorf("a severity and a destination are needed, e.g. \"Log notice stderr\" or \"Log info file /var/log/bento/bentod.log\"")
	}
	sev := strings.ToLower(f[0])
	lo, hi, ranged := strings.Cut(sev, "-")
	if !ranged {
		hi = "err"
	}
	if !validSeverity(lo) || !validSeverity(hi) {
		return Sink{}, fmt.Errorf("%q: the severity is one of debug, info, notice, warn, err, or a range such as info-warn", f[0])
	}
	if ParseLevel(lo) > ParseLevel(hi) {
		return Sink{}, fmt.Errorf("%q: the range's first severity is above its last (write the less severe first, e.g. info-warn)", f[0])
	}
	s := Sink{Min: lo, Max: hi, Dest: "stderr"}
	if len(f) == 1 {
		return s, nil
	}
	s.Dest = strings.ToLower(f[1])
	switch s.Dest {
	case "stderr", "stdout", "syslog", "journald":
		if len(f) > 2 {
			return Sink{}, fmt.Errorf("unexpected %q after the destination", strings.Join(f[2:], " "))
		}
	case "file":
		if len(f) != 3 {
			return Sink{}, fmt.Errorf("\"file\" takes one absolute path (paths with spaces are not supported)")
		}
		if !filepath.IsAbs(f[2]) {
			return Sink{}, fmt.Errorf("the file must be an absolute path, got %q", f[2])
		}
		s.Path = filepath.Clean(f[2])
	default:
		return Sink{}, fmt.Errorf("destination %q is not stderr, stdout, syslog, journald or file PATH", f[1])
	}
	return s, nil
}

// Router is a slog.Handler that sends each record to every sink whose
// severity range holds it. Its sinks are replaced whole by Apply (on
// SIGHUP), which also reopens log files, so a rotated file is let go.
type Router struct {
	cur atomic.Pointer[sinkSet]
	mu  sync.Mutex // serialises Apply
}

type sinkSet struct {
	min   slog.Level
	outs  []*output
	close []io.Closer
}

// output is one sink's handler with the levels it takes.
type output struct {
	min, max slog.Level
	h        slog.Handler // for syslog: nil, see sys
	sys      map[slog.Level]slog.Handler
}

// NewRouter returns a Router writing to stderr at notice until Apply.
func NewRouter() *Router {
	r := &Router{}
	set, _ := build([]Sink{{Min: "notice", Max: "err", Dest: "stderr"}})
	r.cur.Store(set)
	return r
}

// Apply opens the sinks and makes them current; the previous ones are
// closed. On error nothing changes: the sinks in use stay.
func (r *Router) Apply(sinks []Sink) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	set, err := build(sinks)
	if err != nil {
		return err
	}
	old := r.cur.Swap(set)
	for _, c := range old.close {
		c.Close()
	}
	return nil
}

// Logger returns a logger writing through r.
func (r *Router) Logger() *slog.Logger { return slog.New(&routed{r: r}) }

// build opens every sink. stderr and stdout are the process's own.
func build(sinks []Sink) (*sinkSet, error) {
	set := &sinkSet{min: slog.LevelError + 1}
	fail := func(err error) (*sinkSet, error) {
		for _, c := range set.close {
			c.Close()
		}
		return nil, err
	}
	for _, s := range sinks {
		o := &output{min: ParseLevel(s.Min), max: ParseLevel(s.Max)}
		switch s.Dest {
		case "stderr":
			o.h = textHandler(os.Stderr)
		case "stdout":
			o.h = textHandler(os.Stdout)
		case "journald":
			o.h = textHandler(&journald{w: os.Stderr})
		case "file":
			if err := os.MkdirAll(filepath.Dir(s.Path), 0o750); err != nil {
				return fail(fmt.Errorf("log %s: %w", s, err))
			}
			f, err := os.OpenFile(s.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
			if err != nil {
				return fail(fmt.Errorf("log %s: %w", s, err))
			}
			set.close = append(set.close, f)
			o.h = textHandler(f)
		case "syslog":
			w, err := dialSyslog()
			if err != nil {
				return fail(fmt.Errorf("log %s: no syslog to write to (%v); is a syslog daemon or journald running?", s, err))
			}
			set.close = append(set.close, w)
			o.sys = map[slog.Level]slog.Handler{
				slog.LevelError: syslogHandler(w.Err),
				slog.LevelWarn:  syslogHandler(w.Warning),
				LevelNotice:     syslogHandler(w.Notice),
				slog.LevelInfo:  syslogHandler(w.Info),
				slog.LevelDebug: syslogHandler(w.Debug),
			}
		default:
			return fail(fmt.Errorf("log %s: unknown destination", s))
		}
		set.outs = append(set.outs, o)
		set.min = min(set.min, o.min)
	}
	return set, nil
}

// syslogSocket is the datagram socket syslog is reached on ("": the
// system's, /dev/log and its usual places); tests set their own.
var syslogSocket = ""

func dialSyslog() (*syslog.Writer, error) {
	if syslogSocket != "" {
		return syslog.Dial("unixgram", syslogSocket, syslog.LOG_DAEMON|syslog.LOG_NOTICE, "bentod")
	}
	return syslog.New(syslog.LOG_DAEMON|syslog.LOG_NOTICE, "bentod")
}

// severity maps any slog level onto one of tor's five.
func severity(l slog.Level) slog.Level {
	switch {
	case l >= slog.LevelError:
		return slog.LevelError
	case l >= slog.LevelWarn:
		return slog.LevelWarn
	case l >= LevelNotice:
		return LevelNotice
	case l >= slog.LevelInfo:
		return slog.LevelInfo
	}
	return slog.LevelDebug
}

func textHandler(w io.Writer) slog.Handler {
	return slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug, ReplaceAttr: torLevels})
}

// syslogHandler writes each record, without time or level (syslog keeps
// both), through one of syslog.Writer's severity methods.
func syslogHandler(write func(string) error) slog.Handler {
	return slog.NewTextHandler(lineFunc(write), &slog.HandlerOptions{Level: slog.LevelDebug,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey) {
				return slog.Attr{}
			}
			return a
		}})
}

type lineFunc func(string) error

func (f lineFunc) Write(p []byte) (int, error) {
	if err := f(string(bytes.TrimRight(p, "\n"))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// journald writes lines with sd-daemon(3)'s "<N>" priority prefixes, which
// journald reads from a service's stderr; the time is journald's own.
type journald struct {
	w io.Writer
}

func (j *journald) Write(p []byte) (int, error) {
	// The text handler puts level=... right after time=...; the prefix
	// is taken from it.
	prio := "<5>"
	switch {
	case bytes.Contains(p, []byte(" level=err ")):
		prio = "<3>"
	case bytes.Contains(p, []byte(" level=warn ")):
		prio = "<4>"
	case bytes.Contains(p, []byte(" level=info ")):
		prio = "<6>"
	case bytes.Contains(p, []byte(" level=debug ")):
		prio = "<7>"
	}
	if _, err := j.w.Write(append([]byte(prio), p...)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// routed is a Router's handler, with the attributes and groups a
// logger's With and WithGroup added; they are applied to whichever sinks
// are current when a record is written.
type routed struct {
	r   *Router
	ops []func(slog.Handler) slog.Handler
	// cache: the current sinks with ops applied.
	cache atomic.Pointer[routedCache]
}

type routedCache struct {
	set  *sinkSet
	outs [][]slog.Handler // per output: its handler, or its syslog handlers by severity
}

func (h *routed) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.r.cur.Load().min
}

func (h *routed) handlers() *routedCache {
	set := h.r.cur.Load()
	if c := h.cache.Load(); c != nil && c.set == set {
		return c
	}
	c := &routedCache{set: set}
	apply := func(x slog.Handler) slog.Handler {
		for _, op := range h.ops {
			x = op(x)
		}
		return x
	}
	for _, o := range set.outs {
		if o.sys != nil {
			hs := make([]slog.Handler, 5)
			for i, lvl := range []slog.Level{slog.LevelDebug, slog.LevelInfo, LevelNotice, slog.LevelWarn, slog.LevelError} {
				hs[i] = apply(o.sys[lvl])
			}
			c.outs = append(c.outs, hs)
			continue
		}
		c.outs = append(c.outs, []slog.Handler{apply(o.h)})
	}
	h.cache.Store(c)
	return c
}

func (h *routed) Handle(ctx context.Context, rec slog.Record) error {
	c := h.handlers()
	sev := severity(rec.Level)
	var first error
	for i, o := range c.set.outs {
		if sev < o.min || sev > o.max {
			continue
		}
		hs := c.outs[i]
		x := hs[0]
		if o.sys != nil {
			x = hs[sysIndex(sev)]
		}
		if err := x.Handle(ctx, rec.Clone()); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func sysIndex(l slog.Level) int {
	switch l {
	case slog.LevelDebug:
		return 0
	case slog.LevelInfo:
		return 1
	case LevelNotice:
		return 2
	case slog.LevelWarn:
		return 3
	}
	return 4
}

func (h *routed) WithAttrs(as []slog.Attr) slog.Handler {
	return h.with(func(x slog.Handler) slog.Handler { return x.WithAttrs(as) })
}

func (h *routed) WithGroup(name string) slog.Handler {
	return h.with(func(x slog.Handler) slog.Handler { return x.WithGroup(name) })
}

func (h *routed) with(op func(slog.Handler) slog.Handler) slog.Handler {
	ops := append(append([]func(slog.Handler) slog.Handler(nil), h.ops...), op)
	return &routed{r: h.r, ops: ops}
}
