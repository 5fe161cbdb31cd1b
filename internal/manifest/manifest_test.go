package manifest

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/testutil"
)

const browser = `
name = "browser"
apis = ["send", "http.fetch"]
destinations = ["accept 127.0.0.1:8000-9000"]
[resources]
memory = "48 MB"
lifetime = "30 s"
`

func TestParse(t *testing.T) {
	m, err := Parse([]byte(browser))
	if err != nil {
		t.Fatal(err)
	}
	if m.Image != "starlark" || m.Entry != "main.star" || m.Function != "main" || m.Mode != ModeOneShot {
		t.Errorf("defaults not applied: %+v", m)
	}
	if m.Resources.Memory != 48<<20 || m.Resources.Lifetime != 30*time.Second {
		t.Errorf("resources = %+v", m.Resources)
	}
	p := policy.Default()
	m.Resolve(p)
	if m.Resources.CPU != Defaults.CPU || m.Resources.Memory != 48<<20 {
		t.Errorf("resolve: %+v", m.Resources)
	}
}

func TestParseErrors(t *testing.T) {
	tests := map[string]string{
		`name = "x y"`:                                             "name",
		`name = "a"` + "\nbogus = 1":                               `unknown keys "bogus"`,
		`name = "a"` + "\napis = [\"exec\"]":                       "unknown host call",
		`name = "a"` + "\napis = [\"http.fetch\"]":                 "destinations accepts nothing",
		`name = "a"` + "\nentry = \"../etc/passwd\"":               "entry",
		`name = "a"` + "\nmode = \"forever\"":                      "mode",
		`name = "a"` + "\n[resources]\nmemory = \"1 MB\"":          "below the minimum",
		`name = "a"` + "\n[resources]\nmemory = \"lots\"":          "resources.memory",
		`name = "a"` + "\ndestinations = [\"accept6 1.2.3.4:80\"]": "destinations",
		`name = `: "bento.toml",
		`name = "a"` + "\n[resources]\ncpu = nan":                   "resources.cpu",
		`name = "a"` + "\n[resources]\ncpu = inf":                   "resources.cpu",
		`name = "a"` + "\n[resources]\ncpu = 1e-300":                "below the least",
		`name = "a"` + "\n[resources]\ncpu = 0.015":                 "steps of 0.01",
		`name = "a"` + "\n[resources]\ncpu = -1":                    "resources.cpu",
		`name = "a"` + "\n[resources]\nsteps = 9223372036854775807": "resources.steps",
		`name = "a"` + "\napis = [\"tor.fetch\"]":                   "destinations accepts nothing",
	}
	for in, want := range tests {
		_, err := Parse([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want error containing %q", in, err, want)
		}
	}
}

func TestCheck(t *testing.T) {
	p, err := policy.Parse("rc", []byte("AllowAPI send,recv,http.fetch\nMaxMemory 64 MB\nDestinationPolicy accept 127.0.0.1:8000-8999\n"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := Parse([]byte(`
name = "greedy"
apis = ["send", "storage", "http.fetch", "bento"]
destinations = ["accept 127.0.0.1:8080", "accept *:443"]
[resources]
memory = "128 MB"
cpu = 2
lifetime = "1 day"
`))
	if err != nil {
		t.Fatal(err)
	}
	m.Resolve(p)
	var got []string
	for _, v := range Check(m, p) {
		got = append(got, v.String())
	}
	want := []string{
		"apis: asks storage, policy allows only http.fetch, recv, send",
		"apis: asks bento, policy allows only http.fetch, recv, send",
		"resources.memory: asks 128 MB, policy allows at most 64 MB",
		"resources.cpu: asks 2 cores, policy allows at most 0.5 cores",
		"resources.lifetime: asks 24h0m0s, policy allows at most 10m0s",
		"destinations: asks accept *:443, policy allows only accept 127.0.0.1:8000-8999",
	}
	// apis are sorted by Parse
	if strings.Join(got, "\n") != strings.Join(sortedFirst(want), "\n") {
		t.Errorf("violations:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(sortedFirst(want), "\n"))
	}
}

func sortedFirst(w []string) []string {
	// Parse sorts apis, so "bento" comes before "storage".
	w[0], w[1] = w[1], w[0]
	return w
}

func TestShippedManifests(t *testing.T) {
	files, _ := filepath.Glob("../../functions/*/" + FileName)
	if len(files) == 0 {
		t.Fatal("no shipped functions found")
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(data); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(browser))
	f.Add([]byte("name = \"a\"\nmode = \"service\"\n[resources]\nsteps = 5\ncpu = 0.1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(data)
		if err != nil {
			return
		}
		m.Resolve(policy.Default())
		_ = Check(m, policy.Default())
		if !ValidFileName(m.Entry) {
			t.Fatalf("accepted entry %q", m.Entry)
		}
	})
}

func TestMinLifetime(t *testing.T) {
	m, err := Parse([]byte("name = \"a\"\n[resources]\nlifetime = \"1 hour\"\nmin_lifetime = \"10 minutes\"\n"))
	if err != nil || m.MinLifetime != 10*time.Minute {
		t.Fatalf("%+v %v", m, err)
	}
	for in, want := range map[string]string{
		"lifetime = \"1 minute\"\nmin_lifetime = \"2 minutes\"": "longer than resources.lifetime",
		"min_lifetime = \"0.5 s\"":                              "below 1s",
		"min_lifetime = \"soon\"":                               "resources.min_lifetime",
	} {
		if _, err := Parse([]byte("name = \"a\"\n[resources]\n" + in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error containing %q", in, err, want)
		}
	}
}

func TestFitBoxEnd(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name          string
		life, minLife time.Duration
		end           time.Time
		wantLife      time.Duration
		short         bool
		violation     string
	}{
		{"no end", time.Hour, 0, time.Time{}, time.Hour, false, ""},
		{"fits", time.Hour, 0, now.Add(2 * time.Hour), time.Hour, false, ""},
		{"exactly", time.Hour, 0, now.Add(time.Hour), time.Hour, false, ""},
		{"outlasts", time.Hour, 0, now.Add(30 * time.Minute), time.Hour, false, "at most 30m0s: the box ends at 2026-12-02T12:30:00Z (set resources.min_lifetime"},
		{"shortened", time.Hour, 10 * time.Minute, now.Add(30*time.Minute + 500*time.Millisecond), 30*time.Minute + 500*time.Millisecond, true, ""},
		{"too short even so", time.Hour, 40 * time.Minute, now.Add(30 * time.Minute), time.Hour, false, "at most 30m0s: the box ends at 2026-12-02T12:30:00Z"},
		{"already ended", time.Hour, time.Second, now.Add(-time.Minute), time.Hour, false, "at most 0s"},
	}
	for _, tc := range tests {
		m := &Manifest{Resources: policy.Limits{Lifetime: tc.life}, MinLifetime: tc.minLife}
		short, v := m.FitBoxEnd(tc.end, now)
		switch {
		case short != tc.short || m.Resources.Lifetime != tc.wantLife:
			t.Errorf("%s: shortened %v to %v, want %v %v", tc.name, short, m.Resources.Lifetime, tc.short, tc.wantLife)
		case tc.violation == "" && v != nil:
			t.Errorf("%s: violation %v", tc.name, v)
		case tc.violation != "" && (v == nil || v.Item != "resources.lifetime" || !strings.Contains(v.Allowed, tc.violation)):
			t.Errorf("%s: violation %v, want one allowing %q", tc.name, v, tc.violation)
		}
	}
}

// TestParseLinear: a manifest's parse costs work linear in its size, and
// what it says of a bad one stays short, whatever the shape.
func TestParseLinear(t *testing.T) {
	rep := func(unit string) func(int) []byte {
		return func(n int) []byte { return []byte(strings.Repeat(unit, n)) }
	}
	testutil.Linear(t, 2000, 4096, map[string]func(int) []byte{
		"unknown keys":  func(n int) []byte { return []byte("name = \"x\"\n" + strings.Repeat("zz = 1\n", n)) },
		"nested arrays": func(n int) []byte { return []byte("apis = " + strings.Repeat("[", n) + strings.Repeat("]", n) + "\n") },
		"long string":   func(n int) []byte { return []byte("name = \"" + strings.Repeat("a", 64*n) + "\"\n") },
		"invalid UTF-8": rep("\xff\xfe"),
		"many items":    func(n int) []byte { return []byte("name = \"x\"\napis = [" + strings.Repeat("\"send\", ", n) + "]\n") },
		"open strings":  rep("x = \"\n"),
		"many tables":   func(n int) []byte { return []byte(strings.Repeat("[resources]\n", n)) },
		"destination list": func(n int) []byte {
			return []byte("name = \"x\"\ndestinations = [" + strings.Repeat("\"accept 1.2.3.4:80\", ", n) + "]\n")
		},
	}, func(b []byte) error { _, err := Parse(b); return err })
}

// TestParseAll: every problem of a manifest is reported, each at its line.
func TestParseAll(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string // "line: message prefix"
	}{
		{"clean", "name = \"a\"\n", nil},
		{"several", `name = "x y"
apis = [
  "send",
  "exec",
]
mode = "forever"
[resources]
memory = "1 MB"
lifetime = "soon"
`, []string{
			`9:resources.lifetime: duration "soon"`,
			`1:name "x y"`,
			`6:mode "forever"`,
			`4:apis: unknown host call "exec"`,
			`8:resources.memory 1 MB is below the minimum`,
		}},
		{"syntax", "name = \"a\"\napis = [\"send\"\n", []string{`2:toml: line 2`}},
		{"unknown key", "name = \"a\"\n\n[resources]\nmemroy = \"1 MB\"\n", []string{`4:unknown keys "resources.memroy" (did you mean memory?)`}},
		{"key of [resources] at the top", "name = \"a\"\nmemory = \"64 MB\"\n", []string{`2:unknown keys "memory" (it belongs under [resources])`}},
		{"key of the top under [resources]", "name = \"a\"\n[resources]\ndestinations = [\"accept *:80\"]\n", []string{`3:unknown keys "resources.destinations" (it belongs at the top, before [resources])`}},
		{"misspelt top key", "name = \"a\"\napi = [\"send\"]\n", []string{`2:unknown keys "api" (did you mean apis?)`}},
		{"unknown key, nothing near", "name = \"a\"\nfrobnicate = 1\n", []string{`2:unknown keys "frobnicate" (known: name, image,`}},
		{"dotted key", "name = \"a\"\nresources.memory = \"2 MB\"\n", []string{`2:resources.memory 2 MB`}},
		{"destination", "name = \"a\"\ndestinations = [\"accept 1.2.3.4:80\", \"accept6 1.2.3.4:80\"]\n", []string{`2:destinations:`}},
		{"network without destinations", "name = \"a\"\napis = [\"http.fetch\"]\n", []string{`2:apis lists a network call`}},
	}
	for _, tc := range tests {
		m, errs := ParseAll([]byte(tc.in))
		if (m == nil) != (len(tc.want) > 0) {
			t.Errorf("%s: manifest %v with %d problems", tc.name, m, len(errs))
		}
		var got []string
		for _, e := range errs {
			got = append(got, fmt.Sprintf("%d:%s", e.Line, e.Msg))
		}
		if len(got) != len(tc.want) {
			t.Errorf("%s: problems\n%s\nwant\n%s", tc.name, strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			continue
		}
		for _, w := range tc.want {
			ok := false
			for _, g := range got {
				ok = ok || strings.HasPrefix(g, w)
			}
			if !ok {
				t.Errorf("%s: no problem %q in\n%s", tc.name, w, strings.Join(got, "\n"))
			}
		}
		// Parse reports the first of them.
		if _, err := Parse([]byte(tc.in)); (err == nil) != (len(errs) == 0) || err != nil && err.Error() != errs[0].Error() {
			t.Errorf("%s: Parse: %v, ParseAll's first %v", tc.name, err, errs[0])
		}
	}
}

func FuzzLocate(f *testing.F) {
	f.Add([]byte("name = \"a\"\n[resources]\nmemory = \"1 MB\"\n"), "resources.memory", "")
	f.Add([]byte("apis = [\n\"send\",\n\"exec\"]\n"), "apis", "exec")
	f.Fuzz(func(t *testing.T, data []byte, key, value string) {
		n := Locate(data, key, value)
		if lines := bytes.Count(data, []byte("\n")) + 1; n < 0 || n > lines {
			t.Fatalf("line %d of %d", n, lines)
		}
	})
}

func TestProtect(t *testing.T) {
	tests := []struct {
		name, manifest, bentorc string
		protect                 bool
		violation               string // "" for none
	}{
		{"not asked", "name = \"a\"\n", "", false, ""},
		{"asked, not offered", "name = \"a\"\nprotect = true\n", "", true, "protect: asks true (FS Protect), policy allows no FS Protect on this node (its operator has not set AllowFSProtect 1)"},
		{"asked, offered", "name = \"a\"\nprotect = true\n", "AllowFSProtect 1\n", true, ""},
		{"not asked, offered", "name = \"a\"\nprotect = false\n", "AllowFSProtect 1\n", false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := policy.Parse("rc", []byte(tc.bentorc))
			if err != nil {
				t.Fatal(err)
			}
			m, err := Parse([]byte(tc.manifest))
			if err != nil {
				t.Fatal(err)
			}
			if m.Protect != tc.protect {
				t.Errorf("Protect = %v, want %v", m.Protect, tc.protect)
			}
			m.Resolve(p)
			var got string
			for _, v := range Check(m, p) {
				got += v.String()
			}
			if tc.violation == "" && got != "" || !strings.HasPrefix(got, tc.violation) {
				t.Errorf("violations %q, want %q", got, tc.violation)
			}
			// The client checks against the public view as bentod does.
			q, err := policy.FromPublic(p.PublicView())
			if err != nil {
				t.Fatal(err)
			}
			if (len(Check(m, q)) == 0) != (tc.violation == "") {
				t.Errorf("the public view decides otherwise: %v", Check(m, q))
			}
		})
	}
	if _, err := Parse([]byte("name = \"a\"\nprotect = \"yes\"\n")); err == nil {
		t.Error("protect = \"yes\" parsed")
	}
}

// TestImageDefaults: the wasm image's entry and function default to a
// WASI command's; a policy offering only starlark refuses it.
func TestImageDefaults(t *testing.T) {
	for _, tc := range []struct {
		toml, image, entry, function string
	}{
		{"name = \"a\"\n", "starlark", "main.star", "main"},
		{"name = \"a\"\nimage = \"wasm\"\n", "wasm", "main.wasm", "_start"},
		{"name = \"a\"\nimage = \"wasm\"\nentry = \"f.wasm\"\nfunction = \"run\"\n", "wasm", "f.wasm", "run"},
		{"name = \"a\"\nimage = \"python\"\n", "python", "main.py", "main"},
		{"name = \"a\"\nimage = \"python\"\nfunction = \"browser\"\n", "python", "main.py", "browser"},
	} {
		m, err := Parse([]byte(tc.toml))
		if err != nil {
			t.Fatal(err)
		}
		if m.Image != tc.image || m.Entry != tc.entry || m.Function != tc.function {
			t.Errorf("%q: image %q entry %q function %q", tc.toml, m.Image, m.Entry, m.Function)
		}
	}
	m, _ := Parse([]byte("name = \"a\"\nimage = \"wasm\"\n"))
	if vs := Check(m, policy.Default()); len(vs) != 1 || vs[0].Item != "image" {
		t.Errorf("wasm under the default policy: %v", vs)
	}
	p, err := policy.Parse("rc", []byte("Image starlark, wasm\n"))
	if err != nil {
		t.Fatal(err)
	}
	if vs := Check(m, p); len(vs) != 0 {
		t.Errorf("wasm where it is offered: %v", vs)
	}
	py, _ := Parse([]byte("name = \"a\"\nimage = \"python\"\n"))
	if vs := Check(py, p); len(vs) != 1 || vs[0].Item != "image" {
		t.Errorf("python where only starlark and wasm are offered: %v", vs)
	}
	p, _ = policy.Parse("rc", []byte("Image starlark, python\n"))
	if vs := Check(py, p); len(vs) != 0 {
		t.Errorf("python where it is offered: %v", vs)
	}
}
