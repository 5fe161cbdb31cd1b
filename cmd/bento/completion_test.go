package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestCompletion runs the bash completion in a real bash: commands,
// flags read from each command's usage, dust's subcommands.
func TestCompletion(t *testing.T) {
	var script strings.Builder
	if code := run([]string{"completion", "bash"}, strings.NewReader(""), &script, os.Stderr); code != 0 {
		t.Fatalf("completion bash: exit %d", code)
	}
	file := filepath.Join(t.TempDir(), "bento.bash")
	os.WriteFile(file, []byte(script.String()), 0o644)
	complete := func(words ...string) string {
		t.Helper()
		prog := "source " + file + "\nCOMP_WORDS=(" + strings.Join(quoteAll(words), " ") + ")\nCOMP_CWORD=" + itoa(len(words)-1) + "\n_bento\necho \"${COMPREPLY[*]}\"\n"
		out, err := exec.Command("bash", "-c", prog).CombinedOutput()
		if err != nil {
			t.Fatalf("bash: %v\n%s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	for _, tc := range []struct {
		words []string
		want  string
	}{
		{[]string{"bento", "dep"}, "deploy"},
		{[]string{"bento", "--tor-socks", "127.0.0.1:9050", "inv"}, "invoke"},
		{[]string{"bento", "--tor"}, "--tor-socks --tor-retry"},
		{[]string{"bento", "deploy", "--js"}, "--json"},
		{[]string{"bento", "invoke", "-"}, "--json --timeout -i"},
		{[]string{"bento", "dust", "r"}, "render"},
		{[]string{"bento", "shard", "g"}, "get"},
		{[]string{"bento", "sh"}, "shutdown shard"},
		{[]string{"bento", "completion", "f"}, "fish"},
		{[]string{"bento", "c"}, "check compat completion"},
		{[]string{"bento", "compat", "-"}, "--timeout -i"},
	} {
		if got := complete(tc.words...); got != tc.want {
			t.Errorf("completing %q: %q, want %q", tc.words, got, tc.want)
		}
	}
	for _, shell := range []string{"zsh", "fish"} {
		var out strings.Builder
		if code := run([]string{"completion", shell}, strings.NewReader(""), &out, os.Stderr); code != 0 || !strings.Contains(out.String(), "deploy") {
			t.Errorf("completion %s: exit %d\n%s", shell, code, out.String())
		}
	}
	if code := run([]string{"completion", "tcsh"}, strings.NewReader(""), &strings.Builder{}, &strings.Builder{}); code != exitUsage {
		t.Errorf("completion tcsh: exit %d, want %d", code, exitUsage)
	}
}

func quoteAll(ws []string) []string {
	out := make([]string, len(ws))
	for i, w := range ws {
		out[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
	}
	return out
}

func itoa(n int) string { return strconv.Itoa(n) }
