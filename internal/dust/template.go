package dust

import (
	"bytes"
	"fmt"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/torbento/bento/internal/units"
)

// Template describes a mote.
type Template struct {
	Name     string
	Lifetime time.Duration
	Drain    time.Duration
	Torrc    []string // the relay's own lines
	Bentorc  []string // the box's own lines
}

type templateFile struct {
	Name     string   `toml:"name"`
	Lifetime string   `toml:"lifetime"`
	Drain    string   `toml:"drain"`
	Torrc    []string `toml:"torrc"`
	Bentorc  []string `toml:"bentorc"`
}

// MaxTemplate bounds a template's size.
const MaxTemplate = 64 << 10

// managedTor are the torrc options the mote sets itself: a template may
// not set them (ports, paths, control, the network joined).
var managedTor = map[string]bool{
	"datadirectory": true, "controlport": true, "controlsocket": true, "cookieauthentication": true,
	"cookieauthfile": true, "hashedcontrolpassword": true, "socksport": true, "orport": true, "dirport": true,
	"pidfile": true, "runasdaemon": true, "log": true, "user": true, "%include": true,
	"testingtornetwork": true, "dirauthority": true, "alternatedirauthority": true, "alternatebridgeauthority": true,
	"fallbackdir": true, "usedefaultfallbackdirs": true, "bridge": true, "usebridges": true,
	"contactinfo": true, "__owningcontrollerprocess": true,
}

// managedBento are the bentorc keywords the mote sets itself.
var managedBento = map[string]bool{
	"listenaddress": true, "policyaddress": true, "datadirectory": true, "torcontrolport": true,
	"torcontrolpassword": true, "torcookiefile": true, "torsocksport": true, "onionservice": true,
	"onionserviceport": true, "boxendsat": true, "boxlifetime": true, "boxdrainperiod": true,
	"boxannounce": true, "runtimepath": true, "runnerpath": true, "log": true, "%include": true,
}

// ParseTemplate reads and checks a template.
func ParseTemplate(data []byte) (*Template, error) {
	if len(data) > MaxTemplate {
		return nil, fmt.Errorf("template: %d bytes, at most %d", len(data), MaxTemplate)
	}
	var f templateFile
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&f)
	if err != nil {
		return nil, fmt.Errorf("template: %w", err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return nil, fmt.Errorf("template: unknown key %q (known: name, lifetime, drain, torrc, bentorc)", und[0].String())
	}
	t := &Template{Name: f.Name, Torrc: f.Torrc, Bentorc: f.Bentorc}
	if !validName(t.Name) {
		return nil, fmt.Errorf("template: name %q: want 1-32 letters, digits or '-'", truncate(t.Name, 40))
	}
	if t.Lifetime, err = units.ParseDuration(f.Lifetime); err != nil {
		return nil, fmt.Errorf("template: lifetime: %w", err)
	}
	if t.Lifetime < time.Minute || t.Lifetime > 90*24*time.Hour {
		return nil, fmt.Errorf("template: lifetime %s: want 1 minute to 90 days", t.Lifetime)
	}
	t.Drain = 10 * time.Minute
	if f.Drain != "" {
		if t.Drain, err = units.ParseDuration(f.Drain); err != nil {
			return nil, fmt.Errorf("template: drain: %w", err)
		}
	}
	if t.Drain >= t.Lifetime {
		return nil, fmt.Errorf("template: drain %s is not shorter than lifetime %s: the box would never take a function", t.Drain, t.Lifetime)
	}
	if len(t.Torrc) > 200 || len(t.Bentorc) > 200 {
		return nil, fmt.Errorf("template: at most 200 torrc and 200 bentorc lines")
	}
	if err := checkLines("torrc", t.Torrc, managedTor); err != nil {
		return nil, err
	}
	if err := checkLines("bentorc", t.Bentorc, managedBento); err != nil {
		return nil, err
	}
	return t, nil
}

