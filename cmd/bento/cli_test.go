package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestSplitFlags: flags are found anywhere among the arguments until
// "--"; a flag's value is never an argument.
func TestSplitFlags(t *testing.T) {
	tests := []struct {
		args         []string
		flags, pos   []string
		offset       int64
		interactive  bool
		wantParseErr bool
	}{
		{[]string{"srv", "tok", "a", "b"}, nil, []string{"srv", "tok", "a", "b"}, 0, false, false},
		{[]string{"srv", "-i", "tok", "a"}, []string{"-i"}, []string{"srv", "tok", "a"}, 0, true, false},
		{[]string{"srv", "tok", "--offset", "7", "a"}, []string{"--offset", "7"}, []string{"srv", "tok", "a"}, 7, false, false},
		{[]string{"--offset=7", "srv", "--", "-i", "--offset", "3"}, []string{"--offset=7"}, []string{"srv", "-i", "--offset", "3"}, 7, false, false},
		{[]string{"srv", "-", "x"}, nil, []string{"srv", "-", "x"}, 0, false, false},
		{[]string{"srv", "-5"}, []string{"-5"}, []string{"srv"}, 0, false, true},
		{[]string{"srv", "--offset"}, []string{"--offset"}, []string{"srv"}, 0, false, true},
		{[]string{"a", "--", "--"}, nil, []string{"a", "--"}, 0, false, false},
	}
	for _, tc := range tests {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(bytesDiscard{})
		offset := fs.Int64("offset", 0, "")
		interactive := fs.Bool("i", false, "")
		flags, pos := splitFlags(fs, tc.args)
		if !slices.Equal(flags, tc.flags) || !slices.Equal(pos, tc.pos) {
			t.Errorf("%q: flags %q, positional %q; want %q, %q", tc.args, flags, pos, tc.flags, tc.pos)
		}
		c := &cli{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
		got, _, err := c.parseFlags(fs, tc.args)
		if (err != nil) != tc.wantParseErr {
			t.Errorf("%q: parse error %v", tc.args, err)
		}
		if err == nil && (!slices.Equal(got, tc.pos) || *offset != tc.offset || *interactive != tc.interactive) {
			t.Errorf("%q: parsed %q offset %d -i %v", tc.args, got, *offset, *interactive)
		}
	}
}

type bytesDiscard struct{}

func (bytesDiscard) Write(p []byte) (int, error) { return len(p), nil }

func FuzzSplitFlags(f *testing.F) {
	f.Add("srv\x00-i\x00tok\x00--offset\x007\x00--\x00-x")
	f.Add("--offset=1\x00a\x00-\x00--")
	f.Fuzz(func(t *testing.T, joined string) {
		args := strings.Split(joined, "\x00")
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(bytesDiscard{})
		fs.Int64("offset", 0, "")
		fs.Bool("i", false, "")
		flags, pos := splitFlags(fs, args)
		// Every word is a flag, a value or an argument, in its order;
		// only a "--" that ends the flags is dropped.
		if n := len(flags) + len(pos); n != len(args) && n != len(args)-1 {
			t.Fatalf("%q: %d flags and %d arguments", args, len(flags), len(pos))
		}
		if !subsequence(flags, args) || !subsequence(pos, args) {
			t.Fatalf("%q: flags %q, arguments %q out of order", args, flags, pos)
		}
	})
}

func subsequence(sub, of []string) bool {
	i := 0
	for _, w := range of {
		if i < len(sub) && sub[i] == w {
			i++
		}
	}
	return i == len(sub)
}

// TestCheckGolden: bento check's report of a function with many problems
// names every one, at its file, line and column.
func TestCheckGolden(t *testing.T) {
	for _, name := range []string{"manybad", "badload"} {
		for _, asJSON := range []bool{false, true} {
			dir := filepath.Join("testdata", "check", name)
			args := []string{"check", dir}
			golden := filepath.Join("testdata", "check", name+".golden")
			if asJSON {
				args = append(args, "--json")
				golden = filepath.Join("testdata", "check", name+".json.golden")
			}
			var out, errb bytes.Buffer
			code := run(args, strings.NewReader(""), &out, &errb)
			if code != exitProblems {
				t.Errorf("%s: exit %d, want %d", name, code, exitProblems)
			}
			got := []byte("stdout:\n" + out.String() + "stderr:\n" + errb.String())
			if *update {
				os.WriteFile(golden, got, 0o644)
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("bento %s:\n%s\nwant (%s):\n%s", strings.Join(args, " "), got, golden, want)
			}
		}
	}
}

// TestNewPassesCheck: every template makes a function that bento check
// passes at once, named after its directory; bento new never writes into
// a directory that has something in it.
func TestNewPassesCheck(t *testing.T) {
	names := templateNames()
	for _, want := range []string{"hello", "echo", "dropbox"} {
		if !slices.Contains(names, want) {
			t.Errorf("no template %s (have %v)", want, names)
		}
	}
	for _, tmpl := range names {
		dir := filepath.Join(t.TempDir(), "my-"+tmpl)
		var out, errb bytes.Buffer
		if code := run([]string{"new", dir, "--template", tmpl}, nil, &out, &errb); code != exitOK {
			t.Fatalf("new --template %s: exit %d: %s", tmpl, code, errb.String())
		}
		out.Reset()
		if code := run([]string{"check", "--json", dir}, nil, &out, &errb); code != exitOK {
			t.Errorf("the %s template does not pass check: exit %d\n%s%s", tmpl, code, out.String(), errb.String())
		}
		var res struct {
			OK bool `json:"ok"`
		}
		if err := json.Unmarshal(out.Bytes(), &res); err != nil || !res.OK {
			t.Errorf("check --json: %q %v", out.String(), err)
		}
		m, _ := os.ReadFile(filepath.Join(dir, "bento.toml"))
		if !strings.Contains(string(m), `name = "my-`+tmpl+`"`) {
			t.Errorf("%s: manifest does not name the function:\n%s", tmpl, m)
		}
		// Once more into the same directory: refused, nothing touched.
		errb.Reset()
		code := run([]string{"new", dir, "--template", tmpl}, nil, &out, &errb)
		if m2, _ := os.ReadFile(filepath.Join(dir, "bento.toml")); code != exitUsage || !strings.Contains(errb.String(), "already exists and is not empty") || !bytes.Equal(m, m2) {
			t.Errorf("new into a full directory: exit %d, %q", code, errb.String())
		}
	}
	// An empty directory is fine.
	dir := t.TempDir()
	if code := run([]string{"new", dir}, nil, &bytes.Buffer{}, &bytes.Buffer{}); code != exitOK {
		t.Errorf("new into an empty directory: exit %d", code)
	}
}
