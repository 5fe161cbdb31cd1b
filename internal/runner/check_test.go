package runner

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/torbento/bento/internal/manifest"
)

func TestCheck(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  []string // each problem's Error(), in order
	}{
		{"clean", map[string]string{"main.star": "def main(x = 1):\n    bento.send(json.encode(x))\n"}, nil},
		{"syntax", map[string]string{"main.star": "def main():\n    return 1 +\n"},
			[]string{"main.star:2:15: got newline, want primary expression"}},
		{"undefined names, all of them", map[string]string{"main.star": "def main():\n    x = nope\n    return y + storage.get(\"k\")\n"},
			[]string{"main.star:2:9: undefined: nope", "main.star:3:12: undefined: y"}},
		{"every file", map[string]string{
			"main.star": "load(\"lib.star\", \"twice\", \"thrice\")\ndef main():\n    return twice(1)\n",
			"lib.star":  "def twice(x):\n    return 2 * x\n",
			"bad.star":  "def f(:\n",
		}, []string{"bad.star:1:8: got ':', want ')'", `main.star:1:28: load("lib.star", "thrice"): lib.star does not define "thrice"`}},
		{"missing load", map[string]string{"main.star": "load(\"gone.star\", \"x\")\ndef main():\n    return x\n"},
			[]string{`main.star:1:6: load("gone.star"): no such file in the function directory`}},
		{"no function", map[string]string{"main.star": "def mian():\n    pass\n"},
			[]string{`main.star: no function "main" defined (set "function" in bento.toml)`}},
		{"no entry", map[string]string{"lib.star": "x = 1\n"},
			[]string{`main.star: the entry file main.star is not in the function directory (set "entry" in bento.toml)`}},
		{"top-level control flow binds", map[string]string{"main.star": "if True:\n    main = len\n"}, nil},
	}
	for _, tc := range tests {
		files := map[string][]byte{}
		for k, v := range tc.files {
			files[k] = []byte(v)
		}
		var got []string
		for _, e := range Check("starlark", "main.star", "main", 0, files) {
			got = append(got, e.Error())
		}
		if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
			t.Errorf("%s:\n%s\nwant\n%s", tc.name, strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
		}
	}
}

// TestCheckShipped: every shipped function compiles.
func TestCheckShipped(t *testing.T) {
	dirs, _ := filepath.Glob("../../functions/*")
	if len(dirs) < 10 {
		t.Fatalf("found %d shipped functions", len(dirs))
	}
	for _, dir := range dirs {
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			continue // functions/embed.go
		}
		files := map[string][]byte{}
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if b, err := os.ReadFile(filepath.Join(dir, e.Name())); err == nil {
				files[e.Name()] = b
			}
		}
		m, err := manifest.Parse(files[manifest.FileName])
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		if m.Image == ImageWasm {
			continue // source only: TestWasmShipped builds and checks it
		}
		errs := Check(m.Image, m.Entry, m.Function, 0, files)
		if filepath.Base(dir) == "py-syntaxerr" {
			// The original Bento's error test: it must not compile.
			if _, err := os.Stat(PythonForCheck); err == nil && (len(errs) != 1 || errs[0].Line != 6) {
				t.Errorf("%s: want its syntax error at line 6, got %v", dir, errs)
			}
			continue
		}
		for _, e := range errs {
			t.Errorf("%s: %v", dir, e)
		}
	}
}

func TestCheckPython(t *testing.T) {
	if _, err := os.Stat(PythonForCheck); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is missing (bash scripts/setup.sh --test installs it)", PythonForCheck)
		}
		t.Skip(err)
	}
	for _, tc := range []struct {
		files map[string]string
		want  string
	}{
		{map[string]string{"main.py": "def main():\n    return 1\n"}, ""},
		{map[string]string{"main.py": "import lib\nmain = lib.f\n", "lib.py": "def f(:\n"}, "lib.py:1:7: SyntaxError: invalid syntax"},
		{map[string]string{"main.py": "def other():\n    pass\n"}, "main.py: no function 'main' defined at top level"},
		{map[string]string{"lib.py": "x = 1\n"}, "the entry file main.py is not in the function directory"},
	} {
		files := map[string][]byte{}
		for k, v := range tc.files {
			files[k] = []byte(v)
		}
		errs := Check(ImagePython, "main.py", "main", 0, files)
		got := ""
		for _, e := range errs {
			got += e.Error() + "\n"
		}
		if tc.want == "" && got != "" || !strings.Contains(got, tc.want) {
			t.Errorf("%v: got %q, want %q", tc.files, got, tc.want)
		}
	}
}

func FuzzCheck(f *testing.F) {
	f.Add([]byte("load(\"lib.star\", \"x\")\ndef main():\n    return x\n"), []byte("x = 1\n"))
	f.Add([]byte("def main(:\n"), []byte("load(\"main.star\", \"main\")\n"))
	f.Fuzz(func(t *testing.T, main, lib []byte) {
		for _, e := range Check("starlark", "main.star", "main", 0, map[string][]byte{"main.star": main, "lib.star": lib}) {
			if e.File == "" || e.Msg == "" {
				t.Fatalf("unlocated problem %+v", e)
			}
		}
	})
}
