package policy

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/torbento/bento/internal/exitpolicy"
	"github.com/torbento/bento/internal/safelog"
	"github.com/torbento/bento/internal/units"
)

// ConfigError points at the line of bentorc that is wrong.
type ConfigError struct {
	File string
	Line int
	Msg  string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
}

// line is one logical configuration line.
type line struct {
	file    string
	num     int
	keyword string // lower case, for matching
	name    string // as written, for messages
	value   string
}

const maxIncludeDepth = 8

// Load reads the bentorc at path (following %include) and returns the
// effective policy, starting from Default.
func Load(path string) (*Policy, error) {
	lines, err := readLines(path, 0)
	if err != nil {
		return nil, err
	}
	return fromLines(lines, memTotal())
}

// LookupValue returns the value of the last line of keyword name in the
// bentorc at path, reading it as bentod does (%include followed) but
// checking nothing else: bentoctl finds the control socket in a bentorc
// that may have an error elsewhere, which bentod is then to report.
func LookupValue(path, name string) (string, bool, error) {
	lines, err := readLines(path, 0)
	if err != nil {
		return "", false, err
	}
	val, ok := "", false
	for _, l := range lines {
		if strings.EqualFold(l.keyword, name) {
			val, ok = l.value, true
		}
	}
	return val, ok, nil
}

// Parse parses bentorc text; name is used in error messages. %include is
// resolved relative to the working directory.
func Parse(name string, data []byte) (*Policy, error) {
	lines, err := splitLines(name, data, 0)
	if err != nil {
		return nil, err
	}
	return fromLines(lines, memTotal())
}

func readLines(path string, depth int) ([]line, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	return splitLines(path, data, depth)
}

// splitLines implements torrc's lexical rules: "Keyword value" lines,
// comments from '#', backslash-newline continuation, case-insensitive
// keywords, and "%include PATH" of a file or a directory (files in lexical
// order, dotfiles skipped).
func splitLines(name string, data []byte, depth int) ([]line, error) {
	var out []line
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	num, start := 0, 0
	var cont strings.Builder
	for sc.Scan() {
		num++
		text := sc.Text()
		if cont.Len() == 0 {
			start = num
		}
		if i := strings.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		if strings.HasSuffix(text, "\\") {
			cont.WriteString(strings.TrimSuffix(text, "\\"))
			cont.WriteByte(' ')
			continue
		}
		cont.WriteString(text)
		full := strings.TrimSpace(cont.String())
		cont.Reset()
		if full == "" {
			continue
		}
		kw, val, _ := strings.Cut(full, " ")
		if i := strings.IndexByte(kw, '\t'); i >= 0 {
			kw, val = full[:i], full[i+1:]
		}
		val = strings.TrimSpace(val)
		if strings.EqualFold(kw, "%include") {
			if depth >= maxIncludeDepth {
				return nil, &ConfigError{name, start, "%include nested too deeply"}
			}
			inc, err := include(name, val, depth+1)
			if err != nil {
				return nil, &ConfigError{name, start, err.Error()}
			}
			out = append(out, inc...)
			continue
		}
		out = append(out, line{file: name, num: start, keyword: strings.ToLower(kw), name: kw, value: val})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return out, nil
}

func include(from, path string, depth int) ([]line, error) {
	if path == "" {
		return nil, fmt.Errorf("%%include needs a file or directory")
	}
	if !filepath.IsAbs(path) {
		path = filepath.Join(filepath.Dir(from), path)
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return readLines(path, depth)
	}
	ents, err := os.ReadDir(path)
	if err != nil {
		return nil, err
	}
	names := []string{}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".") && !e.IsDir() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	var out []line
	for _, n := range names {
		l, err := readLines(filepath.Join(path, n), depth)
		if err != nil {
			return nil, err
		}
		out = append(out, l...)
	}
	return out, nil
}

