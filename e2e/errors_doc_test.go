package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/testutil"
)

// TestErrorsTableServer runs every row of docs/errors.md marked e2e
// against a real bentod, and checks its message and exit status; a row
// without a case here, or a case without a row, fails. (The rows marked
// unit are cmd/bento's TestErrorsTable.)
func TestErrorsTableServer(t *testing.T) {
	d := startBentod(t, "")
	cl := client.New(d.Addr)
	fnDir := func(t *testing.T, manifest, code string) string {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "bento.toml"), []byte(manifest), 0o644)
		os.WriteFile(filepath.Join(dir, "main.star"), []byte(code), 0o644)
		return dir
	}
	instances := func(t *testing.T) int {
		p, err := cl.Policy(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		return p.Free.Instances
	}
	cases := map[string]func(t *testing.T) result{
		"refused-manifest": func(t *testing.T) result {
			return bento(t, "", "deploy", d.Addr, fnDir(t, "name = \"greedy\"\n[resources]\nmemory = \"100 GB\"\n", "def main():\n    return 1\n"))
		},
		"deploy-does-not-compile": func(t *testing.T) result { return bento(t, "", "deploy", d.Addr, fn("syntaxerr")) },
		"unknown-token": func(t *testing.T) result {
			return bento(t, "", "invoke", d.Addr, "bento-inv-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
		},
		"update-refused": func(t *testing.T) result {
			dep := deployCLI(t, d, fnDir(t, "name = \"svc\"\nmode = \"service\"\n", "def main():\n    return 1\n"))
			defer bento(t, "", "shutdown", d.Addr, dep.ShutdownToken)
			return bento(t, "", "update", d.Addr, dep.ShutdownToken, fnDir(t, "name = \"greedy\"\nmode = \"service\"\n[resources]\nmemory = \"100 GB\"\n", "def main():\n    return 2\n"))
		},
		"update-fails-to-load": func(t *testing.T) result {
			dep := deployCLI(t, d, fnDir(t, "name = \"svc\"\nmode = \"service\"\n", "def main():\n    return 1\n"))
			defer bento(t, "", "shutdown", d.Addr, dep.ShutdownToken)
			r := bento(t, "", "update", d.Addr, dep.ShutdownToken, fnDir(t, "name = \"svc\"\nmode = \"service\"\n", "x = {}[\"nope\"]\ndef main():\n    return 2\n"))
			// What it said is true: the old code answers.
			if out := bento(t, "", "invoke", d.Addr, dep.InvocationToken); out.Code != 0 || out.Stdout != "1" {
				t.Errorf("after a refused update: %s", out)
			}
			return r
		},
		"protect-not-offered": func(t *testing.T) result {
			return bento(t, "", "deploy", d.Addr, fnDir(t, "name = \"vault\"\nprotect = true\n", "def main():\n    return 1\n"))
		},
		"protected-instance-lost": func(t *testing.T) result {
			// A bentod of its own, killed as a crash would (the clean
			// stop is TestFSProtect's).
			pd := startBentod(t, "AllowFSProtect 1\n")
			f, err := client.LoadFunction(fnDir(t, "name = \"vault\"\nmode = \"service\"\nprotect = true\n", "def main():\n    return 1\n"))
			if err != nil {
				t.Fatal(err)
			}
			dep, err := client.New(pd.Addr).Deploy(ctx(t), f)
			if err != nil {
				t.Fatal(err)
			}
			pd.kill()
			pd.restart(t)
			if exists(filepath.Join(pd.DataDir, "instances", dep.Instance)) {
				t.Error("the protected instance's files stay after the restart")
			}
			return bento(t, "", "invoke", pd.Addr, dep.InvocationToken)
		},
		"function-error": func(t *testing.T) result { return bento(t, "", "run", d.Addr, fn("runtimeerr")) },
		"compat-call-refused": func(t *testing.T) result {
			// A bentod of its own, with the compat listener.
			_, addr := compatDaemon(t, "apis = [\"send\"]\n")
			file := filepath.Join(t.TempDir(), "f.star")
			os.WriteFile(file, []byte("def f():\n    return 1\n"), 0o644)
			return bento(t, "", "compat", addr, file, "os.system('id')")
		},
		"function-stopped": func(t *testing.T) result { return bento(t, "", "run", d.Addr, fn("sleeper")) },
		"interrupted-run": func(t *testing.T) result {
			before := instances(t)
			r := interrupt(t, "run", d.Addr, fn("counter"), "100", "0.1")
			// What it said is true: no instance is left behind.
			if after := instances(t); after != before {
				t.Errorf("free instances %d after an interrupted run, %d before", after, before)
			}
			return r
		},
		"interrupted-invoke": func(t *testing.T) result {
			dep := deployCLI(t, d, fn("counter"))
			r := interrupt(t, "invoke", d.Addr, dep.InvocationToken, "20", "0.1")
			// What it said is true: the function went on, to its end.
			m := regexp.MustCompile(`bento attach \S+ INVOCATION-TOKEN (s-[0-9a-f]+) --offset (\d+)`).FindStringSubmatch(r.Stderr)
			if m == nil {
				t.Fatalf("no reattach command in %q", r.Stderr)
			}
			if a := bento(t, "", "attach", d.Addr, dep.InvocationToken, m[1], "--offset", m[2]); a.Code != 0 || !strings.HasSuffix(a.Stdout, "line 19\ndone\n") {
				t.Errorf("reattaching as told: %s", a)
			}
			return r
		},
	}
	seen := map[string]bool{}
	rows := 0
	for _, row := range testutil.ErrorRows(t, "errors.md") {
		rows++
		if row.Test != "e2e" {
			continue
		}
		seen[row.ID] = true
		mk, ok := cases[row.ID]
		if !ok {
			t.Errorf("docs/errors.md row %s has no case in TestErrorsTableServer", row.ID)
			continue
		}
		t.Run(row.ID, func(t *testing.T) {
			r := mk(t)
			if r.Code != row.Exit || !testutil.MessageIn(r.Stderr, row.Message) {
				t.Errorf("%s\nwant exit %d and a line %q", r, row.Exit, row.Message)
			}
		})
	}
	for id := range cases {
		if !seen[id] {
			t.Errorf("TestErrorsTableServer case %s is not an e2e row of docs/errors.md", id)
		}
	}
}

// interrupt starts the CLI, sends it SIGINT once its session has
// started, and returns how it ended.
func interrupt(t *testing.T, args ...string) result {
	t.Helper()
	cmd := exec.Command(filepath.Join(testutil.Binaries(t), "bento"), args...)
	var out, errb syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(errb.String(), " started; ") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("bento %s did not end after SIGINT: %s", strings.Join(args, " "), errb.String())
	}
	return result{out.String(), errb.String(), cmd.ProcessState.ExitCode()}
}
