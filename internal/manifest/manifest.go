// Package manifest defines a function's manifest (bento.toml): what the
// function is, which image and entry point it uses, the host calls it needs,
// the resources it asks for and the destinations it will contact. Check
// compares a manifest with a node policy and lists every item that exceeds
// it; an admitted instance gets exactly what its manifest asked for.
package manifest

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"github.com/torbento/bento/internal/suggest"
	"math"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/torbento/bento/internal/exitpolicy"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/units"
)

// FileName is the manifest's name inside a function directory.
const FileName = "bento.toml"

// Modes of an instance.
const (
	// ModeOneShot instances end when their first invocation returns.
	ModeOneShot = "oneshot"
	// ModeService instances stay up for further invocations until shut
	// down, until their lifetime ends, or until they call exit().
	ModeService = "service"
)

// The images bentod knows (the policy's Image offers some of them).
const (
	ImageStarlark = "starlark" // Starlark code run by bento-runner
	ImageWasm     = "wasm"     // a WebAssembly module (WASI preview 1) run by bento-runner with wazero
	ImagePython   = "python"   // Python run by Debian's CPython with bentod's driver (docs/python.md)
)

// Manifest is a parsed and validated bento.toml.
type Manifest struct {
	Name         string        `json:"name"`
	Image        string        `json:"image"`
	Entry        string        `json:"entry"`    // file in the bundle
	Function     string        `json:"function"` // callable in Entry
	Mode         string        `json:"mode"`
	APIs         []string      `json:"apis"`
	Destinations []string      `json:"destinations"`
	Resources    policy.Limits `json:"resources"`
	// MinLifetime, when set, lets a box that ends sooner than
	// Resources.Lifetime shorten the instance's life down to this.
	MinLifetime time.Duration `json:"min_lifetime_ns,omitempty"`
	// Protect asks for FS Protect: what the instance leaves on the
	// operator's disk (stored data, output, code) is sealed with a key
	// held only in bentod's memory, and is lost with it at a restart.
	Protect bool               `json:"protect,omitempty"`
	Dest    *exitpolicy.Policy `json:"-"`
}

// file is the TOML shape of bento.toml.
type file struct {
	Name         string        `toml:"name"`
	Image        string        `toml:"image"`
	Entry        string        `toml:"entry"`
	Function     string        `toml:"function"`
	Mode         string        `toml:"mode"`
	APIs         []string      `toml:"apis"`
	Destinations []string      `toml:"destinations"`
	Protect      bool          `toml:"protect"`
	Resources    resourcesFile `toml:"resources"`
}

// resourcesFile is the TOML shape of bento.toml's [resources].
type resourcesFile struct {
	Memory    string  `toml:"memory"`
	CPU       float64 `toml:"cpu"`
	CPUTime   string  `toml:"cpu_time"`
	Processes int     `toml:"processes"`
	Storage   string  `toml:"storage"`
	Output    string  `toml:"output"`
	Lifetime  string  `toml:"lifetime"`
	MinLife   string  `toml:"min_lifetime"`
	Steps     uint64  `toml:"steps"`
}

// tomlKeys lists the TOML keys of a struct's fields, tables excepted.
func tomlKeys(t reflect.Type) []string {
	var keys []string
	for f := range t.Fields() {
		if name, _, _ := strings.Cut(f.Tag.Get("toml"), ","); name != "" && f.Type.Kind() != reflect.Struct {
			keys = append(keys, name)
		}
	}
	return keys
}

// keyHint says, for an unknown key, where it belongs if it is a key of
// the other level (the mistake of a key under [resources] that belongs
// before it, or the reverse), or the key it is likely a misspelling of.
func keyHint(k toml.Key) string {
	top, res := tomlKeys(reflect.TypeFor[file]()), tomlKeys(reflect.TypeFor[resourcesFile]())
	last := k[len(k)-1]
	switch {
	case len(k) == 1 && slices.Contains(res, last):
		return " (it belongs under [resources])"
	case len(k) == 2 && k[0] == "resources" && slices.Contains(top, last):
		return " (it belongs at the top, before [resources])"
	}
	near := ""
	switch {
	case len(k) == 1:
		near = suggest.Nearest(last, top, 2)
	case len(k) == 2 && k[0] == "resources":
		near = suggest.Nearest(last, res, 2)
	}
	if near != "" {
		return fmt.Sprintf(" (did you mean %s?)", near)
	}
	return ""
}