func fromLines(lines []line, mem int64) (*Policy, error) {
	p := Default()
	apisSet, imagesSet, logsSet := false, false, false
	dest := &exitpolicy.Policy{}
	for _, l := range lines {
		fail := func(format string, a ...any) error {
			return &ConfigError{l.file, l.num, fmt.Sprintf(format, a...)}
		}
		size := func(dst *int64) error {
			n, err := units.ParseSize(l.value)
			if err != nil {
				return fail("%s: %v", l.name, err)
			}
			*dst = n
			return nil
		}
		cores := func(dst *float64) error {
			f, err := ParseCores(l.value)
			if err != nil {
				return fail("%s: %v", l.name, err)
			}
			*dst = f
			return nil
		}
		count := func(dst *int) error {
			n, err := strconv.Atoi(l.value)
			if err != nil || n < 0 || n > 1<<24 {
				return fail("%s: %q is not a whole number from 0 to %d", l.name, l.value, 1<<24)
			}
			*dst = n
			return nil
		}
		atLeast := func(dst *int, least int) error {
			n, err := strconv.Atoi(l.value)
			if err != nil || n < least || n > 1<<24 {
				return fail("%s: %q is not a whole number from %d to %d", l.name, l.value, least, 1<<24)
			}
			*dst = n
			return nil
		}
		duration := func(dst *time.Duration, least, most time.Duration) error {
			d, err := units.ParseDuration(l.value)
			if err != nil {
				return fail("%s: %v", l.name, err)
			}
			if d < least || d > most {
				return fail("%s: %s is outside %s-%s", l.name, d, least, most)
			}
			*dst = d
			return nil
		}
		var err error
		switch l.keyword {
		case "listenaddress", "policyaddress":
			v := l.value
			if l.keyword == "policyaddress" && (v == "0" || strings.EqualFold(v, "none")) {
				p.PolicyAddress = ""
				continue
			}
			if _, _, e := net.SplitHostPort(v); e != nil {
				err = fail("%s: %q is not HOST:PORT (e.g. 127.0.0.1:8888)", l.name, v)
			} else if l.keyword == "listenaddress" {
				p.ListenAddress = v
			} else {
				p.PolicyAddress = v
			}
		case "datadirectory":
			if !filepath.IsAbs(l.value) {
				err = fail("DataDirectory must be an absolute path, got %q", l.value)
			}
			p.DataDirectory = l.value
		case "runtime":
			switch l.value {
			case "runc", "crun", "runsc":
				p.Runtime = l.value
			default:
				err = fail("Runtime %q: want runc, crun or runsc", l.value)
			}
		case "runtimepath":
			p.RuntimePath = l.value
		case "runnerpath":
			p.RunnerPath = l.value
		case "nickname":
			p.Nickname = l.value
		case "torcontrolport":
			if _, _, e := net.SplitHostPort(l.value); e != nil && !strings.HasPrefix(l.value, "unix:/") {
				err = fail("TorControlPort: %q is neither HOST:PORT nor unix:/PATH (Debian's tor: unix:/run/tor/control)", l.value)
			}
			p.TorControlPort = l.value
		case "torcontrolpassword":
			p.TorControlPassword = l.value
		case "torcookiefile":
			if !filepath.IsAbs(l.value) {
				err = fail("TorCookieFile must be an absolute path, got %q", l.value)
			}
			p.TorCookieFile = l.value
		case "torsocksport":
			if _, _, e := net.SplitHostPort(l.value); e != nil && !strings.HasPrefix(l.value, "unix:/") {
				err = fail("TorSocksPort: %q is neither HOST:PORT nor unix:/PATH", l.value)
			}
			p.TorSocksPort = l.value
		case "onionservice":
			switch l.value {
			case "1":
				p.OnionService = true
			case "0":
				p.OnionService = false
			default:
				err = fail("OnionService takes 0 or 1")
			}
		case "allowfsprotect":
			switch l.value {
			case "1":
				p.FSProtect = true
			case "0":
				p.FSProtect = false
			default:
				err = fail("AllowFSProtect takes 0 or 1")
			}
		case "restoreinstances":
			switch l.value {
			case "1":
				p.RestoreInstances = true
			case "0":
				p.RestoreInstances = false
			default:
				err = fail("RestoreInstances takes 0 or 1")
			}
		case "onionserviceport":
			n, e := strconv.Atoi(l.value)
			if e != nil || n < 1 || n > 65535 {
				err = fail("OnionServicePort %q is not a port number", l.value)
			}
			p.OnionServicePort = n
		case "log":
			sink, e := safelog.ParseSink(l.value)
			if e != nil {
				err = fail("Log %s: %v", l.value, e)
				break
			}
			if !logsSet {
				p.Logs, logsSet = nil, true
			}
			p.Logs = append(p.Logs, sink)
		case "heartbeatperiod":
			err = duration(&p.HeartbeatPeriod, 0, 7*24*time.Hour)
		case "controlsocket":
			switch {
			case l.value == "0" || strings.EqualFold(l.value, "none"):
				p.ControlSocket = ""
			case !filepath.IsAbs(l.value):
				err = fail("ControlSocket must be an absolute path (e.g. /run/bento/control) or 0, got %q", l.value)
			case len(l.value) > 100:
				err = fail("ControlSocket: %q is longer than a Unix socket's path may be (100 bytes here)", l.value)
			default:
				p.ControlSocket = l.value
			}
		case "user":
			if l.value == "" || strings.ContainsAny(l.value, " \t:/") {
				err = fail("User %q is not a user name", l.value)
			}
			p.User = l.value
		case "controlsocketgroup":
			if strings.ContainsAny(l.value, " \t:/") {
				err = fail("ControlSocketGroup %q is not a group name", l.value)
			}
			p.ControlSocketGroup = l.value
		case "metricsport":
			if l.value == "0" || strings.EqualFold(l.value, "none") {
				p.MetricsPort = ""
			} else if _, _, e := net.SplitHostPort(l.value); e != nil {
				err = fail("MetricsPort: %q is not HOST:PORT (e.g. 127.0.0.1:9035) or 0", l.value)
			} else {
				p.MetricsPort = l.value
			}
		case "compatlistenaddress":
			if l.value == "0" || strings.EqualFold(l.value, "none") {
				p.CompatListenAddress = ""
			} else if _, _, e := net.SplitHostPort(l.value); e != nil {
				err = fail("CompatListenAddress: %q is not HOST:PORT (e.g. 127.0.0.1:8887) or 0", l.value)
			} else {
				p.CompatListenAddress = l.value
			}
		case "compatmanifest":
			if !filepath.IsAbs(l.value) {
				err = fail("CompatManifest must be an absolute path (e.g. /etc/bento/compat.toml), got %q", l.value)
			}
			p.CompatManifest = l.value
		case "metricsportpolicy":
			items, e := ParseMetricsPolicy(l.value)
			if e != nil {
				err = fail("MetricsPortPolicy: %v", e)
			}
			p.MetricsPolicy = append(p.MetricsPolicy, items...)
		case "safelogging":
			switch l.value {
			case "1":
				p.SafeLogging = true
			case "0":
				p.SafeLogging = false
			default:
				err = fail("SafeLogging takes 0 or 1")
			}
		case "allowapi":
			if !apisSet {
				p.APIs = map[string]bool{}
				apisSet = true
			}
			for _, a := range splitList(l.value) {
				if strings.EqualFold(a, "none") {
					continue
				}
				if !KnownAPI(a) {
					err = fail("AllowAPI: unknown host call %q (known: %s)", a, knownList())
					break
				}
				p.APIs[a] = true
			}
		case "image":
			if !imagesSet {
				p.Images = nil
				imagesSet = true
			}
			for _, i := range splitList(l.value) {
				if !BuiltinImage(i) {
					err = fail("Image %q is not built in (available: %s)", i, strings.Join(BuiltinImages, ", "))
					break
				}
				if !p.HasImage(i) {
					p.Images = append(p.Images, i)
				}
			}
		case "destinationpolicy":
			q, warns, e := exitpolicy.Parse(l.value)
			if e != nil {
				err = fail("DestinationPolicy: %v", e)
				break
			}
			for _, w := range warns {
				p.Warnings = append(p.Warnings, fmt.Sprintf("%s:%d: DestinationPolicy %s", l.file, l.num, w))
			}
			dest.Append(q)
		case "maxmemory":
			err = size(&p.Max.Memory)
		case "maxcpu":
			err = cores(&p.Max.CPU)
		case "maxcputime":
			err = duration(&p.Max.CPUTime, 10*time.Millisecond, 365*24*time.Hour)
		case "maxlifetime":
			err = duration(&p.Max.Lifetime, time.Second, 365*24*time.Hour)
		case "maxprocesses":
			err = count(&p.Max.Processes)
		case "maxstorage":
			err = size(&p.Max.Storage)
		case "maxoutput":
			err = size(&p.Max.Output)
		case "maxuploadsize":
			err = size(&p.Max.Upload)
		case "maxfetchsize":
			err = size(&p.Max.Fetch)
		case "maxsteps":
			n, e := strconv.ParseUint(l.value, 10, 64)
			if e != nil || n < 1000 || n > 1<<50 {
				err = fail("MaxSteps %q is not a whole number from 1000 to %d", l.value, uint64(1)<<50)
			}
			p.Max.Steps = n
		case "totalmemory":
			err = size(&p.Aggregate.Memory)
		case "totalcpu":
			err = cores(&p.Aggregate.CPU)
		case "reservememory":
			err = size(&p.Aggregate.ReserveMemory)
		case "reservecpu":
			err = cores(&p.Aggregate.ReserveCPU)
		case "maxinstances":
			err = count(&p.Aggregate.Instances)
		case "maxinstancesperclient":
			err = count(&p.Aggregate.PerClient)
		case "maxconnections":
			err = atLeast(&p.Daemon.MaxConnections, 1)
		case "maxconnectionsperaddress":
			err = atLeast(&p.Daemon.MaxConnectionsPerAddr, 1)
		case "connectrateperaddress":
			f, e := strconv.ParseFloat(l.value, 64)
			if e != nil || math.IsNaN(f) || f < 0.1 || f > 1e6 {
				err = fail("ConnectRatePerAddress %q: want new connections per second from 0.1 to 1000000", l.value)
			}
			p.Daemon.ConnectRate = f
		case "connectburstperaddress":
			err = atLeast(&p.Daemon.ConnectBurst, 1)
		case "maxonionconnections":
			err = atLeast(&p.Daemon.MaxOnionConnections, 1)
		case "onionmaxstreams":
			err = count(&p.Daemon.OnionMaxStreams)
			if err == nil && p.Daemon.OnionMaxStreams > 65535 {
				err = fail("OnionMaxStreams: at most 65535 (tor's limit)")
			}
		case "handshaketimeout":
			err = duration(&p.Daemon.HandshakeTimeout, time.Second, 5*time.Minute)
		case "idletimeout":
			err = duration(&p.Daemon.IdleTimeout, time.Second, time.Hour)
		case "connectionlifetime":
			err = duration(&p.Daemon.ConnectionLifetime, time.Second, 24*time.Hour)
		case "writetimeout":
			err = duration(&p.Daemon.WriteTimeout, time.Second, time.Hour)
		case "maxinflight":
			err = size(&p.Daemon.MaxInFlight)
		case "maxdaemonmemory":
			err = size(&p.Daemon.MaxMemory)
		case "nice":
			n, e := strconv.Atoi(l.value)
			if e != nil || n < -20 || n > 19 {
				err = fail("Nice %q: want a number from -20 to 19 (higher yields the CPU to tor)", l.value)
			}
			p.Daemon.Nice = n
		case "ffmeasurementsallowed":
			switch l.value {
			case "0":
				p.FlashFlow.Allowed = false
			case "1":
				p.FlashFlow.Allowed = true
			default:
				err = fail("FFMeasurementsAllowed %q: want 0 or 1", l.value)
			}
		case "fflistenaddress":
			if _, _, e := net.SplitHostPort(l.value); e != nil {
				err = fail("FFListenAddress %q: want host:port", l.value)
			}
			p.FlashFlow.Listen = l.value
		case "ffechoaddress":
			ap, e := netip.ParseAddrPort(l.value)
			if e != nil || ap.Addr() != netip.AddrFrom4([4]byte{127, 0, 0, 1}) || ap.Port() == 0 {
				err = fail("FFEchoAddress %q: want 127.0.0.1:PORT (measurers' streams exit the relay to 127.0.0.1 at that port)", l.value)
			}
			p.FlashFlow.Echo = l.value
		case "ffallowedcoordinators":
			for _, f := range strings.Split(l.value, ",") {
				t := strings.ToUpper(strings.NewReplacer(":", "", " ", "").Replace(strings.TrimSpace(f)))
				if len(t) != 64 || strings.Trim(t, "0123456789ABCDEF") != "" {
					err = fail("FFAllowedCoordinators: %q is not a certificate fingerprint (64 hex digits, SHA-256 of the coordinator's certificate)", f)
					break
				}
				p.FlashFlow.Coordinators = append(p.FlashFlow.Coordinators, t)
			}
		case "ffmeasurementperiod":
			err = duration(&p.FlashFlow.Period, time.Hour, 31*24*time.Hour)
		case "ffmaxmeasurementduration":
			err = duration(&p.FlashFlow.MaxDuration, 10*time.Second, 120*time.Second)
		case "boxendsat":
			t, perr := ParseTime(l.value)
			if perr != nil {
				err = fail("%s: %v", l.name, perr)
			}
			p.Box.EndsAt = t
		case "boxlifetime":
			err = duration(&p.Box.Lifetime, time.Minute, 10*365*24*time.Hour)
		case "boxannounce":
			switch l.value {
			case "1":
				p.Box.Announce = true
			case "0":
				p.Box.Announce = false
			default:
				err = fail("%s: want 0 or 1", l.name)
			}
		case "boxdrainperiod":
			err = duration(&p.Box.Drain, 0, 7*24*time.Hour)
		case "maxcompositiondepth":
			err = count(&p.Composition.MaxDepth)
		case "maxcomposedinstances":
			err = count(&p.Composition.MaxInstances)
		case "maxcompositioncalls":
			err = count(&p.Composition.MaxCalls)
		default:
			if near := nearestOption(l.name); near != "" {
				err = fail("unknown keyword %q: did you mean %s? (bentod --list-options lists every keyword)", l.name, near)
			} else {
				err = fail("unknown keyword %q (bentod --list-options lists every keyword)", l.name)
			}
		}
		if err != nil {
			return nil, err
		}
	}
	p.Destinations = dest
	p.LogLevel = "err"
	for _, s := range p.Logs {
		if safelog.ParseLevel(s.Min) < safelog.ParseLevel(p.LogLevel) {
			p.LogLevel = s.Min
		}
	}
	p.finish(mem)
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}

