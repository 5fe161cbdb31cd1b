package policy

import (
	"fmt"
	"github.com/torbento/bento/internal/suggest"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/torbento/bento/internal/units"
)

// Option describes one bentorc keyword: its canonical spelling, what it
// does, whether a running bentod can take a new value on SIGHUP, and how
// to render its effective value (bentod --dump-config, --list-options).
type Option struct {
	Name string
	Type string // how the value is written: Size, Duration, Cores, Boolean, ...
	Help string
	// Live: a reload applies a change. Otherwise a changed value makes
	// the reload fail ("transition not allowed"), as tor does.
	Live bool
	// Reopen: a reload applies a change by reopening a listener.
	Reopen bool
	// Secret: Dump says the option is set but does not print its value
	// (dumps end up in bug reports).
	Secret bool
	// Machine: the default is the machine's own (its memory or cores,
	// less a reserve): a full dump writes it commented out, so that the
	// dump taken to another machine follows that machine.
	Machine bool
	get     func(p *Policy) []string // the values, one per line; nil: unset
}

// Values returns the option's effective values in bentorc syntax, one
// per line it would take.
func (o *Option) Values(p *Policy) []string { return o.get(p) }

func one(s string) []string { return []string{s} }

func str(f func(p *Policy) string) func(p *Policy) []string {
	return func(p *Policy) []string {
		if v := f(p); v != "" {
			return one(v)
		}
		return nil
	}
}

func sizeOpt(f func(p *Policy) int64) func(p *Policy) []string {
	return func(p *Policy) []string { return one(units.FormatSize(f(p))) }
}

func durOpt(f func(p *Policy) time.Duration) func(p *Policy) []string {
	return func(p *Policy) []string { return one(units.FormatDuration(f(p))) }
}

func intOpt(f func(p *Policy) int) func(p *Policy) []string {
	return func(p *Policy) []string { return one(strconv.Itoa(f(p))) }
}

func boolOpt(f func(p *Policy) bool) func(p *Policy) []string {
	return func(p *Policy) []string {
		if f(p) {
			return one("1")
		}
		return one("0")
	}
}

func coresOpt(f func(p *Policy) float64) func(p *Policy) []string {
	return func(p *Policy) []string { return one(strconv.FormatFloat(f(p), 'f', -1, 64)) }
}

