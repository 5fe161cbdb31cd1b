package policy

import (
	"go/ast"
	"go/parser"
	"go/token"
	"net/netip"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// TestOptionsMatchParser checks the option table against the parser's
// keywords one for one: an option the parser does not take, or a keyword
// missing from the table (and so from --list-options, --dump-config and
// the reload check), fails.
func TestOptionsMatchParser(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "parse.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var parsed []string
	ast.Inspect(f, func(n ast.Node) bool {
		sw, ok := n.(*ast.SwitchStmt)
		if !ok {
			return true
		}
		if sel, ok := sw.Tag.(*ast.SelectorExpr); !ok || sel.Sel.Name != "keyword" {
			return true
		}
		for _, st := range sw.Body.List {
			for _, e := range st.(*ast.CaseClause).List {
				if lit, ok := e.(*ast.BasicLit); ok {
					s, _ := strconv.Unquote(lit.Value)
					parsed = append(parsed, s)
				}
			}
		}
		return false
	})
	var table []string
	for _, o := range Options {
		table = append(table, strings.ToLower(o.Name))
		if o.Help == "" || o.Type == "" {
			t.Errorf("%s has no help or type", o.Name)
		}
		if o.Live && o.Reopen {
			t.Errorf("%s is both live and reopened", o.Name)
		}
	}
	sort.Strings(parsed)
	sort.Strings(table)
	if len(parsed) < 60 || !reflect.DeepEqual(parsed, table) {
		t.Errorf("the parser's keywords and the option table differ:\nparser: %v\ntable:  %v", parsed, table)
	}
}

// roundTrip parses the dump of p and checks it gives p back.
func roundTrip(t testing.TB, name string, p *Policy, full bool) {
	t.Helper()
	text := Dump(p, full)
	q, err := Parse(name+".dump", []byte(text))
	if err != nil {
		t.Fatalf("%s: the dump does not parse: %v\n%s", name, err, text)
	}
	a, b := *p, *q
	a.Warnings, b.Warnings = nil, nil
	if a.TorControlPassword != "" {
		if !strings.Contains(text, "# TorControlPassword is set; not shown (a secret)\n") || strings.Contains(text, a.TorControlPassword) {
			t.Fatalf("%s: the dump shows the control port's password, or does not say it is set:\n%s", name, text)
		}
		a.TorControlPassword = ""
	}
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("%s: parsing the dump (full=%v) gives another policy:\n%s\nwas  %+v\nnow  %+v", name, full, text, a, b)
	}
}

func TestDumpRoundTrip(t *testing.T) {
	def, err := Parse("empty", nil)
	if err != nil {
		t.Fatal(err)
	}
	if Dump(def, false) != "" {
		t.Errorf("the short dump of the defaults is not empty:\n%s", Dump(def, false))
	}
	sample, err := Load("../../docs/bentorc.sample")
	if err != nil {
		t.Fatal(err)
	}
	busy, err := Parse("busy", []byte(`ListenAddress 127.0.0.1:7000
PolicyAddress 0
ControlSocket /tmp/bento/ctl
ControlSocketGroup adm
MetricsPort 127.0.0.1:9035
MetricsPortPolicy accept 127.0.0.1, accept 10.0.0.0/8
MetricsPortPolicy reject *
Log info-warn file /var/log/bento/a.log
Log err syslog
Log notice journald
HeartbeatPeriod 90 seconds
AllowAPI send, recv, http.fetch
DestinationPolicy accept *:80, reject 10.0.0.0/8:*
DestinationPolicy accept [::1]:443
MaxCPU 0.25
ConnectRatePerAddress 2.5
BoxEndsAt 2030-01-02T03:04:05.5Z
TorControlPassword two words
Nickname box1
AllowFSProtect 1
`))
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]*Policy{"defaults": def, "sample": sample, "busy": busy} {
		roundTrip(t, name, p, true)
		roundTrip(t, name, p, false)
	}
	short := Dump(busy, false)
	for _, want := range []string{"PolicyAddress 0\n", "Log info-warn file /var/log/bento/a.log\nLog err syslog\nLog notice journald\n",
		"MetricsPortPolicy accept 127.0.0.1, accept 10.0.0.0/8, reject *\n", "HeartbeatPeriod 90 seconds\n", "BoxEndsAt 2030-01-02T03:04:05.5Z\n", "AllowFSProtect 1\n"} {
		if !strings.Contains(short, want) {
			t.Errorf("short dump lacks %q:\n%s", want, short)
		}
	}
	if strings.Contains(short, "MaxMemory") {
		t.Errorf("short dump shows a default:\n%s", short)
	}
	if busy.LogLevel != "info" {
		t.Errorf("LogLevel = %q, want the lowest sink's, info", busy.LogLevel)
	}
	if list := ListOptions(); !strings.Contains(list, "DataDirectory PATH\n") || !strings.Contains(list, "Changes take effect on: restart.") ||
		!strings.Contains(list, "ListenAddress HOST:PORT\n    where clients connect. Changes take effect on: reload (reopens its listener).") {
		t.Errorf("ListOptions:\n%s", list)
	}
}