// ParseTime parses an absolute time: RFC 3339 ("2026-12-02T18:00:00Z")
// or tor's "2026-12-02 18:00:00" (UTC), from the year 2000 to 2200.
func ParseTime(v string) (time.Time, error) {
	v = strings.TrimSpace(v)
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		t, err = time.Parse(time.DateTime, v)
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is not a time such as 2026-12-02T18:00:00Z or \"2026-12-02 18:00:00\" (UTC)", v)
	}
	if t.Year() < 2000 || t.Year() > 2200 {
		return time.Time{}, fmt.Errorf("%q is outside the years 2000-2200", v)
	}
	return t.UTC(), nil
}

// Validate checks the policy as a whole.
func (p *Policy) Validate() error {
	if !p.Box.EndsAt.IsZero() && p.Box.Lifetime > 0 {
		return fmt.Errorf("BoxEndsAt and BoxLifetime both give the box's end: keep one")
	}
	if p.Box.Lifetime > 0 && p.Box.Drain >= p.Box.Lifetime {
		return fmt.Errorf("BoxDrainPeriod %s is not shorter than BoxLifetime %s: the box would never accept a function", p.Box.Drain, p.Box.Lifetime)
	}
	if len(p.Images) == 0 {
		return fmt.Errorf("no Image offered: functions could not run (add \"Image starlark\")")
	}
	if p.Aggregate.Memory > 0 && p.Max.Memory > p.Aggregate.Memory {
		return fmt.Errorf("MaxMemory %s exceeds the memory left for functions (%s after ReserveMemory)",
			units.FormatSize(p.Max.Memory), units.FormatSize(p.Aggregate.Memory))
	}
	if p.Max.Memory < 16<<20 {
		return fmt.Errorf("MaxMemory %s is below 16 MB, the least a function runner needs", units.FormatSize(p.Max.Memory))
	}
	if p.Max.CPU < MinCPU {
		return fmt.Errorf("MaxCPU %g is below %g cores, the least a function can be given", p.Max.CPU, MinCPU)
	}
	if p.Max.Upload < 1<<10 || p.Max.Upload > 1<<30 {
		return fmt.Errorf("MaxUploadSize %s is outside 1 KB-1 GB", units.FormatSize(p.Max.Upload))
	}
	if d := p.Daemon; d.MaxInFlight < 2*(p.Max.Upload+64<<10) {
		return fmt.Errorf("MaxInFlight %s must hold at least two uploads of MaxUploadSize (%s)", units.FormatSize(d.MaxInFlight), units.FormatSize(2*(p.Max.Upload+64<<10)))
	}
	if big := 2 * max(InstanceInFlight(p.Max), p.Max.Upload+96<<10); p.Daemon.MaxInFlight < big {
		return fmt.Errorf("MaxInFlight %s must hold what two clients' functions may have in flight at once (twice the largest of MaxOutput, MaxStorage and MaxFetchSize, each): at least %s", units.FormatSize(p.Daemon.MaxInFlight), units.FormatSize(big))
	}
	if d := p.Daemon; d.MaxMemory > 0 && d.MaxInFlight > d.MaxMemory/3 {
		return fmt.Errorf("MaxInFlight %s exceeds a third of MaxDaemonMemory %s: bentod needs the rest for itself and for its collector to work without thrashing", units.FormatSize(d.MaxInFlight), units.FormatSize(d.MaxMemory))
	}
	if p.Daemon.MaxConnectionsPerAddr > p.Daemon.MaxConnections {
		p.Warnings = append(p.Warnings, "MaxConnectionsPerAddress exceeds MaxConnections: one address may take every connection")
	}
	if p.Max.Processes < 4 {
		return fmt.Errorf("MaxProcesses %d is below 4, the least a function runner needs", p.Max.Processes)
	}
	if p.CompatListenAddress != "" && p.CompatManifest == "" {
		return fmt.Errorf("CompatListenAddress needs CompatManifest: the manifest (image, resources, apis) the original client's stored code runs under (docs/compat.md)")
	}
	if p.Box.Announce && !p.OnionService {
		return fmt.Errorf("BoxAnnounce 1 needs OnionService 1: the directory lists boxes by their onion address")
	}
	if p.OnionService && p.TorControlPort == "" {
		return fmt.Errorf("OnionService 1 needs TorControlPort (bentod publishes the service through tor's control port)")
	}
	if p.APIs[APITorFetch] && p.TorSocksPort == "" {
		return fmt.Errorf("AllowAPI %s needs TorSocksPort (the SocksPort functions' Tor traffic goes through)", APITorFetch)
	}
	if p.APIs[APITorStream] && (p.TorControlPort == "" || p.TorSocksPort == "") {
		return fmt.Errorf("AllowAPI %s needs TorSocksPort (for tor.dial) and TorControlPort (for tor.listen)", APITorStream)
	}
	if p.APIs[APITorControl] && p.TorControlPort == "" {
		return fmt.Errorf("AllowAPI %s needs TorControlPort", APITorControl)
	}
	if p.APIs[APIHTTPFetch] || p.APIs[APINet] || p.APIs[APIBento] && p.TorSocksPort == "" {
		if !p.Destinations.AcceptsAny() {
			p.Warnings = append(p.Warnings, "AllowAPI lists a network call but DestinationPolicy accepts nothing: such calls will always be refused")
		}
	}
	return nil
}