// Defaults are what an instance gets for a resource its manifest does not
// mention (lowered to the policy's ceiling when that is smaller).
var Defaults = policy.Limits{
	Memory:    32 << 20,
	CPU:       0.25,
	CPUTime:   10 * time.Second,
	Processes: 16,
	Storage:   1 << 20,
	Output:    1 << 20,
	Lifetime:  time.Minute,
	Steps:     100_000_000,
}

// Minimums below which the runner cannot work.
const (
	MinMemory    = 16 << 20
	MinProcesses = 1
)

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$`)
var identRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]{0,63}$`)

// Error is a malformed manifest.
type Error struct {
	Msg string
	// Key is the manifest item at fault ("apis", "resources.memory"),
	// when there is one.
	Key string
	// Line and Col locate the problem in bento.toml (1-based), when known:
	// TOML syntax errors always, other problems once ParseAll has located
	// Key. Col is 0 when only the line is known.
	Line, Col int
	// value, when set, is the item of a list (an api, a destination) at
	// fault, which Locate looks for after Key.
	value string
}

func (e *Error) Error() string { return FileName + ": " + e.Msg }

// Position is the problem's place in bento.toml, as "line" or
// "line:col", or "" when it is not known.
func (e *Error) Position() string {
	switch {
	case e.Line == 0:
		return ""
	case e.Col == 0:
		return fmt.Sprint(e.Line)
	}
	return fmt.Sprintf("%d:%d", e.Line, e.Col)
}

// Bounds on a manifest, so that parsing it and checking it against a
// policy stay cheap whatever a client sends.
const (
	MaxSize         = 64 << 10 // bytes of bento.toml
	MaxDestinations = 64       // destination items
)

// Parse parses and validates bento.toml. Resources left out stay zero;
// Resolve fills them in against a policy. The error, if any, is the first
// problem found (an *Error).
func Parse(data []byte) (*Manifest, error) {
	m, errs := parse(data)
	if len(errs) > 0 {
		return nil, errs[0]
	}
	return m, nil
}

// maxProblems bounds the problems ParseAll reports.
const maxProblems = 50