// checkLines refuses lines that are not one plain configuration line, or
// that set what the mote manages.
func checkLines(what string, lines []string, managed map[string]bool) error {
	for i, l := range lines {
		if len(l) > 1024 || strings.ContainsAny(l, "\n\r\x00\\") {
			return fmt.Errorf("template: %s line %d: want one line of at most 1024 characters, no backslash", what, i+1)
		}
		kw, _, _ := strings.Cut(strings.TrimSpace(l), " ")
		if kw == "" || strings.HasPrefix(kw, "#") {
			return fmt.Errorf("template: %s line %d is empty or a comment: leave it out", what, i+1)
		}
		for _, c := range kw {
			if c <= ' ' || c > '~' {
				return fmt.Errorf("template: %s line %d: keyword %q is not plain ASCII", what, i+1, truncate(kw, 40))
			}
		}
		if managed[strings.ToLower(strings.TrimPrefix(kw, "+"))] {
			return fmt.Errorf("template: %s line %d sets %s, which the mote sets itself", what, i+1, kw)
		}
	}
	return nil
}

func validName(s string) bool {
	if len(s) == 0 || len(s) > 32 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// Ports are a mote's local ports.
type Ports struct {
	OR, Control, Socks, Bento, Policy int
}

// DefaultPorts are a mote's ports on a machine of its own (tor's and
// Bento's usual ones).
var DefaultPorts = Ports{OR: 9001, Control: 9051, Socks: 9050, Bento: 8888, Policy: 8889}

// RenderTorrc renders the relay's torrc: the mote's own settings, the network
// to join (networkTorrc: DirAuthority lines and the like; empty for the
// public network) and the template's lines.
func (t *Template) RenderTorrc(dir string, p Ports, networkTorrc string) string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("# dust mote %q: rendered by bento from its template", t.Name)
	w("DataDirectory %s/tor", dir)
	w("PidFile %s/tor/pid", dir)
	w("RunAsDaemon 0")
	w("Log notice file %s/tor/notice.log", dir)
	w("ControlPort 127.0.0.1:%d", p.Control)
	w("CookieAuthentication 1")
	w("SocksPort 127.0.0.1:%d", p.Socks)
	w("ORPort 127.0.0.1:%d", p.OR)
	w("ContactInfo dust-mote")
	b.WriteString("# the network joined\n")
	b.WriteString(networkTorrc)
	if networkTorrc != "" && !strings.HasSuffix(networkTorrc, "\n") {
		b.WriteString("\n")
	}
	b.WriteString("# the template's lines\n")
	for _, l := range t.Torrc {
		w("%s", strings.TrimSpace(l))
	}
	return b.String()
}

// RenderBentorc renders the box's bentorc.
func (t *Template) RenderBentorc(dir string, p Ports, ends time.Time) string {
	return t.bentorc(boxPlace{data: dir + "/bentod", control: fmt.Sprintf("127.0.0.1:%d", p.Control),
		cookie: dir + "/tor/control_auth_cookie", extra: []string{"Log info"}}, p, ends)
}

// boxPlace is where a box's files and its tor's control port are.
type boxPlace struct {
	data, control, cookie string
	extra                 []string // the mote's own lines beyond these
}

// bentorc renders the box's bentorc for a place.
func (t *Template) bentorc(at boxPlace, p Ports, ends time.Time) string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("# dust mote %q: rendered by bento from its template", t.Name)
	w("ListenAddress 127.0.0.1:%d", p.Bento)
	w("PolicyAddress 127.0.0.1:%d", p.Policy)
	w("DataDirectory %s", at.data)
	w("TorControlPort %s", at.control)
	w("TorCookieFile %s", at.cookie)
	w("TorSocksPort 127.0.0.1:%d", p.Socks)
	w("OnionService 1")
	w("BoxAnnounce 1")
	w("BoxEndsAt %s", ends.UTC().Format(time.RFC3339))
	w("BoxDrainPeriod %d seconds", int(t.Drain.Seconds()))
	for _, l := range at.extra {
		w("%s", l)
	}
	b.WriteString("# the template's lines\n")
	for _, l := range t.Bentorc {
		w("%s", strings.TrimSpace(l))
	}
	return b.String()
}