// InstanceInFlight is what one instance's host calls may hold at once:
// twice its largest item (a fetch body, a stored value, an output record),
// one gathered and one arriving, with their headers.
func InstanceInFlight(r Limits) int64 {
	return 2 * (max(r.Output, r.Storage, r.Fetch, 1<<20) + 64<<10)
}

// MinCPU is the least CPU a function can be given, and the step in which
// CPU is given: the sandbox's CPU quota is whole hundredths of a core
// (1 ms per 100 ms period), so what is admitted is what is enforced.
const MinCPU = 0.01

// ParseCores parses a number of cores: finite, from 0 to 4096, in steps
// of MinCPU.
func ParseCores(v string) (float64, error) {
	f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || f > 4096 {
		return 0, fmt.Errorf("%q is not a number of cores from 0 to 4096 (e.g. 0.5)", v)
	}
	if f != 0 && f < MinCPU {
		return 0, fmt.Errorf("%q is below %g cores, the least that can be given", v, MinCPU)
	}
	if !CPUStep(f) {
		return 0, fmt.Errorf("%q: give cores in steps of %g (e.g. 0.25)", v, MinCPU)
	}
	return f, nil
}

// CPUStep reports whether f is a whole number of MinCPU steps.
func CPUStep(f float64) bool {
	h := f / MinCPU
	return math.Abs(h-math.Round(h)) < 1e-6
}

// MilliCores is cores in thousandths, the unit bentod sums in (integers
// do not drift as floats do when added and taken away many times).
func MilliCores(f float64) int64 { return int64(math.Round(f * 1000)) }

func splitList(v string) []string {
	var out []string
	for _, f := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
		out = append(out, strings.ToLower(f))
	}
	return out
}

func knownList() string {
	var names []string
	for _, a := range APIs {
		names = append(names, a.Name)
	}
	return strings.Join(names, ", ")
}

// memTotal reads the machine's memory from /proc/meminfo.
func memTotal() int64 {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 1 << 30
	}
	for _, l := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(l, "MemTotal:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil {
					return kb << 10
				}
			}
		}
	}
	return 1 << 30
}