// ParseAll is Parse for authors: it reports every problem it finds, not
// just the first (a TOML syntax error still ends the parse), each located
// in data where it can be. The manifest is returned only when there are
// no problems.
func ParseAll(data []byte) (*Manifest, []*Error) {
	m, errs := parse(data)
	if len(errs) > maxProblems {
		errs = append(errs[:maxProblems], &Error{Msg: fmt.Sprintf("and %d more problems", len(errs)-maxProblems)})
	}
	for _, e := range errs {
		if e.Line == 0 && e.Key != "" {
			e.Line = Locate(data, e.Key, e.value)
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return m, nil
}

func parse(data []byte) (*Manifest, []*Error) {
	if len(data) > MaxSize {
		return nil, []*Error{{Msg: fmt.Sprintf("%d bytes, more than the %d a manifest may have", len(data), MaxSize)}}
	}
	var f file
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&f)
	if err != nil {
		e := &Error{Msg: err.Error()}
		var pe toml.ParseError
		if errors.As(err, &pe) {
			e.Line, e.Col, e.Key = pe.Position.Line, pe.Position.Col, pe.LastKey
		}
		return nil, []*Error{e}
	}
	var errs []*Error
	if und := md.Undecoded(); len(und) > 0 {
		var keys []string
		for _, k := range und {
			if len(keys) == 5 {
				keys = append(keys, fmt.Sprintf("and %d more", len(und)-5))
				break
			}
			keys = append(keys, fmt.Sprintf("%.64q", k.String())+keyHint(k))
		}
		top, res := tomlKeys(reflect.TypeFor[file]()), tomlKeys(reflect.TypeFor[resourcesFile]())
		errs = append(errs, &Error{Msg: fmt.Sprintf("unknown keys %s (known: %s, [resources] %s)", strings.Join(keys, ", "), strings.Join(top, ", "), strings.Join(res, ", ")), Key: und[0].String()})
	}
	m := &Manifest{
		Name: f.Name, Image: f.Image, Entry: f.Entry, Function: f.Function, Mode: f.Mode,
		APIs: f.APIs, Destinations: f.Destinations, Protect: f.Protect,
	}
	r := &m.Resources
	r.CPU, r.Processes, r.Steps = f.Resources.CPU, f.Resources.Processes, f.Resources.Steps
	for _, s := range []struct {
		key, val string
		dst      *int64
	}{{"memory", f.Resources.Memory, &r.Memory}, {"storage", f.Resources.Storage, &r.Storage}, {"output", f.Resources.Output, &r.Output}} {
		if s.val == "" {
			continue
		}
		n, err := units.ParseSize(s.val)
		if err != nil {
			errs = append(errs, &Error{Msg: "resources." + s.key + ": " + err.Error(), Key: "resources." + s.key})
			continue
		}
		*s.dst = n
	}
	for _, s := range []struct {
		key, val string
		dst      *time.Duration
	}{{"cpu_time", f.Resources.CPUTime, &r.CPUTime}, {"lifetime", f.Resources.Lifetime, &r.Lifetime}, {"min_lifetime", f.Resources.MinLife, &m.MinLifetime}} {
		if s.val == "" {
			continue
		}
		d, err := units.ParseDuration(s.val)
		if err != nil {
			errs = append(errs, &Error{Msg: "resources." + s.key + ": " + err.Error(), Key: "resources." + s.key})
			continue
		}
		*s.dst = d
	}
	errs = append(errs, m.validate()...)
	if len(errs) > 0 {
		return nil, errs
	}
	return m, nil
}

// validate checks every item and returns every problem.
func (m *Manifest) validate() []*Error {
	var errs []*Error
	bad := func(key, format string, a ...any) {
		errs = append(errs, &Error{Msg: fmt.Sprintf(format, a...), Key: key})
	}
	badItem := func(key, value, format string, a ...any) {
		errs = append(errs, &Error{Msg: fmt.Sprintf(format, a...), Key: key, value: value})
	}
	if !nameRE.MatchString(m.Name) {
		bad("name", "name %q: want 1-64 letters, digits, '.', '_' or '-'", m.Name)
	}
	if m.Image == "" {
		m.Image = "starlark"
	}
	wasm := m.Image == ImageWasm
	if m.Entry == "" {
		m.Entry = "main.star"
		if wasm {
			m.Entry = "main.wasm"
		}
		if m.Image == ImagePython {
			m.Entry = "main.py"
		}
	}
	if !ValidFileName(m.Entry) {
		bad("entry", "entry %q: want a file name in the function directory such as main.star", m.Entry)
	}
	if m.Function == "" {
		m.Function = "main"
		if wasm {
			m.Function = "_start"
		}
	}
	if !identRE.MatchString(m.Function) {
		bad("function", "function %q is not an identifier", m.Function)
	}
	switch m.Mode {
	case "":
		m.Mode = ModeOneShot
	case ModeOneShot, ModeService:
	default:
		bad("mode", "mode %q: want %q or %q", m.Mode, ModeOneShot, ModeService)
	}
	seen := map[string]bool{}
	for _, a := range m.APIs {
		switch {
		case !policy.KnownAPI(a):
			badItem("apis", a, "apis: unknown host call %q", a)
		case seen[a]:
			badItem("apis", a, "apis: %q listed twice", a)
		}
		seen[a] = true
	}
	sort.Strings(m.APIs)
	dest, destBad := &exitpolicy.Policy{}, len(errs)
	if len(m.Destinations) > MaxDestinations {
		bad("destinations", "destinations: %d items, at most %d", len(m.Destinations), MaxDestinations)
	} else {
		for _, d := range m.Destinations {
			q, warns, err := exitpolicy.Parse(d)
			if err != nil {
				badItem("destinations", d, "destinations: %v", err)
				continue
			}
			if len(warns) > 0 {
				badItem("destinations", d, "destinations: %s", warns[0])
				continue
			}
			dest.Append(q)
		}
	}
	m.Dest = dest
	destOK := len(errs) == destBad
	r := m.Resources
	switch {
	case math.IsNaN(r.CPU) || math.IsInf(r.CPU, 0) || r.CPU < 0 || r.CPU > 1024:
		bad("resources.cpu", "resources.cpu %v: want a number of cores from %g to 1024", r.CPU, policy.MinCPU)
	case r.CPU != 0 && r.CPU < policy.MinCPU:
		bad("resources.cpu", "resources.cpu %v is below the least a function can be given, %g cores", r.CPU, policy.MinCPU)
	case !policy.CPUStep(r.CPU):
		bad("resources.cpu", "resources.cpu %v: give cores in steps of %g (e.g. 0.25)", r.CPU, policy.MinCPU)
	}
	switch {
	case r.Processes < 0 || r.Processes > 1<<20:
		bad("resources.processes", "resources.processes %d: want 1 to %d", r.Processes, 1<<20)
	case r.Processes != 0 && r.Processes < MinProcesses:
		bad("resources.processes", "resources.processes %d is below the minimum of %d", r.Processes, MinProcesses)
	}
	switch {
	case r.Memory < 0:
		bad("resources.memory", "resources.memory: negative")
	case r.Memory != 0 && r.Memory < MinMemory:
		bad("resources.memory", "resources.memory %s is below the minimum of %s", units.FormatSize(r.Memory), units.FormatSize(MinMemory))
	}
	if r.Steps > 1<<50 {
		bad("resources.steps", "resources.steps %d: at most %d", r.Steps, uint64(1)<<50)
	}
	if r.CPUTime != 0 && r.CPUTime < 10*time.Millisecond {
		bad("resources.cpu_time", "resources.cpu_time %s is below 10ms", r.CPUTime)
	}
	if r.Lifetime != 0 && r.Lifetime < time.Second {
		bad("resources.lifetime", "resources.lifetime %s is below 1s", r.Lifetime)
	}
	switch {
	case m.MinLifetime != 0 && m.MinLifetime < time.Second:
		bad("resources.min_lifetime", "resources.min_lifetime %s is below 1s", m.MinLifetime)
	case m.MinLifetime != 0 && r.Lifetime != 0 && m.MinLifetime > r.Lifetime:
		bad("resources.min_lifetime", "resources.min_lifetime %s is longer than resources.lifetime %s", m.MinLifetime, r.Lifetime)
	}
	// Every destination is checked, directly or through Tor: a fetch or a
	// composition call without destinations could never succeed.
	if (seen[policy.APIHTTPFetch] || seen[policy.APIBento] || seen[policy.APITorFetch]) && !dest.AcceptsAny() && destOK {
		bad("apis", "apis lists a network call but destinations accepts nothing; add e.g. destinations = [\"accept 192.0.2.1:443\"] (or \"accept *.onion:*\" for onion services)")
	}
	return errs
}

// ValidName reports whether name may be a function's name.
func ValidName(name string) bool { return nameRE.MatchString(name) }

// ValidFileName reports whether name may name a file of a function bundle:
// a plain file name, no directories.
func ValidFileName(name string) bool {
	return name != "" && len(name) <= 128 && name != "." && name != ".." &&
		!strings.ContainsAny(name, "/\\\x00") && !strings.HasPrefix(name, ".")
}

// Has reports whether the manifest lists the host call.
func (m *Manifest) Has(api string) bool {
	for _, a := range m.APIs {
		if a == api {
			return true
		}
	}
	return false
}

// Resolve fills resources the manifest left out with Defaults, lowered to
// the policy's ceilings.
func (m *Manifest) Resolve(p *policy.Policy) {
	r, d, c := &m.Resources, Defaults, p.Max
	orDefault(&r.Memory, d.Memory, c.Memory)
	orDefault(&r.CPU, d.CPU, c.CPU)
	orDefault(&r.CPUTime, d.CPUTime, c.CPUTime)
	orDefault(&r.Processes, d.Processes, c.Processes)
	orDefault(&r.Storage, d.Storage, c.Storage)
	orDefault(&r.Output, d.Output, c.Output)
	orDefault(&r.Lifetime, d.Lifetime, c.Lifetime)
	orDefault(&r.Steps, d.Steps, c.Steps)
	r.Upload, r.Fetch = c.Upload, c.Fetch
}

// FitBoxEnd fits the instance's lifetime to a box that ends at end (zero:
// never), as of now. A lifetime that would outlast the box is shortened to
// what is left when the manifest's min_lifetime allows it (shortened is
// then true); otherwise the violation says what the box can give.
// Resources must be resolved first.
func (m *Manifest) FitBoxEnd(end, now time.Time) (shortened bool, v *Violation) {
	if end.IsZero() {
		return false, nil
	}
	left := end.Sub(now)
	if m.Resources.Lifetime <= left {
		return false, nil
	}
	if m.MinLifetime > 0 && m.MinLifetime <= left {
		// Exactly to the end: the instance goes with the box, for the
		// box's reason.
		m.Resources.Lifetime = left
		return true, nil
	}
	allowed := fmt.Sprintf("at most %s: the box ends at %s", max(left.Truncate(time.Second), 0), end.UTC().Format(time.RFC3339))
	if m.MinLifetime == 0 {
		allowed += " (set resources.min_lifetime to let a box shorten it)"
	}
	return false, &Violation{"resources.lifetime", m.Resources.Lifetime.String(), allowed}
}

// orDefault sets an unset (zero) resource to the default, lowered to the
// ceiling.
func orDefault[T cmp.Ordered](v *T, def, ceiling T) {
	var zero T
	if *v == zero {
		*v = min(def, ceiling)
	}
}

// Violation is one manifest item the policy does not allow.
type Violation struct {
	Item    string `json:"item"`    // e.g. "resources.memory", "apis", "destinations"
	Asked   string `json:"asked"`   // what the manifest asks for
	Allowed string `json:"allowed"` // what the policy allows
}

func (v Violation) String() string {
	return fmt.Sprintf("%s: asks %s, policy allows %s", v.Item, v.Asked, v.Allowed)
}

// Check lists every item of m that p does not allow. An empty list means
// the manifest is admissible. Resources must be resolved first.
func Check(m *Manifest, p *policy.Policy) []Violation {
	var out []Violation
	if !p.HasImage(m.Image) {
		out = append(out, Violation{"image", m.Image, "one of " + strings.Join(p.Images, ", ")})
	}
	if m.Protect && !p.FSProtect {
		out = append(out, Violation{"protect", "true (FS Protect)", "no FS Protect on this node (its operator has not set AllowFSProtect 1): deploy without protect = true, or to a node whose policy shows fs_protect"})
	}
	for _, a := range m.APIs {
		if !p.APIs[a] {
			out = append(out, Violation{"apis", a, "only " + strings.Join(p.AllowedAPIs(), ", ")})
		}
	}
	r, c := m.Resources, p.Max
	size := func(item string, asked, max int64) {
		if asked > max {
			out = append(out, Violation{item, units.FormatSize(asked), "at most " + units.FormatSize(max)})
		}
	}
	dur := func(item string, asked, max time.Duration) {
		if asked > max {
			out = append(out, Violation{item, asked.String(), "at most " + max.String()})
		}
	}
	size("resources.memory", r.Memory, c.Memory)
	if r.CPU > c.CPU {
		out = append(out, Violation{"resources.cpu", fmt.Sprintf("%g cores", r.CPU), fmt.Sprintf("at most %g cores", c.CPU)})
	}
	dur("resources.cpu_time", r.CPUTime, c.CPUTime)
	if r.Processes > c.Processes {
		out = append(out, Violation{"resources.processes", fmt.Sprint(r.Processes), fmt.Sprintf("at most %d", c.Processes)})
	}
	size("resources.storage", r.Storage, c.Storage)
	size("resources.output", r.Output, c.Output)
	dur("resources.lifetime", r.Lifetime, c.Lifetime)
	if r.Steps > c.Steps {
		out = append(out, Violation{"resources.steps", fmt.Sprint(r.Steps), fmt.Sprintf("at most %d", c.Steps)})
	}
	for _, item := range p.Destinations.Covers(m.Dest) {
		allowed := "nothing (no destinations)"
		if len(p.Destinations.Items) > 0 {
			allowed = "only " + strings.Join(p.Destinations.Items, ", ")
		}
		out = append(out, Violation{"destinations", item, allowed})
	}
	return out
}