// Options lists every bentorc keyword, in the order docs/operators.md
// presents them. A test checks it against the parser one for one.
var Options = []*Option{
	{Name: "ListenAddress", Type: "HOST:PORT", Help: "where clients connect", Reopen: true, get: str(func(p *Policy) string { return p.ListenAddress })},
	{Name: "PolicyAddress", Type: "HOST:PORT|0", Help: "where the public policy is served as JSON over HTTP (0: nowhere)", Reopen: true,
		get: func(p *Policy) []string {
			if p.PolicyAddress == "" {
				return one("0")
			}
			return one(p.PolicyAddress)
		}},
	{Name: "DataDirectory", Type: "PATH", Help: "bentod's state: instances, their code and storage, the box's keys", get: str(func(p *Policy) string { return p.DataDirectory })},
	{Name: "ControlSocket", Type: "PATH|0", Help: "the operator's control socket, for bentoctl (0: none, the default; the package sets /run/bento/control)",
		get: func(p *Policy) []string {
			if p.ControlSocket == "" {
				return one("0")
			}
			return one(p.ControlSocket)
		}},
	{Name: "User", Type: "USERNAME", Help: "started as root, bentod switches to this user once it holds what needs root (listeners, its cgroup, its files), where the kernel lets containers run without root: a delegated cgroup v2 and unprivileged user namespaces; elsewhere it stays root, its capabilities narrowed, and says why (none, the default; the package sets bento); it must exist",
		get: str(func(p *Policy) string { return p.User })},
	{Name: "ControlSocketGroup", Type: "GROUP", Help: "a group whose members may use the control socket besides root and bentod's user (none, the default: nobody else; the package sets bento); it must exist",
		get: str(func(p *Policy) string { return p.ControlSocketGroup })},
	{Name: "MetricsPort", Type: "HOST:PORT|0", Help: "where Prometheus metrics are served over HTTP (0: nowhere, the default)", Reopen: true,
		get: func(p *Policy) []string {
			if p.MetricsPort == "" {
				return one("0")
			}
			return one(p.MetricsPort)
		}},
	{Name: "MetricsPortPolicy", Type: "POLICY,POLICY...", Help: "who may read MetricsPort, as tor's MetricsPortPolicy (accept/reject ADDRESS[/MASK]); none: everyone is refused", Live: true,
		get: func(p *Policy) []string {
			if len(p.MetricsPolicy) == 0 {
				return nil
			}
			return one(strings.Join(p.MetricsPolicy, ", "))
		}},
	{Name: "CompatListenAddress", Type: "HOST:PORT|0", Help: "where clients of the original Bento (its Python client) connect (0: nowhere, the default); needs CompatManifest (docs/compat.md)", Reopen: true,
		get: func(p *Policy) []string {
			if p.CompatListenAddress == "" {
				return one("0")
			}
			return one(p.CompatListenAddress)
		}},
	{Name: "CompatManifest", Type: "PATH", Help: "the manifest (image, resources, apis) code stored through CompatListenAddress runs under; checked against the policy at start and reload", Live: true,
		get: str(func(p *Policy) string { return p.CompatManifest })},
	{Name: "Runtime", Type: "runc|crun|runsc", Help: "the OCI runtime containers run with", get: str(func(p *Policy) string { return p.Runtime })},
	{Name: "RuntimePath", Type: "PATH", Help: "the runtime's binary (default: found in PATH)", get: str(func(p *Policy) string { return p.RuntimePath })},
	{Name: "RunnerPath", Type: "PATH", Help: "bento-runner's binary (default: beside bentod)", get: str(func(p *Policy) string { return p.RunnerPath })},
	{Name: "Nickname", Type: "NAME", Help: "the box's name, shown to clients", get: str(func(p *Policy) string { return p.Nickname })},
	{Name: "Log", Type: "SEVERITY[-SEVERITY] stderr|stdout|syslog|journald|file PATH", Help: "where messages go, as tor's Log (one line per destination)", Live: true,
		get: func(p *Policy) []string {
			var out []string
			for _, s := range p.Logs {
				out = append(out, s.String())
			}
			return out
		}},
	{Name: "SafeLogging", Type: "Boolean", Help: "scrub client addresses from logs", Live: true, get: boolOpt(func(p *Policy) bool { return p.SafeLogging })},
	{Name: "HeartbeatPeriod", Type: "Duration", Help: "log a heartbeat line this often (0: never)", Live: true, get: durOpt(func(p *Policy) time.Duration { return p.HeartbeatPeriod })},
	{Name: "TorControlPort", Type: "HOST:PORT|unix:PATH", Help: "the relay's control port (none: no tor features)", get: str(func(p *Policy) string { return p.TorControlPort })},
	{Name: "TorControlPassword", Type: "PASSWORD", Help: "the control port's password (default: its cookie)", Secret: true, get: str(func(p *Policy) string { return p.TorControlPassword })},
	{Name: "TorCookieFile", Type: "PATH", Help: "the control port's cookie, when not where tor says", get: str(func(p *Policy) string { return p.TorCookieFile })},
	{Name: "TorSocksPort", Type: "HOST:PORT|unix:PATH", Help: "the relay's SocksPort, for functions' Tor traffic", get: str(func(p *Policy) string { return p.TorSocksPort })},
	{Name: "OnionService", Type: "Boolean", Help: "publish bentod as an onion service", get: boolOpt(func(p *Policy) bool { return p.OnionService })},
	{Name: "OnionServicePort", Type: "PORT", Help: "the onion service's virtual port (default: ListenAddress's)",
		get: func(p *Policy) []string {
			if p.OnionServicePort == 0 {
				return nil
			}
			return one(strconv.Itoa(p.OnionServicePort))
		}},
	{Name: "RestoreInstances", Type: "Boolean", Help: "instances survive a restart of bentod", get: boolOpt(func(p *Policy) bool { return p.RestoreInstances })},
	{Name: "AllowAPI", Type: "API,API...|none", Help: "the host calls functions may make", Live: true,
		get: func(p *Policy) []string {
			if a := p.AllowedAPIs(); len(a) > 0 {
				return one(strings.Join(a, ", "))
			}
			return one("none")
		}},
	{Name: "Image", Type: "IMAGE,IMAGE...", Help: "the images functions may run in", Live: true, get: func(p *Policy) []string { return one(strings.Join(p.Images, ", ")) }},
	{Name: "AllowFSProtect", Type: "Boolean", Help: "functions may ask for FS Protect (protect = true): what they leave on disk sealed with a key held only in bentod's memory, unrecoverable after a restart", Live: true,
		get: boolOpt(func(p *Policy) bool { return p.FSProtect })},
	{Name: "DestinationPolicy", Type: "POLICY,POLICY...", Help: "where functions may connect, in tor's exit-policy syntax (none: nowhere)", Live: true,
		get: func(p *Policy) []string {
			if p.Destinations == nil || len(p.Destinations.Items) == 0 {
				return nil
			}
			return one(strings.Join(p.Destinations.Items, ", "))
		}},
	{Name: "MaxMemory", Type: "Size", Help: "memory one function may use", Live: true, get: sizeOpt(func(p *Policy) int64 { return p.Max.Memory })},
	{Name: "MaxCPU", Type: "Cores", Help: "CPU one function may use", Live: true, get: coresOpt(func(p *Policy) float64 { return p.Max.CPU })},
	{Name: "MaxCPUTime", Type: "Duration", Help: "CPU time one function may use in all", Live: true, get: durOpt(func(p *Policy) time.Duration { return p.Max.CPUTime })},
	{Name: "MaxLifetime", Type: "Duration", Help: "how long one function may run", Live: true, get: durOpt(func(p *Policy) time.Duration { return p.Max.Lifetime })},
	{Name: "MaxProcesses", Type: "Number", Help: "processes and threads in one function's container", Live: true, get: intOpt(func(p *Policy) int { return p.Max.Processes })},
	{Name: "MaxStorage", Type: "Size", Help: "storage one function may use", Live: true, get: sizeOpt(func(p *Policy) int64 { return p.Max.Storage })},
	{Name: "MaxOutput", Type: "Size", Help: "output one function may send in all", Live: true, get: sizeOpt(func(p *Policy) int64 { return p.Max.Output })},
	{Name: "MaxUploadSize", Type: "Size", Help: "the largest function upload", Live: true, get: sizeOpt(func(p *Policy) int64 { return p.Max.Upload })},
	{Name: "MaxFetchSize", Type: "Size", Help: "the largest response one fetch may return", Live: true, get: sizeOpt(func(p *Policy) int64 { return p.Max.Fetch })},
	{Name: "MaxSteps", Type: "Number", Help: "Starlark steps per invocation", Live: true, get: func(p *Policy) []string { return one(strconv.FormatUint(p.Max.Steps, 10)) }},
	{Name: "TotalMemory", Type: "Size", Help: "memory all functions may use together (default: the machine's, less ReserveMemory)", Live: true, Machine: true, get: sizeOpt(func(p *Policy) int64 { return p.Aggregate.Memory })},
	{Name: "TotalCPU", Type: "Cores", Help: "CPU all functions may use together (default: the machine's, less ReserveCPU)", Live: true, Machine: true, get: coresOpt(func(p *Policy) float64 { return p.Aggregate.CPU })},
	{Name: "ReserveMemory", Type: "Size", Help: "memory kept for tor and the system", Live: true, get: sizeOpt(func(p *Policy) int64 { return p.Aggregate.ReserveMemory })},
	{Name: "ReserveCPU", Type: "Cores", Help: "CPU kept for tor and the system", Live: true, get: coresOpt(func(p *Policy) float64 { return p.Aggregate.ReserveCPU })},
	{Name: "MaxInstances", Type: "Number", Help: "instances at once", Live: true, get: intOpt(func(p *Policy) int { return p.Aggregate.Instances })},
	{Name: "MaxInstancesPerClient", Type: "Number", Help: "instances one client address may hold (0: a quarter of MaxInstances)", Live: true, get: intOpt(func(p *Policy) int { return p.Aggregate.PerClient })},
	{Name: "MaxConnections", Type: "Number", Help: "client connections at once on ListenAddress", get: intOpt(func(p *Policy) int { return p.Daemon.MaxConnections })},
	{Name: "MaxConnectionsPerAddress", Type: "Number", Help: "client connections at once from one address", get: intOpt(func(p *Policy) int { return p.Daemon.MaxConnectionsPerAddr })},
	{Name: "ConnectRatePerAddress", Type: "Number", Help: "new connections per second from one address", get: func(p *Policy) []string { return one(strconv.FormatFloat(p.Daemon.ConnectRate, 'g', -1, 64)) }},
	{Name: "ConnectBurstPerAddress", Type: "Number", Help: "new connections at once from one address, beyond the rate", get: intOpt(func(p *Policy) int { return p.Daemon.ConnectBurst })},
	{Name: "MaxOnionConnections", Type: "Number", Help: "connections through the onion service at once", get: intOpt(func(p *Policy) int { return p.Daemon.MaxOnionConnections })},
	{Name: "OnionMaxStreams", Type: "Number", Help: "streams one rendezvous circuit may open (tor's MaxStreams)", get: intOpt(func(p *Policy) int { return p.Daemon.OnionMaxStreams })},
	{Name: "HandshakeTimeout", Type: "Duration", Help: "a connection's hello must arrive within this", get: durOpt(func(p *Policy) time.Duration { return p.Daemon.HandshakeTimeout })},
	{Name: "IdleTimeout", Type: "Duration", Help: "an idle connection is closed after this", get: durOpt(func(p *Policy) time.Duration { return p.Daemon.IdleTimeout })},
	{Name: "ConnectionLifetime", Type: "Duration", Help: "requests on one connection are served for this long", get: durOpt(func(p *Policy) time.Duration { return p.Daemon.ConnectionLifetime })},
	{Name: "WriteTimeout", Type: "Duration", Help: "a client that reads nothing for this long is dropped", get: durOpt(func(p *Policy) time.Duration { return p.Daemon.WriteTimeout })},
	{Name: "MaxInFlight", Type: "Size", Help: "bytes of uploads, results and output bentod holds at once", get: sizeOpt(func(p *Policy) int64 { return p.Daemon.MaxInFlight })},
	{Name: "MaxDaemonMemory", Type: "Size", Help: "bentod's own memory ceiling (Go's soft limit)", Live: true, get: sizeOpt(func(p *Policy) int64 { return p.Daemon.MaxMemory })},
	{Name: "Nice", Type: "Number", Help: "bentod's scheduling priority (above 0 yields the CPU to tor)", get: intOpt(func(p *Policy) int { return p.Daemon.Nice })},
	{Name: "FFMeasurementsAllowed", Type: "Boolean", Help: "FlashFlow coordinators may measure the relay", Live: true, get: boolOpt(func(p *Policy) bool { return p.FlashFlow.Allowed })},
	{Name: "FFListenAddress", Type: "HOST:PORT", Help: "where FlashFlow coordinators connect (none: FlashFlow off)", get: str(func(p *Policy) string { return p.FlashFlow.Listen })},
	{Name: "FFEchoAddress", Type: "127.0.0.1:PORT", Help: "the echo endpoint measurers' streams exit to", get: str(func(p *Policy) string { return p.FlashFlow.Echo })},
	{Name: "FFAllowedCoordinators", Type: "FINGERPRINT,FINGERPRINT...", Help: "the coordinators' certificate fingerprints", Live: true,
		get: func(p *Policy) []string {
			if len(p.FlashFlow.Coordinators) == 0 {
				return nil
			}
			return one(strings.Join(p.FlashFlow.Coordinators, ","))
		}},
	{Name: "FFMeasurementPeriod", Type: "Duration", Help: "at most two measurements per coordinator in this window", get: durOpt(func(p *Policy) time.Duration { return p.FlashFlow.Period })},
	{Name: "FFMaxMeasurementDuration", Type: "Duration", Help: "the longest measurement", get: durOpt(func(p *Policy) time.Duration { return p.FlashFlow.MaxDuration })},
	{Name: "BoxEndsAt", Type: "TIME", Help: "when the box ends (UTC)", Live: true,
		get: func(p *Policy) []string {
			if p.Box.EndsAt.IsZero() {
				return nil
			}
			return one(p.Box.EndsAt.UTC().Format(time.RFC3339Nano))
		}},
	{Name: "BoxLifetime", Type: "Duration", Help: "when the box ends, from bentod's first start", Live: true,
		get: func(p *Policy) []string {
			if p.Box.Lifetime == 0 {
				return nil
			}
			return one(units.FormatDuration(p.Box.Lifetime))
		}},
	{Name: "BoxDrainPeriod", Type: "Duration", Help: "no new deploys this long before the end", Live: true, get: durOpt(func(p *Policy) time.Duration { return p.Box.Drain })},
	{Name: "BoxAnnounce", Type: "Boolean", Help: "list the box in the directory", get: boolOpt(func(p *Policy) bool { return p.Box.Announce })},
	{Name: "MaxCompositionDepth", Type: "Number", Help: "functions deploying functions: at most this deep", Live: true, get: intOpt(func(p *Policy) int { return p.Composition.MaxDepth })},
	{Name: "MaxComposedInstances", Type: "Number", Help: "instances one root's functions may hold here", Live: true, get: intOpt(func(p *Policy) int { return p.Composition.MaxInstances })},
	{Name: "MaxCompositionCalls", Type: "Number", Help: "remote calls one root's functions may have in progress", Live: true, get: intOpt(func(p *Policy) int { return p.Composition.MaxCalls })},
}

