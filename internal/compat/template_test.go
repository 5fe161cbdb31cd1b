package compat

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/policy"
)

func TestLoadTemplate(t *testing.T) {
	p, err := policy.Parse("t", []byte("AllowAPI send,recv\nMaxMemory 64 MB\n"))
	if err != nil {
		t.Fatal(err)
	}
	write := func(s string) string {
		f := filepath.Join(t.TempDir(), "compat.toml")
		os.WriteFile(f, []byte(s), 0o644)
		return f
	}
	tm, err := LoadTemplate(write("apis = [\"send\", \"recv\"]\n[resources]\nmemory = \"32 MB\"\n"), p)
	if err != nil {
		t.Fatal(err)
	}
	if tm.Entry != "main.star" || tm.Image != "starlark" {
		t.Errorf("entry %q image %q", tm.Entry, tm.Image)
	}
	b, err := tm.Manifest(manifestName("continuousInput"), "echo")
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Parse(b)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if m.Name != "continuousInput" || m.Function != "echo" || m.Mode != manifest.ModeOneShot || m.Resources.Memory != 32<<20 || len(m.APIs) != 2 {
		t.Errorf("manifest %+v", m)
	}
	if manifestName("not a name!") != "compat" {
		t.Error("an invalid name is kept")
	}
	for src, want := range map[string]string{
		"[resources]\nmemory = \"1 GB\"\n": "resources.memory: asks 1 GB",
		"apis = [\"storage\"]\n":           "asks for more than this node's policy allows",
		"name = \"x\"\n":                   `"name" is set by each Execute`,
		"function = \"x\"\n":               `"function" is set by each Execute`,
		"mode = \"service\"\n":             `"mode" is set by each Execute`,
		"protect = true\n":                 "protect = true cannot be offered",
		"image = \"cobol\"\n":              "cobol",
		"frobnicate = 1\n":                 "unknown keys",
		"not toml":                         "CompatManifest",
	} {
		if _, err := LoadTemplate(write(src), p); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", src, err, want)
		}
	}
	if _, err := LoadTemplate(filepath.Join(t.TempDir(), "none.toml"), p); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("a missing file: %v", err)
	}
}