func TestTransition(t *testing.T) {
	old, _ := Parse("old", []byte("DataDirectory /var/lib/a\nMaxMemory 64 MB\nListenAddress 127.0.0.1:1\n"))
	for _, tc := range []struct {
		conf, err string
	}{
		{"DataDirectory /var/lib/a\nMaxMemory 32 MB\nListenAddress 127.0.0.1:2\nLog debug stderr\n", ""},
		{"DataDirectory /var/lib/b\nMaxMemory 64 MB\nListenAddress 127.0.0.1:1\n", "changing DataDirectory is not allowed (transition not allowed)"},
		{"DataDirectory /var/lib/a\nRuntime crun\nNice 0\n", "changing Nice, Runtime is not allowed"},
	} {
		np, err := Parse("new", []byte(tc.conf))
		if err != nil {
			t.Fatal(err)
		}
		err = Transition(old, np)
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%q: Transition = %v, want %q", tc.conf, err, tc.err)
		}
	}
}

func TestMetricsPolicy(t *testing.T) {
	p, err := Parse("m", []byte("MetricsPort 127.0.0.1:9035\nMetricsPortPolicy reject 127.0.0.2, accept 127.0.0.0/8\nMetricsPortPolicy accept [::1]\n"))
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]bool{"127.0.0.1": true, "127.0.0.2": false, "::1": true, "::ffff:127.0.0.3": true, "10.0.0.1": false} {
		if got := p.MetricsAllowed(netip.MustParseAddr(addr)); got != want {
			t.Errorf("MetricsAllowed(%s) = %v, want %v", addr, got, want)
		}
	}
	def, _ := Parse("d", []byte("MetricsPort 127.0.0.1:9035\n"))
	if def.MetricsAllowed(netip.MustParseAddr("127.0.0.1")) {
		t.Error("no MetricsPortPolicy: accepted, but tor refuses everyone then")
	}
	for _, bad := range []string{"MetricsPortPolicy allow 1.2.3.4", "MetricsPortPolicy accept 1.2.3", "MetricsPortPolicy accept 1.2.3.4/33", "MetricsPortPolicy ,", "MetricsPort 9035",
		"Log notice printer", "HeartbeatPeriod 8 days", "ControlSocket relative", "ControlSocketGroup a/b"} {
		_, err := Parse("bad", []byte(bad+"\n"))
		if err == nil || !strings.HasPrefix(err.Error(), "bad:1: ") {
			t.Errorf("%q: %v, want an error at bad:1", bad, err)
		}
	}
}

func TestDidYouMean(t *testing.T) {
	for in, want := range map[string]string{"MaxMemry": "MaxMemory", "listenadress": "ListenAddress", "Logg": "Log", "Frobnicate": "", "MaxMemoryMaxMemory": ""} {
		_, err := Parse("rc", []byte(in+" 1\n"))
		if err == nil {
			t.Fatalf("%s accepted", in)
		}
		if got := strings.Contains(err.Error(), "did you mean"); got != (want != "") || want != "" && !strings.Contains(err.Error(), "did you mean "+want+"?") {
			t.Errorf("%s: %v (want a suggestion of %q)", in, err, want)
		}
	}
}

// TestListOptionsDefaults: --list-options gives each option's default;
// one that is the machine's says so, as "Default here", and a full dump
// writes it commented out, so a dump taken to another machine follows
// that machine's memory and cores instead of this one's.
func TestListOptionsDefaults(t *testing.T) {
	list := ListOptions()
	for _, want := range []string{
		"ListenAddress HOST:PORT\n    where clients connect. Changes take effect on: reload (reopens its listener). Default: 127.0.0.1:8888.\n",
		"Changes take effect on: reload. Default: starlark.\n",
		"Default: unset.\n",
		"TotalMemory Size\n    memory all functions may use together (default: the machine's, less ReserveMemory). Changes take effect on: reload. Default here: ",
	} {
		if !strings.Contains(list, want) {
			t.Errorf("--list-options lacks %q", want)
		}
	}
	if strings.Contains(list, "TorControlPassword PASSWORD\n    the control port's password (default: its cookie). Changes take effect on: restart. Default") {
		t.Error("--list-options gives a secret's default")
	}
	def, err := Parse("empty", nil)
	if err != nil {
		t.Fatal(err)
	}
	full := Dump(def, true)
	for _, l := range strings.Split(full, "\n") {
		if strings.HasPrefix(l, "TotalMemory ") || strings.HasPrefix(l, "TotalCPU ") {
			t.Errorf("the full dump fixes this machine's value: %q", l)
		}
	}
	if !strings.Contains(full, "# TotalMemory ") || !strings.Contains(full, "(this machine's; unset, it follows the machine it runs on)\n") {
		t.Errorf("the full dump does not say what TotalMemory is here:\n%s", full)
	}
	set, err := Parse("set", []byte("TotalMemory 1 GB\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(Dump(set, true), "\nTotalMemory 1 GB\n") {
		t.Errorf("a TotalMemory the operator set is not dumped as set:\n%s", Dump(set, true))
	}
}