// LookupOption finds an option by name, in any case.
func LookupOption(name string) *Option {
	for _, o := range Options {
		if strings.EqualFold(o.Name, name) {
			return o
		}
	}
	return nil
}

// Dump renders the policy as bentorc lines: every option when full, else
// only those that differ from the built-in defaults (bentod
// --dump-config full|short, as tor's). Parsing the output gives back the
// same policy, secrets (TorControlPassword) excepted: they are said to be
// set, not shown.
func Dump(p *Policy, full bool) string {
	def := Default()
	def.finish(memTotal())
	var b strings.Builder
	for _, o := range Options {
		vals := o.get(p)
		if !full && equalStrings(vals, o.get(def)) {
			continue
		}
		if o.Secret && len(vals) > 0 {
			fmt.Fprintf(&b, "# %s is set; not shown (a secret)\n", o.Name)
			continue
		}
		if o.Machine && equalStrings(vals, o.get(def)) {
			for _, v := range vals {
				fmt.Fprintf(&b, "# %s %s (this machine's; unset, it follows the machine it runs on)\n", o.Name, v)
			}
			continue
		}
		for _, v := range vals {
			fmt.Fprintf(&b, "%s %s\n", o.Name, v)
		}
	}
	return b.String()
}

// ListOptions renders every option with its type and what it does
// (bentod --list-options).
func ListOptions() string {
	def := Default()
	def.finish(memTotal())
	var b strings.Builder
	for _, o := range Options {
		when := "restart"
		switch {
		case o.Live:
			when = "reload"
		case o.Reopen:
			when = "reload (reopens its listener)"
		}
		fmt.Fprintf(&b, "%s %s\n    %s. Changes take effect on: %s.", o.Name, o.Type, o.Help, when)
		vals := o.get(def)
		switch {
		case o.Secret:
		case o.Machine:
			fmt.Fprintf(&b, " Default here: %s.", strings.Join(vals, "; "))
		case len(vals) == 0:
			fmt.Fprint(&b, " Default: unset.")
		default:
			fmt.Fprintf(&b, " Default: %s.", strings.Join(vals, "; "))
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// Transition lists the options whose change a running bentod cannot
// take, from old to new, in the words of tor's "transition not allowed".
func Transition(old, new *Policy) error {
	var bad []string
	for _, o := range Options {
		if o.Live || o.Reopen {
			continue
		}
		if !equalStrings(o.get(old), o.get(new)) {
			bad = append(bad, o.Name)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	sort.Strings(bad)
	return fmt.Errorf("while bentod is running, changing %s is not allowed (transition not allowed); restart bentod to apply it, or put the old value back", strings.Join(bad, ", "))
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// ParseMetricsPolicy parses a MetricsPortPolicy value: comma-separated
// items "accept|reject ADDRESS[/MASK]" (or "*"), as tor's. The items are
// returned in canonical form.
func ParseMetricsPolicy(v string) ([]string, error) {
	var out []string
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		r, err := parseMetricsItem(item)
		if err != nil {
			return nil, err
		}
		out = append(out, r.String())
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no items (e.g. \"accept 127.0.0.1\")")
	}
	return out, nil
}

type metricsRule struct {
	accept bool
	any    bool
	prefix netip.Prefix
}

func (r metricsRule) String() string {
	act := "reject"
	if r.accept {
		act = "accept"
	}
	switch {
	case r.any:
		return act + " *"
	case r.prefix.IsSingleIP():
		return act + " " + r.prefix.Addr().String()
	}
	return act + " " + r.prefix.String()
}

func parseMetricsItem(item string) (metricsRule, error) {
	f := strings.Fields(strings.ToLower(item))
	if len(f) != 2 || (f[0] != "accept" && f[0] != "reject") {
		return metricsRule{}, fmt.Errorf("%q: want \"accept ADDRESS[/MASK]\" or \"reject ADDRESS[/MASK]\"", item)
	}
	r := metricsRule{accept: f[0] == "accept"}
	if f[1] == "*" {
		r.any = true
		return r, nil
	}
	a := strings.Trim(f[1], "[]")
	if strings.Contains(f[1], "/") {
		p, err := netip.ParsePrefix(strings.Replace(strings.Replace(f[1], "[", "", 1), "]", "", 1))
		if err != nil {
			return r, fmt.Errorf("%q: %q is not an address with a mask (e.g. 10.0.0.0/8)", item, f[1])
		}
		r.prefix = p.Masked()
		return r, nil
	}
	addr, err := netip.ParseAddr(a)
	if err != nil {
		return r, fmt.Errorf("%q: %q is not an IP address or *", item, f[1])
	}
	r.prefix = netip.PrefixFrom(addr, addr.BitLen())
	return r, nil
}

// MetricsAllowed reports whether the metrics policy lets addr read
// MetricsPort: the first item that matches decides; none matching, or no
// policy, refuses (as tor does).
func (p *Policy) MetricsAllowed(addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, item := range p.MetricsPolicy {
		r, err := parseMetricsItem(item)
		if err != nil {
			continue
		}
		if r.any || r.prefix.Contains(addr) {
			return r.accept
		}
	}
	return false
}

// nearestOption returns the option whose name is within two edits of
// name (ignoring case), for "did you mean"; "" when none is that near.
func nearestOption(name string) string {
	names := make([]string, len(Options))
	for i, o := range Options {
		names[i] = o.Name
	}
	return suggest.Nearest(name, names, 2)
}
